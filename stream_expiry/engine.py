"""The expiry engine: a pure state machine from events and clock readings to effects.

It does no IO and reads no clock (h11's discipline): the shell passes each event with the
record's prior state (from the durable index) and the current time, and gets back the new
state to store, whether to publish it, and the tombstones to emit. Timers live in a timing
wheel that holds only expirations due before ``horizon_end``; later ones stay in the index
and come back through :meth:`Engine.extend_horizon` as time moves, so memory does not grow
with the number of far-future records.

Rules kept here (../shared/CONTRACT.md, "Semantics"):

* Stamp at creation: ``expires_at = created_at + ttl``, the ttl resolved at ``created_at``.
* A live record whose ``expires_at`` has passed (in event time and on the clock) is over:
  an event at or after its expiry first tombstones it (reason ``ttl``).
* Redelivered ``create`` never extends a life; an earlier one moves ``created_at`` back.
* ``touch`` slides sliding categories to ``max(expires_at, t + ttl)``; elsewhere it is
  counted and ignored. A ``touch`` of an unknown or ended record starts a new life at t.
* ``delete`` at d tombstones at once (reason ``explicit``), even a never-seen record.
* A tombstoned record ignores events with ``ts <= deleted_at``: for a TTL tombstone
  ``deleted_at = expires_at - 1`` (so a touch *at* the expiry starts a new life), for an
  explicit one ``deleted_at = max(d, created_at)``. A new life remembers that deletion
  (``previous_deleted_at``): a create at or before it is stale, not a backdating create,
  and a delete at or before it erases the lives before, never the running one. Nor, once
  it ended, that life: an erasure dated before an ended life's creation names no life and
  ends at its own time.
* An erasure dated within a life its expiry ended, read after that life's ``ttl``
  tombstone, still goes out (naming no life), and the marker keeps its deletion time,
  except for a create: one dated after the erasure starts the next life, with the
  erasure as its floor, as it would have read in time (:func:`_erased_at`).
* Never early: a ``ttl`` tombstone's ``emitted_at`` (the clock) is >= ``expires_at``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable, Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from stream_expiry import native
from stream_expiry.model import HeldLife, Identity, InputEvent, Reason, Stamp, identity_of_key
from stream_expiry.packed import first_created, pack_tail, unpack_tail
from stream_expiry.wheel import TimingWheel

if TYPE_CHECKING:
    from stream_expiry.policy import Resolution

__all__ = ["Engine", "Fired", "Outcome", "Timer", "Verdict", "timer"]

S = TypeVar("S", bound=Hashable)  # the slot a record belongs to: (topic, partition) in the shell


class Verdict(StrEnum):
    """What an event did; the shell counts these as metrics."""

    CREATED = "created"
    RECREATED = "recreated"  # a new life after a tombstone
    REDELIVERED = "redelivered"  # a create for a known record: nothing moved
    BACKDATED = "backdated"  # an earlier create: created_at moved back
    EXTENDED = "extended"
    TOUCH_IGNORED = "touch_ignored"  # non-sliding category, or no later expiry
    STALE = "stale"  # at or before a deletion
    DELETED = "deleted"


class Fired(NamedTuple):
    """A tombstone to emit. ``before`` goes in the message, ``after`` into the index."""

    before: Stamp
    after: Stamp
    reason: Reason
    emitted_at: int
    # False: the tombstone ends no life of the changelog's (an erasure of lives its
    # deletions ended already, :meth:`Engine._erase_ended`), so no null follows it.
    ends_life: bool = True
    # The erasure request an explicit tombstone carries out, as the shell names it (its
    # headers: where it was read, its event id); None for expiries, and for an erasure a
    # legal hold deferred (decided at the release, from the record's state alone).
    request: tuple[tuple[str, bytes], ...] | None = None
    # True: the tombstone event went out already, when the life ended; only its null goes
    # out (again), to end the changelog where that end left it: the release of an erasure
    # a legal hold deferred that names no life (``PartitionProcessor._erase_no_life``).
    null_only: bool = False
    # Why a tombstone goes out more than ``codec.LATE_AFTER_MS`` after it was due
    # (``codec.LATE_CAUSES``), as the processor knows it: a ``ttl`` one after its expiry,
    # an erasure after its request; None when it is on time. The outbox gives it in the
    # ``expiry-late-cause`` header.
    late_cause: str | None = None
    # Where an erasure that ends the record ends the lives, when that is not ``after``'s
    # deletion: an erasure dated within a life its expiry ended, read after its ``ttl``
    # tombstone (:meth:`Engine._erase_ended`), ends them at its own time, and the next
    # life may begin after it (:func:`_erased_at`). None: at ``after.deleted_at``.
    erased_until: int | None = None
    # When the erasure was requested, when that is not the ``erase_at`` of the state the
    # tombstone ends (:attr:`requested`): an erasure dated before the running life's
    # previous deletion names that deletion's time (:meth:`Engine._erase_before`).
    requested_at: int | None = None

    @property
    def requested(self) -> int | None:
        """When an erasure's (``explicit``) tombstone's request was made: the delete
        event's own ``ts`` as read (``codec.H_ERASURE_REQUESTED_AT``). The engine keeps it
        as ``erase_at``: of the marker the tombstone leaves (the state after), or, for a
        tombstone that ends no life of the changelog's (a held earlier life, an erasure
        naming no life), of the life it names (the state before). None for an expiry."""
        if self.reason != "explicit":
            return None
        if self.requested_at is not None:
            return self.requested_at
        after = self.after.erase_at
        return after if after is not None and self.has_null else self.before.erase_at

    @property
    def deleted_until(self) -> int | None:
        """The ``expiry-deleted-at`` of a tombstone followed by a null (:attr:`has_null`),
        and of its null: the stores and the archive erase the lives created up to there
        (and a restore rebuilds the erasure's time from the null,
        :func:`stream_expiry.model.deletion_from_tombstone`)."""
        return self.after.deleted_at if self.erased_until is None else self.erased_until

    @property
    def has_null(self) -> bool:
        """Whether a null on ``expiry.stamped`` follows the tombstone: not when the record
        lives on (an earlier life's tombstone), nor when it ends no life. Without a null,
        an erasure's tombstone event alone says where it ends (``erased_until`` of
        ``before``, in its ``expiry-deleted-at`` header)."""
        return self.ends_life and not self.after.live


class Outcome(NamedTuple):
    """The effects of one event: store ``state`` (unless None), publish it if ``publish``."""

    verdict: Verdict
    state: Stamp | None
    publish: bool
    fired: tuple[Fired, ...] = ()


Resolver = Callable[[Identity, int], "Resolution"]


# A timer's record, packed: created_at, expires_at, ttl_ms, erase_at, stamp_offset, then
# the ttl source. The wheel holds a timer as ``(due, key, (bytes, slot))``: plain tuples of
# plain values, which the cyclic GC stops tracking after its first look, so a wheel of a
# million timers adds nothing to the pauses of later collections (a ``Stamp`` and its
# ``Identity`` stay tracked for life), and takes about half the memory. The tail (the
# source, and a previous life's deletion) is :mod:`stream_expiry.packed`'s.
_TIMER = struct.Struct(">qqqqq")
_TIMER_SIZE = _TIMER.size
_NONE = -(1 << 63)
# The first byte of a packed tail that holds more than the ttl source (a life's first
# creation 0xFD, held lives 0xFE, a previous deletion 0xFF: :mod:`stream_expiry.packed`);
# UTF-8 text never starts so.
_TAIL_MARKS = 0xFD


def _pack_timer_py(stamp: Stamp) -> bytes:
    _, created, expires, ttl, source, _, erase, _, offset, floor, lives, first = stamp
    return _TIMER.pack(
        _NONE if created is None else created,
        _NONE if expires is None else expires,
        _NONE if ttl is None else ttl,
        _NONE if erase is None else erase,
        _NONE if offset is None else offset,
    ) + pack_tail(source, floor, lives, first)


# Compiled where stream_expiry.native is built: the common timer packed in C, the rest by
# the function above.
_pack_timer: Callable[[Stamp], bytes] = (
    _pack_timer_py if native.compiled is None else native.compiled.timer_packer(_pack_timer_py)
)


Timer = tuple[str, int, bytes]
"""A record's timer as the wheel holds it: its key, its due time and :func:`_pack_timer`'s
bytes."""


def timer(stamp: Stamp) -> Timer | None:
    """``stamp``'s timer, or None when it has none (deleted, held, or never due)."""
    due = stamp.due_at
    if not stamp.live or stamp.held or due is None:
        return None
    return stamp.identity.key, due, _pack_timer(stamp)


def _unpack_timer(key: str, packed: bytes) -> Stamp:
    """The live, unheld record ``_pack_timer`` packed (only such records have timers)."""
    created, expires, ttl, erase, offset = _TIMER.unpack_from(packed)
    source, floor, lives = unpack_tail(packed, _TIMER.size)
    return Stamp(
        identity_of_key(key),
        None if created == _NONE else created,
        None if expires == _NONE else expires,
        None if ttl == _NONE else ttl,
        source,
        None,
        None if erase == _NONE else erase,
        False,
        None if offset == _NONE else offset,
        floor,
        lives,
        first_created(packed, _TIMER.size),
    )


def _fire_timer_py(key: str, packed: bytes, now_ms: int) -> Fired:
    """The tombstone of a timer ``_pack_timer`` packed, now due: ``_unpack_timer`` then
    ``Engine._fire`` in one step for the common case (an expiry, no erasure deferred),
    which builds both states straight from the packed fields. Once per tombstone.

    The commonest timer (a key with nothing quoted, a tail of the ttl source alone) is
    decoded inline, as :func:`identity_of_key` and :func:`unpack_tail` decode it: the two
    calls were 2,100 of the ~23,100 instructions this took (round 46, callgrind)."""
    created, expires, ttl, erase, offset = _TIMER.unpack_from(packed)
    if erase != _NONE:
        return Engine._fire(_unpack_timer(key, packed), "ttl", now_ms)
    floor: int | None = None
    lives: tuple[HeldLife, ...] = ()
    first: int | None = None
    if "%" in key or (len(packed) > _TIMER_SIZE and packed[_TIMER_SIZE] >= _TAIL_MARKS):
        identity = identity_of_key(key)
        source, floor, lives = unpack_tail(packed, _TIMER_SIZE)
        first = first_created(packed, _TIMER_SIZE)
    else:
        parts = key.split("/")  # five: a key without '%' has its parts as they are
        identity = Identity.__new__(Identity)
        identity.org, identity.bot, identity.env, identity.category, identity.record_id = parts
        identity.key = key
        source = packed[_TIMER_SIZE:].decode() or None
    c = None if created == _NONE else created
    t = None if ttl == _NONE else ttl
    o = None if offset == _NONE else offset
    before = Stamp(identity, c, expires, t, source, None, None, False, o, floor, lives, first)
    after = Stamp(identity, c, expires, t, source, expires - 1, None, False, o)
    return Fired(before, after, "ttl", now_ms)


# Compiled where stream_expiry.native is built: the commonest timer fired in C (its
# Identity, both states and the Fired built there), any other by the function above.
_fire_timer: Callable[[str, bytes, int], Fired] = (
    _fire_timer_py
    if native.compiled is None
    else native.compiled.timer_firer(_fire_timer_py, Fired)
)


def _erased_at(marker: Stamp, ended: int) -> int:
    """Where ``marker``'s life ended for a create: at the erasure :meth:`Engine._erase_ended`
    recorded on it (a life its expiry had ended, and the request, dated within that life,
    read after the ``ttl`` tombstone), else at ``ended``, its deletion.

    Read in time, that request ended the life at its own time and a create after it
    started the next life (the contract: "a create with ts > d starts a new life"); read
    late, the create, dated before the expiry, was dropped as stale, and the next life
    was never stamped nor tombstoned (a review). Events are read late for many reasons (a
    producer's late send, a paused reader), so the decision must not depend on it. Only
    such a marker has an erasure within its life (``created_at <= erase_at < deleted_at``):
    an explicit delete's ends at ``max(d, created_at)`` (``erase_at < deleted_at`` only
    for a request dated before the life's creation), and a marker restored from a null
    knows one time only (``erase_at == deleted_at``). A marker with no creation time (an
    erasure a legal hold deferred, released; a restore without the ``ttl`` tombstone)
    keeps its deletion: nothing says the request was dated within the life it ended.
    Only a create: a ``touch`` before a tombstoned life's expiry changes nothing (the
    contract), and a later erasure dated within the life stays stale, as before (the
    first erased the life's data)."""
    erase, created = marker.erase_at, marker.created_at
    if erase is not None and created is not None and created <= erase < ended:
        return erase
    return ended


class Engine(Generic[S]):
    """Decides each event's effect and keeps the timers due before ``horizon_end``."""

    def __init__(
        self,
        resolve: Resolver,
        sliding: frozenset[str],
        *,
        now_ms: int,
        tick_ms: int = 10,
        horizon_ms: int = 3_600_000,
        phase: int = 0,
    ) -> None:
        self._resolve = resolve
        self._sliding = sliding
        self._horizon_ms = horizon_ms
        self._wheel: TimingWheel[str, tuple[bytes, S]] = TimingWheel(
            tick_ms=tick_ms, start_ms=now_ms, phase=phase
        )
        self.horizon_end = now_ms + horizon_ms
        # Timers the wheel gave up as due that a limited ``advance`` has not taken yet, in
        # due order: ``_overdue[_overdue_at:]``. ``_overdue_live`` maps the key of each one
        # still to fire to its entry: an event that changes or ends the record first
        # takes it out, as it would take the timer out of the wheel.
        self._overdue: list[tuple[int, str, tuple[bytes, S]]] = []
        self._overdue_at = 0
        self._overdue_live: dict[str, tuple[int, str, tuple[bytes, S]]] = {}

    # -- events -------------------------------------------------------------------------

    def feed(self, event: InputEvent, prior: Stamp | None, now_ms: int, slot: S) -> Outcome:
        """Apply one valid event to the record's ``prior`` state (None: never seen)."""
        fired: tuple[Fired, ...] = ()
        t = event.ts
        if (
            prior is not None
            and prior.live
            and prior.expires_at is not None
            and prior.expires_at <= now_ms
            and t >= prior.expires_at
        ):
            # The previous life ended before this event; its tombstone goes out first.
            self.cancel(prior.identity.key)
            ended = self._fire(prior, "ttl", now_ms)
            fired, prior = (ended,), ended.after
        outcome = self._decide(event, prior, now_ms)
        if outcome.state is not None:
            self._track(outcome.state, slot)
        if fired:
            return outcome._replace(fired=fired + outcome.fired)
        return outcome

    def _decide(self, event: InputEvent, prior: Stamp | None, now_ms: int) -> Outcome:
        t, op = event.ts, event.op
        if prior is not None and not prior.live:
            assert prior.deleted_at is not None
            ended = prior.deleted_at
            if op == "create":
                ended = _erased_at(prior, ended)
            if t <= ended:
                if op == "delete" and prior.erase_at is None:
                    return self._erase_ended(prior, t, now_ms)
                return Outcome(Verdict.STALE, None, False)
            floor = ended  # the new life remembers it
            prior = None  # a new life, or a new erasure request
            new_life = True
        else:
            floor = None
            new_life = False
        if op == "delete":
            before = None if prior is None else prior.previous_deleted_at
            if prior is not None and before is not None and t <= before:
                return self._erase_before(prior, t, now_ms)
            return self._delete(event, prior, now_ms)
        if prior is None:
            if op == "touch" and event.identity.category not in self._sliding:
                return Outcome(Verdict.TOUCH_IGNORED, None, False)
            stamp = self._stamp(event.identity, t, floor)
            return Outcome(Verdict.RECREATED if new_life else Verdict.CREATED, stamp, True)
        if op == "create":
            if prior.created_at is None or t >= prior.created_at:
                return Outcome(Verdict.REDELIVERED, None, False)
            floor = prior.previous_deleted_at
            if floor is not None and t <= floor:
                # A create of the life that ended then, redelivered: moving this life back
                # over that deletion would bring the deleted life back.
                return Outcome(Verdict.STALE, None, False)
            return self._backdate(event, prior, floor)
        # touch on a live record
        if (
            event.identity.category not in self._sliding
            or prior.ttl_ms is None
            or prior.expires_at is None
        ):
            return Outcome(Verdict.TOUCH_IGNORED, None, False)
        slid = t + prior.ttl_ms
        if slid <= prior.expires_at:
            return Outcome(Verdict.TOUCH_IGNORED, None, False)
        return Outcome(Verdict.EXTENDED, prior._replace(expires_at=slid), True)

    def _backdate(self, event: InputEvent, prior: Stamp, floor: int | None) -> Outcome:
        """A create from before the record's creation: the earliest creation time wins, with
        the TTL of that time and the activity a touch slid the record to, unless that would
        end the life later (or never): a redelivery never extends a life, so it then changes
        nothing. A stamp always re-derives to its own expiry (``replay`` under the same
        policy moves nothing); keeping the old expiry under the new TTL did not (a replay
        then extended the record, or made it never expire).

        Nor may it end the life at or before a creation any stamp of the life said: the
        latest is the first stamp's (``first_created_at``, kept on the moved stamp), not
        the running one's. Such a create is an earlier life's, which would have ended before
        this one began; it moves nothing. Checked against the running stamp's creation
        alone, creates read one after another, each earlier than the last and overlapping
        it (an error record, ttl 50: created 100, then 60, then 20), moved the life back
        twice, to an expiry (70) before its first stamp's creation (100). The life's ``ttl``
        tombstone ends the stamps created before its expiry (the stores' window,
        ``TombstoneChange.window``), so a store that held the first stamp's row left it
        and wrote a receipt of nothing; the null then deleted the row, its deletion
        waiting for a tombstone that had come (the sweep's second receipt); and the data
        of 100 was deleted at 70, before its creation, where read in order (20, 60, 100)
        the life of 100 runs to 150. The life a create moves back still ends after every
        stamp written for it, so its tombstone is never early for any of them."""
        fresh = self._stamp(event.identity, event.ts, floor)
        expires, ttl = fresh.expires_at, fresh.ttl_ms
        old_expires, old_ttl = prior.expires_at, prior.ttl_ms
        if (
            expires is not None
            and ttl is not None
            and old_expires is not None
            and old_ttl is not None
            and event.identity.category in self._sliding
        ):
            # The life's last activity (a touch that slid it, or the touch that started it,
            # read before this create: one record's events produced to two partitions and
            # re-keyed meet in any order) stays, under this TTL.
            expires = max(expires, old_expires - old_ttl + ttl)
        if old_expires is not None and (expires is None or expires > old_expires):
            return Outcome(Verdict.REDELIVERED, None, False)
        began = prior.created_at if prior.first_created_at is None else prior.first_created_at
        if expires is not None and began is not None and expires <= began:
            # Not this life's create: its life would have ended by the time this one began
            # (read first, this one is a later life, as a create at or after an expiry
            # is). Moved back over it, this life ended at that earlier expiry, before its
            # own: a record created at 6.5 s with a ttl of 1 s, its create of 5 s read
            # after, was tombstoned at 6 s (and a restore, reading them in the other
            # order, kept both lives). The record's running life stays; nothing moves.
            return Outcome(Verdict.REDELIVERED, None, False)
        # Lives a legal hold keeps stay with the record whatever its creation time.
        moved = fresh._replace(
            expires_at=expires, held_lives=prior.held_lives, first_created_at=began
        )
        return Outcome(Verdict.BACKDATED, moved, True)

    def _delete(self, event: InputEvent, prior: Stamp | None, now_ms: int) -> Outcome:
        if prior is None:
            prior = Stamp(event.identity, None, None, None, None)
        self.cancel(prior.identity.key)
        deleted_at = event.ts if prior.created_at is None else max(event.ts, prior.created_at)
        # ``erase_at`` on a marker: the life ended by an erasure, which reached the stores.
        after = prior._replace(deleted_at=deleted_at, erase_at=event.ts)
        fired = Fired(prior, after, "explicit", now_ms)
        return Outcome(Verdict.DELETED, fired.after, False, (fired,))

    @staticmethod
    def _erase_ended(marker: Stamp, requested_at: int, now_ms: int) -> Outcome:
        """An erasure request for a life its expiry ended first, read late (a backlog, a
        takeover): that life's ``ttl`` tombstone told an archive to keep its data, so the
        erasure still goes out, once. The marker keeps its deletion time (events up to it
        stay stale, but a create after the request starts the next life, as read in
        time: :func:`_erased_at`) and remembers the erasure in ``erase_at``: a
        redelivery of the request changes nothing. (Under a legal hold the processor
        defers it instead.)

        A request dated before the ended life's creation is not that life's (a create after
        a deletion starts a new life: the request that ended the life before it, read
        again, say, by a new consumer group): it erases the lives before, never that one,
        as :meth:`_erase_before` does for a running life. Its tombstone names no life and
        says the request's time (``expiry-deleted-at``), with no null (an explicit null
        erases what the archive holds of the key at lower offsets, the ended life too), and
        the marker stays as it is: an erasure of that life, read late, still goes out."""
        created = marker.created_at
        if created is not None and requested_at < created:
            earlier = Stamp(marker.identity, None, None, None, None, None, requested_at)
            fired = Fired(earlier, marker, "explicit", now_ms, False)
            return Outcome(Verdict.DELETED, None, False, (fired,))
        after = marker._replace(erase_at=requested_at)
        # It names no life, as an erasure of a record never seen. Its header (and its
        # null's) says the request's time, where it ends the lives: a create after it
        # starts the next life (:func:`_erased_at`), which no store, nor the archive, may
        # take for one this erasure ended; and a restore rebuilds the marker's ``erase_at``
        # from it, with the ended life's ``ttl`` tombstone.
        nobody = Stamp(marker.identity, None, None, None, None)
        fired = Fired(nobody, after, "explicit", now_ms, erased_until=requested_at)
        return Outcome(Verdict.DELETED, after, False, (fired,))

    @staticmethod
    def _erase_before(live: Stamp, requested_at: int, now_ms: int) -> Outcome:
        """An erasure request dated at or before the deletion that ended the record's
        previous life, read while its next life runs: re-delivered (the request that ended
        that life, read again after a crash before its offset was committed), or read late
        after the previous life's expiry. It belongs to the lives before, never to this
        one (the contract: events up to a deletion are ignored, and a create after it
        starts a new life), so the running life stays as it is. Its tombstone names no
        life and says the previous deletion's time (the ``expiry-deleted-at`` header): the
        stores and the archive erase what is left of the lives up to there, as for an
        erasure read after a life's expiry (:meth:`_erase_ended`), and nothing newer. A
        re-delivered one repeats a tombstone the stores have applied: tombstones are
        at-least-once, and that one deletes nothing."""
        floor = live.previous_deleted_at
        assert floor is not None
        earlier = Stamp(live.identity, None, None, None, None, None, floor)  # erase_at: floor
        fired = Fired(earlier, live, "explicit", now_ms, requested_at=requested_at)
        return Outcome(Verdict.DELETED, None, False, (fired,))

    def _stamp(self, identity: Identity, created_at: int, floor: int | None = None) -> Stamp:
        res = self._resolve(identity, created_at)
        if res.ttl_ms is None:
            return Stamp(identity, created_at, None, None, None, None, None, False, None, floor)
        ttl = res.ttl_ms
        return Stamp(
            identity, created_at, created_at + ttl, ttl, res.source, None, None, False, None, floor
        )

    @staticmethod
    def _fire(stamp: Stamp, reason: Reason, now_ms: int) -> Fired:
        if stamp.erase_at is not None:  # an erasure a legal hold deferred
            # At its request, its life's creation, or the end of the life it erases (a
            # life its expiry had ended, which a hold kept from the request): the latest.
            erase = stamp.erase_at
            deleted_at = max(erase, stamp.created_at or erase, stamp.previous_deleted_at or erase)
            after = stamp._replace(deleted_at=deleted_at, held=False)
            return Fired(stamp._replace(held=False), after, "explicit", now_ms)
        expires = stamp.expires_at
        assert expires is not None
        if stamp.held:
            stamp = stamp._replace(held=False)
        # The constructor, not ``_replace``: this runs once per tombstone, and ``_replace``
        # (a keyword call, a dict and ``_make``) costs three times as much.
        identity, created, _, ttl, source, _, _, _, offset, _, _, _ = stamp
        after = Stamp(identity, created, expires, ttl, source, expires - 1, None, False, offset)
        return Fired(stamp, after, reason, now_ms)

    # -- timers -------------------------------------------------------------------------

    def _track(self, stamp: Stamp, slot: S) -> None:
        """Keep the wheel in step with a record's new state."""
        key = stamp.identity.key
        due = stamp.due_at
        if self._overdue_live:
            self._overdue_live.pop(key, None)
        if stamp.live and not stamp.held and due is not None and due < self.horizon_end:
            self._wheel.schedule(key, due, (_pack_timer(stamp), slot))
        else:
            self._wheel.cancel(key)

    def fire_now(self, stamp: Stamp, now_ms: int) -> Fired:
        """The tombstone of a record a legal hold kept, once released: it is due already
        (its expiry passed, or its erasure was requested)."""
        self.cancel(stamp.identity.key)
        return self._fire(stamp, "ttl", now_ms)

    def cancel(self, key: str) -> None:
        """Forget a record's timer (a legal hold took it over, or it fires now)."""
        self._wheel.cancel(key)
        if self._overdue_live:
            self._overdue_live.pop(key, None)

    def advance(self, now_ms: int, limit: int | None = None) -> list[tuple[Fired, S]]:
        """Tombstones for the timers due at ``now_ms``, in expiry order; never early.

        ``limit``: at most that many; the rest stay due (``next_due_ms``) for the next
        call. A backlog of due timers is thus fired in slices, each turned into tombstones
        (objects that live until their batch is settled) only when its turn comes.
        """
        taken = self._take_overdue(now_ms, limit) if self._overdue_live else []
        room = None if limit is None else limit - len(taken)
        if self._overdue_live or room == 0:
            return taken
        due = self._wheel.advance(now_ms)
        if due and due[-1][0] > now_ms:  # in due order: a clock stepped back, see below
            due = self._not_early(due, now_ms)
        if room is not None and len(due) > room:
            self._overdue, self._overdue_at = due, 0
            self._overdue_live = {entry[1]: entry for entry in due}
            return taken + self._take_overdue(now_ms, room)
        return taken + [(_fire_timer(key, packed, now_ms), slot) for _, key, (packed, slot) in due]

    def _not_early(
        self, due: list[tuple[int, str, tuple[bytes, S]]], now_ms: int
    ) -> list[tuple[int, str, tuple[bytes, S]]]:
        """The timers of ``due`` due by ``now_ms``; the others go back into the wheel.

        The wheel's time never moves back, so after the wall clock stepped back (an NTP
        step, a VM restored) it gives every timer due by the latest time it saw: those
        due between the clock's time and that one, fired now, were early (a review). Put
        back, they come out at each advance until the clock passes them (a tick's work
        each, for as long as the step lasts)."""
        schedule = self._wheel.schedule
        for entry in due:
            if entry[0] > now_ms:
                schedule(entry[1], entry[0], entry[2])
        return [entry for entry in due if entry[0] <= now_ms]

    def _take_overdue(self, now_ms: int, limit: int | None) -> list[tuple[Fired, S]]:
        """Up to ``limit`` tombstones of the overdue timers no event took out, in order."""
        live, entries, i = self._overdue_live, self._overdue, self._overdue_at
        taken: list[tuple[Fired, S]] = []
        while i < len(entries) and (limit is None or len(taken) < limit):
            entry = entries[i]
            if entry[0] > now_ms:
                # The clock stepped back since the wheel gave these up (in due order: the
                # rest are later still). Fired now, they were early (emitted before their
                # expiry), and they held back the wheel's timers due before them: they go
                # back into the wheel, as ``_not_early`` puts back its own.
                schedule = self._wheel.schedule
                for rest in entries[i:]:
                    if live.get(rest[1]) is rest:
                        del live[rest[1]]
                        schedule(rest[1], rest[0], rest[2])
                i = len(entries)
                break
            i += 1
            _, key, (packed, slot) = entry
            if live.get(key) is entry:
                del live[key]
                taken.append((_fire_timer(key, packed, now_ms), slot))
        self._overdue_at = i
        if not live:
            self._overdue, self._overdue_at = [], 0
        return taken

    def next_due_ms(self) -> int | None:
        """The earliest due time of a timer not fired yet (None: none)."""
        live = self._overdue_live
        if live:
            entries, i = self._overdue, self._overdue_at
            while live.get(entries[i][1]) is not entries[i]:  # taken out by an event
                i += 1
            self._overdue_at = i
            return entries[i][0]
        return self._wheel.next_due_ms()

    def horizon_target(self, now_ms: int, *, eager: bool = False) -> int | None:
        """The new horizon end when the shell should load the next slice, else None.

        Loading when a quarter of the horizon is used keeps slices large (few index
        queries) while the wheel always holds at least three quarters of an horizon ahead.
        ``eager``: whenever the end is short of a whole horizon (the shell stopped the last
        slice early, at its limit of timers, and goes on from there).
        """
        target = now_ms + self._horizon_ms
        if target - self.horizon_end >= (1 if eager else self._horizon_ms // 4):
            return target
        return None

    def extend_horizon(self, new_end: int, timers: Iterable[Timer], slot: S) -> None:
        """Schedule ``timers`` (``horizon_end <= due < new_end``) and move the end."""
        self.horizon_end = max(self.horizon_end, new_end)
        self.load_timers(timers, slot)

    def start_horizon(self, end: int, timers: Iterable[Timer], slot: S) -> None:
        """Schedule ``timers`` (every one due before ``end``) into a wheel that holds no
        stored timer yet, ``end`` the horizon's end from now on (on start, where the shell
        may load less than a whole horizon)."""
        self.horizon_end = end
        self.load_timers(timers, slot)

    def load_timers(self, timers: Iterable[Timer], slot: S) -> None:
        """Schedule stored records' timers, packed as the wheel holds them (:func:`timer`,
        or the store's :func:`~stream_expiry.state.codec.timer_of_state`, which builds no
        :class:`Stamp`): what :meth:`load` does for live, unheld records."""
        wheel, end = self._wheel, self.horizon_end
        for key, due, packed in timers:
            if self._overdue_live:
                self._overdue_live.pop(key, None)
            if due < end:
                wheel.schedule(key, due, (packed, slot))
            else:
                wheel.cancel(key)

    def load(self, stamps: Iterable[tuple[Stamp, S]]) -> None:
        """Schedule stored records (on start or partition assignment)."""
        for stamp, slot in stamps:
            self._track(stamp, slot)

    def shrink_horizon(self, keep: int) -> int:
        """Keep at most ``keep`` timers in the wheel, the earliest, by moving the horizon's
        end back to the first one dropped: the dropped ones and every later record wait in
        the index until the shell loads them again (``extend_horizon``). Returns how many
        were dropped (0: the wheel holds ``keep`` or fewer, or its earliest are due at one
        millisecond or already)."""
        before = len(self._wheel)
        cutoff = self._wheel.keep_earliest(keep)
        if cutoff is None:
            return 0
        self.horizon_end = min(self.horizon_end, cutoff)
        return before - len(self._wheel)

    @property
    def wheel_size(self) -> int:
        """Timers in the wheel (not counting those due and not fired yet)."""
        return len(self._wheel)

    @property
    def pending_in_wheel(self) -> int:
        """Timers held: in the wheel, or due and not fired yet."""
        return len(self._wheel) + len(self._overdue_live)

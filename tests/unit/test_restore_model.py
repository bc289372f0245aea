"""A store restored from the changelog behaves as the store it was written from.

The processor's effects are written out as the contract's changelog (a stamp per
published state on ``expiry.stamped``, and per tombstone a tombstone event plus a null
carrying ``expiry-deleted-at``); a new store restored from those messages alone, with a
new processor over it, must then decide every later event exactly as the original does:
same stamps, same tombstones, at the same times. No broker: the restore's own decoding
and writing (``_apply_stamps``, ``_apply_tombstones``), fed the messages in log order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream_expiry import codec, model
from stream_expiry.engine import Fired
from stream_expiry.holds import Hold, HoldBook
from stream_expiry.outbox import _erasure_read_at, _stamp_headers
from stream_expiry.policy import Resolution
from stream_expiry.state import Effects, MemoryKV, PartitionProcessor, PartitionStore
from stream_expiry.state.restore import RestoreReport, _apply_stamps, _apply_tombstones
from tests.unit.test_engine import BASE, CATS, OPS_, SLIDING, Harness, ev

if TYPE_CHECKING:
    from collections.abc import Iterable

SOURCE = codec.source_headers("in", 0)
# The engine test's ttls and times, 20 times longer: stamps carry whole seconds
# (``ttl_seconds``), as every configured ttl is.
TTL = {"conversation": 20_000, "session": 6_000, "error": 1_000, "analytics": None}
GRID = st.integers(-8, 8).map(lambda k: k * 1_000)


def resolve(identity: model.Identity, at_ms: int) -> Resolution:
    ttl = TTL[identity.category]
    return Resolution(ttl, None if ttl is None else "default")


def harness(store: PartitionStore, now: int, holds: HoldBook | None = None) -> Harness:
    """The engine test's harness over ``store``, with the ttls above."""
    h = Harness(horizon_ms=100_000)
    h.now = now
    h.proc = PartitionProcessor(
        "in",
        0,
        store,
        resolve=resolve,
        sliding=SLIDING,
        categories=frozenset(TTL),
        max_skew_ms=10**12,
        now_ms=BASE + now,
        tick_ms=10,
        horizon_ms=100_000,
        holds=holds,
    )
    return h


@dataclass
class Message:
    """What the restore reads of a consumed changelog message."""

    offset: int
    key: bytes | None  # None: not a record's message (a restore skips it)
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes]]


@dataclass
class Changelog:
    stamped: list[Message] = field(default_factory=list)
    tombstones: list[Message] = field(default_factory=list)

    def write(self, effects: Effects, now_ms: int) -> None:
        """The messages the service produces for ``effects`` (``Outbox._encode``)."""
        for stamps, tombstones in effects.runs():
            for state, data in stamps:
                value = model.encode_stamp(state, data)
                # As the outbox writes them: due on arrival, the deferred erasures' requests
                # (and where the stamp's own was read).
                headers = _stamp_headers(
                    state,
                    SOURCE,
                    effects.due_on_arrival,
                    effects.held_requests,
                    effects.erasures_read,
                )
                self._add(self.stamped, state.identity.key, value, now_ms, headers)
            for fired in tombstones:
                key, at = fired.before.identity.key, fired.emitted_at
                # Where an erasure ending a life was read: on its tombstone and its null.
                said = fired.has_null and _erasure_read_at(fired, effects.erasures_read or {})
                read_at = [said] if said else []
                if not fired.null_only:  # else its tombstone event went out before
                    event = model.encode_tombstone(fired.before, reason=fired.reason, emitted_at=at)
                    self._add(self.tombstones, key, event, at, [*SOURCE, *read_at])
                if not fired.has_null:
                    continue  # an earlier life a hold kept (the record lives on), or no life
                deleted = [
                    *SOURCE,
                    (codec.H_DELETED_AT, str(fired.deleted_until).encode()),
                    (codec.H_REASON, fired.reason.encode()),
                    *read_at,
                ]
                self._add(self.stamped, key, None, at, deleted)

    @staticmethod
    def _add(
        log: list[Message], key: str, value: bytes | None, at: int, headers: list[tuple[str, bytes]]
    ) -> None:
        log.append(Message(len(log), key.encode(), value, at, headers))

    def restore(
        self, now_ms: int, store: PartitionStore | None = None, since: tuple[int, int] = (0, 0)
    ) -> PartitionStore:
        """A store restored from the changelog: an empty one from all of it, or ``store``
        (what an instance kept) from the messages written ``since`` it had them."""
        store = store if store is not None else PartitionStore(MemoryKV())
        report = RestoreReport()
        _apply_stamps(store, self.stamped[since[0] :], now_ms, {}, report)
        _apply_tombstones(store, self.tombstones[since[1] :], now_ms, {}, report)
        assert report.unreadable == 0
        return store

    def compacted(self) -> Changelog:
        """``expiry.stamped`` as compaction leaves it once ``delete.retention.ms`` passed:
        the last message of each key, and no key whose last message is a null. The
        tombstone events, on their own retention, are all there."""
        last = {m.key: m for m in self.stamped}
        kept = [m for m in self.stamped if last[m.key] is m and m.value is not None]
        return Changelog(kept, list(self.tombstones))

    @property
    def ends(self) -> tuple[int, int]:
        return len(self.stamped), len(self.tombstones)


def _copy(store: PartitionStore) -> PartitionStore:
    """The store as it is now, kept by an instance that then lost the partition."""
    kv = MemoryKV()
    kv.apply(dict(store.kv.scan(b"", b"\xff" * 8)), ())
    return PartitionStore(kv)


def _stamps(effects: Effects) -> list[tuple[str, int | None, int | None]]:
    return [(s.identity.key, s.created_at, s.expires_at) for s, _ in effects.stamps]


def _tombstones(effects: Effects) -> list[tuple[model.Stamp, str, int, str | None]]:
    """What a tombstone says (why it is late too), and the state it ended; where its
    stamp sits on the topic aside (the harness's own broker assigns no offsets; the
    restored store has them). Sorted: records due at the same time may fire in any order."""
    return sorted(
        (
            (f.before._replace(stamp_offset=None), f.reason, f.emitted_at, f.late_cause)
            for f in effects.tombstones
        ),
        key=repr,
    )


Step = tuple[object, ...]


def _repeats_an_erasure(x: object, earlier: list[object]) -> bool:
    """Whether ``x`` is an erasure read again while the record's next life runs
    (``Engine._erase_before``: its tombstone names no life, and says the deletion that ended
    the lives before), of a record the original already erased. The restored processor
    reads the input again from the committed offset, which a parked create keeps back, and
    tombstones are at-least-once: the repeat deletes nothing the first one left (its
    ``expiry-deleted-at`` is before the running life). A falsifying example of the
    legal-hold property (round 42's CI): an erasure of a session never seen, then its
    create, behind a create parked for another record."""
    if not (isinstance(x, tuple) and len(x) == 2 and x[1] == "explicit"):
        return False
    before = x[0]
    if not isinstance(before, model.Stamp) or before.created_at is not None:
        return False
    if before.erase_at is None:
        return False
    return any(
        isinstance(y, tuple)
        and len(y) == 2
        and y[1] == "explicit"
        and isinstance(y[0], model.Stamp)
        and y[0].identity == before.identity
        for y in earlier
    )


def _decided(effects: Iterable[Effects]) -> list[object]:
    """The stamps written and the lives ended (by which rule), when aside."""
    out: list[object] = []
    for e in effects:
        out += _stamps(e)
        out += [(before, reason) for before, reason, _, _ in _tombstones(e)]
    return out


def _steps(ids: list[str], *more: st.SearchStrategy[Step]) -> st.SearchStrategy[list[Step]]:
    """Events for records ``ids`` and moves of the clock (the engine test's steps, on the
    longer grid), and ``more`` kinds of step."""
    return st.lists(
        st.one_of(
            st.tuples(st.just("event"), CATS, st.sampled_from(ids), OPS_, GRID),
            st.tuples(st.just("advance"), st.integers(0, 14).map(lambda k: k * 1_000)),
            *more,
        ),
        max_size=40,
    )


steps = _steps(["a", "b", "c"])


@settings(max_examples=300, deadline=None)
@given(before=steps, after=steps)
def test_a_restored_store_decides_every_later_event_as_the_original(
    before: list[Step], after: list[Step]
) -> None:
    _check_restore(before, after)


@settings(max_examples=300, deadline=None)
@given(before=steps, after=steps, kept=st.integers(0, 40))
def test_a_store_kept_from_before_and_restored_since_decides_as_the_original(
    before: list[Step], after: list[Step], kept: int
) -> None:
    """The partition comes back to an instance that kept its store (a warm restart, a
    handoff and back): only what was written since is restored, over what it kept."""
    _check_restore(before, after, kept=kept)


hold_steps = _steps(
    ["a", "b"], st.tuples(st.sampled_from(["hold", "release"]), st.sampled_from(["a", "b"]))
)


# 1,000 examples, not 300: at 300 it missed the example below, which 4,000 found.
@settings(max_examples=1000, deadline=None)
@given(before=hold_steps, after=hold_steps, kept=st.one_of(st.none(), st.integers(0, 40)))
# Found by a deep run (4,000 examples): b's next life starts while the hold keeps its first
# and falls due under it too; released, the restored processor lets both go by the overdue
# timer, the original by its release scan, and the running life's tombstone must name the
# same state either way (without the lives already tombstoned before it).
@example(
    before=[
        ("event", "conversation", "b", "create", 0),
        ("advance", 13000),
        ("hold", "b"),
        ("advance", 7000),
        ("event", "conversation", "b", "create", 0),
        ("advance", 20000),
        ("release", "b"),
    ],
    after=[],
    kept=None,
)
# Found once creates were parked until their record's running life expired (round 36): a
# session created again, dated at its expiry and read before it (parked), then erased
# before that expiry; the erasure read again after the restore. The original decided the
# parked create only at the expiry, the restored one (reading the input again) at once.
@example(
    before=[
        ("event", "session", "b", "create", 0),
        ("advance", 2000),
        ("event", "session", "b", "create", 4000),
        ("event", "session", "b", "delete", 0),
    ],
    after=[("event", "session", "b", "delete", 0)],
    kept=None,
)
# And a create parked twice for one record (the second behind a create that moved the
# running life's creation back): the heap kept a wake time of one already decided.
@example(
    before=[],
    after=[
        ("event", "error", "a", "create", 1000),
        ("event", "error", "a", "create", 2000),
        ("event", "error", "a", "create", 0),
        ("event", "error", "a", "create", 1000),
    ],
    kept=None,
)
# And a create parked for its running life's expiry, which a create then moved back to
# the clock's time, a hold placed before the timer fired: the original woke the parked
# create only at the old expiry (after the release), the restored one, reading it again,
# decided it at once under the hold (the due life kept among the next life's lives).
@example(
    before=[
        ("event", "error", "a", "create", 0),
        ("event", "error", "a", "create", 2000),
        ("advance", 2000),
        ("event", "error", "a", "create", 1000),
        ("event", "error", "a", "create", -1000),
        ("hold", "a"),
    ],
    after=[],
    kept=None,
)
# Two erasures dated before an ended life's creation, read under a hold, wait together
# (each goes out at the release, as without the hold); read again after the restore, and
# a next life started over them, which keeps both.
@example(
    before=[
        ("advance", 2000),
        ("event", "error", "a", "create", 1000),
        ("advance", 3000),
        ("hold", "a"),
        ("event", "error", "a", "delete", -3000),
        ("event", "error", "a", "delete", -4000),
    ],
    after=[
        ("event", "error", "a", "delete", -4000),
        ("event", "error", "a", "delete", -3000),
        ("event", "error", "a", "create", 0),
    ],
    kept=None,
)
# Found by a random run: read after the create of 6 s, a create of 5 s moved the error's
# life back to end at 6 s, where the restored processor, reading the create of 6 s again
# against that life, started a life after it. An earlier life's create moves nothing now.
@example(
    before=[
        ("event", "session", "a", "create", 0),
        ("advance", 5000),
        ("event", "session", "a", "create", 1000),
        ("event", "error", "b", "create", 1000),
        ("event", "error", "b", "create", 0),
    ],
    after=[],
    kept=None,
)
# An erasure of a record never seen, deferred by a hold released before the restore: "hold"
# on both sides (found by CI's random run, with the property's allowance too wide).
@example(
    before=[
        ("advance", 5000),
        ("hold", "b"),
        ("event", "conversation", "b", "delete", -5000),
        ("advance", 61000),
        ("release", "b"),
    ],
    after=[],
    kept=None,
)
# And an erasure a hold deferred of a life due on arrival: late for the hold on both sides.
@example(
    before=[
        ("advance", 1000),
        ("event", "error", "b", "create", -1000),
        ("hold", "b"),
        ("event", "error", "b", "delete", 0),
    ],
    after=[],
    kept=None,
)
# Found by random runs (two helpers' suites): an error held past its expiry, its hold
# released before a restore from the changelog, which cannot know it was held: "catch_up"
# there, "hold" in the original (documented; see _check_restore).
@example(
    before=[
        ("event", "error", "b", "create", 0),
        ("hold", "b"),
        ("advance", 62000),
        ("release", "b"),
    ],
    after=[],
    kept=None,
)
# Found by a random run (seed 1012): a session due on arrival, a hold placed before the
# firing took it, released before the restore: the original said "hold" at the release, the
# restored processor "late_event" from the stamp's header. The first cause is said now.
@example(
    before=[
        ("event", "conversation", "a", "create", 0),
        ("advance", 6000),
        ("event", "session", "a", "create", -6000),
        ("hold", "a"),
        ("advance", 61000),
        ("release", "a"),
    ],
    after=[],
    kept=None,
)
def test_restored_under_legal_holds_it_still_decides_as_the_original(
    before: list[Step], after: list[Step], kept: int | None
) -> None:
    """Holds live on their own topic and survive a restore; what they kept (a held
    record, an erasure deferred) is restored from the stamps and the holds alone."""
    _check_restore(before, after, kept=kept)


def _check_restore(before: list[Step], after: list[Step], kept: int | None = None) -> None:
    """Play ``before`` on the original, restore a second processor (from the whole
    changelog, or over a copy of the original's store taken after ``kept`` steps), then
    play ``after`` on both: every step's stamps and tombstones must be the same."""
    books = (HoldBook(), HoldBook())
    original = harness(PartitionStore(MemoryKV()), 0, books[0])
    log = Changelog()
    settle = original._settle

    def settle_and_log(effects: Effects) -> None:
        log.write(effects, BASE + original.now)
        settle(effects)

    original._settle = settle_and_log  # type: ignore[method-assign]
    now = 0

    def play(step: Step) -> tuple[Effects, ...]:
        nonlocal now
        if step[0] in ("hold", "release"):
            for book in books:
                if step[0] == "hold":
                    book.place(Hold(f"h-{step[1]}", "o", None, None, None, str(step[1]), "", 0))
                else:
                    book.release(f"h-{step[1]}")
            return tuple(Effects(0) for _ in pair)
        if step[0] == "advance":
            now += int(step[1])  # type: ignore[call-overload]
            return tuple(h.step_advance(now) for h in pair)
        _, cat, rid, op, dt = step
        event = ev(str(cat), str(rid), str(op), max(0, now + int(dt)))  # type: ignore[call-overload]
        return tuple(h.process(event) for h in pair)

    pair: tuple[_Stepper, ...] = (_Stepper(original),)
    snapshot, since = None, (0, 0)
    earlier: list[object] = []  # the original's stamps and tombstones so far
    for n, step in enumerate(before):
        if n == kept:
            snapshot, since = _copy(original.proc.store), log.ends
        earlier += _decided([play(step)[0]])
    restored = harness(log.restore(BASE + now, snapshot, since), original.now, books[1])
    # A restarted service reads its input again from the committed offset, which stays
    # before a create parked until its record's running life expires: the restored
    # processor reads from there too (what it decides again is the original's already).
    # Reading it, it may decide sooner what the original decides later (a create parked
    # for a life that a backdated create then made due: the original ends that life at its
    # timer and starts the next when it unparks the create, a turn later; the restored
    # processor does both when the create finds the life due). Then the steps cannot be
    # compared one by one: what each decided, in all, is (each life ended once, by the same
    # rule, and each stamp written), after a last turn for the original's unparking.
    # It reads them where they were, at their offsets (and Kafka timestamps).
    again = [
        restored.process(e, read_at) for read_at, e in pair[0].fed if read_at[0] >= pair[0].resume
    ]
    ahead = [x for x in _decided(again)
             if x not in earlier and not _repeats_an_erasure(x, earlier)]  # fmt: skip
    pair = (_Stepper(original), _Stepper(restored))
    # The first step after the restore fires what is overdue, as a restarted service's
    # timer task does at once. Without it, the steps would differ where both are right: a
    # record a hold kept, released before the restore and not let go yet, is tombstoned
    # by the original when an event or its release scan finds it, by the restored
    # processor when its overdue timer fires; the same tombstone, at the same time. (Events
    # that come first for records still held: the table test below.)
    steps = [("advance", 0), *after, ("release", "a"), ("release", "b"), ("advance", 10**7)]
    in_all: tuple[list[object], list[object]] = ([], list(ahead))
    # A record whose hold was released before a restore from the changelog alone is not
    # known there as held (its stamp does not say it; the README, "Why a deletion was
    # late"): fired late, it says catch_up where the original, which held it, says hold.
    # Only that: every other late cause, and every tombstone and stamp, must agree.
    released = _released_before(before) if kept is None else set()
    for step in [*steps, ("advance", 1)]:
        if step[0] == "hold":  # held again: both know it from here on
            released.discard(str(step[1]))
        mine, theirs = play(step)
        mine = _as_restored_knows(mine, released)
        if not ahead:
            assert _stamps(theirs) == _stamps(mine), step
            assert _tombstones(theirs) == _tombstones(mine), step
        in_all[0].extend(_decided([mine]))
        in_all[1].extend(_decided([theirs]))
    assert sorted(in_all[1], key=repr) == sorted(in_all[0], key=repr)


def _released_before(before: list[Step]) -> set[str]:
    """The record ids whose hold was placed in ``before`` and whose last hold step there
    released it."""
    last: dict[str, str] = {}
    for step in before:
        if step[0] in ("hold", "release") and (step[0] == "hold" or str(step[1]) in last):
            last[str(step[1])] = str(step[0])
    return {rid for rid, what in last.items() if what == "release"}


def _as_restored_knows(effects: Effects, released: set[str]) -> Effects:
    """``effects`` with the late cause ``hold`` said as ``catch_up`` for the records of
    ``released`` (see :func:`_check_restore`)."""

    def unknown(f: Fired) -> bool:
        # An expiry only: an erasure a hold deferred says "hold" on both sides (its stamp
        # says the request; a random run of CI's found the wider rule wrong).
        return (
            f.reason == "ttl" and f.late_cause == "hold" and f.before.identity.record_id in released
        )

    if not released or not any(unknown(f) for f in effects.tombstones):
        return effects
    copy = dataclasses.replace(effects)
    copy.tombstones = [
        f._replace(late_cause="catch_up") if unknown(f) else f for f in effects.tombstones
    ]
    return copy


@dataclass
class _Stepper:
    """One harness, each step's effects returned (the harness keeps only tombstones)."""

    h: Harness
    # ((offset, Kafka timestamp), event): where each event was read
    fed: list[tuple[tuple[int, int], model.InputEvent]] = field(default_factory=list)
    resume: int = 0  # where a restart reads the input from: the last decision's offset

    def process(self, event: model.InputEvent) -> Effects:
        effects = self.h.process(event)
        self.fed.append(((self.h.offset, BASE + self.h.now), event))
        if effects.next_offset is not None:
            self.resume = effects.next_offset
        return effects

    def step_advance(self, now: int) -> Effects:
        """The timers due, then the records a released hold let go (the service's
        timer task does both)."""
        h = self.h
        h.now = max(h.now, now)
        h.proc.extend_horizon(BASE + h.now)
        effects = h.proc.fire_due(BASE + h.now)
        h._settle(effects)
        woken = h.proc.unpark(BASE + h.now)  # the creates parked until these expiries
        if woken is not None:
            h._settle(woken)
            effects.stamps += woken.stamps
            effects.tombstones += woken.tombstones
            if woken.next_offset is not None:
                self.resume = woken.next_offset
        while h.proc.releasing:
            released = h.proc.release_due(BASE + h.now)
            h._settle(released)
            effects.stamps += released.stamps
            effects.tombstones += released.tombstones
            if released.erasures_read:  # where the erasures released were read
                effects.erasures_read = {**(effects.erasures_read or {}), **released.erasures_read}
        return effects


@pytest.mark.parametrize(
    "after",
    [
        [("event", "error", "a", "create", 0)],
        [("event", "error", "a", "touch", 0)],
        [("event", "error", "a", "delete", 0)],
        [("release", "a"), ("event", "error", "a", "create", 0)],
    ],
)
def test_a_record_a_hold_kept_at_its_expiry_is_kept_after_a_restore_whatever_comes_first(
    after: list[Step],
) -> None:
    """Its stamp does not say it is held: the restored processor learns it again from the
    hold book, whether an event or its overdue timer reaches it first."""
    _check_restore([("hold", "a"), ("event", "error", "a", "create", 0), ("advance", 2_000)], after)


@pytest.mark.parametrize(
    "after",
    [
        [("release", "a")],
        [("advance", 7_000), ("release", "a")],
        [("advance", 1_000), ("event", "session", "a", "touch", 0), ("release", "a")],
        [("event", "session", "a", "delete", 0), ("release", "a")],
    ],
)
def test_a_next_life_restored_keeps_the_life_a_hold_kept_before_it(after: list[Step]) -> None:
    """The lives a hold keeps are on the new life's stamp: a restored processor keeps
    them, and tombstones them at the release as the original does."""
    before: list[Step] = [
        ("hold", "a"),
        ("event", "session", "a", "create", 0),
        ("advance", 7_000),  # sessions live 6 s here
        ("event", "session", "a", "touch", 0),  # after the expiry: the next life
    ]
    _check_restore(before, after)


def test_a_new_life_restored_still_ignores_its_previous_lifes_create() -> None:
    """The example hypothesis found in the engine, across a restore: the new life's stamp
    carries the deletion before it, so the restored store knows it too."""
    original = harness(PartitionStore(MemoryKV()), 0)
    log = Changelog()
    first = ev("session", "a", "create", 0)
    for effects in (
        original.process(first),
        _Stepper(original).step_advance(6_000),
        original.process(ev("session", "a", "create", 6_000)),
    ):
        log.write(effects, BASE + original.now)
    store = log.restore(BASE + 6_000)
    state = store.get(first.identity.key)
    assert state is not None
    assert (state.created_at, state.previous_deleted_at) == (BASE + 6_000, BASE + 5_999)


@pytest.mark.parametrize("erased", [5_000, 0])  # 0: at the life's creation (a boundary)
def test_an_erasure_read_after_its_lifes_expiry_is_restored_with_its_own_time(
    erased: int,
) -> None:
    """A conversation created at 0 (expires at 20 s), fired; its erasure dated 5 s read
    after that (a late send, a paused reader): the marker keeps the life's end (19,999 ms)
    and remembers the erasure, so that a create dated after it, read next, starts the next
    life, as it would have read in time. Restored between the two, the store rebuilt a
    marker with one time, the erasure forgotten (the null said the life's end): the create
    was dropped, and the next life never stamped nor tombstoned. The null says the
    request's time now, and the life's ``ttl`` tombstone gives back the life's end."""
    original = harness(PartitionStore(MemoryKV()), 0)
    log = Changelog()
    first = ev("conversation", "a", "create", 0)
    log.write(original.process(first), BASE)
    log.write(_Stepper(original).step_advance(20_000), BASE + 20_000)
    original.now = 21_000
    done = original.process(ev("conversation", "a", "delete", erased))
    log.write(done, BASE + 21_000)
    assert [_deleted_until(f) for f in done.tombstones] == [BASE + erased]
    restored = harness(log.restore(BASE + 21_000), 21_000)
    for h in (original, restored):
        state = h.proc.state_of(first.identity.key)
        assert state is not None
        assert (state.created_at, state.deleted_at, state.erase_at) == (
            BASE, BASE + 19_999, BASE + erased,
        )  # fmt: skip
    for h in (original, restored):
        again = h.process(ev("conversation", "a", "delete", erased))  # a redelivery
        assert (again.tombstones, again.verdicts) == ([], {"stale": 1})
        assert h.process(ev("conversation", "a", "create", 0)).verdicts == {"stale": 1}
        effects = h.process(ev("conversation", "a", "create", 8_000))
        assert _stamps(effects) == [(first.identity.key, BASE + 8_000, BASE + 28_000)]


def test_a_life_an_event_ended_is_restored_as_the_new_life_it_started() -> None:
    """An event at or after a record's expiry, before its timer fired, ends that life and
    starts the next in one batch: on ``expiry.stamped`` the old life's null must come
    before the new stamp, or the latest message of the key, the one compaction and a
    restore keep, is the null, and the new life is lost (never tombstoned)."""
    original = harness(PartitionStore(MemoryKV()), 0)
    log = Changelog()
    first = ev("error", "b", "create", 0)
    log.write(original.process(first), BASE)
    original.now = 1_000  # due, not fired yet
    effects = original.process(ev("error", "b", "create", 1_000))
    assert [f.reason for f in effects.tombstones] == ["ttl"]
    assert len(effects.stamps) == 1
    log.write(effects, BASE + 1_000)
    assert [m.value is None for m in log.stamped] == [False, True, False]
    state = log.restore(BASE + 1_000).get(first.identity.key)
    assert state is not None
    assert (state.live, state.created_at, state.expires_at) == (True, BASE + 1_000, BASE + 2_000)


def test_runs_keep_the_order_in_which_stamps_and_tombstones_were_decided() -> None:
    s = [(model.Stamp(model.Identity("o", "b", "live", "c", str(n)), n, None, None, None), None)
         for n in range(4)]  # fmt: skip
    t = [_fired(n) for n in range(3)]
    effects = Effects(1, stamps=list(s), tombstones=list(t), stamps_before=[1, 1, 3])
    assert list(effects.runs()) == [(s[:1], t[:2]), (s[1:3], t[2:]), (s[3:], [])]
    timers = Effects(2, stamps=list(s), tombstones=list(t))  # the timers': after the stamps
    assert list(timers.runs()) == [(s, t)]
    assert list(Effects(3, stamps=list(s), tombstones=list(t), stamps_before=[4, 4, 4]).runs()) == [
        (s, t),
        ([], []),
    ]


@settings(max_examples=300, deadline=None)
@given(
    stamps=st.integers(0, 6),
    before=st.lists(st.integers(0, 6), max_size=6).map(sorted),
    timers=st.integers(0, 3),
)
def test_runs_put_each_tombstone_after_the_stamps_decided_before_it(
    stamps: int, before: list[int], timers: int
) -> None:
    """However the tombstones of events fall between the stamps (``stamps_before``) and
    the timers' come after: each message once, stamps and tombstones each in their order,
    tombstone i after exactly ``stamps_before[i]`` stamps, a timer's after all of them."""
    before = [min(b, stamps) for b in before]
    s = [(model.Stamp(model.Identity("o", "b", "live", "c", str(n)), n, None, None, None), None)
         for n in range(stamps)]  # fmt: skip
    t = [_fired(n) for n in range(len(before) + timers)]
    effects = Effects(1, stamps=list(s), tombstones=list(t), stamps_before=list(before))
    order: list[tuple[str, int]] = []
    for run_stamps, run_tombstones in effects.runs():
        order += [("s", s.index(x)) for x in run_stamps]
        order += [("t", t.index(x)) for x in run_tombstones]
    assert [n for kind, n in order if kind == "s"] == list(range(stamps))
    assert [n for kind, n in order if kind == "t"] == list(range(len(t)))
    for i in range(len(t)):
        seen = sum(1 for kind, _ in order[: order.index(("t", i))] if kind == "s")
        assert seen == (before[i] if i < len(before) else stamps), (i, order)


def _fired(n: int) -> Fired:
    stamp = model.Stamp(model.Identity("o", "b", "live", "c", f"t{n}"), 0, 10, 10, "default")
    return Fired(stamp, stamp._replace(deleted_at=9), "ttl", 10)


def test_a_restored_erasure_keeps_its_own_time_not_the_tombstones() -> None:
    """An explicit tombstone carries no delete time, only when it went out; the null's
    ``expiry-deleted-at`` is exact. Restored, a create after the delete and before the
    tombstone went out must start a new life, as it does in the original."""
    original = harness(PartitionStore(MemoryKV()), 0)
    log = Changelog()
    first = ev("conversation", "a", "create", 0)
    log.write(original.process(first), BASE)
    original.now = 5_000
    log.write(original.process(ev("conversation", "a", "delete", 1_000)), BASE + 5_000)
    restored = harness(log.restore(BASE + 5_000), 5_000)
    later = ev("conversation", "a", "create", 3_000)  # after the delete, before its tombstone
    assert _stamps(restored.process(later)) == _stamps(original.process(later)) != []


def test_an_erasure_older_than_its_record_restored_from_its_tombstone_alone_stays_erased() -> None:
    """A create stamped ahead of the service's clock (within the skew it allows), then a
    delete from before it: the record is deleted at its creation time. Once compaction
    took the null and the stamp, the tombstone event alone restores the deletion; its
    ``emitted_at`` is earlier than that creation, so the redelivered create must still
    find the record deleted, not start it again."""
    original = harness(PartitionStore(MemoryKV()), 0)
    log = Changelog()
    create = ev("conversation", "a", "create", 1_000)
    log.write(original.process(create), BASE)
    log.write(original.process(ev("conversation", "a", "delete", 500)), BASE)
    restored = harness(log.compacted().restore(BASE), 0)
    state = restored.proc.state_of(create.identity.key)
    assert state is not None
    assert state.deleted_at is not None
    assert state.deleted_at >= BASE + 1_000
    assert _stamps(restored.process(create)) == _stamps(original.process(create)) == []


def test_records_whose_ids_need_escaping_are_restored_under_their_own_keys() -> None:
    """Keys with ``/``, ``%``, spaces or non-ASCII in an id are percent-encoded on the
    topics; restore reads them the slow way, and must find each record, live or deleted."""
    original = harness(PartitionStore(MemoryKV()), 0)
    log = Changelog()
    ids = ["a/b", "100%", "é t", "plain"]
    for rid in ids:
        log.write(original.process(ev("conversation", rid, "create", 0)), BASE)
    log.write(original.process(ev("conversation", "a/b", "delete", 0)), BASE)
    restored = harness(log.restore(BASE), 0)
    for rid in ids:
        key = ev("conversation", rid, "create", 0).identity.key
        states = [h.proc.state_of(key) for h in (original, restored)]
        mine, theirs = (
            None if s is None else (s.deleted_at, s.live and s.created_at, s.live and s.expires_at)
            for s in states
        )
        assert theirs == mine is not None, rid


def _deleted_until(fired: Fired) -> int | None:
    """The ``expiry-deleted-at`` header the service gives ``fired``'s tombstone
    (``Outbox._put_tombstones``): where the stores and the archive stop erasing."""
    if fired.has_null:
        return fired.deleted_until
    return fired.before.erased_until if fired.reason == "explicit" else None


@pytest.mark.parametrize("compacted", [False, True])
def test_an_erasure_read_again_after_the_next_life_expired_never_erases_that_life(
    compacted: bool,
) -> None:
    """A trial: create at 0, delete at 2 s, create again at 4 s (a new life), which its
    ttl ends at 24 s. A new instance with an empty state directory and a new consumer
    group restores from the changelog and reads the input again from its beginning: the
    delete dated 2 s is the erasure of the first life, not of the second, created after
    it. It had its ``expiry-deleted-at`` (and an explicit null on ``expiry.stamped``, which
    erases every archived line of the key before it) say the end of the second life: the
    archive and the stores erased a life the request never named. As the original
    decides: its tombstone names no life, ends at the request's time, and has no null."""
    original = harness(PartitionStore(MemoryKV()), 0)
    log, events = _old_erasure_then_next_life_expired(original)
    assert log.stamped[-1].value is None  # the second life's ttl null
    source = log.compacted() if compacted else log
    restored = harness(source.restore(BASE + 30_000), 30_000)
    second = BASE + 4_000
    for h in (restored, original):
        out = [h.process(event) for event in events]  # read again from the beginning
        assert [_stamps(effects) for effects in out] == [[], [], []]
        assert [effects.tombstones for effects in out[::2]] == [[], []]
        (erasure,) = out[1].tombstones
        assert erasure.reason == "explicit"
        assert erasure.before.created_at is None  # it names no life
        assert not erasure.has_null  # no explicit null: it erases no archived line after it
        until = _deleted_until(erasure)
        assert until is not None
        assert until <= BASE + 2_000 < second
        # An erasure of the second life itself, read late, still goes out, once: it
        # ends that life (its null erases the archive's lines before it), at its own
        # time (a create after it starts the next life, as read in time).
        (late,) = h.process(ev("conversation", "k", "delete", 10_000)).tombstones
        assert late.has_null
        assert _deleted_until(late) == BASE + 10_000
        assert h.process(ev("conversation", "k", "delete", 10_000)).tombstones == []


@pytest.mark.parametrize("restore", ["none", "before_the_release", "after_the_release"])
def test_an_erasure_read_again_under_a_hold_after_the_next_life_expired_never_erases_it(
    restore: str,
) -> None:
    """The trial above with a legal hold on the record while the old delete is read again:
    create at 0, delete at 2 s, create again at 4 s, which its ttl ends at 24 s; a hold
    placed; a new consumer group reads the input again. The delete dated 2 s names no
    life (it is the first life's, dated before the second's creation): the hold defers it,
    and the release must send what the engine sends without a hold, a tombstone that ends
    at the request's time with no explicit null. It sent the second life's end as its
    ``expiry-deleted-at`` and an explicit null (the stores and the archive erased a life
    the request never named), and its marker then took that erasure for the second life's:
    an erasure of the second life itself, read late, was ignored. A store restored from
    the changelog, before or after the release, decides as the original."""
    books = (HoldBook(), HoldBook())
    original = harness(PartitionStore(MemoryKV()), 0, books[0])
    log, events = _old_erasure_then_next_life_expired(original)
    for book in books:
        book.place(Hold("h-k", "o", None, None, None, "k", "", 0))
    second = BASE + 4_000

    def logged(h: Harness, effects: Effects) -> Effects:
        if h is original:
            log.write(effects, BASE + h.now)
        return effects

    def step(h: Harness, now: int) -> Effects:
        return logged(h, _Stepper(h).step_advance(now))

    pair = [original]
    if restore == "before_the_release":
        pair.append(harness(log.restore(BASE + 30_000), 30_000, books[1]))
    out = [[logged(h, h.process(event)) for event in events] for h in pair]
    for reread in out:  # read again from the beginning: the hold defers the old delete
        assert [(_stamps(e), e.tombstones) for e in reread[::2]] == [([], []), ([], [])]
        assert reread[1].tombstones == []
        assert [reason for _, reason, _ in reread[1].deferred] == ["explicit"]
        assert [s.created_at for s, _ in reread[1].stamps] == [None]  # it names no life
    for h in pair:
        step(h, 31_000)  # held: nothing goes out
    for book in books:
        book.release("h-k")
    released = [step(h, 32_000) for h in pair]
    if restore == "after_the_release":
        pair.append(harness(log.restore(BASE + 32_000), 32_000, books[1]))
        released.append(step(pair[-1], 32_000))  # what a restarted service sends at once
    for n, (h, effects) in enumerate(zip(pair, released, strict=True)):
        erasures = [f for f in effects.tombstones if f.reason == "explicit"]
        if not (restore == "after_the_release" and n == 1):
            (erasure,) = erasures
            assert erasure.before.created_at is None  # it names no life
            until = _deleted_until(erasure)
            assert until is not None
            assert until <= BASE + 2_000 < second
        else:
            assert erasures == []  # gone out already, before the restore
        # No explicit null: it would erase every archived line of the key before it.
        assert [f.reason for f in effects.tombstones if f.has_null] in ([], ["ttl"])
        # An erasure of the second life itself, read late, still goes out, once: it ends
        # that life (its null erases the archive's lines before it), at its own time.
        (late,) = h.process(ev("conversation", "k", "delete", 10_000)).tombstones
        assert late.has_null
        assert _deleted_until(late) == BASE + 10_000
        assert h.process(ev("conversation", "k", "delete", 10_000)).tombstones == []


def test_an_old_erasure_an_earlier_version_deferred_under_a_hold_is_still_released() -> None:
    """A changelog written before the deferral kept the ended life (``Stamp.ended_life``)
    holds the deferral in its old form: no life, the request's time, that life's end. A
    store restored from it must still carry it out at the release, as that version did
    (the life's end in its header, and an explicit null: nothing erased is kept), and be
    left a marker that keeps later events of the ended life stale."""
    log = Changelog()
    original = harness(PartitionStore(MemoryKV()), 0)
    for n, event in enumerate(
        [
            ev("conversation", "k", "create", 0),
            ev("conversation", "k", "delete", 2_000),
            ev("conversation", "k", "create", 4_000),
        ]
    ):
        original.now = n * 2_000
        log.write(original.process(event), BASE + original.now)
    log.write(_Stepper(original).step_advance(30_000), BASE + 30_000)
    identity = ev("conversation", "k", "delete", 2_000).identity
    old = model.Stamp(identity, None, None, None, None, None, BASE + 2_000, True)
    old = old._replace(previous_deleted_at=BASE + 23_999)
    log._add(log.stamped, identity.key, model.encode_stamp(old), BASE + 31_000, SOURCE)
    book = HoldBook()
    restored = harness(log.restore(BASE + 31_000), 31_000, book)
    state = restored.proc.state_of(identity.key)
    assert state is not None
    assert (state.held, state.ended_life, state.erase_at) == (True, None, BASE + 2_000)
    (erasure,) = _Stepper(restored).step_advance(32_000).tombstones
    assert (erasure.reason, erasure.has_null, _deleted_until(erasure)) == (
        "explicit",
        True,
        BASE + 23_999,
    )
    assert restored.process(ev("conversation", "k", "create", 4_000)).stamps == []
    assert _stamps(restored.process(ev("conversation", "k", "create", 24_000))) == [
        (identity.key, BASE + 24_000, BASE + 44_000)
    ]


def _old_erasure_then_next_life_expired(
    original: Harness,
) -> tuple[Changelog, list[model.InputEvent]]:
    """The trial's history on ``original``: create at 0, delete at 2 s, create again at
    4 s, whose ttl ends at 24 s, all fired by 30 s. The changelog it wrote, and the events
    (a new consumer group reads them again)."""
    log = Changelog()
    events = [
        ev("conversation", "k", "create", 0),
        ev("conversation", "k", "delete", 2_000),
        ev("conversation", "k", "create", 4_000),
    ]
    for n, event in enumerate(events):
        original.now = n * 2_000
        log.write(original.process(event), BASE + original.now)
    log.write(_Stepper(original).step_advance(30_000), BASE + 30_000)
    return log, events


@pytest.mark.parametrize("restore", ["none", "before_the_release"])
def test_a_new_erasure_read_while_an_old_one_waits_under_a_hold_goes_out_restored_or_not(
    restore: str,
) -> None:
    """The trial above, and while the old delete waits a user's erasure dated 26 s, after
    the second life's end: it takes the old one's place, and the release sends it as
    without the hold, ending at its own time with an explicit null (which erases the
    second life's archived lines). Taken for a re-delivery of the deferral, it was dropped.
    A store restored from the changelog before the release sends the same."""
    books = (HoldBook(), HoldBook())
    original = harness(PartitionStore(MemoryKV()), 0, books[0])
    log, events = _old_erasure_then_next_life_expired(original)
    for book in books:
        book.place(Hold("h-k", "o", None, None, None, "k", "", 0))
    original.now = 30_000
    new = _new_erasure()
    for event in (events[1], new):  # the old delete read again, then the user's
        log.write(original.process(event), BASE + 30_000)
    pair = [original]
    if restore == "before_the_release":
        pair.append(harness(log.restore(BASE + 30_000), 30_000, books[1]))
        assert pair[-1].process(new).tombstones == []  # read again: still deferred
    for book in books:
        book.release("h-k")
    for h in pair:
        released = _Stepper(h).step_advance(32_000)
        sent = [(f.reason, _deleted_until(f), f.has_null) for f in released.tombstones]
        assert sent == [("explicit", BASE + 26_000, True)]


def _new_erasure() -> model.InputEvent:
    """A user's erasure dated 26 s: after the second life's end (24 s)."""
    return ev("conversation", "k", "delete", 26_000)


@pytest.mark.parametrize("restore", ["none", "before_the_release", "after_the_release"])
def test_two_old_erasures_read_under_a_hold_both_go_out_restored_or_not(restore: str) -> None:
    """The trial above, and with the old delete dated 2 s a second one dated 1 s, both
    before the second life's creation (4 s), read again under the hold: without the hold
    each goes out at once, naming no life and ending at its own time, with no null. The
    second was taken for a re-delivery of the first and dropped: its request never had
    its tombstone. Both wait, each on the changelog's stamp, and the release sends each,
    then the second life's null again (not its tombstone event, which went out when it
    ended), in a store restored before the release too; one restored after it sends
    nothing more."""
    books = (HoldBook(), HoldBook())
    original = harness(PartitionStore(MemoryKV()), 0, books[0])
    log, events = _old_erasure_then_next_life_expired(original)
    for book in books:
        book.place(Hold("h-k", "o", None, None, None, "k", "", 0))
    original.now = 30_000
    older = ev("conversation", "k", "delete", 1_000)
    for event in (events[1], older, events[1]):  # the last: a re-delivery, nothing new
        log.write(original.process(event), BASE + 30_000)
    pair = [original]
    if restore == "before_the_release":
        pair.append(harness(log.restore(BASE + 30_000), 30_000, books[1]))
        for event in (older, events[1]):  # read again: still deferred, nothing added
            assert pair[-1].process(event).stamps == []
    for book in books:
        book.release("h-k")
    released = [_Stepper(h).step_advance(32_000) for h in pair]
    log.write(released[0], BASE + 32_000)  # the original's
    if restore == "after_the_release":
        pair.append(harness(log.restore(BASE + 32_000), 32_000, books[1]))
        assert _Stepper(pair[-1]).step_advance(32_000).tombstones == []
    for effects in released:
        sent = [(f.reason, f.before.created_at, _deleted_until(f), f.has_null, f.null_only)
                for f in effects.tombstones]  # fmt: skip
        assert sent == [
            ("explicit", None, BASE + 2_000, False, False),
            ("explicit", None, BASE + 1_000, False, False),
            ("ttl", BASE + 4_000, BASE + 23_999, True, True),  # the second life's null alone
        ]
    for h in pair:  # the second life's own erasure, read late, still goes out, once
        (late,) = h.process(ev("conversation", "k", "delete", 10_000)).tombstones
        assert (late.has_null, _deleted_until(late)) == (True, BASE + 10_000)  # its time


def test_an_erasure_read_again_behind_a_parked_create_is_a_repeat_not_a_new_decision() -> None:
    """Round 42's CI: hypothesis found this run of the legal-hold property. The restored
    processor reads the input again from the committed offset (kept back by ``a``'s create,
    parked until its running life ends), so it reads ``b``'s erasure again while ``b``'s
    next life runs, and repeats its tombstone (``Engine._erase_before``, at-least-once):
    what the original decided, not a new decision. The comparison took it for one."""
    before: list[Step] = [
        ("event", "conversation", "a", "create", 0),
        ("advance", 5000),
        ("advance", 14000),
        ("event", "conversation", "a", "create", 1000),
        ("event", "session", "b", "delete", -1000),
        ("event", "session", "b", "create", 0),
    ]
    _check_restore(before, [], kept=None)


def test_events_read_again_after_an_erasure_decide_as_the_first_time() -> None:
    """Found by a random run of the legal-hold restore property (seed 5038; it failed on
    round 44's code too). ``b`` created at 17 s, a create of 16 s moving it back, erased at
    16 s; 'a' holds the committed offset back (a create parked for its expiry), so the
    restored processor reads b's three events again: its create of 17 s, read again after
    the erasure of 16 s, started a life the original never had, and a later create of 17 s
    stamped nothing there, where the original starts that life. The marker says where the
    erasure was read (restored from its null's header): events read before it are
    repeats."""
    a = ("event", "conversation", "a", "create", 0)
    before: list[Step] = [
        a,
        ("advance", 16000),
        *[a] * 7,
        ("event", "conversation", "a", "create", 4000),
        ("event", "conversation", "b", "create", 1000),
        ("event", "conversation", "b", "create", 0),
        ("event", "conversation", "b", "delete", 0),
    ]
    _check_restore(before, [("event", "conversation", "b", "create", 1000)], kept=None)


def test_a_touch_read_again_after_an_erasure_starts_no_life_the_original_never_had() -> None:
    """The same with a sliding touch: ``b``'s session created at 16 s, touched at 18 s (its
    expiry slid to 24 s), erased at 16 s, all read behind ``a``'s parked create. Read again
    against the marker (deleted at 16 s), the touch of 18 s started a new life at 18 s,
    stamped and tombstoned, which the original never had."""
    before: list[Step] = [
        ("event", "conversation", "a", "create", 0),
        ("advance", 16000),
        ("event", "conversation", "a", "create", 4000),  # at a's expiry: parked
        ("event", "session", "b", "create", 0),
        ("event", "session", "b", "touch", 2000),
        ("event", "session", "b", "delete", 0),
    ]
    _check_restore(before, [], kept=None)


def test_an_event_is_a_repeat_only_at_an_earlier_offset_and_no_later_on_the_broker() -> None:
    """What tells an event read again from before an erasure (``_read_before``): a lower
    offset of the partition, and a Kafka timestamp no later than the request's. At a lower
    offset but later on the broker, it is an event of a topic made again (its offsets
    start over), decided as new: a create after the erasure's time starts a life. At the
    erasure's own offset or later, it was read after it."""
    t = BASE + 16_000
    h = harness(PartitionStore(MemoryKV()), 16_000)
    h.process(ev("conversation", "b", "create", 17_000), (10, t))
    h.process(ev("conversation", "b", "create", 16_000), (11, t))  # moves it back
    h.process(ev("conversation", "b", "delete", 16_000), (12, t))
    later = ev("conversation", "b", "create", 17_000)
    assert _stamps(h.process(later, (10, t))) == []  # read again: a repeat
    marker = h.proc.state_of(later.identity.key)
    assert marker is not None
    assert h.proc.store.erasure_read_at(marker) == (12, t)  # kept beside the marker
    new_life = [(later.identity.key, BASE + 17_000, BASE + 37_000)]
    assert _stamps(h.process(later, (10, t + 1))) == new_life  # a topic made again
    h = harness(PartitionStore(MemoryKV()), 16_000)
    h.process(ev("conversation", "b", "create", 16_000), (20, t))
    h.process(ev("conversation", "b", "delete", 16_000), (21, t))
    assert _stamps(h.process(later, (22, t))) == new_life  # read after the erasure


def test_an_event_at_the_erasures_own_offset_is_not_a_repeat() -> None:
    """The boundary of ``_read_before``: one offset of a partition holds one message, so an
    event read at the erasure's own offset is the erasure itself, read again (which the
    engine finds stale by its own rule: its marker remembers it), or an event of a topic
    made again, whose offsets start over, and never one decided before the erasure. Such
    a create, which reached the broker in the same millisecond as the request, dated
    after the erasure, starts a life as any new event does. Taken as read before (mutant
    ``rec.offset > read_at[0]``), it was dropped as stale: a live record never stamped,
    so never tombstoned."""
    t = BASE + 16_000
    h = harness(PartitionStore(MemoryKV()), 16_000)
    h.process(ev("conversation", "b", "create", 16_000), (20, t))
    erasure = ev("conversation", "b", "delete", 16_000)
    h.process(erasure, (21, t))
    again = h.process(erasure, (21, t))  # the request itself, read again
    assert (again.verdicts, again.tombstones, _stamps(again)) == ({"stale": 1}, [], [])
    later = ev("conversation", "b", "create", 17_000)
    made_again = h.process(later, (21, t))
    assert made_again.verdicts == {"recreated": 1}
    assert _stamps(made_again) == [(later.identity.key, BASE + 17_000, BASE + 37_000)]


def test_a_life_moved_back_remembers_its_first_creation_across_a_restore() -> None:
    """A conversation (ttl 20 s) created at 30 s and moved back to 15 s by a create read
    late; restored from the changelog, a create of 5 s (its life would end at 25 s, before
    30 s) moves nothing, as on the original: the stamp says the first creation
    (``first_created_at``), which the restore keeps. Restored without it, the restored
    processor moved the life back to 5 s, and its tombstone at 25 s left the stamp of
    30 s in the stores."""
    before: list[Step] = [
        ("event", "conversation", "a", "create", 30_000),
        ("event", "conversation", "a", "create", 15_000),
    ]
    after: list[Step] = [("event", "conversation", "a", "create", 5_000), ("advance", 60_000)]
    _check_restore(before, after, kept=None)

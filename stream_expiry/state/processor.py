"""The per-partition processor: one input partition's records, from events to effects.

It owns everything about the partition's record states (h11's ``Connection`` owns its
state): the engine's rules and its timing wheel, the store, and the *overlay* of states
decided but not yet written. It does no IO but the synchronous local store, and reads no
clock: the shell passes ``now`` and carries the effects to Kafka.

The order of writes (../shared/DESIGN.md) is the contract between the two:

1. ``process`` (or ``fire_due``) decides; its states go to the overlay, so the next batch
   sees them at once;
2. the shell produces the effects' messages and waits for the broker's acks;
3. ``settle`` writes the effects' states to the store in one atomic batch, in the order
   the effects were made, and drops them from the overlay;
4. the shell commits the input offset the effects carry.

A crash anywhere re-does work (at-least-once) and never loses or advances a record: the
store is never ahead of what the broker holds.
"""

from __future__ import annotations

import heapq
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from stream_expiry import codec, model
from stream_expiry.engine import Engine, Fired, timer
from stream_expiry.holds import HoldBook, HoldIndex
from stream_expiry.state.store import ErasureRead, position_marks
from stream_expiry.state.succession import RETRY_MS, UNREAD, followed

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from stream_expiry.archive_gate import ArchiveGate
    from stream_expiry.config import Config
    from stream_expiry.engine import Resolver, Timer
    from stream_expiry.holds import Hold
    from stream_expiry.outbox import Run
    from stream_expiry.policy import PolicyBook
    from stream_expiry.state.store import PartitionStore
    from stream_expiry.state.succession import Successor

__all__ = ["Effects", "InputRecord", "PartitionProcessor"]

# Timers let go after waiting for unread input, remembered until they fire so that a lag
# seen meanwhile does not set them aside again; a record changed before its timer fired
# leaves its entry, the oldest dropped beyond this many.
_CLEARED_MAX = 100_000

# Lives an event made due on arrival (``late_event``) remembered until they fire, at most
# this many (the oldest dropped: the store keeps them too, from the settle on).
_ARRIVED_DUE_MAX = 100_000

# Timers a partition loads from its store at most, and in one call. The wheel holds what
# falls due within the horizon (an hour by default): where long-lived records expire at
# 1,000 a second, 3.6 million timers at about 1 KB each in the wheel, loaded 900,000 at
# once every quarter of an hour (9 us each: 8 s of a blocked loop, no tombstone going out).
# A full wheel ends the horizon early instead, at the first timer it did not load, and the
# partition is due there (``next_due_ms``): it loads the next slice and fires on time.
MAX_LOADED_TIMERS = 20_000
LOAD_SLICE = 2_000

# A partition's wheel cascades a level-1 bucket (256 ticks: 2.56 s of timers) into level 0
# as the firing reaches it, at a tick set by where the wheel was made. The partitions made
# at one assignment cascaded together, in one firing every 2.56 s: at 10k expirations/s
# over 4 partitions, 7-12 ms of CPU in that firing's decision (bench.e2e_expiry, traced,
# round 35), which held up every tombstone due meanwhile and the firings behind it (in one
# run, two thirds of the lag's worst percent). Spread over the partitions (a golden-ratio
# step of the 256 ticks) and the topics, each cascades its share in a firing of its own
# (3-4 ms each there). What fires, and when, is unchanged: the phase moves only the
# blocks' edges.
_PHASE_STEP = 157


def _if_late(fired: Fired, cause: str) -> Fired:
    """``fired`` naming why when it is emitted more than ``codec.LATE_AFTER_MS`` after it
    was due (``Fired.late_cause``), else as it is: a ``ttl`` one after its expiry,
    ``cause``; an erasure a legal hold deferred (one a release lets go) after its request
    (``erase_at``), ``hold``, whatever let it go: nothing but a hold defers an erasure (the
    archive never does), so that much is known after a restart or a restore too."""
    if fired.null_only:
        return fired
    if fired.reason == "ttl":
        due = fired.before.expires_at
    else:
        due, cause = fired.before.erase_at, "hold"
    if due is not None and fired.emitted_at - due > codec.LATE_AFTER_MS:
        return fired._replace(late_cause=cause)
    return fired


def _erasure_if_late(fired: Fired, rec: InputRecord, requested_at: int) -> Fired:
    """An erasure request's own tombstone, sent as the request is read, naming why when it
    is emitted more than ``codec.LATE_AFTER_MS`` after the request's time (its ``ts``, or
    the creation of the life it ends when that is later): ``late_event`` when the request
    reached the broker more than that after its time (its Kafka timestamp, the producer's
    behind rekey: it was forwarded late, the service acted on it at once), else
    ``catch_up`` (the service read it late: it was down, behind, or restored). A request
    with no timestamp is taken at its word, as a late ``ttl`` event is."""
    created = fired.before.created_at
    due = requested_at if created is None or created <= requested_at else created
    if fired.emitted_at - due <= codec.LATE_AFTER_MS:
        return fired
    produced = codec.produced_at(rec)
    late = produced is None or produced - due > codec.LATE_AFTER_MS
    return fired._replace(late_cause="late_event" if late else "catch_up")


def _read_before(rec: InputRecord, read_at: model.ReadAt) -> bool:
    """Whether ``rec`` was read before the erasure request read at ``read_at``, the one
    that left the record's deletion marker: an earlier offset of the input partition,
    read again (a restart resumes at the committed offset, which a create parked for its
    life's expiry keeps back, or a crash came between the settle and the commit). The
    original decided it before the erasure, in the lives that erasure ended; read again
    against the marker, a create or a touch dated after the erasure started a life the
    original never had (and a later create then stamped nothing where the original starts
    that life). Decided again, an event read before the erasure must change nothing: it
    is a repeat. (Not an event of a topic made again, whose offsets start over: it
    reached the broker after the request did.) Not at the request's own offset either: an
    offset holds one message, the request itself read again (stale by the engine's own rule,
    its marker remembers it) or, in a topic made again, a new event (one that reached the
    broker in the request's millisecond would pass the time test)."""
    if rec.offset >= read_at[0]:
        return False
    if read_at[1] is None:
        return True
    produced = codec.produced_at(rec)
    return produced is not None and produced <= read_at[1]


def wheel_phase(topic: str, partition: int) -> int:
    """The ticks by which a partition's timing wheel shifts its blocks (see above)."""
    return zlib.crc32(topic.encode()) + partition * _PHASE_STEP


class InputRecord(Protocol):
    """What the processor needs of a consumed message (aiokafka's records fit)."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


@dataclass(slots=True)
class Effects:
    """What one ``process`` or ``fire_due`` call decided, for the shell to carry out."""

    seq: int
    stamps: list[tuple[model.Stamp, Any]] = field(default_factory=list)  # (state, data)
    tombstones: list[Fired] = field(default_factory=list)
    dead_letters: list[tuple[Any, model.Rejection]] = field(default_factory=list)
    next_offset: int | None = None  # the input position these effects settle
    writes: dict[str, tuple[model.Stamp | None, model.Stamp]] = field(default_factory=dict)
    events: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)  # what the events did
    # offsets of the stamps on expiry.stamped, learnt from the broker's acks
    stamp_offsets: dict[str, int] = field(default_factory=dict)
    # deletions a legal hold deferred: (the record's state, its reason, the holds' ids)
    deferred: list[tuple[model.Stamp, str, list[str]]] = field(default_factory=list)
    # For each of ``deferred`` (by its index) that an erasure request asked for: the
    # request's headers (``codec.request_headers``), for its entry on ``expiry.audit``.
    deferred_requests: dict[int, codec.Request] = field(default_factory=dict)
    # Erasures a legal hold deferred, by record key: every one the record keeps for the
    # release (``codec.DeferredErasure``) -> its request's headers; for an erasure read
    # now, and for an event of a record whose erasures wait (it may stamp the record
    # again). The outbox puts them on the record's stamps (the stamp's own erasure's in
    # ``expiry-request*``, the others' in ``codec.H_DEFERRED_REQUESTS``: a restore reads
    # them) and the settle keeps them all in the store, so that each tombstone and null of
    # the release names its request as an on-time erasure's does, whoever sends them.
    # None while empty (nearly always: a dict made for every call cost instructions on
    # the hot path).
    held_requests: dict[str, dict[codec.DeferredErasure, codec.Request]] | None = None
    # For each tombstone an event brought (``process``): how many of ``stamps`` came
    # before it. An event at or after a record's expiry ends that life and starts the
    # next: on ``expiry.stamped`` the old life's null must come before the new life's
    # stamp, or compaction keeps the null and the new life is lost. Tombstones past the
    # end of this list (the timers') come after every stamp.
    stamps_before: list[int] = field(default_factory=list)
    # Lives its events left due on arrival (``late_event``): record key -> the life (its
    # creation and expiry, ``codec.ArrivedLife``). The outbox says so on their stamps
    # (``codec.H_DUE_AT_INGEST``, which a restore reads) and the settle keeps them in the
    # store, so that a tombstone decided again after a crash or on another instance says
    # ``late_event`` as this one's would.
    due_on_arrival: dict[str, codec.ArrivedLife] = field(default_factory=dict)
    # Erasures read now that left a deletion marker, or that a legal hold keeps for the
    # release (the record's own), and those a release carries out now: record key -> the
    # erasure's time and where its request was read (``store.ErasureRead``). The settle
    # keeps them in the store (``PartitionStore.erasure_read_at``), the erasure's
    # tombstone and null say them (``codec.H_ERASURE_READ_AT``, which a restore reads), as
    # does the stamp of a deferred one: events read again from before the request are
    # repeats (``_read_before``). None while empty, as ``held_requests``.
    erasures_read: dict[str, ErasureRead] | None = None
    # Accepted events whose ts, as epoch milliseconds, is before 1973: epoch seconds, most
    # likely, which the contract reads as January 1970 and so tombstones at once. The
    # shell warns about each (the event itself is valid and goes on as the contract says),
    # with its ``ts`` as sent if that was text (``InputEvent.early_ts_text``).
    seconds_like: list[tuple[Any, int, str | None]] = field(default_factory=list)
    # Accepted events with a name that most likely stands for an optional field they do
    # not have (``InputEvent.misspelt``): the shell says each such name once.
    misspelt: list[tuple[Any, tuple[tuple[str, str], ...]]] = field(default_factory=list)
    # The first accepted event without a Kafka key: a producer's partitioner spreads such
    # events over the partitions, and a record's delete or touch then reaches a processor
    # that does not hold its life. The shell says it once per input topic.
    unkeyed: Any = None

    def __bool__(self) -> bool:
        return bool(
            self.writes or self.stamps or self.tombstones or self.dead_letters or self.deferred
        ) or (self.next_offset is not None)

    def runs(self) -> Iterator[tuple[list[tuple[model.Stamp, Any]], list[Fired]]]:
        """The stamps and tombstones in the order they were decided, as runs of stamps
        each followed by tombstones: the order of their messages on ``expiry.stamped``
        (see ``stamps_before``). Nearly always one run: all of them."""
        stamps, tombstones, before = self.stamps, self.tombstones, self.stamps_before
        done = i = 0
        while i < len(before):
            upto, j = before[i], i + 1
            while j < len(before) and before[j] == upto:
                j += 1
            yield stamps[done:upto], tombstones[i:j]
            done, i = upto, j
        yield (stamps[done:] if done else stamps), (tombstones[i:] if i else tombstones)


@dataclass(slots=True)
class _Round:
    """One pass over the held records owed to a release (or to the archive's progress),
    begun where the scan stood then (``stop``; None: at the first key). The scan goes on
    to the last key, wraps to the first and is done with the round once it is back at
    ``stop``: a release that comes while a scan is under way joins it instead of starting
    it again, or with releases every loop turn the keys after the first turn's budget were
    never reached (a record released waited as long as the releases kept coming)."""

    stop: bytes | None
    let_go: HoldIndex  # the holds let go of since: a record one kept has a deferral to tell
    wrapped: bool = False

    def covers(self, key: bytes) -> bool:
        """The record at ``key`` (just read by the scan) is still owed this round's look."""
        return not self.wrapped or (self.stop is not None and key <= self.stop)


def _deferred_lives(held: model.Stamp) -> list[model.Stamp]:
    """What a hold keeps of ``held``, one state per deletion deferred, as the audit entry
    written when each was deferred named it: each earlier life a hold kept past its end
    (``held_lives``, oldest first), then the running life if it is held. An entry written
    from the running state alone, when one of two holds was released, named the next
    life's expiry (not due yet) in place of the held life's (a trial). A state whose
    erasure names no life keeps the life that had ended before it apart
    (:attr:`~stream_expiry.model.Stamp.ended_life`): it is one deferral, of that erasure."""
    if held.ended_life is not None or not held.held_lives:
        return [held]
    lives = [
        held._replace(
            created_at=life[0],
            expires_at=life[1],
            ttl_ms=life[2],
            ttl_source=life[3],
            erase_at=life[4],
            held=True,
            held_lives=(),
        )
        for life in held.held_lives
    ]
    return [*lives, held] if held.held else lives


class PartitionProcessor:
    """Owns one input partition (``topic``, ``partition``) and its store."""

    def __init__(
        self,
        topic: str,
        partition: int,
        store: PartitionStore,
        *,
        resolve: Resolver,
        sliding: frozenset[str],
        categories: frozenset[str],
        max_skew_ms: int,
        now_ms: int,
        tick_ms: int = 10,
        horizon_ms: int = 3_600_000,
        holds: HoldBook | None = None,
        archive: ArchiveGate | None = None,
        max_loaded_timers: int = MAX_LOADED_TIMERS,
        load_slice: int = LOAD_SLICE,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.store = store
        self._categories = categories
        self._max_skew_ms = max_skew_ms
        self._sliding = sliding
        self._engine: Engine[None] = Engine(
            resolve,
            sliding,
            now_ms=now_ms,
            tick_ms=tick_ms,
            horizon_ms=horizon_ms,
            phase=wheel_phase(topic, partition),
        )
        # Due timers of sliding categories set aside until the partition has read its input
        # up to an offset (``fire_due(..., unread_until=...)``): key -> that offset; and
        # those let go since (``let_go_read``): key -> the expiry they fire at.
        self._waiting: dict[str, int] = {}
        # The same as (offset, key), smallest first, with entries gone stale (let go, or
        # set aside again until later) left in: a catch-up after a restart sets aside every
        # session due meanwhile, and each loop turn asked which could go, a scan of them all.
        self._waiting_order: list[tuple[int, str]] = []
        self._waited_at: dict[str, int | None] = {}  # key -> the expiry it was set aside at
        self._cleared: dict[str, int | None] = {}
        # Records an event made due on arrival (the record was already due at ingest: a late
        # or replayed event, not on the bus before the expiry as far as its timestamp says):
        # key -> that life, its creation and expiry (``codec.ArrivedLife``). Their tombstones, fired late, say ``late_event``; any other
        # ttl tombstone fired late by the firing or an event, ``catch_up`` (the service was
        # down or behind). The store keeps them too (``Effects.due_on_arrival``), as the
        # stamps on the changelog say them: a tombstone decided again after a restart, or
        # on the instance that restored the partition, finds them there.
        self._arrived_due: dict[str, codec.ArrivedLife] = {}
        # Erasures a hold deferred, read by this processor: key -> erasure -> request,
        # until the release (the store has them from the settle on; these, before it too).
        self._held_requests: dict[str, dict[codec.DeferredErasure, codec.Request]] = {}
        # Where the erasures read were read (``Effects.erasures_read``), until the settle
        # writes them: key -> (seq of the effects that noted it last, the erasure's entry).
        self._erasures_unsettled: dict[str, tuple[int, ErasureRead]] = {}
        self.set_aside = 0  # times a due sliding timer waited for unread input
        # Whether the partition may hold records of a sliding category: its store holds
        # records (it may have them), or it has read an event of one since. The firing asks
        # the broker for the ends only of such partitions: asked of every partition, at
        # 10k expirations/s beside 20k events/s of ingest, it doubled the lag (p50 35 ->
        # 70 ms) where no record slides.
        self.may_slide = bool(sliding) and store.first_due_ms() is not None
        # key -> (seq of the effects that wrote it last, state): decided, not yet stored
        self._overlay: dict[str, tuple[int, model.Stamp]] = {}
        # Creates parked until their record's running life expires (_park): key -> its
        # events in order, the wake times in a heap, and the offset after the last record
        # decided (the partition's settled position, but for the parked).
        self._parked: dict[str, list[tuple[InputRecord, model.InputEvent]]] = {}
        self._parked_due: dict[str, int] = {}  # key -> the expiry its create waits for
        self._parked_order: list[tuple[int, str]] = []
        self._decided_to = 0
        self._seq = 0
        self.holds = holds if holds is not None else HoldBook()
        # A scan of the held records after a release: where it is, for which releases.
        self._release_cursor: bytes | None = None
        self._release_generation = self.holds.generation
        # The passes it owes, oldest first; one at start: holds may be gone since. Holds
        # let go of are found by what they match: a release of 10,000 holds at once must
        # not cost 10,000 matches per held record.
        self._rounds: list[_Round] = [_Round(None, HoldIndex())]
        # Holds let go of since the unsettled states were last looked at (None: looked).
        self._overlay_let_go: HoldIndex | None = HoldIndex()
        self.archive = archive
        self._archive_generation = archive.generation if archive else 0
        self.archive_waiting = 0  # due records kept until the archive has them
        # Held records the last ``release_due`` looked at: what it took of a budget that
        # the partitions releasing share (the service's release slices).
        self.release_looked = 0
        # The earliest due time among them (None: none): they are overdue, and off the due
        # index like held records, so the overdue gauge learns of them from here.
        self.archive_waiting_since: int | None = None
        self._positions: dict[str, int] = {}  # changelog positions saved (checkpoint)
        self._max_loaded = max_loaded_timers
        self._load_slice = load_slice
        self._least_load = min(load_slice, max_loaded_timers) // 4
        # The last load stopped at its limit: the horizon ends before a whole horizon
        # ahead, and the store holds timers due from its end on.
        self._horizon_short = False
        # Set by the shell on a retired topic's partition: where a sliding record due here
        # may live on (``rekey``'s copy), which it then follows (:mod:`.succession`).
        self.successor: Successor | None = None
        # Its due records whose successor's partition had input unread, taken out of the
        # wheel, and when they are asked about again (put back at their own due time, not
        # at a later one: the wheel's bound keeps the earliest timers, and the store's
        # index, which reloads those it dropped, holds them at that time).
        self._awaiting_successor: dict[str, None] = {}
        self._successor_retry_at: int | None = None
        self.load_timers()

    @classmethod
    def from_config(
        cls,
        topic: str,
        partition: int,
        store: PartitionStore,
        config: Config,
        book: PolicyBook,
        *,
        now_ms: int,
        horizon_ms: int | None = None,
        holds: HoldBook | None = None,
        archive: ArchiveGate | None = None,
    ) -> PartitionProcessor:
        """The processor of one input partition as ``config`` sets it up: the service,
        ``replay --from-inputs`` and ``bench_restore`` build it so. ``horizon_ms``
        overrides the config's (replay loads no timers: 0)."""
        return cls(
            topic,
            partition,
            store,
            resolve=book.resolve,
            sliding=config.sliding,
            categories=frozenset(config.categories),
            max_skew_ms=config.max_clock_skew_ms,
            now_ms=now_ms,
            tick_ms=config.tick_ms,
            horizon_ms=config.horizon_ms if horizon_ms is None else horizon_ms,
            holds=holds,
            archive=archive,
        )

    # -- events -------------------------------------------------------------------------

    def process(self, records: Iterable[InputRecord], now_ms: int) -> Effects:
        """Decide a slice of consecutive input records; nothing is written yet."""
        self._seq += 1
        effects = Effects(self._seq)
        parsed: list[tuple[InputRecord, model.InputEvent | model.Rejection]] = []
        categories, skew = self._categories, self._max_skew_ms
        for rec in records:
            parsed.append(
                (
                    rec,
                    model.parse_event(
                        rec.value, categories=categories, now_ms=now_ms, max_skew_ms=skew
                    ),
                )
            )
        if not parsed:
            return effects
        self._decided_to = effects.next_offset = parsed[-1][0].offset + 1
        effects.events = len(parsed)
        self._decide_events(parsed, now_ms, effects)
        if self._parked:
            effects.next_offset = min(effects.next_offset, self._parked_floor())
        self._bound_wheel()
        return effects

    def _decide_events(
        self,
        parsed: Sequence[tuple[InputRecord, model.InputEvent | model.Rejection]],
        now_ms: int,
        effects: Effects,
        *,
        parked: bool = False,
    ) -> None:
        """Each event's effects, in order, into ``effects``. ``parked``: events read
        before and parked (:meth:`_park`), decided only now: none is a repeat."""
        overlay = self._overlay
        misses: dict[str, model.Identity] = {}
        for _, ev in parsed:
            if isinstance(ev, model.InputEvent):
                key = ev.identity.key
                if key not in overlay:
                    misses[key] = ev.identity
        stored: dict[str, model.Stamp | None] = dict(
            zip(misses, self.store.get_many(list(misses.values())), strict=True)
        )
        repeats = not parked  # events read now may have been read before (:meth:`_read_before`)
        waiting_for = self._parked
        ending: set[str] = set()  # parked records whose running life an event may end
        writes = effects.writes
        seq = effects.seq
        feed = self._engine.feed
        verdicts = effects.verdicts
        holds_active = len(self.holds) > 0
        archive = self.archive
        sliding = None if self.may_slide else self._sliding
        for rec, ev in parsed:
            if isinstance(ev, model.Rejection):
                effects.dead_letters.append((rec, ev))
                continue
            if sliding is not None and ev.identity.category in sliding:
                self.may_slide, sliding = True, None
            if ev.ts < model.SECONDS_LIKE_BEFORE_MS:
                effects.seconds_like.append((rec, ev.ts, ev.early_ts_text))
            if ev.misspelt:
                effects.misspelt.append((rec, ev.misspelt))
            if rec.key is None and effects.unkeyed is None:
                effects.unkeyed = rec
            key = ev.identity.key
            if key in ending:
                # An earlier event of this slice may have ended the running life (an
                # erasure dated before its expiry): what waited for it is decided first,
                # before this later event, in offset order. Woken at the slice's end, a
                # touch after the erasure started a life of its own, and the parked create
                # was then taken for its re-delivery (a mutation-testing helper).
                self._unpark_ended({key}, now_ms, effects)
            if waiting_for and key in waiting_for:
                if ev.ts >= self._parked_due[key]:
                    # After the running life, as the parked create: it waits behind it.
                    waiting = waiting_for[key]
                    if rec.offset > waiting[-1][0].offset:  # not read again (a rebalance)
                        waiting.append((rec, ev))
                    continue
                # Dated before, it is the running life's, and decided now; it may end it.
                ending.add(key)
            known = overlay.get(key)
            prior = known[1] if known is not None else stored.get(key)
            if (
                prior is not None
                and prior.erase_at is not None
                # The erasure's marker, or a hold keeping its erasure for the release: an
                # event read before the request was decided before either.
                and (prior.deleted_at is not None or prior.held)
                and repeats
                and (read_at := self._erasure_read_at(prior)) is not None
                and _read_before(rec, read_at)
            ):
                verdicts["stale"] += 1  # read again: it was decided before the erasure
                continue
            if prior is not None and ev.op == "create" and self._park(rec, ev, prior, now_ms):
                verdicts["parked"] += 1
                continue
            if prior is not None and (prior.held or prior.held_lives) and self._let_go(prior):
                # Released, its scan not come yet: the event finds it first, and lets it
                # go as the scan would. Frozen, it would swallow a create of the next life.
                cause = self._release_cause(prior)
                let_go = self._let_go_now(prior, now_ms, effects, ordered=True, cause=cause)
                first = writes.get(key)
                writes[key] = (prior if first is None else first[0], let_go)
                overlay[key] = (seq, let_go)
                prior = let_go
            kept = None
            # An erasure request's own tombstone names it, however it goes out now.
            request = (
                codec.request_headers(self.topic, self.partition, rec, ev.event_id)
                if ev.op == "delete"
                else None
            )
            if holds_active or (prior is not None and (prior.held or prior.held_lives)):
                if prior is not None and (prior.held_lives or prior.erase_at is not None):
                    self._carry_requests(prior, effects)  # (rare: erasures may wait)
                deferred_before = len(effects.deferred)
                kept = self._hold_event(ev, prior, now_ms, effects, request)
                if request is not None and len(effects.deferred) > deferred_before:
                    self._name_request(request, prior, effects, deferred_before)
            if kept is None and archive is not None and self._due_unarchived(ev, prior, now_ms):
                # The engine would end the life at once (reason ttl), ahead of the archive;
                # its timer waits for the archive, and so does the event's end of it.
                assert prior is not None
                kept = self._wait_for_archive(ev, prior, now_ms, effects, request)
            if kept is not None:
                if request is not None:  # an erasure read now, let go at once, or kept
                    self._time_erasure(effects, request, rec, ev.ts)
                    if kept is not prior and kept.erase_at == ev.ts:
                        # The record's own erasure now, kept for the release or carried
                        # out: where it was read, as an erasure read without a hold.
                        self._note_erasure_read(kept, rec, effects)
                if kept is not prior:
                    first = writes.get(key)
                    writes[key] = (prior if first is None else first[0], kept)
                    overlay[key] = (seq, kept)
                continue
            outcome = feed(ev, prior, now_ms, None)
            verdicts[outcome.verdict.value] += 1
            if request is not None and outcome.state is not None and not outcome.state.live:
                self._note_erasure_read(outcome.state, rec, effects)
            new = prior
            for fired in outcome.fired:
                if request is not None and fired.reason == "explicit":
                    # The request's own tombstone, not the ended life's ttl one before it.
                    fired = _erasure_if_late(fired._replace(request=request), rec, ev.ts)
                elif fired.reason == "ttl":
                    # The running life, due before this event came: the firing had not come
                    # to it (behind, or down), unless an earlier event made it due on arrival.
                    on_arrival = self._arrived_due.pop(key, None) if self._arrived_due else None
                    fired = _if_late(fired, "catch_up")
                    if fired.late_cause is not None and self._was_due_on_arrival(
                        fired.before, on_arrival
                    ):
                        fired = fired._replace(late_cause="late_event")
                effects.tombstones.append(fired)
                effects.stamps_before.append(len(effects.stamps))
                new = fired.after
            if outcome.state is not None:
                if outcome.state.expires_at is not None and outcome.state.expires_at <= now_ms:
                    self._note_due_on_arrival(rec, new, outcome.state, now_ms, effects)
                new = outcome.state
                if outcome.publish:
                    effects.stamps.append((outcome.state, ev.data))
            if new is not prior and new is not None:
                first = writes.get(key)
                writes[key] = (prior if first is None else first[0], new)
                overlay[key] = (seq, new)
        if ending:
            self._unpark_ended(ending, now_ms, effects)

    def _note_erasure_read(self, marker: model.Stamp, rec: InputRecord, effects: Effects) -> None:
        """Note where the erasure request that left ``marker`` was read (``rec``), in
        ``effects``: the settle keeps it in the store, and the outbox says it on the
        erasure's tombstone and null (:data:`codec.H_ERASURE_READ_AT`). Not for a marker
        without an erasure's time (nothing would look it up). ``marker`` may also be the
        state of a record a legal hold keeps with that erasure for the release: its stamp
        says it too, so that the release's tombstone and null say it, restored or not."""
        erase_at = marker.erase_at
        if erase_at is None:
            return
        self._note_read(
            marker.identity.key, (erase_at, (rec.offset, codec.produced_at(rec))), effects
        )

    def _note_deferred_read(self, marker: model.Stamp, effects: Effects) -> None:
        """Note, in ``effects``, where the erasure a legal hold deferred and its release
        carries out now (leaving ``marker``) was read, as kept since the deferral
        (:meth:`_erasure_read_at`): its tombstone and null say it as an erasure's read
        without a hold does (a store then ends the stamps of a life a create read late
        moved back, by the header's window), and the settle keeps it beside the marker.
        Nothing when it is not known (deferred by an earlier version, or restored from
        its stamp without the header)."""
        read_at = self._erasure_read_at(marker)
        if read_at is None or marker.erase_at is None:
            return
        self._note_read(marker.identity.key, (marker.erase_at, read_at), effects)

    def _note_read(self, key: str, noted: ErasureRead, effects: Effects) -> None:
        """``noted`` in ``effects.erasures_read``, and here until the settle writes it."""
        if effects.erasures_read is None:
            effects.erasures_read = {}
        effects.erasures_read[key] = noted
        self._erasures_unsettled[key] = (effects.seq, noted)

    def _erasure_read_at(self, marker: model.Stamp) -> model.ReadAt | None:
        """Where the erasure that left ``marker`` (or that a hold keeps for the release
        in it) was read: as noted and not yet settled, else as the store keeps it (one
        look-up, for an event of an erased record only, and at a release). None: not
        known (an entry of another erasure counts for none)."""
        unsettled = self._erasures_unsettled.get(marker.identity.key)
        if unsettled is not None:
            erase_at, read_at = unsettled[1]
            if erase_at == marker.erase_at:
                return read_at
        return self.store.erasure_read_at(marker)

    @staticmethod
    def _time_erasure(
        effects: Effects, request: codec.Request, rec: InputRecord, requested_at: int
    ) -> None:
        """The tombstone that carries out the erasure ``request`` read now, if one went
        out (a record kept for the archive only, which an erasure never waits for), says
        why it is late as any erasure read (:func:`_erasure_if_late`)."""
        tombstones = effects.tombstones
        for i in range(len(tombstones) - 1, -1, -1):
            fired = tombstones[i]
            if fired.request is request:
                tombstones[i] = _erasure_if_late(fired, rec, requested_at)
                return

    def _note_due_on_arrival(
        self,
        rec: InputRecord,
        before: model.Stamp | None,
        state: model.Stamp,
        now_ms: int,
        effects: Effects,
    ) -> None:
        """An event left ``state``, due already (the contract's "already due at ingest"):
        its tombstone, late, says ``late_event`` when the event made it due, which a life
        due before it (``before``, the firing not come to it yet) was not, unless an event
        made that one due on arrival too, nor one whose event the broker had before the
        expiry (its timestamp, where the record has one: the event was on the bus in time
        and the service read it late, ``catch_up``). Noted here and in ``effects`` (its
        stamp says it, and the store keeps it)."""
        key, due = state.identity.key, state.expires_at
        arrived = self._arrived_due
        if not state.live or state.held or state.erase_at is not None or due is None:
            arrived.pop(key, None)
            return
        was_due = (
            before is not None
            and before.live
            and before.expires_at is not None
            and before.expires_at <= now_ms
        )
        ts = codec.produced_at(rec)  # behind rekey, the producer's time, not the copy's
        if ts is not None and ts < due:
            arrived.pop(key, None)
            return
        if was_due:
            assert before is not None
            if not self._was_due_on_arrival(before, arrived.get(key)):
                arrived.pop(key, None)
                return
        arrived[key] = effects.due_on_arrival[key] = (state.created_at, due)
        if len(arrived) > _ARRIVED_DUE_MAX:
            del arrived[next(iter(arrived))]

    def _was_due_on_arrival(self, state: model.Stamp, noted: codec.ArrivedLife | None) -> bool:
        """Whether ``state``'s life was due when the event that set it arrived
        (``late_event``): ``noted``, what this processor noted of the record (its life),
        says so, else the store does (kept at the settle, or restored from the stamp's
        header): after a restart or on the instance that restored the partition, the
        tombstone says what the instance that read the event knew. One look-up, made only
        for a tombstone that goes out late."""
        due = state.expires_at
        if due is None:
            return False
        if noted == (state.created_at, due):
            return True
        return bool(self.store.due_on_arrival([state]))

    # -- creates read before the expiry they are dated after ------------------------------

    def _unpark_ended(self, keys: set[str], now_ms: int, effects: Effects) -> None:
        """Decide now, after the events that ended (or a hold kept) their record's running
        life before its expiry (an erasure dated before it), the events parked for that
        expiry: they need not wait for it any more, and the life that follows must come
        after that end, not at the expiry (decided then, a create of the next life found
        an erasure read meanwhile to be its own, a review's property)."""
        ready: list[tuple[InputRecord, model.InputEvent | model.Rejection]] = []
        for key in keys:
            if key not in self._parked:
                continue
            state = self.state_of(key)
            due = None if state is None else state.expires_at
            if state is None or not state.live or state.held or due is None or due <= now_ms:
                # Ended, kept, or (a create that moved the life's creation back) due by now:
                # a create read now would not be parked (:meth:`_park`), and the engine
                # ends a due life itself before the next, as a restored processor reading
                # the parked events again does.
                del self._parked_due[key]  # its entry in the heap is left: passed over
                ready += self._parked.pop(key)
            elif due < self._parked_due[key]:
                # Moved back, not due yet: the parked events wait for that expiry, and the
                # record's later events dated from it on wait behind them. At the old
                # expiry, an erasure dated between the two jumped ahead of the parked
                # create and left the next life it starts standing.
                self._parked_due[key] = due
                heapq.heappush(self._parked_order, (due, key))
        if ready:
            ready.sort(key=lambda parked: parked[0].offset)
            self._decide_events(ready, now_ms, effects, parked=True)

    def _park(
        self, rec: InputRecord, ev: model.InputEvent, prior: model.Stamp, now_ms: int
    ) -> bool:
        """Park a create dated at or after its record's running life's expiry, read before
        that expiry (a producer's clock ahead, within the allowed skew): it starts the
        record's next life, but the life before must end first, at its expiry, not
        earlier. Decided then (:meth:`unpark`), it does so; decided now, it was taken for a
        re-delivery of the running life's create, and the next life was never stamped nor
        tombstoned (a review). The record's later events dated at or after that expiry
        wait behind it, in order (those dated before are the running life's, decided as
        they come: one that ends it wakes the create at once, :meth:`_unpark_ended`); the
        partition's committed offset stays before it (:meth:`process`): a crash reads it
        again. Returns whether it was parked."""
        due = prior.expires_at
        if (
            due is None
            or not now_ms < due <= ev.ts
            or prior.deleted_at is not None
            or prior.erase_at is not None
            or prior.held
        ):
            return False
        key = ev.identity.key
        waiting = self._parked.get(key)
        if waiting is None:
            self._parked[key] = [(rec, ev)]
        else:  # behind a create parked already, for a life an event decided since ended
            waiting.append((rec, ev))  # earlier (a create that moved its creation back)
            if due >= self._parked_due[key]:
                return True
        self._parked_due[key] = due
        heapq.heappush(self._parked_order, (due, key))
        return True

    @property
    def parked(self) -> int:
        """Records whose events wait for their running life's expiry (:meth:`_park`)."""
        return len(self._parked)

    def _parked_floor(self) -> int:
        """The offset of the first event parked: the partition is settled only before it."""
        return min(events[0][0].offset for events in self._parked.values())

    def unpark(self, now_ms: int) -> Effects | None:
        """Decide the parked events of the records whose running life the firing has
        ended (or a hold or the archive keeps) by ``now_ms``; None: none yet. The firing
        ends it as it ends any: on time, the holds read to a tick before, the partition's
        backlog read first. Each create then starts the record's next life (decided
        first, it ended the life itself, without those, and under a hold found it kept
        and was dropped: a review). ``replay --from-inputs`` never calls it: it derives
        each record as it is at its clock, its running life (deciding the parked creates
        as if time had come to the expiry stamped the next life over it: a review)."""
        order = self._parked_order
        if not order or order[0][0] > now_ms:
            return None
        ready: list[tuple[InputRecord, model.InputEvent | model.Rejection]] = []
        running: list[tuple[int, str]] = []
        while order and order[0][0] <= now_ms:
            due, key = heapq.heappop(order)
            if self._parked_due.get(key) != due:
                continue  # left by an earlier wake time of the record
            if self._runs_on(key, now_ms):
                running.append((due, key))  # the firing has not come to it yet
                continue
            del self._parked_due[key]
            ready += self._parked.pop(key)
        for entry in running:
            heapq.heappush(order, entry)
        if not ready:
            return None
        ready.sort(key=lambda parked: parked[0].offset)
        self._seq += 1
        effects = Effects(self._seq)
        self._decide_events(ready, now_ms, effects, parked=True)
        floor = self._parked_floor() if self._parked else self._decided_to
        effects.next_offset = min(self._decided_to, floor)
        self._bound_wheel()
        return effects

    def _runs_on(self, key: str, now_ms: int) -> bool:
        """Whether the record's life is due by ``now_ms`` and still running: neither
        ended by the firing nor kept (by a hold, or for the archive)."""
        state = self.state_of(key)
        if state is None or not state.live or state.held:
            return False
        return state.expires_at is not None and state.expires_at <= now_ms

    # -- timers -------------------------------------------------------------------------

    def fire_due(
        self, now_ms: int, limit: int | None = None, *, unread_until: int | None = None
    ) -> Effects:
        """Tombstones for the timers due at ``now_ms`` (at most ``limit``; the rest stay
        due for the next call); never early.

        ``unread_until``: the partition has input not read yet, up to that offset (events
        sent while its reading lags). A touch waiting there may extend a record of a
        sliding category, so those records' expiries are set aside, not fired, until the
        partition has read that far (:meth:`let_go_read`). The other categories fire: in
        the milliseconds a reading lags, no event can postpone them. (A partition reading
        the backlog found at its assignment is not fired at all meanwhile: the firing
        task passes it over, :mod:`stream_expiry.firing`.)
        """
        if self._horizon_short and self._engine.horizon_end <= now_ms:
            self.extend_horizon(now_ms)  # the next slice of stored timers is due
        retry = self._successor_retry_at
        if retry is not None and retry <= now_ms:
            self._ask_successor_again()
        due = self._engine.advance(now_ms, limit)
        if due and (unread_until is not None or self._cleared):
            due = self._set_aside_sliding(due, unread_until)
        self._seq += 1
        effects = Effects(self._seq)
        if not due:
            return effects
        writes, overlay, seq = effects.writes, self._overlay, effects.seq
        holds = self.holds if len(self.holds) else None
        archive = self.archive
        tombstones = effects.tombstones
        arrived = self._arrived_due
        late_before = now_ms - codec.LATE_AFTER_MS
        unnoted: list[int] = []  # late ones this processor noted nothing of: the store says
        successor = self.successor
        for fired, _ in due:
            before = fired.before
            key = before.identity.key
            if successor is not None and self._follows(fired, successor, now_ms, effects):
                continue
            on_arrival = arrived.pop(key, None) if arrived else None
            holding = holds.holding(before.identity) if holds is not None else None
            if holding:
                kept = before._replace(held=True)
                effects.deferred.append((kept, fired.reason, [h.hold_id for h in holding]))
                writes[key] = (before, kept)
                overlay[key] = (seq, kept)
                continue
            if archive is not None and fired.reason == "ttl" and not self._archived(before):
                kept = before._replace(held=True)
                self._waits_for_archive(kept)
                effects.verdicts["archive_wait"] += 1
                writes[key] = (before, kept)
                overlay[key] = (seq, kept)
                continue
            if before.held_lives:  # released, its scan not come yet: its earlier lives first
                current = before._replace(held_lives=())
                cause = self._release_cause(before)
                self._tombstone_lives(before, current, now_ms, effects, cause)
                # The life's own tombstone names it without them, as the release scan's does.
                fired = fired._replace(before=current)
            expires = before.expires_at
            if expires is not None and expires < late_before and fired.reason == "ttl":
                # Late (the service was down, behind or restored), or due when its event
                # came (``_note_due_on_arrival``). ``_if_late`` written inline (``advance``
                # fires at ``now_ms`` and never ``null_only``): called once a tombstone, it
                # cost 1,604 instructions an event of the firing workload's 217,036 (+0.7 %,
                # round 42, ``bench.count_instructions``). test_late_cause holds the two to
                # one answer.
                if on_arrival == (before.created_at, expires):
                    fired = fired._replace(late_cause="late_event")
                else:
                    fired = fired._replace(late_cause="catch_up")
                    unnoted.append(len(tombstones))
            tombstones.append(fired)
            after = fired.after
            writes[key] = (before, after)
            overlay[key] = (seq, after)
        if unnoted:
            self._late_events_stored(tombstones, unnoted)
        return effects

    def _follows(self, fired: Fired, successor: Successor, now_ms: int, effects: Effects) -> bool:
        """Whether a retired partition's due record waits for its successor instead of
        firing (:mod:`.succession`): rescheduled at the successor's later expiry (its state
        written with it, no message: the changelog keeps its own), or asked about again
        after ``RETRY_MS`` while the successor's partition has input unread. Sliding
        categories only: nothing else is extended by an event this partition did not read."""
        before = fired.before
        if fired.reason != "ttl" or before.identity.category not in self._sliding:
            return False
        found = successor(before.identity.key)
        if found is UNREAD:
            self._awaiting_successor[before.identity.key] = None
            if self._successor_retry_at is None:
                self._successor_retry_at = now_ms + RETRY_MS
            return True
        after = followed(before, found)
        if after is None:
            return False
        key = before.identity.key
        effects.writes[key] = (before, after)
        self._overlay[key] = (effects.seq, after)
        self._engine.load([(after, None)])
        return True

    def _ask_successor_again(self) -> None:
        """Put the records that waited for their successor's input back into the wheel,
        from their state now, due as they were: the next ``advance`` asks again."""
        keys, self._awaiting_successor = self._awaiting_successor, {}
        self._successor_retry_at = None
        states = [s for key in keys if (s := self.state_of(key)) is not None and s.live]
        self._engine.load((s, None) for s in states)

    def _late_events_stored(self, tombstones: list[Fired], unnoted: list[int]) -> None:
        """Those of ``tombstones`` (at the indexes ``unnoted``, late, said ``catch_up``)
        whose life the store says was due on arrival: ``late_event`` (this processor did
        not read their event: it restarted, or restored the partition). One look-up for
        them all, none when the store holds no such life."""
        found = self.store.due_on_arrival([tombstones[i].before for i in unnoted])
        if not found:
            return
        for i in unnoted:
            fired = tombstones[i]
            if fired.before.identity.key in found:
                tombstones[i] = fired._replace(late_cause="late_event")

    def _set_aside_sliding(
        self, due: list[tuple[Fired, None]], unread_until: int | None
    ) -> list[tuple[Fired, None]]:
        sliding, waiting, cleared = self._sliding, self._waiting, self._cleared
        firing: list[tuple[Fired, None]] = []
        for entry in due:
            fired = entry[0]
            before = fired.before
            if fired.reason == "ttl" and before.identity.category in sliding:
                key = before.identity.key
                let_go = key in cleared and cleared.pop(key) == before.expires_at
                if not let_go and unread_until is not None:
                    waiting[key] = unread_until
                    self._waited_at[key] = before.expires_at
                    heapq.heappush(self._waiting_order, (unread_until, key))
                    self.set_aside += 1
                    continue
            firing.append(entry)
        return firing

    @property
    def waiting(self) -> int:
        """Due timers of sliding categories set aside until the partition reads on."""
        return len(self._waiting)

    def let_go_read(self, position: int) -> int:
        """Schedule again the timers set aside until the partition read up to ``position``
        or less, from each record's state now: an event read meanwhile may have extended
        or ended it. One still at the expiry it was set aside at fires at once, whatever is
        unread by then: it has waited for what was sent before it fell due. One a touch
        extended is due later, and waits then for what is unread as any other: a touch may
        come in between (a trial: sessions that had waited for a backlog once were deleted
        at their next expiry while a touch acknowledged before it was still unread, 500 of
        500 after a 3.5 s pause). Returns how many are scheduled."""
        waiting, order, waited_at = self._waiting, self._waiting_order, self._waited_at
        ready: list[tuple[str, int | None]] = []
        while order and order[0][0] <= position:
            until, key = heapq.heappop(order)
            if waiting.get(key) == until:
                del waiting[key]
                ready.append((key, waited_at.pop(key, None)))
        if len(order) > 2 * len(waiting) + 1_000:  # mostly stale: keep it small
            order[:] = [(until, key) for key, until in waiting.items()]
            heapq.heapify(order)
        states: list[model.Stamp] = []
        cleared = self._cleared
        for key, expiry in ready:
            state = self.state_of(key)
            if state is None or not state.live:
                continue
            states.append(state)
            if state.expires_at == expiry:
                cleared[key] = expiry
        while len(cleared) > _CLEARED_MAX:  # left by records that changed before firing
            del cleared[next(iter(cleared))]
        self._engine.load((s, None) for s in states)
        return len(states)

    # -- legal holds ----------------------------------------------------------------------

    def _hold_event(
        self,
        ev: model.InputEvent,
        prior: model.Stamp | None,
        now_ms: int,
        effects: Effects,
        request: codec.Request | None = None,
    ) -> model.Stamp | None:
        """What a legal hold makes of an event, or None when no hold is involved.

        A held record's life is frozen: events change nothing, except that an erasure
        request is kept and carried out at the release, and that a create or touch after
        the held life's end starts the record's next life, which keeps the held one for
        its tombstone at the release. An erasure request for a record a hold matches is
        deferred likewise; so is a record that fell due, when an event finds it first.
        """
        identity = ev.identity
        if ev.op == "delete" and prior is not None and prior.held:
            life = prior.ended_life
            if life is not None:
                return self._erase_while_no_life_waits(ev, prior, life, effects)
        if (
            ev.op == "delete"
            and prior is not None
            and prior.live
            and prior.previous_deleted_at is not None
            and ev.ts <= prior.previous_deleted_at
        ):
            return self._erase_before_held(prior, effects)
        if prior is not None and prior.held:
            if ev.op == "delete":
                if prior.erase_at is None and not self.holds.is_held(identity):
                    # Kept for the archive only (else :meth:`_let_go` let it go before
                    # this event): an erasure never waits for the archive.
                    erased = prior._replace(erase_at=ev.ts)
                    return self._let_go_now(
                        erased, now_ms, effects, ordered=True, cause="archive", request=request
                    )
                if prior.erase_at is None:
                    kept = prior._replace(erase_at=ev.ts)
                    effects.stamps.append((kept, None))
                    self._defer(kept, "explicit", effects)
                    return kept
            elif (started := self._next_life(ev, prior, now_ms, effects)) is not None:
                return started
            effects.verdicts["held"] += 1
            return prior
        holding = self.holds.holding(identity)
        if not holding:
            if prior is not None and prior.held_lives:
                return self._wait_for_archive(ev, prior, now_ms, effects, request)
            return None
        if ev.op == "delete":
            if prior is not None and not prior.live:
                assert prior.deleted_at is not None
                if ev.ts > prior.deleted_at:
                    prior = None  # a new life's erasure
                elif prior.erase_at is not None:
                    return None  # stale: the engine says so
                elif prior.created_at is not None and ev.ts < prior.created_at:
                    # Dated before that life's creation, it names no life (the engine's
                    # ``_erase_ended``): deferred so, keeping the life's end for the release
                    # to give back (``Stamp.ended_life``). Kept as that life's erasure, it
                    # went out with the life's end and an explicit null at the release.
                    ended, life = prior.deleted_at, prior.as_held_life()
                    prior = model.Stamp(
                        identity,
                        None,
                        None,
                        None,
                        None,
                        previous_deleted_at=ended,
                        held_lives=(life,),
                    )
                else:
                    # An erasure read after the life's expiry ended it (the engine would
                    # send it at once, naming no life): deferred like any other. Its state
                    # keeps that life's end, so the events it made stale stay stale.
                    ended = prior.deleted_at
                    prior = model.Stamp(identity, None, None, None, None, previous_deleted_at=ended)
            base = prior or model.Stamp(identity, None, None, None, None)
            kept = base._replace(erase_at=ev.ts, held=True)
            self._engine.cancel(identity.key)
            effects.stamps.append((kept, None))
            effects.deferred.append((kept, "explicit", [h.hold_id for h in holding]))
            effects.verdicts["held"] += 1
            return kept
        due = None if prior is None or not prior.live else prior.due_at
        if due is not None and due <= now_ms and ev.ts >= due:
            kept = prior._replace(held=True)  # type: ignore[union-attr]
            self._engine.cancel(identity.key)
            effects.deferred.append((kept, "ttl", [h.hold_id for h in holding]))
            effects.verdicts["held"] += 1
            # A create or touch after the kept life's end starts the next life, as the
            # timer's keeping would have let it: it was dropped (a review).
            started = self._next_life(ev, kept, now_ms, effects)
            return kept if started is None else started
        return None

    def _erase_while_no_life_waits(
        self, ev: model.InputEvent, prior: model.Stamp, life: model.HeldLife, effects: Effects
    ) -> model.Stamp:
        """An erasure read while one naming no life waits under a hold
        (``Stamp.ended_life``). Dated before that life's creation, it names no life
        either: without the hold it goes out at once, ending at its own time, so it waits
        beside the other (``Stamp.later_erasures``) and the release sends each; taken for
        a re-delivery of the one waiting, it was dropped and its request never had its
        tombstone, nor its receipt. A re-delivery of one waiting changes nothing.
        The erasure of that ended life itself, read late, or (dated after its end) a new
        life's: it erases the lives before too, so it is what waits now, in place of every
        one naming no life, as it waits without them. Taken for a re-delivery, a new
        erasure was dropped, and the ended life's data it named never erased."""
        created, end = life[0], prior.previous_deleted_at
        assert created is not None
        assert end is not None
        if ev.ts < created:
            if ev.ts == prior.erase_at or ev.ts in prior.later_erasures:
                effects.verdicts["held"] += 1
                return prior
            later: model.HeldLife = (None, None, None, None, ev.ts)
            kept = prior._replace(held_lives=(*prior.held_lives, later))
        elif ev.ts <= end:
            kept = prior._replace(erase_at=ev.ts, held_lives=())
        else:
            kept = model.Stamp(ev.identity, None, None, None, None, erase_at=ev.ts, held=True)
        effects.stamps.append((kept, None))
        self._defer(kept, "explicit", effects)
        return kept

    def _erase_before_held(self, live: model.Stamp, effects: Effects) -> model.Stamp | None:
        """An erasure request for the lives before ``live`` (dated at or before the
        deletion that ended the last of them: the engine's ``_erase_before``) while a hold
        matches the record: it waits for the release among the lives the hold
        keeps, as one that names no life and ends at that deletion, and the running life
        stays as it is. A re-delivered one changes nothing, nor does one for a record whose
        own erasure waits (it ends every earlier life). None: no hold is involved."""
        if not self.holds.holding(live.identity):
            return None  # (one kept for the archive only: an erasure never waits for it)
        erasure: model.HeldLife = (None, None, None, None, live.previous_deleted_at)
        if live.erase_at is not None or erasure in live.held_lives:
            effects.verdicts["held"] += 1
            return live  # the erasure kept for the running life ends the earlier ones too
        kept = live._replace(held_lives=(*live.held_lives, erasure))
        if not kept.held:
            self._engine.load([(kept, None)])  # its timer carries the lives it keeps
        effects.stamps.append((kept, None))
        self._defer(kept, "explicit", effects)  # on the audit trail, as any deferral
        return kept

    def _wait_for_archive(
        self,
        ev: model.InputEvent,
        prior: model.Stamp,
        now_ms: int,
        effects: Effects,
        request: codec.Request | None = None,
    ) -> model.Stamp | None:
        """An event for a record that keeps lives a released hold kept, which the archive
        holds back (``[archive] required``: it has not read the record's latest stamp).
        The running life must not end without them: an erasure, which never waits for
        the archive, lets everything go now; an event at or after the running life's
        expiry keeps that life for the archive, as its timer would have, and may start
        the next life over it. Any other event applies to the running life (None)."""
        if ev.op == "delete":
            erased = prior._replace(erase_at=ev.ts, held=True)
            # The earlier lives waited for the archive: no hold matches, or the record
            # would have been let go (:meth:`_let_go`) before this.
            return self._let_go_now(
                erased, now_ms, effects, ordered=True, cause="archive", request=request
            )
        due = prior.due_at
        if due is None or due > now_ms or ev.ts < due:
            return None
        self._engine.cancel(prior.identity.key)
        kept = prior._replace(held=True)
        self._waits_for_archive(kept)
        effects.verdicts["archive_wait"] += 1
        started = self._next_life(ev, kept, now_ms, effects)
        return kept if started is None else started

    def _due_unarchived(self, ev: model.InputEvent, prior: model.Stamp | None, now_ms: int) -> bool:
        """Whether ``ev`` finds ``prior``'s life due (at ``now_ms`` and at the event's time)
        before the archive has its latest stamp: ended by the engine there, with a ``ttl``
        tombstone, the record's data went before the archive had it (a trial: a late
        create and its touch read together, the archive stopped)."""
        if prior is None or not prior.live or prior.held:
            return False
        due = prior.due_at
        return due is not None and due <= now_ms and ev.ts >= due and not self._archived(prior)

    def _next_life(
        self, ev: model.InputEvent, held: model.Stamp, now_ms: int, effects: Effects
    ) -> model.Stamp | None:
        """The record's next life, when ``ev`` (a create or touch) starts one after the
        end of the life a hold keeps (the engine decides, as if that life's tombstone had
        gone out); None when the event belongs to the held life, or starts nothing."""
        ended = self._engine.fire_now(held, now_ms).after
        outcome = self._engine.feed(ev, ended, now_ms, None)
        if outcome.state is None or not outcome.state.live:
            return None
        if held.ended_life is not None:
            # An erasure naming no life keeps the life it ended after, whose tombstone went
            # out, not that life; the erasures read after it stay, each its own.
            lives = (held.as_held_life(), *held.held_lives[1:])
        else:
            lives = (*held.held_lives, held.as_held_life())
        new = outcome.state._replace(held_lives=lives)
        self._engine.load([(new, None)])  # its timer carries the lives it keeps
        effects.verdicts[outcome.verdict.value] += 1
        effects.stamps.append((new, ev.data))
        return new

    def _let_go_now(
        self,
        held: model.Stamp,
        now_ms: int,
        effects: Effects,
        *,
        ordered: bool,
        cause: str,
        request: codec.Request | None = None,
    ) -> model.Stamp:
        """Tombstone what the holds kept of a record none of them matches any more: its
        earlier lives, oldest first, then its life if that is over (it fell due, or an
        erasure was asked, under the hold). A life still running goes on: stamped again
        without the lives (the changelog's last stamp must not bring them back), its timer
        set. Returns the record's new state. ``ordered``: note where each tombstone comes
        among the stamps (``Effects.stamps_before``), as ``process`` does. ``cause``: what
        let the record go (:meth:`_release_cause`), which its late ``ttl`` tombstones say.
        ``request``: the erasure request read now that lets it go, which its explicit
        tombstone names (a deferred one names the request kept with it,
        :meth:`_deferred_request`)."""
        first = len(effects.tombstones)
        life = held.ended_life
        if life is not None:
            new = self._erase_no_life(held, life, now_ms, effects)
            if ordered:
                effects.stamps_before += [len(effects.stamps)] * (len(effects.tombstones) - first)
            return new
        current = held._replace(held_lives=()) if held.held_lives else held
        self._tombstone_lives(held, current, now_ms, effects, cause)
        if held.held:
            fired = self._engine.fire_now(current, now_ms)
            if request is not None and fired.reason == "explicit":
                # The erasure read now, not a deferred one: timed as read (_time_erasure).
                fired = fired._replace(request=request)
            else:
                fired = _if_late(fired, cause)
                if (
                    fired.reason == "ttl"
                    and fired.late_cause in ("archive", "hold")
                    and self._was_due_on_arrival(
                        current, self._arrived_due.get(current.identity.key)
                    )
                ):
                    # An expiry due when its event came: the event made it late, the
                    # archive or a hold placed before its firing only kept it on (said
                    # "archive", a deletion 56 years after its expiry read as the
                    # archive's fault: a trial). The first cause is the one said, as a
                    # restore says it: the stamp's header tells it the life was due on
                    # arrival, and a hold released before the restore is gone (a random
                    # run of the restore property said "hold" before the restore,
                    # "late_event" after it). An erasure a hold deferred is late for the
                    # hold, as its stamp says, however its life began.
                    fired = fired._replace(late_cause="late_event")
                if fired.reason == "explicit":  # deferred: named as it was read
                    names_life = held.created_at is not None
                    named = self._deferred_request(held.identity.key, held.erase_at, names_life)
                    if named is not None:
                        fired = fired._replace(request=named)
                    self._note_deferred_read(fired.after, effects)
            effects.tombstones.append(fired)
            new = fired.after
        else:
            self._engine.load([(current, None)])
            new = current
        if ordered:
            effects.stamps_before += [len(effects.stamps)] * (len(effects.tombstones) - first)
        if new.live:
            effects.stamps.append((new, None))
        return new

    def _erase_no_life(
        self, held: model.Stamp, life: model.HeldLife, now_ms: int, effects: Effects
    ) -> model.Stamp:
        """The release of an erasure that names no life (``Stamp.ended_life``): what the
        engine sends without a hold, a tombstone ending at the request's time with no null
        (an explicit null erases the archive's lines of the ended life too), one for each
        such request that waited with it (``Stamp.later_erasures``), and the record is that
        life's end again, so that an erasure of that life, read late, still goes out. Its
        stamp on the changelog is superseded by that end's null, as it was the first time
        (reason ``ttl``: only an expiry ends a life without an erasure), and by nothing
        else: that life's ``ttl`` tombstone went out when it ended (``Fired.null_only``).
        Sent again, every release told the stores of that end twice, and a store that
        had forgotten the life since (its marker's grace passed while the hold lasted)
        wrote a second ``ttl`` receipt for it. The null waits for the acks of the
        erasures' tombstones, as every null does (``Outbox._send_changelog``): a restore
        never finds that end without them."""
        assert held.erase_at is not None
        assert held.previous_deleted_at is not None
        self._engine.cancel(held.identity.key)
        ended = held.held_life(life)
        marker = ended._replace(deleted_at=held.previous_deleted_at)
        for erase_at in (held.erase_at, *held.later_erasures):
            erasure = model.Stamp(held.identity, None, None, None, None, None, erase_at)
            named = self._deferred_request(held.identity.key, erase_at, False)
            fired = Fired(erasure, marker, "explicit", now_ms, False, request=named)
            effects.tombstones.append(_if_late(fired, "hold"))
        effects.tombstones.append(Fired(ended, marker, "ttl", now_ms, null_only=True))
        return marker

    def _tombstone_lives(
        self, held: model.Stamp, current: model.Stamp, now_ms: int, effects: Effects, cause: str
    ) -> None:
        """The tombstones of ``held``'s earlier lives, oldest first. Each names the record's
        ``current`` state as what follows, a life: no null goes to ``expiry.stamped`` for
        them (the record is not deleted, only a life of it that ended long ago). An
        erasure's names its request when it is known (:meth:`_deferred_request`)."""
        for life in held.held_lives:
            reason: model.Reason = "ttl" if life[4] is None else "explicit"
            fired = _if_late(Fired(held.held_life(life), current, reason, now_ms), cause)
            if reason == "explicit":
                named = self._deferred_request(held.identity.key, life[4], life[0] is not None)
                if named is not None:
                    fired = fired._replace(request=named)
            effects.tombstones.append(fired)

    def _release_cause(self, held: model.Stamp, let_go: Iterable[HoldIndex] | None = None) -> str:
        """What let ``held`` go, as far as the processor knows: ``hold`` when a hold let go
        of since (``let_go``, or those not looked at yet: an event or the firing found the
        record first) matched it, or when no archive is required; else ``archive`` (the
        archive caught up). One kept by a hold, then by the archive, says what the scan
        that let it go saw. (An erasure a hold deferred says ``hold`` whatever this says:
        :func:`_if_late`.)

        The guess: ``Stamp.held`` means both, and a release is known only as long as this
        processor ran. After a restart on the same store with ``[archive] required``, a
        ``ttl`` record still held whose hold was released before the processor was made
        (while no instance ran, or before the scan reached it), and whose stamp the
        archive holds at the first look, says ``archive``. It may have been either: the
        hold (the archive had the stamp when the hold went) or the archive (it caught up
        after the release, or no hold ever kept the record). No durable state tells them
        apart: the store keeps one ``held`` flag for both (``expiry.audit``'s
        ``deletion_deferred`` says a hold kept it, but the service does not read it), and
        when the archive passed the stamp, against when the release came, is on no record
        (the archive group's committed offset keeps no history). Telling them apart would
        take a new durable mark, written by the scan that finds a released record waiting
        for the archive; ``hold`` always would be as much a guess the other way. Taken
        over instead (restored from the changelog), such a record is not held at all (its
        stamp does not say it): the new instance keeps it again under an active hold, or
        fires it, saying ``catch_up`` (``late_event`` when its stamp says it was due on
        arrival)."""
        if self.archive is None:
            return "hold"
        identity = held.identity
        if let_go is None:
            if any(h.matches(identity) for h in self.holds.let_go_since(self._release_generation)):
                return "hold"
            let_go = [r.let_go for r in self._rounds]
        return "hold" if any(index.any_matches(identity) for index in let_go) else "archive"

    def _let_go(self, held: model.Stamp) -> bool:
        """Whether a held record is free to go now: no hold matches it any more, and the
        archive lets it go."""
        return not self.holds.is_held(held.identity) and self._archive_lets_go(held)

    def _archive_lets_go(self, held: model.Stamp) -> bool:
        """With ``[archive] required``, a record waits until the archive has its latest
        stamp; an erasure never waits."""
        return held.erase_at is not None or self._archived(held)

    def _archived(self, stamp: model.Stamp) -> bool:
        """With ``[archive] required``: whether the archive holds the record's latest stamp."""
        if self.archive is None:
            return True
        key = stamp.identity.key
        if key in self._overlay:
            return False  # a change not yet settled: its stamp's offset is not known yet
        stored = self.store.get(key)
        return self.archive.archived(
            self.partition, None if stored is None else stored.stamp_offset
        )

    def _waits_for_archive(self, kept: model.Stamp) -> None:
        """Count a due record kept for the archive, and how long the oldest has waited:
        since its earliest life kept (an event after a life's expiry keeps that life and
        starts the next, whose expiry the warning named, in the future)."""
        self.archive_waiting += 1
        dues = [kept.held_life(life).due_at for life in kept.held_lives]
        if kept.held or not dues:
            dues.append(kept.due_at)
        due = min((d for d in dues if d is not None), default=None)
        if due is not None:
            since = self.archive_waiting_since
            self.archive_waiting_since = due if since is None else min(since, due)

    def _name_request(
        self, request: codec.Request, prior: model.Stamp | None, effects: Effects, since: int
    ) -> None:
        """The erasure ``request`` on the explicit deferrals it made (from ``since``), and
        kept for the release with the erasure it added to the record's state (``prior``
        before it), beside the others the record keeps: the state's own, an erased life
        kept beside the next life, each erasure naming no life. Kept one per record, the
        later replaced the earlier, whose tombstone named none. An erasure the record kept
        already (a second request for the lives before the running one, which erases no
        more) keeps the request it has: the first, which asked for it."""
        before = codec.deferred_erasures(prior)
        for index in range(since, len(effects.deferred)):
            state, reason, _ = effects.deferred[index]
            if reason != "explicit":
                continue
            effects.deferred_requests[index] = request
            waiting = codec.deferred_erasures(state)
            asked = waiting - before
            if not asked:
                continue
            key = state.identity.key
            noted = self._held_requests
            known = self._known_requests(key)
            # Those of erasures let go of since are stale: one of the same time and kind
            # asked again (under a later hold) is this request's.
            kept = {e: r for e, r in known.items() if e in waiting and e not in asked}
            kept.update(dict.fromkeys(asked, request))
            noted[key] = kept
            if effects.held_requests is None:
                effects.held_requests = {}
            effects.held_requests[key] = dict(kept)  # (the release takes from the first)
            if len(noted) > _ARRIVED_DUE_MAX:
                del noted[next(iter(noted))]

    def _carry_requests(self, prior: model.Stamp, effects: Effects) -> None:
        """The requests of the erasures a hold deferred that ``prior`` keeps, on the
        effects of an event that may stamp the record again (``Effects.held_requests``):
        every stamp of the record carries them while they wait (the outbox's
        ``codec.H_DEFERRED_REQUESTS``), as a restore reads its latest stamp alone. Without
        them, a stamp of the next life (a create after an erased life), or of a second
        erasure, lost the earlier erasures' requests at a restore. Noted by an earlier
        event of the slice, they stand (:meth:`_name_request` keeps them all)."""
        key = prior.identity.key
        carried = effects.held_requests
        if carried is not None and key in carried:
            return
        known = self._known_requests(key)
        waiting = codec.deferred_erasures(prior)
        kept = {erasure: request for erasure, request in known.items() if erasure in waiting}
        if not kept:
            return
        if carried is None:
            carried = effects.held_requests = {}
        carried[key] = kept

    def _known_requests(self, key: str) -> dict[codec.DeferredErasure, codec.Request]:
        """The deferred erasure requests of ``key`` as this processor noted them, else as
        the store keeps them (after a restart, or restored)."""
        known = self._held_requests.get(key)
        return self.store.deferred_requests(key) if known is None else known

    def _deferred_request(
        self, key: str, erase_at: int | None, names_life: bool
    ) -> codec.Request | None:
        """The request of the erasure of ``key`` dated ``erase_at`` that a hold deferred
        (``names_life``: it ends a life the record had, ``codec.DeferredErasure``), as
        this processor read it or the store keeps it (after a restart, or restored from
        the stamp's headers); None when neither knows it. Asked only at a release."""
        if erase_at is None:
            return None
        erasure = (erase_at, names_life)
        noted = self._held_requests.get(key)
        if noted is not None:
            request = noted.pop(erasure, None)
            if not noted:
                del self._held_requests[key]
            if request is not None:
                return request
        return self.store.deferred_request(key, erasure)

    def _defer(self, kept: model.Stamp, reason: str, effects: Effects) -> None:
        ids = [h.hold_id for h in self.holds.holding(kept.identity)]
        effects.deferred.append((kept, reason, ids))
        effects.verdicts["held"] += 1

    def release_due(self, now_ms: int, *, budget: int = 5000) -> Effects:
        """Tombstone held records that no hold matches any more, ``budget`` at a time.

        After a release (the hold book's generation moved) the held records are scanned
        from the store, on disk, in key order; each call goes on where the last stopped,
        so releasing a hold over millions of records tombstones them at the normal rate
        without holding them in memory. A later release goes on from there too and wraps
        round (:class:`_Round`): every held record is looked at within one pass of the
        last release, however often releases come.
        """
        self._seq += 1
        effects = Effects(self._seq)
        if self.holds.generation != self._release_generation:
            self._owe_round(self.holds.let_go_since(self._release_generation))
            self._release_generation = self.holds.generation
        archive = self.archive
        if archive is not None and archive.generation != self._archive_generation:
            self._archive_generation = archive.generation
            if self.archive_waiting:
                self._owe_round([])
                self.archive_waiting, self.archive_waiting_since = 0, None  # counted again
        self.release_looked = 0
        if not self._rounds:
            return effects
        looks = self._overlay_looks()
        stored, cursor = self.store.held(self._release_cursor or b"", budget)
        self.release_looked = len(stored) + len(looks)
        overlay = self._overlay
        looks += self._store_looks([s for s in stored if s.identity.key not in overlay])
        self._advance_rounds(cursor)
        writes, seq = effects.writes, effects.seq
        for held, let_go in looks:
            if self.holds.is_held(held.identity):
                if any(index.any_matches(held.identity) for index in let_go):
                    # Let go by one hold, kept by another: the audit says which now.
                    ids = [h.hold_id for h in self.holds.holding(held.identity)]
                    for kept in _deferred_lives(held):
                        reason = "ttl" if kept.erase_at is None else "explicit"
                        if kept.erase_at is not None:
                            # Its request, as the first entry named it: without it the
                            # entry read "the erasure request unknown" (a trial).
                            erasure = (kept.erase_at, kept.created_at is not None)
                            known = self._known_requests(held.identity.key).get(erasure)
                            if known is not None:
                                effects.deferred_requests[len(effects.deferred)] = known
                        effects.deferred.append((kept, reason, ids))
                continue
            if not self._archive_lets_go(held):
                self._waits_for_archive(held)
                continue
            cause = self._release_cause(held, let_go)
            new = self._let_go_now(held, now_ms, effects, ordered=False, cause=cause)
            key = held.identity.key
            writes[key] = (held, new)
            overlay[key] = (seq, new)
        self._bound_wheel()
        return effects

    def _owe_round(self, let_go: Sequence[Hold]) -> None:
        """Owe a pass from where the scan stands, looking for what ``let_go`` kept; one
        owed from the same place and not yet wrapped round is the same pass."""
        last = self._rounds[-1] if self._rounds else None
        if last is None or last.wrapped or last.stop != self._release_cursor:
            last = _Round(self._release_cursor, HoldIndex())
            self._rounds.append(last)
        if self._overlay_let_go is None:
            self._overlay_let_go = HoldIndex()
        for hold in let_go:
            last.let_go.add(hold)
            self._overlay_let_go.add(hold)

    def _overlay_looks(self) -> list[tuple[model.Stamp, list[HoldIndex]]]:
        """The unsettled held states, once per release: the scan skips a key while its
        state is unsettled, and one decided before the release may settle after the scan
        went past it. States decided later were decided with the holds of then."""
        let_go = self._overlay_let_go
        if let_go is None:
            return []
        self._overlay_let_go = None
        return [
            (s, [let_go]) for _, s in self._overlay.values() if s.live and (s.held or s.held_lives)
        ]

    def _store_looks(self, stored: list[model.Stamp]) -> list[tuple[model.Stamp, list[HoldIndex]]]:
        """Each stored held record read, with the let-go holds of the rounds it is owed."""
        rounds = self._rounds
        if not any(r.wrapped for r in rounds):
            every = [r.let_go for r in rounds]
            return [(s, every) for s in stored]
        return [
            (s, [r.let_go for r in rounds if r.covers(s.identity.key.encode())]) for s in stored
        ]

    def _advance_rounds(self, cursor: bytes | None) -> None:
        """Move the scan to ``cursor`` (None: it read the last key) and drop the rounds it
        has now taken all the way round."""
        self._release_cursor = cursor
        if cursor is None:  # a round begun at the first key is done; the others wrap
            self._rounds = [r for r in self._rounds if r.stop is not None and not r.wrapped]
            for r in self._rounds:
                r.wrapped = True
            return
        self._rounds = [
            r for r in self._rounds if not (r.wrapped and r.stop is not None and r.stop <= cursor)
        ]

    def recheck_archive(self) -> None:
        """Look at the records waiting for the archive again (their stamps may have been
        settled, or the archive moved, since the last look)."""
        self._owe_round([])
        self.archive_waiting, self.archive_waiting_since = 0, None  # counted again by the scan

    @property
    def releasing(self) -> bool:
        """A release scan is under way (or one is owed to a release or archive progress)."""
        archive_moved = (
            self.archive is not None
            and self.archive_waiting > 0
            and self.archive.generation != self._archive_generation
        )
        return (
            bool(self._rounds) or self.holds.generation != self._release_generation or archive_moved
        )

    def next_due_ms(self) -> int | None:
        """The earliest due timer, or the horizon's end when the last load stopped short
        of it (the store's next timers are due from there: time to load them)."""
        due = self._engine.next_due_ms()
        retry = self._successor_retry_at
        if retry is not None and (due is None or retry < due):
            due = retry
        if self._horizon_short:
            end = self._engine.horizon_end
            return end if due is None or end < due else due
        return due

    def extend_horizon(self, now_ms: int, budget: int | None = None) -> int:
        """Load the next slice of timers from the store when the horizon runs short: at
        most ``load_slice`` of them (and ``budget``), none while the wheel holds
        ``max_loaded_timers``; returns how many."""
        engine = self._engine
        target = engine.horizon_target(now_ms, eager=self._horizon_short)
        if target is None:
            return 0
        room = min(self._load_slice, self._max_loaded - engine.pending_in_wheel)
        if budget is not None:
            room = min(room, budget)
        if room <= 0 or (room < self._least_load and engine.horizon_end > now_ms):
            # A full wheel (its timers go first), or one with room for a few only: a load
            # costs a seek and a read ahead, so it waits for room, or for the horizon's
            # end, where the partition is due again.
            self._horizon_short = True
            return 0
        timers, end = self._live_slice(engine.horizon_end, target, room)
        engine.extend_horizon(end, timers, None)
        self._horizon_short = end < target
        return len(timers)

    def _bound_wheel(self) -> None:
        """New records' timers (and released ones) go into the wheel when they fall due
        within the horizon, whatever its size: a million open sessions due within the hour
        would hold a million timers, ~1 KB each. A quarter over the limit, the horizon ends
        earlier instead, at the first timer dropped to bring the wheel back to the limit;
        those and later ones wait in the store, and are loaded again as the wheel empties."""
        engine, most = self._engine, self._max_loaded
        if engine.wheel_size <= most + most // 4:
            return
        overdue = engine.pending_in_wheel - engine.wheel_size  # due: not in the wheel now
        if engine.shrink_horizon(max(most - overdue, self._least_load, 1)):
            self._horizon_short = True

    def load_timers(self) -> int:
        """Schedule the stored timers within the horizon (after a restore, say), up to
        ``max_loaded_timers`` of them."""
        engine = self._engine
        before = engine.horizon_end
        timers, end = self._live_slice(-(1 << 62), before, self._max_loaded)
        engine.start_horizon(end, timers, None)
        self._horizon_short = end < before
        return len(timers)

    def _live_slice(self, since: int, before: int, limit: int) -> tuple[list[Timer], int]:
        """The timers of live records due in ``[since, end)``: the store's, unless the
        overlay knows better, plus the overlay's own; ``end`` is ``before``, or, when more
        than about ``limit`` are due, the due time of the first left out (those due at one
        millisecond are taken together)."""
        overlay = self._overlay
        timers: list[Timer] = []
        end, last = before, None
        for found in self.store.due_timers(since, before, batch=limit + 1):  # in due order
            key, due, _ = found
            if len(timers) >= limit and due != last:
                end = due
                break
            last = due
            if key not in overlay:
                timers.append(found)
        for _, stamp in overlay.values():
            when = stamp.due_at
            if when is not None and since <= when < end and (mine := timer(stamp)) is not None:
                timers.append(mine)
        return timers, end

    @property
    def timers(self) -> int:
        """Timers in the wheel now (at most one horizon's worth)."""
        return self._engine.pending_in_wheel

    # -- the order of writes ------------------------------------------------------------

    def settle(self, effects: Effects, now_ms: int) -> None:
        """Write ``effects``' states to the store, once the broker holds their messages.

        Effects must be settled in the order they were made (the shell's pipeline does);
        a settled state leaves the overlay unless a later effect changed it again.
        """
        if effects.writes:
            changes: Iterable[tuple[model.Stamp | None, model.Stamp]] = effects.writes.values()
            if effects.stamp_offsets or self.archive is not None:
                changes = self._with_offsets(effects)
            self.store.write(
                changes,
                now_ms=now_ms,
                arrived=effects.due_on_arrival or None,
                requests=effects.held_requests,
                erasures_read=effects.erasures_read,
            )
        overlay, seq = self._overlay, effects.seq
        for key in effects.writes:
            known = overlay.get(key)
            if known is not None and known[0] == seq:
                del overlay[key]
        if effects.erasures_read:
            unsettled = self._erasures_unsettled
            for key in effects.erasures_read:
                noted = unsettled.get(key)
                if noted is not None and noted[0] == seq:
                    del unsettled[key]

    def checkpoint(self, runs: Mapping[str, Sequence[Run]]) -> None:
        """Move the store's changelog positions over this instance's own settled messages
        (see :meth:`stream_expiry.outbox.Outbox.runs`): a position within a run goes to the
        run's end. A restart with this store then restores only what was written after
        (Kafka Streams checkpoints its stores on commit likewise); without it every restart
        re-read the whole changelog, a cold restore's read, to apply nothing. A position
        before a run stays: another writer's messages lie between, and a restore must read
        them. The run's last message marks each new position (``position_marks``)."""
        moved = self.checkpoint_meta(runs)
        if moved:
            self.store.set_meta(moved)

    def checkpoint_meta(self, runs: Mapping[str, Sequence[Run]]) -> dict[str, int]:
        """What :meth:`checkpoint` writes, not written: the service writes it together
        with the partition's other meta (the mark of the input offset it committed), one
        store write a commit instead of two. The positions count as saved from now on."""
        saved = self._positions
        moved: dict[str, int] = {}
        for name, ascending in runs.items():
            position = saved.get(name)
            if position is None:  # the store's, read once: later ones are what this wrote
                position = saved[name] = self.store.meta(name) or 0
            for start, end, last_key, last_ts in ascending:  # disjoint: one holds it at most
                if start <= position < end:
                    saved[name] = moved[name] = end
                    moved.update(position_marks(name, end - 1, last_key, last_ts))
                    break
        return moved

    def _with_offsets(self, effects: Effects) -> list[tuple[model.Stamp | None, model.Stamp]]:
        """The writes with their stamps' offsets: new ones from the acks, and for a live
        state written without a new stamp (a timer's state, say) the offset it had."""
        offsets = effects.stamp_offsets
        out: list[tuple[model.Stamp | None, model.Stamp]] = []
        missing: list[model.Identity] = []
        for old, new in effects.writes.values():
            offset = offsets.get(new.identity.key)
            if offset is not None:
                new = new.with_offset(offset)
            elif new.live and new.stamp_offset is None and self.archive is not None:
                missing.append(new.identity)
            out.append((old, new))
        if missing:
            stored = {
                i.key: s.stamp_offset
                for i, s in zip(missing, self.store.get_many(missing), strict=True)
                if s is not None
            }
            out = [
                (old, new.with_offset(stored[new.identity.key]))
                if new.stamp_offset is None and stored.get(new.identity.key) is not None
                else (old, new)
                for old, new in out
            ]
        return out

    def state_of(self, key: str) -> model.Stamp | None:
        """The record's current state, decided or stored (for tests and ``status``)."""
        known = self._overlay.get(key)
        return known[1] if known is not None else self.store.get(key)

    @property
    def decided_to(self) -> int:
        """The offset after the last input record decided (0: none yet): what the
        partition's reading position says only once the records it took are decided."""
        return self._decided_to

    @property
    def unsettled(self) -> int:
        return len(self._overlay)

    def states(self) -> Sequence[model.Stamp]:
        """Every current state (store and overlay merged): for replay and tests."""
        merged = {s.identity.key: s for s in self.store.items()}
        merged.update({k: s for k, (_, s) in self._overlay.items()})
        return list(merged.values())

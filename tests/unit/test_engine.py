"""The partition processor against a simple reference model, and table tests of every rule.

The harness below plays the shell around the one processor the service drives (over an
in-memory store): events go in as message bytes, effects are settled a few calls late as
the broker's acks would allow, due timers fire as the clock moves. The reference model is a
dict and a sorted list, written straight from the contract's prose.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream_expiry.engine import (
    Engine,
    Verdict,
    _fire_timer,
    _pack_timer,
    _unpack_timer,
    timer,
)
from stream_expiry.model import HeldLife, Identity, InputEvent, Stamp, last_activity
from stream_expiry.policy import Resolution
from stream_expiry.state import Effects, MemoryKV, PartitionProcessor, PartitionStore

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from stream_expiry.engine import Fired
    from stream_expiry.holds import HoldBook
    from stream_expiry.state.store import ErasureRead

TTL = {"conversation": 1000, "session": 300, "error": 50, "analytics": None}
# The policy from POLICY_CHANGE on, for the runs with a changing policy: every category's
# TTL moves, shorter, longer, from never to finite and from finite to never, so a record
# must keep the TTL of its creation time and an earlier create must not take a later one's.
TTL_LATER = {"conversation": 250, "session": 100, "error": None, "analytics": 400}
POLICY_CHANGE = 200
SLIDING = frozenset({"session"})
Tomb = tuple[str, str, int, "int | None"]


def constant_policy(category: str, at: int) -> int | None:
    return TTL[category]


def changing_policy(category: str, at: int) -> int | None:
    return (TTL_LATER if at >= POLICY_CHANGE else TTL)[category]


def resolver(policy: Callable[[str, int], int | None]) -> Callable[[Identity, int], Resolution]:
    """The engine's resolver for a policy written in harness time."""

    def resolve(identity: Identity, at_ms: int) -> Resolution:
        ttl = policy(identity.category, at_ms - BASE)
        return Resolution(ttl, None if ttl is None else "default")

    return resolve


BASE = 1_700_000_000_000  # the harness's time 0, in epoch milliseconds


# The offsets of the one input partition every harness reads: a harness made later (a
# processor restored from another's changelog) reads the partition's later events after
# the events the first one read, as a restarted service does, not from offset 1 again.
_PARTITION_OFFSETS = itertools.count(1)


@dataclass
class _Rec:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None  # when it reached the broker (Kafka's timestamp)


def _sent(fired: Iterable[Fired]) -> list[Tomb]:
    """The tombstone events ``fired`` puts on ``expiry.tombstones``: not a null sent again
    without its event (``Fired.null_only``), whose event went out before."""
    return [_tomb(f) for f in fired if not f.null_only]


def _tomb(f: Fired) -> Tomb:
    before = f.before
    return (
        before.identity.key,
        f.reason,
        f.emitted_at - BASE,
        None if before.expires_at is None else before.expires_at - BASE,
    )


def _logged(stamp: Stamp) -> tuple[object, ...]:
    return (stamp.created_at, stamp.expires_at, stamp.erase_at, stamp.held_lives)


@dataclass
class Harness:
    """Plays the shell around the one partition processor the service, replay and the
    benchmarks drive: events in as message bytes, effects settled ``settle_lag`` calls late
    (the broker's acks take a while), so the overlay of unsettled states is exercised."""

    horizon_ms: int = 400
    settle_lag: int = 0
    now: int = 0
    policy: Callable[[str, int], int | None] = constant_policy
    holds: HoldBook | None = None
    proc: PartitionProcessor = field(init=False)
    unsettled: deque[Effects] = field(default_factory=deque)
    offset: int = 0
    # The last message of each record on expiry.stamped: a stamp's times, None for the
    # null that follows a tombstone.
    changelog: dict[str, tuple[object, ...] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.proc = PartitionProcessor(
            "in",
            0,
            PartitionStore(MemoryKV()),
            resolve=resolver(self.policy),
            sliding=SLIDING,
            categories=frozenset(TTL),
            max_skew_ms=10**12,
            now_ms=BASE + self.now,
            tick_ms=10,
            horizon_ms=self.horizon_ms,
            holds=self.holds,
        )

    def _settle(self, effects: Effects) -> None:
        for stamps, tombstones in effects.runs():  # what expiry.stamped gets, in order
            for stamp, _ in stamps:
                self.changelog[stamp.identity.key] = _logged(stamp)
            for fired in tombstones:
                if not fired.after.live:  # a held earlier life's tombstone has no null
                    self.changelog[fired.before.identity.key] = None
        self.unsettled.append(effects)
        while len(self.unsettled) > self.settle_lag:
            self.proc.settle(self.unsettled.popleft(), BASE + self.now)

    def process(self, ev: InputEvent, read_at: tuple[int, int] | None = None) -> Effects:
        """``ev`` read as the next message of the partition, produced now; or read again
        where it was read before (``read_at``: its offset and Kafka timestamp)."""
        if read_at is None:
            self.offset = next(_PARTITION_OFFSETS)
            read_at = (self.offset, BASE + self.now)
        else:
            self.offset = max(self.offset, read_at[0])
        body = {
            "category": ev.identity.category,
            "record_id": ev.identity.record_id,
            "org": ev.identity.org,
            "bot": ev.identity.bot,
            "env": ev.identity.env,
            "op": ev.op,
            "ts": BASE + ev.ts,
        }
        rec = _Rec(read_at[0], None, orjson.dumps(body), read_at[1])
        effects = self.proc.process([rec], BASE + self.now)
        self._settle(effects)
        return effects

    def feed(self, ev: InputEvent) -> list[Tomb]:
        return _sent(self.process(ev).tombstones)

    def advance(self, now: int) -> list[Tomb]:
        """The timers due by ``now``, then the parked creates woken by them, as the
        service's firing and its loop's next turn."""
        self.now = max(self.now, now)
        self.proc.extend_horizon(BASE + self.now)
        effects = self.proc.fire_due(BASE + self.now)
        self._settle(effects)
        out = _sent(effects.tombstones)
        woken = self.proc.unpark(BASE + self.now)
        if woken is not None:
            self._settle(woken)
            out += _sent(woken.tombstones)
        return out

    def fire_some(self, now: int, limit: int) -> list[Tomb]:
        """One firing of at most ``limit`` due timers, as the service's timer task does
        when it is behind."""
        self.now = max(self.now, now)
        self.proc.extend_horizon(BASE + self.now)
        effects = self.proc.fire_due(BASE + self.now, limit)
        self._settle(effects)
        return _sent(effects.tombstones)

    def check_changelog(self) -> None:
        """The changelog rebuilds every state: a live record's last message is a stamp of
        its times now (a touch's extension, a create moved back, an erasure kept under a
        hold, the earlier lives a hold keeps, each published), an ended record's is a
        null."""
        for state in self.proc.states():
            want = _logged(state) if state.live else None
            assert self.changelog.get(state.identity.key, "none") == want, state

    def release_scan(self, budget: int = 2) -> list[Tomb]:
        """The release scan, run to its end ``budget`` records at a time, as the service
        runs it after its timers: held records no hold matches any more go."""
        out: list[Tomb] = []
        while self.proc.releasing:
            effects = self.proc.release_due(BASE + self.now, budget=budget)
            self._settle(effects)
            out += _sent(effects.tombstones)
        return out

    def state(self, ev: InputEvent) -> Stamp | None:
        return self.proc.state_of(ev.identity.key)


@dataclass
class RefRecord:
    created: int | None
    expires: int | None
    ttl: int | None
    deleted: int | None = None
    floor: int | None = None  # the deletion of the life before: events up to it are stale
    erased: bool = False  # its life ended by an erasure request (not by its expiry)
    # An erasure dated within the life its expiry ended, read after: a create after it
    # starts the next life, as it would have read in time.
    erased_within: int | None = None
    # The creation the life's first stamp said, once a create moved it back: the life must
    # still end after it.
    first: int | None = None


class Reference:
    """The contract's semantics, written as plainly as possible: a dict and a sorted list."""

    def __init__(self, policy: Callable[[str, int], int | None] = constant_policy) -> None:
        self.policy = policy  # (category, creation time) -> TTL
        self.recs: dict[str, RefRecord] = {}
        self.timers: list[tuple[int, str]] = []
        self.now = 0
        # A create dated at or after a running life's expiry, read before it: it waits
        # for that expiry, and the record's later events wait behind it (key -> events,
        # each with its place in arrival order; the wake times, sorted).
        self.parked: dict[str, list[tuple[int, InputEvent]]] = {}
        self.parked_due: dict[str, int] = {}
        self.wake: list[tuple[int, str]] = []
        self.arrivals = 0

    def park(self, ev: InputEvent, *, frozen: bool = False) -> bool:
        """Whether ``ev`` waits: parked now, or behind its record's parked create (one
        dated before the running life's expiry is that life's: it does not wait).
        ``frozen``: a hold keeps the record's life past its end (nothing is parked)."""
        key, t = ev.identity.key, ev.ts
        self.arrivals += 1
        if key in self.parked and t >= self.parked_due[key]:
            self.parked[key].append((self.arrivals, ev))
            return True
        rec = self.recs.get(key)
        if (
            ev.op == "create"
            and not frozen
            and rec is not None
            and rec.deleted is None
            and rec.expires is not None
            and self.now < rec.expires <= t
        ):
            self.parked.setdefault(key, []).append((self.arrivals, ev))
            if rec.expires < self.parked_due.get(key, rec.expires + 1):
                self.parked_due[key] = rec.expires
                self.wake = [w for w in self.wake if w[1] != key]
                bisect.insort(self.wake, (rec.expires, key))
            return True
        return False

    def woken(self) -> list[InputEvent]:
        """The parked events whose running life has expired by now, in arrival order."""
        out: list[tuple[int, InputEvent]] = []
        while self.wake and self.wake[0][0] <= self.now:
            key = self.wake.pop(0)[1]
            del self.parked_due[key]
            out += self.parked.pop(key)
        return [e for _, e in sorted(out, key=lambda p: p[0])]

    def _unschedule(self, key: str) -> None:
        self.timers = [t for t in self.timers if t[1] != key]

    def _schedule(self, key: str, rec: RefRecord) -> None:
        self._unschedule(key)
        if rec.deleted is None and rec.expires is not None:
            bisect.insort(self.timers, (rec.expires, key))

    def event(self, ev: InputEvent, *, unpark: bool = True) -> list[Tomb]:
        """``unpark``: decide the record's parked events at once if this one ended its
        running life (a wrapping model does it itself, with its own rules)."""
        if self.park(ev):
            return []
        out = self._decide(ev)
        if unpark:
            out += self.unpark_ended(ev.identity.key, self.event)
        return out

    def unpark_ended(
        self, key: str, decide: Callable[[InputEvent], list[Tomb]], kept: bool = False
    ) -> list[Tomb]:
        """A record's parked events, decided now if its running life has ended (or is
        ``kept``) before the expiry they wait for, or is due by now (a create moved its
        creation back, and its expiry with it: a create read now would not be parked).
        Moved back and not due yet, they wait for that expiry instead."""
        rec = self.recs.get(key)
        if key not in self.parked:
            return []
        running = not (kept or rec is None or rec.deleted is not None)
        if running and rec is not None and rec.expires is not None and self.now < rec.expires:
            if rec.expires < self.parked_due[key]:
                self.parked_due[key] = rec.expires
                self.wake = [w for w in self.wake if w[1] != key]
                bisect.insort(self.wake, (rec.expires, key))
            return []
        del self.parked_due[key]
        self.wake = [w for w in self.wake if w[1] != key]
        out: list[Tomb] = []
        for _, e in self.parked.pop(key):
            out += decide(e)
        return out

    def _decide(self, ev: InputEvent) -> list[Tomb]:
        key, t, op, cat = ev.identity.key, ev.ts, ev.op, ev.identity.category
        out: list[Tomb] = []
        rec = self.recs.get(key)
        if (
            rec
            and rec.deleted is None
            and rec.expires is not None
            and rec.expires <= self.now
            and t >= rec.expires
        ):
            out.append((key, "ttl", self.now, rec.expires))
            rec.deleted = rec.expires - 1
            self._unschedule(key)
        floor = None
        if rec and rec.deleted is not None:
            ended = rec.deleted
            if op == "create" and rec.erased_within is not None:
                ended = rec.erased_within
            if t <= ended:
                if op == "delete" and not rec.erased:
                    # an erasure read after the expiry ended the life: it still goes out
                    out.append((key, "explicit", self.now, None))  # naming no life
                    # one dated before that life's creation is for the lives before it:
                    # an erasure of the ended life, read late, still goes out after it
                    rec.erased = rec.created is None or t >= rec.created
                    if rec.created is not None and t >= rec.created:
                        rec.erased_within = t
                return out
            floor, rec = ended, None
        if op == "delete" and rec is not None and rec.floor is not None and t <= rec.floor:
            # an erasure of the lives before this one (re-delivered, or read late): it
            # goes out naming no life, and this life runs on
            out.append((key, "explicit", self.now, None))
            return out
        if op == "delete":
            out.append((key, "explicit", self.now, rec.expires if rec else None))
            created = rec.created if rec else None
            self.recs[key] = RefRecord(
                created,
                rec.expires if rec else None,
                rec.ttl if rec else None,
                t if created is None else max(t, created),
                erased=True,
            )
            self._unschedule(key)
            return out
        if rec is None:
            if op == "touch" and cat not in SLIDING:
                return out
            ttl = self.policy(cat, t)
            rec = RefRecord(t, None if ttl is None else t + ttl, ttl, floor=floor)
        elif op == "create":
            if rec.floor is not None and t <= rec.floor:
                return out
            if rec.created is not None and t < rec.created:
                # The earliest creation wins, with its own TTL and any touch's slide, unless
                # that ends the life later: a redelivery never extends a life.
                ttl = self.policy(cat, t)
                # A sliding record's last activity stays: the touch that slid the life,
                # or the one that started it (read before this create).
                touched = cat in SLIDING and rec.expires is not None and rec.ttl is not None
                fresh = None if ttl is None else t + ttl
                if touched and ttl is not None and fresh is not None:
                    assert rec.expires is not None
                    assert rec.ttl is not None
                    fresh = max(fresh, rec.expires - rec.ttl + ttl)
                never_later = rec.expires is None or (fresh is not None and fresh <= rec.expires)
                # A create whose life would have ended before this one began (as its first
                # stamp said) is another, earlier life's: it moves nothing.
                began = rec.created if rec.first is None else rec.first
                earlier_life = fresh is not None and fresh <= began
                if never_later and not earlier_life:
                    rec.created, rec.ttl, rec.expires, rec.first = t, ttl, fresh, began
        elif cat in SLIDING and rec.ttl is not None and rec.expires is not None:
            rec.expires = max(rec.expires, t + rec.ttl)
        self.recs[key] = rec
        self._schedule(key, rec)
        return out

    def advance(self, now: int) -> list[Tomb]:
        self.now = max(self.now, now)
        out: list[Tomb] = []
        while self.timers and self.timers[0][0] <= self.now:
            exp, key = self.timers.pop(0)
            self.recs[key].deleted = exp - 1
            out.append((key, "ttl", self.now, exp))
        for e in self.woken():
            out += self.event(e)
        return out


def ev(cat: str, rid: str, op: str, ts: int, org: str = "o") -> InputEvent:
    return InputEvent(Identity(org, "_", "live", cat, rid), op, ts)  # type: ignore[arg-type]


# -- table tests ------------------------------------------------------------------------


def test_create_stamps_from_creation_time_and_fires_on_time_never_early() -> None:
    h = Harness()
    assert h.feed(ev("error", "a", "create", 0)) == []
    assert h.advance(49) == []
    assert h.advance(50) == [(ev("error", "a", "create", 0).identity.key, "ttl", 50, 50)]
    assert h.advance(10_000) == []


def test_redelivered_create_never_extends() -> None:
    h = Harness()
    h.feed(ev("error", "a", "create", 0))
    h.now = 30
    effects = h.process(ev("error", "a", "create", 30))
    assert effects.verdicts == {"redelivered": 1}
    assert not effects.stamps
    assert not effects.writes
    assert [t[3] for t in h.advance(50)] == [50]


def test_a_create_redelivered_with_its_own_time_moves_nothing() -> None:
    """The create read again exactly as first read (same ``ts``): a redelivery, which
    moves nothing and publishes nothing, not a create moved back to where it is."""
    h = Harness()
    h.feed(ev("error", "a", "create", 0))
    effects = h.process(ev("error", "a", "create", 0))
    assert effects.verdicts == {"redelivered": 1}
    assert not effects.stamps
    assert [t[3] for t in h.advance(50)] == [50]


def test_earlier_create_moves_creation_back() -> None:
    h = Harness()
    h.now = 100
    h.feed(ev("error", "a", "create", 100))
    h.feed(ev("error", "a", "create", 60))
    assert h.advance(109) == []
    assert h.advance(110) == [(ev("error", "a", "create", 0).identity.key, "ttl", 110, 110)]


def test_a_create_whose_life_ended_before_the_record_s_began_moves_nothing() -> None:
    """Read after the create of 100 (ttl 50: due at 150), a create of 40 would end its
    life at 90, before 100: an earlier life's create, not this one's. Moved back over it,
    the life of 100 was tombstoned at 90, 60 ms before its expiry."""
    h = Harness()
    h.now = 30
    h.feed(ev("error", "a", "create", 100))
    effects = h.process(ev("error", "a", "create", 40))
    assert effects.verdicts == {"redelivered": 1}
    assert not effects.stamps
    assert h.advance(149) == []
    assert h.advance(150) == [(ev("error", "a", "create", 0).identity.key, "ttl", 150, 150)]
    h2 = Harness()  # the limit: a life that would end at 100 ends before it begins too
    h2.now = 30
    h2.feed(ev("error", "a", "create", 100))
    assert h2.process(ev("error", "a", "create", 50)).verdicts == {"redelivered": 1}
    h3 = Harness()  # a millisecond later it overlaps: the earliest creation wins
    h3.now = 30
    h3.feed(ev("error", "a", "create", 100))
    assert h3.process(ev("error", "a", "create", 51)).verdicts == {"backdated": 1}
    assert h3.advance(101) == [(ev("error", "a", "create", 0).identity.key, "ttl", 101, 101)]


def test_touch_slides_sessions_only() -> None:
    h = Harness()
    h.feed(ev("session", "s", "create", 0))
    h.feed(ev("conversation", "c", "create", 0))
    h.now = 200
    h.feed(ev("session", "s", "touch", 200))
    assert h.process(ev("conversation", "c", "touch", 200)).verdicts == {"touch_ignored": 1}
    assert h.advance(499) == []
    assert sorted(t[3] or 0 for t in h.advance(1000)) == [500, 1000]


def test_a_touch_that_slides_a_session_to_its_own_expiry_changes_nothing() -> None:
    """A touch extends only to a later expiry: one that slides the record to the expiry
    it has is ignored and publishes no stamp."""
    h = Harness()
    h.feed(ev("session", "s", "create", 0))
    effects = h.process(ev("session", "s", "touch", 0))  # slides to 0 + 300: its expiry
    assert effects.verdicts == {"touch_ignored": 1}
    assert not effects.stamps
    assert [t[3] for t in h.advance(300)] == [300]


def test_late_touch_changes_nothing_and_touch_after_expiry_starts_new_life() -> None:
    h = Harness()
    h.feed(ev("session", "s", "create", 0))
    assert [t[1] for t in h.advance(300)] == ["ttl"]
    h.feed(ev("session", "s", "touch", 250))  # before the expiry: stale
    assert h.advance(10_000) == []
    h.feed(ev("session", "s", "touch", 10_000))  # at or after: a new life
    assert [t[3] for t in h.advance(10_300)] == [10_300]


def test_delete_tombstones_at_once_even_unknown_and_blocks_older_events() -> None:
    h = Harness()
    h.now = 5
    tombs = h.feed(ev("conversation", "x", "delete", 5))
    assert tombs == [(ev("conversation", "x", "create", 0).identity.key, "explicit", 5, None)]
    h.feed(ev("conversation", "x", "create", 5))  # ts <= d: ignored
    assert h.advance(100_000) == []
    h.feed(ev("conversation", "x", "create", 100_000))  # ts > d: a new life
    assert [t[1] for t in h.advance(101_000)] == ["ttl"]


def test_an_erasure_read_after_the_expiry_ended_the_life_still_goes_out_once() -> None:
    """A delete older than the expiry but read after the ttl tombstone went out (a backlog,
    a takeover): the ttl tombstone told the archive to keep the data, so the erasure must
    still reach the stores and the archive; its redelivery, and older events, change
    nothing."""
    h = Harness()
    key = ev("error", "a", "create", 0).identity.key
    h.feed(ev("error", "a", "create", 0))
    assert h.advance(60) == [(key, "ttl", 60, 50)]
    h.now = 70
    effects = h.process(ev("error", "a", "delete", 20))
    assert [_tomb(f) for f in effects.tombstones] == [(key, "explicit", 70, None)]
    assert effects.verdicts == {"deleted": 1}
    assert not effects.stamps  # the record stays deleted: a null, no stamp
    state = h.state(ev("error", "a", "delete", 20))
    assert state is not None
    assert (state.deleted_at, state.erase_at) == (BASE + 49, BASE + 20)  # floor unmoved
    assert h.changelog[key] is None
    for again in (ev("error", "a", "delete", 20), ev("error", "a", "delete", 49)):
        assert h.process(again).verdicts == {"stale": 1}
    assert h.feed(ev("error", "a", "create", 10)) == []
    assert h.advance(10_000) == []
    # An erasure of a life an erasure ended is a redelivery: nothing goes out.
    h.feed(ev("error", "b", "delete", 100))
    assert h.process(ev("error", "b", "delete", 90)).verdicts == {"stale": 1}


def test_an_erasure_read_after_the_expiry_ended_the_life_notes_where_it_was_read() -> None:
    """The erasure of a life its expiry ended, read late, leaves the marker that
    remembers it (``erase_at``) as the outcome's state: the processor notes where the
    request was read from that state (``Effects.erasures_read``), and the outbox says it
    on the tombstone and its null (``expiry-erasure-read-at``). With the marker only on
    the tombstone (the state None), the same marker was stored but where the request
    was read went unsaid."""
    h = Harness()
    key = ev("error", "a", "create", 0).identity.key
    h.feed(ev("error", "a", "create", 0))
    assert h.advance(60) == [(key, "ttl", 60, 50)]
    h.now = 70
    effects = h.process(ev("error", "a", "delete", 20))
    assert [_tomb(f) for f in effects.tombstones] == [(key, "explicit", 70, None)]
    assert effects.erasures_read == {key: (BASE + 20, (h.offset, BASE + 70))}


def test_already_due_at_ingest_fires_on_next_advance() -> None:
    h = Harness()
    h.now = 10_000
    h.feed(ev("error", "old", "create", 0))
    assert [(t[2], t[3]) for t in h.advance(10_000)] == [(10_000, 50)]


def test_never_expiring_category_has_no_timer() -> None:
    h = Harness()
    h.feed(ev("analytics", "a", "create", 0))
    assert h.advance(10**12) == []


def test_far_future_records_wait_in_the_index_not_the_wheel() -> None:
    h = Harness(horizon_ms=100)
    h.feed(ev("conversation", "far", "create", 0))  # due at 1000, beyond the horizon
    assert h.proc.timers == 0
    fired = []
    for now in range(0, 1200, 20):
        fired += h.advance(now)
    assert [(t[2], t[3]) for t in fired] == [(1000, 1000)]


def test_an_event_for_a_record_due_but_not_yet_fired_fires_it_first() -> None:
    """The boundary the reference's due check guards (``expires <= now``, equality included):
    the record expired exactly at ``now``, no advance ran yet, and a new event arrives. The
    engine and the reference must both give the tombstone first, then a new life."""
    key = ev("error", "d", "create", 0).identity.key
    h, ref = Harness(), Reference()
    h.now = ref.now = 100
    for e, want in [
        (ev("error", "d", "create", 50), []),  # already due at ingest (expires 100 == now)
        (ev("error", "d", "create", 100), [(key, "ttl", 100, 100)]),  # at the expiry
    ]:
        assert h.feed(e) == want
        assert ref.event(e) == want
    for model in (h, ref):
        assert model.advance(149) == []
        assert model.advance(150) == [(key, "ttl", 150, 150)]


# -- the property ---------------------------------------------------------------------------

CATS = st.sampled_from(["conversation", "session", "error", "analytics"])
OPS_ = st.sampled_from(["create", "create", "touch", "delete"])
# Times on a 50 ms grid (the TTLs are multiples of 50) make events land exactly on expiries
# and deletions often: the boundaries are where the rules are subtle.
GRID = st.integers(-8, 8).map(lambda k: k * 50)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("event"), CATS, st.sampled_from(["a", "b", "c"]), OPS_, GRID),
        st.tuples(st.just("advance"), st.integers(0, 14).map(lambda k: k * 50)),
    ),
    max_size=60,
)


@settings(max_examples=500, deadline=None)
@given(
    steps=steps,
    horizon=st.sampled_from([50, 400, 5000]),
    lag=st.sampled_from([0, 1, 3]),
    policy=st.sampled_from([constant_policy, changing_policy]),
)
# A create from before the policy change, of records created after it, where the earlier
# time's TTL is longer (conversation) or none (analytics): taken, it extended the life, and
# re-deriving the stamp did not give its expiry (random steps seldom line these up).
@example(
    steps=[
        ("advance", 300),
        ("event", "conversation", "a", "create", 0),
        ("event", "analytics", "b", "create", 0),
        ("event", "conversation", "a", "create", -200),
        ("event", "analytics", "b", "create", -200),
    ],
    horizon=5000,
    lag=0,
    policy=changing_policy,
)
# A create from before a session's creation, after a touch slid it: the slide stays (random
# steps seldom line these three up).
@example(
    steps=[
        ("advance", 100),
        ("event", "session", "a", "create", 0),
        ("event", "session", "a", "touch", 100),
        ("event", "session", "a", "create", -50),
    ],
    horizon=5000,
    lag=0,
    policy=constant_policy,
)
# A create parked for its running life's expiry, then a create that moves the life's
# creation back, and its expiry with it: the parked create waits for that earlier expiry
# (an erasure dated between the two waits behind it, and erases the life it starts), or,
# the expiry passed, is decided at once. It waited for the old expiry: the erasure ended
# the running life instead and the next life, started after it, was never erased.
@example(
    steps=[
        ("event", "error", "a", "create", 50),
        ("event", "error", "a", "create", 100),
        ("event", "error", "a", "create", 0),
        ("event", "error", "a", "delete", 50),
        ("advance", 50),
    ],
    horizon=5000,
    lag=0,
    policy=constant_policy,
)
@example(
    steps=[
        ("advance", 50),
        ("event", "error", "a", "create", 0),
        ("event", "error", "a", "create", 50),
        ("event", "error", "a", "create", -50),
    ],
    horizon=5000,
    lag=0,
    policy=constant_policy,
)
# A create parked for its life's expiry and an erasure dated at the next life's expiry,
# both woken in one advance: the first life's tombstone, the next life's, then the erasure,
# which names no life (no expiry): in order, though None is no expiry to sort first.
@example(
    steps=[
        ("event", "error", "a", "create", 0),
        ("event", "error", "a", "create", 50),
        ("event", "error", "a", "delete", 100),
        ("advance", 100),
    ],
    horizon=5000,
    lag=0,
    policy=constant_policy,
)
# An erasure and a create dated within a life, both read after its expiry: the create
# starts the next life, as read in time (it was dropped as stale: a review); a create of
# the first life, read again, stays stale.
@example(
    steps=[
        ("event", "conversation", "a", "create", 0),
        ("advance", 700),
        ("advance", 300),
        ("event", "conversation", "a", "delete", -400),
        ("event", "conversation", "a", "create", -300),
        ("event", "conversation", "a", "create", -400),
        ("advance", 700),
    ],
    horizon=5000,
    lag=1,
    policy=constant_policy,
)
def test_processor_matches_reference_model(
    steps: list[tuple[object, ...]],
    horizon: int,
    lag: int,
    policy: Callable[[str, int], int | None],
) -> None:
    h = Harness(horizon_ms=horizon, settle_lag=lag, policy=policy)
    ref = Reference(policy)
    now = 0
    for step in steps:
        if step[0] == "advance":
            now += int(step[1])  # type: ignore[call-overload]
            got, want = h.advance(now), ref.advance(now)
            assert sorted(got) == sorted(want)
            # In expiry order; an erasure naming no life has none, and goes out where its
            # event is decided (after the lives a parked create ended before it).
            expiries = [g[3] for g in got if g[3] is not None]
            assert expiries == sorted(expiries)
            assert all(
                g[2] >= g[3] for g in got if g[1] == "ttl" and g[3] is not None
            )  # never early
        else:
            _, cat, rid, op, dt = step
            event = ev(str(cat), str(rid), str(op), max(0, now + int(dt)))  # type: ignore[call-overload]
            assert h.feed(event) == ref.event(event)
            state = h.proc.state_of(event.identity.key)
            if state is not None and state.live:
                assert_rederives(state, policy)
        h.check_changelog()
    final = now + 10**7
    assert sorted(h.advance(final)) == sorted(ref.advance(final))
    while h.unsettled:
        h.proc.settle(h.unsettled.popleft(), BASE + final)
    assert h.proc.unsettled == 0
    # What the store holds after everything settled is what the reference says.
    for key, rec in ref.recs.items():
        stored = h.proc.store.get(key)
        assert stored is not None
        assert (stored.deleted_at is None) == (rec.deleted is None), key
        if rec.deleted is None:
            assert stored.expires_at == (None if rec.expires is None else BASE + rec.expires)
            assert_rederives(stored, policy)


def assert_rederives(state: Stamp, policy: Callable[[str, int], int | None]) -> None:
    """A live record's TTL is its creation time's, and re-deriving it (``replay`` under the
    same policy) gives its own expiry: from its creation, or a sliding record's last
    activity."""
    assert state.created_at is not None
    category = state.identity.category
    assert state.ttl_ms == policy(category, state.created_at - BASE), state
    if state.ttl_ms is None:
        assert state.expires_at is None, state
        return
    activity = last_activity(state) if category in SLIDING else state.created_at
    assert activity is not None
    assert state.expires_at == activity + state.ttl_ms, state


sliced_steps = st.lists(
    st.one_of(
        st.tuples(st.just("event"), CATS, st.sampled_from(["a", "b", "c", "d"]), OPS_, GRID),
        st.tuples(st.just("fire"), st.integers(0, 8).map(lambda k: k * 50)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(steps=sliced_steps, limit=st.integers(1, 3), lag=st.sampled_from([0, 2]))
def test_due_timers_fired_in_slices_fire_once_at_their_current_expiry_never_early(
    steps: list[tuple[object, ...]], limit: int, lag: int
) -> None:
    """A backlog fired a few timers at a time: events that come between two slices may
    slide, end or renew a record whose timer is due and not fired yet; its tombstone must
    then be the one its current state says, once, and none for a replaced timer."""
    h = Harness(horizon_ms=5000, settle_lag=lag)
    now = 0
    keys: set[str] = set()
    ttl_tombs: list[tuple[str, int | None]] = []

    def current_expiries() -> dict[str, int]:
        out = {}
        for key in keys:
            state = h.proc.state_of(key)
            if state is not None and state.live and state.expires_at is not None:
                out[key] = state.expires_at - BASE
        return out

    def fire(at: int) -> list[Tomb]:
        expected = current_expiries()
        got = h.fire_some(at, limit)
        assert len(got) <= limit
        for key, reason, emitted, expires in got:
            assert reason == "ttl"
            assert expires is not None
            assert emitted >= expires
            assert expected.get(key) == expires, (key, expires, expected.get(key))
            ttl_tombs.append((key, expires))
        # What a slice left is still due, and says so (the timer task looks no further).
        due_left = any(e <= at for e in current_expiries().values())
        next_due = h.proc.next_due_ms()
        assert (next_due is not None and next_due - BASE <= at) == due_left
        return got

    for step in steps:
        if step[0] == "fire":
            now += int(step[1])  # type: ignore[call-overload]
            fire(now)
        else:
            _, cat, rid, op, dt = step
            event = ev(str(cat), str(rid), str(op), max(0, now + int(dt)))  # type: ignore[call-overload]
            keys.add(event.identity.key)
            for key, reason, emitted, expires in h.feed(event):
                if reason == "ttl":
                    assert expires is not None
                    assert emitted >= expires
                    ttl_tombs.append((key, expires))
    final = now + 10**7
    while fire(final):
        pass
    assert current_expiries() == {}  # every finite life ended with its tombstone
    assert len(ttl_tombs) == len(set(ttl_tombs))  # once each
    assert h.proc.timers == 0


def test_a_due_timer_left_by_a_slice_follows_the_events_that_come_before_its_turn() -> None:
    h = Harness(horizon_ms=5000)
    for rid in ("a", "b", "c"):
        h.feed(ev("session", rid, "create", 0))  # all three due at 300
    first = h.fire_some(400, limit=1)
    assert [t[0] for t in first] == [ev("session", "a", "create", 0).identity.key]
    # Before their turn: b slides to 250 + 300 (a touch from before its expiry), c ends.
    assert h.feed(ev("session", "b", "touch", 250)) == []
    assert [t[1] for t in h.feed(ev("session", "c", "delete", 260))] == ["explicit"]
    assert h.fire_some(400, limit=1) == []  # nothing of theirs is due at 400 any more
    assert h.proc.next_due_ms() == BASE + 550
    assert [(t[0][-1], t[3]) for t in h.fire_some(600, limit=1)] == [("b", 550)]


def test_firing_without_a_limit_after_a_slice_takes_everything_due() -> None:
    h = Harness(horizon_ms=5000)
    for rid in ("a", "b", "c"):
        h.feed(ev("error", rid, "create", 0))  # due at 50
    h.feed(ev("error", "d", "create", 100))  # due at 150
    assert [t[0][-1] for t in h.fire_some(200, limit=1)] == ["a"]
    assert [t[0][-1] for t in h.advance(200)] == ["b", "c", "d"]
    assert h.proc.next_due_ms() is None


def test_the_next_due_time_skips_overdue_timers_that_events_took_out() -> None:
    """A slice left four due timers; an event ends the first of those left before its
    turn: the next due time is the one after it, not the ended record's."""
    h = Harness(horizon_ms=5000)
    for i, rid in enumerate("abcd"):
        h.feed(ev("error", rid, "create", i * 10))  # due at 50, 60, 70, 80
    assert [t[0][-1] for t in h.fire_some(100, limit=1)] == ["a"]
    h.feed(ev("error", "b", "delete", 100))
    assert h.proc.next_due_ms() == BASE + 70
    h.feed(ev("error", "c", "delete", 100))
    assert h.proc.next_due_ms() == BASE + 80
    assert [(t[0][-1], t[3]) for t in h.fire_some(100, limit=5)] == [("d", 80)]
    assert h.proc.next_due_ms() is None


def test_an_earlier_create_takes_its_own_times_policy_and_never_extends() -> None:
    """Created at 300 under the later policy (conversation 250: due 550), then a create
    from 100 arrives (the policy then said 1000: 1100): moving the creation back would
    extend the life, so the redelivery changes nothing (it kept 550 under a TTL of 1000,
    and a replay under the same policy then moved the expiry to 1100). An error record
    (never expires from 200 on, 50 before) created at 300, whose create from 100 arrives
    late: under 100's TTL that life ended at 150, before 300, so it is an earlier life's
    create and moves nothing (it took 100's finite TTL, and the record created at 300,
    never to expire, was tombstoned at once as due at 150); one from 260, under its own
    time's policy (never), overlaps it: the earliest creation wins, still never due."""
    h = Harness(horizon_ms=5000, policy=changing_policy)
    h.now = 300
    h.feed(ev("conversation", "c", "create", 300))
    h.feed(ev("error", "e", "create", 300))
    effects = h.process(ev("conversation", "c", "create", 100))
    assert (effects.verdicts, effects.stamps) == ({"redelivered": 1}, [])
    effects = h.process(ev("error", "e", "create", 100))
    assert (effects.verdicts, effects.stamps) == ({"redelivered": 1}, [])
    [(backdated, _)] = h.process(ev("error", "e", "create", 260)).stamps
    assert (backdated.created_at, backdated.expires_at) == (BASE + 260, None)
    assert sorted((t[0][-1], t[3]) for t in h.advance(600)) == [("c", 550)]


def test_a_touch_read_before_its_sessions_create_keeps_its_activity() -> None:
    """One session's events produced to two partitions and re-keyed (``stream-expiry
    rekey``) meet in any order: the touch at 100 starts the life, then the create from 0
    moves its creation back. The touch's activity stays, as when the create comes first
    (due 100 + ttl); the create took the life back to 0 + ttl, before the touch's end."""
    ttl = constant_policy("session", 0)
    assert ttl is not None
    in_order, reordered = Harness(horizon_ms=5000), Harness(horizon_ms=5000)
    for h in (in_order, reordered):
        h.now = 100
    in_order.feed(ev("session", "s", "create", 0))
    in_order.feed(ev("session", "s", "touch", 100))
    reordered.feed(ev("session", "s", "touch", 100))
    [(backdated, _)] = reordered.process(ev("session", "s", "create", 0)).stamps
    assert (backdated.created_at, backdated.expires_at) == (BASE, BASE + 100 + ttl)
    assert [t[3] for t in in_order.advance(10**6)] == [100 + ttl]
    assert [t[3] for t in reordered.advance(10**6)] == [100 + ttl]


@pytest.mark.parametrize("category", ["conversation", "error", "session"])
def test_every_finite_record_gets_exactly_one_tombstone_per_life(category: str) -> None:
    h = Harness()
    for i in range(20):
        h.feed(ev(category, f"r{i}", "create", i * 7))
    fired = h.advance(10**6)
    assert sorted(t[0] for t in fired) == sorted(
        {ev(category, f"r{i}", "create", 0).identity.key for i in range(20)}
    )


def test_a_tombstone_event_rebuilds_the_deleted_state_and_never_an_older_one() -> None:
    from stream_expiry.model import deletion_from_tombstone, encode_tombstone

    ident = Identity("o", "_", "live", "error", "x")
    live = Stamp(ident, 1_000, 2_000, 1_000, "default")
    ttl = deletion_from_tombstone(encode_tombstone(live, reason="ttl", emitted_at=2_005), None)
    assert ttl == live._replace(deleted_at=1_999)  # a touch at the expiry starts a new life
    explicit = deletion_from_tombstone(
        encode_tombstone(live, reason="explicit", emitted_at=1_500), None
    )
    assert explicit is not None
    assert explicit.deleted_at == 1_500
    newer_life = Stamp(ident, 3_000, 4_000, 1_000, "default")
    assert (
        deletion_from_tombstone(encode_tombstone(live, reason="ttl", emitted_at=2_005), newer_life)
        is None
    )
    assert deletion_from_tombstone(b"not json", None) is None


def test_a_delete_older_than_the_record_still_blocks_its_redelivered_create() -> None:
    h = Harness()
    h.now = 100
    h.feed(ev("conversation", "x", "create", 100))
    assert [t[1] for t in h.feed(ev("conversation", "x", "delete", 50))] == ["explicit"]
    h.feed(ev("conversation", "x", "create", 100))  # redelivery of the deleted life: stale
    assert h.advance(10_000) == []
    h.feed(ev("conversation", "x", "create", 10_000))  # a later create: a new life
    assert [t[3] for t in h.advance(11_000)] == [11_000]


def test_a_redelivered_create_of_an_ended_life_does_not_move_the_new_life_back() -> None:
    """Hypothesis found it: the create of a life that expired, redelivered after a new life
    began, was taken for a backdating create of the new life and tombstoned the old
    expiry a second time."""
    h = Harness(horizon_ms=5000)
    first = ev("session", "a", "create", 0)
    h.feed(first)
    assert h.advance(300) == [(first.identity.key, "ttl", 300, 300)]
    h.feed(ev("session", "a", "create", 300))  # a new life: the first ended at 299
    h.feed(first)  # the first life's create, redelivered
    state = h.state(first)
    assert state is not None
    assert (state.created_at, state.expires_at) == (BASE + 300, BASE + 600)
    assert state.previous_deleted_at == BASE + 299
    assert h.advance(10_000) == [(first.identity.key, "ttl", 10_000, 600)]


def test_a_new_life_can_still_be_moved_back_to_just_after_the_deletion() -> None:
    h = Harness(horizon_ms=5000)
    first = ev("conversation", "x", "create", 0)
    h.feed(first)
    h.now = 500
    h.feed(ev("conversation", "x", "delete", 500))
    h.feed(ev("conversation", "x", "create", 800))  # a new life
    h.feed(ev("conversation", "x", "create", 500))  # at the deletion: stale
    h.feed(ev("conversation", "x", "create", 501))  # after it: this life's creation
    h.feed(ev("conversation", "x", "create", 400))  # still at or before the deletion: stale
    state = h.state(first)
    assert state is not None
    assert (state.created_at, state.expires_at) == (BASE + 501, BASE + 1501)
    assert h.advance(10_000) == [(first.identity.key, "ttl", 10_000, 1501)]


# -- the firing's fused path ------------------------------------------------------------

_times = st.one_of(st.none(), st.integers(min_value=0, max_value=2**62))


# Pinned whatever the draw (mutation runs hold hypothesis to 60 examples): a quoted key
# with a plain tail goes the decoding way, not the inline split; a life a create moved
# back keeps its first creation on the tombstone's ``before`` (the message's body); an
# erasure's timer of a record that never expires keeps its expiry None, not _NONE.
@example(
    created=5,
    expires=None,
    ttl=None,
    source=None,
    erase=7,
    offset=None,
    floor=None,
    first=None,
    record_id="r1",
    lives=(),
)
@example(
    created=5,
    expires=9,
    ttl=4,
    source="default",
    erase=None,
    offset=None,
    floor=None,
    first=None,
    record_id="r/1",
    lives=(),
)
@example(
    created=5,
    expires=9,
    ttl=4,
    source="default",
    erase=None,
    offset=None,
    floor=None,
    first=7,
    record_id="r1",
    lives=(),
)
@settings(max_examples=300, deadline=None)
@given(
    created=_times,
    expires=st.integers(min_value=1, max_value=2**62),
    ttl=_times,
    source=st.one_of(st.none(), st.sampled_from(["default", "org", "bot:x", "bot:\u00ff\u00e9"])),
    erase=_times,
    offset=_times,
    floor=_times,
    first=_times,
    record_id=st.sampled_from(["r1", "r/1", "r%1", "r\u00e9"]),
    lives=st.sampled_from([(), ((1, 2, 3, "default", None),), ((None, 5, None, None, 4),)]),
)
def test_a_packed_timer_fires_as_the_stamp_it_packed_would(
    created: int | None,
    expires: int | None,
    ttl: int | None,
    source: str | None,
    erase: int | None,
    offset: int | None,
    floor: int | None,
    first: int | None,
    record_id: str,
    lives: tuple[HeldLife, ...],
) -> None:
    """``_fire_timer`` builds the tombstone straight from the packed fields; it must give
    exactly what unpacking the stamp and firing it gives, erasures included, for a plain
    key (decoded inline) as for a quoted one, and a tail with a previous deletion, held
    lives or a first creation (a life moved back) as for the ttl source alone."""
    identity = Identity("o", "b", "live", "error", record_id)
    stamp = Stamp(
        identity, created, expires, ttl, source, None, erase, False, offset, floor, lives, first
    )
    packed = _pack_timer(stamp)
    fused = _fire_timer(identity.key, packed, 7)
    assert fused == Engine._fire(_unpack_timer(identity.key, packed), "ttl", 7)
    assert fused.before == stamp
    assert fused.before.identity.parts() == identity.parts()
    assert fused.after.identity.parts() == identity.parts()
    assert fused.reason == ("ttl" if erase is None else "explicit")


def _engine_at(now: int) -> Engine[str]:
    return Engine(resolver(constant_policy), SLIDING, now_ms=now, horizon_ms=3_600_000)


def _timers(now: int, dues: list[int], name: str = "r") -> list[tuple[str, int, bytes]]:
    """Stored records' timers, as a store's due index gives them: one record a due time."""
    out = []
    for i, due in enumerate(dues):
        identity = Identity("o", "b", "live", "error", f"{name}{i}")
        found = timer(Stamp(identity, now, due, due - now, "default"))
        assert found is not None
        out.append(found)
    return out


def test_a_first_life_is_created_and_a_life_after_a_tombstone_recreated() -> None:
    """The verdicts the shell counts: a never-seen record's create (or sliding touch)
    starts its first life, ``created``; only a life after a deletion is ``recreated``."""
    engine = _engine_at(BASE)
    first = engine.feed(ev("error", "a", "create", BASE), None, BASE, "p")
    assert (first.verdict, first.publish) == (Verdict.CREATED, True)
    touched = engine.feed(ev("session", "s", "touch", BASE), None, BASE, "p")
    assert touched.verdict == Verdict.CREATED
    assert first.state is not None
    deleted = engine.feed(ev("error", "a", "delete", BASE + 10), first.state, BASE, "p")
    assert deleted.state is not None
    again = engine.feed(ev("error", "a", "create", BASE + 20), deleted.state, BASE, "p")
    assert again.verdict == Verdict.RECREATED


def test_loaded_timers_fire_with_the_slot_they_were_loaded_for() -> None:
    """The shell passes each partition's slot with its timers (the engine is generic in
    it); what fires names that slot, whichever way the timers came in."""
    now = BASE
    engine = _engine_at(now)
    engine.start_horizon(now + 1_000, _timers(now, [now + 100]), "first")
    engine.extend_horizon(now + 2_000, _timers(now, [now + 1_500], "s"), "second")
    fired = engine.advance(now + 2_000)
    assert [(f.before.expires_at, slot) for f, slot in fired] == [
        (now + 100, "first"),
        (now + 1_500, "second"),
    ]


def test_shrinking_the_horizon_drops_the_latest_timers_and_says_how_many() -> None:
    now = BASE
    engine = _engine_at(now)
    dues = [now + 1_000 * (i + 1) for i in range(10)]
    engine.start_horizon(now + 3_600_000, _timers(now, dues), "p")
    assert engine.shrink_horizon(4) == 6
    assert engine.wheel_size == 4
    assert engine.horizon_end == dues[4]  # the first one dropped: loaded again from there
    assert engine.shrink_horizon(4) == 0  # nothing over the limit: nothing dropped
    assert engine.shrink_horizon(10) == 0
    assert engine.horizon_end == dues[4]
    fired = engine.advance(now + 3_600_000)
    assert [f.before.expires_at for f, _ in fired] == dues[:4]


def test_a_held_or_deleted_record_has_no_timer() -> None:
    """``timer`` is what a horizon load takes from the records in flight: a record a
    legal hold keeps must not get one, whatever its due time, nor one already deleted."""
    identity = Identity("o", "b", "live", "error", "r")
    live = Stamp(identity, BASE, BASE + 10, 10, "default")
    assert timer(live) is not None
    assert timer(live._replace(held=True)) is None
    assert timer(live._replace(erase_at=BASE + 5, held=True)) is None
    assert timer(live._replace(deleted_at=BASE + 10)) is None
    assert timer(Stamp(identity, BASE, None, None, None)) is None  # never expires


def test_a_redelivered_delete_does_not_erase_the_next_life() -> None:
    """A create, its delete and a create of the record's next life, decided and then read
    again (a crash before their offsets were committed): the delete belongs to the life it
    ended, so the next life stays. It erased that life, with an explicit tombstone and a
    null, for good (a review)."""
    h = Harness(horizon_ms=5000)
    h.now = 40
    h.feed(ev("conversation", "x", "create", 0))
    key = ev("conversation", "x", "create", 0).identity.key
    assert h.feed(ev("conversation", "x", "delete", 20)) == [(key, "explicit", 40, 1000)]
    h.feed(ev("conversation", "x", "create", 30))
    assert h.feed(ev("conversation", "x", "create", 0)) == []  # read again
    erased = h.feed(ev("conversation", "x", "delete", 20))
    h.feed(ev("conversation", "x", "create", 30))
    state = h.state(ev("conversation", "x", "create", 30))
    assert state is not None
    assert (state.live, state.created_at) == (True, BASE + 30)
    # The erasure goes out again naming no life (the stores have applied it: it deletes
    # nothing newer than the deletion it says), and the running life keeps its timer.
    assert erased == [(key, "explicit", 40, None)]
    assert h.advance(30 + 1000) == [(key, "ttl", 1030, 1030)]


def test_a_clock_stepped_back_fires_no_timer_early() -> None:
    """The wall clock steps back (an NTP step, a VM restored). The wheel's time never
    moves back, and it gave every timer due by the latest time it had seen: a record
    stamped after the step, due between the clock and that time, was fired at once,
    before its expiry (a review). It fires at its expiry; one due by the clock fires now."""
    h = Harness(horizon_ms=100_000)
    h.now = 10_000
    a, b, c = (ev("error", rid, "create", 0) for rid in "abc")
    h.feed(a)
    assert h.advance(10_000) == [(a.identity.key, "ttl", 10_000, 50)]
    h.now = 1_000  # the clock stepped back 9 s
    h.feed(ev("error", "b", "create", 980))  # due at 1,030
    h.feed(c)  # due at 50: already due by the clock
    fired = h.proc.fire_due(BASE + 1_000)
    assert [_tomb(f) for f in fired.tombstones] == [(c.identity.key, "ttl", 1_000, 50)]
    assert h.advance(1_029) == []
    assert h.advance(1_030) == [(b.identity.key, "ttl", 1_030, 1_030)]


def test_a_create_dated_after_the_expiry_and_read_before_it_starts_the_next_life_then() -> None:
    """A producer's clock runs ahead: a create dated after the running life's expiry is
    read before that expiry. It was taken for a re-delivery of the running life's create:
    the next life was never stamped nor tombstoned (a review). It is parked, with the
    record's later events behind it and the partition's settled offset before it; once
    the running life has expired, on time, it starts the next life."""
    h = Harness(horizon_ms=5000)
    a = ev("error", "a", "create", 0)  # TTL 50: expires at 50
    h.feed(a)
    h.now = 45
    parked = h.process(ev("error", "a", "create", 60))  # read at 45
    assert (parked.stamps, parked.tombstones, parked.verdicts["parked"]) == ([], [], 1)
    assert parked.next_offset == h.offset  # settled up to the parked create, not past it
    behind = h.process(ev("error", "a", "touch", 61))  # the record's next event waits too
    other = h.process(ev("error", "b", "create", 45))  # other records go on
    assert (behind.verdicts["parked"], behind.next_offset) == (0, h.offset - 2)
    assert [s.identity.record_id for s, _ in other.stamps] == ["b"]
    assert h.proc.unpark(BASE + 49) is None  # not before the running life's expiry
    fired = h.proc.fire_due(BASE + 50)
    assert [_tomb(f) for f in fired.tombstones] == [(a.identity.key, "ttl", 50, 50)]
    h._settle(fired)
    woken = h.proc.unpark(BASE + 50)
    assert woken is not None
    assert [(s.created_at, s.expires_at) for s, _ in woken.stamps] == [(BASE + 60, BASE + 110)]
    assert woken.next_offset == h.offset + 1  # nothing parked: settled to the end
    h._settle(woken)
    assert h.advance(109) == [(other.stamps[0][0].identity.key, "ttl", 109, 95)]
    assert h.advance(110) == [(a.identity.key, "ttl", 110, 110)]


def _three_overdue(category: str) -> tuple[Harness, tuple[InputEvent, InputEvent, InputEvent]]:
    """Records a, b and c of ``category`` created at 5, 6 and 7 s, all due by the clock's
    10 s: a firing in slices takes them one by one."""
    h = Harness(horizon_ms=100_000)
    h.now = 10_000
    a, b, c = (
        ev(category, rid, "create", ts) for rid, ts in (("a", 5_000), ("b", 6_000), ("c", 7_000))
    )
    for e in (a, b, c):
        h.feed(e)
    return h, (a, b, c)


def test_a_clock_stepped_back_during_a_sliced_firing_fires_no_timer_early() -> None:
    """The firing takes a backlog of due timers in slices (``limit``): those the wheel
    gave up wait among the overdue. The clock steps back meanwhile (the clock that was
    ahead is set right): the ones left were taken out at the time it had read, and fired
    at the next slice with an ``emitted_at`` before their expiry; and they held back a
    record stamped after the step, due before them, past its own expiry."""
    h, (a, b, c) = _three_overdue("error")
    assert h.fire_some(10_000, limit=1) == [(a.identity.key, "ttl", 10_000, 5_050)]
    h.now = 1_000  # the clock stepped back 9 s
    d = ev("error", "d", "create", 980)  # due at 1,030
    h.feed(d)
    assert h.fire_some(1_000, limit=1) == []  # b and c are due at 6,050 and 7,050
    assert h.fire_some(1_030, limit=1) == [(d.identity.key, "ttl", 1_030, 1_030)]
    assert h.fire_some(6_050, limit=5) == [(b.identity.key, "ttl", 6_050, 6_050)]
    assert h.fire_some(7_050, limit=5) == [(c.identity.key, "ttl", 7_050, 7_050)]


def test_a_redelivered_erasure_says_where_the_earlier_lives_ended() -> None:
    """The tombstone of an erasure of the lives before the running one names no life and
    ends at the deletion of the last of them (``expiry-deleted-at``): the stores and the
    archive erase up to there, never the running life created after it."""
    h = Harness(horizon_ms=5000)
    h.now = 40
    h.feed(ev("conversation", "x", "create", 0))
    h.feed(ev("conversation", "x", "delete", 20))
    h.feed(ev("conversation", "x", "create", 30))
    [fired] = h.process(ev("conversation", "x", "delete", 20)).tombstones
    assert (fired.reason, fired.before.created_at, fired.before.erased_until) == (
        "explicit", None, BASE + 20,
    )  # fmt: skip
    assert (fired.after.live, fired.after.created_at) == (True, BASE + 30)


def test_a_timer_due_at_the_clock_stepped_back_to_fires_then() -> None:
    """After the wall clock stepped back, the wheel gives timers due up to the latest time
    it saw; those due after the clock go back into it, and one due exactly at the clock's
    time fires now, neither put back nor lost."""
    h = Harness(horizon_ms=100_000)
    h.now = 10_000
    h.feed(ev("error", "a", "create", 0))
    assert len(h.advance(10_000)) == 1
    h.now = 1_000  # the clock stepped back 9 s
    b, c = ev("error", "b", "create", 950), ev("error", "c", "create", 980)
    h.feed(b)  # due at 1,000: the clock's time
    h.feed(c)  # due at 1,030
    fired = h.proc.fire_due(BASE + 1_000)
    assert [_tomb(f) for f in fired.tombstones] == [(b.identity.key, "ttl", 1_000, 1_000)]
    h._settle(fired)
    assert h.advance(1_030) == [(c.identity.key, "ttl", 1_030, 1_030)]
    assert h.advance(20_000) == []


def test_an_erasure_dated_at_an_ended_lifes_creation_is_that_lifes() -> None:
    """An erasure request at time d erases the life running at d, and a create at d is
    ignored after it (the contract: events with ts <= d): so a request dated exactly at
    the creation of a life its expiry ended first, read late, is that life's erasure, not
    one of the lives before it. It goes out with its null on ``expiry.stamped`` (the
    archive erases the life's data), and the marker remembers it: read again, it changes
    nothing. Taken for the lives before (a bound of ``<=``), it went out with no null, and
    again at every re-delivery."""
    h = Harness(horizon_ms=5000)
    h.now = 40
    h.feed(ev("conversation", "x", "create", 0))
    h.feed(ev("conversation", "x", "delete", 20))
    h.feed(ev("conversation", "x", "create", 30))  # the next life, created at 30
    key = ev("conversation", "x", "create", 30).identity.key
    assert h.advance(1030) == [(key, "ttl", 1030, 1030)]
    [fired] = h.process(ev("conversation", "x", "delete", 30)).tombstones
    assert (fired.reason, fired.has_null) == ("explicit", True)
    assert (fired.after.live, fired.after.erase_at) == (False, BASE + 30)
    assert h.feed(ev("conversation", "x", "delete", 30)) == []  # read again


def test_a_timer_an_event_took_out_of_a_sliced_firing_stays_out_after_a_clock_step() -> None:
    """Overdue timers a sliced firing left (``limit``) go back into the wheel when the
    clock steps back, but only those still to fire: a touch read meanwhile extended one
    session, took its old timer out and scheduled the new one. Put back too, the old
    timer replaced the new one in the wheel and fired the session at its old expiry,
    before the expiry the touch gave it (never early)."""
    h, (a, b, c) = _three_overdue("session")
    assert h.fire_some(10_000, limit=1) == [(a.identity.key, "ttl", 10_000, 5_300)]
    h.now = 1_000  # the clock stepped back 9 s
    assert h.feed(ev("session", "c", "touch", 7_200)) == []  # c now expires at 7,500
    assert h.fire_some(1_000, limit=1) == []
    assert h.fire_some(6_300, limit=5) == [(b.identity.key, "ttl", 6_300, 6_300)]
    assert h.fire_some(7_300, limit=5) == []  # c's old expiry
    assert h.fire_some(7_500, limit=5) == [(c.identity.key, "ttl", 7_500, 7_500)]


def test_a_create_after_an_erasure_both_read_after_the_expiry_starts_the_next_life() -> None:
    """A conversation created at 0 (ttl 1,000: expires at 1,000), an erasure dated 200 and
    a create dated 400, both read after the life's ``ttl`` tombstone went out (a producer's
    late send, a paused reader). Read in time, the erasure ended the first life and the
    create started the next one, stamped and tombstoned at its own expiry (1,400). Read
    late, the erasure still goes out, naming no life, and the create was dropped as stale
    (dated before the first life's deletion, 999): the next life was never stamped nor
    tombstoned (a review). It starts now, with the erasure as its floor: a redelivered
    create of the first life stays stale, and a redelivered erasure erases the lives
    before it only."""
    h = Harness(horizon_ms=5000)
    first = ev("conversation", "x", "create", 0)
    key = first.identity.key
    h.feed(first)
    assert h.advance(1_000) == [(key, "ttl", 1_000, 1_000)]
    h.now = 1_100
    assert h.feed(ev("conversation", "x", "delete", 200)) == [(key, "explicit", 1_100, None)]
    effects = h.process(ev("conversation", "x", "create", 400))
    assert effects.verdicts == {"recreated": 1}
    [(stamp, _)] = effects.stamps
    assert (stamp.created_at, stamp.expires_at) == (BASE + 400, BASE + 1_400)
    assert stamp.previous_deleted_at == BASE + 200
    assert h.process(ev("conversation", "x", "create", 0)).verdicts == {"stale": 1}
    assert h.process(ev("conversation", "x", "create", 200)).verdicts == {"stale": 1}
    [again] = h.process(ev("conversation", "x", "delete", 200)).tombstones
    assert (again.before.created_at, again.before.erased_until) == (None, BASE + 200)
    assert again.after.live  # the running life stays
    h.check_changelog()
    assert h.advance(1_399) == []
    assert h.advance(1_400) == [(key, "ttl", 1_400, 1_400)]
    assert h.advance(10_000) == []


def test_a_late_erasure_dated_at_its_lifes_creation_lets_a_create_after_it_start_a_life() -> None:
    """The boundary of the rule above: an erasure dated at the very creation of the life
    its expiry ended (created 0, erased at 0) is that life's, and a create after it (400)
    starts the next life, as read in time (a mutation check: ``created < erase`` there
    dropped it)."""
    h = Harness(horizon_ms=5000)
    first = ev("conversation", "x", "create", 0)
    h.feed(first)
    assert h.advance(1_000) == [(first.identity.key, "ttl", 1_000, 1_000)]
    h.now = 1_100
    h.feed(ev("conversation", "x", "delete", 0))
    effects = h.process(ev("conversation", "x", "create", 400))
    assert effects.verdicts == {"recreated": 1}
    [(stamp, _)] = effects.stamps
    assert (stamp.created_at, stamp.previous_deleted_at) == (BASE + 400, BASE)


def test_a_touch_or_a_second_erasure_after_a_late_erasure_starts_nothing() -> None:
    """Only a create dated after an erasure read after its life's expiry starts the next
    life: a touch dated before a tombstoned life's expiry changes nothing (the contract),
    and a second erasure dated within that life stays stale. An explicit delete's marker
    (a request dated before the life's creation ends the life at that creation) keeps
    ignoring a create up to its deletion."""
    h = Harness(horizon_ms=5000)
    session = ev("session", "s", "create", 0)  # ttl 300, sliding
    h.feed(session)
    assert len(h.advance(300)) == 1
    h.now = 350
    assert len(h.feed(ev("session", "s", "delete", 100))) == 1
    assert h.process(ev("session", "s", "touch", 200)).verdicts == {"stale": 1}
    assert h.process(ev("session", "s", "delete", 250)).verdicts == {"stale": 1}
    assert h.process(ev("session", "s", "create", 200)).verdicts == {"recreated": 1}
    h.feed(ev("error", "e", "create", 400))  # read at 350: created ahead of the clock
    assert len(h.feed(ev("error", "e", "delete", 380))) == 1  # ends the life at 400
    assert h.process(ev("error", "e", "create", 390)).verdicts == {"stale": 1}
    assert h.process(ev("error", "e", "create", 400)).verdicts == {"stale": 1}


# -- a life's tombstone covers its stamps -------------------------------------------------


class _Recording(Harness):
    """The harness, keeping what goes out on ``expiry.stamped`` and ``expiry.tombstones``
    in the order the outbox writes it (:meth:`Effects.runs`): each stamp, and each
    tombstone with whether the outbox says where its erasure was read on it
    (``expiry-erasure-read-at``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.written: list[Stamp | tuple[Fired, bool]] = []

    def _settle(self, effects: Effects) -> None:
        read = effects.erasures_read
        for stamps, tombstones in effects.runs():
            self.written += [stamp for stamp, _ in stamps]
            self.written += [(fired, _says_erasure_read(fired, read)) for fired in tombstones]
        super()._settle(effects)


def _says_erasure_read(fired: Fired, read: Mapping[str, ErasureRead] | None) -> bool:
    """Whether the outbox puts ``expiry-erasure-read-at`` on ``fired``'s tombstone event
    (``Outbox._send_tombstones``): an erasure's that ends the running life (a null
    follows), carrying the request it was read for, whose marker the effects noted
    (:func:`stream_expiry.outbox._erasure_read_at`)."""
    from stream_expiry.outbox import _erasure_read_at

    return (
        fired.reason == "explicit"
        and not fired.null_only
        and fired.ends_life
        and fired.after.deleted_at is not None
        and bool(read)
        and fired.request is not None
        and _erasure_read_at(fired, read or {}) is not None
    )


def _misjudged(written: list[Stamp | tuple[Fired, bool]]) -> list[tuple[str, int | None, Fired]]:
    """What a store judges wrongly of the stamps, by each tombstone the service wrote (as
    :class:`TombstoneChange` reads it: its ``expiry-deleted-at`` the engine's
    :attr:`Fired.deleted_until`, ``expiry-erasure-requested-at``, ``expiry-erasure-read-at``
    and ``expiry-first-created-at`` as the outbox says them), by
    :func:`ended_by` of its :attr:`TombstoneChange.reach`: a stamp of the life it ends
    that it leaves (``left``: the life's stamps, those written since the record's last
    life ended), or a stamp of a life after it that it ends (``later``), or, for a
    tombstone followed by no null, of the life running when it goes out (``running``:
    an erasure of lives ended already leaves the record's running life), or, for an
    erasure, a stamp of a later life created after every stamp of the erased one that
    it ends once that stamp says no ``previous_deleted_at`` (``forgotten``: the service
    forgets its marker before the stores do)."""
    from stream_expiry import codec
    from stream_expiry.outbox import _first_created_at
    from stream_expiry.sinks._logic import ended_by
    from stream_expiry.sinks._logic import life as life_
    from stream_expiry.sinks._messages import TombstoneChange

    wrong: list[tuple[str, int | None, Fired]] = []
    life: list[Stamp] = []
    for n, item in enumerate(written):
        if isinstance(item, Stamp):
            life.append(item)
            continue
        fired, erasure_read = item
        if fired.null_only:  # its tombstone event went out before: only a null now
            continue
        before = fired.before
        # Followed by no null, an erasure's tombstone says where the lives it ends ended
        # (``before.erased_until``), an expiry's (a held earlier life's) nothing.
        until = (
            fired.deleted_until
            if fired.has_null
            else before.erased_until
            if fired.reason == "explicit"
            else None
        )
        # With expiry-erasure-read-at, expiry-first-created-at as the outbox adds it (a
        # life a create moved back): the end of the erasure's window.
        first = _first_created_at(fired) if erasure_read else ()
        tomb = TombstoneChange(
            before.identity, before.created_at, before.expires_at, fired.emitted_at,
            fired.reason, None, None, until, requested_at=fired.requested,
            erasure_read=erasure_read, first_created_at=codec.first_created_at_of(first),
        )  # fmt: skip
        bound, window = tomb.reach
        later = [s for s in written[n + 1 :] if isinstance(s, Stamp)]
        wrong += [
            ("later", s.created_at, fired)
            for s in later
            if ended_by(s.created_at, s.previous_deleted_at, bound, window)
        ]
        if not fired.has_null:  # ends no running life: the record's stamps stay
            wrong += [
                ("running", s.created_at, fired)
                for s in life
                if ended_by(s.created_at, s.previous_deleted_at, bound, window)
            ]
            continue
        wrong += [
            ("left", s.created_at, fired)
            for s in life
            if not ended_by(s.created_at, s.previous_deleted_at, bound, window)
        ]
        if fired.reason == "explicit" and life:
            # A later life created after every stamp of the erased one, stamped once the
            # service forgot the erasure (its marker pruned a grace after the erased
            # life's expiry; the create, dated before it, read after): no
            # previous_deleted_at. It is live in the service; a store that still keeps
            # the erasure's marker (it prunes after the service) must not end it.
            last = max(life_(s.created_at) for s in life)
            wrong += [
                ("forgotten", s.created_at, fired)
                for s in later
                if s.created_at is not None
                and s.created_at > last
                and ended_by(s.created_at, None, bound, window)
            ]
        life = []
    return wrong


one_record_steps = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.sampled_from(["create", "create", "touch", "delete"]), GRID),
        st.tuples(st.just("advance"), st.integers(0, 14).map(lambda k: k * 50)),
    ),
    max_size=30,
)


@settings(max_examples=600, deadline=None)
@given(
    steps=one_record_steps,
    category=st.sampled_from(["conversation", "session", "error"]),
    policy=st.sampled_from([constant_policy, changing_policy]),
)
# Three creates of a record, each read after the last and dated before it (an error record,
# ttl 50): 100 (due 150), 60 (due 110: it overlaps 100, the life moves back), 20 (due 70:
# it overlaps 60, not 100). Taken, the life ended at 70, before the creation its first
# stamp said, and a store that read that stamp before the tombstone kept its row for the
# null to delete: a receipt of nothing, then a deletion waiting for a tombstone that had
# come (the sweep's second receipt).
@example(
    steps=[
        ("event", "create", 100),
        ("event", "create", 60),
        ("event", "create", 20),
        ("advance", 700),
    ],
    category="error",
    policy=constant_policy,
)
# A life created at 50 (a conversation, ttl 1000), moved back to 0 by a create read late,
# erased at 0: the erasure ends it at max(0, 0), which the first stamp (50) is not before;
# its window (up to that stamp's creation: expiry-first-created-at, beside
# expiry-erasure-read-at) takes that stamp in. Not the erasure's request time (0): a
# window ending there left it.
@example(
    steps=[("event", "create", 50), ("event", "create", 0), ("event", "delete", 0)],
    category="conversation",
    policy=constant_policy,
)
# A conversation (ttl 1000) created at 0, erased at 50, created again at 100: the next
# life's stamp, once the service forgot the erasure, says no previous_deleted_at. The
# erasure's window reached to the erased life's expiry (1000) and ended that life too.
@example(
    steps=[("event", "create", 0), ("event", "delete", 50), ("event", "create", 100)],
    category="conversation",
    policy=constant_policy,
)
# The same of a life that never expires (an error record, after the policy's change): 250,
# moved back to 200, erased at 0 (it ends at 200). Its erasure had no window, and left the
# stamp of 250 to the null: a receipt of nothing, a deletion waiting for a tombstone that
# had come.
@example(
    steps=[("event", "create", 250), ("event", "create", 200), ("event", "delete", 0)],
    category="error",
    policy=changing_policy,
)
def test_a_lifes_tombstone_ends_every_stamp_written_for_it(
    steps: list[tuple[object, ...]],
    category: str,
    policy: Callable[[str, int], int | None],
) -> None:
    """Whatever the order one record's creates, touches and erasures are read in, the
    tombstone that ends a life (``ttl``, or ``explicit`` with the headers the outbox puts
    on it) ends, in the stores, every stamp the service wrote for that life (created
    before its bound, or within its window) and none of a later life's, an erasure of
    lives ended already none of the running life's either, and a ``ttl`` one never goes
    out before its expiry."""
    h = _Recording(horizon_ms=5000, policy=policy)
    now = 0
    for step in steps:
        if step[0] == "advance":
            now += int(step[1])  # type: ignore[call-overload]
            for _, reason, emitted, expires in h.advance(now):
                assert reason != "ttl" or (expires is not None and emitted >= expires)
        else:
            _, op, dt = step
            h.feed(ev(category, "a", str(op), max(0, now + int(dt))))  # type: ignore[call-overload]
    h.advance(now + 10**7)
    assert _misjudged(h.written) == []

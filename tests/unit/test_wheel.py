"""The timing wheel: edge cases, and a rule-based comparison with a dict-and-sort reference."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from stream_expiry.wheel import TimingWheel

Fired = list[tuple[int, str, int]]

YEAR_MS = 365 * 24 * 3600 * 1000


def make(
    tick_ms: int = 10, *, slots: int = 256, levels: int | None = None, start_ms: int = 0
) -> TimingWheel[str, int]:
    return TimingWheel(tick_ms=tick_ms, slots=slots, levels=levels, start_ms=start_ms)


@pytest.fixture(params=[1, 10], ids=["tick1", "tick10"])
def tick(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


def checked_advance(wheel: TimingWheel[str, int], now_ms: int) -> Fired:
    fired = wheel.advance(now_ms)
    wheel._check_invariants()
    return fired


# -- construction and queries ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"tick_ms": 0}, {"slots": 3}, {"slots": 1}, {"slots": 100}, {"levels": 0}],
)
def test_rejects_bad_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        TimingWheel(**kwargs)


def test_empty_wheel() -> None:
    wheel = make(start_ms=1234)
    assert len(wheel) == 0
    assert wheel.next_due_ms() is None
    assert wheel.now_ms == 1234
    assert wheel.advance(10**9) == []
    assert wheel.now_ms == 10**9
    assert "x" not in wheel
    assert wheel.due_of("x") is None
    assert [] not in wheel  # unhashable: not a key, no TypeError


def test_queries_track_schedule_and_cancel() -> None:
    wheel = make()
    wheel.schedule("a", 500, 1)
    wheel.schedule("b", 300, 2)
    assert len(wheel) == 2
    assert "a" in wheel
    assert wheel.due_of("a") == 500
    assert wheel.next_due_ms() == 300
    assert wheel.cancel("b") is True
    assert wheel.cancel("b") is False
    assert wheel.cancel("never") is False
    assert wheel.next_due_ms() == 500
    assert "b" not in wheel
    assert len(wheel) == 1
    wheel._check_invariants()


# -- firing times ----------------------------------------------------------------------------


def test_due_in_the_past_fires_at_next_advance(tick: int) -> None:
    wheel = make(tick, start_ms=10_000)
    wheel.schedule("old", 5, 1)
    wheel.schedule("older", -7_000, 2)
    assert wheel.next_due_ms() == -7_000
    # Even an advance to an earlier time returns them: the clock stays at its high-water mark.
    assert checked_advance(wheel, 0) == [(-7_000, "older", 2), (5, "old", 1)]
    assert wheel.now_ms == 10_000
    assert len(wheel) == 0


def test_due_equal_to_now_fires_at_next_advance(tick: int) -> None:
    wheel = make(tick, start_ms=1_000)
    checked_advance(wheel, 2_005)
    wheel.schedule("k", 2_005, 7)
    assert checked_advance(wheel, 2_005) == [(2_005, "k", 7)]


def test_never_early_within_a_tick(tick: int) -> None:
    wheel = make(tick)
    for due in range(100, 120):
        wheel.schedule(f"k{due}", due, due)
    for now in range(95, 125):
        fired = checked_advance(wheel, now)
        assert all(due <= now for due, _, _ in fired)
        if 100 <= now < 120:
            assert [due for due, _, _ in fired] == [now]
    assert len(wheel) == 0


def test_exact_millisecond_with_coarse_tick() -> None:
    wheel = make(tick_ms=1_000)
    wheel.schedule("a", 1_999, 1)
    wheel.schedule("b", 1_500, 2)
    assert checked_advance(wheel, 1_499) == []
    assert checked_advance(wheel, 1_500) == [(1_500, "b", 2)]
    assert checked_advance(wheel, 1_998) == []
    assert checked_advance(wheel, 1_999) == [(1_999, "a", 1)]


def test_same_due_many_keys_fire_in_insertion_order(tick: int) -> None:
    wheel = make(tick)
    keys = [f"k{i}" for i in range(500)]
    random.Random(1).shuffle(keys)
    for i, key in enumerate(keys):
        wheel.schedule(key, 70_000, i)
    assert checked_advance(wheel, 69_999) == []
    fired = checked_advance(wheel, 70_000)
    assert [key for _, key, _ in fired] == keys
    assert [value for _, _, value in fired] == list(range(500))


def test_insertion_order_survives_cascades_from_different_levels() -> None:
    # Same due time, scheduled from far away (high level) and then from close by (level 0).
    wheel = make(tick_ms=1, slots=4)
    wheel.schedule("far", 1_000, 1)
    checked_advance(wheel, 990)
    wheel.schedule("near", 1_000, 2)
    checked_advance(wheel, 999)
    wheel.schedule("nearer", 1_000, 3)
    assert checked_advance(wheel, 1_000) == [
        (1_000, "far", 1),
        (1_000, "near", 2),
        (1_000, "nearer", 3),
    ]


def test_a_phase_moves_the_cascade_not_what_fires() -> None:
    """Two wheels made in the same tick with different phases cascade their level-1
    buckets at different ticks (the service's partitions: not all in one firing), and
    fire the same timers at the same times."""
    wheels: list[TimingWheel[str, int]] = [
        TimingWheel(tick_ms=10, start_ms=0, phase=p) for p in (0, 100)
    ]
    for wheel in wheels:
        for i in range(4_000):
            wheel.schedule(f"k{i}", 2_000 + i, i)
    cascaded_at: list[list[int]] = [[], []]
    for now in range(0, 6_000, 10):
        fired = []
        for n, wheel in enumerate(wheels):
            level1 = sum(len(b) for b in wheel._buckets[1])
            fired.append(checked_advance(wheel, now))
            if sum(len(b) for b in wheel._buckets[1]) < level1:
                cascaded_at[n].append(now)
        assert fired[0] == fired[1]
    assert cascaded_at[0] == [2_560, 5_120]
    assert cascaded_at[1] == [1_560, 4_120]


def test_advance_to_the_first_tick_of_the_next_block() -> None:
    # Level 0 holds tick 1; level 1 holds ticks 4 and 6; advancing to exactly tick 4 must fire
    # level 0 and then cascade level 1's bucket that starts at 4.
    wheel = make(tick_ms=1, slots=4)
    wheel.schedule("a", 1, 1)
    wheel.schedule("b", 4, 2)
    wheel.schedule("c", 6, 3)
    assert checked_advance(wheel, 4) == [(1, "a", 1), (4, "b", 2)]
    assert wheel.next_due_ms() == 6
    assert checked_advance(wheel, 6) == [(6, "c", 3)]


def test_batch_is_sorted_by_due_then_insertion(tick: int) -> None:
    rng = random.Random(7)
    wheel = make(tick, slots=16)
    expected = []
    for i in range(3_000):
        due = rng.randrange(0, 200_000)
        wheel.schedule(f"k{i}", due, i)
        expected.append((due, f"k{i}", i))
    expected.sort(key=lambda e: e[0])  # stable: insertion order within a due time
    assert checked_advance(wheel, 200_000) == expected


# -- rescheduling and cancelling -------------------------------------------------------------


def test_reschedule_earlier_fires_once_at_new_time(tick: int) -> None:
    wheel = make(tick)
    wheel.schedule("k", 50_000, 1)
    wheel.schedule("k", 2_000, 2)
    assert wheel.next_due_ms() == 2_000
    assert checked_advance(wheel, 2_000) == [(2_000, "k", 2)]
    assert checked_advance(wheel, 100_000) == []


def test_reschedule_later_old_never_fires(tick: int) -> None:
    wheel = make(tick)
    wheel.schedule("k", 2_000, 1)
    wheel.schedule("k", 50_000, 2)
    assert wheel.next_due_ms() == 50_000
    assert checked_advance(wheel, 49_999) == []
    assert checked_advance(wheel, 50_000) == [(50_000, "k", 2)]


def test_reschedule_same_due_moves_to_back_of_the_line() -> None:
    wheel = make()
    wheel.schedule("a", 100, 1)
    wheel.schedule("b", 100, 2)
    wheel.schedule("a", 100, 3)
    assert checked_advance(wheel, 100) == [(100, "b", 2), (100, "a", 3)]


def test_cancel_then_reschedule(tick: int) -> None:
    wheel = make(tick)
    wheel.schedule("k", 1_000, 1)
    assert wheel.cancel("k")
    assert checked_advance(wheel, 1_000) == []
    wheel.schedule("k", 1_500, 2)
    assert wheel.cancel("k")
    wheel.schedule("k", 1_500, 3)
    assert checked_advance(wheel, 2_000) == [(1_500, "k", 3)]


def test_cancel_everything_prunes_stale_entries() -> None:
    wheel = make(tick_ms=1, slots=8)
    wheel._prune_min = 8
    for i in range(2_000):
        wheel.schedule(f"k{i}", 10 + i * 37, i)
    for i in range(0, 2_000, 2):
        wheel.cancel(f"k{i}")
    for i in range(1, 2_000, 2):
        wheel.schedule(f"k{i}", 10 + i * 41, i)  # replaced: the old entry goes stale
    wheel._check_invariants()
    assert wheel._stale <= max(len(wheel), wheel._prune_min)
    fired = checked_advance(wheel, 10**9)
    assert fired == [(10 + i * 41, f"k{i}", i) for i in range(1, 2_000, 2)]


def test_a_prune_keeps_the_live_timers_waiting_in_the_overflow() -> None:
    """With fixed levels, timers beyond the wheel's span wait in the overflow heap; a prune
    (more cancelled entries than live ones) must drop only the cancelled ones there too."""
    wheel = make(tick_ms=1, slots=4, levels=1)  # 4 ticks in the wheel
    wheel._prune_min = 0
    wheel.schedule("far", 1_000, 1)  # overflow
    wheel.schedule("gone", 2_000, 2)  # overflow, cancelled below
    for i in range(3):
        wheel.schedule(f"near{i}", 1 + i, 10 + i)
    for key in ("gone", "near0", "near1"):  # 3 cancelled > 2 live ("far", "near2"): prune
        assert wheel.cancel(key)
    wheel._check_invariants()
    assert wheel._stale == 0  # pruned
    assert wheel.next_due_ms() == 3
    assert checked_advance(wheel, 5_000) == [(3, "near2", 12), (1_000, "far", 1)]


def test_a_cancelled_timer_behind_a_live_one_in_the_overflow_never_fires() -> None:
    """The overflow's live head brings its top-level block into the wheel, and with it a
    cancelled timer of that block queued behind it: dropped there and counted as dropped,
    never placed in the wheel (where, uncounted, a whole bucket fired it)."""
    wheel = make(tick_ms=1, slots=4, levels=1)  # 4 ticks in the wheel
    wheel.schedule("live", 20, 1)  # overflow
    wheel.schedule("gone", 21, 2)  # overflow, behind "live"
    assert wheel.cancel("gone")
    assert checked_advance(wheel, 25) == [(20, "live", 1)]
    assert checked_advance(wheel, 10_000) == []
    assert len(wheel) == 0


def test_timers_due_alike_keep_their_order_through_the_overflow() -> None:
    """Invariant 3 beyond the levels too: timers with one due time that waited in the
    overflow fire in the order they were scheduled, not in the order of their keys."""
    wheel = make(tick_ms=1, slots=4, levels=1)  # 4 ticks in the wheel
    for key in ("c", "a", "b"):
        wheel.schedule(key, 1_000, ord(key))  # overflow
    assert checked_advance(wheel, 1_000) == [(1_000, "c", 99), (1_000, "a", 97), (1_000, "b", 98)]


def test_an_overflow_timer_moves_in_when_time_enters_its_block_without_firing() -> None:
    """An advance that enters the top-level block of a timer waiting in the overflow moves
    it into the wheel even when nothing fires on the way: a timer scheduled next in that
    block, and due after it, must not keep it from firing on time."""
    wheel = make(tick_ms=1, slots=4, levels=1)  # top-level blocks of 4 ticks
    assert checked_advance(wheel, 1) == []
    wheel.schedule("waits", 17, 1)  # overflow: block 4
    assert checked_advance(wheel, 16) == []  # block 4 entered, "waits" not due yet
    wheel.schedule("next", 18, 2)
    assert checked_advance(wheel, 17) == [(17, "waits", 1)]
    assert checked_advance(wheel, 18) == [(18, "next", 2)]


def test_a_prune_keeps_the_overflow_in_due_order() -> None:
    """A prune rebuilds the overflow heap from its live timers: the list filtered is no
    heap, and a timer left behind a later one waited for it (fired 16 ms late)."""
    wheel = make(tick_ms=1, slots=4, levels=1)  # 4 ticks in the wheel: all overflow
    wheel._prune_min = 0
    for i, due in enumerate([53, 31, 7, 21, 37, 36]):
        wheel.schedule(f"k{i}", due, i)
    for i in (3, 2, 5, 1):  # 4 cancelled > 2 live: prune
        assert wheel.cancel(f"k{i}")
    assert wheel._stale == 0
    fired = [(now, checked_advance(wheel, now)) for now in range(60)]
    assert [(now, f) for now, f in fired if f] == [(37, [(37, "k4", 4)]), (53, [(53, "k0", 0)])]


def test_next_due_is_exact_after_cancelling_the_earliest() -> None:
    wheel = make(tick_ms=10)
    wheel.schedule("a", 3_600_000, 1)
    wheel.schedule("b", 3_600_007, 2)
    wheel.schedule("c", 3_599_999, 3)
    assert wheel.next_due_ms() == 3_599_999
    wheel.cancel("c")
    assert wheel.next_due_ms() == 3_600_000
    wheel.cancel("a")
    assert wheel.next_due_ms() == 3_600_007
    wheel.cancel("b")
    assert wheel.next_due_ms() is None


def test_next_due_does_not_rescan_a_far_bucket() -> None:
    wheel = make(tick_ms=10)
    for i in range(20_000):  # one level-2 bucket, ~33 minutes away
        wheel.schedule(f"far{i}", 2_000_000 + i, i)
    assert wheel.next_due_ms() == 2_000_000
    memo = None
    for j in range(100):  # near timers come and go in front of it
        due = wheel.now_ms + 5
        wheel.schedule("near", due, j)
        assert wheel.next_due_ms() == due
        assert wheel.advance(due) == [(due, "near", j)]
        assert wheel.next_due_ms() == 2_000_000  # scanned once, then remembered
        memo = memo or wheel._memo_bucket
        assert memo is not None
        assert wheel._memo_bucket is memo
    wheel.schedule("earlier", 1_999_999, -1)  # lands in the same bucket
    assert wheel.next_due_ms() == 1_999_999
    wheel.cancel("earlier")
    wheel.cancel("far0")
    assert wheel.next_due_ms() == 2_000_001
    wheel._check_invariants()


# -- time ------------------------------------------------------------------------------------


def test_advance_backwards_is_a_no_op(tick: int) -> None:
    wheel = make(tick)
    wheel.schedule("a", 5_000, 1)
    assert checked_advance(wheel, 4_000) == []
    assert checked_advance(wheel, 1_000) == []
    assert wheel.now_ms == 4_000
    assert checked_advance(wheel, 4_999) == []
    assert checked_advance(wheel, 5_000) == [(5_000, "a", 1)]


def test_huge_gaps_jump_over_empty_ticks(tick: int) -> None:
    wheel = make(tick)
    dues = [YEAR_MS, 10 * YEAR_MS, 10 * YEAR_MS + 1, 1_000 * YEAR_MS]
    for i, due in enumerate(dues):
        wheel.schedule(f"k{i}", due, i)
    started = time.perf_counter()
    assert checked_advance(wheel, YEAR_MS - 1) == []
    assert wheel.next_due_ms() == YEAR_MS
    assert checked_advance(wheel, YEAR_MS) == [(YEAR_MS, "k0", 0)]
    assert wheel.next_due_ms() == 10 * YEAR_MS
    assert checked_advance(wheel, 10 * YEAR_MS) == [(10 * YEAR_MS, "k1", 1)]
    assert checked_advance(wheel, 10**18) == [
        (10 * YEAR_MS + 1, "k2", 2),
        (1_000 * YEAR_MS, "k3", 3),
    ]
    assert time.perf_counter() - started < 1.0  # a tick-by-tick walk would take ages


def test_huge_gap_with_a_dense_near_future() -> None:
    wheel = make(tick_ms=1, slots=64)
    for i in range(1_000):
        wheel.schedule(f"n{i}", 1_000 + i, i)
    wheel.schedule("far", 50 * YEAR_MS, -1)
    fired = checked_advance(wheel, 20 * YEAR_MS)
    assert [due for due, _, _ in fired] == list(range(1_000, 2_000))
    assert wheel.next_due_ms() == 50 * YEAR_MS


def test_negative_and_epoch_times(tick: int) -> None:
    start = -3 * YEAR_MS - 3  # before the epoch, not on a tick boundary
    wheel = make(tick, start_ms=start)
    wheel.schedule("before", start - 1, 1)
    wheel.schedule("epoch", 0, 2)
    wheel.schedule("neg", -5, 3)
    wheel.schedule("soon", start + 1, 4)
    assert checked_advance(wheel, start) == [(start - 1, "before", 1)]
    assert checked_advance(wheel, start + 1) == [(start + 1, "soon", 4)]
    assert checked_advance(wheel, -6) == []
    assert checked_advance(wheel, -5) == [(-5, "neg", 3)]
    assert checked_advance(wheel, -1) == []
    assert checked_advance(wheel, 0) == [(0, "epoch", 2)]


def test_fixed_levels_use_the_overflow() -> None:
    wheel = make(tick_ms=1, slots=4, levels=2)  # 16 ticks in the wheel
    dues = [3, 15, 16, 17, 100, 1_000, 1_000, 5]
    for i, due in enumerate(dues):
        wheel.schedule(f"k{i}", due, i)
    assert wheel._overflow
    wheel._check_invariants()
    assert wheel.next_due_ms() == 3
    wheel.cancel("k5")
    out: Fired = []
    for now in range(0, 1_100, 7):
        out += checked_advance(wheel, now)
    assert out == [
        (3, "k0", 0),
        (5, "k7", 7),
        (15, "k1", 1),
        (16, "k2", 2),
        (17, "k3", 3),
        (100, "k4", 4),
        (1_000, "k6", 6),
    ]


def test_steady_state_stream(tick: int) -> None:
    """Schedule as time goes, as the engine does: a ttl after each event."""
    rng = random.Random(3)
    wheel = make(tick, slots=32)
    pending: dict[str, int] = {}
    now = 0
    for step in range(2_000):
        now += rng.randrange(0, 50)
        key = f"k{rng.randrange(300)}"
        due = now + rng.choice([0, 1, 9, 10, 11, 999, 1_000, 60_000])
        wheel.schedule(key, due, step)
        pending[key] = due
        for due_ms, fired_key, _ in wheel.advance(now):
            assert due_ms <= now
            assert pending.pop(fired_key) == due_ms
        assert all(d > now for d in pending.values())
    wheel._check_invariants()


# -- against a reference model ---------------------------------------------------------------

keys = st.sampled_from([f"k{i}" for i in range(12)])
offsets = st.one_of(
    st.integers(-30, 30),
    st.integers(-2_000, 5_000),
    st.integers(0, 10**6),
    st.integers(0, 10**12),
    st.integers(-(10**12), 0),
)


class WheelMachine(RuleBasedStateMachine):
    """The wheel against a dict key -> (due, seq, value) sorted at each advance."""

    def __init__(self) -> None:
        super().__init__()
        self.wheel: TimingWheel[str, int] = TimingWheel()
        self.ref: dict[str, tuple[int, int, int]] = {}
        self.now = 0
        self.seq = 0

    @initialize(
        tick_ms=st.sampled_from([1, 3, 10, 1000]),
        slots=st.sampled_from([2, 4, 8, 256]),
        levels=st.sampled_from([None, 1, 2, 3]),
        start_ms=st.one_of(st.just(0), st.integers(-(10**13), 10**13)),
        prune_min=st.sampled_from([0, 2, 1024]),
        phase=st.one_of(st.just(0), st.integers(0, 10**6)),
    )
    def setup(
        self,
        tick_ms: int,
        slots: int,
        levels: int | None,
        start_ms: int,
        prune_min: int,
        phase: int,
    ) -> None:
        self.wheel = TimingWheel(
            tick_ms=tick_ms, slots=slots, levels=levels, start_ms=start_ms, phase=phase
        )
        self.wheel._prune_min = prune_min
        self.now = start_ms

    @rule(key=keys, offset=offsets)
    def schedule(self, key: str, offset: int) -> None:
        self.seq += 1
        due = self.now + offset
        self.wheel.schedule(key, due, self.seq)
        self.ref[key] = (due, self.seq, self.seq)

    @rule(key=keys, offset=st.integers(0, 20), count=st.integers(2, 6))
    def schedule_same_due(self, key: str, offset: int, count: int) -> None:
        due = self.now + offset
        for i in range(count):
            self.schedule(f"{key}-{i}", offset)
            assert self.ref[f"{key}-{i}"][0] == due

    @rule(key=keys)
    def cancel(self, key: str) -> None:
        assert self.wheel.cancel(key) is (self.ref.pop(key, None) is not None)

    @rule(later=st.booleans(), offset=offsets)
    def cancel_or_move_earliest(self, later: bool, offset: int) -> None:
        if not self.ref:
            return
        key = min(self.ref, key=lambda k: self.ref[k][:2])
        if later:
            self.schedule(key, abs(offset) + (self.ref[key][0] - self.now) + 1)
        else:
            self.cancel(key)

    @rule(keep=st.integers(0, 14))
    def keep_earliest(self, keep: int) -> None:
        cutoff = self.wheel.keep_earliest(keep)
        dues = sorted(due for due, _, _ in self.ref.values())
        # kept whatever their number: due by now, or at the earliest due time's millisecond
        kept_anyway = [d for d in dues if d <= max(dues[0], self.now)] if dues else []
        if cutoff is None:
            assert len(dues) <= max(keep, len(kept_anyway))
            return
        self.ref = {k: entry for k, entry in self.ref.items() if entry[0] < cutoff}
        left = sorted(due for due, _, _ in self.ref.values())
        assert left == dues[: len(left)]  # the earliest
        # the latest cutoff that leaves at most ``keep`` besides those kept anyway
        assert cutoff == dues[max(keep, len(kept_anyway))] > left[-1]

    @rule(offset=offsets)
    def advance(self, offset: int) -> None:
        self.do_advance(self.now + offset)

    @rule()
    def advance_to_next_due(self) -> None:
        due = self.wheel.next_due_ms()
        if due is not None:
            self.do_advance(due)

    @rule(offset=st.integers(-3, 3))
    def advance_near_next_due(self, offset: int) -> None:
        due = self.wheel.next_due_ms()
        if due is not None:
            self.do_advance(due + offset)

    def do_advance(self, now: int) -> None:
        self.now = max(self.now, now)
        expected = sorted(
            (
                (due, seq, key, value)
                for key, (due, seq, value) in self.ref.items()
                if due <= self.now
            ),
        )
        for _, _, key, _ in expected:
            del self.ref[key]
        assert self.wheel.advance(now) == [(d, k, v) for d, _, k, v in expected]
        assert self.wheel.now_ms == self.now

    @invariant()
    def agrees(self) -> None:
        wheel = self.wheel
        wheel._check_invariants()
        assert len(wheel) == len(self.ref)
        assert wheel.next_due_ms() == min((d for d, _, _ in self.ref.values()), default=None)
        for key in ("k0", "k5", "k11-0"):
            entry = self.ref.get(key)
            assert wheel.due_of(key) == (None if entry is None else entry[0])
            assert (key in wheel) is (entry is not None)


WheelMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestWheelAgainstReference = WheelMachine.TestCase

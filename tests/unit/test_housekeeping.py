"""The loop's housekeeping (``stream_expiry.housekeeping``): horizons and markers within one
budget a turn, shared by the partitions in turn."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream_expiry.housekeeping import BUDGET, MOST, RATE, Tidying, budget_for
from stream_expiry.model import Identity, Stamp
from stream_expiry.policy import Resolution
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

if TYPE_CHECKING:
    from collections.abc import Callable

T0 = 1_800_000_000_000
HOUR = 3_600_000
GRACE = 1_000


def _resolve(identity: Identity, at_ms: int) -> Resolution:
    return Resolution(HOUR, "default")


def _partition(n: int, fill: Callable[[PartitionStore, int], None]) -> PartitionProcessor:
    store = PartitionStore(MemoryKV(), grace_ms=GRACE)
    fill(store, n)
    return PartitionProcessor(
        "in",
        n,
        store,
        resolve=_resolve,
        sliding=frozenset(),
        categories=frozenset({"conversation"}),
        max_skew_ms=10**12,
        now_ms=T0,
    )


def _stamps(partition: int, count: int, expires: int, tag: str = "") -> list[Stamp]:
    """``count`` records due a millisecond apart from ``expires``."""
    return [
        Stamp(
            Identity("o", "_", "live", "conversation", f"p{partition}-{tag}{i}"),
            T0,
            expires + i,
            HOUR,
            "default",
        )
        for i in range(count)
    ]


def _markers(store: PartitionStore, partition: int) -> None:
    """3,000 records deleted at T0: their markers are due by T0 + 1 + GRACE."""
    lives = _stamps(partition, 3_000, T0 - 10_000)  # expired: the grace runs from T0
    store.write([(None, s) for s in lives], now_ms=T0)
    store.write([(s, s._replace(deleted_at=T0)) for s in lives], now_ms=T0)


def test_a_backlog_of_markers_is_pruned_a_budget_a_turn_over_every_store() -> None:
    """12 stores with 3,000 markers due each: a turn prunes 1,000 at most in all (each
    store took up to 20,000 a turn: 125 ms a store on RocksDB), every store gets its turn,
    and the backlog clears."""
    procs = [_partition(n, _markers) for n in range(12)]
    tidy = Tidying()
    now = T0 + 1 + GRACE
    turns, touched = 0, set()
    while True:
        before = [p.store.counts.markers for p in procs]
        loaded, pruned = tidy.turn(procs, now, prune=turns == 0, budget=1_000)
        after = [p.store.counts.markers for p in procs]
        assert loaded == 0
        assert pruned == sum(before) - sum(after) <= 1_000
        touched |= {i for i, (b, a) in enumerate(zip(before, after, strict=True)) if a < b}
        turns += 1
        if not tidy.pruning:
            break
        assert turns < 100
    assert sum(p.store.counts.markers for p in procs) == 0
    assert touched == set(range(12))
    assert turns >= 36  # 36,000 markers, 1,000 a turn


def _due_next_hour(store: PartitionStore, partition: int) -> None:
    """3,000 records due past the first horizon, within the next one."""
    store.write([(None, s) for s in _stamps(partition, 3_000, T0 + HOUR + 60_000)], now_ms=T0)


def test_horizons_are_loaded_a_budget_a_turn_and_then_markers_with_what_is_left() -> None:
    procs = [_partition(n, _due_next_hour) for n in range(6)]
    tidy = Tidying()
    now = T0 + 30 * 60_000  # a quarter of the horizon used and more: load the next slice
    loaded, pruned = tidy.turn(procs, now, prune=True, budget=2_500)
    assert (loaded, pruned) == (2_500, 0)
    total = loaded
    while total < 18_000:
        loaded, _ = tidy.turn(procs, now, prune=False, budget=2_500)
        assert 0 < loaded <= 2_500
        total += loaded
    assert sum(p.timers for p in procs) == 18_000
    assert tidy.turn(procs, now, prune=False, budget=2_500) == (0, 0)


def _due_and_deleted(store: PartitionStore, partition: int) -> None:
    """Both at once, as under steady load: 3,000 timers to load and 3,000 markers due."""
    _due_next_hour(store, partition)
    lives = _stamps(partition, 3_000, T0 - 10_000, tag="gone-")
    store.write([(None, s) for s in lives], now_ms=T0)
    store.write([(s, s._replace(deleted_at=T0)) for s in lives], now_ms=T0)


def test_markers_due_get_half_the_budget_while_horizons_load() -> None:
    """Round 48's soak (5,000 events/s in and out): the loads went first and took every
    turn's whole budget, and markers were pruned at less than half the rate they fell due.
    Now the loads take half first while markers are due, the markers the other half; once
    the markers are gone the loads get the whole budget again."""
    procs = [_partition(n, _due_and_deleted) for n in range(6)]
    tidy = Tidying()
    now = T0 + 30 * 60_000  # past the markers' grace, and the next horizon to load
    loaded, pruned = tidy.turn(procs, now, prune=True, budget=2_000)
    assert (loaded, pruned) == (1_000, 1_000)
    assert tidy.pruning
    markers, timers = 1_000, 1_000
    while tidy.pruning:
        loaded, pruned = tidy.turn(procs, now, prune=False, budget=2_000)
        assert loaded + pruned <= 2_000
        assert pruned >= 1_000 or not tidy.pruning
        markers, timers = markers + pruned, timers + loaded
    assert markers == 18_000
    assert sum(p.store.counts.markers for p in procs) == 0
    while timers < 18_000:  # the horizons alone again: the whole budget a turn
        loaded, pruned = tidy.turn(procs, now, prune=False, budget=2_000)
        assert (loaded, pruned) == (min(2_000, 18_000 - timers), 0)
        timers += loaded
    assert sum(p.timers for p in procs) == 18_000


def test_markers_left_below_their_half_leave_the_rest_to_the_horizons() -> None:
    procs = [_partition(n, _due_next_hour) for n in range(6)]
    for proc in procs:  # one marker due in each store
        life = _stamps(proc.partition, 1, T0 - 10_000, tag="gone-")[0]
        proc.store.write([(None, life)], now_ms=T0)
        proc.store.write([(life, life._replace(deleted_at=T0))], now_ms=T0)
    loaded, pruned = Tidying().turn(procs, T0 + 30 * 60_000, prune=True, budget=2_000)
    assert pruned == 6
    assert loaded == 2_000 - 6  # the six markers' share, the rest loaded


def test_a_turns_budget_follows_the_time_since_the_last() -> None:
    """A loop turning five times a second or more gets BUDGET a turn; one slowed by its
    input gets RATE a second since its last turn, up to MOST (what a timer may wait)."""
    assert budget_for(0.0) == budget_for(0.2) == BUDGET
    assert BUDGET < budget_for(0.3) == int(0.3 * RATE) < MOST
    assert budget_for(0.5) == budget_for(60.0) == MOST

"""The loop's housekeeping: horizons loaded and deletion markers pruned, within a budget a
turn shared by the partitions in turn.

Each store pruned up to 20,000 markers a turn, and each partition loaded its horizon's
next slice, one after the other in the loop: a backlog of markers (a mass deletion a grace
ago: an org offboarded, say) cost 6 us a marker, 125 ms a store, 1.5 s a turn over 12
stores, every turn, with no tombstone and no input decided meanwhile. A turn now does at
most ``BUDGET`` of both together, starting each turn one partition further on so that
every partition gets its turn; the loop turns often (at least five times a second), so a
backlog still clears at 15,000 a second or more, and a timer due meanwhile waits for one
slice, not for the backlog.

Under steady load it did not (round 48's 30-minute soak, 5,000 events/s in and 5,000
tombstones/s out): the horizons' loads went first and took the whole budget (a partition's
wheel holds 20,000 timers, so the pending records beyond them were loaded as fast as they
fell due; py-spy over 20 s found every housekeeping sample in a load, none in a prune), the
loop turned too seldom for what was left, and markers were pruned at ~2,200 a second of
the 5,000 that fell due: the stores grew by ~2,800 markers a second for the whole run. So a turn's budget now follows the time since the last turn
(:func:`budget_for`: ``RATE`` a second, from ``BUDGET`` up to ``MOST``), and while markers
are due the loads take at most half of it first, the markers what they leave, and the loads
again whatever the markers did not use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stream_expiry.state import PartitionProcessor

__all__ = ["BUDGET", "MOST", "RATE", "Tidying", "budget_for"]

BUDGET = 3_000  # timers loaded and markers pruned in one turn, over every partition (~20-30 ms)
RATE = 5 * BUDGET  # a second's worth: a loop that turns five times a second or more gets BUDGET
MOST = 2 * BUDGET  # after a long turn (~40-60 ms of work): what a due timer may wait behind


def budget_for(elapsed_s: float) -> int:
    """A turn's budget, ``elapsed_s`` seconds after the last turn's housekeeping: ``RATE`` a
    second, at least ``BUDGET`` and at most ``MOST``. A loop slowed by its input (a batch
    of 5,000 events takes a few hundred milliseconds to decide) turns less often, and with a
    fixed budget a turn its housekeeping fell behind what the same input makes due."""
    return max(BUDGET, min(MOST, int(elapsed_s * RATE)))


@dataclass
class Tidying:
    """Where the next turn starts, and whether markers were left due."""

    start: int = 0
    pruning: bool = False  # the last prune used its whole budget: markers are left due

    def turn(
        self,
        processors: Sequence[PartitionProcessor],
        now_ms: int,
        *,
        prune: bool,
        budget: int = BUDGET,
    ) -> tuple[int, int]:
        """One turn's housekeeping over ``processors``: horizons first, then markers when
        ``prune`` (or markers were left due); returns the timers loaded and the markers
        pruned."""
        n = len(processors)
        if not n:
            return 0, 0
        first = self.start % n
        order = [*processors[first:], *processors[:first]]
        self.start = first + 1
        if not (prune or self.pruning):
            return _load(order, now_ms, budget), 0
        loaded = _load(order, now_ms, budget - budget // 2)  # the markers' half left to them
        left, pruned = budget - loaded, 0
        self.pruning = False
        for proc in order:
            if left <= 0:
                self.pruning = True
                break
            dropped = proc.store.prune(now_ms, budget=left)
            pruned += dropped
            if dropped >= left:  # its budget used up: more may be due there
                self.pruning = True
            left -= max(1, dropped)
        rest = budget - loaded - pruned
        if rest > 0 and not self.pruning:  # the markers took less than their half: the
            loaded += _load(order, now_ms, rest)  # horizons get the rest
        return loaded, pruned


def _load(order: Sequence[PartitionProcessor], now_ms: int, budget: int) -> int:
    """The horizons' loads, partition after partition, up to ``budget`` timers in all."""
    loaded = 0
    for proc in order:
        if loaded >= budget:
            break
        loaded += proc.extend_horizon(now_ms, budget - loaded)
    return loaded

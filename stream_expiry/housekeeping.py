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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stream_expiry.state import PartitionProcessor

__all__ = ["BUDGET", "Tidying"]

BUDGET = 3_000  # timers loaded and markers pruned in one turn, over every partition (~20-30 ms)


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
        loaded = 0
        for proc in order:
            if loaded >= budget:
                break
            loaded += proc.extend_horizon(now_ms, budget - loaded)
        if not (prune or self.pruning):
            return loaded, 0
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
        return loaded, pruned

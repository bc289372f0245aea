"""Releasing held records: one budget per loop turn, shared by every partition.

The release of a hold over records in every partition (an org-wide hold) sets every
partition releasing at once. With a budget per partition, one turn of the ingest loop
decided up to 5,000 records in each, under the lock that also covers firing and ingest: on
an instance owning 144 input partitions, up to 720,000 records decided, encoded and handed
to the producer before a due timer could fire or an event be read, all of their objects
alive at once. One budget per turn, split evenly between the partitions releasing, keeps a
turn's work the same however many partitions an instance owns. Each turn starts where the
last one gave out its remainder (round robin), so with more partitions than the budget has
records every partition still gets its turn. The loop does not wait for input while a
release is under way (``Service._loop``), so a release goes at the rate the CPU allows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from stream_expiry.state import Effects, PartitionProcessor

__all__ = ["RELEASE_BUDGET", "ReleaseTurns"]

RELEASE_BUDGET = 5_000  # held records looked at per loop turn, over every partition


class ReleaseTurns:
    """Hands out one turn's budget to the partitions releasing, fairly over turns."""

    def __init__(self, budget: int = RELEASE_BUDGET) -> None:
        if budget < 1:
            raise ValueError(f"the release budget must be at least 1, got {budget}")
        self.budget = budget
        self._start = 0

    def take(
        self, processors: Iterable[PartitionProcessor], now_ms: int
    ) -> list[tuple[PartitionProcessor, Effects]]:
        """One turn: what the partitions releasing let go, ``budget`` records at most."""
        releasing = [proc for proc in processors if proc.releasing]
        if not releasing:
            return []
        first = self._start % len(releasing)
        order = releasing[first:] + releasing[:first]
        base, extra = divmod(self.budget, len(order))
        # Those given one more (or, with more partitions than budget, the only ones given
        # any) come last next turn.
        self._start = first + (extra or 1)
        released: list[tuple[PartitionProcessor, Effects]] = []
        for i, proc in enumerate(order):
            share = base + (i < extra)
            if share == 0:
                break
            effects = proc.release_due(now_ms, budget=share)
            if effects:
                released.append((proc, effects))
        return released

"""Releasing held records: one budget per loop turn, shared by every partition.

The release of a hold over records in every partition (an org-wide hold) sets every
partition releasing at once. With a budget per partition, one turn of the ingest loop
decided up to 5,000 records in each, under the lock that also covers firing and ingest: on
an instance owning 144 input partitions, up to 720,000 records decided, encoded and handed
to the producer before a due timer could fire or an event be read, all of their objects
alive at once. One budget per turn, given in slices of ``RELEASE_CHUNK`` to the partitions
releasing, keeps a turn's work the same however many partitions an instance owns. Each turn
starts after the last partition served in the one before (round robin), so every partition
gets its turn. The loop does not wait for input while a
release is under way (``Service._loop``), so a release goes at the rate the CPU allows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from stream_expiry.state import Effects, PartitionProcessor

__all__ = ["RELEASE_BUDGET", "ReleaseTurns"]

RELEASE_BUDGET = 5_000  # held records looked at per loop turn, over every partition
# A partition's slice in a turn: each call scans the store and the overlay, so slices of a
# few dozen records (5,000 split over 144 partitions) made the call's own cost dominate.
RELEASE_CHUNK = 1_000


class ReleaseTurns:
    """Hands out one turn's budget to the partitions releasing, fairly over turns."""

    def __init__(self, budget: int = RELEASE_BUDGET, chunk: int = RELEASE_CHUNK) -> None:
        if budget < 1 or chunk < 1:
            raise ValueError(f"the release budget and chunk must be at least 1: {budget}, {chunk}")
        self.budget, self.chunk = budget, chunk
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
        released: list[tuple[PartitionProcessor, Effects]] = []
        left = self.budget
        served = 0
        for proc in order:
            if left <= 0:
                break
            share = min(left, self.chunk)
            left -= share
            served += 1
            effects = proc.release_due(now_ms, budget=share)
            if effects:
                released.append((proc, effects))
        self._start = first + served  # those served this turn come last next turn
        return released

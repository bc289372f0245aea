"""``[archive] required``: nothing is purged before the archive holds its latest stamp.

The archive (``stream-expiry archive``) is a consumer group on ``expiry.stamped`` that commits
its offsets only after it wrote and fsynced what it read. So a record whose latest stamp sits
at offset ``o`` of partition ``q`` is archived once that group's committed offset on ``q`` is
above ``o``. The service learns each stamp's offset from the broker's ack (the state keeps
it), follows the archive group's offsets, and keeps a due record (off the wheel, on disk,
like a legal hold does) until the archive has it. Explicit deletes are erasure requests: they
are never delayed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_expiry.codec import output_partition

__all__ = ["ArchiveGate"]


@dataclass
class ArchiveGate:
    """The archive group's committed offsets per partition of ``expiry.stamped``."""

    partitions: int  # of expiry.stamped
    offsets: dict[int, int] = field(default_factory=dict)
    generation: int = 0  # bumped whenever an offset moves: waiting records may go now

    def update(self, offsets: dict[int, int]) -> bool:
        """Take the offsets just read; True when one moved."""
        moved = any(self.offsets.get(p, 0) < o for p, o in offsets.items())
        if moved:
            self.offsets = {p: max(o, self.offsets.get(p, 0)) for p, o in offsets.items()}
            self.generation += 1
        return moved

    def archived(self, input_partition: int, stamp_offset: int | None) -> bool:
        """Whether a stamp of ``input_partition`` at ``stamp_offset`` is in the archive."""
        if stamp_offset is None:
            return False  # its stamp is not acknowledged yet: certainly not archived
        q = output_partition(input_partition, self.partitions)
        return stamp_offset < self.offsets.get(q, 0)

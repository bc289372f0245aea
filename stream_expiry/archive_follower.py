"""The service's side of ``[archive] required``: follow the archive group's offsets.

Once a second the archive group's committed offsets on ``expiry.stamped`` are read into the
:class:`~stream_expiry.archive_gate.ArchiveGate`; the processors whose due records wait for
the archive look at them again. An archive that stops moving while records wait is a
warning every 30 s, since deletions then wait with it (compliance prefers late to
unarchived, but somebody must know). How many wait, and the earliest due time among them,
go to the service's stats: the metrics count them, and the overdue gauge includes them
(they are off the due index, like held records, but they are late).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio

from stream_expiry.archive import archived_offsets
from stream_expiry.errors import BrokerError
from stream_expiry.timeutil import format_ts

if TYPE_CHECKING:
    from collections.abc import Mapping

    from stream_expiry.archive_gate import ArchiveGate
    from stream_expiry.config import Config
    from stream_expiry.kafka_settings import Brokers
    from stream_expiry.state import PartitionProcessor
    from stream_expiry.stats import ServiceStats

__all__ = ["ArchiveFollower"]

log = logging.getLogger("stream_expiry.service")

POLL_S = 1.0
STALL_S = 30.0  # an archive silent this long while purges wait: a warning


class ArchiveFollower:
    """Keeps ``gate`` in step with the archive group; ``run`` it in the session's tasks."""

    def __init__(
        self,
        gate: ArchiveGate,
        config: Config,
        bootstrap: Brokers,
        processors: Mapping[tuple[str, int], PartitionProcessor],
        stats: ServiceStats,
    ) -> None:
        self.gate = gate
        self._config = config
        self._bootstrap = bootstrap
        self._processors = processors
        self._stats = stats
        self._moved_at = time.monotonic()
        self._warned_at = 0.0

    async def run(self, stop: anyio.Event) -> None:
        while not stop.is_set():
            with anyio.move_on_after(POLL_S):
                await stop.wait()
            if stop.is_set():
                return
            try:
                await self.once()
            except BrokerError as exc:
                log.warning("cannot read the archive's offsets (purges wait): %s", exc)

    async def once(self) -> None:
        cfg = self._config
        offsets = await archived_offsets(self._bootstrap, cfg.archive.group_id, cfg.topics.stamped)
        procs = self._processors.values()
        waiting = sum(p.archive_waiting for p in procs)
        self._stats.archive_waiting = waiting
        dues = [
            d for p in procs if p.archive_waiting and (d := p.archive_waiting_since) is not None
        ]
        self._stats.archive_waiting_since = min(dues) if dues else None
        now = time.monotonic()
        if self.gate.update(offsets) or not waiting:
            self._moved_at = now
        elif now - self._moved_at > STALL_S and now - self._warned_at > STALL_S:
            self._warned_at = now
            since = self._stats.archive_waiting_since
            log.warning(
                "the archive (group %r) has not moved for %.0f s: %s for it%s, so purges "
                "are late; is `stream-expiry archive` running?",
                cfg.archive.group_id,
                now - self._moved_at,
                "1 due record waits" if waiting == 1 else f"{waiting} due records wait",
                "" if since is None else f" (the oldest due since {format_ts(since)})",
            )
        for proc in self._processors.values():
            if proc.archive_waiting:
                proc.recheck_archive()

"""The progress line `run` logs every 10 s says how late deletions are, not only counts."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from stream_expiry.config import parse_config
from stream_expiry.model import Identity, Stamp
from stream_expiry.runner import PROGRESS_EVERY_S, _ProgressLog
from stream_expiry.service import Service, ServiceStats
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

if TYPE_CHECKING:
    import pytest

NOW = 10_000_000


def _said(stats: ServiceStats, caplog: pytest.LogCaptureFixture) -> str:
    progress = _ProgressLog()
    progress._last -= PROGRESS_EVERY_S  # ten seconds have passed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stream_expiry.run"):
        progress(stats)
    (line,) = [r.getMessage() for r in caplog.records]
    return line


def test_the_progress_line_says_how_late_the_oldest_due_record_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through a backlog after an outage (a trial: 3 instances stopped for 80 s under
    load, tombstones up to 130 s late), the line said "events 45000 (3410/s) ... timers in
    wheel 11207" and nothing of how late deletions were, which /metrics alone said."""
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={}, clock=lambda: NOW)
    store = PartitionStore(MemoryKV())
    identity = Identity("acme", "_", "live", "conversation", "late")
    due = NOW - 115_200
    store.write([(None, Stamp(identity, due - 60_000, due, 60_000, "default"))], now_ms=due)
    service.processors[("conversations", 0)] = PartitionProcessor(
        "conversations", 0, store, resolve=lambda i, t: None,  # type: ignore[arg-type,return-value]
        sliding=frozenset(), categories=frozenset({"conversation"}), max_skew_ms=0,
        now_ms=due - 60_000,
    )  # fmt: skip
    service._observe()  # no metrics: the line is all a person has
    assert _said(service.stats, caplog).endswith("oldest overdue 115.2 s")
    assert _said(ServiceStats(), caplog).endswith("oldest overdue none")
    restoring = ServiceStats(restoring=3)
    assert _said(restoring, caplog).endswith(
        "oldest overdue none (not counting the 3 partitions being restored)"
    )
    restoring.restoring_due = 40  # due records read by the restore wait for its end
    assert _said(restoring, caplog).endswith(
        "oldest overdue none (not counting the 3 partitions being restored, where 40 "
        "records read so far were due)"
    )

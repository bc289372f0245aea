"""The demo's summary counts stamps as stamps: a touch that moves a session's expiry
stamps it again, and "records stamped 1790" beside 1,693 creates read as records from
nowhere (a trial)."""

from __future__ import annotations

import contextlib
import io

from stream_expiry.config import parse_config
from stream_expiry.demo import Watch, _summary
from stream_expiry.service import Service


def test_the_summary_says_stamps_published_not_records_stamped() -> None:
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    service.stats.stamped = 5  # 3 creates, 2 touches that moved an expiry
    watch = Watch(lags_ms=[12], emit_lags_ms=[3], ttl=3, started_ms=1)
    counts = {"create": 3, "touch": 4, "delete": 0, "malformed": 0}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        _summary(service, watch, counts, {"written": 5, "deleted": 3, "receipts": 3, "left": 0})
    text = out.getvalue()
    assert (
        "  stamps published    5 (each create's, and each touch's that moved an expiry)\n" in text
    )
    assert "records stamped" not in text

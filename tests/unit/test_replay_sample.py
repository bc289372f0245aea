"""The lines of replay's text sample say ``never`` for an expiry that is not there."""

from __future__ import annotations

from stream_expiry.replay import Change

KEY = "acme/_/live/conversation/c1"


def test_a_record_that_no_longer_expires_reads_never() -> None:
    line = Change(KEY, 0, None, None, "never").line()
    assert line == f"never    {KEY}: 1970-01-01T00:00:00.000Z -> never"
    assert "None" not in line


def test_a_record_without_an_expiry_before_reads_never_on_the_left() -> None:
    line = Change(KEY, None, 3_600_000, "default", "earlier").line()
    assert line == f"earlier  {KEY}: never -> 1970-01-01T01:00:00.000Z (default)"

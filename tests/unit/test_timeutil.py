"""The one timestamp form stream-expiry writes, against the standard library's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.codec import parse_own_ts
from stream_expiry.timeutil import MAX_TS_MS, MIN_TS_MS, format_ts, parse_ts

_MS = st.integers(MIN_TS_MS, MAX_TS_MS)


@given(ms=_MS)
def test_format_ts_is_rfc3339_utc_with_milliseconds(ms: int) -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    want = (epoch + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")
    assert format_ts(ms) == want.replace("+00:00", "Z")


@given(ms=_MS)
def test_format_ts_round_trips_through_both_parsers(ms: int) -> None:
    text = format_ts(ms)
    assert parse_ts(text) == ms
    assert parse_own_ts(text) == ms

"""The one timestamp form stream-expiry writes, against the standard library's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.codec import parse_own_ts
from stream_expiry.timeutil import (
    MAX_TS_MS,
    MIN_TS_MS,
    InvalidTimestamp,
    _parse_rfc3339,
    format_ts,
    parse_ts,
)

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


@given(
    seconds=st.integers(MIN_TS_MS // 1000 + 86_400, MAX_TS_MS // 1000 - 86_400),
    offset_minutes=st.integers(-(23 * 60 + 59), 23 * 60 + 59),
    fraction=st.sampled_from(["", ".5", ".05", ".123", ".1239", ".999999999"]),
)
def test_parse_ts_reads_any_offset_as_the_standard_library_does(
    seconds: int, offset_minutes: int, fraction: str
) -> None:
    """Events come with the sender's offset: -05:00, +05:30, +14:00 ... The local time in
    the text minus the offset is the instant; fractions below a millisecond are cut."""
    zone = timezone(timedelta(minutes=offset_minutes))
    local = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)).astimezone(zone)
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    wall = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
        f"T{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
    )
    offset = f"{sign}{hours:02d}:{minutes:02d}"
    millis = int((fraction[1:] + "000")[:3])
    assert parse_ts(wall + fraction + offset) == seconds * 1000 + millis
    instant = datetime.fromisoformat(wall + offset) - datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_ts(wall + offset) == instant // timedelta(milliseconds=1)


def test_parse_ts_takes_a_fraction_of_any_length_as_rfc_3339_does() -> None:
    """RFC 3339's ``time-secfrac`` is a dot and one digit or more: a producer writing ten
    or twelve digits sends a valid time (it was dead-lettered as bad_timestamp)."""
    want = parse_ts("2026-12-04T02:50:00.123Z")
    assert parse_ts("2026-12-04T02:50:00.1234567891Z") == want
    assert parse_ts("2026-12-04T03:50:00.123999999999999+01:00") == want
    with pytest.raises(InvalidTimestamp, match="not RFC 3339"):
        parse_ts("2026-12-04T02:50:00.Z")


def test_parse_ts_clamps_a_leap_second_and_refuses_impossible_offsets() -> None:
    last = parse_ts("2016-12-31T23:59:59.999Z")
    assert parse_ts("2016-12-31T23:59:60Z") == last
    assert parse_ts("2016-12-31T23:59:60.5Z") == last
    assert parse_ts("2017-01-01T00:00:00+23:59") == parse_ts("2016-12-31T00:01:00Z")
    for bad in ("2017-01-01T00:00:00+24:00", "2017-01-01T00:00:00-05:60"):
        # said once, not inside "is not a real date and time: ..." (the date's except)
        with pytest.raises(InvalidTimestamp, match=r"^'[^']*' has an impossible UTC offset$"):
            parse_ts(bad)


def test_parse_ts_takes_epoch_milliseconds_within_what_it_can_format() -> None:
    assert parse_ts(MIN_TS_MS) == MIN_TS_MS
    assert parse_ts(MAX_TS_MS) == MAX_TS_MS
    for bad in (MIN_TS_MS - 1, MAX_TS_MS + 1):
        with pytest.raises(InvalidTimestamp, match="out of range"):
            parse_ts(bad)
    with pytest.raises(InvalidTimestamp, match="boolean"):
        parse_ts(True)


_CANONICAL_CHARS = st.sampled_from("0123456789-:.TtZz +٣")


@given(
    ms=_MS,
    changes=st.lists(st.tuples(st.integers(0, 23), _CANONICAL_CHARS), max_size=3),
)
def test_the_fast_path_for_the_javascript_form_agrees_with_the_pattern(
    ms: int, changes: list[tuple[int, str]]
) -> None:
    """``2026-12-04T17:28:53.911Z`` (JavaScript's toISOString) takes a C parse; that text
    with any characters changed gets what the RFC 3339 pattern gives it, or its error."""
    text = list(format_ts(ms))
    for at, char in changes:
        text[at] = char
    value = "".join(text)
    try:
        want: int | str = _parse_rfc3339(value)
    except InvalidTimestamp:
        want = "invalid"
    try:
        got: int | str = parse_ts(value)
    except InvalidTimestamp:
        got = "invalid"
    assert got == want


def test_the_fast_path_leaves_leap_seconds_and_impossible_dates_to_the_pattern() -> None:
    assert parse_ts("2016-12-31T23:59:60.500Z") == parse_ts("2016-12-31T23:59:59.999Z")
    with pytest.raises(InvalidTimestamp, match="not a real date"):
        parse_ts("2026-02-30T00:00:00.000Z")

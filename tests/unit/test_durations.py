"""Durations: the contract's units, exact arithmetic, and the line between 'not positive' and invalid."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.durations import (
    MAX_DURATION_MS,
    UNITS_MS,
    InvalidDuration,
    format_duration,
    is_duration_like,
    parse_duration,
)
from stream_expiry.timeutil import format_ts, parse_ts

MIN = 60_000


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (1, MIN),
        (43200, 43200 * MIN),
        (1.5, 90_000),
        ("30", 30 * MIN),
        ("2.5", 150_000),
        (".5", 30_000),
        ("5.", 5 * MIN),
        ("90s", 90_000),
        ("90S", 90_000),
        ("5m", 5 * MIN),
        ("1.5h", 5_400_000),
        ("1.1h", 3_960_000),
        ("30d", 30 * 1440 * MIN),
        ("2w", 2 * 10_080 * MIN),
        ("6mo", 6 * 43_800 * MIN),
        ("6MO", 6 * 43_800 * MIN),
        ("2y", 2 * 525_600 * MIN),
        ("1Y", 525_600 * MIN),
        (" 3 d ", 3 * 1440 * MIN),
        ("+7d", 7 * 1440 * MIN),
        ("0.5s", 1_000),  # half rounds away from zero
        ("1.0000000000000000000000000000000001h", 3_600_000),
        ("7000y", MAX_DURATION_MS),
    ],
)
def test_valid_durations(value: object, ms: int) -> None:
    assert parse_duration(value) == ms


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (0, 0),
        (0.0, 0),
        ("0", 0),
        ("0d", 0),
        ("", 0),
        ("   ", 0),
        (-5, -5 * MIN),
        ("-1h", -3_600_000),
    ],
)
def test_zero_negative_and_empty_are_valid_but_not_positive(value: object, ms: int) -> None:
    assert parse_duration(value) == ms
    assert parse_duration(value) <= 0


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "30 days",
        "1e3",
        "5x",
        "d",
        "1.2.3h",
        "--5",
        "5 m s",
        True,
        None,
        [5],
        {"d": 1},
        float("nan"),
        float("inf"),
        1e300,
        10**40,
        "7001y",
        "9000y",
        "-7001y",  # too long is no duration whatever its sign, not a negative to ignore
        -(10**40),
        "9" * 70,
    ],
)
def test_invalid_durations_raise(value: object) -> None:
    with pytest.raises(InvalidDuration, match="expected minutes"):
        parse_duration(value)


def test_invalid_duration_is_a_value_error_with_a_short_quote() -> None:
    with pytest.raises(ValueError, match=r"\.\.\.") as info:
        parse_duration("x" * 50)
    assert len(str(info.value)) < 200


@given(st.integers(min_value=-525_600_000, max_value=525_600_000))  # 1,000 years of minutes
def test_integers_are_minutes(n: int) -> None:
    assert parse_duration(n) == n * MIN
    assert parse_duration(str(n)) == n * MIN


@given(
    st.decimals(min_value=0, max_value=1_000, places=3, allow_nan=False, allow_infinity=False),
    st.sampled_from(sorted(UNITS_MS)),
)
def test_text_is_exact_and_whole_seconds(amount: Decimal, unit: str) -> None:
    exact = amount * UNITS_MS[unit]
    if 0 < exact < 500:  # would round to 0, "never": refused (below)
        with pytest.raises(InvalidDuration, match="rounds to 0"):
            parse_duration(f"{amount}{unit}")
        return
    ms = parse_duration(f"{amount}{unit}")
    assert ms % 1000 == 0
    assert abs(Decimal(ms) - exact) <= 500


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(sorted(UNITS_MS)))
def test_format_round_trips(n: int, unit: str) -> None:
    ms = n * UNITS_MS[unit]
    if ms <= MAX_DURATION_MS:
        assert parse_duration(format_duration(ms)) == ms


def test_format_duration_picks_the_largest_whole_unit() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(63_072_000_000) == "2y"
    assert format_duration(15_768_000_000) == "6mo"
    assert format_duration(2_592_000_000) == "30d"
    assert format_duration(90_000) == "90s"
    assert format_duration(1_500) == "1500ms"


HINT = 'expected minutes as a number, or a number with a unit s, m, h, d, w, mo, y (e.g. "30d")'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("inf"), "inf is not a finite number"),
        (True, "true is a boolean, not a duration"),
        (False, "false is a boolean, not a duration"),
        ("soon", "'soon' is not a duration"),
        (None, "a NoneType is not a duration"),
        ([30], "a list is not a duration"),
        ("7001y", "'7001y' is longer than 7,000 years"),
        ("20000y", "'20000y' is longer than 7,000 years"),
        ("3 fortnights", "'3 fortnights' has an unknown unit 'fortnights'"),
        ("x" * 38, f"'{'x' * 38}' is not a duration"),  # a quote of 40 characters, whole
        ("x" * 39, f"'{'x' * 36}... is not a duration"),  # 41: cut to 37 and an ellipsis
    ],
)
def test_messages_quote_the_value_and_say_what_a_duration_is(value: object, message: str) -> None:
    with pytest.raises(InvalidDuration) as info:
        parse_duration(value)
    assert str(info.value) == f"{message}; {HINT}"


def test_text_longer_than_64_characters_is_refused_unread() -> None:
    assert parse_duration("1" + " " * 63) == 60_000
    with pytest.raises(InvalidDuration, match="is not a duration"):
        parse_duration("1" + " " * 64)


@pytest.mark.parametrize(
    ("value", "shown"), [("0.49s", "'0.49s'"), (0.001, "0.001"), ("0.008m", "'0.008m'")]
)
def test_a_positive_duration_that_would_round_to_never_is_refused(
    value: object, shown: str
) -> None:
    """Rounded to whole seconds it would be 0, which is no value: not the short TTL
    written. The message says what 0 does (it said "or 0 for never", but a cap or a
    default still applies to a 0, as the contract says)."""
    with pytest.raises(InvalidDuration) as info:
        parse_duration(value)
    assert str(info.value) == (
        f"{shown} is under half a second, which rounds to 0, and 0 gives no TTL (the other "
        "sources decide, or the record never expires); give 1s or more, or 0 to leave the TTL "
        "to the other sources"
    )
    assert parse_duration("-0.001s") == 0  # not positive: valid, and not a TTL (as -5 is)


def test_the_longest_duration_from_a_creation_up_to_the_year_2999_can_be_written() -> None:
    """Every stamp writes ``created_at + ttl`` in RFC 3339, whose years end at 9999: a TTL
    the parser accepts must not make it unwritable (8,000 years from 2026 did, and the
    service stopped on the event at every start)."""
    created = parse_ts("2999-12-31T23:59:59.999Z")
    assert format_ts(created + MAX_DURATION_MS) == "9995-05-09T23:59:59.999Z"
    with pytest.raises(InvalidDuration, match="longer than 7,000 years"):
        parse_duration("8000y")


@pytest.mark.parametrize(
    ("value", "like"),
    [(30, True), (1.5, True), ("30d", True), ("soon", True), (True, False), (None, False)],
)
def test_a_boolean_has_no_type_a_duration_can_have(value: object, like: bool) -> None:
    """A boolean is an ``int`` to Python, but TOML and JSON write it apart and
    :func:`parse_duration` refuses it as such. (Mutant without ``not isinstance(value,
    bool)``: ``true`` was taken for a number.)"""
    assert is_duration_like(value) is like

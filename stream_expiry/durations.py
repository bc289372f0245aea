"""Durations as the contract writes them, turned into exact integer milliseconds.

Rules this module keeps (see the contract, "Effective TTL"):

* A number alone (an ``int`` or ``float``, or a string of digits with an optional decimal
  part) means **minutes**: that is what the well-known bot platform's variables use.
* A string may carry a unit instead: ``s``, ``m`` (minutes), ``h``, ``d``, ``w``, ``mo``
  (43,800 minutes, a twelfth of 365 days) and ``y`` (525,600 minutes, 365 days); units are
  case-insensitive and may be separated from the number by spaces.
* The result is rounded to whole seconds, half away from zero, and returned as milliseconds,
  so it is always a multiple of 1000. The arithmetic is exact (:class:`~decimal.Decimal`):
  ``"1.1h"`` is 3,960,000 ms, never 3,959,999.
* Zero, negative values and the empty string are *valid* but not positive: :func:`parse_duration`
  returns them as ``0`` or a negative number and the caller decides what "no value" means
  (a TTL candidate is ignored; ``max_clock_skew = 0`` allows no skew at all).
* Anything else (garbage, NaN, infinity, booleans, absurdly long values) raises
  :class:`InvalidDuration`: a config file makes that fatal, an environment variable only a warning.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Final

from stream_expiry.errors import quoted

__all__ = [
    "MAX_DURATION_MS",
    "MAX_DURATION_YEARS",
    "UNITS_MS",
    "InvalidDuration",
    "UnderHalfSecond",
    "format_duration",
    "is_duration_like",
    "is_negative",
    "parse_duration",
]

_MINUTE_MS: Final = 60_000
UNITS_MS: Final[dict[str, int]] = {
    "s": 1_000,
    "m": _MINUTE_MS,
    "h": 60 * _MINUTE_MS,
    "d": 1_440 * _MINUTE_MS,
    "w": 10_080 * _MINUTE_MS,
    "mo": 43_800 * _MINUTE_MS,
    "y": 525_600 * _MINUTE_MS,
}
# The longest duration: ``created_at + ttl`` must stay within what RFC 3339 can write (to
# 9999-12-31), for any creation time up to the year 2999. A TTL of 8,000 years, accepted
# under a bound of 10,000 once, put a record created in 2026 past the year 9999: its stamp
# could not be written, and the service stopped on that event at every start.
MAX_DURATION_YEARS: Final = 7_000
MAX_DURATION_MS: Final = MAX_DURATION_YEARS * UNITS_MS["y"]
# A generous bound on text length, so a hostile value cannot make Decimal work hard.
_MAX_TEXT: Final = 64

# Enough digits that no product of a 64-character number and a unit is ever rounded early.
_EXACT: Final = Context(prec=120, rounding=ROUND_HALF_UP)
_TEXT = re.compile(r"^\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
# Said after every error of :func:`parse_duration`; a caller whose bare numbers are not
# minutes (the sink's seconds) takes it off (:func:`without_hint`).
_HINT: Final = (
    'expected minutes as a number, or a number with a unit s, m, h, d, w, mo, y (e.g. "30d")'
)


def _show(value: object) -> str:
    return quoted(value, 40)


class InvalidDuration(ValueError):
    """Raised by :func:`parse_duration` when a value is not a duration at all.

    The message quotes the value and says what a duration looks like, so callers can prefix
    it with where the value came from (a config key, a variable, a policy update field).
    """


class UnderHalfSecond(InvalidDuration):
    """A positive duration that whole seconds would round to 0. Its message speaks of TTLs
    (0 is no value: the other sources decide, or the record never expires); a setting where
    0 means nothing says its own (``shown``: the value as quoted)."""

    def __init__(self, message: str, shown: str) -> None:
        super().__init__(message)
        self.shown = shown


def without_hint(exc: InvalidDuration) -> str:
    """What was wrong with a duration, without the hint that bare numbers are minutes."""
    return str(exc).removesuffix(f"; {_HINT}")


def parse_duration(value: object) -> int:
    """Return ``value`` as signed integer milliseconds, a multiple of 1000.

    Signed, so that callers can tell "valid but not positive" (``<= 0``) from invalid (raises).
    """
    if isinstance(value, bool):  # spelled as in TOML and JSON, where it was written
        raise InvalidDuration(f"{str(value).lower()} is a boolean, not a duration; {_HINT}")
    if isinstance(value, int):
        amount, unit_ms = Decimal(value), _MINUTE_MS
    elif isinstance(value, float):
        # str() of a float is its shortest round-tripping decimal, i.e. what the author wrote.
        amount, unit_ms = Decimal(str(value)), _MINUTE_MS
        if not amount.is_finite():
            raise InvalidDuration(f"{_show(value)} is not a finite number; {_HINT}")
    elif isinstance(value, str):
        if value.strip() == "":
            return 0
        match = _TEXT.match(value) if len(value) <= _MAX_TEXT else None
        if match is None:
            raise InvalidDuration(f"{_show(value)} is not a duration; {_HINT}")
        sign, digits, unit = match.groups()
        unit_ms = _MINUTE_MS if unit == "" else UNITS_MS.get(unit.lower(), 0)
        if unit_ms == 0:
            raise InvalidDuration(f"{_show(value)} has an unknown unit {unit!r}; {_HINT}")
        try:
            amount = Decimal(sign + digits)
        except InvalidOperation:  # pragma: no cover - the pattern only admits decimals
            raise InvalidDuration(f"{_show(value)} is not a duration; {_HINT}") from None
    else:
        raise InvalidDuration(f"a {type(value).__name__} is not a duration; {_HINT}")
    exact_ms = _EXACT.multiply(amount, unit_ms)
    if _EXACT.abs(exact_ms) > MAX_DURATION_MS:
        raise InvalidDuration(
            f"{_show(value)} is longer than {MAX_DURATION_YEARS:,} years; {_HINT}"
        )
    seconds = _EXACT.divide(exact_ms, 1000).quantize(Decimal(1), context=_EXACT)
    if seconds == 0 and exact_ms > 0:
        # Rounded, it would read as 0, no value: the other sources' TTL, or none at all,
        # instead of the short one written. (Said as what 0 does: "0 for never" was wrong,
        # a cap or a default still applies.)
        raise UnderHalfSecond(
            f"{_show(value)} is under half a second, which rounds to 0, and 0 gives no TTL (the "
            "other sources decide, or the record never expires); give 1s or more, or 0 to "
            "leave the TTL to the other sources",
            _show(value),
        )
    return int(seconds) * 1000


def is_duration_like(value: object) -> bool:
    """Whether ``value`` has a type a duration can have, for messages that name the type."""
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def format_duration(ms: int) -> str:
    """Exact text for ``ms`` in the largest whole unit (weeks aside), for people to read."""
    if ms == 0:
        return "0s"
    for unit in ("y", "mo", "d", "h", "m", "s"):  # weeks read worse than days: "14d"
        size = UNITS_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def is_negative(raw: object) -> bool:
    """Whether a duration as written is below zero (``-30``, ``"-5d"``): valid, and
    ignored as 0 is, but likely a slip, which the config file and the TTL variables both
    say (a trial found a negative variable ignored in silence)."""
    if isinstance(raw, bool):
        return False
    if isinstance(raw, int | float):
        return raw < 0
    return isinstance(raw, str) and raw.strip().startswith("-")

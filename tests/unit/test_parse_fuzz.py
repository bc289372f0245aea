"""Fuzz ``model.parse_event`` (issue 14, item 4): whatever the bytes, it never raises and
answers an :class:`InputEvent` that obeys the contract or a :class:`Rejection` whose code is
one of the contract's dead-letter codes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_expiry.model import (
    _ORJSON_WRITES,
    ENVS,
    MAX_DATA_DEPTH,
    MAX_ID_CHARS,
    OPS,
    InputEvent,
    Rejection,
    parse_event,
)
from stream_expiry.timeutil import MIN_TS_MS

CODES = {
    "invalid_json",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "unknown_category",
    "unknown_op",
    "bad_timestamp",
    "future_timestamp",
}
CATEGORIES = ("conversation", "session")
NOW = 1_795_000_000_000
SKEW = 300_000
FIELDS = ("category", "record_id", "org", "bot", "env", "op", "ts", "event_id", "data")
TEXT_FIELDS = ("category", "record_id", "org", "bot", "env", "op")


def parse(value: bytes | None) -> InputEvent | Rejection:
    return parse_event(value, categories=CATEGORIES, now_ms=NOW, max_skew_ms=SKEW)


def check(result: InputEvent | Rejection) -> InputEvent | Rejection:
    """What every answer must satisfy, valid or not."""
    if isinstance(result, Rejection):
        assert result.code in CODES, result
        assert isinstance(result.detail, str)
        assert result.detail
        # A sentence, whatever the message: it is a dead letter's header and a log line (a
        # megabyte ts was quoted whole, doubling the dead letter's size).
        assert len(result.detail) <= 2 * MAX_ID_CHARS, result.detail[:200]
        return result
    assert isinstance(result, InputEvent), result
    i = result.identity
    assert i.category in CATEGORIES
    assert i.env in ENVS
    assert result.op in OPS
    for part in (i.org, i.bot, i.record_id):
        assert isinstance(part, str)
        assert 1 <= len(part) <= MAX_ID_CHARS
    assert isinstance(result.ts, int)
    assert MIN_TS_MS <= result.ts <= NOW + SKEW
    assert result.event_id is None or isinstance(result.event_id, str)
    # Its data can be written where it goes: in a stamp, and in an archive line around that.
    orjson.dumps({"stamp": {"data": result.data}})
    return result


# Values of every JSON type, including the awkward ones.
ODD_NUMBERS = st.sampled_from(
    [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1e308, -1e308, 0.5, float("1e-300"), True, False]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    ODD_NUMBERS,
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8"), min_size=500, max_size=600),
    st.sampled_from(["", "\x00", "a\x00b", "conversation", "live", "touch", "9" * 40, "é" * 513]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)


def valid_event() -> dict[str, Any]:
    return {
        "category": "conversation",
        "record_id": "r1",
        "org": "acme",
        "bot": "b",
        "env": "live",
        "op": "create",
        "ts": NOW - 1000,
        "event_id": "e1",
        "data": {"k": [1, 2, 3]},
    }


def test_the_valid_base_event_is_accepted() -> None:
    assert isinstance(check(parse(orjson.dumps(valid_event()))), InputEvent)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(value: bytes) -> None:
    check(parse(value))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_arbitrary_json_values(value: Any) -> None:
    check(parse(orjson.dumps(value)))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=len(FIELDS)), st.booleans())
def test_events_with_any_value_in_any_field(fields: dict[str, Any], from_valid: bool) -> None:
    event = valid_event() if from_valid else {}
    event.update(fields)
    check(parse(orjson.dumps(event)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(TEXT_FIELDS), JSON.filter(lambda v: v is not None and not isinstance(v, str))
)
def test_a_wrong_type_in_any_text_field_is_rejected(name: str, value: Any) -> None:
    event = valid_event()
    event[name] = value
    result = check(parse(orjson.dumps(event)))
    assert isinstance(result, Rejection)
    assert result.code == "invalid_field"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(JSON.filter(lambda v: not isinstance(v, (int, str)) or isinstance(v, bool)))
def test_a_wrong_type_of_ts_is_rejected(value: Any) -> None:
    event = valid_event()
    event["ts"] = value
    result = check(parse(orjson.dumps(event)))
    assert isinstance(result, Rejection)
    assert result.code in {"invalid_field", "missing_field"}  # null ts is a missing field


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=8).filter(lambda b: not _is_utf8(b)), st.sampled_from(FIELDS))
def test_invalid_utf8_inside_a_field(junk: bytes, name: str) -> None:
    marker = "\u2603"
    event = valid_event()
    event[name] = marker
    raw = orjson.dumps(event).replace(marker.encode(), junk)
    result = check(parse(raw))
    assert isinstance(result, Rejection)
    assert result.code == "invalid_json"


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("depth", [10, 200, 1000, 100_000])
@pytest.mark.parametrize("shape", ["list", "object", "data"])
def test_deep_nesting(depth: int, shape: str) -> None:
    if shape == "list":
        raw = b"[" * depth + b"]" * depth
    elif shape == "object":
        raw = b'{"a":' * depth + b"1" + b"}" * depth
    else:  # deep inside the opaque payload of an otherwise valid event
        body = orjson.dumps(valid_event())[:-1]
        raw = body + b',"data":' + b"[" * depth + b"]" * depth + b"}"
    result = check(parse(raw))
    if shape != "data" or depth > MAX_DATA_DEPTH:
        assert isinstance(result, Rejection)


@pytest.mark.parametrize("shape", ["list", "object", "mixed"])
def test_data_nested_past_the_limit_is_dead_lettered_at_the_limit_kept(shape: str) -> None:
    """orjson reads 1,024 levels and writes 254: data it could read and not write stopped
    the service at its stamp (a poison pill). Up to the limit it is kept, past it refused."""
    pairs = {"list": (b"[", b"]"), "object": (b'{"a":', b"}"), "mixed": (b'[{"a":', b"}]")}
    open_, close = pairs[shape]
    per = 2 if shape == "mixed" else 1
    body = orjson.dumps(valid_event())[:-1]

    def nested(levels: int) -> bytes:
        inner = b"[]" if shape == "list" else b"{}"
        n = (levels - 1) // per
        return body + b',"data":' + open_ * n + inner + close * n + b"}"

    kept = check(parse(nested(MAX_DATA_DEPTH - (1 if shape == "mixed" else 0))))
    assert isinstance(kept, InputEvent)
    refused = check(parse(nested(MAX_DATA_DEPTH + 2)))
    assert isinstance(refused, Rejection)
    assert (refused.code, refused.detail) == (
        "invalid_field",
        f"field 'data' nests deeper than {MAX_DATA_DEPTH} levels",
    )
    assert isinstance(check(parse(nested(300))), Rejection)


def test_orjson_writes_the_depth_the_limit_is_measured_against() -> None:
    deepest: Any = []
    for _ in range(_ORJSON_WRITES - 1):
        deepest = [deepest]
    orjson.dumps(deepest)
    with pytest.raises(TypeError):
        orjson.dumps([deepest])


@pytest.mark.parametrize(
    ("field", "raw_value"),
    [
        ("ts", b"1" + b"0" * 400),  # an integer far beyond 64 bits
        ("ts", b"-" + b"9" * 400),
        ("ts", b"1e999999"),
        ("ts", b"18446744073709551616"),  # 2**64
        ("ts", b"-9223372036854775809"),  # -2**63 - 1
        ("ts", b'"9999-12-31T23:59:59Z"'),
        ("ts", b'"0000-01-01T00:00:00Z"'),
        ("ts", b'"2026-02-30T00:00:00Z"'),
        ("ts", b'"' + b"9" * 400 + b'"'),
        ("event_id", b"1" + b"0" * 400),
        ("data", b"1" + b"0" * 400),
        ("record_id", b'"\\u0000"'),
        ("org", b'"a\\u0000b"'),
        ("category", b'"conversation\\u0000"'),
        ("ts", b"NaN"),
        ("ts", b"Infinity"),
    ],
)
def test_huge_numbers_odd_times_and_nul(field: str, raw_value: bytes) -> None:
    body = orjson.dumps({k: v for k, v in valid_event().items() if k != field})[:-1]
    check(parse(body + b',"' + field.encode() + b'":' + raw_value + b"}"))


def test_a_nul_in_an_id_is_kept_not_truncated() -> None:
    event = valid_event()
    event["record_id"] = "a\x00b"
    result = check(parse(orjson.dumps(event)))
    assert isinstance(result, InputEvent)
    assert result.identity.record_id == "a\x00b"


@pytest.mark.parametrize("name", [*TEXT_FIELDS, "ts", "data", "event_id"])
def test_megabyte_strings(name: str) -> None:
    event = valid_event()
    event[name] = "x" * (1 << 20)
    result = check(parse(orjson.dumps(event)))
    if name in ("data", "event_id"):
        assert isinstance(result, InputEvent)  # opaque payload / producer's id: carried
    else:
        assert isinstance(result, Rejection)


def test_megabytes_of_garbage_and_of_whitespace() -> None:
    check(parse(b"\xff" * (1 << 20)))
    check(parse(b" " * (1 << 20)))
    check(parse(b"{" + b'"a":1,' * 200_000 + b'"b":2}'))
    check(parse(None))
    check(parse(b""))

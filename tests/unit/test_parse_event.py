"""``model.parse_event`` answers what the contract says, code for code and field for field.

The fuzz tests (test_parse_fuzz.py) show that no input makes it raise or break the
contract's invariants; these show that it is right: each dead-letter code for the input
that deserves it, each default, each boundary, and an accepted event's every field, on the
fast path and on the slow one (:func:`model._validate`), which must agree.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_expiry.codec import dead_letter_headers
from stream_expiry.model import (
    DETAIL_MAX,
    MAX_ID_CHARS,
    Identity,
    InputEvent,
    Rejection,
    Stamp,
    _validate,
    encode_stamp,
    parse_event,
)
from stream_expiry.oversize import DETAIL_BYTES
from stream_expiry.redact import Redactor
from stream_expiry.timeutil import MIN_TS_MS

CATEGORIES = frozenset({"conversation", "session"})
NOW = 1_795_000_000_000  # 2026-11-18T11:06:40Z
SKEW = 300_000


def parse(value: bytes | None) -> InputEvent | Rejection:
    return parse_event(value, categories=CATEGORIES, now_ms=NOW, max_skew_ms=SKEW)


def event(**changes: Any) -> bytes:
    """A valid event with ``changes`` (a value of ``...`` removes the field)."""
    body: dict[str, Any] = {"category": "conversation", "record_id": "r1", "org": "acme",
                            "ts": NOW - 1_000}  # fmt: skip
    body.update(changes)
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def code(value: bytes | None) -> str:
    result = parse(value)
    assert isinstance(result, Rejection), result
    assert result.detail  # a sentence for a person
    return result.code


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (b'{"org": "caf\xe9"}', "byte 12: invalid continuation byte"),
        (b'{"org": "\xff"}', "byte 9: invalid start byte"),
        (b'{"org": "\xed\xa0\x80"}', "byte 9: invalid continuation byte"),  # a surrogate
        (b'{"org": "caf\xc3', "byte 12: unexpected end of data"),
    ],
)
def test_a_value_not_utf8_is_said_so_with_the_first_bad_bytes_offset(
    value: bytes, detail: str
) -> None:
    """A user trial: orjson's "str is not valid UTF-8: surrogates not allowed ... (char 0)"
    was the dead letter's detail, whatever the bad byte and wherever it was."""
    result = parse(value)
    assert isinstance(result, Rejection)
    assert result.code == "invalid_json"  # the contract's code for bytes that are not JSON
    assert result.detail == (f"the value is not valid UTF-8 ({detail}); send JSON encoded as UTF-8")


def test_a_utf8_value_that_is_not_json_keeps_the_parsers_words() -> None:
    """Where no plainer words are at hand, orjson's own, after "the value is not JSON"."""
    result = parse(b'{"org": "\\ud800"}')  # a lone surrogate escape: UTF-8, but not JSON
    assert isinstance(result, Rejection)
    assert result.detail == (
        "the value is not JSON: no low surrogate in string at line 1 column 10 (char 9)"
    )


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (b"hello world", "'hello' at line 1 column 1 (char 0), where a JSON value should be"),
        (b"not json", "'not' at line 1 column 1 (char 0), where a JSON value should be"),
        (b'{"org": tru}', "'tru' at line 1 column 9 (char 8), where a JSON value should be"),
        (b"x" * 30, f"'{'x' * 20}...' at line 1 column 1 (char 0), where a JSON value should be"),
        (b'{"category": "conversation",\n "ts": ?}',
         "'?' at line 2 column 8 (char 36), where a JSON value should be"),
        # The position counts characters, not bytes (the \xc3\xa9 is one).
        ('{"org": "caf\u00e9" x}'.encode(),
         "'x' at line 1 column 16 (char 15), where ',' or '}' should be"),
        (b'{"org": "acme"', "it ends at line 1 column 15 (char 14) before the JSON does (a "
                            "bracket, brace or quote left open?)"),
        (b'{"org": "acme"}{"org": "acme"}',
         "'{' at line 1 column 16 (char 15) follows a whole JSON value; send one value per "
         "message"),
        (b'{"org": "acme",}', "',' at line 1 column 15 (char 14) is a comma with no value after it"),
        (b"", "it is empty"),
        (b" \n", "it is only whitespace"),
    ],
)  # fmt: skip
def test_a_utf8_value_that_is_not_json_is_said_so_in_words_with_the_position(
    value: bytes, detail: str
) -> None:
    """A user trial: the detail was orjson's "the value is not UTF-8 JSON: unexpected
    character, expected a JSON value: line 1 column 1 (char 0)", which named neither the
    character met nor what was wrong in words."""
    result = parse(value)
    assert isinstance(result, Rejection)
    assert result.code == "invalid_json"
    assert result.detail == f"the value is not JSON: {detail}"


def test_a_dead_letter_of_a_huge_value_that_is_not_json_keeps_its_headers_short() -> None:
    """The contract's five headers, with a detail of one line within the limit of the
    detail (model.DETAIL_MAX characters, oversize.DETAIL_BYTES bytes for a cut dead
    letter), however long the value and wherever the fault: it quotes one character."""
    value = b'{"data": "' + "\u00e9".encode() * 500_000 + b'"\n, "ts": \x01}'
    result = parse(value)
    assert isinstance(result, Rejection)
    rec = SimpleNamespace(topic="conversations", partition=3, offset=41)
    headers = dict(dead_letter_headers(rec, result))
    assert headers == {
        "expiry-error": b"invalid_json",
        "expiry-error-detail": b"the value is not JSON: '\\x01' at line 2 column 9 "
        b"(char 500020), where a JSON value should be",
        "expiry-source-topic": b"conversations",
        "expiry-source-partition": b"3",
        "expiry-source-offset": b"41",
    }
    detail = headers["expiry-error-detail"]
    assert len(detail.decode()) <= DETAIL_MAX
    assert len(detail) <= DETAIL_BYTES
    assert b"\n" not in detail


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "invalid_json"),
        (b"", "invalid_json"),
        (b'{"category": "conversation"', "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"conversation"', "not_an_object"),
        (event(category=...), "missing_field"),
        (event(record_id=...), "missing_field"),
        (event(org=...), "missing_field"),
        (event(ts=...), "missing_field"),
        (event(ts=None), "missing_field"),
        (event(org=None), "missing_field"),
        # A missing field is named before a malformed one, whatever their order.
        (event(category=7, org=...), "missing_field"),
        (event(record_id="", ts=...), "missing_field"),
        (event(org=7), "invalid_field"),
        (event(bot=["b"]), "invalid_field"),
        (event(record_id=""), "invalid_field"),
        (event(org=""), "invalid_field"),
        (event(bot=""), "invalid_field"),
        (event(bot="b" * (MAX_ID_CHARS + 1)), "invalid_field"),
        (event(record_id="x" * (MAX_ID_CHARS + 1)), "invalid_field"),
        (event(env="prod"), "invalid_field"),
        (event(env="LIVE"), "invalid_field"),
        (event(env=1), "invalid_field"),
        (event(category="invoice"), "unknown_category"),
        (event(op="erase"), "unknown_op"),
        (event(op="CREATE"), "unknown_op"),
        (event(op=1), "invalid_field"),
        (event(ts=1.5), "invalid_field"),
        (event(ts=True), "invalid_field"),
        (event(ts=[NOW]), "invalid_field"),
        (event(ts="yesterday"), "bad_timestamp"),
        (event(ts="2026-11-18T11:06:40"), "bad_timestamp"),  # no offset
        (event(ts=MIN_TS_MS - 1), "bad_timestamp"),
        (event(ts=NOW + SKEW + 1), "future_timestamp"),
        (event(ts="2026-11-18T11:11:40.001Z"), "future_timestamp"),
        (event(event_id=[1]), "invalid_field"),
        (event(event_id={"id": 1}), "invalid_field"),
        (event(event_id=True), "invalid_field"),
        (event(event_id=1.5), "invalid_field"),
    ],
)
def test_each_bad_event_gets_the_contracts_dead_letter_code(
    value: bytes | None, expected: str
) -> None:
    assert code(value) == expected


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (b"[1, 2]", "the value is a JSON array, not an object"),
        (b'"conversation"', "the value is a JSON string, not an object"),
        (b"null", "the value is a JSON null, not an object"),
        (b"42", "the value is a JSON integer, not an object"),
        (b"4.2", "the value is a JSON number, not an object"),
        (b"true", "the value is a JSON boolean, not an object"),
        (event(org=42), "field 'org' must be a string, got integer"),
        (event(bot=["b"]), "field 'bot' must be a string, got array"),
        (event(record_id={"id": 1}), "field 'record_id' must be a string, got object"),
        (event(env=False), "field 'env' must be a string, got boolean"),
        (event(ts=1.5), "field 'ts' must be a string or an integer, got number"),
        (event(ts=True), "field 'ts' must be a string or an integer, got boolean"),
        (event(ts=[NOW]), "field 'ts' must be a string or an integer, got array"),
    ],
)
def test_a_wrong_type_is_named_as_json_names_it(value: bytes, detail: str) -> None:
    """A user trial: the producer's team read "the value is a JSON NoneType", "got int",
    "got bool", "JSON str": Python's names, which a team producing JSON from another
    language must translate. They are JSON Schema's names (schemas/ uses them)."""
    result = parse(value)
    assert isinstance(result, Rejection)
    assert result.detail == detail


def test_a_null_value_says_how_to_ask_for_an_erasure() -> None:
    """A user trial: a producer used to compacted topics sends a null value (a Kafka
    tombstone) to erase a record; the dead letter said only "the message has no value
    (null)", and the erasure the producer meant was never carried out. The detail says
    what this service takes instead."""
    result = parse(None)
    assert isinstance(result, Rejection)
    assert result.code == "invalid_json"
    assert result.detail == (
        "the message has no value (null); a null is no erasure request on an input topic: "
        'to erase a record, send an event with "op": "delete"'
    )


def test_the_details_name_what_is_wrong() -> None:
    details = {
        parse(v).detail  # type: ignore[union-attr]
        for v in (event(ts=...), event(env="prod"), event(op="erase"), event(event_id=[1]))
    }
    assert details == {
        "field 'ts' is required",
        "field 'env' must be 'live' or 'draft', got 'prod'",
        "op 'erase' is not one of create, touch, delete",
        "field 'event_id' must be a string or an integer",
    }
    future = parse(event(ts=NOW + SKEW + 1))
    assert isinstance(future, Rejection)
    assert "more than 300 s ahead" in future.detail


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # The defaults: bot "_", env "live", op "create"; no event id, no data.
        (event(), InputEvent(Identity("acme", "_", "live", "conversation", "r1"), "create",
                             NOW - 1_000)),
        # Every field given, an integer event id carried as text, any data carried as is.
        (event(bot="b", env="draft", op="touch", category="session", event_id=42,
               data={"text": ["hi", None]}),
         InputEvent(Identity("acme", "b", "draft", "session", "r1"), "touch", NOW - 1_000,
                    "42", {"text": ["hi", None]})),
        # RFC 3339 with an offset (the slow path): the same instant in milliseconds.
        (event(ts="2026-11-18T12:06:39.5+01:00", op="delete", event_id="e-1"),
         InputEvent(Identity("acme", "_", "live", "conversation", "r1"), "delete", NOW - 500,
                    "e-1")),
        # Nulls of optional fields are their defaults.
        (event(bot=None, env=None, op=None, event_id=None),
         InputEvent(Identity("acme", "_", "live", "conversation", "r1"), "create",
                    NOW - 1_000)),
        # The edges: exactly the allowed skew ahead, the earliest time, the longest id.
        (event(ts=NOW + SKEW), InputEvent(Identity("acme", "_", "live", "conversation", "r1"),
                                          "create", NOW + SKEW)),
        (event(ts="2026-11-18T11:11:40Z"),
         InputEvent(Identity("acme", "_", "live", "conversation", "r1"), "create", NOW + SKEW)),
        (event(ts=MIN_TS_MS), InputEvent(Identity("acme", "_", "live", "conversation", "r1"),
                                         "create", MIN_TS_MS)),
        (event(record_id="x" * MAX_ID_CHARS),
         InputEvent(Identity("acme", "_", "live", "conversation", "x" * MAX_ID_CHARS), "create",
                    NOW - 1_000)),
    ],
)  # fmt: skip
def test_an_accepted_event_is_exactly_what_it_says(value: bytes, expected: InputEvent) -> None:
    result = parse(value)
    assert result == expected
    assert isinstance(result, InputEvent)
    assert result.identity.parts() == expected.identity.parts()
    assert slow_path(orjson.loads(value)) == expected


def slow_path(obj: dict[str, Any]) -> InputEvent | Rejection:
    return _validate(obj, categories=CATEGORIES, now_ms=NOW, max_skew_ms=SKEW)


_TEXT = st.one_of(
    st.sampled_from(["", "acme", "conversation", "session", "invoice", "live", "draft",
                     "create", "touch", "delete", "x" * MAX_ID_CHARS, "x" * (MAX_ID_CHARS + 1)]),
    st.text(max_size=4),
)  # fmt: skip
_VALUE = st.one_of(st.none(), _TEXT, st.integers(-5, 5), st.booleans(), st.floats(0, 1))
_TS = st.one_of(
    st.none(),
    st.integers(MIN_TS_MS - 1, MIN_TS_MS + 1),
    st.integers(NOW - 10, NOW + SKEW + 10),
    st.sampled_from(["2026-11-18T11:06:40Z", "2026-11-18T11:11:40.001Z", "soon", True, 1.0]),
)


@settings(max_examples=1000)
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "category": _TEXT, "record_id": _TEXT, "org": _TEXT, "bot": _VALUE, "env": _VALUE,
            "op": _VALUE, "ts": _TS, "event_id": _VALUE, "data": _VALUE,
        },
    )
)  # fmt: skip
def test_the_fast_path_answers_as_the_slow_one(fields: dict[str, Any]) -> None:
    """The fast path takes only what the slow path accepts, and makes the same event of it;
    whatever it is unsure of, the slow path answers (with the precise code)."""
    fast, slow = parse(orjson.dumps(fields)), slow_path(fields)
    assert type(fast) is type(slow)
    if isinstance(fast, InputEvent):
        assert isinstance(slow, InputEvent)
        assert fast == slow
        assert fast.identity.parts() == slow.identity.parts()
        assert fast.data == slow.data
    else:
        assert fast == slow


@pytest.mark.parametrize(
    "value",
    [
        event(),
        event(bot="b", env="draft", op="touch", category="session", event_id=42, data=[1]),
        event(op="delete", event_id="e-1", ts=MIN_TS_MS),
        event(ts=NOW + SKEW, record_id="x" * MAX_ID_CHARS),
        event(org="o", bot="b", record_id="r"),  # the shortest ids
        event(org="o" * MAX_ID_CHARS, bot="b" * MAX_ID_CHARS),  # and the longest
    ],
)
def test_a_well_formed_event_takes_the_fast_path(
    value: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest parses every event: the common ones, integer times with or without the
    optional fields, must not pay for the slow path's precise diagnosis."""
    import stream_expiry.model

    def slow(*args: object, **kwargs: object) -> None:
        raise AssertionError("the slow path was taken")

    monkeypatch.setattr(stream_expiry.model, "_validate", slow)
    assert isinstance(parse(value), InputEvent)


def test_an_integer_orjson_would_round_is_dead_lettered_never_stored_rounded() -> None:
    """orjson reads an integer outside [-2**63, 2**64) as a float: a 30-digit number in
    ``data`` was stamped as 1.2345678901234568e+29 in a trial, and an integer ``ts`` that long
    was called a float. The edges of the range are carried exactly; digits in text are text."""

    def raw(data: str, ts: str = str(NOW - 1_000)) -> bytes:
        return b'{"category":"conversation","record_id":"r1","org":"acme","ts":%s,"data":%s}' % (
            ts.encode(),
            data.encode(),
        )

    edges = parse(raw('{"max":18446744073709551615,"min":[-9223372036854775808],"t":"1%s"}'
                      % ("0" * 30)))  # fmt: skip
    assert isinstance(edges, InputEvent)
    assert edges.data == {"max": 2**64 - 1, "min": [-(2**63)], "t": "1" + "0" * 30}
    over = parse(raw('{"jane@example.com":{"b":[1,18446744073709551616]}}'))
    assert over == Rejection(  # the keys are not named: they may be personal data
        "invalid_field",
        "field 'data' holds an integer beyond 64 bits (3 level(s) down), which would be kept "
        "as a rounded float; send it as a string",
    )
    under = parse(raw("[-9223372036854775809]"))
    assert isinstance(under, Rejection)
    assert "(1 level(s) down)" in under.detail
    itself = parse(raw("-9223372036854775809"))
    assert isinstance(itself, Rejection)
    assert "'data' holds an integer beyond 64 bits (itself)" in itself.detail
    assert parse(raw("1", ts="9" * 23)) == Rejection(
        "bad_timestamp", "field 'ts' is out of range (an integer beyond 64 bits)"
    )


@pytest.mark.parametrize(
    ("category", "detail"),
    [
        (
            "conversations",
            "category 'conversations' is not configured; did you mean 'conversation'?",
        ),
        ("Session", "category 'Session' is not configured; did you mean 'session'?"),
        ("sesion", "category 'sesion' is not configured; did you mean 'session'?"),
        ("invoice", "category 'invoice' is not configured"),
    ],
)
def test_an_unknown_category_names_the_configured_one_it_is_close_to(
    category: str, detail: str
) -> None:
    """A producer that sent the topic's name (``conversations``) or a capital letter got
    "category 'conversations' is not configured" on every dead letter, and had to find the
    configured names elsewhere (a trial: ``eror``)."""
    result = parse(event(category=category))
    assert isinstance(result, Rejection)
    assert (result.code, result.detail) == ("unknown_category", detail)


TWICE = b'"category":"conversation","record_id":"r1","org":"acme"'


@pytest.mark.parametrize(
    "ts", [str(NOW - 1_000).encode(), b'"2026-11-18T11:06:39Z"'], ids=["fast", "slow"]
)
def test_a_field_given_twice_is_read_as_its_last_value(ts: bytes) -> None:
    """On both paths, as orjson (and JavaScript's ``JSON.parse``) reads it: the event is
    globex's, and an erasure request followed by ``"op":"create"`` is a create."""
    value = b"{" + TWICE + b',"ts":' + ts + b',"op":"delete","org":"globex","op":"create"}'
    result = parse(value)
    assert isinstance(result, InputEvent)
    assert (result.identity.org, result.op) == ("globex", "create")
    assert result.ts == NOW - 1_000


def test_a_name_given_twice_in_data_is_stamped_once_with_its_last_value() -> None:
    """The stamp is written from the parsed data, so the first value is in no stamp, and
    a redacted path leaves neither behind."""
    value = b"{" + TWICE + b',"ts":1,"data":{"email":"first@x","email":"last@x","n":1}}'
    result = parse(value)
    assert isinstance(result, InputEvent)
    stamp = Stamp(result.identity, result.ts, None, None, None)
    assert orjson.loads(encode_stamp(stamp, result.data))["data"] == {"email": "last@x", "n": 1}
    redacted, removed = Redactor.from_config({"conversation": ["email"]}).redact(
        "conversation", result.data
    )
    written = encode_stamp(stamp, redacted, removed)
    assert b"@x" not in written
    assert orjson.loads(written)["data"] == {"n": 1}

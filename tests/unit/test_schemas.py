"""The JSON Schemas in schemas/ describe what the code really reads and writes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from stream_expiry.codec import stamp_fields
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone, parse_event
from stream_expiry.timeutil import MAX_TS_MS, MIN_TS_MS

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
ROOT = SCHEMAS.parent


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


IDENT = Identity("acme", "support", "draft", "conversation", "c/1 %é")
LIVE = Stamp(IDENT, 1_795_000_000_000, 1_795_000_600_000, 600_000, "org")
NEVER = Stamp(IDENT, 1_795_000_000_000, None, None, None)
UNSEEN = Stamp(IDENT, None, None, None, None)


@pytest.mark.parametrize("stamp", [LIVE, NEVER, UNSEEN])
@pytest.mark.parametrize("reason", ["ttl", "explicit"])
def test_tombstones_match_their_schema(stamp: Stamp, reason: str) -> None:
    body = orjson.loads(encode_tombstone(stamp, reason=reason, emitted_at=1_795_000_600_004))  # type: ignore[arg-type]
    jsonschema.validate(body, schema("tombstone.schema.json"))


@pytest.mark.parametrize("stamp", [LIVE, NEVER])
def test_stamps_match_their_schema(stamp: Stamp) -> None:
    body = orjson.loads(encode_stamp(stamp, {"any": ["payload"]}))
    jsonschema.validate(body, schema("stamped.schema.json"))


def test_a_stamp_without_its_data_for_its_size_matches_the_schema_and_says_why() -> None:
    body = orjson.loads(encode_stamp(LIVE, None, data_dropped="message_too_large"))
    jsonschema.validate(body, schema("stamped.schema.json"))
    assert body["data_dropped"] == "message_too_large"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "data_dropped": "other"}, schema("stamped.schema.json"))


@pytest.mark.parametrize(
    "event",
    [
        {"category": "conversation", "record_id": "1", "org": "a", "ts": 1_795_000_000_000},
        {
            "category": "session",
            "record_id": "1",
            "org": "a",
            "ts": "2026-11-18T12:00:00+01:00",
            "op": "touch",
            "env": "draft",
            "bot": "b",
            "event_id": 7,
            "data": None,
            "extra": 1,
        },
        # a null optional field counts as absent (a producer's serializer writes them)
        {
            "category": "session",
            "record_id": "1",
            "org": "a",
            "ts": 1_795_000_000_000,
            "bot": None,
            "env": None,
            "op": None,
            "event_id": None,
        },
        # the earliest epoch milliseconds the parser takes (year 1)
        {"category": "conversation", "record_id": "1", "org": "a", "ts": MIN_TS_MS},
    ],
)
def test_events_the_parser_accepts_match_the_input_schema(event: dict[str, Any]) -> None:
    parsed = parse_event(
        orjson.dumps(event),
        categories=("conversation", "session"),
        now_ms=1_795_000_000_000,
        max_skew_ms=300_000,
    )
    assert not hasattr(parsed, "code"), parsed
    jsonschema.validate(event, schema("input-event.schema.json"))


@pytest.mark.parametrize(
    "event",
    [
        {"record_id": "1", "org": "a", "ts": 1},
        {"category": "conversation", "record_id": "", "org": "a", "ts": 1},
        {"category": "conversation", "record_id": "1", "org": "a", "ts": 1, "op": "explode"},
        {"category": "conversation", "record_id": "1", "org": "a", "ts": 1, "env": "prod"},
        {"category": "conversation", "record_id": "1", "org": "a", "ts": True},
        # epoch milliseconds out of years 1 to 9999 (a trial's 10**20 was valid by the schema)
        {"category": "conversation", "record_id": "1", "org": "a", "ts": MIN_TS_MS - 1},
        {"category": "conversation", "record_id": "1", "org": "a", "ts": MAX_TS_MS + 1},
    ],
)
def test_events_the_schema_rejects_are_dead_lettered(event: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(event, schema("input-event.schema.json"))
    parsed = parse_event(
        orjson.dumps(event), categories=("conversation",), now_ms=10, max_skew_ms=0
    )
    assert hasattr(parsed, "code")


def test_the_example_config_matches_the_config_schema() -> None:
    config = tomllib.loads((ROOT / "examples" / "expiry.toml").read_text())
    jsonschema.validate(config, schema("config.schema.json"))


def test_holds_and_audit_entries_match_their_schemas() -> None:
    from stream_expiry.codec import encode_deferral, encode_hold_audit
    from stream_expiry.holds import Hold, encode_hold, parse_hold

    hold = Hold("h1", "acme", "b1", None, None, "r1", "case 7", 1_795_000_000_000)
    body = orjson.loads(encode_hold(hold))
    jsonschema.validate(body, schema("hold.schema.json"))
    assert parse_hold(b"h1", encode_hold(hold)) == hold
    jsonschema.validate(
        orjson.loads(encode_hold_audit("hold_placed", hold.as_dict(), 1_795_000_000_001)),
        schema("audit.schema.json"),
    )
    ident = Identity("acme", "b1", "live", "conversation", "r1")
    held = Stamp(ident, 1, 60_001, 60_000, "org", erase_at=3)
    entry = orjson.loads(encode_deferral(held, "explicit", ["h1"], 1_795_000_000_002))
    jsonschema.validate(entry, schema("audit.schema.json"))
    stamp_body = orjson.loads(encode_stamp(held))
    jsonschema.validate(stamp_body, schema("stamped.schema.json"))
    assert stamp_body["erase_requested_at"] == "1970-01-01T00:00:00.003Z"
    reborn = orjson.loads(
        encode_stamp(Stamp(ident, 9, 60_009, 60_000, "org", previous_deleted_at=4))
    )
    jsonschema.validate(reborn, schema("stamped.schema.json"))
    assert reborn["previous_deleted_at"] == "1970-01-01T00:00:00.004Z"
    assert "previous_deleted_at" not in stamp_body
    # What restore and replay read back of it (a stamp restored without it would let a
    # redelivered create of the deleted life move the new one back).
    assert (
        stamp_fields(encode_stamp(Stamp(ident, 9, 60_009, 60_000, "org", previous_deleted_at=4)))[5]
        == 4
    )


def test_a_stamp_keeping_lives_a_hold_kept_matches_its_schema_and_reads_back() -> None:
    """The earlier lives a legal hold keeps travel on the new life's stamp: restore,
    replay and ``status`` read them back exactly, and a schema checks them."""
    from stream_expiry.codec import decode_stamp

    ident = Identity("acme", "b1", "live", "session", "s1")
    lives = ((1_000, 61_000, 60_000, "org", None), (70_000, 130_000, 60_000, "bot", 90_000))
    stamp = Stamp(ident, 200_000, 260_000, 60_000, "org", previous_deleted_at=99_999,
                  held_lives=lives)  # fmt: skip
    body = orjson.loads(encode_stamp(stamp))
    jsonschema.validate(body, schema("stamped.schema.json"))
    assert [life["erase_requested_at"] for life in body["held_lives"]] == [
        None,
        "1970-01-01T00:01:30.000Z",
    ]
    assert stamp_fields(encode_stamp(stamp))[6] == lives
    assert decode_stamp(ident.key, encode_stamp(stamp)) == stamp
    assert "held_lives" not in orjson.loads(encode_stamp(stamp._replace(held_lives=())))

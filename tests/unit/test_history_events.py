"""How ``history`` orders a record's events and finds its dead letters (pure parts)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson

from stream_expiry.history import _in_order, _names
from stream_expiry.model import Identity


def _e(kind: str, topic: str, partition: int, offset: int, at: str) -> dict[str, Any]:
    return {"kind": kind, "topic": topic, "partition": partition, "offset": offset, "at": at}


def test_a_partitions_log_order_stands_against_an_earlier_timestamp_after_it() -> None:
    """A stamp timestamped 3 ms after the null that follows it in the log was listed after
    the null: the record read as created again after its deletion (a trial)."""
    events = [
        _e("stamp", "stamped", 0, 5, "2026-12-05T10:00:00.003Z"),
        _e("deleted", "stamped", 0, 6, "2026-12-05T10:00:00.000Z"),
        _e("tombstone", "tombstones", 0, 9, "2026-12-05T10:00:00.000Z"),
        _e("receipt", "receipts", 1, 2, "2026-12-05T10:00:01.000Z"),
        _e("stamp", "stamped", 1, 0, "2026-12-05T09:59:59.000Z"),
    ]
    ordered = [(e["topic"], e["partition"], e["offset"]) for e in _in_order(events)]
    assert ordered == [
        ("stamped", 1, 0),
        ("tombstones", 0, 9),
        ("stamped", 0, 5),
        ("stamped", 0, 6),
        ("receipts", 1, 2),
    ]


def test_a_dead_letter_with_a_null_bot_or_env_names_the_default_one() -> None:
    """The service reads ``"bot": null`` as the default bot ``_`` (and a null env as
    live); history looked for a bot named None and missed the rejected erasure."""
    identity = Identity("acme", "_", "live", "conversation", "r1")
    body = {"org": "acme", "bot": None, "env": None, "category": "conversation",
            "record_id": "r1", "op": "delete"}  # fmt: skip
    assert _names(SimpleNamespace(value=orjson.dumps(body)), identity)
    assert _names(SimpleNamespace(value=orjson.dumps({**body, "bot": "_"})), identity)
    del body["bot"]
    assert _names(SimpleNamespace(value=orjson.dumps(body)), identity)
    assert not _names(SimpleNamespace(value=orjson.dumps({**body, "bot": "b2"})), identity)

"""Events without a Kafka key: the producer's partitioner spreads them over the partitions,
each with a processor of its own, so a record's delete can reach one that never saw its
create. A trial: an erasure asked before the record's expiry named no life, the life ran
on to its expiry (its data on expiry.stamped), and one store's receipt said ``ttl``, the
other's ``explicit``. The service says it once per input topic."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import orjson

from stream_expiry.config import parse_config
from stream_expiry.policy import Resolution
from stream_expiry.service import Service
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

if TYPE_CHECKING:
    import pytest

NOW = 1_796_369_399_212
CATEGORIES = frozenset({"conversation"})


def _processor(topic: str) -> PartitionProcessor:
    return PartitionProcessor(
        topic,
        0,
        PartitionStore(MemoryKV()),
        resolve=lambda _i, _t: Resolution(86_400_000, "org"),
        sliding=frozenset(),
        categories=CATEGORIES,
        max_skew_ms=0,
        now_ms=NOW,
    )


def _record(topic: str, offset: int, key: bytes | None, **body: Any) -> SimpleNamespace:
    event = {"category": "conversation", "org": "acme", "record_id": "r1", "ts": NOW - 1_000}
    return SimpleNamespace(
        topic=topic, partition=0, offset=offset, key=key, value=orjson.dumps(event | body)
    )


def test_events_without_a_key_are_said_once_per_input_topic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conv, errs = _processor("conversations"), _processor("errors")
    keyed = conv.process([_record("conversations", 3, b"acme/r1")], NOW)
    assert keyed.unkeyed is None
    first = _record("conversations", 4, None, record_id="r2")
    effects = conv.process([first, _record("conversations", 5, None, record_id="r3")], NOW)
    assert effects.unkeyed is first
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        service._count(keyed)
        service._count(effects)
        service._count(conv.process([_record("conversations", 6, None, record_id="r4")], NOW))
        service._count(errs.process([_record("errors", 0, None)], NOW))
    said = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in said] == [
        "events without a key on conversations",
        "events without a key on errors",
    ]
    assert "(first seen at conversations[0]@4; said once)" in said[0]
    assert "key every event of a record alike" in said[0]

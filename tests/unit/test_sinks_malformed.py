"""A sink's malformed messages: the first of a topic said with what to do, the others
counted and said at most once a minute, however many there are (a trial: a sink pointed at
an input topic logged one warning per message, without bound)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson
import pytest

from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.sinks._malformed import MalformedReport, Role
from stream_expiry.sinks.framework import Sink, SinkConfig
from stream_expiry.sinks.postgres import PostgresStore
from stream_expiry.sinks.store import MemoryStore

TOMBSTONES = Role(
    "tombstones", "--tombstones-topic", "the service's tombstone events", "expiry.tombstones"
)
INPUT_EVENT = orjson.dumps(
    {"category": "conversation", "org": "acme", "record_id": "r1", "ts": 1_767_225_600_000}
)
FIRST = (
    "skipping a malformed message at bot-events[1]@0: field 'reason' must be 'ttl' or "
    "'explicit', got None (it looks like an input event); the sink reads bot-events as its "
    "tombstones topic, for the service's tombstone events (expiry.tombstones unless the "
    "service's [topics] tombstones says otherwise): if bot-events is not that topic, give the "
    "sink the right --tombstones-topic, or the service's --config (which refuses its input "
    "topics here). More malformed messages on bot-events are counted and said at most once "
    "every 60 s"
)  # fmt: skip
WHY = "field 'reason' must be 'ttl' or 'explicit', got None"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stream_expiry.sinks"]


def test_the_first_is_said_with_what_to_do_the_others_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    report = MalformedReport({"bot-events": TOMBSTONES}, clock=clock)
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    for offset in range(1000):
        clock.now = 1000 + offset * 0.05  # 1,000 messages in 50 s
        report.skipped("bot-events", 1, offset, WHY, INPUT_EVENT)
    report.tick()
    assert said(caplog) == [FIRST]
    clock.now = 1060  # a minute after the first word
    report.tick()
    assert said(caplog)[1:] == [
        "skipped 999 more malformed messages on bot-events in 60 s (the latest at "
        f"bot-events[1]@999: {WHY}); the first was said with what to do"
    ]
    clock.now += 1
    report.skipped("bot-events", 1, 1000, WHY, INPUT_EVENT)
    report.tick()  # not a minute yet: kept for later
    assert len(said(caplog)) == 2
    report.flush()  # at stop: said whatever the time
    assert said(caplog)[2:] == [
        "skipped 1 more malformed message on bot-events in 1 s (the latest at "
        f"bot-events[1]@1000: {WHY}); the first was said with what to do"
    ]
    report.flush()
    report.tick()
    assert len(said(caplog)) == 3  # nothing more to say


def test_each_topic_is_said_on_its_own_and_a_stranger_is_not_called_an_input(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    report = MalformedReport({"bot-events": TOMBSTONES}, clock=clock)
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    report.skipped("bot-events", 0, 7, WHY, b'{"reason": "gone"}')
    report.skipped("other", 2, 3, "the value is a JSON array, not an object", b"[]")
    report.skipped("other", 2, 4, "the value is a JSON array, not an object", b"[]")
    first, other = said(caplog)
    assert first.startswith(
        f"skipping a malformed message at bot-events[0]@7: {WHY}; the sink reads bot-events"
    )
    assert other == (
        "skipping a malformed message at other[2]@3: the value is a JSON array, not an object. "
        "More malformed messages on other are counted and said at most once every 60 s"
    )
    clock.now += 60
    report.tick()
    assert said(caplog)[2].startswith("skipped 1 more malformed message on other in 60 s")


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = -1


@pytest.mark.asyncio
async def test_a_sink_reading_input_events_as_tombstones_says_it_once_and_counts_them_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What the trial saw, through the sink's own decoding: 300 input events read as
    tombstones gave 300 warnings."""
    config = SinkConfig(
        bootstrap_servers="unused:1",
        group_id="g",
        stamped_topic="st",
        tombstones_topic="bot-events",
    )
    sink = Sink(MemoryStore(), config)
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    recs = [Rec("bot-events", 1, offset, b"k", INPUT_EVENT) for offset in range(300)]
    decoded = await sink._decode_batch({TP("bot-events", 1): recs})
    assert (decoded.invalid, sink.metrics["invalid_total"]) == (300, 300)
    assert said(caplog) == [FIRST]
    sink.malformed.flush()
    assert said(caplog)[1].startswith(
        "skipped 299 more malformed messages on bot-events in 0 s (the latest at "
        f"bot-events[1]@299: {WHY})"
    )


def test_records_the_store_cannot_represent_are_said_once_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As malformed messages: the first in full, with the record's ref, then a count at
    most once a minute, apart from the malformed ones of the same topic."""
    clock = Clock()
    report = MalformedReport({}, clock=clock)
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    for offset in range(500):
        report.unrepresentable("pg", "expiry.stamped", 0, offset, f"ref{offset}")
    report.skipped("expiry.stamped", 0, 500, WHY, None)  # malformed: said on its own
    first, malformed = said(caplog)
    assert first.startswith(
        "store pg cannot represent the identity of the record at expiry.stamped[0]@0; skipped"
    )
    assert first.endswith(
        "More such records on expiry.stamped are counted and said at most once every 60 s"
    )
    assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]
    assert getattr(caplog.records[0], "record", None) == "ref0"
    assert malformed.startswith("skipping a malformed message at expiry.stamped[0]@500")
    clock.now += 59
    report.tick()
    assert len(said(caplog)) == 2
    clock.now += 1
    report.tick()
    assert said(caplog)[2:] == [
        "skipped 499 more messages on expiry.stamped of records whose identity store pg "
        "cannot represent, in 60 s (the latest at expiry.stamped[0]@499 (record ref499)); the "
        "first was said with what it means"
    ]
    assert caplog.records[2].levelname == "ERROR"


@pytest.mark.asyncio
async def test_a_postgres_sink_reading_many_records_it_cannot_hold_says_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through the sink's own decoding: 300 stamps of a record with a NUL in its id were
    300 error lines; each is still counted."""
    sink = Sink(PostgresStore(), SinkConfig(bootstrap_servers="unused:1", group_id="g"))
    nul = Identity("acme", "_", "live", "conversation", "r\x001")
    stamp = encode_stamp(Stamp(nul, 1_767_225_600_000, None, None, None))
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    recs = [Rec("expiry.stamped", 0, offset, nul.key.encode(), stamp) for offset in range(300)]
    await sink._decode_batch({TP("expiry.stamped", 0): recs})
    assert sink.metrics["unrepresentable_total"] == 300
    [first] = said(caplog)
    assert first.startswith("store postgres cannot represent the identity of the record at "
                            "expiry.stamped[0]@0; skipped")  # fmt: skip
    sink.malformed.flush()  # at stop
    assert said(caplog)[1].startswith(
        "skipped 299 more messages on expiry.stamped of records whose identity store postgres "
        "cannot represent"
    )
    assert len(said(caplog)) == 2

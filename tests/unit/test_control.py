"""The control topics' readers, on batches built here (no broker: what a fetch returns)."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from stream_expiry.config import Topics, parse_config
from stream_expiry.control import ControlTopics
from stream_expiry.holds import Hold, HoldBook, encode_hold
from stream_expiry.policy import PolicyBook
from stream_expiry.stats import ServiceStats

HOLDS = Topics().holds


def _message(partition: int, offset: int, hold_id: str, placed: bool) -> ConsumerRecord[Any, Any]:
    value = (
        encode_hold(Hold(hold_id, "acme", None, None, None, None, "case", 0)) if placed else None
    )
    return ConsumerRecord(
        HOLDS, partition, offset, 0, 0, hold_id.encode(), value, None, len(hold_id),
        0 if value is None else len(value), [],
    )  # fmt: skip


@pytest.mark.asyncio
async def test_a_release_is_said_to_leave_its_hold_placed_only_once_its_batch_is_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fetch brings the nulls `hold release` wrote on both partitions: the hold is
    released, and nothing is said of it (a review: the first null warned that the other
    partition still placed the hold, which its own null released in the same batch). A
    null on one partition only, the hold placed on the other: said, naming it."""
    holds = HoldBook()
    absent = cast("Any", None)  # the readers and the producer: this batch is applied only
    control = ControlTopics(
        Topics(), PolicyBook(parse_config(""), {}), holds, ServiceStats(),
        policies=absent, holds_reader=absent, prod=absent,
    )  # fmt: skip
    p0, p1 = TopicPartition(HOLDS, 0), TopicPartition(HOLDS, 1)
    placed = {
        p0: [_message(0, 0, "everywhere", True), _message(0, 1, "half", True)],
        p1: [_message(1, 0, "everywhere", True), _message(1, 1, "half", True)],
    }
    await control._apply_holds(placed)  # what a poll does with a fetch
    assert None not in (holds.get("everywhere"), holds.get("half"))
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    released = {
        p0: [_message(0, 2, "everywhere", False), _message(0, 3, "half", False)],
        p1: [_message(1, 2, "everywhere", False)],
    }
    await control._apply_holds(released)
    assert holds.get("everywhere") is None
    assert holds.get("half") is not None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        f"legal hold half released at {HOLDS}[0]@3 stays active: it is placed on partition 1 "
        "too (written with another partitioner than Kafka's default); release it with "
        "`stream-expiry hold release half`, which nulls it on every partition"
    ]

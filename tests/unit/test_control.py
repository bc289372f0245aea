"""The control topics' readers, on batches built here (no broker: what a fetch returns)."""

from __future__ import annotations

import logging
from typing import Any, cast

import orjson
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from stream_expiry.config import Topics, parse_config
from stream_expiry.control import ControlTopics
from stream_expiry.holds import Hold, HoldBook, encode_hold
from stream_expiry.policy import PolicyBook
from stream_expiry.stats import ServiceStats

HOLDS = Topics().holds


def _record(topic: str, partition: int, offset: int, key: str, value: bytes | None) -> Any:
    return ConsumerRecord(  # timestamped by its offset: later on a partition, later in time
        topic, partition, offset, offset, 0, key.encode(), value, None, len(key),
        0 if value is None else len(value), [],
    )  # fmt: skip


def _message(partition: int, offset: int, hold_id: str, placed: bool) -> Any:
    hold = Hold(hold_id, "acme", None, None, None, None, "case", 0)
    return _record(HOLDS, partition, offset, hold_id, encode_hold(hold) if placed else None)


def _control(config: str = "", holds: HoldBook | None = None) -> ControlTopics:
    absent = cast("Any", None)  # the readers and the producer: batches are applied only
    return ControlTopics(
        Topics(), PolicyBook(parse_config(config), {}), HoldBook() if holds is None else holds, ServiceStats(),
        policies=absent, holds_reader=absent, prod=absent,
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
    control = _control(holds=holds)
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


@pytest.mark.asyncio
async def test_an_update_that_takes_values_of_its_scope_away_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ``default`` update for conversations only took the config file's defaults of
    sessions and errors away, and those records never expired, without a word (a trial)."""
    control = _control('[retention.defaults]\nsession = "90s"\nerror = "45s"\n')
    topic = Topics().policies
    value = orjson.dumps({"scope": "default", "ttl": {"conversation": "3m"}})
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_policies(
        {TopicPartition(topic, 0): [_record(topic, 0, 7, "default", value)]}
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        f"policy update default at {topic}[0]@7 replaces the scope's whole ttl map: session, "
        "error had a value there and now have none from this scope; send every category the "
        "scope should keep in one update (0 for one it should give no value: then this is not "
        "said)"
    ]


@pytest.mark.asyncio
async def test_a_hold_placed_again_after_a_release_in_the_same_read_is_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Released on one partition and placed again later in the same read: every start
    warned that the release left it placed elsewhere (a review)."""
    holds = HoldBook()
    control = _control(holds=holds)
    p0, p1 = TopicPartition(HOLDS, 0), TopicPartition(HOLDS, 1)
    await control._apply_holds({p0: [_message(0, 0, "h", True)], p1: [_message(1, 0, "h", True)]})
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_holds({p0: [_message(0, 1, "h", False), _message(0, 2, "h", True)]})
    assert holds.get("h") is not None
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []


@pytest.mark.asyncio
async def test_a_release_is_judged_on_the_whole_read_whatever_order_its_partitions_came_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One partition's null applied before the other partition's placement (a start's
    catch-up, partition 0 first): the hold is active once the read is applied, and its
    newest message is the release, so that is said (a trial's start said nothing)."""
    control = _control()
    p0, p1 = TopicPartition(HOLDS, 0), TopicPartition(HOLDS, 1)
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_holds(
        {
            p0: [_message(0, 0, "h", True), _message(0, 5, "h", False)],
            p1: [_message(1, 1, "h", True)],
        }
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(" stays active")[0] for w in warned] == [
        f"legal hold h released at {HOLDS}[0]@5"
    ]

"""What the service says when an input topic's partition count changes while it runs, or
differs among the inputs: the group follows the new count with a rebalance and nothing was
said, while the records alive then may have their later events read elsewhere."""

from __future__ import annotations

import logging

import pytest
from aiokafka import TopicPartition

from stream_expiry.config import parse_config
from stream_expiry.service import Service, partition_counts_said

COUNTS = {"conversations": 6, "sessions": 6, "errors": 6}


def test_equal_counts_unchanged_say_nothing() -> None:
    assert partition_counts_said({}, COUNTS) == []
    assert partition_counts_said(COUNTS, COUNTS) == []
    # A topic not known yet (0) is no change.
    assert partition_counts_said(COUNTS, {**COUNTS, "errors": 0}) == []


def test_partitions_added_while_running_are_said_with_what_they_do_and_the_counts() -> None:
    said = partition_counts_said(COUNTS, {**COUNTS, "sessions": 8})
    assert len(said) == 2, said
    assert said[0].startswith("input topic sessions has 8 partitions, 6 at the last assignment")
    assert "still ends at its old expiry" in said[0]
    assert said[1].startswith(
        "the input topics have different partition counts (conversations 6, errors 6, sessions 8)"
    )
    # Said once: the next assignment with the same counts says nothing more.
    assert partition_counts_said({**COUNTS, "sessions": 8}, {**COUNTS, "sessions": 8}) == []


def test_different_counts_are_said_at_the_first_assignment() -> None:
    said = partition_counts_said({}, {**COUNTS, "errors": 3})
    assert [s.split(" (")[0] for s in said] == ["the input topics have different partition counts"]


class _Consumer:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.counts.get(topic, 0)))

    def pause(self, *tps: TopicPartition) -> None:
        pass


@pytest.mark.asyncio
async def test_an_assignment_after_partitions_were_added_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rebalance that follows partitions added to an input topic (the consumer's
    metadata sees them) said only "revoked" and "assigned", as any rebalance."""
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    consumer = _Consumer(dict(COUNTS))
    service._consumer = consumer  # what assign asks of it
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        await service.assign([TopicPartition("sessions", 0)])
        assert not caplog.records
        consumer.counts["sessions"] = 8
        await service.assign([TopicPartition("sessions", 0), TopicPartition("sessions", 6)])
    said = [r.getMessage() for r in caplog.records]
    assert any(s.startswith("input topic sessions has 8 partitions, 6 at") for s in said), said

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


@pytest.mark.asyncio
async def test_an_instance_given_no_partitions_says_it_is_a_standby_once_a_stretch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An instance beyond the inputs' partition count is given nothing by its group: it is
    ready, and said nothing, so an operator could not tell a standby from an instance
    stuck joining (the sinks and rekey say it). Said once at INFO with the inputs'
    partition counts, not again at each rebalance that keeps it empty; again once it had
    partitions and lost them."""
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    service._consumer = _Consumer({"conversations": 1, "sessions": 1, "errors": 1})
    standby = (
        "assigned no partitions: the group stream-expiry has more members than "
        "conversations (1), sessions (1) and errors (1) have partitions; this instance "
        "waits as a standby (ready, reading nothing) until a member leaves"
    )

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "no partitions" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="stream_expiry"):
        await service.assign([])
        assert said() == [standby]
        assert service.ready.is_set()
        await service.assign([])  # a rebalance that keeps it empty
        assert said() == [standby]
        await service.assign([TopicPartition("sessions", 0)])
        assert said() == [standby]
        await service.assign([])
    assert said() == [standby, standby]

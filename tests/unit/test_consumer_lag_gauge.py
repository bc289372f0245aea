"""The consumer lag gauges, kept once a second by the gauges' task, not only after a commit:
a gauge stood still while the loop committed nothing, and a partition that stopped being
read showed a lag of 0 while `status` counted 55 events unread (an operator's trial)."""

from __future__ import annotations

import anyio
import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry

from stream_expiry.config import parse_config
from stream_expiry.metrics import ServiceMetrics
from stream_expiry.service import Service, ServiceStats

TOPIC = "conversations"


class _Consumer:
    """A member assigned partition 0 only, whose last fetch said it ends at 12."""

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0)}

    def paused(self) -> set[TopicPartition]:
        return set()  # read: its end is its last fetch's

    def highwater(self, tp: TopicPartition) -> int:
        assert tp == TopicPartition(TOPIC, 0), f"{tp} is not assigned"  # as aiokafka asserts
        return 12

    def last_stable_offset(self, tp: TopicPartition) -> int:
        del tp
        return -1  # none given: the high watermark is the end


class _OneTurn(Exception):
    """Raised by the progress callback: the gauges' task has done one turn."""


@pytest.mark.asyncio
async def test_the_gauges_task_keeps_the_lag_of_the_assigned_partitions() -> None:
    metrics = ServiceMetrics(CollectorRegistry())

    def one_turn(stats: ServiceStats) -> None:
        del stats
        raise _OneTurn

    service = Service(
        parse_config(""), bootstrap_servers="k:1", environ={}, metrics=metrics,
        on_progress=one_turn,
    )  # fmt: skip
    service._consumer = _Consumer()
    service._reading.next_offset[(TOPIC, 0)] = 5  # read up to 5: 7 behind
    service._reading.next_offset[(TOPIC, 1)] = 3  # revoked: the consumer knows it no more
    with pytest.raises(_OneTurn), anyio.fail_after(10):
        await service._watch_gauges()

    def lag(partition: int) -> float | None:
        labels = {"topic": TOPIC, "partition": str(partition)}
        return metrics.registry.get_sample_value("stream_expiry_consumer_lag", labels)

    assert lag(0) == 7
    assert lag(1) is None  # never set for a partition not assigned

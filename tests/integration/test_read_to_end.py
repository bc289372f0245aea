"""``stream_expiry.kafka.read_to_end`` over a topic of many partitions, on the real broker.

The service reads its policies and holds topics whole at each start. With 48 partitions
each, the start spent 9.7 s there, every topic empty: one ``seek_to_beginning`` a partition,
each waiting for a turn of the consumer's fetch task (docs/BENCHMARKS.md, round 27)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from stream_expiry.kafka import consumer, ensure_topics, producer, read_to_end
from tests.conftest import make_topic_set

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

PARTITIONS = 48


class CountedSeeks:
    """The consumer's own ``seek_to_beginning``, counted: how many waits it costs."""

    def __init__(self, cons: AIOKafkaConsumer) -> None:
        self.calls: list[int] = []  # partitions in each call
        self._seek = cons.seek_to_beginning

    async def __call__(self, *partitions: Any) -> Any:
        self.calls.append(len(partitions))
        return await self._seek(*partitions)


async def test_every_partition_is_read_from_the_beginning_after_one_seek(broker: str) -> None:
    topic = make_topic_set().policies
    await ensure_topics(broker, [topic], partitions=PARTITIONS)
    async with producer(broker) as prod:
        for p in range(0, PARTITIONS, 3):
            await prod.send(topic, key=b"k%d" % p, value=b"v%d" % p, partition=p)
        await prod.flush()
    async with consumer(broker) as cons:
        seeks = CountedSeeks(cons)
        cons.seek_to_beginning = seeks
        read = {
            (tp.partition, r.value)
            async for batch in read_to_end(cons, topic, start={0: 1})
            for tp, records in batch.items()
            for r in records
        }
    # Partition 0 started past its only record; every other one from its beginning.
    assert read == {(p, b"v%d" % p) for p in range(3, PARTITIONS, 3)}
    assert seeks.calls == [PARTITIONS - 1]

"""The embedded broker and our Kafka adapters work end to end."""

from __future__ import annotations

import pytest

from stream_expiry.kafka import producer
from tests.conftest import TopicSet, read_topic

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_produce_and_read_back(broker: str, topics: TopicSet) -> None:
    async with producer(broker) as prod:
        for i in range(10):
            await prod.send_and_wait(topics.dlq, key=b"k%d" % i, value=b"v%d" % i)
    recs = await read_topic(broker, topics.dlq, until=lambda r: len(r) >= 10)
    assert sorted(r.value for r in recs) == sorted(b"v%d" % i for i in range(10))

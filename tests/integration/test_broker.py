"""The embedded broker and our Kafka adapters work end to end."""

from __future__ import annotations

import logging

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


@pytest.mark.asyncio
async def test_a_bootstrap_server_not_there_beside_one_that_is_still_logged(
    broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A start holds back the library's line of each bootstrap server it cannot connect
    to, for the start's own error to say it (stream_expiry.kafka._start); a start that
    succeeds through another server logs it as before: a dead broker among the configured
    ones is worth a line."""
    from stream_expiry.broker import free_port
    from stream_expiry.kafka import consumer

    dead = f"127.0.0.1:{free_port()}"
    said: list[str] = []
    with caplog.at_level(logging.ERROR, logger="aiokafka"):
        # aiokafka tries the servers in a random order: until it tried the dead one first
        # (one start in two; twenty all the other way is one in a million).
        for _ in range(20):
            async with consumer(f"{dead},{broker}"):
                pass
            said = [r.getMessage() for r in caplog.records if r.name == "aiokafka"]
            if said:
                break
    assert [m for m in said if m.startswith(f'Unable connect to "{dead}"')], said

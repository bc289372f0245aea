"""After replay's publish, what another writer put on expiry.stamped since replay's read
is the latest word again, on a real broker."""

from __future__ import annotations

import pytest

from stream_expiry.kafka import producer
from stream_expiry.replay import H_REPLAY
from stream_expiry.replay_mend import mend_superseded
from stream_expiry.state import MemoryKV
from tests.conftest import TopicSet, read_all

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

MINE = (H_REPLAY, b"this-run")
ANOTHER = (H_REPLAY, b"another-run")
NULL_HEADERS = [("expiry-deleted-at", b"1000"), ("expiry-reason", b"ttl")]


async def test_a_writers_message_before_replays_stamps_is_published_again_after_them(
    broker: str, topics: TopicSet
) -> None:
    """Partition 0 of expiry.stamped after replay read it up to offset 1: K's null by an
    instance, then a concurrent replay's stamp of K and this one's (both stale: a
    concurrent replay's stamp must not count as the writer's, or this replay would
    publish it again over the null); J's stamp by this replay, then the instance's; L's by
    this replay alone; M's by the instance alone (replay did not publish M)."""
    topic = topics.stamped
    log = [
        (b"K", b'{"v": 0}', []),  # read by replay
        (b"K", None, NULL_HEADERS),  # the instance's null, after the read
        (b"K", b'{"v": "a"}', [ANOTHER]),
        (b"K", b'{"v": "mine"}', [MINE]),
        (b"J", b'{"v": "mine"}', [MINE]),
        (b"J", b'{"v": "instance"}', []),
        (b"L", b'{"v": "mine"}', [MINE]),
        (b"M", b'{"v": "instance"}', []),
    ]
    published = MemoryKV()
    published.apply({b"K": b"", b"J": b"", b"L": b""}, ())
    async with producer(broker) as prod:
        for key, value, headers in log:
            await (
                await prod.send(
                    topic, key=key, value=value, partition=0, headers=headers, timestamp_ms=1000
                )
            )
        mended = await mend_superseded(broker, prod, topic, {0: 1}, MINE, published)
    assert mended == 1
    records = [r for r in await read_all(broker, topic) if r.partition == 0]
    assert len(records) == len(log) + 1
    copy = records[-1]
    assert (copy.key, copy.value, copy.timestamp) == (b"K", None, 1000)
    assert copy.headers == (*NULL_HEADERS, MINE)
    latest = {r.key: r.value for r in records}
    assert latest == {
        b"K": None,
        b"J": b'{"v": "instance"}',
        b"L": b'{"v": "mine"}',
        b"M": b'{"v": "instance"}',
    }


async def test_nothing_to_mend_publishes_nothing(broker: str, topics: TopicSet) -> None:
    published = MemoryKV()
    published.apply({b"L": b""}, ())
    async with producer(broker) as prod:
        await (await prod.send(topics.stamped, key=b"L", value=b"{}", partition=1, headers=[MINE]))
        assert await mend_superseded(broker, prod, topics.stamped, {1: 0}, MINE, published) == 0
    assert len(await read_all(broker, topics.stamped)) == 1

"""``stream_expiry.fetch.read_ranges`` against the real broker: every message of each range
once, in log order, however the broker splits its answers."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import anyio
import pytest
import pytest_asyncio
from aiokafka import TopicPartition

from stream_expiry.fetch import EMPTY_ROUNDS, read_ranges
from stream_expiry.kafka import consumer, ensure_topics, producer
from stream_expiry.testing.proxy import proxied_broker
from tests.conftest import make_topic_set, wait_for

if TYPE_CHECKING:
    from collections.abc import Mapping

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

PARTITIONS = 4


async def _fill(broker: str, topic: str, counts: list[int]) -> None:
    """``counts[p]`` messages on partition p: key ``p/i``, a value of ~1 KiB, a header."""
    async with producer(broker) as prod:
        for p, n in enumerate(counts):
            for i in range(n):
                key = f"{p}/{i}".encode()
                prod_headers = [("n", str(i).encode())]
                await prod.send(topic, key=key, value=key * 200, partition=p, headers=prod_headers)
                if i % 200 == 199:
                    await prod.flush()  # many small batches: many answers to read them
        await prod.flush()


async def _read(
    broker: str,
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int] | None = None,
    fetch_bytes: int = 4 * 1024 * 1024,
) -> tuple[dict[int, list[tuple[int, bytes | None]]], dict[int, int], int]:
    """What each partition handed out (offset, key), its last position, and how many
    answers came without records for a partition below its end while another had some."""
    got: dict[int, list[tuple[int, bytes | None]]] = {tp.partition: [] for tp in starts}
    positions: dict[int, int] = {}
    passed_over = 0
    async with consumer(broker) as cons:
        reader = read_ranges(cons, starts, ends=ends, fetch_bytes=fetch_bytes)
        async with contextlib.aclosing(reader):
            async for fetched in reader:
                taken = {part.tp: [(rec.offset, rec.key) for rec in part] for part in fetched}
                if any(taken.values()):
                    passed_over += sum(
                        1 for part in fetched if not taken[part.tp] and part.position < part.end
                    )
                for part in fetched:
                    p = part.tp.partition
                    got[p] += taken[part.tp]
                    assert part.position <= part.end or not taken[part.tp]
                    positions[p] = part.position
    return got, positions, passed_over


@pytest_asyncio.fixture
async def topic(broker: str) -> str:
    name = make_topic_set().stamped
    await ensure_topics(broker, [name], partitions=PARTITIONS)
    return name


async def test_every_message_once_in_order_when_answers_are_split(broker: str, topic: str) -> None:
    # Small answers: the broker fills each with one partition's messages while the others
    # come back empty, many times in a row; an empty answer must not end a partition that
    # still has messages.
    counts = [6000, 0, 400, 40]
    await _fill(broker, topic, counts)
    starts = {TopicPartition(topic, p): 0 for p in range(PARTITIONS)}
    got, positions, passed_over = await _read(broker, starts, fetch_bytes=1)
    for p, n in enumerate(counts):
        assert got[p] == [(i, f"{p}/{i}".encode()) for i in range(n)]
        assert positions.get(p, 0) == n
    assert passed_over > EMPTY_ROUNDS  # the answers really were split, often


async def test_a_range_starts_and_stops_where_it_is_told(broker: str, topic: str) -> None:
    await _fill(broker, topic, [50, 50, 0, 0])
    tp0, tp1, tp2 = (TopicPartition(topic, p) for p in range(3))
    got, positions, _ = await _read(
        broker, {tp0: 10, tp1: 0, tp2: 0}, ends={tp0: 30, tp1: 50, tp2: 0}
    )
    assert [offset for offset, _ in got[0]] == list(range(10, 30))
    assert [offset for offset, _ in got[1]] == list(range(50))
    assert got[2] == []
    assert positions == {0: 30, 1: 50}  # an empty range is not fetched at all


async def test_without_ends_a_range_stops_at_the_first_answers_high_watermark(
    broker: str, topic: str
) -> None:
    await _fill(broker, topic, [20, 0, 0, 0])
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    got, positions, _ = await _read(broker, {tp0: 5, tp1: 7})
    assert [offset for offset, _ in got[0]] == list(range(5, 20))
    assert got[1] == []  # past the end of an empty partition: nothing, and no wait
    assert positions == {0: 20, 1: 7}


@pytest.mark.timeout(60)
async def test_a_read_does_not_wait_behind_the_consumers_own_fetch(broker: str, topic: str) -> None:
    """The service reads its control topics to their end through the consumer that follows
    them, whose own fetch of an idle partition waits at the broker up to its
    ``fetch_max_wait_ms``. A broker answers one connection's requests in order: sent on
    that connection, with a metadata request before it, each read waited behind that
    fetch (95-190 ms of every loop turn, with the service's 100 ms). Here the consumer
    waits 5 s a fetch: the read must be back long before one of those has ended."""
    await _fill(broker, topic, [3, 0, 0, 0])
    tp = TopicPartition(topic, 0)
    async with consumer(broker, fetch_max_wait_ms=5_000) as cons:
        cons.assign([tp])
        await cons.seek_to_beginning(tp)
        taken = await cons.getmany(tp, timeout_ms=5_000)
        assert [r.offset for r in taken[tp]] == [0, 1, 2]  # its next fetches wait, idle
        for _ in range(3):
            with anyio.fail_after(2.5):  # half a fetch's wait: not behind one
                reader = read_ranges(cons, {tp: 3}, wait_ms=1)
                async with contextlib.aclosing(reader):
                    ends = [part.end async for fetched in reader for part in fetched]
            assert ends == [3]


async def test_a_read_cut_off_by_a_broker_outage_goes_on_where_it_was() -> None:
    """The connection is cut after the first round (as when a broker goes away) and stays
    cut through several tries, the lookups of the leaders included: the read keeps trying,
    and once the broker is back it loses nor repeats anything."""
    async with proxied_broker() as proxy:
        topic = make_topic_set().stamped
        await ensure_topics(proxy.address, [topic], partitions=2)
        await _fill(proxy.address, topic, [600, 600])
        got: list[tuple[int, int]] = []

        async def heal() -> None:
            # Back once the read has tried several times to connect while the broker was
            # away (a retry's first step is a metadata request: it fails too).
            await wait_for(lambda: proxy.refused >= 3)
            proxy.restore()

        async with consumer(proxy.address) as cons, anyio.create_task_group() as tg:
            starts = {TopicPartition(topic, p): 0 for p in range(2)}
            reader = read_ranges(cons, starts, fetch_bytes=1)
            async with contextlib.aclosing(reader):
                async for fetched in reader:
                    if not got:
                        proxy.cut()  # the next round is on its way: it fails
                        tg.start_soon(heal)
                    got += [(part.tp.partition, r.offset) for part in fetched for r in part]
        assert sorted(got) == [(p, o) for p in range(2) for o in range(600)]
        assert len(got) == len(set(got))
        assert proxy.accepted > 1  # it did connect again

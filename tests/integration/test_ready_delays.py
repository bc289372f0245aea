"""What held ``/readyz`` back after a restart, once the first tombstone no longer did: the
stores opened in the event loop, and the positioning's read of the partitions' ends
waited out a consumer fetch's ``fetch_max_wait_ms`` (bench.bench_restart, warm)."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from aiokafka import TopicPartition

from stream_expiry import service as service_module
from stream_expiry.kafka import consumer, producer
from stream_expiry.service import Service
from stream_expiry.state import restore_workers
from stream_expiry.state.restore_workers import restore_stores
from tests.integration.service_helpers import config_for, event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from stream_expiry.state.store import PartitionStore
    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

GATE_S = 5.0  # how long an open waits for the loop to answer before it gives up on it
AN_HOUR_MS = 3_600_000


async def test_the_event_loop_runs_while_the_stores_open(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening an assignment's stores held the loop (0.28 s for 12, a warm restart of
    1 M pending): no heartbeat, no ``/healthz``, no firing meanwhile. Each open here waits
    at a gate that only a task of the loop opens: opened in the loop, the gate stays shut
    (the open gives up after ``GATE_S``) and the test fails."""
    opening = threading.Event()
    loop_answered: list[bool] = []
    real_open_store = restore_workers._open_store

    def gated_open_store(path: str, grace_ms: int) -> PartitionStore:
        opening.set()
        loop_answered.append(ticked.wait(GATE_S))
        return real_open_store(path, grace_ms)

    ticked = threading.Event()
    monkeypatch.setattr(restore_workers, "_open_store", gated_open_store)

    async def tick() -> None:
        # The loop's part: it sees the open begun (a thread waits for that) and answers.
        if await anyio.to_thread.run_sync(opening.wait, GATE_S):
            ticked.set()

    sources = [(topics.conversations, p) for p in (0, 1)]
    paths = {s: str(tmp_path / f"{s[0]}-{s[1]}") for s in sources}
    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        stores, _result = await restore_stores(
            paths,
            bootstrap=broker,
            stamped=topics.stamped,
            tombstones=topics.tombstones,
            now_ms=0,
            grace_ms=1000,
        )
    for store in stores.values():
        store.close()
    assert loop_answered == [True, True], "the stores opened in the event loop, holding it"


@pytest.fixture
def slow_fetches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's readers have the broker hold a fetch with nothing to give an hour."""

    def slow_fetching(*args: Any, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        return consumer(*args, **{**kwargs, "fetch_max_wait_ms": AN_HOUR_MS})

    monkeypatch.setattr(service_module, "consumer", slow_fetching)


@pytest.mark.usefixtures("slow_fetches")
async def test_positioning_empty_partitions_does_not_wait_for_a_fetch(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The positioning learnt the partitions' ends from its reader's fetches, which a
    broker holds up to ``fetch_max_wait_ms`` when no partition asked has anything: 0.2 s
    of a warm restart before ``/readyz`` (its input topics empty). With that wait an hour,
    the positioning must still end at once."""
    config = config_for(topics, str(tmp_path / "state"))
    tps = [TopicPartition(t, p) for t in (topics.conversations, topics.sessions) for p in (0, 1)]
    async with _group_consumer(broker, config.group_id, tps) as cons:
        service = Service(config, bootstrap_servers=broker, environ={})
        service._consumer = cons
        try:
            with anyio.fail_after(10):
                await service._position(tps)
        except TimeoutError:
            pytest.fail("the positioning waited for a fetch's fetch_max_wait_ms")
        assert [await cons.position(tp) for tp in tps] == [0, 0, 0, 0]
        assert not service._reading.catching_up


@pytest.mark.usefixtures("slow_fetches")
async def test_positioning_puts_each_partition_where_it_was_committed(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The ends read without a consumer's fetch are the same as before: each partition
    resumes at its committed offset (the beginning without one), and its backlog reaches
    its stable end (one partition read halfway, one never committed, one empty)."""
    async with producer(broker) as prod:
        for i in range(4):
            key, value = event("conversation", f"c{i}")
            await prod.send_and_wait(topics.conversations, value, key, partition=0)
        key, value = event("session", "s")
        await prod.send_and_wait(topics.sessions, value, key, partition=0)
    config = config_for(topics, str(tmp_path / "state"))
    halfway = TopicPartition(topics.conversations, 0)
    uncommitted = TopicPartition(topics.sessions, 0)
    empty = TopicPartition(topics.conversations, 1)
    tps = [halfway, uncommitted, empty]
    async with _group_consumer(broker, config.group_id, tps) as cons:
        await cons.commit({halfway: 1})
        service = Service(config, bootstrap_servers=broker, environ={})
        service._consumer = cons
        with anyio.fail_after(30):
            await service._position(tps)
        assert [await cons.position(tp) for tp in tps] == [1, 0, 0]
        assert service._reading.catching_up[(halfway.topic, 0)][0] == 4  # the backlog: offsets 1-3
        assert service._reading.catching_up[(uncommitted.topic, 0)][0] == 1
        assert (empty.topic, 1) not in service._reading.catching_up


@contextlib.asynccontextmanager
async def _group_consumer(
    broker: str, group_id: str, tps: list[TopicPartition]
) -> AsyncIterator[Any]:
    """A consumer of the service's group, ``tps`` assigned by hand: the one whose committed
    offsets the positioning reads and whose positions it sets."""
    async with consumer(broker, group_id=group_id) as cons:
        cons.assign(tps)
        yield cons

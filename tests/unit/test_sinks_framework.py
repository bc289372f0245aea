"""The sink loop's order of writes, with a scripted consumer and producer (no broker):
store transaction, then receipts and compacted nulls acknowledged, then the offset commit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from stream_expiry.errors import StoreError
from stream_expiry.kafka import key_partition
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.murmur2 import partition_for
from stream_expiry.sinks.framework import BatchReport, Sink, SinkConfig
from stream_expiry.sinks.postgres import PostgresStore
from stream_expiry.sinks.store import MemoryStore

if TYPE_CHECKING:
    from stream_expiry.sinks._logic import Plan

T0 = 1_767_225_600_000
A = Identity("acme", "_", "live", "conversation", "r1")
S = Stamp(A, T0, T0 + 60_000, 60_000, "org")


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Journal:
    events: list[tuple[str, Any]] = field(default_factory=list)


class FakeBatch:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, timestamp: None, key: bytes | None, value: bytes | None) -> object:
        self.messages.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.messages)


class FakeProducer:
    """Scripts aiokafka's batch API; every topic has 4 partitions."""

    def __init__(self, journal: Journal) -> None:
        self.j = journal

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(
        self, batch: FakeBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        for key, value in batch.messages:
            self.j.events.append(("send", (topic, partition, key, value)))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def ack() -> None:  # the broker answers later; the sink must wait for it
            self.j.events.append(("ack", topic))
            fut.set_result(None)

        loop.call_soon(ack)
        return fut


class FakeConsumer:
    def __init__(self, journal: Journal, store: MemoryStore) -> None:
        self.j, self.store = journal, store

    async def commit(self, offsets: dict[TP, int]) -> None:
        # What the store holds at the moment of the commit is what a crash would keep.
        self.j.events.append(
            ("commit", (dict(offsets), dict(self.store.rows), len(self.store.published)))
        )


def sink_for(store: MemoryStore, reports: list[BatchReport]) -> Sink:
    config = SinkConfig(
        bootstrap_servers="unused:1",
        group_id="g",
        stamped_topic="st",
        tombstones_topic="tb",
        receipts_topic="rc",
        compacted={"conversation": "history"},
    )
    return Sink(store, config, clock=lambda: T0 + 120_000, on_batch=reports.append)


def batch() -> dict[Any, list[Any]]:
    key = A.key.encode()
    return {
        TP("st", 0): [
            Rec("st", 0, 5, key, encode_stamp(S, {"x": 1})),
            Rec("st", 0, 6, b"not/a/key", None),
        ],
        TP("tb", 1): [
            Rec("tb", 1, 9, key, encode_tombstone(S, reason="ttl", emitted_at=T0 + 60_000))
        ],
    }


@pytest.mark.asyncio
async def test_offsets_are_committed_after_the_store_and_the_acks() -> None:
    store, reports, j = MemoryStore(), list[BatchReport](), Journal()
    sink = sink_for(store, reports)
    await sink._handle(batch(), FakeProducer(j), FakeConsumer(j, store))
    kinds = [e[0] for e in j.events]
    # receipt and compacted null sent, both acknowledged, then the commit
    assert kinds == ["send", "send", "ack", "ack", "commit"]
    (_, (topic, part, key, value)), (_, (null_topic, null_part, null_key, null_value)) = j.events[
        :2
    ]
    assert (topic, part, key) == ("rc", key_partition(A.key.encode(), 4), A.key.encode())
    assert b'"reason":"ttl"' in value
    # The user's topic: Kafka's default partitioner (murmur2), not our CRC-32.
    assert (null_topic, null_part, null_key, null_value) == (
        "history", partition_for(A.key.encode(), 4), A.key.encode(), None,
    )  # fmt: skip
    offsets, rows_at_commit, published_at_commit = j.events[4][1]
    assert offsets == {TP("st", 0): 7, TP("tb", 1): 10}  # past the malformed message too
    assert rows_at_commit == {}  # the deletion was durable before the commit
    assert published_at_commit == 0  # acknowledged; marked in the next transaction
    await sink._handle(
        {TP("st", 0): [Rec("st", 0, 7, b"x", b"[]")]}, FakeProducer(j), FakeConsumer(j, store)
    )
    assert j.events[-1][1][2] == 1  # the next batch's one transaction marked it
    m = sink.metrics
    assert (m["messages_total"], m["invalid_total"], m["deleted_total"], m["receipts_total"]) == (
        4,
        2,
        1,
        1,
    )
    assert (m["compacted_nulls_total"], m["published_total"]) == (1, 1)
    report = reports[0]
    assert (report.kind, report.messages, report.invalid, report.deleted) == ("batch", 3, 1, 1)


class FailingStore(MemoryStore):
    async def apply(self, changes: Any, *, now_ms: int, published: Any = ()) -> Plan:
        raise StoreError("disk full")


@pytest.mark.asyncio
async def test_a_store_failure_commits_nothing() -> None:
    store, j = FailingStore(), Journal()
    sink = sink_for(store, [])
    with pytest.raises(StoreError, match="disk full"):
        await sink._handle(batch(), FakeProducer(j), FakeConsumer(j, store))
    assert j.events == []


@pytest.mark.asyncio
async def test_the_sweep_counts_logs_and_publishes(caplog: pytest.LogCaptureFixture) -> None:
    store, reports, j = MemoryStore(), list[BatchReport](), Journal()
    sink = sink_for(store, reports)
    await store.apply(
        [
            *(await _changes(Stamp(A, T0 - 600_000, T0 - 60_000, 540_000, "org"))),
            *(
                await _changes(
                    Stamp(Identity("acme", "_", "live", "session", "s"), T0, None, None, None)
                )
            ),
        ],
        now_ms=T0,
    )
    assert not await sink.sweep_once(FakeProducer(j))
    assert sink.metrics["swept_total"] == 1
    assert "swept 1 rows" in caplog.text
    assert [e[1][0] for e in j.events if e[0] == "send"] == ["rc", "history"]
    assert [r.kind for r in reports] == ["sweep"]
    assert await store.count() == 1  # the record that never expires stays


async def _changes(s: Stamp) -> list[Any]:
    from stream_expiry.sinks._messages import decode_stamped

    return [decode_stamped(s.identity.key.encode(), encode_stamp(s))]


def test_postgres_sink_counts_identities_it_cannot_hold() -> None:
    sink = Sink(PostgresStore(), SinkConfig(bootstrap_servers="unused:1", group_id="g"))
    nul = Identity("acme", "_", "live", "conversation", "a\x00b")
    rec = Rec(
        "expiry.stamped", 0, 1, nul.key.encode(), encode_stamp(Stamp(nul, T0, None, None, None))
    )
    assert sink._decode(rec.topic, rec) is None
    assert sink.metrics["unrepresentable_total"] == 1


B = Identity("acme", "_", "live", "conversation", "r2")


class QueuedConsumer(FakeConsumer):
    """A consumer holding scripted batches; ``fail_commit`` makes the next commit fail as
    a broker outage does."""

    def __init__(self, journal: Journal, store: MemoryStore, batches: list[Any]) -> None:
        super().__init__(journal, store)
        self.batches = batches
        self.fail_commit = False

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.j.events.append(("getmany", timeout_ms))
        return self.batches.pop(0) if self.batches else {}

    def assignment(self) -> set[TP]:
        return {TP("st", 0), TP("tb", 0)}

    async def commit(self, offsets: dict[TP, int]) -> None:
        if self.fail_commit:
            from aiokafka.errors import KafkaConnectionError

            self.fail_commit = False
            raise KafkaConnectionError("broker away")
        await super().commit(offsets)


def tombstones_of(offset: int, *idents: Identity) -> dict[Any, list[Any]]:
    recs = [
        Rec(
            "tb", 0, offset + n, i.key.encode(),
            encode_tombstone(Stamp(i, T0, T0 + 60_000, 60_000, "org"), reason="ttl",
                             emitted_at=T0 + 60_000),
        )
        for n, i in enumerate(idents)
    ]  # fmt: skip
    return {TP("tb", 0): recs}


@pytest.mark.asyncio
async def test_the_next_batch_is_decoded_beside_the_store_and_applied_after_it() -> None:
    store, reports, j = MemoryStore(), list[BatchReport](), Journal()
    sink = sink_for(store, reports)
    cons = QueuedConsumer(j, store, [tombstones_of(1, B)])
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    await sink._step(FakeProducer(j), cons)
    # The first batch is committed; the second was read (without waiting) and decoded,
    # but neither applied nor committed yet.
    commits = [e[1][0] for e in j.events if e[0] == "commit"]
    assert commits == [{TP("tb", 0): 1}]
    assert ("getmany", 0) in j.events
    assert sink._ready is not None
    assert [c.identity for c in sink._ready.changes] == [B]
    assert [r.identity for r in await store.receipts()] == [A]
    await sink._step(FakeProducer(j), cons)  # nothing more buffered: applied alone
    commits = [e[1][0] for e in j.events if e[0] == "commit"]
    assert commits == [{TP("tb", 0): 1}, {TP("tb", 0): 2}]  # in order, one after the other
    assert sink._ready is None
    assert [r.identity for r in await store.receipts()] == [A, B]
    assert [r.messages for r in reports] == [1, 1]


@pytest.mark.asyncio
async def test_a_broker_outage_while_committing_keeps_the_batch_read_beside_it() -> None:
    from stream_expiry.errors import BrokerUnavailableError

    store, j = MemoryStore(), Journal()
    sink = sink_for(store, [])
    cons = QueuedConsumer(j, store, [tombstones_of(1, B)])
    cons.fail_commit = True
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    with pytest.raises(BrokerUnavailableError):
        await sink._step(FakeProducer(j), cons)
    # The first batch is in the store (its offsets are committed with a later batch's);
    # the second one, already taken from the consumer, is kept for the next step.
    assert [r.identity for r in await store.receipts()] == [A]
    assert sink._ready is not None
    assert [c.identity for c in sink._ready.changes] == [B]
    await sink._step(FakeProducer(j), cons)
    assert [r.identity for r in await store.receipts()] == [A, B]
    assert [e[1][0] for e in j.events if e[0] == "commit"] == [{TP("tb", 0): 2}]


@pytest.mark.asyncio
async def test_a_store_failure_beside_a_decoded_batch_commits_nothing() -> None:
    store, j = FailingStore(), Journal()
    sink = sink_for(store, [])
    cons = QueuedConsumer(j, store, [tombstones_of(1, B)])
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    with pytest.raises(StoreError, match="disk full"):
        await sink._step(FakeProducer(j), cons)
    assert [e for e in j.events if e[0] != "getmany"] == []

"""The sink loop's order of writes, with a scripted consumer and producer (no broker):
store transaction, then receipts and compacted nulls acknowledged, then the offset commit.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from stream_expiry.errors import StoreError
from stream_expiry.holds import Hold, encode_hold
from stream_expiry.kafka import key_partition
from stream_expiry.logs import record_ref
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.murmur2 import partition_for
from stream_expiry.sinks._messages import (
    Marker,
    NullChange,
    TombstoneChange,
    decode_stamped,
    decode_tombstone,
)
from stream_expiry.sinks.framework import (
    BatchReport,
    Sink,
    SinkConfig,
    _Decoded,
    _HandOver,
    archived_by,
)
from stream_expiry.sinks.postgres import PostgresStore
from stream_expiry.sinks.store import MemoryStore, StoreUnavailableError
from tests.log_capture import captured_logs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

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
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = -1  # Kafka's "no timestamp"


@dataclass
class Journal:
    events: list[tuple[str, Any]] = field(default_factory=list)


class FakeBatch:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes | None, bytes | None]] = []

    def append(
        self,
        *,
        timestamp: None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> object:
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

    def assignment(self) -> set[TP]:
        return {TP("st", 0), TP("tb", 0), TP("tb", 1)}

    async def commit(self, offsets: dict[TP, int]) -> None:
        # What the store holds at the moment of the commit is what a crash would keep.
        self.j.events.append(
            ("commit", (dict(offsets), dict(self.store.rows), len(self.store.published)))
        )


# A sink whose sweep gives the service's tombstones a minute (for the sweep's own tests).
_SWEEPING = SinkConfig(
    bootstrap_servers="unused:1", group_id="g", stamped_topic="st", tombstones_topic="tb",
    receipts_topic="rc", sweep_grace_s=60,
)  # fmt: skip


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
async def test_a_null_is_decoded_with_its_kafka_timestamp() -> None:
    """The store tells an erasure's null read again after its marker was forgotten by it
    and by the topic it was read from (sinks/_logic.py, rule 7)."""
    sink = sink_for(MemoryStore(), [])
    key = A.key.encode()
    erased = (("expiry-reason", b"explicit"),)
    recs = [Rec("st", 0, 5, key, None, erased, T0), Rec("st", 0, 6, key, None, erased)]
    decoded = await sink._decode_batch({TP("st", 0): recs})
    assert decoded.changes == [
        NullChange(A, 0, 5, "explicit", T0, "st"), NullChange(A, 0, 6, "explicit", None, "st"),
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_a_tombstone_event_is_decoded_with_its_kafka_timestamp() -> None:
    """The store tells a tombstone event read again after its marker was forgotten by it
    and by the partition it was read from (sinks/_logic.py, rule 7); Kafka's "no
    timestamp" is unknown."""
    sink = sink_for(MemoryStore(), [])
    key, event = A.key.encode(), encode_tombstone(S, reason="ttl", emitted_at=T0)
    recs = [Rec("tb", 0, 5, key, event, (), T0 + 7), Rec("tb", 0, 6, key, event)]
    decoded = await sink._decode_batch({TP("tb", 0): recs})
    assert [
        (c.timestamp, c.topic, c.partition)
        for c in decoded.changes
        if isinstance(c, TombstoneChange)
    ] == [(T0 + 7, "tb", 0), (None, "tb", 0)]


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
    async def apply(
        self, changes: Any, *, now_ms: int, published: Any = (), living: bool = False
    ) -> Plan:
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
    assert not await sink.sweep_once(FakeProducer(j), read_to_ms=T0 + 120_000)
    assert sink.metrics["swept_total"] == 1
    assert "swept 1 rows" in caplog.text
    assert [e[1][0] for e in j.events if e[0] == "send"] == ["rc", "history"]
    assert [r.kind for r in reports] == ["sweep"]
    assert await store.count() == 1  # the record that never expires stays


async def _changes(s: Stamp) -> list[Any]:
    from stream_expiry.sinks._messages import decode_stamped

    return [decode_stamped(s.identity.key.encode(), encode_stamp(s))]


def test_postgres_sink_counts_identities_it_cannot_hold() -> None:
    """Its error line says where the message is and the record's ref, never its ids: a
    log outlives every erasure."""
    sink = Sink(PostgresStore(), SinkConfig(bootstrap_servers="unused:1", group_id="g"))
    nul = Identity("org-jane-9c1d", "_", "live", "conversation", "jane-7f3a\x00b")
    rec = Rec(
        "expiry.stamped", 0, 1, nul.key.encode(), encode_stamp(Stamp(nul, T0, None, None, None))
    )
    with captured_logs() as logs:
        assert sink._decode(rec.topic, rec) is None
    assert sink.metrics["unrepresentable_total"] == 1
    [line] = logs.json_lines()
    assert (line["level"], line["record"]) == ("ERROR", record_ref(nul.key))
    assert "expiry.stamped[0]@1" in str(line["msg"])
    assert f"record={record_ref(nul.key)}" in logs.text.getvalue()
    assert "jane" not in logs.both()


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


def commits(j: Journal) -> list[dict[TP, int]]:
    return [e[1][0] for e in j.events if e[0] == "commit"]


@pytest.mark.asyncio
async def test_the_next_batch_is_decoded_beside_the_store_and_applied_after_it() -> None:
    store, reports, j = MemoryStore(), list[BatchReport](), Journal()
    sink = sink_for(store, reports)
    cons = QueuedConsumer(j, store, [tombstones_of(1, B)])
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    await sink._step(FakeProducer(j), cons)
    # The first batch is applied and on its way out; the second was read (without
    # waiting) and decoded, but not applied.
    assert ("getmany", 0) in j.events
    assert sink._ready is not None
    assert [c.identity for c in sink._ready.changes] == [B]
    assert [r.identity for r in await store.receipts()] == [A]
    await sink._step(FakeProducer(j), cons)  # nothing more buffered: applied alone
    assert commits(j) == [{TP("tb", 0): 1}]  # the first one's, before the second goes out
    await sink._settle()
    assert commits(j) == [{TP("tb", 0): 1}, {TP("tb", 0): 2}]  # in order, one after the other
    assert sink._ready is None
    assert [r.identity for r in await store.receipts()] == [A, B]
    assert [r.messages for r in reports] == [1, 1]


class GatedProducer(FakeProducer):
    """Acknowledges nothing until ``gate`` is set, as a broker that answers late."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(journal)
        self.gate = asyncio.Event()
        self._acks: set[asyncio.Task[None]] = set()

    async def send_batch(
        self, batch: FakeBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        for key, value in batch.messages:
            self.j.events.append(("send", (topic, partition, key, value)))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def ack() -> None:
            await self.gate.wait()
            self.j.events.append(("ack", topic))
            fut.set_result(None)

        task = asyncio.ensure_future(ack())
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)
        return fut


class NotingStore(MemoryStore):
    """Notes each transaction in the journal."""

    def __init__(self, journal: Journal) -> None:
        super().__init__()
        self.j = journal

    async def apply(
        self, changes: Any, *, now_ms: int, published: Any = (), living: bool = False
    ) -> Plan:
        self.j.events.append(("apply", [c.identity.record_id for c in changes]))
        return await super().apply(changes, now_ms=now_ms, published=published, living=living)


class JournalingStore(NotingStore):
    """Notes each transaction; the second one lets the broker acknowledge while it runs."""

    def __init__(self, journal: Journal, prod: GatedProducer) -> None:
        super().__init__(journal)
        self.prod = prod

    async def apply(
        self, changes: Any, *, now_ms: int, published: Any = (), living: bool = False
    ) -> Plan:
        if len([e for e in self.j.events if e[0] == "apply"]) == 1:  # this is the second
            self.prod.gate.set()
        return await super().apply(changes, now_ms=now_ms, published=published, living=living)


@pytest.mark.asyncio
async def test_a_batch_is_published_and_committed_beside_the_next_transaction() -> None:
    j = Journal()
    prod = GatedProducer(j)
    store = JournalingStore(j, prod)
    sink = sink_for(store, [])
    cons = QueuedConsumer(j, store, [tombstones_of(1, B)])
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    # The broker acknowledges r1's receipt only once r2's transaction runs: a sink that
    # waited for those acks before its next transaction would wait forever.
    async with asyncio.timeout(5):
        await sink._step(prod, cons)
        await sink._step(prod, cons)
        await sink._settle()
    kinds = [e[0] if e[0] != "apply" else f"apply {e[1][0]}" for e in j.events]
    kinds = [k for k in kinds if k != "getmany"]
    first_ack = kinds.index("ack")
    assert kinds[:first_ack].count("send") == 2  # r1's receipt and compacted null
    assert kinds.index("apply r2") < first_ack
    # r1's offsets only after r1's acks; r2's messages only after r1's commit
    assert kinds[first_ack:] == ["ack", "ack", "commit", "send", "send", "ack", "ack", "commit"]
    assert commits(j) == [{TP("tb", 0): 1}, {TP("tb", 0): 2}]


class SerialStore(NotingStore):
    """A store that does not overlap (as SQLite): it notes each transaction."""

    overlaps = False


@pytest.mark.asyncio
async def test_a_store_that_does_not_overlap_gets_each_step_in_turn() -> None:
    j = Journal()
    store = SerialStore(j)
    sink = sink_for(store, [])
    cons = QueuedConsumer(j, store, [tombstones_of(1, B)])
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    await sink._step(FakeProducer(j), cons)
    assert sink._finishing is None  # published and committed before the step returned
    assert sink._ready is not None  # the next batch, decoded after them
    await sink._step(FakeProducer(j), cons)
    kinds = [e[0] if e[0] != "apply" else f"apply {e[1][0]}" for e in j.events]
    assert [k for k in kinds if k != "getmany"] == [
        "apply r1", "send", "send", "ack", "ack", "commit",
        "apply r2", "send", "send", "ack", "ack", "commit",
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_a_broker_outage_while_committing_keeps_the_batch_read_beside_it() -> None:
    from stream_expiry.errors import BrokerUnavailableError

    C = Identity("acme", "_", "live", "conversation", "r3")
    store, j = MemoryStore(), Journal()
    sink = sink_for(store, [])
    cons = QueuedConsumer(j, store, [tombstones_of(1, B), tombstones_of(2, C)])
    cons.fail_commit = True
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    await sink._step(FakeProducer(j), cons)  # A applied; its commit fails out of sight
    with pytest.raises(BrokerUnavailableError):
        await sink._step(FakeProducer(j), cons)  # B applied, then A's failure surfaces
    # Both are in the store (their offsets are committed with a later batch's); the next
    # one, already taken from the consumer, is kept for the next step.
    assert [r.identity for r in await store.receipts()] == [A, B]
    assert sink._ready is not None
    assert [c.identity for c in sink._ready.changes] == [C]
    await sink._step(FakeProducer(j), cons)
    await sink._settle()
    assert [r.identity for r in await store.receipts()] == [A, B, C]
    assert commits(j) == [{TP("tb", 0): 3}]


@pytest.mark.asyncio
async def test_a_broker_outage_keeps_the_next_batch_when_the_steps_run_in_turn() -> None:
    from stream_expiry.errors import BrokerUnavailableError

    j = Journal()
    store = SerialStore(j)
    sink = sink_for(store, [])
    cons = QueuedConsumer(j, store, [tombstones_of(1, B)])
    cons.fail_commit = True
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    with pytest.raises(BrokerUnavailableError):
        await sink._step(FakeProducer(j), cons)
    # B was taken from the consumer: dropping it now would skip it until a restart.
    assert sink._ready is not None
    assert [c.identity for c in sink._ready.changes] == [B]
    await sink._step(FakeProducer(j), cons)
    assert commits(j) == [{TP("tb", 0): 2}]
    assert [r.identity for r in await store.receipts()] == [A, B]


@pytest.mark.asyncio
async def test_offsets_of_a_partition_taken_away_are_not_committed() -> None:
    store, j = MemoryStore(), Journal()
    sink = sink_for(store, [])
    cons = QueuedConsumer(j, store, [])
    recs = tombstones_of(0, A)
    recs[TP("tb", 7)] = [Rec("tb", 7, 4, B.key.encode(), None)]  # no longer assigned
    await sink._handle(recs, FakeProducer(j), cons)
    assert commits(j) == [{TP("tb", 0): 1}]


@pytest.mark.asyncio
async def test_a_store_failure_beside_a_decoded_batch_commits_nothing() -> None:
    store, j = FailingStore(), Journal()
    sink = sink_for(store, [])
    cons = QueuedConsumer(j, store, [tombstones_of(1, B)])
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    with pytest.raises(StoreError, match="disk full"):
        await sink._step(FakeProducer(j), cons)
    assert [e for e in j.events if e[0] != "getmany"] == []


@pytest.mark.asyncio
async def test_leaving_the_loop_stops_the_batch_in_flight_without_committing_it() -> None:
    j = Journal()
    prod = GatedProducer(j)  # the broker never answers
    store = MemoryStore()
    sink = sink_for(store, [])
    cons = QueuedConsumer(j, store, [])
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    await sink._step(prod, cons)
    task = sink._finishing
    assert task is not None
    assert not task.done()  # waiting for the acks
    await sink._abandon()
    assert task.cancelled()
    assert sink._finishing is None
    assert commits(j) == []  # read again at the next start; its receipt is in the outbox
    assert [r.identity for r in await store.pending_receipts()] == [A]


@pytest.mark.asyncio
async def test_the_sweep_leaves_rows_within_the_grace_to_their_tombstones() -> None:
    """A row expired less than ``sweep_grace_s`` ago waits for its tombstone; one expired
    exactly that long ago or longer is the sweep's."""
    store, j = MemoryStore(), Journal()
    now = T0 + 120_000
    config = _SWEEPING
    sink = Sink(store, config, clock=lambda: now)

    def expired_ago(rid: str, ms: int) -> Stamp:
        at = now - ms
        return Stamp(Identity("acme", "_", "live", "conversation", rid), at - 1000, at, 1, "org")

    rows = [expired_ago("fresh", 59_999), expired_ago("edge", 60_000), expired_ago("old", 90_000)]
    await store.apply([c for s in rows for c in await _changes(s)], now_ms=now - 60_000)
    late = expired_ago("written late", 90_000)  # written within the grace: see below
    await store.apply(await _changes(late), now_ms=now - 59_999)
    await sink.sweep_once(FakeProducer(j), read_to_ms=now)
    assert {r.identity.record_id for r in await store.receipts()} == {"edge", "old"}
    assert await store.get(rows[0].identity) is not None
    assert sink.metrics["swept_total"] == 2


@pytest.mark.asyncio
async def test_a_row_written_within_the_grace_waits_for_its_tombstone_however_old_its_expiry() -> (
    None
):
    """A record already due when the service read it (after an outage) is stamped and
    tombstoned then, its tombstone perhaps behind a burst of others: the sweep, judging the
    row by its expiry alone, swept it as soon as its stamp was applied (a trial). It waits a
    grace from the row's writing too."""
    store, j = MemoryStore(), Journal()
    now = T0 + 7_200_000
    config = _SWEEPING
    sink = Sink(store, config, clock=lambda: now)
    due = Stamp(Identity("acme", "_", "live", "conversation", "due"), T0, T0 + 1000, 1, "org")
    await store.apply(await _changes(due), now_ms=now - 1_000)
    await sink.sweep_once(FakeProducer(j), read_to_ms=now)
    assert await store.receipts() == []
    await sink.sweep_once(FakeProducer(j), read_to_ms=now + 59_000)  # a grace after it
    assert [r.reason for r in await store.receipts()] == ["sweep"]


@pytest.mark.asyncio
async def test_a_lone_tombstone_of_an_ended_life_leaves_the_life_created_at_its_bound() -> None:
    """The one-step path (a batch holding just a tombstone: read and delete at once) ends
    the lives created before the tombstone's bound only; a touch at the expiry started a
    new life exactly at that bound, which stays."""
    store = MemoryStore()
    old = Stamp(A, T0, T0 + 60_000, 60, "org")
    new = Stamp(A, T0 + 60_000, T0 + 120_000, 60, "org")
    await store.apply(await _changes(new), now_ms=T0 + 60_000)
    tombstone = decode_tombstone(
        A.key.encode(), encode_tombstone(old, reason="ttl", emitted_at=T0 + 60_001)
    )
    assert tombstone.bound == new.created_at
    await store.apply([tombstone], now_ms=T0 + 60_001)
    row = await store.get(A)
    assert row is not None
    assert row.created_at == new.created_at
    later = decode_tombstone(
        A.key.encode(), encode_tombstone(new, reason="ttl", emitted_at=T0 + 120_001)
    )
    await store.apply([later], now_ms=T0 + 120_001)
    assert await store.get(A) is None


class _HoldsReader:
    """What the sink's reader of expiry.holds hands back: one batch, then nothing."""

    def __init__(self, records: list[Rec]) -> None:
        self.batches: list[dict[Any, list[Any]]] = [{TP("holds", 0): records}]

    async def getmany(self, *, timeout_ms: int) -> dict[Any, list[Any]]:
        return self.batches.pop(0) if self.batches else {}

    def read_by(self, sink: Sink) -> None:
        """Be the sink's reader of the holds, read to their end before each sweep."""

        async def read_to_now(
            cons: Any, apply: Callable[[Mapping[Any, list[Any]]], Awaitable[None]]
        ) -> None:
            assert cons is self
            while self.batches:
                await apply(self.batches.pop(0))

        sink._holds_reader = self
        sink._read_to_now = read_to_now


@pytest.mark.asyncio
async def test_the_sink_names_only_the_holds_still_active_once_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restarting sink reads the whole holds topic: a hold placed and released since was
    logged as sparing rows it no longer spares."""
    placed = [Hold(h, "acme", None, None, None, None, "case", T0) for h in ("h-old", "h-live")]
    records = [Rec("holds", 0, i, h.hold_id.encode(), encode_hold(h)) for i, h in enumerate(placed)]
    records.append(Rec("holds", 0, 2, b"h-old", None))  # released
    sink = sink_for(MemoryStore(), [])
    _HoldsReader(records).read_by(sink)
    with caplog.at_level(logging.INFO, logger="stream_expiry.sinks"):
        await sink._read_holds()
    spared = [r.getMessage() for r in caplog.records if "the sweep spares" in r.getMessage()]
    assert spared == ["legal hold h-live: the sweep spares org=acme"]
    assert sink.holds.get("h-old") is None
    assert not [r for r in caplog.records if "released" in r.getMessage()]  # never said


@pytest.mark.asyncio
async def test_the_sink_says_a_release_of_a_hold_it_said_it_spares(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sink said "legal hold h: the sweep spares ..." and nothing at its release: an
    operator reading its log took the rows for spared still (a trial)."""
    held = Hold("h-1", "acme", None, None, "conversation", None, "case", T0)
    sink = sink_for(MemoryStore(), [])
    _HoldsReader([Rec("holds", 0, 0, b"h-1", encode_hold(held))]).read_by(sink)
    await sink._read_holds()
    _HoldsReader([Rec("holds", 0, 1, b"h-1", None)]).read_by(sink)
    with caplog.at_level(logging.INFO, logger="stream_expiry.sinks"):
        await sink._read_holds()
    assert [r.getMessage() for r in caplog.records] == [
        "legal hold h-1 released: the sweep spares org=acme category=conversation no more "
        "(unless another hold matches it) once the service's tombstones have had 60 s to come"
    ]


@pytest.mark.asyncio
async def test_rows_a_released_hold_kept_wait_the_grace_for_their_tombstones() -> None:
    """Held rows are long past their expiry; released, the service tombstones them within a
    second (reason ttl). The sweep swept them first, with reason sweep and a warning that
    the service was not keeping up (a trial: 200 rows in one store, ttl in the other). A
    hold released, or replaced by a narrower one, spares what it kept for the grace."""
    store, j = MemoryStore(), Journal()
    now = [T0 + 3_600_000]
    config = _SWEEPING
    sink = Sink(store, config, clock=lambda: now[0])

    def row(org: str, rid: str) -> Stamp:
        return Stamp(Identity(org, "_", "live", "conversation", rid), T0, T0 + 1000, 1, "org")

    rows = [row("released", "a"), row("narrowed", "b"), row("narrowed", "kept"), row("free", "c")]
    await store.apply([c for s in rows for c in await _changes(s)], now_ms=T0 + 1000)
    holds = [
        Hold("h-rel", "released", None, None, None, None, "case", T0),
        Hold("h-nar", "narrowed", None, None, None, None, "case", T0),
    ]
    narrower = Hold("h-nar", "narrowed", None, None, None, "kept", "case", T0)
    messages = [Rec("holds", 0, i, h.hold_id.encode(), encode_hold(h)) for i, h in enumerate(holds)]
    messages += [
        Rec("holds", 0, 2, b"h-rel", None),
        Rec("holds", 0, 3, b"h-nar", encode_hold(narrower)),
    ]
    _HoldsReader(messages).read_by(sink)
    await sink.sweep_once(FakeProducer(j), read_to_ms=now[0])
    assert {r.identity.record_id for r in await store.receipts()} == {"c"}
    now[0] += 59_999  # within the grace of the release: their tombstones are on their way
    await sink.sweep_once(FakeProducer(j), read_to_ms=now[0])
    assert {r.identity.record_id for r in await store.receipts()} == {"c"}
    now[0] += 1  # the grace passed and no tombstone came: the sweep's
    await sink.sweep_once(FakeProducer(j), read_to_ms=now[0])
    assert {r.identity.record_id for r in await store.receipts()} == {"c", "a", "b"}
    assert await store.get(rows[2].identity) is not None  # the narrower hold keeps it


@pytest.mark.asyncio
async def test_a_hold_giving_a_key_twice_changes_no_hold_and_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A producer's hold ``{"org": "acme", ..., "org": "other"}`` under the id of a hold on
    acme: read as its last ``org``, it moved the hold to another org, and the sweep took
    acme's held rows once the grace passed; the sink said so at debug level alone. Refused
    now: the rows stay, and a warning names the key, where the message is, and the hold
    that stays."""
    store, j = MemoryStore(), Journal()
    now = [T0 + 3_600_000]
    sink = Sink(store, _SWEEPING, clock=lambda: now[0])
    held = Stamp(Identity("acme", "_", "live", "conversation", "a"), T0, T0 + 1000, 1, "org")
    await store.apply(await _changes(held), now_ms=T0 + 1000)
    placed = Hold("h1", "acme", None, None, None, None, "case", T0)
    twice = b'{"hold_id": "h1", "org": "acme", "reason": "case", "org": "other"}'
    messages = [Rec("holds", 0, 0, b"h1", encode_hold(placed)), Rec("holds", 0, 1, b"h1", twice)]
    _HoldsReader(messages).read_by(sink)
    with caplog.at_level(logging.WARNING, logger="stream_expiry.sinks"):
        await sink.sweep_once(FakeProducer(j), read_to_ms=now[0])
        now[0] += 60_001  # past the grace a narrowed hold leaves its rows
        await sink.sweep_once(FakeProducer(j), read_to_ms=now[0])
    assert await store.receipts() == []
    assert await store.get(held.identity) is not None
    assert sink.holds.get("h1") == placed
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "legal hold rejected: invalid_field (key 'org' is given twice (at the top level): "
        "which of its values was meant is unknown, so the document is refused; give each key "
        "once); key 'h1', holds[0]@1: skipped, it changes no hold; the legal hold 'h1' it "
        "would replace stays in force as placed before (org=acme) while this process runs; "
        "the next start of the service (or of a sink's sweep) refuses until 'h1' is placed "
        "again, valid, with the scope meant (`stream-expiry hold place --id ID ...`) or "
        "released (`stream-expiry hold release ID`)"
    ]


@pytest.mark.asyncio
async def test_an_explicit_tombstone_ends_no_life_created_after_its_delete() -> None:
    """A delete at d waited in a backlog; a new life was created after d and stamped before
    the tombstone event (emitted later) reached the store. The event's expiry-deleted-at
    header bounds it exactly: bounded by emitted_at instead, it took the new life's row for
    the old one's (and SQLite wrote a second receipt)."""
    d = T0 + 1_000
    old = Stamp(A, T0, T0 + 3_600_000, 3_600, "org")
    new = Stamp(A, d + 500, d + 500 + 3_600_000, 3_600, "org")
    event = encode_tombstone(old, reason="explicit", emitted_at=d + 2_000)
    for headers, row_left in (([("expiry-deleted-at", str(d).encode())], True), ([], False)):
        store = MemoryStore()
        await store.apply(await _changes(old), now_ms=T0)
        await store.apply([decode_stamped(A.key.encode(), None)], now_ms=d + 10)
        await store.apply(await _changes(new), now_ms=d + 600)
        tombstone = decode_tombstone(A.key.encode(), event, headers)
        await store.apply([tombstone], now_ms=d + 2_000)
        row = await store.get(A)
        assert (row is not None) is row_left, headers  # without the header: the old bound
        if row_left:
            assert row is not None
            assert row.created_at == new.created_at
            assert len(await store.receipts()) == 1


class _OffsetsConsumer:
    """The consumer as the read-complete time sees it: partitions, this instance's
    positions, the group's committed offsets, and the broker's end offsets."""

    def __init__(self, ends: dict[TP, int], mine: set[TP], clock: list[int]) -> None:
        self.ends, self.mine, self.clock = ends, mine, clock
        self.positions: dict[TP, int] = dict.fromkeys(mine, 0)
        self.committed_at: dict[TP, int | None] = {}
        self.asked_at: list[int] = []

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.ends if tp.topic == topic}

    def assignment(self) -> set[TP]:
        return set(self.mine)

    async def end_offsets(self, at: dict[TP, int]) -> dict[TP, int]:
        """What the Fetch of :func:`stream_expiry.fetch.end_offsets` tells."""
        self.asked_at.append(self.clock[0])
        self.clock[0] += 5  # the answer takes a while: W is the time before the request
        return {tp: self.ends[tp] for tp in at}

    async def position(self, tp: TP) -> int:
        from aiokafka.errors import IllegalStateError

        if tp not in self.mine:
            raise IllegalStateError(f"Partition {tp} is not assigned")
        return self.positions[tp]

    async def committed(self, tp: TP) -> int | None:
        return self.committed_at.get(tp)

    async def beginning_offsets(self, partitions: list[TP]) -> dict[TP, int]:
        return dict.fromkeys(partitions, 7)


@pytest.mark.asyncio
async def test_the_read_complete_time_waits_for_what_the_store_has_applied(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W is the time before a request for the end offsets, once every partition is
    applied up to them: this instance's by its consumer's position, less a batch read but
    not applied; another instance's by the group's committed offset (its beginning when
    none). Until then the sweep waits, and says so once, then once a minute."""
    from aiokafka import TopicPartition

    clock = [T0]
    st0, tb0, tb1 = TopicPartition("st", 0), TopicPartition("tb", 0), TopicPartition("tb", 1)
    cons = _OffsetsConsumer({st0: 10, tb0: 4, tb1: 7}, mine={st0, tb0}, clock=clock)
    config = SinkConfig("unused:1", "g", "st", "tb", sweep_interval_s=1.0)
    sink = Sink(MemoryStore(), config, clock=lambda: clock[0])
    monkeypatch.setattr(
        "stream_expiry.sinks.framework.end_offsets", lambda c, at: c.end_offsets(at)
    )

    def a_while_passes(seconds: float) -> None:  # since the sink last said it waits
        if sink._wait_said_at is not None:
            sink._wait_said_at -= seconds

    def waiting() -> list[str]:
        return [r.getMessage() for r in caplog.records if "the sweep waits" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="stream_expiry.sinks"):
        assert await sink.read_complete_ms(cons) is None  # 10 + 4 behind; tb1: none committed
        assert waiting() == [
            "the sweep waits until the sink has caught up with st and tb (14 messages behind): "
            "it judges rows only by what the store has applied"
        ]
        cons.positions = {st0: 10, tb0: 4}
        clock[0] += 1000
        a_while_passes(59)
        # Read to the end, but the last batch is not applied yet.
        sink._ready = _Decoded([], {st0: 10}, {st0: 8}, 2, 0)
        assert await sink.read_complete_ms(cons) is None
        assert len(waiting()) == 1  # said once, not at every sweep
        sink._ready = None
        w = await sink.read_complete_ms(cons)
        assert w == cons.asked_at[-1] == clock[0] - 5  # the time before the request
        # Messages arrive that the sink has not read: W stays until it has.
        cons.ends[st0] = 12
        clock[0] += 1000
        assert await sink.read_complete_ms(cons) == w
        cons.positions[st0] = 12
        clock[0] += 1000
        assert await sink.read_complete_ms(cons) == cons.asked_at[-1] > w
        w = cons.asked_at[-1]
        # Another instance's partition counts up to the group's committed offset.
        cons.ends[tb1] = 9
        cons.committed_at[tb1] = 8
        clock[0] += 1000
        assert await sink.read_complete_ms(cons) == w
        cons.committed_at[tb1] = 9
        clock[0] += 1000
        assert await sink.read_complete_ms(cons) == cons.asked_at[-1] > w
        # A rebalance: what was read for the old assignment says nothing of the new one.
        cons.mine.add(tb1)
        cons.positions[tb1] = 0
        assert await sink.read_complete_ms(cons) is None
        assert waiting()[-1].endswith(
            "(9 messages behind): it judges rows only by what the store has applied"
        )
        assert len(waiting()) == 2  # a new wait is said at once
        a_while_passes(59.9)
        assert await sink.read_complete_ms(cons) is None
        assert len(waiting()) == 2
        a_while_passes(0.1)
        assert await sink.read_complete_ms(cons) is None
        assert len(waiting()) == 3  # and again a minute later


@pytest.mark.asyncio
async def test_the_sweep_cutoff_is_the_grace_before_the_read_complete_time() -> None:
    """Rows are judged against W, not the clock: a row that expired more than the grace
    before now but not before W may have a later stamp or its tombstone unread."""
    store, j = MemoryStore(), Journal()
    now = T0 + 3_600_000
    config = _SWEEPING
    sink = Sink(store, config, clock=lambda: now)
    read_to = now - 600_000  # the store is ten minutes behind its topics

    def expired(rid: str, at: int) -> Stamp:
        return Stamp(Identity("acme", "_", "live", "conversation", rid), at - 1000, at, 1, "org")

    rows = [expired("before-w", read_to - 60_000), expired("after-w", read_to - 59_999)]
    await store.apply([c for s in rows for c in await _changes(s)], now_ms=T0)
    await sink.sweep_once(FakeProducer(j), read_to_ms=read_to)
    assert [r.identity.record_id for r in await store.receipts()] == ["before-w"]
    assert await store.get(rows[1].identity) is not None


class _LosingStore(MemoryStore):
    """Loses its connection in the middle of its next ``lost`` batches."""

    def __init__(self, lost: int) -> None:
        super().__init__()
        self.lost = lost

    async def apply(
        self, changes: Any, *, now_ms: int, published: Any = (), living: bool = False
    ) -> Plan:
        if self.lost:
            self.lost -= 1
            raise StoreUnavailableError("PostgreSQL store 'pg2' has no connection: refused")
        return await super().apply(changes, now_ms=now_ms, published=published, living=living)


class _SeekingConsumer(FakeConsumer):
    """Hands out the batches it is given, and remembers where the sink sought."""

    def __init__(self, journal: Journal, store: MemoryStore, batches: list[Any]) -> None:
        super().__init__(journal, store)
        self.batches = batches
        self.seeks: list[tuple[TP, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        return self.batches.pop(0) if self.batches else {}

    def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


@pytest.mark.asyncio
async def test_a_batch_the_store_lost_its_connection_on_is_read_again() -> None:
    """The store's connection is lost while it applies a batch, with the next batch read
    already: both are read again from their first offsets (the consumer seeks there), and
    nothing of them is committed; the loop's retry applies them once the store answers."""
    store, j = _LosingStore(lost=1), Journal()
    sink = sink_for(store, [])
    following = {
        TP("st", 0): [Rec("st", 0, 7, b"x", b"[]")],
        TP("tb", 0): [Rec("tb", 0, 3, b"y", b"[]")],
    }
    cons = _SeekingConsumer(j, store, [following])
    sink._ready = await sink._decode_batch(batch())
    with pytest.raises(StoreUnavailableError):
        await sink._step(FakeProducer(j), cons)
    assert sorted(cons.seeks, key=repr) == sorted(
        [(TP("st", 0), 5), (TP("tb", 1), 9), (TP("tb", 0), 3)], key=repr
    )  # st 0: the failed batch's first offset, not the next one's
    assert sink._ready is None
    assert commits(j) == []
    assert await store.count() == 0


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError(), True),
        ("AdminShutdownError", True),  # pg_terminate_backend, a server shutting down
        ("CannotConnectNowError", True),  # the server is starting up
        ("ConnectionDoesNotExistError", True),
        ("InsufficientPrivilegeError", False),  # permission denied: fatal, with its message
        ("UndefinedTableError", False),
        ("QueryCanceledError", False),  # statement_timeout
        ("InvalidPasswordError", False),
        # A connection the server closed, taken from the pool again mid-transaction.
        (
            "InternalClientError:cannot switch to state 15; another operation (2) is in progress",
            True,
        ),
        ("InternalClientError:release() called on a free connection holder", False),
    ],
)
def test_only_a_lost_connection_is_retried(error: Any, lost: bool) -> None:
    import asyncpg

    from stream_expiry.sinks.postgres import PostgresStore

    if isinstance(error, str):
        name, _, message = error.partition(":")
        exc = getattr(asyncpg, name)(message or "msg")
    else:
        exc = error
    failure = PostgresStore("postgresql://h/db", name="pg2")._failure(exc, "failed")
    assert isinstance(failure, StoreUnavailableError) is lost
    assert isinstance(failure, StoreError)
    assert str(failure).startswith("PostgreSQL store 'pg2' failed: ")


@pytest.mark.asyncio
async def test_receipts_left_in_the_outbox_send_no_null_for_a_record_that_lives_on() -> None:
    """After a crash the receipts' plan is gone; the outbox replay asks the store which
    records still have a row (a later life, under the same key on the user's compacted
    topic) and sends nulls for the others only."""
    gone = Identity("acme", "_", "live", "conversation", "r2")
    later = Stamp(A, T0 + 60_000, T0 + 120_000, 60_000, "org")  # created at S's expiry
    other = Stamp(gone, T0, T0 + 60_000, 60_000, "org")
    changes = [
        decode_stamped(A.key.encode(), encode_stamp(S), partition=0, offset=1),
        decode_stamped(A.key.encode(), encode_stamp(later), partition=0, offset=2),
        decode_stamped(gone.key.encode(), encode_stamp(other), partition=0, offset=3),
        decode_tombstone(A.key.encode(), encode_tombstone(S, reason="ttl", emitted_at=T0 + 60_000)),
        decode_tombstone(
            gone.key.encode(), encode_tombstone(other, reason="ttl", emitted_at=T0 + 60_000)
        ),
    ]
    store, j = MemoryStore(), Journal()
    await store.apply(changes, now_ms=T0 + 60_000)  # a crash then: nothing published
    assert {r.identity for r in await store.pending_receipts()} == {A, gone}
    sink = sink_for(store, [])
    await sink._flush_outbox(FakeProducer(j))
    sent = [e[1] for e in j.events if e[0] == "send"]
    assert [(t, k) for t, _p, k, _v in sent if t == "history"] == [("history", gone.key.encode())]
    assert {k for t, _p, k, _v in sent if t == "rc"} == {A.key.encode(), gone.key.encode()}
    assert await store.pending_receipts() == []


@pytest.mark.asyncio
async def test_pruning_rolls_along_the_markers_and_hurries_only_through_a_backlog() -> None:
    """Each pass looks at the page after the last one and wraps to the first marker at the
    end, so every marker is looked at once a round; the next page comes at once only
    while a tenth or more of a page went (a backlog), else at the next interval."""
    store = MemoryStore()
    grace_s, read_to = 60.0, T0 + 3600_000
    settled_long_ago = read_to - int(grace_s * 1000) - 1

    def mark(n: int, settled_at: int) -> None:
        i = Identity("acme", "_", "live", "conversation", f"m{n:02d}")
        store.markers[i] = Marker(i, T0, T0, T0, (), settled_at)

    for n in range(60):
        old = n < 25 or n == 45  # a backlog, five in the next page, one in the third
        mark(n, settled_long_ago if old else read_to)
    config = SinkConfig("unused:1", "g", "st", "tb", marker_grace_s=grace_s, prune_limit=20)
    sink = Sink(store, config, clock=lambda: read_to)
    passes = []
    for _ in range(4):
        again = await sink.prune_once(read_to_ms=read_to)
        passes.append((again, len(store.markers)))
    # m00-m19 all go; m20-m39 five (a quarter); m40-m59 one; then the end of the table.
    assert passes == [(True, 40), (True, 35), (False, 34), (False, 34)]
    mark(30, settled_long_ago)
    mark(50, settled_long_ago)
    assert await sink.prune_once(read_to_ms=read_to) is False  # from the first again
    remaining = {i.record_id for i in store.markers}
    assert ("m30" in remaining, "m50" in remaining) == (False, True)
    assert sink.metrics["markers_pruned_total"] == 27


def test_the_archives_offsets_by_a_cutoff_are_the_last_reading_made_by_then() -> None:
    """The sweep judges rows by what the archive had written by its cutoff (W less the
    grace), from the readings it made: the last one at or before the cutoff, older ones
    dropped; none that old, nothing counts as archived by then."""
    seen: collections.deque[tuple[int, dict[int, int]]] = collections.deque(
        [(100, {0: 1}), (200, {0: 5}), (300, {0: 9})]
    )
    assert archived_by(seen, 99) == {}
    assert list(seen) == [(100, {0: 1}), (200, {0: 5}), (300, {0: 9})]
    assert archived_by(seen, 250) == {0: 5}
    assert [at for at, _ in seen] == [200, 300]  # the reading before 200 is not needed again
    assert archived_by(seen, 300) == {0: 9}
    assert list(seen) == [(300, {0: 9})]


C3 = Identity("acme", "_", "live", "conversation", "r3")


@pytest.mark.asyncio
async def test_a_batch_is_counted_once_whatever_becomes_of_its_commit() -> None:
    """Counted once its offsets were committed, the batch whose commit failed, and the one
    applied beside it (not handed off, the failure surfacing first), were never counted nor
    reported, their receipts published from the outbox all the same (a trial). Counted
    with its transaction, each is counted once."""
    from stream_expiry.errors import BrokerUnavailableError

    store, reports, j = MemoryStore(), list[BatchReport](), Journal()
    sink = sink_for(store, reports)
    cons = QueuedConsumer(j, store, [tombstones_of(1, B), tombstones_of(2, C3)])
    cons.fail_commit = True  # a broker outage
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    await sink._step(FakeProducer(j), cons)
    with pytest.raises(BrokerUnavailableError):
        await sink._step(FakeProducer(j), cons)
    await sink._step(FakeProducer(j), cons)
    await sink._settle()
    m = sink.metrics
    assert (m["batches_total"], m["messages_total"], m["deleted_total"]) == (3, 3, 0)
    assert (m["receipts_total"], m["published_total"]) == (3, 2)  # B's wait in the outbox
    assert [r.identity for rep in reports for r in rep.receipts] == [A, B, C3]


class RebalancedConsumer(QueuedConsumer):
    """Refuses the next commit as aiokafka does once the group rebalanced meanwhile."""

    async def commit(self, offsets: dict[TP, int]) -> None:
        if self.fail_commit:
            from aiokafka.errors import CommitFailedError

            self.fail_commit = False
            raise CommitFailedError("increasing the rebalance timeout with max_poll_interval_ms")
        await FakeConsumer.commit(self, offsets)


@pytest.mark.asyncio
async def test_a_commit_refused_by_a_rebalance_is_no_broker_outage() -> None:
    """The group rebalanced (an instance joined or died) under a commit: said at INFO as
    a rebalance, not as a broker outage (no error raised to the loop, which counted it in
    ``broker_errors_total``, waited a second and said "retrying until the broker
    answers", with aiokafka's advice about max_poll_interval_ms), and the next batch goes
    on. The refused offsets are the old assignment's: the partitions are read again from
    their committed offsets after the rebalance, so they are not carried to a later
    commit."""
    store, reports, j = MemoryStore(), list[BatchReport](), Journal()
    sink = sink_for(store, reports)
    cons = RebalancedConsumer(j, store, [tombstones_of(1, B), tombstones_of(2, C3)])
    cons.fail_commit = True
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    with captured_logs() as logs:
        await sink._step(FakeProducer(j), cons)  # A applied; its commit refused
        await sink._step(FakeProducer(j), cons)  # B applied and handed off all the same
        cons.fail_commit = True  # still rebalancing: B's commit, beside C's transaction
        await sink._step(FakeProducer(j), cons)
        await sink._settle()
    assert commits(j) == [{TP("tb", 0): 3}]  # C's
    assert sink._uncommitted == {}
    assert [r.identity for rep in reports for r in rep.receipts] == [A, B, C3]
    m = sink.metrics
    assert (m["messages_total"], m["receipts_total"], m["published_total"]) == (3, 3, 3)
    assert m["broker_errors_total"] == 0
    lines = [line for line in logs.json_lines() if "rebalanced" in str(line["msg"])]
    assert [line["level"] for line in lines] == ["INFO"]
    assert "the consumer group g rebalanced" in str(lines[0]["msg"])
    assert "tb[0]" in str(lines[0]["msg"])
    assert "max_poll_interval_ms" not in logs.both()


@pytest.mark.asyncio
async def test_the_outbox_at_a_start_is_said_once_and_not_only_as_a_previous_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A line a page of 1,000 ("publishing 1000 ... left over from a previous run", then
    "publishing 159 ..."), and not always a previous run's: another instance of the same
    store may have written them a moment before (a trial). One line with the total."""
    store, j = MemoryStore(), Journal()
    stamps = [
        Stamp(Identity("acme", "_", "live", "conversation", f"r{n}"), T0, T0 + 1000, 1, "org")
        for n in range(1_500)
    ]
    changes = [c for s in stamps for c in await _changes(s)]
    changes += [
        decode_tombstone(s.identity.key.encode(), encode_tombstone(s, reason="ttl", emitted_at=T0))
        for s in stamps
    ]
    await store.apply(changes, now_ms=T0 + 1000)
    caplog.set_level(logging.INFO, logger="stream_expiry")
    await sink_for(store, [])._flush_outbox(FakeProducer(j))
    said = [r.getMessage() for r in caplog.records if "outbox" in r.getMessage()]
    assert len(said) == 1
    assert said[0].startswith("published 1500 receipts the store's outbox held: left by an")
    assert "another instance of this store" in said[0]
    assert await store.pending_receipts() == []


class _AwayProducer(FakeProducer):
    """A broker that does not answer: every send fails as aiokafka's does then."""

    async def send_batch(
        self, batch: FakeBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        from aiokafka.errors import KafkaConnectionError

        raise KafkaConnectionError("broker away")


@pytest.mark.asyncio
async def test_a_sweep_is_counted_and_reported_even_when_its_publish_fails() -> None:
    """The sweep's deletion is done once its transaction commits: it is counted (its
    receipts in ``receipts_total``) and reported then, as a batch is, even when the broker
    is away for its publish (the receipts wait in the outbox; the next start publishes them
    without counting them again). Counted or reported after the publish, a sweep whose
    publish failed was never counted, the receipts published later all the same."""
    from stream_expiry.errors import BrokerError

    store, reports = MemoryStore(), list[BatchReport]()
    now = T0 + 120_000
    sink = Sink(store, _SWEEPING, clock=lambda: now, on_batch=reports.append)
    old = Stamp(A, T0 - 600_000, T0 - 60_000, 540_000, "org")
    await store.apply(await _changes(old), now_ms=T0 - 60_000)
    with pytest.raises(BrokerError):
        await sink.sweep_once(_AwayProducer(Journal()), read_to_ms=now)
    assert (sink.metrics["swept_total"], sink.metrics["receipts_total"]) == (1, 1)
    assert [(r.kind, [x.identity for x in r.receipts]) for r in reports] == [("sweep", [A])]
    assert [r.identity for r in await store.pending_receipts()] == [A]  # for the next start


@pytest.mark.asyncio
async def test_a_sweep_of_unsettled_nulls_alone_publishes_counts_and_reports_them() -> None:
    """A null whose tombstone event never came (a mistyped --tombstones-topic) gets its
    receipt from the sweep once the grace is over, with the null's reason: a sweep that
    settled such nulls and swept no row still publishes, counts and reports those
    receipts (a sweep that did so only when it swept a row left them in the outbox, seen
    by nobody until a restart)."""
    store, reports, j = MemoryStore(), list[BatchReport](), Journal()
    now = T0 + 600_000
    sink = Sink(store, _SWEEPING, clock=lambda: now, on_batch=reports.append)
    live = Stamp(A, T0, T0 + 60_000, 60_000, "org")
    null = decode_stamped(A.key.encode(), None, headers=[("expiry-reason", b"ttl")])
    await store.apply([*(await _changes(live)), null], now_ms=T0 + 60_000)
    assert await store.get(A) is None  # the null deleted the row; its receipt waits
    await sink.sweep_once(FakeProducer(j), read_to_ms=now)
    m = sink.metrics
    assert (m["swept_total"], m["unsettled_total"], m["receipts_total"]) == (0, 1, 1)
    assert [e[1][0] for e in j.events if e[0] == "send"] == ["rc"]
    assert [(r.identity, r.reason) for rep in reports for r in rep.receipts] == [(A, "ttl")]


@pytest.mark.asyncio
async def test_a_batch_counts_what_its_transaction_wrote_and_found_stale() -> None:
    """A batch is counted from its plan once its transaction commits: the rows it wrote
    (``written_total``) and the stamps of a life deleted already (``stale_total``, a
    re-delivered stamp after its tombstone), not only its messages, deletions and
    receipts."""
    store, reports, j = MemoryStore(), list[BatchReport](), Journal()
    sink = sink_for(store, reports)
    life = Stamp(B, T0, T0 + 60_000, 60_000, "org")
    key = B.key.encode()
    msgs = {
        TP("st", 0): [
            Rec("st", 0, 0, key, encode_stamp(life)),
            Rec("st", 0, 1, C3.key.encode(), encode_stamp(life._replace(identity=C3))),
        ],
        TP("tb", 0): [Rec("tb", 0, 0, key, encode_tombstone(life, reason="ttl", emitted_at=T0))],
    }
    cons = QueuedConsumer(j, store, [{TP("st", 0): [Rec("st", 0, 2, key, encode_stamp(life))]}])
    sink._ready = await sink._decode_batch(msgs)
    await sink._step(FakeProducer(j), cons)
    await sink._step(FakeProducer(j), cons)  # the stamp again, after its tombstone
    await sink._settle()
    assert [(r.written, r.stale) for r in reports] == [(2, 0), (0, 1)]
    m = sink.metrics
    assert (m["batches_total"], m["written_total"], m["stale_total"]) == (2, 2, 1)


@pytest.mark.asyncio
async def test_a_rebalance_is_said_again_after_a_commit_that_went_through() -> None:
    """Said once a rebalance, not once a batch: the refusals of one rebalance make one
    line, and a commit that goes through ends it, so the next rebalance's refusal is said
    again (an operator counting rebalances in the log would miss every one after the
    first)."""
    store, j = MemoryStore(), Journal()
    sink = sink_for(store, [])
    cons = RebalancedConsumer(j, store, [tombstones_of(1, B), tombstones_of(2, C3)])
    cons.fail_commit = True
    sink._ready = await sink._decode_batch(tombstones_of(0, A))
    with captured_logs() as logs:
        await sink._step(FakeProducer(j), cons)  # A: refused (a first rebalance)
        await sink._settle()
        await sink._step(FakeProducer(j), cons)  # B: committed
        await sink._settle()
        cons.fail_commit = True
        await sink._step(FakeProducer(j), cons)  # C: refused (a second rebalance)
        await sink._settle()
    assert commits(j) == [{TP("tb", 0): 2}]  # B's
    lines = [line for line in logs.json_lines() if "rebalanced" in str(line["msg"])]
    assert [line["level"] for line in lines] == ["INFO", "INFO"]


def test_a_store_outage_has_one_start_and_its_end_said_once_by_the_loop_or_the_probe() -> None:
    """The sink's loop and its store probe share the store's outage (``Sink.store_outage``):
    its start is the first failure either finds, and its end is said once, at INFO, by
    whichever gets an answer first. The loop keeps only whether its own tries fail: it
    pings the store and publishes the outbox again until it has seen the store answer,
    even once the probe has."""
    from stream_expiry.sinks.framework import Outage, _Retrying

    metrics = {"store_errors_total": 0}
    shared = Outage()
    loop = _Retrying("store", metrics, "store_errors_total", shared)
    with captured_logs() as logs:
        shared.failed()  # the probe finds it first
        started = shared.since
        loop.failed(StoreError("connection refused"))
        loop.failed(StoreError("connection refused"))
        assert (shared.since, loop.failing, metrics["store_errors_total"]) == (started, True, 2)
        shared.answered()  # the probe gets the first answer, and says it
        assert loop.failing  # the loop has not tried again yet
        loop.answered()  # its own answer: nothing more to say
        assert not loop.failing
    said = [(line["level"], line["msg"]) for line in logs.json_lines()]
    assert said == [
        ("WARNING", "connection refused; retrying until the store answers"),
        ("INFO", "the store answers again, 0 s after it was first found not answering"),
    ]


def test_a_flapping_stores_second_outage_is_said_and_its_end_too() -> None:
    """An outage, its end said by the probe while the loop waited to try again, then a
    second outage the loop finds first: its start is said (WARNING) and its end (INFO), as
    the first's were. The loop said nothing of it: its tries had never stopped failing by
    its own count, and the shared outage, ended, was not started again, so the second
    outage's end went unsaid too (a flapping store's trial)."""
    from stream_expiry.sinks.framework import Outage, _Retrying

    metrics = {"store_errors_total": 0}
    shared = Outage()
    loop = _Retrying("store", metrics, "store_errors_total", shared)
    with captured_logs() as logs:
        loop.failed(StoreError("connection refused"))
        shared.answered()  # the probe gets the first answer, and says it
        loop.failed(StoreError("connection reset"))  # down again before the loop's retry
        assert shared.since is not None
        loop.answered()
    said = [(line["level"], line["msg"]) for line in logs.json_lines()]
    assert said == [
        ("WARNING", "connection refused; retrying until the store answers"),
        ("INFO", "the store answers again, 0 s after it was first found not answering"),
        ("WARNING", "connection reset; retrying until the store answers"),
        ("INFO", "the store answers again, 0 s after it was first found not answering"),
    ]


class _TimedOutProducer(FakeProducer):
    """A broker that took the batches and never acknowledged them: aiokafka fails every
    batch's ack with one error once its request timeout passes."""

    async def send_batch(
        self, batch: FakeBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        from aiokafka.errors import KafkaTimeoutError

        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(KafkaTimeoutError())
        return fut


@pytest.mark.asyncio
async def test_a_publish_that_fails_leaves_no_ack_unretrieved() -> None:
    """The first failed ack is raised (the sink waits for the broker and publishes again);
    the others of that publish, failed alike, are marked seen. Left alone, asyncio logged
    each with a traceback when it was collected ("Future exception was never retrieved"),
    one per partition of every publish in flight, into the sink's log after an outage, as
    the service's outbox marks its own (``outbox.all_acked``)."""
    import gc

    from aiokafka.errors import KafkaTimeoutError

    from stream_expiry.sinks._publish import BatchPublisher

    loop = asyncio.get_running_loop()
    unretrieved: list[str] = []
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context["message"]))
    try:
        out = BatchPublisher(_TimedOutProducer(Journal()))
        for partition in range(4):
            out.add("rc", partition, b"k", b"v")
        with pytest.raises(KafkaTimeoutError):
            await out.flush()
        await asyncio.sleep(0)  # the callbacks of acks done already run on the next turn
        gc.collect()
    finally:
        loop.set_exception_handler(before)
    assert unretrieved == []


class _GivenNothing:
    """The group consumer of a member the group gave nothing; each topic has one
    partition."""

    def assignment(self) -> set[TP]:
        return set()

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}


@pytest.mark.asyncio
async def test_an_empty_assignment_ends_the_join_a_standby_said_once() -> None:
    """The group's answer to the join, an empty assignment too (more members than the
    topics have partitions), makes the sink ready: a standby, said once at INFO, not again
    at a rebalance that gives it nothing again. It waited for partitions, "joining" for
    good, and an orchestrator held back or restarted a healthy instance. As the rebalance
    listener calls it (the broker's part: tests/integration/test_sinks_kafka.py)."""
    ready: list[str] = []
    sink = sink_for(MemoryStore(), [])
    sink.observe(on_joining=lambda: None, on_ready=lambda: ready.append("ready"))
    cons = _GivenNothing()
    sink._consumer = cons
    listener = _HandOver(sink)
    sink._observe(cons, {})
    assert ready == []  # the group has not answered: still joining
    with captured_logs() as logs:
        await listener.on_partitions_assigned(set())
        sink._observe(cons, {})
        await listener.on_partitions_revoked(set())
        await listener.on_partitions_assigned(set())
        sink._observe(cons, {})
    assert ready == ["ready"]
    said = [line for line in logs.json_lines() if "assigned no partitions" in str(line["msg"])]
    assert [(line["level"], line["msg"]) for line in said] == [
        (
            "INFO",
            "sink memory assigned no partitions: the group g has more members than st (1) "
            "and tb (1) have partitions; this sink waits as a standby (ready, reading "
            "nothing) until a member leaves",
        )
    ]

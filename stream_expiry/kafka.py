"""Thin adapters over aiokafka: topic creation, producers and consumers with our defaults.

aiokafka's exceptions are translated into :class:`BrokerError` at this edge, so the rest of
the service speaks one error vocabulary. Defaults follow ../shared/BROKER.md: new groups read
from ``earliest`` (``latest`` is unreliable on some brokers and loses data on all of them),
and the idempotent producer stays off because not every Kafka-protocol broker supports it.
"""

from __future__ import annotations

import contextlib
import random
import time
import zlib
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from stream_expiry.errors import BrokerError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

__all__ = [
    "OutputBuffer",
    "consumer",
    "crc32_partitioner",
    "ensure_topics",
    "high_watermarks",
    "key_partition",
    "partitions_of",
    "producer",
    "read_to_end",
]

DEFAULT_PARTITIONS = 4
STALL_S = 60.0  # a topic read to its end that stops moving for this long is an error
COMPACTED = {"cleanup.policy": "compact"}


async def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    partitions: int = DEFAULT_PARTITIONS,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    configs = configs or {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            new = [
                NewTopic(
                    t,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=dict(configs.get(t, {})),
                )
                for t in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    except KafkaError as exc:
        raise BrokerError(
            f"cannot reach Kafka at {bootstrap_servers} to create topics ({exc}); check that "
            "the brokers are up and the --bootstrap-servers address"
        ) from exc
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def producer(bootstrap_servers: str, **overrides: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer with acks=all: a tombstone counts as sent only once it is durable."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "partitioner": crc32_partitioner,
        "linger_ms": 2,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
    }
    options.update(overrides)
    prod = AIOKafkaProducer(**options)
    try:
        await prod.start()
    except KafkaError as exc:
        await prod.stop()
        raise BrokerError(f"cannot connect a producer to {bootstrap_servers}: {exc!r}") from exc
    try:
        yield prod
    finally:
        await prod.stop()


@contextlib.asynccontextmanager
async def consumer(
    bootstrap_servers: str, *topics: str, **overrides: Any
) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer; without ``group_id`` it is a plain reader that commits nothing."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "request_timeout_ms": 40_000,
        "fetch_max_wait_ms": 100,  # an idle partition answers (with its high watermark) fast
    }
    options.update(overrides)
    cons = AIOKafkaConsumer(*topics, **options)
    try:
        await cons.start()
    except KafkaError as exc:
        await cons.stop()
        raise BrokerError(f"cannot connect a consumer to {bootstrap_servers}: {exc!r}") from exc
    try:
        yield cons
    finally:
        await cons.stop()


async def high_watermarks(
    cons: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """The end of each assigned partition, learnt from a fetch's high watermark.

    ``end_offsets`` gives wrong answers on some Kafka-protocol brokers (../shared/BROKER.md);
    the high watermark that every fetch response carries is right on all of them. The
    consumer's positions are restored afterwards.
    """
    positions = {tp: await cons.position(tp) for tp in tps}
    unknown = [tp for tp in tps if cons.highwater(tp) is None]
    deadline = time.monotonic() + 15
    while unknown and time.monotonic() < deadline:
        # Any fetch response carries the high watermark, empty partitions' too.
        await cons.getmany(*unknown, timeout_ms=100, max_records=1)
        unknown = [tp for tp in unknown if cons.highwater(tp) is None]
    if unknown:
        raise BrokerError(f"no fetch response for {unknown} within 15 s: is the broker healthy?")
    ends = {tp: cons.highwater(tp) or 0 for tp in tps}
    for tp, pos in positions.items():
        cons.seek(tp, pos)
    return ends


async def partitions_of(cons: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of any topic, also one the consumer neither subscribed nor assigned
    (its own metadata only covers those)."""
    parts = cons.partitions_for_topic(topic)
    if not parts:
        cluster = await cons._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
    return set(parts or ())


async def read_to_end(
    cons: AIOKafkaConsumer,
    topic: str,
    *,
    start: Mapping[int, int] | None = None,
    max_records: int = 5000,
) -> AsyncIterator[dict[TopicPartition, list[Any]]]:
    """Assign every partition of ``topic`` to ``cons`` and yield batches up to its current end.

    ``start`` maps partitions to the offset to start from (default: the beginning). Used for
    the compacted topics read whole at start (policies, tombstones) and by ``replay``.
    """
    tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(cons, topic))]
    if not tps:
        return
    cons.assign(tps)
    for tp in tps:
        offset = (start or {}).get(tp.partition)
        if offset is None:
            await cons.seek_to_beginning(tp)
        else:
            cons.seek(tp, offset)
    ends = await high_watermarks(cons, tps)
    remaining = {tp for tp in tps if await cons.position(tp) < ends[tp]}
    last_progress = time.monotonic()
    while remaining:
        batch = await cons.getmany(*remaining, timeout_ms=500, max_records=max_records)
        if batch:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > STALL_S:
            raise BrokerError(
                f"reading {topic} made no progress for {STALL_S:.0f} s "
                f"({len(remaining)} partitions short of their end): is the broker up?"
            )
        out: dict[TopicPartition, list[Any]] = {}
        for tp, records in batch.items():
            kept = [r for r in records if r.offset < ends[tp]]
            if kept:
                out[tp] = kept
        for tp in list(remaining):
            if await cons.position(tp) >= ends[tp]:
                remaining.discard(tp)
        if out:
            yield out


def key_partition(key: bytes, partitions: int) -> int:
    """The partition of a record key on our output topics: CRC-32 modulo the count.

    Every stream-expiry producer (service, replay) uses it, so a record's stamps, its
    Kafka-native tombstone and its tombstone event each stay on one partition and
    compaction sees them together. CRC-32 is computed in C; aiokafka's murmur2 is pure
    Python and was a fifth of the ingest time.
    """
    return zlib.crc32(key) % partitions


def crc32_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka partitioner form of :func:`key_partition` (random for null keys)."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[key_partition(key, len(all_partitions))]


class OutputBuffer:
    """Collects a batch's output messages per (topic, partition) and sends them as record
    batches: one produce request per partition instead of a future per message.

    ``flush`` returns the futures of the sent batches; the caller awaits them (the broker's
    acks) before it writes the index, which is what makes the order of writes hold.
    """

    def __init__(self, prod: AIOKafkaProducer) -> None:
        self._prod = prod
        self._partitions: dict[str, int] = {}
        self._open: dict[tuple[str, int], Any] = {}
        self._sent: list[Any] = []

    async def _count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            n = len(await self._prod.partitions_for(topic))
            self._partitions[topic] = n
        return n

    async def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        n = await self._count(topic)
        partition = random.randrange(n) if key is None else key_partition(key, n)
        slot = (topic, partition)
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open[slot] = self._prod.create_batch()
        if (
            batch.append(timestamp=timestamp_ms, key=key, value=value, headers=headers or [])
            is None
        ):
            self._sent.append(await self._prod.send_batch(batch, topic, partition=partition))
            batch = self._open[slot] = self._prod.create_batch()
            if (
                batch.append(timestamp=timestamp_ms, key=key, value=value, headers=headers or [])
                is None
            ):
                raise BrokerError(
                    f"a message for {topic} is larger than the producer's max_batch_size"
                )

    async def flush(self) -> list[Any]:
        """Send every open batch; returns the futures of all batches sent since the last flush."""
        for (topic, partition), batch in self._open.items():
            self._sent.append(await self._prod.send_batch(batch, topic, partition=partition))
        self._open.clear()
        sent, self._sent = self._sent, []
        return sent

"""Produce a batch of keyed messages to chosen partitions, in record batches, and wait.

Why not ``producer.send`` per message: at tens of thousands of receipts a second, aiokafka's
per-message path (a future, a partitioner call, an accumulator lookup) costs more than the
store's whole transaction; building one record batch per partition and sending it with
``send_batch`` is an order of magnitude cheaper (docs/BENCHMARKS.md, BROKER.md). The caller
picks every partition: CRC-32 for our own topics (:func:`stream_expiry.kafka.key_partition`),
Kafka's murmur2 for a user's compacted topic (:mod:`stream_expiry.murmur2`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stream_expiry.kafka import mark_seen

if TYPE_CHECKING:
    import asyncio

    from aiokafka import AIOKafkaProducer

__all__ = ["BatchPublisher"]

# key, value, headers
_Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]


class BatchPublisher:
    """Collects messages per (topic, partition); :meth:`flush` sends them and awaits the acks.

    Messages of one partition keep the order they were added in.
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._prod = producer
        self._pending: dict[tuple[str, int], list[_Message]] = {}
        self.count = 0

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue a message; ``headers`` a list, as aiokafka's batch builder takes no other."""
        queued = self._pending.get((topic, partition))
        if queued is None:  # not setdefault: that builds a list for every message
            queued = self._pending[topic, partition] = []
        queued.append((key, value, headers))
        self.count += 1

    async def flush(self) -> None:
        """Send everything added so far and wait until the broker acknowledged all of it.

        Raises aiokafka's ``KafkaError`` as it comes: the caller maps it at its edge. The
        other acks are marked seen then (:func:`~stream_expiry.kafka.mark_seen`).
        """
        pending, self._pending, self.count = self._pending, {}, 0
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), messages in pending.items():
            batch = self._prod.create_batch()
            for key, value, given in messages:
                headers = given or []
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await self._prod.send_batch(batch, topic, partition=partition))
                    batch = self._prod.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"a message for {topic} is larger than a record batch")
            if batch.record_count():
                futures.append(await self._prod.send_batch(batch, topic, partition=partition))
        try:
            for f in futures:
                await f
        except BaseException:
            mark_seen(futures)  # failed alike, or left by a cancellation
            raise

"""A changelog as a running service leaves it: stamps on ``expiry.stamped``, for restore
and replay benchmarks.

Record ``i`` (keys shaped like ``bench.common.record_key``) belongs to input topic
``inputs[i % len(inputs)]``, on the partition the service's producers key it to
(``stream_expiry.kafka.key_partition``); its stamp goes where the service writes it: the
partition ``input partition % count`` of ``expiry.stamped`` (``stream_expiry.codec``), with
the ``expiry-source-topic`` / ``expiry-source-partition`` headers, and a value made by
``stream_expiry.model.encode_stamp``. Expiry times are uniform over the next year (fixed
seed), except the first ``due`` records, which fell due during the last hour (record ids
``lag-<i>``, which ``bench.e2e_expiry``'s tombstone reader counts). Stamps carry no
``data`` unless ``data_bytes`` asks for a transcript of about that many bytes.

The messages are produced from a separate process with ``create_batch``/``send_batch``
(one record batch per partition at a time), so the benchmark's own process is not busy.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

from bench.common import NS_PER_MS, log
from bench.e2e_expiry import PARTITIONS, BenchTopics, receive, record_identity, spawn, stop_child
from stream_expiry import codec, model
from stream_expiry.kafka import ensure_topics, key_partition

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.connection import Connection

YEAR_MS = 365 * 86_400_000
HOUR_MS = 3_600_000
SEED = 11
_CATEGORY = {0: "conversation", 1: "session", 2: "error"}


def stamp_for(i: int, now_ms: int, rng: random.Random, *, due: int) -> model.Stamp:
    """Record ``i``'s stamp: due in the last hour for ``i < due``, else within a year."""
    if i < due:
        ident = record_identity(i, "conversation", prefix="lag")
        expires = now_ms - HOUR_MS + (i * HOUR_MS) // max(due, 1)
    else:
        ident = record_identity(i, _CATEGORY[i % 3])
        expires = now_ms + 60_000 + rng.randrange(YEAR_MS)
    return model.Stamp(ident, expires - YEAR_MS, expires, YEAR_MS, "default")


def transcript(size: int) -> dict[str, Any] | None:
    """A conversation's ``data`` of about ``size`` bytes of JSON: turns of a chat, as a
    platform's records carry them (None for 0)."""
    if size <= 0:
        return None
    turn = {"role": "user", "text": "I would like to change the delivery address of my order",
            "ts": "2026-12-01T04:00:00.123Z"}  # fmt: skip
    turns = max(1, round(size / 110))  # one turn is ~110 bytes of JSON
    return {"channel": "webchat", "transcript": [turn] * turns}


def changelog_messages(
    count: int,
    now_ms: int,
    inputs: tuple[str, ...],
    *,
    due: int = 0,
    partitions: int = PARTITIONS,
    data_bytes: int = 0,
) -> Iterator[tuple[int, bytes, bytes, list[tuple[str, bytes]]]]:
    """(stamped partition, key, value, headers) of records ``0 .. count-1``."""
    rng = random.Random(SEED)
    headers = {(t, p): codec.source_headers(t, p) for t in inputs for p in range(partitions)}
    data = transcript(data_bytes)
    for i in range(count):
        stamp = stamp_for(i, now_ms, rng, due=due)
        topic = inputs[0] if i < due else inputs[i % len(inputs)]
        key = stamp.identity.key.encode()
        p = key_partition(key, partitions)
        yield (
            codec.output_partition(p, partitions),
            key,
            model.encode_stamp(stamp, data),
            headers[(topic, p)],
        )


async def produce_changelog(
    bootstrap: str, topic: str, messages: Iterator[tuple[int, bytes, bytes, list[Any]]]
) -> int:
    """Send the messages with ``send_batch``, a bounded number of batches in flight."""
    from stream_expiry.kafka import producer

    n = 0
    async with producer(bootstrap, linger_ms=20) as prod:
        open_batches: dict[int, Any] = {}
        acks: list[Any] = []
        for partition, key, value, headers in messages:
            batch = open_batches.get(partition)
            if batch is None:
                batch = open_batches[partition] = prod.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                acks.append(await prod.send_batch(batch, topic, partition=partition))
                batch = open_batches[partition] = prod.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)
            n += 1
            while len(acks) > 32:
                await acks.pop(0)
        for partition, batch in open_batches.items():
            acks.append(await prod.send_batch(batch, topic, partition=partition))
        for ack in acks:
            await ack
    return n


def _changelog_main(
    bootstrap: str,
    prefix: str,
    count: int,
    now_ms: int,
    due: int,
    inputs: tuple[str, ...],
    data_bytes: int,
    conn: Connection,
) -> None:
    topics = BenchTopics(prefix)
    t0 = time.perf_counter()
    messages = changelog_messages(count, now_ms, inputs, due=due, data_bytes=data_bytes)
    n = asyncio.run(produce_changelog(bootstrap, topics.stamped, messages))
    conn.send({"sent": n, "seconds": time.perf_counter() - t0})
    conn.close()


async def prefill_changelog(
    bootstrap: str,
    topics: BenchTopics,
    count: int,
    now_ms: int,
    *,
    due: int = 0,
    inputs: tuple[str, ...] | None = None,
    data_bytes: int = 0,
) -> dict[str, Any]:
    """Produce ``count`` stamps on ``topics.stamped`` from a child process; wait for acks.
    ``inputs`` (default: all three input topics) are the input topics the records belong to."""
    chosen = topics.inputs if inputs is None else inputs
    proc, conn = spawn(
        _changelog_main, bootstrap, topics.prefix, count, now_ms, due, chosen, data_bytes
    )
    try:
        result: dict[str, Any] = await receive(conn, 600 + count / 5_000, "changelog producer")
    finally:
        stop_child(proc)
    return result


async def fresh_changelog(
    bootstrap: str,
    count: int,
    *,
    what: str,
    input_topics: int | None = None,
    data_bytes: int = 0,
) -> tuple[BenchTopics, dict[str, Any]]:
    """Fresh topics (all of a service's, ``PARTITIONS`` each) and ``count`` stamps on their
    ``expiry.stamped``, for records of the first ``input_topics`` input topics (all by
    default); returns the topics and :func:`prefill_changelog`'s report."""
    topics = BenchTopics.fresh()
    await ensure_topics(bootstrap, topics.all, partitions=PARTITIONS)
    inputs = topics.inputs[:input_topics]  # None: all of them
    log(f"{what}: producing {count:,} stamps on {topics.stamped}")
    produced = await prefill_changelog(
        bootstrap, topics, count, time.time_ns() // NS_PER_MS, inputs=inputs, data_bytes=data_bytes
    )
    log(f"{what}: produced in {produced['seconds']:.1f}s")
    return topics, produced

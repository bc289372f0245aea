"""Restore one input partition's store from the changelog (Kafka Streams' restore).

The changelog is ``expiry.stamped`` (the latest stamp of every record, a null once it is
deleted) and ``expiry.tombstones``. A partition's messages sit on the same partition number
of each topic (:func:`stream_expiry.codec.output_partition`) and name their input partition
in headers, so a restore reads one partition of each topic and keeps its own messages.

The store remembers how far it has read each changelog partition (written in the same
batch as the states), so a store that already holds most of the partition (the instance
had it before) reads only what was written since. Messages are applied in log order, which
is the order they were written: the last one of a record wins, as compaction would have it.
Tombstone events come second: they turn into deletion markers only where they are newer
than what the stamps said (a record deleted and then created again stays alive).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from stream_expiry import model
from stream_expiry.codec import decode_stamp, deleted_at_of, output_partition, source_of
from stream_expiry.kafka import high_watermarks, partitions_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiokafka import AIOKafkaConsumer

    from stream_expiry.state.store import PartitionStore

__all__ = ["RestoreReport", "position_name", "restore_partition"]

BATCH = 10_000


@dataclass
class RestoreReport:
    """What a restore read and kept, for the log line and the restore metric."""

    read: int = 0  # changelog messages read (all partitions' messages on those partitions)
    stamps: int = 0  # states restored from stamps
    markers: int = 0  # deletion markers restored (nulls and tombstone events)
    unreadable: int = 0  # messages of ours that could not be decoded (skipped, logged)
    remaining: int = 0  # changelog messages still to read
    nulls_owed: int = 0  # tombstone events whose null never reached expiry.stamped
    seconds: float = 0.0


def position_name(topic: str, partition: int) -> str:
    return f"changelog/{topic}/{partition}"


async def restore_partition(
    cons: AIOKafkaConsumer,
    store: PartitionStore,
    *,
    source: tuple[str, int],
    stamped: str,
    tombstones: str,
    now_ms: int,
    progress: Callable[[RestoreReport], None] | None = None,
) -> RestoreReport:
    """Bring ``store`` up to date with the changelog of input partition ``source``.

    ``cons`` is a consumer without a group; it is left assigned to the changelog partitions.
    """
    report = RestoreReport()
    started = time.monotonic()
    tps: list[TopicPartition] = []
    for topic in (stamped, tombstones):
        count = len(await partitions_of(cons, topic))
        tps.append(TopicPartition(topic, output_partition(source[1], count)))
    cons.assign(tps)
    for tp in tps:
        cons.seek(tp, store.meta(position_name(tp.topic, tp.partition)) or 0)
    ends = await high_watermarks(cons, tps)
    for tp in tps:
        report.remaining += max(0, ends[tp] - await cons.position(tp))
    stamped_tp, tombstones_tp = tps
    for tp, stamps in ((stamped_tp, True), (tombstones_tp, False)):
        await _read(cons, tp, ends[tp], store, source, now_ms, report, progress, stamps=stamps)
    report.seconds = time.monotonic() - started
    return report


async def _read(
    cons: AIOKafkaConsumer,
    tp: TopicPartition,
    end: int,
    store: PartitionStore,
    source: tuple[str, int],
    now_ms: int,
    report: RestoreReport,
    progress: Callable[[RestoreReport], None] | None,
    *,
    stamps: bool,
) -> None:
    position = await cons.position(tp)
    while position < end:
        batch = await cons.getmany(tp, timeout_ms=1000, max_records=BATCH)
        records = [r for r in batch.get(tp, []) if r.offset < end]
        if not records:
            position = await cons.position(tp)
            continue
        report.read += len(records)
        report.remaining = max(0, report.remaining - (records[-1].offset + 1 - position))
        mine = [r for r in records if source_of(r.headers) == source]
        position = records[-1].offset + 1
        meta = {position_name(tp.topic, tp.partition): position}
        if stamps:
            _apply_stamps(store, mine, now_ms, meta, report)
        else:
            _apply_tombstones(store, mine, now_ms, meta, report)
        if progress is not None:
            progress(report)


def _identity(key: bytes | None) -> model.Identity | None:
    if key is None:
        return None
    try:
        return model.decode_key(key.decode())
    except ValueError:
        return None


def _apply_stamps(
    store: PartitionStore,
    records: list[Any],
    now_ms: int,
    meta: dict[str, int],
    report: RestoreReport,
) -> None:
    latest: dict[str, model.Stamp] = {}
    for rec in records:
        identity = _identity(rec.key)
        if identity is None:
            report.unreadable += 1
            continue
        if rec.value is None:
            deleted_at = deleted_at_of(rec.headers)
            if deleted_at is None:
                deleted_at = rec.timestamp  # an older null without the header: its time
            latest[identity.key] = model.Stamp(identity, None, None, None, None, deleted_at)
            continue
        try:
            stamp = decode_stamp(rec.key, rec.value, identity)
            latest[identity.key] = stamp._replace(stamp_offset=rec.offset)
        except ValueError:
            report.unreadable += 1
    new = list(latest.values())
    old = store.get_many([s.identity for s in new])
    changes = [(o, n) for o, n in zip(old, new, strict=True) if o != n]
    for _, n in changes:
        if n.live:
            report.stamps += 1
        else:
            report.markers += 1
    store.write(changes, now_ms=now_ms, meta=meta)


def _apply_tombstones(
    store: PartitionStore,
    records: list[Any],
    now_ms: int,
    meta: dict[str, int],
    report: RestoreReport,
) -> None:
    identities = {}
    for rec in records:
        identity = _identity(rec.key)
        if identity is not None:
            identities[identity.key] = identity
    current = dict(zip(identities, store.get_many(list(identities.values())), strict=True))
    first: dict[str, model.Stamp | None] = {}
    for rec in records:
        key = rec.key.decode() if rec.key else ""
        if key not in current:
            continue
        marker = model.deletion_from_tombstone(rec.value, current[key])
        if marker is None:
            continue
        prior = current[key]
        if prior is not None and prior.live:
            # expiry.stamped still holds this life: the service stopped after the broker
            # acked the tombstone event and before it acked the null. Left live, the record
            # is tombstoned again (it is due, or its delete is read again: nothing of it was
            # committed), and this time its null is written.
            report.nulls_owed += 1
            continue
        first.setdefault(key, current[key])
        current[key] = marker
        report.markers += 1
    changes = [(old, current[k]) for k, old in first.items() if current[k] is not None]
    store.write([(o, n) for o, n in changes if n is not None], now_ms=now_ms, meta=meta)

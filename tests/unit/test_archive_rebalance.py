"""The archive's commit after a rebalance, against aiokafka's own check of a commit: no
broker, a consumer never started, whose group coordinator records what it is asked."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from stream_expiry.archive import ArchiveWriter, _archive_batch, read_lines
from stream_expiry.model import Identity, Stamp, encode_stamp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

STAMPED = "expiry.stamped"
TOMBSTONES = "expiry.tombstones"
KEPT, TAKEN = TopicPartition(STAMPED, 1), TopicPartition(STAMPED, 0)


class _Coordinator:
    """Where aiokafka sends a commit it has checked: recorded, as a broker would take it."""

    def __init__(self) -> None:
        self.committed: dict[TopicPartition, int] = {}

    async def commit_offsets(self, assignment: object, offsets: dict[Any, Any]) -> None:
        self.committed.update({tp: meta.offset for tp, meta in offsets.items()})


@pytest_asyncio.fixture
async def consumer() -> AsyncIterator[AIOKafkaConsumer]:
    cons = AIOKafkaConsumer(STAMPED, TOMBSTONES, group_id="g", bootstrap_servers="127.0.0.1:1")
    cons._coordinator = _Coordinator()
    try:
        yield cons
    finally:
        cons._coordinator = None  # never started: nothing of it to close
        await cons.stop()


def _record(tp: TopicPartition, offset: int) -> ConsumerRecord[bytes, bytes]:
    ident = Identity("acme", "bot", "prod", "conversation", f"r{tp.partition}-{offset}")
    created = 1_795_000_000_000  # 2026-11-18
    key = ident.key.encode()
    value = encode_stamp(Stamp(ident, created, created + 60_000, 60_000, "default"), {"n": 1})
    return ConsumerRecord(
        tp.topic, tp.partition, offset, 1_795_000_000_000, 0, key, value, None,
        len(key), len(value), [],
    )  # fmt: skip


@pytest.mark.asyncio
async def test_a_batch_whose_partition_a_rebalance_took_commits_only_the_others(
    consumer: AIOKafkaConsumer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rebalance (an archive joining or leaving the group) while a batch was written took
    one of its partitions: the commit named it, aiokafka refused the whole commit
    (``IllegalStateError``: "Partition ... is not assigned", which no retrying cures), and
    the archive stopped with status 3. Now the partitions it still has are committed, the
    taken one is left to its new owner, said in one line, and the archive reads on."""
    writer = ArchiveWriter(str(tmp_path))

    async def rebalanced() -> None:  # between the durable write and the commit
        consumer._subscription.assign_from_subscribed({KEPT})

    consumer._subscription.assign_from_subscribed({KEPT, TAKEN})
    batch = {TAKEN: [_record(TAKEN, 7)], KEPT: [_record(KEPT, 3), _record(KEPT, 4)]}
    with caplog.at_level(logging.INFO, logger="stream_expiry.archive"):
        await _archive_batch(consumer, writer, batch, TOMBSTONES, rebalanced)
    assert consumer._coordinator.committed == {KEPT: 5}
    (said,) = [r.getMessage() for r in caplog.records if "rebalanced" in r.getMessage()]
    assert f"{STAMPED}[0] left to their new owner" in said
    archived = read_lines(str(tmp_path / "acme" / "2026-11-18.jsonl.gz"))
    assert sorted((line["partition"], line["offset"]) for line in archived) == [
        (0, 7), (1, 3), (1, 4),
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_a_batch_whose_partitions_a_rebalance_all_took_commits_nothing(
    consumer: AIOKafkaConsumer, tmp_path: Path
) -> None:
    """A rebalance gave every partition of the batch to another member (a new archive
    took this one's only partition): nothing is left to commit, and nothing is asked.
    aiokafka refused the commit, and the archive stopped with status 3."""
    consumer._subscription.assign_from_subscribed({TAKEN})

    async def revoked() -> None:
        consumer._subscription.assign_from_subscribed(set())

    await _archive_batch(
        consumer, ArchiveWriter(str(tmp_path)), {TAKEN: [_record(TAKEN, 7)]}, TOMBSTONES, revoked
    )
    assert consumer._coordinator.committed == {}

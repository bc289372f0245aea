"""The sink's counters across an offset commit the group refuses (a trial of the sinks).

A second instance of a store joined (or one died), the group rebalanced, and a batch's
offset commit failed with ``CommitFailedError``. The sink counted a batch only once its
offsets were committed, so two batches went uncounted: the failed one, and the next one
(already committed to the store), which was never handed off because the failure surfaced
first. Their receipts, published later from the outbox, were in ``published_total`` but not
in ``receipts_total``, and ``on_batch`` (the progress line, the deletion-lag histogram)
never heard of them. README, Metrics: ``stream_expiry_sink_{messages,written,...,receipts,
published}_total`` are the sink's work. The same refusal was said as a broker outage
("retrying until the broker answers", ``broker_errors_total``, a second's wait, aiokafka's
advice about ``max_poll_interval_ms``) although the broker never went away.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest

from stream_expiry.sinks.framework import wall_clock_ms
from tests.integration.sink_helpers import (
    MINUTE,
    ident,
    produce,
    running_sink,
    sink_config,
    stamp,
    stamped_msg,
    tombstone_msg,
    wait_until,
)

if TYPE_CHECKING:
    from tests.conftest import TopicSet

pytestmark = pytest.mark.integration

HOUR = 60 * MINUTE


@pytest.mark.asyncio
async def test_the_counters_count_every_batch_applied_across_a_failed_commit(
    broker: str, topics: TopicSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's offsets commit fails once (the group rebalanced: CommitFailedError, as a
    second instance of the store joined or died in the trial). The batch applied beside
    that commit is then never handed off: its messages, rows written and receipts are
    missing from ``messages_total``, ``written_total`` and ``receipts_total`` (while its
    receipts, published from the outbox, are in ``published_total``), and ``on_batch``
    (the progress line, the metrics) never hears of it. README, Metrics:
    ``stream_expiry_sink_{messages,written,...,receipts,published}_total``: the sink's work."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import CommitFailedError

    from stream_expiry.sinks.store import MemoryStore

    real_commit = AIOKafkaConsumer.commit
    failed: list[bool] = []

    async def commit_failing_once(self: AIOKafkaConsumer, offsets: Any = None) -> None:
        # The first commit of a batch of tombstones: its receipts, and those of the batch
        # applied beside it, are at stake.
        if not failed and offsets and any(tp.topic == topics.tombstones for tp in offsets):
            failed.append(True)
            raise CommitFailedError("the group has already rebalanced")
        await real_commit(self, offsets)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", commit_failing_once)
    store = MemoryStore("counted")
    now = wall_clock_ms()
    stamps = [stamp(ident(f"r{n}"), created_at=now, ttl_ms=HOUR) for n in range(2000)]
    due = [stamp(ident(f"d{n}"), created_at=now - 2 * HOUR, ttl_ms=HOUR) for n in range(500)]
    reported: list[int] = []
    config = sink_config(broker, topics, batch_size=100)
    async with running_sink(store, config, on_batch=lambda r: reported.append(r.messages)) as sink:
        await produce(broker, topics.stamped, [stamped_msg(s) for s in [*stamps, *due]])

        async def written() -> bool:
            return len(store.rows) == len(stamps) + len(due)

        # Every stamp applied before its tombstone is read: a stamp and its tombstone in
        # one batch write no row (the plan's writes are net), and ``written_total`` would
        # depend on how the consumer interleaves the two topics.
        await wait_until(written, what="every stamp applied")
        await produce(broker, topics.tombstones, [tombstone_msg(s) for s in due])

        async def settled() -> bool:
            return (
                len(store.rows) == len(stamps)
                and len(await store.receipts()) == len(due)
                and not await store.pending_receipts()
            )

        await wait_until(settled, what="every message applied and every receipt published")
        metrics = dict(sink.metrics)
    assert failed
    total = len(stamps) + 2 * len(due)
    assert metrics["published_total"] >= len(due)
    assert (metrics["messages_total"], sum(reported)) == (total, total)
    assert metrics["written_total"] == len(stamps) + len(due)
    assert metrics["deleted_total"] == len(due)
    assert metrics["receipts_total"] == len(due)


@pytest.mark.asyncio
async def test_a_commit_refused_by_a_rebalance_is_said_as_one_not_as_a_broker_outage(
    broker: str, topics: TopicSet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The trial's sink said "committing offsets ... failed: CommitFailedError(... increasing
    the rebalance timeout with max_poll_interval_ms ...); retrying until the broker
    answers", then "the broker answers again", counted a broker error and waited a second:
    the broker never went away, and the advice was beside the point (an instance joined).
    The rebalance is said as such, at INFO, and the batch counted once."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import CommitFailedError

    from stream_expiry.sinks.store import MemoryStore

    real_commit = AIOKafkaConsumer.commit
    failed: list[bool] = []

    async def commit_failing_once(self: AIOKafkaConsumer, offsets: object = None) -> None:
        if not failed and offsets:
            failed.append(True)
            raise CommitFailedError("increasing the rebalance timeout with max_poll_interval_ms")
        await real_commit(self, offsets)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", commit_failing_once)
    caplog.set_level(logging.DEBUG, logger="stream_expiry")
    store = MemoryStore("refused")
    now = wall_clock_ms()
    due = [stamp(ident(f"d{n}"), created_at=now - 2 * HOUR, ttl_ms=HOUR) for n in range(20)]
    reported: list[int] = []
    config = sink_config(broker, topics, batch_size=10)
    async with running_sink(store, config, on_batch=lambda r: reported.append(r.messages)) as sink:
        await produce(broker, topics.stamped, [stamped_msg(s) for s in due])
        await produce(broker, topics.tombstones, [tombstone_msg(s) for s in due])

        async def settled() -> bool:
            return len(await store.receipts()) == len(due) and not await store.pending_receipts()

        await wait_until(settled, what="every receipt published")
        metrics = dict(sink.metrics)
    assert failed
    assert metrics["broker_errors_total"] == 0
    assert (metrics["messages_total"], sum(reported)) == (2 * len(due), 2 * len(due))
    assert metrics["receipts_total"] == len(due)
    said = [r for r in caplog.records if "rebalanced" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO]
    assert f"the consumer group {config.group_id} rebalanced" in said[0].getMessage()
    text = caplog.text
    assert "retrying until the broker answers" not in text
    assert "answers again" not in text
    assert "max_poll_interval_ms" not in text

"""The IO shell: Kafka in, SQLite and Kafka out, and a clock, around the pure engine.

One task does the work in a fixed order, so the order of writes holds by construction:

1. read a batch of input events (waiting at most until the next timer is due);
2. apply policy updates that arrived, so they count for records created after them;
3. feed the batch to the engine, send stamps, dead letters and explicit tombstones;
4. once the broker acked them, write the batch's states and next offsets to the index in one
   transaction (write-behind, in order: :mod:`stream_expiry.writer`; the loop goes on, and
   the next batch's lookups see the states not yet written);
5. only then commit the offsets to Kafka (informational, at most once a second: the index's
   offsets are the truth);
6. fire due timers: send their tombstones; once acked, mark them deleted (write-behind too).

A crash between any two steps re-does work (at-least-once) but never loses a record or fires
early. Partitions are assigned by the consumer group; on assignment the consumer is
positioned at the index's offsets (from the beginning when the index has none: a rebuild),
and on revocation the partition's timers are forgotten.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from stream_expiry import model
from stream_expiry.engine import Engine, Fired
from stream_expiry.errors import BrokerError
from stream_expiry.kafka import (
    COMPACTED,
    OutputBuffer,
    consumer,
    ensure_topics,
    producer,
    read_to_end,
)
from stream_expiry.metrics import LAG_BUCKETS_MS
from stream_expiry.policy import PolicyBook
from stream_expiry.store import Index, Slot
from stream_expiry.writer import OrderedWriter, all_acked

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from stream_expiry.config import Config

__all__ = ["Service", "ServiceStats", "wall_clock_ms"]

log = logging.getLogger("stream_expiry.service")

MAX_BATCH = 5000
COMMIT_EVERY_S = 1.0
IDLE_WAIT_MS = 200
GENERATION_CHECK_MS = 100  # how soon a running service sees an applied replay


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class ServiceStats:
    """Counters a person (and the demo, and the benchmarks) watch."""

    events: int = 0
    stamped: int = 0
    dead_letters: int = 0
    tombstones: int = 0
    explicit: int = 0
    policy_updates: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    dead_letter_codes: Counter[str] = field(default_factory=Counter)
    pending_in_wheel: int = 0
    # ttl tombstones' lag (emitted_at - expires_at), as histogram buckets for /metrics
    lag_buckets: list[int] = field(default_factory=lambda: [0] * len(LAG_BUCKETS_MS))
    lag_sum_ms: int = 0

    def observe_lag(self, lag_ms: int) -> None:
        self.lag_sum_ms += lag_ms
        index = bisect.bisect_left(LAG_BUCKETS_MS, lag_ms)
        if index < len(self.lag_buckets):
            self.lag_buckets[index] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "stamped": self.stamped,
            "dead_letters": self.dead_letters,
            "tombstones": self.tombstones,
            "explicit": self.explicit,
            "policy_updates": self.policy_updates,
            "pending_in_wheel": self.pending_in_wheel,
            "verdicts": dict(self.verdicts),
        }


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        self._service = service

    # aiokafka logs a failing listener and carries on; a partition left unpositioned would
    # then be skipped. So a failure is kept and raised by the service's loop instead.

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        try:
            await self._service._on_revoked(revoked)
        except Exception as exc:
            self._service._rebalance_error = exc

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        try:
            await self._service._on_assigned(assigned)
        except Exception as exc:
            self._service._rebalance_error = exc


class Service:
    """Runs until ``stop`` is set; every instance with the same group shares the work."""

    def __init__(
        self,
        config: Config,
        *,
        bootstrap_servers: str,
        environ: Mapping[str, str],
        clock: Callable[[], int] = wall_clock_ms,
        on_progress: Callable[[ServiceStats], Awaitable[None] | None] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.bootstrap = bootstrap_servers
        self.clock = clock
        self.book = PolicyBook(config, environ)
        self.engine: Engine[Slot] = Engine(
            self.book.resolve,
            config.sliding,
            now_ms=clock(),
            tick_ms=config.tick_ms,
            horizon_ms=config.horizon_ms,
        )
        self.stats = ServiceStats()
        self.ready = anyio.Event()
        self._on_progress = on_progress
        self._consumer_options = dict(consumer_options or {})
        self._owned: set[Slot] = set()
        self._index: Index | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._categories = frozenset(config.categories)
        self._writer: OrderedWriter  # set when the index opens, in run()
        self._generation = 0
        self._generation_checked_at = 0
        self._next_offset: dict[Slot, int] = {}  # per owned partition: the next offset to take
        self._rebalance_error: Exception | None = None
        self._committed_at = 0.0
        for warning in self.book.env_warnings:
            log.warning("%s", warning)

    @property
    def owned(self) -> frozenset[Slot]:
        """The input partitions this instance holds now."""
        return frozenset(self._owned)

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: anyio.Event) -> None:
        t = self.config.topics
        await ensure_topics(
            self.bootstrap,
            [*t.inputs, t.policies, t.stamped, t.tombstones, t.dlq],
            configs={t.stamped: COMPACTED, t.policies: COMPACTED},
        )
        self._index = await Index.open(self.config.state_dir)
        self._writer = OrderedWriter(self._index)
        self._generation = await self._index.generation()
        try:
            async with (
                producer(self.bootstrap) as prod,
                consumer(self.bootstrap, enable_auto_commit=False) as policies,
            ):
                self._producer = prod
                await self._follow_policies(policies, to_end=True)
                await self._sync_tombstones()
                group_options: dict[str, Any] = {
                    "group_id": self.config.group_id,
                    # Fast crash detection: Kafka's default minimum session timeout.
                    "session_timeout_ms": 6_000,
                    "heartbeat_interval_ms": 1_000,
                    "max_poll_records": MAX_BATCH,
                    **self._consumer_options,
                }
                async with consumer(self.bootstrap, **group_options) as cons:
                    self._consumer = cons
                    cons.subscribe(list(t.inputs), listener=_Rebalance(self))
                    log.info(
                        "joining group %r on %s for %s",
                        self.config.group_id,
                        self.bootstrap,
                        ", ".join(t.inputs),
                    )
                    try:
                        await self._loop(cons, policies, stop)
                    finally:
                        await self._writer.settle()
                    await self._commit_offsets(cons)
                    log.info("stopping: offsets committed, %s", self.stats.as_dict())
        finally:
            await self._index.close()

    async def _loop(
        self, cons: AIOKafkaConsumer, policies: AIOKafkaConsumer, stop: anyio.Event
    ) -> None:
        last_progress = 0.0
        while not stop.is_set():
            now = self.clock()
            due = self.engine.next_due_ms()
            wait = IDLE_WAIT_MS if due is None else max(0, min(IDLE_WAIT_MS, due - now))
            try:
                batch = await cons.getmany(timeout_ms=wait, max_records=MAX_BATCH)
            except KafkaError as exc:
                raise BrokerError(f"reading input topics failed: {exc!r}") from exc
            if self._rebalance_error is not None:
                raise self._rebalance_error
            await self._follow_policies(policies, to_end=False)
            if batch:
                await self._ingest(cons, batch)
            await self._fire_due()
            await self._extend_horizon()
            self.stats.pending_in_wheel = self.engine.pending_in_wheel
            if self._on_progress is not None and time.monotonic() - last_progress >= 0.5:
                last_progress = time.monotonic()
                result = self._on_progress(self.stats)
                if result is not None:
                    await result

    # -- policies ---------------------------------------------------------------------------

    async def _follow_policies(self, cons: AIOKafkaConsumer, *, to_end: bool) -> None:
        """Apply policy updates; at start read the whole compacted topic first."""
        if to_end:
            async for batch in read_to_end(cons, self.config.topics.policies):
                await self._apply_policy_batch(batch)
            return
        await self._apply_policy_batch(await cons.getmany(timeout_ms=0))

    async def _apply_policy_batch(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        for records in batch.values():
            for rec in records:
                result = self.book.apply_update(rec.key, rec.value, rec.timestamp)
                if isinstance(result, model.Rejection):
                    assert self._producer is not None
                    out = OutputBuffer(self._producer)
                    await self._dead_letter(out, rec, result)
                    await all_acked(await out.flush())
                else:
                    self.stats.policy_updates += 1
                    log.info("policy update applied: %s", result)

    # -- recovery ---------------------------------------------------------------------------

    async def _sync_tombstones(self) -> None:
        """Fold new entries of ``expiry.tombstones`` into the index, so a rebuilt index (or a
        partition that comes from another instance) never resurrects a deleted record."""
        assert self._index is not None
        topic = self.config.topics.tombstones
        stored = await self._index.offsets()
        start = {p: o for (t, p), o in stored.items() if t == topic}
        folded = 0
        async with consumer(self.bootstrap) as cons:
            async for batch in read_to_end(cons, topic, start=start):
                updates: list[tuple[model.Stamp, Slot]] = []
                offsets: dict[Slot, int] = {}
                keys = [
                    r.key.decode() for recs in batch.values() for r in recs if r.key and r.value
                ]
                priors = await self._index.get_many(keys)
                for tp, recs in batch.items():
                    for rec in recs:
                        offsets[(topic, tp.partition)] = rec.offset + 1
                        prior = priors.get(rec.key.decode()) if rec.key else None
                        state = model.deletion_from_tombstone(rec.value, prior)
                        if state is not None:
                            updates.append((state, (topic, tp.partition)))
                            priors[state.identity.key] = state
                await self._index.write(updates, offsets)
                folded += len(updates)
            if folded:
                log.info("recovery: %d deletions folded in from %s", folded, topic)

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self._index is not None
        assert self._consumer is not None
        stored = await self._index.offsets()
        slots = [(tp.topic, tp.partition) for tp in assigned]
        if any(slot not in stored for slot in slots):
            # A partition this instance never held (another instance had it) is rebuilt from
            # its input topic, so first learn what was deleted meanwhile (incremental: only
            # the tombstones since the last sync are read).
            await self._sync_tombstones()
        fresh = [tp for tp, slot in zip(assigned, slots, strict=True) if slot not in stored]
        # A synchronous seek to the first offset: aiokafka's seek_to_beginning is lazy, and
        # from inside a rebalance callback it let the first fetched batches through twice.
        starts = await self._consumer.beginning_offsets(fresh) if fresh else {}
        for tp, slot in zip(assigned, slots, strict=True):
            self._next_offset[slot] = stored[slot] if slot in stored else starts[tp]
            self._consumer.seek(tp, self._next_offset[slot])
        self._owned.update(slots)
        pending = await self._index.pending(slots, before=self.engine.horizon_end)
        self.engine.load(pending)
        log.info("assigned %s: %d timers within the horizon", _fmt(slots), len(pending))
        self.ready.set()  # ready means: partitions owned, positions set, timers loaded

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        assert self._index is not None
        await self._writer.settle()
        slots = {(tp.topic, tp.partition) for tp in revoked}
        if not slots:
            return
        self._owned.difference_update(slots)
        for slot in slots:
            self._next_offset.pop(slot, None)
        dropped = self.engine.reset_timers()
        kept = await self._index.pending(self._owned, before=self.engine.horizon_end)
        self.engine.load(kept)
        log.info("revoked %s: %d timers handed back", _fmt(sorted(slots)), dropped - len(kept))

    # -- ingest -----------------------------------------------------------------------------

    async def _ingest(
        self, cons: AIOKafkaConsumer, batch: Mapping[TopicPartition, list[Any]]
    ) -> None:
        assert self._index is not None
        assert self._producer is not None
        now = self.clock()
        skew = self.config.max_clock_skew_ms
        parsed: list[tuple[Any, Slot, model.InputEvent | model.Rejection]] = []
        next_offset = self._next_offset
        for tp, records in batch.items():
            slot = (tp.topic, tp.partition)
            expected = next_offset.get(slot)
            if expected is None:
                continue  # fetched before our assignment callback positioned the partition
            # A fetch started before a seek hands back records again after it; they would be
            # harmless (redelivery changes nothing) but cost a lookup each.
            records = [rec for rec in records if rec.offset >= expected]
            if records:
                next_offset[slot] = records[-1].offset + 1
            for rec in records:
                ev = model.parse_event(
                    rec.value, categories=self._categories, now_ms=now, max_skew_ms=skew
                )
                parsed.append((rec, slot, ev))
        priors = await self._writer.lookup(
            ev.identity.key for _, _, ev in parsed if isinstance(ev, model.InputEvent)
        )
        changed: dict[str, tuple[model.Stamp, Slot]] = {}
        offsets: dict[Slot, int] = {}
        out = OutputBuffer(self._producer)
        for rec, slot, ev in parsed:
            offsets[slot] = rec.offset + 1
            self.stats.events += 1
            if isinstance(ev, model.Rejection):
                await self._dead_letter(out, rec, ev)
                continue
            key = ev.identity.key
            known = changed.get(key)
            prior = known[0] if known else priors.get(key)
            outcome = self.engine.feed(ev, prior, now, slot)
            self.stats.verdicts[outcome.verdict.value] += 1
            for fired in outcome.fired:
                await self._send_tombstone(out, fired)
                changed[key] = (fired.after, slot)
            if outcome.state is not None:
                changed[key] = (outcome.state, slot)
                if outcome.publish:
                    self.stats.stamped += 1
                    await out.add(
                        self.config.topics.stamped,
                        key.encode(),
                        model.encode_stamp(outcome.state, ev.data),
                        timestamp_ms=now,
                    )
        # Write-behind: the index gets this batch once the broker has acked its outputs,
        # while the loop goes on; the next batch's lookups see its states meanwhile.
        await self._writer.submit(list(changed.values()), await out.flush(), offsets)
        if time.monotonic() - self._committed_at >= COMMIT_EVERY_S:
            await self._commit_offsets(cons)

    async def _commit_offsets(self, cons: AIOKafkaConsumer) -> None:
        """Commit to Kafka what the index already holds. The index is the truth for where
        reading resumes; the group's offsets are for lag monitoring, so once a second is
        plenty and saves a round trip per batch."""
        owned = {
            TopicPartition(t, p): o
            for (t, p), o in self._writer.committable.items()
            if (t, p) in self._owned
        }
        self._writer.committable.clear()
        self._committed_at = time.monotonic()
        try:
            if owned:
                await cons.commit(owned)
        except KafkaError as exc:
            # The index has the truth; a failed commit only delays the group's lag metric.
            log.warning("offset commit failed (the index keeps the position): %r", exc)

    async def _dead_letter(self, out: OutputBuffer, rec: Any, why: model.Rejection) -> None:
        """The original key and value, unchanged, with the reason in headers."""
        self.stats.dead_letters += 1
        self.stats.dead_letter_codes[why.code] += 1
        headers = [
            (model.H_ERROR, why.code.encode()),
            (model.H_DETAIL, why.detail.encode()),
            (model.H_TOPIC, rec.topic.encode()),
            (model.H_PARTITION, str(rec.partition).encode()),
            (model.H_OFFSET, str(rec.offset).encode()),
        ]
        log.warning(
            "dead letter %s[%d]@%d: %s (%s)",
            rec.topic,
            rec.partition,
            rec.offset,
            why.code,
            why.detail,
        )
        await out.add(self.config.topics.dlq, rec.key, rec.value, headers=headers)

    # -- timers -----------------------------------------------------------------------------

    async def _send_tombstone(self, out: OutputBuffer, fired: Fired) -> None:
        """The tombstone event, and the Kafka-native tombstone that compacts the stamp away."""
        key = fired.before.identity.key.encode()
        if fired.reason == "explicit":
            self.stats.explicit += 1
        else:
            self.stats.tombstones += 1
            if fired.before.expires_at is not None:
                self.stats.observe_lag(fired.emitted_at - fired.before.expires_at)
        event = model.encode_tombstone(
            fired.before, reason=fired.reason, emitted_at=fired.emitted_at
        )
        t = self.config.topics
        await out.add(t.tombstones, key, event, timestamp_ms=fired.emitted_at)
        await out.add(t.stamped, key, None, timestamp_ms=fired.emitted_at)

    async def _fire_due(self) -> None:
        """Emit the tombstones of due timers; their index write follows the acks, behind."""
        assert self._index is not None
        assert self._producer is not None
        now = self.clock()
        if now - self._generation_checked_at >= GENERATION_CHECK_MS:
            self._generation_checked_at = now
            generation = await self._index.generation()
            if generation != self._generation:
                await self._reload_timers(generation)
        due = self.engine.advance(now)
        if not due:
            return
        out = OutputBuffer(self._producer)
        for fired, _slot in due:
            await self._send_tombstone(out, fired)
        await self._writer.submit([(f.after, slot) for f, slot in due], await out.flush())

    async def _reload_timers(self, generation: int) -> None:
        """``replay`` changed expiries in the index: load the horizon's timers afresh."""
        assert self._index is not None
        await self._writer.settle()
        self._generation = generation
        self.engine.reset_timers()
        pending = await self._index.pending(self._owned, before=self.engine.horizon_end)
        self.engine.load(pending)
        log.info("the index was changed by a replay: %d timers reloaded", len(pending))

    async def _extend_horizon(self) -> None:
        assert self._index is not None
        target = self.engine.horizon_target(self.clock())
        if target is None:
            return
        await self._writer.settle()  # the slice must see every state written so far
        stamps = await self._index.pending(
            self._owned, since=self.engine.horizon_end, before=target
        )
        self.engine.extend_horizon(target, stamps)


def _fmt(slots: Any) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in slots) or "nothing"

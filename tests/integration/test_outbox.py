"""The outbox against the real broker: what one batch of effects puts on the changelog, in
which order."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError

from stream_expiry import codec
from stream_expiry.config import parse_config
from stream_expiry.errors import BrokerError
from stream_expiry.holds import Hold, HoldBook
from stream_expiry.kafka import consumer, producer
from stream_expiry.outbox import Outbox, all_acked
from stream_expiry.policy import PolicyBook
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore
from stream_expiry.state.restore import restore_partitions
from tests.conftest import read_all, read_topic
from tests.integration.service_helpers import config_text

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiokafka import AIOKafkaProducer

    from stream_expiry.config import Config
    from stream_expiry.state.processor import Effects
    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

T0 = 1_800_000_000_000


class _Rec:
    def __init__(self, offset: int, value: bytes) -> None:
        self.offset, self.key, self.value = offset, None, value


def _error(offset: int, ts: int, record_id: str = "e1") -> _Rec:
    body = {"category": "error", "org": "acme", "record_id": record_id, "ts": ts}
    return _Rec(offset, orjson.dumps(body))


def _processor(
    topics: TopicSet, tmp_path: Path, category: str, topic: str
) -> tuple[Config, PartitionProcessor]:
    """A config keeping ``category`` a minute, and a processor of ``topic``'s partition 0 on
    a store in memory, at T0."""
    config = parse_config(
        config_text(topics, str(tmp_path), f'[retention.defaults]\n{category} = "1m"\n')
    )
    book = PolicyBook(config, {})
    store = PartitionStore(MemoryKV())
    return config, PartitionProcessor.from_config(topic, 0, store, config, book, now_ms=T0)


async def _restored(broker: str, topics: TopicSet, topic: str, now_ms: int) -> PartitionStore:
    """A store of ``topic``'s partition 0 restored from the changelog alone, as after a
    crash that lost the disk."""
    store = PartitionStore(MemoryKV())
    async with consumer(broker) as cons:
        await restore_partitions(
            cons,
            {(topic, 0): store},
            stamped=topics.stamped,
            tombstones=topics.tombstones,
            now_ms=now_ms,
        )
    return store


class _AcksHeld:
    """The real producer, its acks held back until ``release`` (a broker slow to answer),
    those of ``topic`` only if given (its partition's leader slow to answer)."""

    def __init__(self, prod: AIOKafkaProducer, topic: str | None = None) -> None:
        self._prod, self._topic = prod, topic
        self._released = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._prod, name)

    def release(self) -> None:
        self._released.set()

    async def send_batch(self, batch: Any, topic: str, partition: int) -> Any:
        ack = await self._prod.send_batch(batch, topic, partition=partition)
        if self._topic not in (None, topic):
            return ack

        async def held() -> Any:
            await self._released.wait()
            return await ack

        return asyncio.ensure_future(held())


@contextlib.asynccontextmanager
async def _tombstone_acks_held(
    broker: str, topics: TopicSet, config: Config
) -> AsyncIterator[Outbox]:
    """An outbox running over a producer whose acks of ``expiry.tombstones`` are held
    while the block runs; at its end they are released and the outbox drained and closed."""
    async with producer(broker) as prod:
        slow = _AcksHeld(prod, topics.tombstones)
        outbox = Outbox(slow, config.topics, dict.fromkeys(topics.all, 2))
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            yield outbox
            slow.release()
            with anyio.fail_after(10):
                await outbox.drain()
            outbox.close()


class _TombstonesRefused:
    """The real producer, but a batch for the tombstones topic is refused, as when its
    partition's leader stays away past the producer's timeout."""

    def __init__(self, prod: AIOKafkaProducer, topic: str) -> None:
        self._prod, self._topic = prod, topic

    def __getattr__(self, name: str) -> Any:
        return getattr(self._prod, name)

    async def send_batch(self, batch: Any, topic: str, partition: int) -> Any:
        if topic == self._topic:
            refused = asyncio.get_running_loop().create_future()
            refused.set_exception(KafkaTimeoutError())
            return refused
        return await self._prod.send_batch(batch, topic, partition=partition)


async def test_a_life_an_event_ended_goes_out_before_the_life_it_started(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An event at a record's expiry, before its timer fired, ends that life and starts the
    next in one batch. On ``expiry.stamped`` the null must come first: compaction keeps a
    key's last message, and a restore takes it as the record's state."""
    config, proc = _processor(topics, tmp_path, "error", topics.errors)
    first = proc.process([_error(0, T0)], T0)
    at_expiry = T0 + 60_000
    second = proc.process([_error(1, at_expiry)], at_expiry)  # the timer has not fired
    assert [f.reason for f in second.tombstones] == ["ttl"]
    assert len(second.stamps) == 1
    async with producer(broker) as prod:
        outbox = Outbox(prod, config.topics, dict.fromkeys(topics.all, 2))
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            await all_acked(await outbox.send([(proc, first)], T0))
            await all_acked(await outbox.send([(proc, second)], at_expiry))
            await outbox.drain()
            outbox.close()
    stamped = [r for r in await read_all(broker, topics.stamped) if r.key is not None]
    assert [
        (r.value is None, codec.deleted_at_of(r.headers), codec.reason_of(r.headers))
        for r in stamped
    ] == [(False, None, None), (True, at_expiry - 1, "ttl"), (False, None, None)]
    (event,) = await read_all(broker, topics.tombstones)  # its deletion time, as the null's
    assert codec.deleted_at_of(event.headers) == at_expiry - 1
    latest = orjson.loads(stamped[-1].value)
    assert (latest["created_at"], latest["previous_deleted_at"]) == (
        "2027-01-15T08:01:00.000Z",
        "2027-01-15T08:00:59.999Z",
    )


async def test_a_null_waits_for_its_tombstone_and_is_not_sent_without_it(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The null on ``expiry.stamped`` says the record's tombstone went out. Sent beside
    the tombstone, it was acked while the tombstone was refused: the session restarted,
    restored the null as a deletion, and the record was never tombstoned (a review).
    Neither that null nor the stamp of the record's next life, sent later, may reach the
    changelog; restored from it, the record is tombstoned again."""
    config, proc = _processor(topics, tmp_path, "error", topics.errors)
    partitions = dict.fromkeys(topics.all, 2)
    at = T0 + 60_000
    async with producer(broker) as prod:
        outbox = Outbox(prod, config.topics, partitions)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            await all_acked(await outbox.send([(proc, proc.process([_error(0, T0)], T0))], T0))
            await outbox.drain()
            tg.cancel_scope.cancel()
        fired = proc.fire_due(at, 100)
        assert [f.reason for f in fired.tombstones] == ["ttl"]
        later = proc.process([_error(1, at)], at)  # the record's next life, sent after
        assert [state.identity.record_id for state, _ in later.stamps] == ["e1"]
        refusing = Outbox(_TombstonesRefused(prod, topics.tombstones), config.topics, partitions)

        async def send_both() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(refusing.run)
                await refusing.send([(proc, fired)], at)
                await refusing.send([(proc, later)], at)

        with anyio.fail_after(30), pytest.raises(ExceptionGroup) as failed:
            await send_both()
        assert failed.group_contains(BrokerError, match="did not acknowledge")
    stamped = [r for r in await read_all(broker, topics.stamped) if r.key is not None]
    assert [(r.key, r.value is None) for r in stamped] == [(b"acme/_/live/error/e1", False)]
    assert await read_all(broker, topics.tombstones) == []

    store = await _restored(broker, topics, topics.errors, at)
    restored = PartitionProcessor.from_config(
        topics.errors, 0, store, config, PolicyBook(config, {}), now_ms=at
    )
    again = restored.fire_due(at, 100)
    assert [(f.before.identity.record_id, f.reason) for f in again.tombstones] == [("e1", "ttl")]


async def test_a_send_cancelled_while_the_queue_is_full_is_settled_and_the_drain_ends(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A clean stop cancels the timer task, then waits for the outbox to drain. Cancelled
    while the outbox's queue was full (a backlog), its send left the entry counted and
    never queued: the drain waited until the stop was forced (a review). The send
    finishes queueing first; everything it counted settles."""
    config, proc = _processor(topics, tmp_path, "error", topics.errors)
    async with producer(broker) as prod:
        slow = _AcksHeld(prod)
        outbox = Outbox(slow, config.topics, dict.fromkeys(topics.all, 2), max_in_flight=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            for n in range(2):  # the settler waits for the first's acks; the second fills the queue
                await outbox.send([(proc, proc.process([_error(n, T0, f"r{n}")], T0))], T0)
            third = proc.process([_error(2, T0, "r2")], T0)

            async def broker_answers_later() -> None:
                await anyio.sleep(1)  # after the cancellation below: part of the scenario
                slow.release()

            tg.start_soon(broker_answers_later)
            with anyio.move_on_after(0.5):  # the timer task cancelled by a stop
                await outbox.send([(proc, third)], T0)
            with anyio.fail_after(10):
                await outbox.drain()
            outbox.close()
    assert len(await read_all(broker, topics.stamped)) == 3


async def test_a_stamp_goes_ahead_of_a_waiting_null_unless_it_is_the_same_records(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """While a null waits for its tombstone's ack, another record's stamp goes out at once:
    the ingest's stamps waited behind every firing's acks, and 10k expirations/s beside
    20k events/s of ingest lost a third of their lag (round 33). The record's own next life
    still waits, behind its null."""
    config, proc = _processor(topics, tmp_path, "error", topics.errors)
    at = T0 + 60_000

    def keys(records: list[Any]) -> list[tuple[bytes, bool]]:
        return [(r.key, r.value is None) for r in records if r.key is not None]

    e1, e2 = b"acme/_/live/error/e1", b"acme/_/live/error/e2"
    async with _tombstone_acks_held(broker, topics, config) as outbox:
        await outbox.send([(proc, proc.process([_error(0, T0)], T0))], T0)
        fired = proc.fire_due(at, 100)
        assert [f.reason for f in fired.tombstones] == ["ttl"]
        await outbox.send([(proc, fired)], at)  # its null waits for the tombstone's ack
        await outbox.send([(proc, proc.process([_error(1, at, "e2")], at))], at)
        first_two = [(e1, False), (e2, False)]  # e2's stamp arrives while the null waits
        early = await read_topic(
            broker, topics.stamped, until=lambda got: len(keys(got)) >= 2, timeout_s=10
        )
        assert keys(early) == first_two
        next_life = proc.process([_error(2, at + 1)], at + 1)
        assert [state.identity.key for state, _ in next_life.stamps] == [e1.decode()]
        await outbox.send([(proc, next_life)], at + 1)
    assert keys(await read_all(broker, topics.stamped)) == [
        (e1, False),
        (e2, False),
        (e1, True),
        (e1, False),
    ]


async def test_a_stamp_waits_behind_the_same_records_stamp_held_beside_a_null(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A slice whose erasure makes a null holds its whole changelog batch back, its other
    records' stamps too. A later slice's touch of one of them went out at once, ahead of
    the create's stamp: the changelog ended with the unslid expiry, and a restore fired
    the session 30 s early (a review). A stamp of a record with any message held waits."""
    config, proc = _processor(topics, tmp_path, "session", topics.sessions)

    def session(offset: int, ts: int, record_id: str, op: str) -> _Rec:
        body = {"category": "session", "org": "acme", "record_id": record_id, "ts": ts, "op": op}
        return _Rec(offset, orjson.dumps(body))

    touched = T0 + 30_000
    async with _tombstone_acks_held(broker, topics, config) as outbox:
        created = proc.process([session(0, T0, "x", "delete"), session(1, T0, "s", "create")], T0)
        assert (len(created.tombstones), len(created.stamps)) == (1, 1)
        await outbox.send([(proc, created)], T0)  # held: x's null waits for its tombstone
        slid = proc.process([session(2, touched, "s", "touch")], touched)
        assert [state.expires_at for state, _ in slid.stamps] == [touched + 60_000]
        await outbox.send([(proc, slid)], touched)
    s = b"acme/_/live/session/s"
    expiries = [
        orjson.loads(r.value)["expires_at"]
        for r in await read_all(broker, topics.stamped)
        if r.key == s
    ]
    assert expiries == ["2027-01-15T08:01:00.000Z", "2027-01-15T08:01:30.000Z"]
    restored = (await _restored(broker, topics, topics.sessions, touched)).get(s.decode())
    assert restored is not None
    assert restored.expires_at == touched + 60_000


class _SentInOrder(_AcksHeld):
    """Acks of ``topic`` held back, as :class:`_AcksHeld`, and the topic of each batch
    sent, in order."""

    def __init__(self, prod: AIOKafkaProducer, topic: str) -> None:
        super().__init__(prod, topic)
        self.topics: list[str] = []

    async def send_batch(self, batch: Any, topic: str, partition: int) -> Any:
        self.topics.append(topic)
        return await super().send_batch(batch, topic, partition)


async def test_a_stamp_that_drops_a_held_life_waits_for_that_lifes_tombstone(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A hold kept a session past its expiry, and a touch started its next life. At the
    release, the kept life's tombstone goes with no null (the record lives on) beside a
    stamp of the running life without it. That stamp went out at once: acked while the
    tombstone was not, a restore from it would never tombstone the kept life (a review).
    It now waits for the tombstone's ack, as a null does."""
    config, _ = _processor(topics, tmp_path, "session", topics.sessions)
    holds = HoldBook()
    holds.place(Hold("h1", "acme", None, None, None, None, "case 7", T0))
    proc = PartitionProcessor.from_config(
        topics.sessions, 0, PartitionStore(MemoryKV()), config, PolicyBook(config, {}),
        now_ms=T0, holds=holds,
    )  # fmt: skip

    def session(offset: int, ts: int, op: str) -> _Rec:
        body = {"category": "session", "org": "acme", "record_id": "s", "ts": ts, "op": op}
        return _Rec(offset, orjson.dumps(body))

    partitions = dict.fromkeys(topics.all, 2)
    expired, touched = T0 + 60_000, T0 + 120_000
    async with producer(broker) as prod:
        outbox = Outbox(prod, config.topics, partitions)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            steps: list[tuple[Effects, int]] = [(proc.process([session(0, T0, "create")], T0), T0)]
            steps.append((proc.fire_due(expired, 100), expired))
            steps.append((proc.process([session(1, touched, "touch")], touched), touched))
            for effects, at in steps:
                await outbox.send([(proc, effects)], at)
                await outbox.drain()
            tg.cancel_scope.cancel()
        assert [held for held, _, _ in steps[1][0].deferred] != []  # the hold kept it
        holds.release("h1")
        released = proc.release_due(touched, budget=100)
        assert [f.after.live for f in released.tombstones] == [True]
        assert [state.held_lives for state, _ in released.stamps] == [()]
        slow = _SentInOrder(prod, topics.tombstones)
        outbox = Outbox(slow, config.topics, partitions)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            await outbox.send([(proc, released)], touched)
            # Sent: the tombstone, unacknowledged. The stamp waits for its ack.
            assert slow.topics == [topics.tombstones]
            slow.release()
            with anyio.fail_after(10):
                await outbox.drain()
            outbox.close()
        assert slow.topics == [topics.tombstones, topics.stamped]


async def test_the_release_of_an_old_erasure_sends_the_ended_lifes_null_alone_after_it(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A record erased in its first life, created again, and that second life expired (its
    tombstone and null gone out); a hold placed; the first life's delete read again (a new
    consumer group): dated before the second life's creation, it names no life, and the
    hold defers it, stamped. The release sends it, naming no life, and the second life's
    null again, which ends the changelog at that life's end (the deferral's stamp would
    otherwise be the record's state). That life's tombstone event went out a second time
    with it; it goes out once. The null waits for the erasure's ack, as every null does:
    acked alone, a restore would find that end and never send the erasure."""
    config, _ = _processor(topics, tmp_path, "error", topics.errors)
    holds = HoldBook()
    proc = PartitionProcessor.from_config(
        topics.errors, 0, PartitionStore(MemoryKV()), config, PolicyBook(config, {}),
        now_ms=T0, holds=holds,
    )  # fmt: skip

    def error(offset: int, ts: int, op: str) -> _Rec:
        body = {"category": "error", "org": "acme", "record_id": "e1", "ts": ts, "op": op}
        return _Rec(offset, orjson.dumps(body))

    partitions = dict.fromkeys(topics.all, 2)
    expired, reread, released_at = T0 + 60_200, T0 + 120_000, T0 + 130_000
    end = expired - 1  # the second life's end
    async with producer(broker) as prod:
        outbox = Outbox(prod, config.topics, partitions)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            steps: list[tuple[Effects, int]] = []
            for offset, (ts, op) in enumerate([(T0, "create"), (T0 + 100, "delete"),
                                               (T0 + 200, "create")]):  # fmt: skip
                steps.append((proc.process([error(offset, ts, op)], T0 + 200), T0 + 200))
            steps.append((proc.fire_due(expired, 100), expired))
            holds.place(Hold("h1", "acme", None, None, None, None, "case 7", T0))
            steps.append((proc.process([error(3, T0 + 100, "delete")], reread), reread))
            for effects, at in steps:
                proc.settle(effects, at)
                await outbox.send([(proc, effects)], at)
                await outbox.drain()
            tg.cancel_scope.cancel()
        assert [reason for _, reason, _ in steps[-1][0].deferred] == ["explicit"]
        holds.release("h1")
        released = proc.release_due(released_at, budget=100)
        slow = _SentInOrder(prod, topics.tombstones)
        outbox = Outbox(slow, config.topics, partitions)
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            await outbox.send([(proc, released)], released_at)
            assert slow.topics == [topics.tombstones]  # the erasure, unacknowledged
            slow.release()
            with anyio.fail_after(10):
                await outbox.drain()
            outbox.close()
        assert slow.topics == [topics.tombstones, topics.stamped]
    events = [orjson.loads(r.value) for r in await read_all(broker, topics.tombstones)]
    assert [(e["reason"], e["created_at"]) for e in events] == [
        ("explicit", "2027-01-15T08:00:00.000Z"),  # the first life's erasure
        ("ttl", "2027-01-15T08:00:00.200Z"),  # the second life's end: once
        ("explicit", None),  # the erasure the hold deferred, naming no life
    ]
    stamped = [r for r in await read_all(broker, topics.stamped) if r.key is not None]
    last = stamped[-1]
    assert (last.value, codec.deleted_at_of(last.headers), codec.reason_of(last.headers)) == (
        None,
        end,
        "ttl",
    )
    restored = await _restored(broker, topics, topics.errors, released_at)
    state = restored.get(last.key.decode())
    assert state is not None
    assert (state.created_at, state.deleted_at, state.held, state.erase_at) == (
        T0 + 200,
        end,
        False,
        None,
    )


async def test_an_erasure_read_again_while_the_next_life_runs_names_its_request(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An erasure read again (a redelivery) after the record was created again ends no
    life of the changelog: its tombstone goes with no null, and it still names the request
    it carries out (``expiry-request``, ``expiry-request-event-id``), as the first one
    does: an auditor matches each tombstone to its request. Mutant: the outbox's
    ``held = [*held, *fired.request]`` left out, and the tombstone named no request."""
    config, proc = _processor(topics, tmp_path, "error", topics.errors)

    def error(offset: int, ts: int, op: str) -> _Rec:
        body = {"category": "error", "org": "acme", "record_id": "e1", "ts": ts, "op": op}
        if op == "delete":
            body["event_id"] = "gdpr-1"
        return _Rec(offset, orjson.dumps(body))

    events = [(T0, "create"), (T0 + 100, "delete"), (T0 + 200, "create"), (T0 + 100, "delete")]
    async with producer(broker) as prod:
        outbox = Outbox(prod, config.topics, dict.fromkeys(topics.all, 2))
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            for offset, (ts, op) in enumerate(events):
                effects = proc.process([error(offset, ts, op)], T0 + 200)
                proc.settle(effects, T0 + 200)
                await outbox.send([(proc, effects)], T0 + 200)
            with anyio.fail_after(10):
                await outbox.drain()
            outbox.close()
    tombs = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 2)
    said = [
        (orjson.loads(r.value)["reason"], codec.request_of(list(r.headers or ()))) for r in tombs
    ]
    assert said == [
        ("explicit", (f"{topics.errors}[0]@1", "gdpr-1")),
        ("explicit", (f"{topics.errors}[0]@3", "gdpr-1")),
    ]


async def test_an_earlier_life_a_hold_kept_says_on_its_tombstone_why_it_was_late(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A hold kept a session past its expiry, a touch started its next life, and the
    release came two minutes after that expiry: the kept life's tombstone (no null, the
    record lives on) says ``expiry-late-cause: hold``, as a record's last life's does.
    Mutant: the outbox's late cause left off tombstones with no null."""
    config, _ = _processor(topics, tmp_path, "session", topics.sessions)
    holds = HoldBook()
    holds.place(Hold("h1", "acme", None, None, None, None, "case 7", T0))
    proc = PartitionProcessor.from_config(
        topics.sessions, 0, PartitionStore(MemoryKV()), config, PolicyBook(config, {}),
        now_ms=T0, holds=holds,
    )  # fmt: skip

    def session(offset: int, ts: int, op: str) -> _Rec:
        body = {"category": "session", "org": "acme", "record_id": "s", "ts": ts, "op": op}
        return _Rec(offset, orjson.dumps(body))

    expired, touched, released_at = T0 + 60_000, T0 + 120_000, T0 + 180_000
    async with producer(broker) as prod:
        outbox = Outbox(prod, config.topics, dict.fromkeys(topics.all, 2))
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            steps = [(proc.process([session(0, T0, "create")], T0), T0)]
            steps.append((proc.fire_due(expired, 100), expired))
            steps.append((proc.process([session(1, touched, "touch")], touched), touched))
            holds.release("h1")
            steps.append((proc.release_due(released_at, budget=100), released_at))
            for effects, at in steps:
                proc.settle(effects, at)
                await outbox.send([(proc, effects)], at)
            with anyio.fail_after(10):
                await outbox.drain()
            outbox.close()
    assert [f.after.live for f in steps[-1][0].tombstones] == [True]  # no null follows it
    (tomb,) = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 1)
    assert orjson.loads(tomb.value)["reason"] == "ttl"
    assert codec.late_cause_of(list(tomb.headers or ())) == "hold"

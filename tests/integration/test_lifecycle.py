"""The service's lifecycle edges against the real broker: a stop at any moment, readiness
through a rebalance, and a restore longer than the group's timeouts (README "Running it for
real", CONTRACT "Command line": ``/readyz``)."""

from __future__ import annotations

import dataclasses
import urllib.error
import urllib.request
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition
from prometheus_client import CollectorRegistry

from bench.changelog import changelog_messages, produce_changelog
from stream_expiry import firing
from stream_expiry import service as service_module
from stream_expiry.broker import free_port
from stream_expiry.endpoints import open_listener, serve_http
from stream_expiry.health import Health, Phase
from stream_expiry.kafka import abandon_join, consumer, ensure_topics
from stream_expiry.metrics import ServiceMetrics
from stream_expiry.service import ASSIGNORS, Service, wall_clock_ms
from stream_expiry.state.restore_workers import restore_stores
from tests.conftest import make_topic_set, wait_for
from tests.integration.service_helpers import config_for, event, produce
from tests.log_capture import captured_logs

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

# Stamps on the changelog to restore: the restore is held by a gate (``_GatedService``),
# not made long by its size, so a loaded machine cannot finish it before the rebalance.
RESTORE_STAMPS = 2000
SESSION_MS = 6000  # the service's default
# Far below the ~6 s the test broker holds a first JoinGroup: a behaviour bound, not a speed.
JOIN_STOP_BOUND_S = 2.0


class _GatedService(Service):
    """The service whose restores wait for ``gate``: a restore as long as the test needs,
    whatever the machine's speed (one of 1.2 M stamps finished before the rebalance on a
    loaded machine). A restore that blocks the group's assignment callback, as before the
    fix, keeps the gate from ever opening: the group waits, and the test fails."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = anyio.Event()
        self.restores_begun = 0

    async def _restore(self, tps: list[TopicPartition]) -> int:
        self.restores_begun += 1
        await self.gate.wait()
        return await super()._restore(tps)


class _Unpositioned(Service):
    """The service whose positioning of restored partitions waits for ``gate``: their
    timers are loaded, their input not read yet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = anyio.Event()
        self.positioning = anyio.Event()

    async def _position(self, tps: list[TopicPartition]) -> None:
        self.positioning.set()
        await self.gate.wait()
        await super()._position(tps)


class _Reassigned(Service):
    """The service whose assignments after its first wait at two gates: ``taken`` before
    the assignment is taken (the revocation is over, the next assignment not taken: the
    member owns nothing) and ``restored`` before its restore."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken, self.restored = anyio.Event(), anyio.Event()
        self.at_taken, self.at_restored = anyio.Event(), anyio.Event()

    async def assign(self, assigned: list[TopicPartition]) -> None:
        if self.stats.assignments >= 1:
            self.at_taken.set()
            await self.taken.wait()
        await super().assign(assigned)

    async def _restore(self, tps: list[TopicPartition]) -> int:
        if self.stats.assignments >= 2:
            self.at_restored.set()
            await self.restored.wait()
        return await super()._restore(tps)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return status, orjson.loads(body)["phase"]


async def _readyz(url: str) -> tuple[int, str]:
    """``/readyz``'s status and the phase it gives, over HTTP."""
    return await anyio.to_thread.run_sync(_get, url)


class _Counted(ConsumerRebalanceListener):  # type: ignore[misc]
    """The assignments a plain member of the group receives."""

    def __init__(self, service: Service | None = None) -> None:
        self.assigned: list[set[TopicPartition]] = []
        self._service = service
        self.service_ready_then: list[bool] = []  # whether the service was ready at each

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.assigned.append(set(assigned))
        if self._service is not None:
            self.service_ready_then.append(self._service.ready.is_set())


async def _member(
    broker: str, group: str, topics: TopicSet, listener: _Counted, stop: anyio.Event
) -> None:
    """Another member of the service's group (its assignors), heartbeating and polling
    until ``stop``: the one the broker tells of a member it dropped."""
    options: dict[str, Any] = {
        "group_id": group,
        "partition_assignment_strategy": ASSIGNORS,
        "session_timeout_ms": SESSION_MS,
        "heartbeat_interval_ms": SESSION_MS // 4,
    }
    async with consumer(broker, **options) as member:
        member.subscribe(list(topics.inputs), listener=listener)
        while not stop.is_set():
            await member.getmany(timeout_ms=100)


async def _committed_on(
    broker: str, group: str, slots: list[tuple[str, int]], *, timeout_s: float
) -> None:
    """Poll until ``group`` has committed an offset on one of ``slots``."""
    async with consumer(broker, group_id=group) as reader:
        with anyio.fail_after(timeout_s):
            while True:
                for topic, partition in slots:
                    if await reader.committed(TopicPartition(topic, partition)):
                        return
                await anyio.sleep(0.2)


async def test_a_member_restoring_rejoins_a_rebalance_at_once(broker: str, tmp_path: Path) -> None:
    """The group's coordinator sends no heartbeat while an assignment callback runs: a
    restore in there kept the member from hearing of a rebalance, and the whole group
    waited for it (on Kafka: a restore longer than the session timeout had the member
    dropped and the group rebalance again when it came back). The restore now runs beside
    the callback, its partitions paused, and a revocation stops it."""
    topics = make_topic_set()  # three partitions a topic: each of three members owns some
    await ensure_topics(broker, topics.all, partitions=3)
    await produce_changelog(
        broker,
        topics.stamped,
        changelog_messages(RESTORE_STAMPS, wall_clock_ms(), topics.inputs, partitions=3),
    )
    config = config_for(topics, str(tmp_path / "state"), workers=1)
    other = _Counted()
    stop_other = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_member, broker, config.group_id, topics, other, stop_other)
        await wait_for(lambda: bool(other.assigned), timeout_s=30)
        service = _GatedService(
            config,
            bootstrap_servers=broker,
            environ={},
            consumer_options={
                "session_timeout_ms": SESSION_MS,
                "heartbeat_interval_ms": SESSION_MS // 4,
            },
        )
        stop = anyio.Event()
        tg.start_soon(service.run, stop)
        await wait_for(lambda: service.restores_begun == 1, timeout_s=60)
        assert service.health.phase is Phase.RESTORING
        # A member joins while the service restores: the group rebalances at once, the
        # restore is stopped (what it restored is kept) and taken up again after.
        third = _Counted(service)
        tg.start_soon(_member, broker, config.group_id, topics, third, stop_other)
        try:
            # The group assigns the member that joined, and the service takes its part of
            # that generation (an assignment callback of its own), while its restore waits.
            await wait_for(lambda: bool(third.assigned), timeout_s=30)
            await wait_for(lambda: service.stats.assignments >= 2, timeout_s=30)
        except TimeoutError:
            pytest.fail("the group waited for the restore, or went on without the service")
        finally:
            service.gate.set()  # a restore that blocks the group ends now, in any case
        await wait_for(service.ready.is_set, timeout_s=120)
        # The group keeps it: its commits are taken (a dropped member's are refused).
        # Events on every input topic: with three members, it may own none of one topic.
        kinds = {topics.conversations: "conversation", topics.sessions: "session"}
        kinds[topics.errors] = "error"
        await produce(
            broker,
            [(t, *event(kind, f"r{i}")) for t, kind in kinds.items() for i in range(10)],
        )
        assert service.owned, "three members, three partitions a topic: one is its"
        await _committed_on(broker, config.group_id, sorted(service.owned), timeout_s=30)
        stop.set()
        stop_other.set()
    assert service.stats.assignments == 2


async def test_a_restart_waits_out_neither_idle_wait(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What fell due while the service was down fires as soon as its partition has read
    the backlog found at its assignment (none here but the one event: at once once it is
    positioned): the firing task, asleep for ``firing.IDLE_S`` while it had nothing to
    fire, once waited out the rest of that sleep (0.17-0.2 s, bench.bench_restart); the
    end of a partition's catch-up wakes it. Both idle waits are an hour here, so a wait
    for either fails the test. The loop's (``IDLE_WAIT_MS``, all partitions paused while
    they restore) never held the first read of a resumed partition: aiokafka's fetcher
    fetches it at the resume and wakes the waiting ``getmany``; the event waiting on the
    input shows it still does."""
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)
    monkeypatch.setattr(service_module, "IDLE_WAIT_MS", 3_600_000)
    due = 5
    await produce_changelog(
        broker,
        topics.stamped,
        changelog_messages(50, wall_clock_ms(), topics.inputs, due=due, partitions=2),
    )
    await produce(broker, [(topics.sessions, *event("session", "waiting"))])
    service = _Unpositioned(
        config_for(topics, str(tmp_path / "state")),
        bootstrap_servers=broker,
        environ={},
        consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 500},
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run, stop)
        with anyio.fail_after(30):
            await service.positioning.wait()
        assert service.health.phase is Phase.RESTORING  # not positioned yet
        assert service.stats.events == 0
        service.gate.set()
        try:
            await wait_for(lambda: service.stats.events == 1, timeout_s=15)
        except TimeoutError:
            pytest.fail("the resumed partitions' first read waited for the loop's idle wait")
        try:
            await wait_for(lambda: service.stats.tombstones == due, timeout_s=15)
        except TimeoutError:
            pytest.fail("the due records waited out the firing's idle wait")
        stop.set()
    assert service.stats.tombstones == due


async def test_readyz_is_503_from_a_revocation_until_the_next_assignment_is_restored(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A second member joins: between the first member's revocation and its next
    assignment it owns nothing, and its ``/readyz`` (the real endpoint, over HTTP) says
    503, phase ``rebalancing``; then 503 ``restoring`` while it restores what it was
    given, and 200 once that is restored (CONTRACT "Command line": ``/readyz``). The
    steps are held by gates, not raced."""
    health = Health()
    metrics = ServiceMetrics()
    service = _Reassigned(
        config_for(topics, str(tmp_path / "state")),
        bootstrap_servers=broker,
        environ={},
        health=health,
        metrics=metrics,
        consumer_options={
            "session_timeout_ms": SESSION_MS,
            "heartbeat_interval_ms": SESSION_MS // 4,
        },
    )
    metrics.watch_stats(service.stats)
    metrics.watch_health(health)
    listener = await open_listener(free_port(), "127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    readyz = f"http://127.0.0.1:{port}/readyz"
    other = _Counted()
    stop, stop_other = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as server:
        server.start_soon(serve_http, listener, metrics.exposition, health)
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run, stop)
            with anyio.fail_after(30):
                await service.ready.wait()
            assert await _readyz(readyz) == (200, "running")
            tg.start_soon(_member, broker, service.config.group_id, topics, other, stop_other)
            try:
                with anyio.fail_after(30):
                    await service.at_taken.wait()
                assert not service.owned  # revoked, the next assignment not taken
                assert await _readyz(readyz) == (503, "rebalancing")
                service.taken.set()
                with anyio.fail_after(30):
                    await service.at_restored.wait()
                assert await _readyz(readyz) == (503, "restoring")
            finally:
                service.taken.set()
                service.restored.set()
            await wait_for(lambda: service.health.phase is Phase.RUNNING, timeout_s=30)
            assert await _readyz(readyz) == (200, "running")
            assert service.owned
            assert service.stats.assignments == 2
            await wait_for(lambda: bool(other.assigned), timeout_s=30)  # the group split
            stop.set()
            stop_other.set()
        server.cancel_scope.cancel()


class _FirstAssignmentHeld(Service):
    """The service whose first assignment waits at ``taken``: the group answered the join,
    and the member has taken nothing yet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken, self.at_taken = anyio.Event(), anyio.Event()

    async def assign(self, assigned: list[TopicPartition]) -> None:
        if self.stats.assignments == 0:
            self.at_taken.set()
            await self.taken.wait()
        await super().assign(assigned)


async def test_readyz_says_joining_until_the_group_assigns_partitions(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """From the subscription until the group's first assignment is taken, ``/readyz`` (over
    HTTP) says 503, phase ``joining``: it said ``starting`` through the whole join (a
    trial), and an operator could not tell a member still connecting from one the group
    coordinator keeps waiting for its partitions. Then ``restoring``, then 200."""
    health = Health()
    metrics = ServiceMetrics()
    service = _FirstAssignmentHeld(
        config_for(topics, str(tmp_path / "state")),
        bootstrap_servers=broker,
        environ={},
        health=health,
        metrics=metrics,
    )
    metrics.watch_health(health)
    listener = await open_listener(free_port(), "127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    readyz = f"http://127.0.0.1:{port}/readyz"
    stop = anyio.Event()
    async with anyio.create_task_group() as server:
        server.start_soon(serve_http, listener, metrics.exposition, health)
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run, stop)
            try:
                with anyio.fail_after(30):
                    await service.at_taken.wait()
                assert await _readyz(readyz) == (503, "joining")
            finally:
                service.taken.set()
            with anyio.fail_after(30):
                await service.ready.wait()
            assert await _readyz(readyz) == (200, "running")
            stop.set()
        server.cancel_scope.cancel()


async def test_a_stop_while_joining_is_prompt_and_takes_nothing(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """``stop`` set during the first join: ``run`` returns at once, not once the join the
    broker holds (~6 s) has ended and the group been left; nothing is committed, and the
    next start reads the events."""
    await produce(broker, [(topics.conversations, *event("conversation", "r1"))])
    config = config_for(topics, str(tmp_path / "state"))
    service = Service(config, bootstrap_servers=broker, environ={})
    stop = anyio.Event()
    with captured_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run, stop)
            await wait_for(lambda: "joining group" in logs.text.getvalue(), timeout_s=30)
            stop.set()
            stopped = anyio.current_time()
        took = anyio.current_time() - stopped
    assert took < JOIN_STOP_BOUND_S, logs.text.getvalue()
    assert not service.ready.is_set()
    assert service.stats.events == 0
    again = Service(config, bootstrap_servers=broker, environ={})
    stop_again = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(again.run, stop_again)
        await wait_for(lambda: again.stats.stamped == 1, timeout_s=30)
        stop_again.set()


class _Held(ConsumerRebalanceListener):  # type: ignore[misc]
    """Holds each callback with partitions in it until released: a stop meanwhile must
    not cut it short (a revocation commits)."""

    def __init__(self) -> None:
        self.inside = anyio.Event()
        self.release = anyio.Event()
        self.finished: list[str] = []

    async def _hold(self, what: str, tps: list[TopicPartition]) -> None:
        if not tps:
            return
        self.inside.set()
        await self.release.wait()
        self.finished.append(what)
        self.inside, self.release = anyio.Event(), anyio.Event()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._hold("revoked", revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._hold("assigned", assigned)


async def test_a_join_is_abandoned_only_outside_the_rebalance_callbacks(
    broker: str, topics: TopicSet
) -> None:
    """``abandon_join`` cancels aiokafka's coordination task while it waits on the broker,
    never while it runs an assignment or a revocation callback."""
    group = f"{topics.prefix}-held"
    options: dict[str, Any] = {
        "group_id": group,
        "session_timeout_ms": SESSION_MS,
        "heartbeat_interval_ms": 500,
    }
    held = _Held()
    other = _Counted()
    stop_other = anyio.Event()
    async with anyio.create_task_group() as tg, consumer(broker, **options) as cons:
        cons.subscribe(list(topics.inputs), listener=held)
        for expected in ("assigned", "revoked"):
            inside = held.inside
            with anyio.fail_after(30):
                await inside.wait()
            assert not await abandon_join(cons), f"in the {expected} callback"
            held.release.set()
            await wait_for(lambda: expected in held.finished, timeout_s=5)  # noqa: B023
            if expected == "assigned":  # another member: the group rebalances
                tg.start_soon(_member, broker, group, topics, other, stop_other)
        # Revoked, now rejoining: the JoinGroup the broker holds is given up.
        assert await abandon_join(cons)
        tg.cancel_scope.cancel()  # the other member too, in its join
    assert held.finished == ["assigned", "revoked"]


def _gauge(registry: CollectorRegistry, name: str) -> float | None:
    """The value of an unlabelled metric of ``registry`` (None: not there)."""
    return registry.get_sample_value(name)


async def test_the_restoring_gauge_counts_a_restore_from_its_start_until_it_ends_or_is_stopped(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``stream_expiry_restoring_partitions``, what an operator alerts on while due records
    wait for a restore (the oldest overdue gauge counts no partition being restored), read
    0 until the restore's first fetch (the stores' opening and the changelog's offsets
    come before it); and a revocation that stopped a restore left it at its last count,
    with no restore running. The first restore is held, its changelog read, until the
    group rebalances around a member that joins; the next assignment is held before it
    is taken."""
    await produce_changelog(
        broker,
        topics.stamped,
        changelog_messages(200, wall_clock_ms(), topics.inputs, partitions=2),
    )
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    restoring = partial(_gauge, registry, "stream_expiry_restoring_partitions")
    remaining = partial(_gauge, registry, "stream_expiry_restore_remaining_records")
    seen: list[tuple[int, float | None, float | None]] = []  # (partitions, at start, read)
    read, held = anyio.Event(), anyio.Event()

    async def first_held(paths: Mapping[tuple[str, int], str], **kwargs: Any) -> Any:
        at_start = restoring()
        stores, result = await restore_stores(paths, **kwargs)
        seen.append((len(paths), at_start, restoring()))
        if len(seen) == 1:
            read.set()
            try:
                await held.wait()  # the revocation stops it here
            except BaseException:
                for store in stores.values():
                    store.close()
                raise
        return stores, result

    monkeypatch.setattr(service_module, "restore_stores", first_held)
    service = _Reassigned(
        config_for(topics, str(tmp_path / "state"), workers=1),
        bootstrap_servers=broker,
        environ={},
        metrics=metrics,
        consumer_options={
            "session_timeout_ms": SESSION_MS,
            "heartbeat_interval_ms": SESSION_MS // 4,
        },
    )
    other = _Counted()
    stop, stop_other = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run, stop)
        with anyio.fail_after(30):
            await read.wait()
        partitions, at_start, when_read = seen[0]
        assert at_start == partitions > 0  # before the first fetch: it read 0
        assert when_read == partitions
        assert (registry.get_sample_value("stream_expiry_restored_records_total") or 0) > 0
        tg.start_soon(_member, broker, service.config.group_id, topics, other, stop_other)
        try:
            with anyio.fail_after(30):
                await service.at_taken.wait()  # revoked, the restore stopped
            assert restoring() == 0  # it stayed at the stopped restore's count
            assert remaining() == 0
        finally:
            service.taken.set()
            service.restored.set()
        await wait_for(lambda: service.health.phase is Phase.RUNNING, timeout_s=30)
        assert len(seen) == 2
        assert restoring() == 0
        assert remaining() == 0
        stop.set()
        stop_other.set()


@dataclasses.dataclass
class _AtReady:
    """What ``/metrics`` said when the service said it was ready, and what it owned."""

    owned: frozenset[tuple[str, int]]
    lag: dict[tuple[str, int], float]
    assigned: float | None
    pending: float
    timers: float | None
    pending_in_stores: int
    timers_in_wheels: int


class _GaugesAtReady(Service):
    """The service that reads its gauges at each assignment's end, as it says it is
    ready (``/readyz`` 200 from then on)."""

    def __init__(self, *args: Any, registry: CollectorRegistry, **kwargs: Any) -> None:
        super().__init__(*args, metrics=ServiceMetrics(registry), **kwargs)
        assert self.metrics is not None
        self.metrics.watch_stats(self.stats)
        self.registry = registry
        self.at_ready: list[_AtReady] = []

    def _settled(self) -> None:
        super()._settled()
        samples = [s for family in self.registry.collect() for s in family.samples]
        procs = self.processors.values()
        self.at_ready.append(
            _AtReady(
                owned=self.owned,
                lag={
                    (s.labels["topic"], int(s.labels["partition"])): s.value
                    for s in samples
                    if s.name == "stream_expiry_consumer_lag"
                },
                assigned=self.registry.get_sample_value("stream_expiry_assigned_partitions"),
                pending=sum(s.value for s in samples if s.name == "stream_expiry_pending_records"),
                timers=self.registry.get_sample_value("stream_expiry_timers_in_wheel"),
                pending_in_stores=sum(p.store.counts.pending_total for p in procs),
                timers_in_wheels=sum(p.timers for p in procs),
            )
        )


async def test_the_partition_gauges_are_those_of_the_assignment_when_it_is_ready(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """At the end of an assignment the consumer lag series are those of the partitions
    owned now, at their backlogs, and the store gauges count those partitions: the lag
    series came with the loop's first commit after the partitions' first fetch, and the
    store gauges with a refresh once a second, so a scrape right after /readyz said 200
    showed no lag (the first assignment) or the partitions of before the rebalance."""
    await produce(
        broker,
        [(topics.conversations, *event("conversation", f"c{i}")) for i in range(12)],
    )
    service = _GaugesAtReady(
        config_for(topics, str(tmp_path / "state"), '[retention.defaults]\nconversation = "1h"\n'),
        bootstrap_servers=broker,
        environ={},
        registry=CollectorRegistry(),
        consumer_options={
            "session_timeout_ms": SESSION_MS,
            "heartbeat_interval_ms": SESSION_MS // 4,
        },
    )
    other = _Counted()
    stop, stop_other = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run, stop)
        with anyio.fail_after(30):
            await service.ready.wait()
        first = service.at_ready[-1]
        assert set(first.lag) == first.owned
        assert first.assigned == len(first.owned)
        if len(first.owned) == 6:  # the whole backlog (a first join may come in steps)
            assert sum(first.lag.values()) == 12
        await wait_for(lambda: service.stats.stamped == 12, timeout_s=30)
        tg.start_soon(_member, broker, service.config.group_id, topics, other, stop_other)
        await wait_for(lambda: 0 < len(service.at_ready[-1].owned) < 6, timeout_s=60)
        shared = service.at_ready[-1]
        assert set(shared.lag) == shared.owned
        assert shared.assigned == len(shared.owned)
        assert shared.pending == shared.pending_in_stores
        assert shared.timers == shared.timers_in_wheels
        stop.set()
        stop_other.set()


class _PositionedPaused(Service):
    """The service whose partitions, once positioned, stay paused until ``gate``: the
    consumer fetches nothing for them meanwhile."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.positioned = anyio.Event(), anyio.Event()

    async def _position(self, tps: list[TopicPartition]) -> None:
        await super()._position(tps)
        self.positioned.set()
        await self.gate.wait()


async def test_a_paused_partitions_lag_follows_its_end(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The lag gauge of a partition positioned and paused counts the events sent to it
    since: the consumer fetches nothing for a paused partition, so the end its last fetch
    gave (or the positioning's) stood still, and the gauge showed a lag of 0 over events
    unread. Its end is asked of the broker once a second while it is paused."""
    registry = CollectorRegistry()
    service = _PositionedPaused(
        config_for(topics, str(tmp_path / "state")),
        bootstrap_servers=broker,
        environ={},
        metrics=ServiceMetrics(registry),
    )

    def lag() -> float:
        return sum(
            sample.value
            for family in registry.collect()
            if family.name == "stream_expiry_consumer_lag"
            for sample in family.samples
            if sample.labels["topic"] == topics.conversations
        )

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run, stop)
        try:
            with anyio.fail_after(30):
                await service.positioned.wait()
            assert lag() == 0
            await produce(
                broker,
                [(topics.conversations, *event("conversation", f"c{i}")) for i in range(4)],
            )
            try:
                await wait_for(lambda: lag() == 4, timeout_s=10)
            except TimeoutError:
                pytest.fail(f"the paused partitions' lag stayed at {lag()}, not 4")
        finally:
            service.gate.set()
        await wait_for(lambda: service.stats.events == 4, timeout_s=30)
        await wait_for(lambda: lag() == 0, timeout_s=10)
        stop.set()

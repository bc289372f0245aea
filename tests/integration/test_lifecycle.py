"""The service's lifecycle edges against the real broker: a stop at any moment, readiness
through a rebalance, and a restore longer than the group's timeouts (README "Running it for
real", CONTRACT "Command line": ``/readyz``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition

from bench.changelog import changelog_messages, produce_changelog
from stream_expiry.health import Phase
from stream_expiry.kafka import abandon_join, consumer, ensure_topics
from stream_expiry.service import ASSIGNORS, Service, wall_clock_ms
from tests.conftest import make_topic_set, wait_for
from tests.integration.service_helpers import config_for, event, produce
from tests.log_capture import captured_logs

if TYPE_CHECKING:
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

    async def _restore(self, tps: list[TopicPartition]) -> None:
        self.restores_begun += 1
        await self.gate.wait()
        await super()._restore(tps)


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

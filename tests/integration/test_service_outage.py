"""A broker outage under the service: every connection cut for 15 s mid-traffic, then restored.

The broker is not restarted (Tansu would lose everything); a proxy it advertises is cut
(:mod:`stream_expiry.testing.proxy`), so the service, the test's producer and its reader all
lose the broker at once. Records fall due during the outage. Afterwards nothing is lost,
nothing arrives before its expiry (arrival times at the test), the service never exited,
and ``/readyz`` said 503 during the cut and 200 after it. ``STREAM_EXPIRY_TEST_OUTAGE_S``
changes the outage's length (15 s by default; 30 before: the service says the broker
failed within a second of the cut and then starts a session every 2 s, so 15 s, over twice
its 6 s session, goes through the same steps: a session failed, sessions tried again, the
broker answering again; only the waiting was longer).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest
from prometheus_client import CollectorRegistry

from stream_expiry.broker import EmbeddedBroker, free_port
from stream_expiry.health import Health
from stream_expiry.kafka import consumer, ensure_topics, partitions_of, producer
from stream_expiry.metrics import ServiceMetrics
from stream_expiry.service import Service, wall_clock_ms
from stream_expiry.testing.processes import ArrivalLog, spawn_command, spawn_service
from stream_expiry.testing.proxy import proxied_broker
from stream_expiry.timeutil import parse_ts
from tests.conftest import make_topic_set, read_all, wait_for
from tests.integration.service_helpers import (
    config_for,
    config_text,
    event,
    http_status,
    no_orphans,
    produce,
    running_service,
)

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

OUTAGE_S = float(os.environ.get("STREAM_EXPIRY_TEST_OUTAGE_S", "15"))
TTL_MS = 8_000
STARTED: list[Process] = []


_no_orphans = no_orphans(STARTED)


@pytest.mark.timeout(150)
async def test_sigterm_during_an_outage_stops_the_service_and_a_sink_cleanly(
    tmp_path: Path,
) -> None:
    """Seen in a trial: SIGTERM while a proxy in front of the broker dropped every
    connection ended ``run`` and ``sink`` with exit 3, "stopping a Kafka client was
    interrupted" (aiokafka's fetcher re-raised its retries' cancellation out of the consumer's
    stop); a consumer has nothing to flush, and the stop is a clean one: exit 0."""
    topics = make_topic_set()
    ports = {"run": free_port(), "sink": free_port()}
    async with proxied_broker() as proxy:
        await ensure_topics(proxy.address, topics.all, partitions=2)
        cfg = tmp_path / "service.toml"
        cfg.write_text(config_text(topics, str(tmp_path / "state")))
        procs = {
            "run": await spawn_service(
                proxy.address, cfg, STARTED, "--metrics-port", str(ports["run"])
            ),
            "sink": await spawn_command(
                [
                    "sink",
                    "sqlite",
                    "--path",
                    str(tmp_path / "s.db"),
                    "--config",
                    str(cfg),
                    "--bootstrap-servers",
                    proxy.address,
                    "--metrics-port",
                    str(ports["sink"]),
                ],
                STARTED,
            ),
        }

        async def readyz(want: int, timeout_s: float) -> None:
            for name, port in ports.items():
                with anyio.fail_after(timeout_s):
                    while (
                        await anyio.to_thread.run_sync(
                            http_status, f"http://127.0.0.1:{port}/readyz"
                        )
                        != want
                    ):
                        assert procs[name].process.returncode is None, procs[name].tail()
                        await anyio.sleep(0.25)  # a poll interval: the answer decides

        async with anyio.create_task_group() as tg:
            for proc in procs.values():
                tg.start_soon(proc.follow_log)
            await readyz(200, 60)
            proxy.cut()
            await readyz(503, 30)
            for proc in procs.values():
                proc.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(40):
                codes = {name: await p.process.wait() for name, p in procs.items()}
            tg.cancel_scope.cancel()
    tails = "\n".join(p.tail() for p in procs.values())
    assert codes == {"run": 0, "sink": 0}, tails
    assert not any("interrupted" in line for p in procs.values() for line in p.lines), tails
    # A clean stop either way: the session ended at the stop ("stopped: ..."), or the
    # service had said the outage first (its fetch failing within a second of the cut,
    # before the readiness probe's 503) and stopped in it, said as such. Either came first
    # on the same code (it failed 1 run of 3 on round 44's).
    assert procs["run"].log_has("stream_expiry.service: stopped:") or procs["run"].log_has(
        "stream_expiry.service: stopped while the broker fails"
    ), tails


@pytest.mark.timeout(OUTAGE_S + 150)
async def test_the_service_rides_out_a_broker_outage(tmp_path: Path) -> None:
    topics = make_topic_set()
    port = free_port()
    readyz = f"http://127.0.0.1:{port}/readyz"
    expires: dict[bytes, int] = {}
    statuses: list[tuple[float, int]] = []  # (monotonic, /readyz status)

    async with proxied_broker() as proxy:
        await ensure_topics(proxy.address, topics.all, partitions=2)
        cfg = tmp_path / "service.toml"
        retention = f'[retention.defaults]\nconversation = "{TTL_MS // 1000}s"\n'
        cfg.write_text(config_text(topics, str(tmp_path / "state"), retention))
        svc = await spawn_service(proxy.address, cfg, STARTED, "--metrics-port", str(port))
        tombstones = ArrivalLog(proxy.address, topics.tombstones)
        stop_traffic = anyio.Event()

        def alive() -> None:
            (tmp_path / "service.log").write_text("\n".join(svc.lines))
            if svc.process.returncode is not None:
                pytest.fail(f"the service exited ({svc.process.returncode}):\n{svc.tail(40)}")

        async def poll_readyz(want: int, timeout_s: float) -> None:
            end = time.monotonic() + timeout_s
            while True:
                alive()
                status = await anyio.to_thread.run_sync(http_status, readyz)
                statuses.append((time.monotonic(), status))
                if status == want:
                    return
                if time.monotonic() > end:
                    pytest.fail(f"/readyz never answered {want}: {statuses[-5:]}\n{svc.tail()}")
                await anyio.sleep(0.25)  # a poll interval: the answer decides

        async def traffic() -> None:
            """A record every 50 ms, through the outage: a producer whose requests outlast
            it holds what it sends meanwhile."""
            timeout_ms = int(OUTAGE_S * 1000) + 60_000
            async with producer(proxy.address, request_timeout_ms=timeout_ms) as prod:
                futures = []
                i = 0
                while not stop_traffic.is_set():
                    now = wall_clock_ms()
                    key, value = event("conversation", f"r{i}", ts=now)
                    expires[key] = now + TTL_MS
                    futures.append(await prod.send(topics.conversations, value, key=key))
                    i += 1
                    await anyio.sleep(0.05)  # the traffic's pace, not synchronisation
                for f in futures:
                    await f

        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.follow_log)
            tg.start_soon(tombstones.follow)
            await poll_readyz(200, 60)
            tg.start_soon(traffic)
            # Mid-traffic: some records are tombstoned already, others fall due in the cut.
            with anyio.fail_after(30):
                while len(tombstones.keys()) < 20:  # noqa: ASYNC110 - another task fills it
                    await anyio.sleep(0.1)
            proxy.cut()
            cut_at, cut_ms = time.monotonic(), wall_clock_ms()
            await poll_readyz(503, OUTAGE_S - 5)
            while time.monotonic() - cut_at < OUTAGE_S:
                alive()
                await anyio.sleep(0.2)  # the outage's length is the point of the test
            proxy.restore()
            restored_at, restored_ms = time.monotonic(), wall_clock_ms()
            await poll_readyz(200, 60)
            back_after = time.monotonic() - restored_at
            await anyio.sleep(2)  # more traffic after the restore
            stop_traffic.set()
            with anyio.fail_after(TTL_MS / 1000 + 60):
                while not set(expires) <= tombstones.keys():
                    alive()
                    await anyio.sleep(0.2)
            alive()
            svc.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await svc.process.wait() == 0, svc.tail()
            tg.cancel_scope.cancel()

    cut_count = sum(1 for at, s in statuses if cut_at <= at < restored_at and s == 503)
    assert cut_count >= 1, statuses
    assert back_after < 60
    counts = Counter(r.key for _, r in tombstones.arrivals)
    assert set(counts) == set(expires)
    for arrived, rec in tombstones.arrivals:
        body = orjson.loads(rec.value)
        assert body["reason"] == "ttl"
        assert parse_ts(body["expires_at"]) == expires[rec.key]
        assert arrived >= expires[rec.key], f"{rec.key!r} arrived early"
    due_in_cut = [k for k, due in expires.items() if cut_ms <= due < restored_ms]
    assert len(due_in_cut) > 20, "no records fell due during the outage"
    # The Kafka client's complaints, thinned to one of a kind every 10 s: ~170 lines a
    # second before (stream_expiry.logs.LibraryRepeats).
    client_lines = [line for line in svc.lines if " aiokafka" in line]
    assert len(client_lines) < 10 * (OUTAGE_S / 10 + 2), "\n".join(client_lines[-20:])
    # The service's own, when the outage broke its session (the client's retries may ride
    # a short one out): once when it began, again every 30 s (a session every 2 s said it
    # each time: 1,800 lines an hour), and once when it ended.
    failed = [line for line in svc.lines if "the broker failed" in line]
    still = [line for line in svc.lines if "the broker still fails" in line]
    assert len(failed) <= 1, failed
    assert len(still) <= OUTAGE_S / 30 + 1, still
    assert sum("the broker answers again" in line for line in svc.lines) == len(failed)


@pytest.mark.timeout(150)
async def test_a_broker_restarted_empty_gets_the_topics_made_again(tmp_path: Path) -> None:
    """Another cluster behind the same address after an outage (here the test broker
    restarted, which keeps nothing): the next session makes the missing topics and goes on.
    It ended with a ZeroDivisionError traceback: the restore divided by the partition count
    of a changelog topic that no longer existed."""
    topics = make_topic_set()
    port = free_port()
    first = EmbeddedBroker(port=port)
    address = first.start()
    second = EmbeddedBroker(port=port)
    try:
        config = config_for(topics, str(tmp_path / "state"), '[retention.defaults]\nerror = "1h"\n')
        async with running_service(config, address) as service:
            await produce(address, [(topics.errors, *event("error", "before"))])
            await wait_for(lambda: service.stats.stamped == 1, timeout_s=30)
            first.stop()
            second.start()
            async with consumer(address) as cons:
                with anyio.fail_after(60):
                    while not await partitions_of(cons, topics.stamped):  # noqa: ASYNC110
                        await anyio.sleep(0.1)  # polling the cluster: the service makes it
            await produce(address, [(topics.errors, *event("error", "after"))])
            await wait_for(lambda: service.stats.stamped == 2, timeout_s=60)
        stamped = await read_all(address, topics.stamped)
        assert [r.key for r in stamped] == [event("error", "after")[0]]
    finally:
        first.stop()
        second.stop()


class _Watched(Health):
    """The real health flags, remembering what the service said of itself meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.stop: anyio.Event | None = None
        self.stopping_early = 0  # stopping() while no stop was asked for
        self.reasons: list[str] = []

    def stopping(self) -> None:
        if self.stop is not None and not self.stop.is_set():
            self.stopping_early += 1
        super().stopping()

    def broker_unreachable(self, reason: str) -> None:
        self.reasons.append(reason)
        super().broker_unreachable(reason)


@pytest.mark.timeout(180)
async def test_the_overdue_gauge_rises_and_the_service_stays_live_through_an_outage(
    tmp_path: Path,
) -> None:
    """The gauge to alert on, ``stream_expiry_oldest_overdue_seconds``, read 0.0 through a
    70 s outage: it was set after each commit, and the loop waited on the broker. It now
    rises while the broker is cut, also once the session is torn down and the stores are
    closed. Meanwhile the service counts as live (/healthz 200: a session torn down to be
    tried again is no stop), and /readyz's reason is the error, not its task group's. The
    record falls due by the service's clock, moved on an hour once the broker is cut: with
    a 2 s TTL it had to be cut before then, and the wait for the lag gauges took 0.9-1.0 s
    of those 2 s beside a busy core (a record tombstoned first never made the gauge rise)."""
    topics = make_topic_set()
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    health = _Watched()

    def overdue() -> float:
        value = registry.get_sample_value("stream_expiry_oldest_overdue_seconds")
        return 0.0 if value is None else value

    def lag_series() -> list[dict[str, str]]:
        return [
            sample.labels
            for family in registry.collect()
            if family.name == "stream_expiry_consumer_lag"
            for sample in family.samples
        ]

    async with proxied_broker() as proxy:
        await ensure_topics(proxy.address, topics.all, partitions=2)
        config = config_for(
            topics, str(tmp_path / "state"), '[retention.defaults]\nconversation = "1h"\n'
        )
        ahead = [0]  # ms the service's clock runs ahead of the wall clock
        service = Service(
            config,
            bootstrap_servers=proxy.address,
            environ={},
            consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 500},
            health=health,
            metrics=metrics,
            clock=lambda: wall_clock_ms() + ahead[0],
        )
        stop = health.stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run, stop)
            with anyio.fail_after(30):
                await service.ready.wait()
            await produce(proxy.address, [(topics.conversations, *event("conversation", "c1"))])
            await wait_for(lambda: service.stats.stamped == 1, timeout_s=20)
            await wait_for(lambda: len(lag_series()) == 6, timeout_s=20)  # 3 inputs x 2
            proxy.cut()
            ahead[0] = 3_600_000  # the record falls due: its firing meets the outage
            await wait_for(lambda: overdue() >= 2.0, timeout_s=30)
            await wait_for(lambda: not service.processors, timeout_s=90)  # session torn down
            # The partitions are no longer this instance's: their lag series go with them
            # (they stayed, frozen, and after the broker came back beside the series of the
            # partitions the group gave it then, so a sum over the group counted them twice).
            assert lag_series() == []
            assert service.stats.assigned_partitions == 0
            closed_at = overdue()
            await wait_for(lambda: overdue() >= closed_at + 2.0, timeout_s=10)
            assert health.live
            # Said as what it is: "starting" read as a fresh start (a trial).
            assert health.report()["phase"] == "reconnecting"
            proxy.restore()
            await wait_for(lambda: service.stats.tombstones == 1, timeout_s=60)
            await wait_for(lambda: overdue() == 0.0, timeout_s=10)
            stop.set()
        assert health.stopping_early == 0
        assert health.reasons, "the outage was never said"
        assert not [r for r in health.reasons if "TaskGroup" in r], health.reasons


@pytest.mark.timeout(150)
async def test_a_stop_once_an_outage_closed_the_session_is_a_clean_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A trial: SIGTERM once an outage had closed the session, while the service started
    it again every few seconds, ended ``run`` with exit 3, "cannot reach Kafka" (4 runs of
    4): the failure of the session's restart was taken for the stop's. Nothing is lost in
    a stop during an outage (what was not committed is read again): a clean stop, said."""
    topics = make_topic_set()
    async with proxied_broker() as proxy:
        await ensure_topics(proxy.address, topics.all, partitions=2)
        config = config_for(
            topics, str(tmp_path / "state"), '[retention.defaults]\nconversation = "2s"\n'
        )
        async with running_service(config, proxy.address) as service:  # stopped at its end
            await produce(proxy.address, [(topics.conversations, *event("conversation", "c1"))])
            await wait_for(lambda: service.stats.stamped == 1, timeout_s=20)
            proxy.cut()  # before the record falls due: its firing fails, and the session
            await wait_for(lambda: not service.processors, timeout_s=90)
            # The outage closed the session: a revocation (the group's heartbeat lost first,
            # under load) empties the partitions too, and a stop then was a stop in a
            # rejoin, with nothing to say (a full run beside a busy core).
            await wait_for(lambda: "the broker failed" in caplog.text, timeout_s=90)
    assert "stopped while the broker fails" in caplog.text

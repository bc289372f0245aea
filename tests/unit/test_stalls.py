"""Telling a process that did not run from a broker outage (stream_expiry.stalls), with the
clocks injected: the arithmetic, the broker probe that retries instead of reporting an
outage, and the service's first broker failure after a stall."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import pytest
from prometheus_client import CollectorRegistry

from stream_expiry.config import parse_config
from stream_expiry.endpoints import watch_broker, watch_process
from stream_expiry.errors import BrokerUnavailableError
from stream_expiry.health import Health, Phase
from stream_expiry.kafka_settings import Connection
from stream_expiry.metrics import RekeyMetrics, ServiceMetrics, SinkMetrics
from stream_expiry.service import Service
from stream_expiry.sinks.store import MemoryStore
from stream_expiry.stalls import EXCUSE_WITHIN_S, StallNote, Stalls
from tests.conftest import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import SocketStream


class _Clocks:
    """The three clocks a :class:`Stalls` reads: boot time, monotonic, CPU time."""

    def __init__(self) -> None:
        self.wall = self.mono = self.cpu = 100.0

    def run(self, seconds: float, *, cpu: float = 0.0, mono: float | None = None) -> None:
        """Let ``seconds`` pass: ``cpu`` of them on the CPU, the monotonic clock moving
        ``mono`` (as much as the wall, unless the machine slept)."""
        self.wall += seconds
        self.mono += seconds if mono is None else mono
        self.cpu += cpu

    def stalls(self) -> Stalls:
        return Stalls(
            tick_s=0.25,
            wall=lambda: self.wall,
            monotonic=lambda: self.mono,
            cpu=lambda: self.cpu,
        )


def test_regular_turns_and_late_ones_below_the_threshold_are_no_stall() -> None:
    clocks = _Clocks()
    stalls = clocks.stalls()
    for _ in range(10):
        clocks.run(0.25, cpu=0.01)
        assert stalls.check() is None
    clocks.run(0.25 + 1.9)  # a turn 1.9 s late, off the CPU: below the 2 s threshold
    assert stalls.check() is None
    assert (stalls.count, stalls.seconds, stalls.longest_s) == (0, 0.0, 0.0)


def test_a_turn_late_on_the_cpu_is_kept_as_late_not_as_a_stall(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The loop blocked 8 s by the process' own work: no stall (the process ran, nothing
    said or counted), but the late turn is kept for the write fence, since the Kafka
    client's heartbeats did not run either. A pause is late too, described as a stall."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 0.3, cpu=0.3)  # a turn 300 ms late under load: not kept
    with caplog.at_level(logging.WARNING, logger="stream_expiry.stalls"):
        assert stalls.check() is None
        assert stalls.take_late() is None
        clocks.run(0.25 + 8.0, cpu=7.9)
        assert stalls.check() is None
    assert caplog.records == []
    assert stalls.count == 0
    late = stalls.take_late()
    assert late is not None
    assert late.seconds == pytest.approx(8.0)
    assert late.stall is None
    assert late.describe() == "the event loop was blocked for 8.0 s (the process' own work)"
    assert stalls.take_late() is None  # taken
    clocks.run(0.25 + 5.0)  # SIGSTOP
    stall = stalls.check()
    late = stalls.take_late()
    assert late is not None
    assert late.stall is stall
    assert late.describe() == "the process did not run for 5.0 s (paused, or starved of CPU)"


def test_the_longest_late_turn_is_kept_until_taken() -> None:
    """A block of 6 s, then one of 1 s before anyone asked: the 6 s one is what the fence
    must see, not the last."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 6.0, cpu=6.0)
    stalls.check()
    clocks.run(0.25 + 1.0, cpu=1.0)
    stalls.check()
    late = stalls.take_late()
    assert late is not None
    assert late.seconds == pytest.approx(6.0)


def test_a_pause_is_one_stall_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """SIGSTOP for 10.2 s: the turn comes 10.2 s late, with no CPU used meanwhile."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 10.2)
    with caplog.at_level(logging.WARNING, logger="stream_expiry.stalls"):
        stall = stalls.check()
        clocks.run(0.25)
        assert stalls.check() is None  # the next turn is on time again
    assert stall is not None
    assert stall.seconds == pytest.approx(10.2)
    assert not stall.slept
    assert [r.getMessage() for r in caplog.records] == [
        "the process did not run for 10.2 s (paused, or starved of CPU); not a broker "
        "outage: requests in flight may time out now, and what fell due meanwhile is late "
        "by as much"
    ]
    assert caplog.records[0].levelno == logging.WARNING
    clocks.run(0.25 + 3.0)
    assert stalls.check() is not None
    assert stalls.count == 2
    assert stalls.seconds == pytest.approx(13.2)
    assert stalls.longest_s == pytest.approx(10.2)


def test_a_loop_blocked_by_the_process_own_work_is_not_a_stall() -> None:
    """A restore or a garbage collection that holds the loop 5 s spends those 5 s on the
    CPU: the process ran. Half of it on the CPU (starved by other processes): the other
    half is a stall."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 5.0, cpu=5.0)
    assert stalls.check() is None
    clocks.run(0.25 + 6.0, cpu=3.0)
    stall = stalls.check()
    assert stall is not None
    assert stall.seconds == pytest.approx(3.0)


def test_a_machine_that_slept_is_told_from_a_paused_process() -> None:
    """The monotonic clock (the event loop's) stands still while the machine sleeps; boot
    time goes on, as the broker's clocks do."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 60.0, mono=0.25)
    stall = stalls.check()
    assert stall is not None
    assert stall.slept
    assert stall.describe() == "the process did not run for 60.0 s (the machine slept)"


def test_overlaps_notices_a_stall_before_the_watch_turn_does() -> None:
    """On resume, a probe's timeout may run before the watch's turn: the question itself
    notices the stall. A stall before ``since`` does not explain what started after it."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    since = stalls.now()
    clocks.run(0.1)
    assert not stalls.overlaps(since)
    clocks.run(10.0)  # paused while the probe waited
    assert stalls.overlaps(since)
    assert stalls.count == 1
    clocks.run(0.25)
    later = stalls.now()
    clocks.run(3.0, cpu=3.0)  # a real timeout: the process ran the whole time
    assert not stalls.overlaps(later)
    assert stalls.count == 1


def test_a_stall_excuses_one_broker_failure_within_a_minute() -> None:
    clocks = _Clocks()
    stalls = clocks.stalls()
    assert stalls.excuse() is None
    clocks.run(0.25 + 10.0)
    first = stalls.excuse()
    assert first is not None
    assert stalls.excuse() is None  # a second failure is the broker's
    clocks.run(0.25 + 4.0)
    assert stalls.check() is not None
    clocks.run(EXCUSE_WITHIN_S + 1, cpu=EXCUSE_WITHIN_S + 1)  # busy, not stalled
    assert stalls.excuse() is None  # too long ago to explain a failure now
    assert stalls.count == 2


_COMMAND_METRICS: dict[
    str, Callable[[CollectorRegistry], ServiceMetrics | SinkMetrics | RekeyMetrics]
] = {
    "run": ServiceMetrics,
    "sink": lambda registry: SinkMetrics("pg", registry),
    "rekey": RekeyMetrics,
}


@pytest.mark.parametrize("command", sorted(_COMMAND_METRICS))
def test_the_metrics_say_the_stalls(command: str) -> None:
    """Every long-running command's metrics (``run``, a sink, ``rekey``), under the same
    names: a fact of the process, so one alert covers each (a sink's and rekey's had none,
    and their pauses looked like broker outages)."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    metrics = _COMMAND_METRICS[command](CollectorRegistry())
    metrics.watch_stalls(stalls)
    clocks.run(0.25 + 10.0)
    stalls.check()
    clocks.run(0.25 + 2.5)
    stalls.check()
    registry = metrics.registry
    assert registry.get_sample_value("stream_expiry_process_stalls_total") == 2
    assert registry.get_sample_value(
        "stream_expiry_process_stalled_seconds_total"
    ) == pytest.approx(12.5)
    assert registry.get_sample_value(
        "stream_expiry_process_longest_stall_seconds"
    ) == pytest.approx(10.0)


async def _probe_against(stall_during_probe: bool) -> tuple[Stalls, list[str | None]]:
    """The broker probe against a server that answers no probe but the second: with
    ``stall_during_probe``, the first probe's wait is a pause of the process (the clocks
    jump while it waits); without, the server is merely silent (an outage)."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    health = Health()
    connections = 0
    seen: list[str | None] = []

    async def serve(stream: SocketStream) -> None:
        nonlocal connections
        connections += 1
        async with stream:
            request = await stream.receive()
            if connections == 1:
                if stall_during_probe:
                    clocks.run(10.0)  # the process did not run while the probe waited
                await anyio.sleep_forever()
            assert request[4:6] == b"\x00\x12"  # ApiVersions
            await stream.send(b"\x00\x00\x00\x08" + b"\x00" * 8)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        tg.start_soon(
            lambda: watch_broker(
                health,
                f"127.0.0.1:{port}",
                every_s=0.05,
                timeout_s=0.2,
                speak_kafka=True,
                stalls=stalls,
            )
        )
        with anyio.fail_after(5):
            while connections < 3:
                seen.append(health.broker_error)
                await anyio.sleep(0.01)
        seen.append(health.broker_error)
        tg.cancel_scope.cancel()
    return stalls, seen


@pytest.mark.asyncio
async def test_the_process_watch_every_command_runs_sees_a_stall_and_its_probe_asks_it() -> None:
    """``run``, the sink and ``rekey`` start :func:`watch_process`: the stalls' own watch,
    which notices a pause with nobody asking, and the broker probe of ``/readyz``, which
    asks it: a probe held while the process did not run is tried again (its 3 s timeout
    passes in real time here), and the broker is never marked unreachable. The sink and
    rekey probed without it and said "Kafka unreachable" after a SIGSTOP."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    async with anyio.create_task_group() as tg:
        watch_process(tg, stalls)  # no /readyz (rekey without --metrics-port): the watch alone
        clocks.run(10.0)
        await wait_for(lambda: stalls.count == 1)
        tg.cancel_scope.cancel()

    health = Health()
    connections = 0
    answered = anyio.Event()

    async def serve(stream: SocketStream) -> None:
        nonlocal connections
        connections += 1
        async with stream:
            await stream.receive()
            if connections == 1:
                clocks.run(10.0)  # the process did not run while the probe waited
                await anyio.sleep_forever()
            await stream.send(b"\x00\x00\x00\x08" + b"\x00" * 8)
            answered.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    seen: list[str | None] = []
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        watch_process(tg, stalls, health=health, conn=Connection(f"127.0.0.1:{port}"))
        with anyio.fail_after(10):
            while not answered.is_set():
                seen.append(health.broker_error)
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert connections == 2  # the held probe, then its retry at once
    assert seen == [None] * len(seen)
    assert stalls.count == 2


@pytest.mark.asyncio
async def test_a_store_ping_that_timed_out_while_the_process_did_not_run_is_asked_again() -> None:
    """The sink's store probe has the broker probe's race: a pause while a ping waits
    lets its deadline pass with the answer in the socket. Asked again, not unready; a
    ping that times out with the process running still is (test_endpoints)."""
    from stream_expiry.sinks.command import watch_store

    clocks = _Clocks()
    stalls = clocks.stalls()

    class PausedOnce(MemoryStore):
        pings = 0

        async def ping(self) -> None:
            self.pings += 1
            if self.pings == 1:
                clocks.run(10.0)  # the process did not run while the ping waited
                await anyio.sleep_forever()

    health, store = Health(watches_store=True), PausedOnce("pg")
    seen: list[str | None] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_store(health, store, every_s=0.05, stalls=stalls))
        with anyio.fail_after(5):
            while store.pings < 3:
                seen.append(health.store_error)
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert seen == [None] * len(seen)
    assert stalls.count == 1


@pytest.mark.asyncio
async def test_a_probe_that_timed_out_while_the_process_did_not_run_is_tried_again() -> None:
    stalls, seen = await _probe_against(stall_during_probe=True)
    assert seen == [None] * len(seen)  # never unreachable
    assert stalls.count == 1


@pytest.mark.asyncio
async def test_a_probe_that_timed_out_while_the_process_ran_is_an_outage() -> None:
    """Real outage detection is kept: the same silent server, no stall: unreachable."""
    stalls, seen = await _probe_against(stall_during_probe=False)
    assert "timed out" in next(e for e in seen if e is not None)
    assert stalls.count == 0


@pytest.mark.asyncio
async def test_the_first_broker_failure_after_a_stall_is_not_an_outage_the_second_is(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    """A Kafka request in flight through a pause fails on resume (its deadline passed):
    the session starts again at once, the broker is not marked unreachable, and the log
    says why. The next failure is the broker's, as before."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    service = Service(
        parse_config(f'state_dir = "{tmp_path}"'),
        bootstrap_servers="k:1",
        environ={},
        stalls=stalls,
    )
    service.health.running()
    service.ready.set()
    stop = anyio.Event()
    clocks.run(0.25 + 35.0)
    failure = BrokerUnavailableError("producing failed: KafkaTimeoutError")
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        assert await service._outage(failure, stop)
        assert service.health.broker_error is None
        assert service.health.phase is Phase.RECONNECTING
        said = [r.getMessage() for r in caplog.records if r.name == "stream_expiry.service"]
        assert said == [
            "a Kafka request failed (producing failed: KafkaTimeoutError) after the process "
            "did not run for 35.0 s (paused, or starved of CPU): not a broker outage; the "
            "session is started again, what was not committed is read again"
        ]
        async with anyio.create_task_group() as tg:
            tg.start_soon(service._outage, failure, stop)
            with anyio.fail_after(5):
                while service.health.broker_error is None:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            stop.set()
    assert "producing failed" in (service.health.broker_error or "")
    assert any("the broker failed" in r.getMessage() for r in caplog.records)


def test_a_pause_longer_than_the_liveness_limit_is_no_hung_loop() -> None:
    """``/healthz`` says 503 after 120 s without a loop heartbeat, and a Kubernetes
    liveness probe then kills the process. A pause of the process (SIGSTOP, a frozen VM)
    over 120 s made it so on resume, asked before the loop's first turn: a healthy
    process killed. Time the process did not run is not the loop's silence; a loop that
    hangs after the resume is still found, 120 s of running later."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    health = Health(stall_after_s=120, stalls=stalls)
    health.starting()
    health.running()
    clocks.run(10.0, cpu=10.0)
    health.beat()
    clocks.run(0.25 + 200.0)  # paused; /healthz is asked before the loop or the watch turn
    assert (health.live, health.stalled) == (True, False)
    assert stalls.count == 1  # noticed by the question itself
    clocks.run(119.0, cpu=119.0)  # the loop hangs, busy, after the resume
    assert health.live
    clocks.run(1.5, cpu=1.5)
    assert (health.live, health.stalled) == (False, True)
    health.beat()
    assert health.live
    clocks.run(0.25 + 600.0, mono=0.0)  # the machine slept 10 minutes: not the loop either
    assert health.live
    assert stalls.last is not None
    assert stalls.last.slept


def _kafka_record(level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(
        "aiokafka.consumer.fetcher",
        level,
        "fetcher.py",
        1,
        "Failed fetch messages from %s: %s",
        (111, "[Error 7] RequestTimedOutError"),
        None,
    )


def test_the_kafka_client_s_timeouts_just_after_a_stall_say_they_are_the_stall_s() -> None:
    """A pause longer than a request's timeout (45 s: the consumer's is 40 s) made aiokafka
    log an ERROR that read as the broker's failure: it is a warning that says why now."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    note = StallNote(stalls)
    before = _kafka_record()
    assert note.filter(before)
    assert (before.levelno, before.getMessage()) == (
        logging.ERROR,
        "Failed fetch messages from 111: [Error 7] RequestTimedOutError",
    )
    clocks.run(0.25 + 45.0)  # the record comes before the watch's own turn
    just_after = _kafka_record()
    assert note.filter(just_after)
    assert stalls.count == 1
    assert (just_after.levelno, just_after.levelname) == (logging.WARNING, "WARNING")
    assert just_after.getMessage() == (
        "Failed fetch messages from 111: [Error 7] RequestTimedOutError (just after the "
        "process did not run for 45.0 s (paused, or starved of CPU): not the broker's)"
    )
    clocks.run(3.0, cpu=3.0)
    later = _kafka_record()
    assert note.filter(later)
    assert later.levelno == logging.ERROR  # no longer the stall's
    info = _kafka_record(logging.INFO)
    clocks.run(0.25 + 5.0)
    assert note.filter(info)
    assert info.msg == "Failed fetch messages from %s: %s"  # only warnings and errors

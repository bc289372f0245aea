"""/metrics, /healthz and /readyz over a real socket with a real HTTP client, the health
state machine behind them, and the broker probe."""

from __future__ import annotations

import contextlib
import logging
import socket
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest
from aiokafka.conn import get_ip_port_afi
from prometheus_client import CONTENT_TYPE_LATEST

from stream_expiry.broker import free_port
from stream_expiry.endpoints import (
    open_listener,
    route,
    serve_http,
    watch_broker,
    watch_connection,
)
from stream_expiry.errors import ConfigurationError
from stream_expiry.health import Health, Phase
from stream_expiry.kafka_settings import Connection, KafkaSecurity, bootstrap_addresses
from stream_expiry.metrics import ServiceMetrics
from stream_expiry.service import ServiceStats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def _get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


async def get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    return await anyio.to_thread.run_sync(_get, url, method)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def served() -> AsyncIterator[tuple[str, Health, ServiceStats]]:
    health = Health()
    stats = ServiceStats(events=3)
    metrics = ServiceMetrics()
    metrics.watch_stats(stats)
    metrics.watch_health(health)
    listener = await open_listener(free_port(), "127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_http, listener, metrics.exposition, health)
        yield f"http://127.0.0.1:{port}", health, stats
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_metrics_are_served() -> None:
    async with served() as (base, _health, stats):
        stats.events = 42
        status, content_type, body = await get(base + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert b"stream_expiry_events_total 42.0" in body
    assert b"process_resident_memory_bytes" in body


@pytest.mark.asyncio
async def test_health_and_readiness_follow_the_lifecycle() -> None:
    async with served() as (base, health, _stats):
        await _lifecycle(base, health)


async def _lifecycle(base: str, health: Health) -> None:
    assert (await get(base + "/healthz"))[0] == 503  # not started
    health.starting()
    assert (await get(base + "/healthz"))[0] == 200
    status, content_type, body = await get(base + "/readyz")
    assert (status, content_type) == (503, "application/json")
    assert orjson.loads(body) == {
        "live": True, "ready": False, "phase": "starting", "stalled": False, "broker": "ok"
    }  # fmt: skip
    health.restoring()
    assert (await get(base + "/readyz"))[0] == 503
    health.running()
    assert (await get(base + "/readyz"))[0] == 200
    health.broker_unreachable("127.0.0.1:1 (Connection refused)")
    status, _, body = await get(base + "/readyz")
    assert status == 503
    assert orjson.loads(body) == {
        "live": True, "ready": False, "phase": "running", "stalled": False,
        "broker": "unreachable: 127.0.0.1:1 (Connection refused)",
    }  # fmt: skip
    assert (await get(base + "/healthz"))[0] == 200  # alive, only not ready
    health.broker_reachable()
    assert (await get(base + "/readyz"))[0] == 200
    health.stopping()
    assert (await get(base + "/healthz"))[0] == 503
    assert (await get(base + "/readyz"))[0] == 503


@pytest.mark.asyncio
async def test_other_paths_and_methods() -> None:
    async with served() as (base, _health, _stats):
        assert (await get(base + "/"))[0] == 404
        assert (await get(base + "/metrics", "POST"))[0] == 405
        status, _, body = await get(base + "/metrics", "HEAD")
        assert (status, body) == (200, b"")
        assert (await get(base + "/metrics?name[]=x"))[0] == 200


@pytest.mark.asyncio
async def test_a_port_in_use_or_out_of_range_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=rf"--metrics-port {port}: cannot listen"):
            await open_listener(port)
    for bad in (0, 99999):
        with pytest.raises(ConfigurationError, match="from 1 to 65535"):
            await open_listener(bad)


@pytest.mark.asyncio
async def test_a_host_that_is_not_this_machines_says_so_not_port_in_use() -> None:
    port = free_port()
    for host in ("192.0.2.1", "no-such-host.invalid"):  # TEST-NET-1; a reserved TLD
        with pytest.raises(ConfigurationError) as err:
            await open_listener(port, host)
        assert f"cannot listen on {host}:{port}" in str(err.value)
        assert "--metrics-host must name an address of this machine" in str(err.value)
        assert "another process" not in str(err.value)


def test_a_running_loop_that_stops_beating_is_not_live() -> None:
    clock = Clock()
    health = Health(stall_after_s=10, clock=clock)
    health.starting()
    health.restoring()
    clock.now += 1000  # a long restore is not a stall
    assert health.live
    health.running()
    clock.now += 9
    health.beat()
    clock.now += 9
    assert health.live
    assert health.ready
    clock.now += 2
    assert health.stalled
    assert not health.live
    assert not health.ready
    health.beat()
    assert health.ready
    # A loop that never beats once running stalls too, counted from when it began to run.
    health.starting()
    health.running()
    clock.now += 11
    assert health.stalled
    assert health.report()["stalled"] is True


def test_every_phase_answers_as_the_contract_says() -> None:
    expected = {
        Phase.STARTING: (True, False),
        Phase.JOINING: (True, False),
        Phase.RECONNECTING: (True, False),
        Phase.REBALANCING: (True, False),
        Phase.RESTORING: (True, False),
        Phase.RUNNING: (True, True),
        Phase.STOPPING: (False, False),
        Phase.STOPPED: (False, False),
    }
    assert set(expected) == set(Phase)  # a phase added is given its answer here
    for phase, (live, ready) in expected.items():
        health = Health()
        health.phase = phase
        assert (health.live, health.ready) == (live, ready), phase
        health.broker_unreachable("down")
        assert (health.live, health.ready) == (live, False), phase


def test_a_sink_is_ready_only_while_its_store_answers() -> None:
    """A store that does not answer makes a sink unready, not dead, and the report says why;
    a process without a store (the service) reports no store at all."""
    health = Health(watches_store=True)
    health.starting()
    health.running()
    assert health.report()["store"] == "ok"
    health.store_unreachable("PostgreSQL store 'pg' failed: connection refused")
    assert (health.live, health.ready) == (True, False)
    assert health.report()["store"] == (
        "unreachable: PostgreSQL store 'pg' failed: connection refused"
    )
    health.store_reachable()
    assert (health.live, health.ready) == (True, True)
    assert "store" not in Health().report()


@pytest.mark.asyncio
async def test_the_broker_probe_marks_an_unreachable_broker_and_its_return() -> None:
    health = Health()
    port = free_port()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_broker(health, f"127.0.0.1:{port}", every_s=0.02))
        with anyio.fail_after(5):
            while health.broker_error is None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert f"127.0.0.1:{port}" in health.broker_error
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
        async with listener:
            with anyio.fail_after(5):
                while health.broker_error is not None:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_the_kafka_probe_takes_a_server_that_drops_connections_for_a_dead_broker() -> None:
    """A proxy or load balancer in front of a dead broker accepts, then drops: unreachable.
    A server that answers the ApiVersions request is a broker: reachable again."""
    health = Health()
    answer = anyio.Event()
    requests: list[bytes] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            if answer.is_set():
                requests.append(await stream.receive())
                await stream.send(b"\x00\x00\x00\x08" + b"\x00" * 8)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        tg.start_soon(
            lambda: watch_broker(health, f"127.0.0.1:{port}", every_s=0.02, speak_kafka=True)
        )
        with anyio.fail_after(5):
            while health.broker_error is None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert "dropped without an answer" in health.broker_error
        answer.set()
        with anyio.fail_after(5):
            while health.broker_error is not None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    # The request is a well-formed ApiVersions v0 (api key 18), length-prefixed.
    size = int.from_bytes(requests[0][:4], "big")
    assert size == len(requests[0]) - 4
    assert requests[0][4:6] == b"\x00\x12"


@pytest.mark.parametrize(
    ("servers", "addresses"),
    [
        ("k1:9093", [("k1", 9093)]),
        (" k1:9093 , k2:9094", [("k1", 9093), ("k2", 9094)]),
        ("k1", [("k1", 9092)]),  # Kafka's default port
        ("[::1]:9093", [("::1", 9093)]),
        ("[::1]", [("::1", 9092)]),
        ("::1", [("::1", 9092)]),  # a bare IPv6 address has no port
        ("fe80::1:2", [("fe80::1:2", 9092)]),
        ("10.0.0.1:1", [("10.0.0.1", 1)]),
    ],
)
def test_the_probe_reads_bootstrap_addresses_as_the_kafka_client_does(
    servers: str, addresses: list[tuple[str, int]]
) -> None:
    assert bootstrap_addresses(servers) == addresses
    hosts = [get_ip_port_afi(entry)[:2] for entry in servers.split(",")]
    assert hosts == addresses  # aiokafka's own reading


def test_routes_answer_with_their_bodies() -> None:
    def metrics() -> bytes:
        return b"m 1\n"

    assert route(b"GET", b"/metrics?x=1", metrics, None) == (200, CONTENT_TYPE_LATEST, b"m 1\n")
    assert route(b"GET", b"/healthz", metrics, None) == (
        200, "application/json", b'{"live": true, "ready": true}\n'
    )  # fmt: skip
    assert route(b"DELETE", b"/metrics", metrics, None) == (
        405, "text/plain; charset=utf-8", b"only GET and HEAD\n"
    )  # fmt: skip
    assert route(b"GET", b"/", metrics, None) == (
        404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz or /readyz\n"
    )  # fmt: skip


@pytest.mark.asyncio
async def test_a_head_answer_has_headers_and_no_body() -> None:
    """(urllib never reads a HEAD answer's body, so this reads the raw bytes.)"""
    async with served() as (base, _health, _stats):
        host, port = base.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    answer += await stream.receive()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nCache-Control: no-store\r\nConnection: close" in head
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 0
    assert body == b""


@pytest.mark.asyncio
async def test_the_probe_takes_any_bootstrap_server_that_answers() -> None:
    health = Health()
    dead = free_port()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    live = listener.extra(anyio.abc.SocketAttribute.local_port)
    health.broker_unreachable("from before")
    async with listener, anyio.create_task_group() as tg:
        servers = f"127.0.0.1:{dead},127.0.0.1:{live}"
        tg.start_soon(lambda: watch_broker(health, servers, every_s=0.02))
        with anyio.fail_after(5):
            while health.broker_error is not None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT"])
async def test_every_command_probes_its_connection_in_kafka(protocol: str) -> None:
    """``run`` and ``sink`` both watch through :func:`watch_connection` (the sink once did a
    bare connect, and a proxy in front of a dead broker kept it ready): a listener must
    answer in Kafka, on TLS and with SASL too (a bare connect once stood for a TLS listener,
    and a TLS-terminating proxy in front of a dead broker kept both ready)."""
    health = Health()
    probes = 0
    two_rounds_over = anyio.Event()

    async def drop(stream: anyio.abc.SocketStream) -> None:
        nonlocal probes
        probes += 1
        if probes == 3:  # the third connect: the first two rounds have ended
            two_rounds_over.set()
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    security = KafkaSecurity(security_protocol=protocol)
    if protocol.startswith("SASL"):
        security = KafkaSecurity(
            security_protocol=protocol, sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p"
        )
    conn = Connection(f"127.0.0.1:{port}", security)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, drop)
        tg.start_soon(lambda: watch_connection(health, conn, every_s=0.02))
        with anyio.fail_after(5):
            await two_rounds_over.wait()
        tg.cancel_scope.cancel()
    assert health.broker_error is not None


@pytest.mark.asyncio
async def test_the_store_probe_marks_a_store_that_refuses_and_its_return() -> None:
    """Any store error makes the sink unready, not only a lost connection: a password the
    server stopped taking escaped the probe and stopped the sink (a review)."""
    from stream_expiry.errors import StoreError
    from stream_expiry.sinks.command import STORE_UNREACHABLE_ADVICE, watch_store
    from stream_expiry.sinks.store import MemoryStore
    from tests.conftest import wait_for

    class Refusing(MemoryStore):
        refusal: StoreError | None = StoreError("store 'pg' failed: password authentication")

        async def ping(self) -> None:
            if self.refusal is not None:
                raise self.refusal

    health, store = Health(watches_store=True), Refusing()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_store(health, store, every_s=0.02))
        await wait_for(lambda: health.store_error is not None)
        assert health.report()["store"] == (
            f"unreachable: store 'pg' failed: password authentication; {STORE_UNREACHABLE_ADVICE}"
        )
        store.refusal = None
        await wait_for(lambda: health.store_error is None)
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_the_store_probe_takes_a_store_that_does_not_answer_for_unreachable() -> None:
    """A server behind a dropped network answers nothing, not an error: a ping that takes
    longer than the probe's period marks the store unreachable, saying so, and one that
    answers again marks it reachable."""
    from stream_expiry.sinks.command import STORE_UNREACHABLE_ADVICE, watch_store
    from stream_expiry.sinks.store import MemoryStore
    from tests.conftest import wait_for

    class Silent(MemoryStore):
        answers = anyio.Event()

        async def ping(self) -> None:
            await self.answers.wait()

    health, store = Health(watches_store=True), Silent("pg")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_store(health, store, every_s=0.05))
        await wait_for(lambda: health.store_error is not None)
        assert health.report()["store"] == (
            f"unreachable: store 'pg' did not answer within 0.05 s; {STORE_UNREACHABLE_ADVICE}"
        )
        store.answers.set()
        await wait_for(lambda: health.store_error is None)
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_the_store_probe_asks_once_a_period_not_in_a_loop() -> None:
    """One ping, then the next a period later: a probe that asked again at once would keep
    a database busy with pings."""
    from stream_expiry.sinks.command import watch_store
    from stream_expiry.sinks.store import MemoryStore
    from tests.conftest import wait_for

    class Counting(MemoryStore):
        pings = 0

        async def ping(self) -> None:
            self.pings += 1

    health, store = Health(watches_store=True), Counting()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_store(health, store, every_s=60))
        await wait_for(lambda: store.pings > 0)
        await anyio.sleep(0.1)
        assert store.pings == 1
        assert health.report()["store"] == "ok"
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_the_store_probe_says_in_the_log_when_the_store_stops_and_starts_answering(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An idle sink whose store went away answered 503 on /readyz with nothing in its log
    until it next wrote (a trial: PostgreSQL behind a proxy that was stopped, readyz 503 and
    no line for 15 s; without a sweep and without traffic, never), while the broker probe
    says "Kafka unreachable" at once. The store probe says it once, with what to do, and
    says when the store answers again."""
    from stream_expiry.errors import StoreError
    from stream_expiry.sinks.command import watch_store
    from stream_expiry.sinks.store import MemoryStore
    from tests.conftest import wait_for

    class Flaky(MemoryStore):
        refusal: StoreError | None = StoreError("store 'pg' failed: connection refused")
        pings = 0

        async def ping(self) -> None:
            self.pings += 1
            if self.refusal is not None:
                raise self.refusal

    health, store = Health(watches_store=True), Flaky("pg")
    caplog.set_level(logging.INFO, logger="stream_expiry.sinks")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_store(health, store, every_s=0.02))
        await wait_for(lambda: store.pings >= 3)
        down = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(down) == 1, [r.getMessage() for r in caplog.records]
        assert "store 'pg' failed: connection refused" in down[0].getMessage()
        assert "/readyz" in down[0].getMessage()
        assert "check that the store's server is up" in down[0].getMessage()
        # the same reason, advice included, as /readyz's "store" says
        assert down[0].getMessage().endswith(f": {health.store_error}")
        store.refusal = None
        await wait_for(lambda: health.store_error is None)
        tg.cancel_scope.cancel()
    up = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert up == ["the store answers again, 0 s after it was first found not answering"]


@pytest.mark.asyncio
async def test_the_store_probe_says_a_second_outage_after_the_loop_said_the_first_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The probe and the sink's loop share the store's outage (``Sink.store_outage``). The
    loop said the first one's end (its write went through between two pings), and the
    store failed again before the probe's next ping: the probe, which had not seen it
    answer, took that for the same outage and said nothing, and the second outage's end
    came in the log without its start (a flapping store's trial)."""
    from stream_expiry.errors import StoreError
    from stream_expiry.sinks.command import watch_store
    from stream_expiry.sinks.framework import Outage
    from stream_expiry.sinks.store import MemoryStore
    from tests.conftest import wait_for

    class Refusing(MemoryStore):
        pings = 0

        async def ping(self) -> None:
            self.pings += 1
            raise StoreError("store 'pg' failed: connection refused")

    health, store, shared = Health(watches_store=True), Refusing("pg"), Outage()
    caplog.set_level(logging.INFO, logger="stream_expiry.sinks")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_store(health, store, every_s=0.02, outage=shared))
        await wait_for(lambda: store.pings >= 1)
        shared.answered()  # the loop's write went through: it says the end
        pinged = store.pings
        await wait_for(lambda: store.pings > pinged)  # the probe finds it down again
        tg.cancel_scope.cancel()
    said = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert said == [
        ("WARNING", "store unreachable (/readyz answers 503 until it answers)"),
        ("INFO", "the store answers again, 0 s after it was first found not answering"),
        ("WARNING", "store unreachable (/readyz answers 503 until it answers)"),
    ]


@pytest.mark.asyncio
async def test_readyz_says_what_to_do_about_a_store_that_does_not_answer() -> None:
    """An SRE trial: a sink's /readyz, 503 while PostgreSQL was down, said why under "store"
    ("unreachable: PostgreSQL store 'postgres' failed: [Errno 111] Connect call failed")
    but not what to do, which only the log's warning said. The probe's body says it too,
    the same words as the warning's."""
    from stream_expiry.errors import StoreError
    from stream_expiry.sinks.command import watch_store
    from stream_expiry.sinks.store import MemoryStore
    from tests.conftest import wait_for

    class Refusing(MemoryStore):
        async def ping(self) -> None:
            raise StoreError("PostgreSQL store 'pg' failed: connection refused")

    health, store = Health(watches_store=True), Refusing("pg")
    health.starting()
    health.running()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: watch_store(health, store, every_s=0.02))
            await wait_for(lambda: health.store_error is not None)
            status, content_type, body = route(b"GET", b"/readyz", lambda: b"", health)
            tg.cancel_scope.cancel()
    assert (status, content_type) == (503, "application/json")
    assert orjson.loads(body)["store"] == (
        "unreachable: PostgreSQL store 'pg' failed: connection refused; the sink waits and "
        "loses nothing: check that the store's server is up and reachable from here"
    )

"""TLS and SASL for real where the test broker allows it, and the proxy that makes outages.

Tansu (the test broker) does not serve TLS itself, so TLS is real up to a TLS-terminating
proxy in front of it, advertised as the broker's address: every byte the clients send goes
over mutually authenticated TLS. Tansu's ``--authentication`` enforces SASL, but SCRAM users
cannot be created on such a broker (``tansu user create`` is refused without credentials),
so SASL is tested for real only up to the broker's refusal; that the right options reach
aiokafka is tested in tests/unit/test_kafka_settings.py.
"""

from __future__ import annotations

import signal
import uuid
from functools import partial
from typing import TYPE_CHECKING

import anyio
import pytest

from stream_expiry.broker import free_port
from stream_expiry.endpoints import watch_connection
from stream_expiry.errors import BrokerError
from stream_expiry.health import Health
from stream_expiry.kafka import consumer, ensure_topics, producer, read_to_end
from stream_expiry.kafka_settings import Connection, KafkaSecurity
from stream_expiry.testing.processes import spawn_command, spawn_service
from stream_expiry.testing.proxy import proxied_broker
from stream_expiry.testing.tls import make_pki
from tests.conftest import make_topic_set, wait_for
from tests.integration.service_helpers import config_text, http_status, no_orphans

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from anyio.abc import Process

    from stream_expiry.testing.tls import TestPKI

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

STARTED: list[Process] = []


_no_orphans = no_orphans(STARTED)


async def _round_trip(conn: Connection, n: int = 20) -> list[bytes]:
    topic = f"t{uuid.uuid4().hex[:10]}.tls"
    await ensure_topics(conn, [topic], partitions=2)
    async with producer(conn) as prod:
        for i in range(n):
            await prod.send_and_wait(topic, key=b"k%d" % i, value=b"v%d" % i)
    values: list[bytes] = []
    async with consumer(conn) as cons:
        async for batch in read_to_end(cons, topic):
            values.extend(r.value for recs in batch.values() for r in recs)
    return sorted(values)


def _mutual_tls(address: str, pki: TestPKI) -> Connection:
    """Mutually authenticated TLS to ``address`` with ``pki``'s CA and client certificate."""
    return Connection(
        address,
        KafkaSecurity(
            security_protocol="SSL",
            ssl_cafile=pki.ca,
            ssl_certfile=pki.client_cert,
            ssl_keyfile=pki.client_key,
        ),
    )


def _unknown_user(address: str) -> Connection:
    """SCRAM as a user the broker does not know (none can be made on the test broker)."""
    return Connection(
        address,
        KafkaSecurity(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username="nobody",
            sasl_password="wrong",
        ),
    )


async def test_mutual_tls_produce_and_consume(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    async with proxied_broker(server_ssl=pki.server_context()) as proxy:
        conn = _mutual_tls(proxy.address, pki)
        assert await _round_trip(conn) == sorted(b"v%d" % i for i in range(20))
        # Admin, producer and consumer each connected through the TLS proxy (the broker
        # advertises it), not around it.
        assert proxy.accepted >= 3


async def test_tls_is_required_both_ways(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    async with proxied_broker(server_ssl=pki.server_context()) as proxy:
        plaintext = Connection(proxy.address)
        no_client_cert = Connection(
            proxy.address, KafkaSecurity(security_protocol="SSL", ssl_cafile=pki.ca)
        )
        wrong_ca = Connection(
            proxy.address,
            KafkaSecurity(
                security_protocol="SSL",
                ssl_cafile=other.ca,
                ssl_certfile=pki.client_cert,
                ssl_keyfile=pki.client_key,
            ),
        )
        for conn in (plaintext, no_client_cert, wrong_ca):
            with (
                anyio.fail_after(30),
                pytest.raises(BrokerError, match=r"cannot reach Kafka at .* \(producer: ") as err,
            ):
                async with producer(conn, request_timeout_ms=5000):
                    pass
            if conn is wrong_ca:
                # The reason, not aiokafka's "Unable to bootstrap", which it said before.
                assert (
                    "(producer: the broker's TLS certificate was refused: self-signed "
                    "certificate in certificate chain); " in str(err.value)
                ), err.value


async def test_sasl_is_offered_to_an_authenticating_broker() -> None:
    """SCRAM really runs against the broker (it rejects the unknown user), and a client
    without SASL is refused: both end in BrokerError, never aiokafka's KeyError."""
    async with proxied_broker(authentication=True) as proxy:
        scram = _unknown_user(proxy.address)
        with anyio.fail_after(30), pytest.raises(BrokerError, match="refused the SASL"):
            async with producer(scram, request_timeout_ms=5000):
                pass
        with anyio.fail_after(30), pytest.raises(BrokerError, match="requires TLS or SASL"):
            async with producer(Connection(proxy.address), request_timeout_ms=5000):
                pass
        assert proxy.accepted >= 2


async def test_cut_and_restore() -> None:
    """A cut resets open connections and refuses new ones; after restore, clients go on."""
    async with proxied_broker() as proxy:
        topic = f"t{uuid.uuid4().hex[:10]}.cut"
        await ensure_topics(proxy.address, [topic], partitions=1)
        async with producer(proxy.address, request_timeout_ms=5000) as prod:
            await prod.send_and_wait(topic, b"before")
            proxy.cut()
            refused_before = proxy.refused
            pending = await prod.send(topic, b"during")
            # The producer tries to reconnect and is refused.
            await wait_for(lambda: proxy.refused > refused_before, timeout_s=10)
            assert not pending.done()  # held back, not failed, while the broker is away
            proxy.restore()
            with anyio.fail_after(20):
                await pending
            await prod.send_and_wait(topic, b"after")
        values: list[bytes] = []
        async with consumer(proxy.address) as cons:
            async for batch in read_to_end(cons, topic):
                values.extend(r.value for recs in batch.values() for r in recs)
        assert values == [b"before", b"during", b"after"]


async def _watched(conn: Connection, until: Callable[[Health], bool]) -> Health:
    """Run the health's broker watch on ``conn`` until ``until(health)`` holds."""
    health = Health()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(watch_connection, health, conn, every_s=0.2))
        await wait_for(lambda: until(health), timeout_s=20)
        tg.cancel_scope.cancel()
    return health


async def test_readiness_behind_a_tls_proxy_follows_the_broker_not_the_handshake(
    tmp_path: Path,
) -> None:
    """A TLS-terminating proxy (a load balancer) in front of a dead broker completes its
    handshake and then drops the connection: the watch made a bare TCP connect on TLS and
    said "broker ok" through the whole cut (a trial). It logs in as the clients do."""
    pki = make_pki(tmp_path)
    async with proxied_broker(server_ssl=pki.server_context()) as proxy:
        conn = _mutual_tls(proxy.address, pki)
        proxy.cut()  # the proxy still completes the TLS handshake, then drops the line
        health = Health()
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(watch_connection, health, conn, every_s=0.2))
            await wait_for(lambda: health.broker_error is not None, timeout_s=20)
            assert "dropped without an answer" in str(health.broker_error), health.broker_error
            proxy.restore()
            await wait_for(lambda: health.broker_error is None, timeout_s=20)
            tg.cancel_scope.cancel()


async def test_readiness_says_when_the_broker_refuses_the_password() -> None:
    """A password the broker does not take (rotated on the broker, say): the watch's
    ApiVersions request, which a broker answers before any login, said "broker ok" while
    the clients' logins failed ~120 times a second (a trial)."""
    async with proxied_broker(authentication=True) as proxy:
        scram = _unknown_user(proxy.address)
        health = await _watched(scram, lambda h: h.broker_error is not None)
        assert "refused the SASL authentication" in str(health.broker_error)


async def test_a_tls_client_at_a_plaintext_listener_is_told_so(tmp_path: Path) -> None:
    """TLS settings with the address of a plaintext listener: the broker holds the
    connection without an answer, and the start failed after its timeout with "Unable to
    bootstrap" and nothing about TLS (a trial: 45 s of silence for the one-shot
    commands). The error says what the handshake met, and it does not wait out the
    client's request timeout first: it said "no answer within 5 s" after 45 s."""
    pki = make_pki(tmp_path)
    async with proxied_broker() as proxy:
        conn = _mutual_tls(proxy.address, pki)
        with (
            anyio.fail_after(20),  # the login tried alone after 5 s, its 5 s, and slack
            pytest.raises(BrokerError, match=r"is it a TLS listener \(SSL\)\?"),
        ):
            async with producer(conn, request_timeout_ms=40_000):
                pass


def _plain(address: str, password: str) -> Connection:
    return Connection(
        address,
        KafkaSecurity(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_username="svc",
            sasl_password=password,
        ),
    )


async def test_a_refused_login_stops_the_watch_and_an_outage_does_not() -> None:
    """The watch raises once the broker has refused the password for ``refused_stop_s``;
    a broker that only drops connections for longer is waited for."""
    async with proxied_broker(logins={"svc": "good"}) as proxy:
        conn = _plain(proxy.address, "good")
        health = Health()
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(watch_connection, health, conn, every_s=0.2, refused_stop_s=1))
            proxy.cut()
            await wait_for(lambda: health.broker_error is not None, timeout_s=20)
            # Probes dropped for well over refused_stop_s (every 0.2 s): no stop for that.
            dropped = proxy.refused
            await wait_for(lambda: proxy.refused >= dropped + 10, timeout_s=20)
            assert "dropped without an answer" in str(health.broker_error), health.broker_error
            proxy.restore()
            await wait_for(lambda: health.broker_error is None, timeout_s=20)
            tg.cancel_scope.cancel()
        assert proxy.logins_accepted >= 1

        refused = _plain(proxy.address, "old")
        with anyio.fail_after(20), pytest.raises(BrokerError) as raised:
            await watch_connection(Health(), refused, every_s=0.2, refused_stop_s=1)
        message = str(raised.value)
        assert "refused the SASL authentication" in message, message
        assert "SASL PLAIN as 'svc'" in message, message
        assert "sasl_password" in message, message
        assert proxy.logins_refused >= 2


@pytest.mark.timeout(150)
async def test_a_password_the_broker_stops_taking_stops_run_and_sink_with_status_3(
    tmp_path: Path,
) -> None:
    """A password rotated on the broker under running commands: every client's logins
    failed ~120 times a second for as long as nobody noticed (a trial), with /readyz 503
    but the process up. Kafka's clients treat a refused login as fatal (KIP-152): ``run``
    and ``sink`` now stop with status 3 and say what to check."""
    topics = make_topic_set()
    async with proxied_broker(logins={"svc": "good"}) as proxy:
        conn = _plain(proxy.address, "good")
        await ensure_topics(conn, topics.all, partitions=2)
        cfg = tmp_path / "service.toml"
        # run and the sink are each alone in their group: a 2 s session, for a join the
        # test broker holds 1 s, not 3.
        text = config_text(topics, str(tmp_path / "state"))
        cfg.write_text(
            text.replace("[service]\n", '[service]\nsession_timeout = "2s"\n', 1)
            + '[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n'
            + 'sasl_username = "svc"\nsasl_password = "good"\n'
        )
        ports = {"run": free_port(), "sink": free_port()}
        run = await spawn_service(proxy.address, cfg, STARTED, "--metrics-port", str(ports["run"]))
        sink_args = ["sink", "sqlite", "--path", str(tmp_path / "s.db"), "--config", str(cfg)]
        sink = await spawn_command(
            [
                *sink_args,
                "--bootstrap-servers",
                proxy.address,
                "--metrics-port",
                str(ports["sink"]),
            ],
            STARTED,
        )
        procs = {"run": run, "sink": sink}
        async with anyio.create_task_group() as tg:
            for proc in procs.values():
                tg.start_soon(proc.follow_log)
            for name, port in ports.items():
                with anyio.fail_after(60):
                    url = f"http://127.0.0.1:{port}/readyz"
                    while await anyio.to_thread.run_sync(http_status, url) != 200:
                        assert procs[name].process.returncode is None, procs[name].tail()
                        await anyio.sleep(0.25)  # a poll interval: the answer decides
            proxy.logins["svc"] = "rotated"  # type: ignore[index]
            proxy.cut()  # the connections logged in with the old password go
            proxy.restore()
            refused_before = proxy.logins_refused
            try:
                with anyio.fail_after(60):
                    codes = {name: await p.process.wait() for name, p in procs.items()}
            finally:
                for proc in procs.values():
                    if proc.process.returncode is None:
                        proc.process.send_signal(signal.SIGKILL)
            tg.cancel_scope.cancel()
        tails = "\n".join(p.tail() for p in procs.values())
        assert codes == {"run": 3, "sink": 3}, tails
        for proc in procs.values():
            assert proc.log_has("refused the login"), proc.tail()
            assert proc.log_has("check [kafka] sasl_username and sasl_password"), proc.tail()
        assert proxy.logins_refused > refused_before


async def test_a_start_gives_up_early_only_when_no_bootstrap_server_can_let_it_log_in(
    tmp_path: Path,
) -> None:
    """A start still connecting after 5 s has the login tried on its own, and fails at once
    only when every server that accepts a connection refuses it or, with TLS, never answers
    the handshake (a plaintext listener). A silent first server is not that: the client
    goes on to the next one, and the start must wait for it (a review: the first probe's
    timeout failed a start another server would have let succeed)."""
    import socket

    from stream_expiry.kafka import _start_blocker

    pki = make_pki(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        quiet = f"127.0.0.1:{silent.getsockname()[1]}"
        sasl = Connection(
            quiet,
            KafkaSecurity(
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="PLAIN",
                sasl_username="svc",
                sasl_password="pw",
            ),
        )
        assert await _start_blocker(sasl, timeout_s=1) is None  # an outage to wait out
        async with proxied_broker(server_ssl=pki.server_context()) as tls_proxy:
            both = _mutual_tls(f"{quiet},{tls_proxy.address}", pki)
            assert await _start_blocker(both, timeout_s=1) is None  # the second logs in
        async with proxied_broker() as plaintext:
            at_plaintext = _mutual_tls(plaintext.address, pki)
            why = await _start_blocker(at_plaintext, timeout_s=1)
            assert why is not None
            assert "is it a TLS listener (SSL)?" in why

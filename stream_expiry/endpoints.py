"""The operator's HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``, on anyio.

The least an orchestrator and a scraper need, in the process's own event loop (no thread):
``GET`` (or ``HEAD``) of the three paths, one request per connection. The port is bound by
:func:`open_listener` before the service starts, so a port in use or out of range stops the
start with one line instead of failing later inside a task group. A broken or slow client
costs one task for at most five seconds and never disturbs the loop.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from functools import partial
from typing import TYPE_CHECKING, Final

import anyio
import orjson
from anyio.abc import SocketAttribute
from prometheus_client import CONTENT_TYPE_LATEST

from stream_expiry.errors import BrokerError, ConfigurationError
from stream_expiry.kafka import log_in, login_failure, login_refused
from stream_expiry.kafka_settings import Connection, bootstrap_addresses

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import Listener, SocketStream, TaskGroup

    from stream_expiry.health import Health
    from stream_expiry.stalls import Stalls

__all__ = [
    "open_listener",
    "route",
    "serve_http",
    "watch_broker",
    "watch_connection",
    "watch_process",
]

log = logging.getLogger("stream_expiry.http")

MAX_REQUEST: Final = 8192
READ_TIMEOUT_S: Final = 5.0
_REASONS: Final = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


async def open_listener(
    port: int, host: str = "0.0.0.0", *, option: str = "--metrics-port"
) -> Listener[SocketStream]:
    """Bind the port now; a clear :class:`ConfigurationError` when it cannot be."""
    if not 1 <= port <= 65535:
        raise ConfigurationError(f"{option} {port}: a port is a number from 1 to 65535")
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            # Not the port: the host given to --metrics-host is no address of this machine.
            hint = "--metrics-host must name an address of this machine, e.g. 127.0.0.1"
        else:
            hint = "is another process using it? choose a free port"
        raise ConfigurationError(
            f"{option} {port}: cannot listen on {host}:{port} ({why}); {hint}"
        ) from None


def _response(status: int, content_type: str, body: bytes, *, head: bool) -> bytes:
    lines = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return lines.encode() + (b"" if head else body)


def route(
    method: bytes, path: bytes, exposition: Callable[[], bytes], health: Health | None
) -> tuple[int, str, bytes]:
    """Status, content type and body for one request (pure: the server's whole logic)."""
    path = path.split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n"
    if path == b"/metrics":
        return 200, CONTENT_TYPE_LATEST, exposition()
    if path in (b"/healthz", b"/readyz"):
        if health is None:
            return 200, "application/json", b'{"live": true, "ready": true}\n'
        ok = health.live if path == b"/healthz" else health.ready
        return 200 if ok else 503, "application/json", orjson.dumps(health.report()) + b"\n"
    return 404, "text/plain; charset=utf-8", b"not found: try /metrics, /healthz or /readyz\n"


async def serve_http(
    listener: Listener[SocketStream], exposition: Callable[[], bytes], health: Health | None = None
) -> None:
    """Serve the three paths on ``listener`` until cancelled."""

    async def handle(stream: SocketStream) -> None:
        async with stream:
            request = b""
            try:
                with anyio.fail_after(READ_TIMEOUT_S):
                    while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                        request += await stream.receive()
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
                return
            parts = request.split(b"\r\n", 1)[0].split(b" ")
            if len(parts) != 3:
                return
            method, path, _version = parts
            status, content_type, body = route(method, path, exposition, health)
            try:
                await stream.send(_response(status, content_type, body, head=method == b"HEAD"))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return

    port = listener.extra(SocketAttribute.local_port)
    host = listener.extra(SocketAttribute.local_address)
    if isinstance(host, tuple):
        host = host[0]
    log.info("metrics and health on %s port %d: /metrics /healthz /readyz", host, port)
    async with listener:
        await listener.serve(handle)


# ApiVersions v0, correlation id 0x5E1F: the one request a broker answers before any
# authentication (clients ask it first), so a plaintext or SASL listener always replies.
_CLIENT_ID: Final = b"stream-expiry-probe"
_API_VERSIONS: Final = struct.pack(">hhih", 18, 0, 0x5E1F, len(_CLIENT_ID)) + _CLIENT_ID
_PROBE: Final = struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS


# How long a refused login (a password, a mechanism, a certificate) is retried before the
# command stops. Kafka's clients stop at once (KIP-152); aiokafka retries every connection
# every 0.1 s, ~120 logins a second from the service's clients (a trial), for as long as
# nobody notices. A few seconds ride out a credential being rotated on the broker.
REFUSED_STOP_S: Final = 10.0
REFUSED_EVERY_S: Final = 1.0  # look again this often once refused


async def watch_connection(
    health: Health,
    conn: Connection,
    *,
    every_s: float = 5.0,
    refused_stop_s: float = REFUSED_STOP_S,
    stalls: Stalls | None = None,
) -> None:
    """:func:`watch_broker` as every command that serves health runs it (``run``, ``sink``):
    speaking Kafka on a plaintext listener; with TLS or SASL, logging in as the clients do
    (:func:`~stream_expiry.kafka.log_in`). One place, so no command probes with less (the
    sink did: a proxy in front of a dead broker kept its ``/readyz`` at 200 through an
    outage; and a TLS-terminating proxy in front of a dead broker, or a password the broker
    stopped taking, kept both commands' at 200 while nothing was read or written).

    A login the broker refuses for ``refused_stop_s`` (the password, the mechanism, the
    broker's certificate: see :func:`~stream_expiry.kafka.login_refused`) raises
    :class:`BrokerError`, which stops the command with status 3, as one that starts with
    such credentials does: retrying cannot cure it, and every client retries its logins
    ten times a second meanwhile."""
    sec = conn.security
    if not (sec.uses_ssl or sec.uses_sasl):
        await watch_broker(
            health, conn.bootstrap_servers, every_s=every_s, speak_kafka=True, stalls=stalls
        )
        return

    async def login(host: str, port: int, timeout_s: float) -> None:
        try:
            await log_in(conn, host, port, timeout_s)
        except Exception as exc:
            why = login_failure(conn, exc, timeout_s)
            raise _ProbeFailed(why, refused=login_refused(exc)) from exc

    await watch_broker(
        health,
        conn.bootstrap_servers,
        every_s=every_s,
        login=login,
        refused_stop_s=refused_stop_s,
        who=_who(conn),
        stalls=stalls,
    )


def watch_process(
    tg: TaskGroup,
    stalls: Stalls,
    *,
    health: Health | None = None,
    conn: Connection | None = None,
) -> None:
    """Start in ``tg`` what every long-running command runs beside its work (``run``,
    ``sink``, ``rekey``): ``stalls``' watch, which says in one WARNING that the process did
    not run (SIGSTOP, a frozen VM, starved of CPU), and, given ``health`` and ``conn``
    (the command serves ``/readyz``), the broker probe (:func:`watch_connection`) that asks ``stalls``
    before it marks the broker unreachable. One place, so no command is left probing
    without it: the sink and ``rekey`` did, and a SIGSTOP that caught their probe in
    flight made them say "Kafka unreachable" and answer ``/readyz`` 503 for 5 s with the
    broker fine all along, as the service once did."""
    tg.start_soon(stalls.watch)
    if health is not None and conn is not None:
        tg.start_soon(partial(watch_connection, health, conn, stalls=stalls))


def _who(conn: Connection) -> str:
    """What to check when the broker refuses the login, for the message that stops."""
    sec = conn.security
    checks = []
    if sec.uses_sasl:
        checks.append(
            f"sasl_username and sasl_password (SASL {sec.sasl_mechanism} as "
            f"{sec.sasl_username!r}; the password may come from STREAM_EXPIRY_KAFKA_SASL_PASSWORD)"
        )
    if sec.uses_ssl:
        checks.append("ssl_cafile, ssl_certfile and ssl_keyfile")
    return "check [kafka] " + ", and ".join(checks)


class _ProbeFailed(Exception):
    """A login that failed, with why (for :func:`_why`), and whether the broker refused
    the credentials (as opposed to not answering)."""

    def __init__(self, why: str, *, refused: bool = False) -> None:
        super().__init__(why)
        self.refused = refused


async def watch_broker(
    health: Health,
    bootstrap_servers: str,
    *,
    every_s: float = 5.0,
    timeout_s: float = 3.0,
    speak_kafka: bool = False,
    login: Callable[[str, int, float], Awaitable[None]] | None = None,
    refused_stop_s: float = REFUSED_STOP_S,
    who: str = "",
    stalls: Stalls | None = None,
) -> None:
    """Until cancelled, mark the broker unreachable while no bootstrap server accepts a TCP
    connection. Cheap and independent of the Kafka client's retries, which hide an outage
    from the loop for as long as their timeouts last.

    With ``speak_kafka`` (a plaintext or SASL listener), a server must also answer an
    ApiVersions request: a load balancer or proxy in front of a dead broker accepts
    connections and then drops them, which a bare connect takes for a live broker. With
    ``login(host, port, timeout_s)``, that is the probe instead (it raises what failed);
    when no server takes the login and one refused it, for ``refused_stop_s``, it raises
    :class:`BrokerError` naming ``who`` logged in.

    With ``stalls``, a probe that failed while the process itself did not run (a SIGSTOP,
    a frozen VM: the answer waited in the socket while the probe's deadline passed) is not
    taken for an outage: it is tried again at once, and only that one's failure counts."""
    addresses = bootstrap_addresses(bootstrap_servers)
    refused_since: float | None = None
    while True:
        started = stalls.now() if stalls is not None else 0.0
        errors: list[str] = []
        refused = False
        for host, port in addresses:
            try:
                if login is not None:
                    await login(host, port, timeout_s)
                else:
                    with anyio.fail_after(timeout_s):
                        stream = await anyio.connect_tcp(host, port)
                        async with stream:
                            if speak_kafka:
                                await stream.send(_PROBE)
                                await stream.receive(4)  # the start of the answer is enough
            except (
                OSError,
                TimeoutError,
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                _ProbeFailed,
            ) as exc:
                errors.append(f"{host}:{port} ({_why(exc)})")
                refused = refused or (isinstance(exc, _ProbeFailed) and exc.refused)
                continue
            break
        else:
            reason = "; ".join(errors) or "no bootstrap servers"
            if stalls is not None and stalls.overlaps(started):
                log.info("the broker probe failed while the process did not run: trying again")
                continue
            if health.broker_error is None:
                log.warning("Kafka unreachable: %s", reason)
            health.broker_unreachable(reason)
            if not refused:
                refused_since = None
                await anyio.sleep(every_s)
                continue
            now = anyio.current_time()
            refused_since = now if refused_since is None else refused_since
            if now - refused_since >= refused_stop_s:
                raise BrokerError(
                    f"the broker refused the login for {now - refused_since:.0f} s ({reason}),"
                    f" which retrying cannot cure, so the command stops: {who}"
                )
            await anyio.sleep(min(every_s, REFUSED_EVERY_S))
            continue
        refused_since = None
        if health.broker_error is not None:
            log.info("Kafka reachable again")
        health.broker_reachable()
        await anyio.sleep(every_s)


def _why(exc: BaseException) -> str:
    if isinstance(exc, _ProbeFailed):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, (anyio.EndOfStream, anyio.BrokenResourceError)):
        return "connection dropped without an answer"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__

"""A TCP proxy on loopback that a test can cut: broker outages without restarting the broker.

Tansu loses every topic, group and offset when it restarts (README, "Tests"), so an outage
is made by cutting the network instead: :meth:`Proxy.cut` drops every open connection at
once (a reset, as when a broker dies) and drops each new one as soon as it is accepted,
until :meth:`Proxy.restore`. Clients only keep talking through the proxy if the broker
advertises the proxy's address (``EmbeddedBroker(advertised=proxy.address)``): after the
first metadata answer a Kafka client connects to the advertised address, not to the one it
was given. With ``server_ssl`` the proxy terminates TLS, which gives clients a real TLS path
to a broker that only speaks plaintext. With ``logins`` it performs the clients' SASL PLAIN
login itself, against the passwords it is given, which a test may change while clients are
connected (a password rotated on the broker): the test broker enforces SASL only for users
that cannot be created on it (tests/integration/test_kafka_security.py).

Plain asyncio, no threads: it runs in the test's event loop, so the test must keep awaiting
while clients in other processes use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from typing import TYPE_CHECKING, Final

from stream_expiry.broker import EmbeddedBroker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import TracebackType

__all__ = ["Proxy", "proxied_broker"]

log = logging.getLogger("stream_expiry.testing.proxy")

_CHUNK = 256 * 1024


class Proxy:
    """Forwards ``127.0.0.1:port`` to ``target`` (``HOST:PORT``, settable after start)."""

    def __init__(
        self,
        target: str | None = None,
        *,
        port: int = 0,
        server_ssl: ssl.SSLContext | None = None,
        logins: dict[str, str] | None = None,
        kafka: bool = False,
    ) -> None:
        self.target = target
        # Whether clients speak Kafka's protocol, whose requests :meth:`hold_requests` can
        # hold (read frame by frame); else bytes are copied as they come (a PostgreSQL
        # client's startup message is no Kafka frame: read as one, it was never forwarded).
        self.kafka = kafka
        self.logins = logins  # user -> password taken (None: logins go to the broker)
        self.logins_accepted = 0
        self.logins_refused = 0
        self._port = port
        self._server_ssl = server_ssl
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._cut = False
        self.accepted = 0  # connections forwarded to the target since start
        self._probes_released: asyncio.Event | None = None  # see hold_probes
        self._probe_held = asyncio.Event()
        self._held_keys: frozenset[int] = frozenset()  # see hold_requests
        self._requests_released = asyncio.Event()
        self.refused = 0  # connections dropped while cut (or before a target was set)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: what clients, and the broker's advertised listener, use."""
        return f"127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._cut

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self._port, ssl=self._server_ssl
        )
        return self

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until :meth:`restore`."""
        self._cut = True
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def hold_probes(self) -> asyncio.Event:
        """Hold each health probe's request (``stream-expiry-probe``'s ApiVersions, the
        first of its connection) here until :meth:`release_probes`: a probe in flight for
        as long as a test wants. Returns an event set once one is held."""
        self._probes_released = asyncio.Event()
        self._probe_held = asyncio.Event()
        return self._probe_held

    def release_probes(self) -> None:
        """Forward the held probes' requests, and those to come, at once."""
        if self._probes_released is not None:
            self._probes_released.set()
            self._probes_released = None

    def hold_requests(self, *api_keys: int) -> None:
        """Hold every request of these Kafka API keys (Heartbeat: 12, say) here, and what
        its connection sends after it, until :meth:`release_requests`: a group coordinator
        that does not answer a member for as long as a test wants. Only for a proxy made
        with ``kafka=True`` (as :func:`proxied_broker`'s is)."""
        if not self.kafka:
            raise ValueError("hold_requests needs a Proxy(kafka=True): its clients' frames")
        self._held_keys = frozenset(api_keys)
        self._requests_released = asyncio.Event()

    def release_requests(self) -> None:
        """Forward the held requests, and those to come, at once."""
        self._held_keys = frozenset()
        self._requests_released.set()

    def restore(self) -> None:
        """Forward new connections again (clients reconnect on their own)."""
        self._cut = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Proxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._cut or self.target is None:
            self.refused += 1
            client_w.transport.abort()
            return
        host, _, port = self.target.rpartition(":")
        try:
            upstream_r, upstream_w = await asyncio.open_connection(host, int(port))
        except OSError as exc:
            log.warning("proxy: cannot reach %s: %s", self.target, exc)
            client_w.transport.abort()
            return
        if self._cut:  # cut while connecting
            self.refused += 1
            client_w.transport.abort()
            upstream_w.transport.abort()
            return
        self.accepted += 1
        self._open.update((client_w, upstream_w))
        if self.logins is not None:
            try:
                logged_in = await self._log_in(client_r, client_w, upstream_r, upstream_w)
            except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
                logged_in = False
            if not logged_in:
                for writer in (client_w, upstream_w):
                    self._open.discard(writer)
                    writer.transport.abort()
                return
        if self._probes_released is not None:
            try:
                await self._maybe_hold_probe(client_r, upstream_w)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                for writer in (client_w, upstream_w):
                    self._open.discard(writer)
                    writer.transport.abort()
                return
        pipes = [
            asyncio.create_task(
                self._forward_requests(client_r, upstream_w)
                if self.kafka
                else _pipe(client_r, upstream_w)
            ),
            asyncio.create_task(_pipe(upstream_r, client_w)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for task in pipes:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for writer in (client_w, upstream_w):
                self._open.discard(writer)
                writer.transport.abort()

    async def _forward_requests(
        self, client_r: asyncio.StreamReader, upstream_w: asyncio.StreamWriter
    ) -> None:
        """Copy a client's requests, one frame at a time, holding those
        :meth:`hold_requests` names; until either side closes or resets."""
        with contextlib.suppress(
            asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError
        ):
            while True:
                request = await _read_frame(client_r)
                if len(request) >= 2 and struct.unpack_from(">h", request)[0] in self._held_keys:
                    await self._requests_released.wait()
                upstream_w.write(_framed(request))
                await upstream_w.drain()

    async def _maybe_hold_probe(
        self, client_r: asyncio.StreamReader, upstream_w: asyncio.StreamWriter
    ) -> None:
        """Forward the connection's first request, after :meth:`release_probes` if it is
        the health probe's (:meth:`hold_probes`)."""
        request = await _read_frame(client_r)
        released = self._probes_released
        if released is not None and _PROBE_CLIENT_ID in request[:64]:
            self._probe_held.set()
            await released.wait()
        upstream_w.write(_framed(request))
        await upstream_w.drain()

    async def _log_in(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        upstream_r: asyncio.StreamReader,
        upstream_w: asyncio.StreamWriter,
    ) -> bool:
        """The requests a client makes before it is logged in, as a SASL listener answers
        them: ApiVersions by the broker, SaslHandshake and SaslAuthenticate (PLAIN) here.
        True once the password is taken; False (the connection is to be dropped) when it
        is refused, as a Kafka broker drops it."""
        assert self.logins is not None
        while True:
            request = await _read_frame(client_r)
            api_key, version, correlation = struct.unpack_from(">hhi", request)
            if api_key == _API_VERSIONS:
                upstream_w.write(_framed(request))
                await upstream_w.drain()
                client_w.write(_framed(await _read_frame(upstream_r)))
            elif api_key == _SASL_HANDSHAKE:
                mechanism = b"PLAIN"
                body = struct.pack(">hih", 0, 1, len(mechanism)) + mechanism
                client_w.write(_framed(struct.pack(">i", correlation) + body))
            elif api_key == _SASL_AUTHENTICATE:
                _authzid, user, password = _auth_bytes(request).split(b"\0")
                taken = self.logins.get(user.decode()) == password.decode()
                error = (
                    (0, b"") if taken else (_SASL_AUTHENTICATION_FAILED, b"Authentication failed")
                )
                body = struct.pack(">hh", error[0], len(error[1])) + error[1]
                body += struct.pack(">i", 0)  # no auth bytes
                if version >= 1:
                    body += struct.pack(">q", 0)  # session lifetime: none
                client_w.write(_framed(struct.pack(">i", correlation) + body))
                await client_w.drain()
                if taken:
                    self.logins_accepted += 1
                else:
                    self.logins_refused += 1
                return taken
            else:
                return False  # anything else before a login is refused
            await client_w.drain()


_API_VERSIONS: Final = 18
_PROBE_CLIENT_ID: Final = b"stream-expiry-probe"  # stream_expiry.endpoints' probe
_SASL_HANDSHAKE: Final = 17
_SASL_AUTHENTICATE: Final = 36
_SASL_AUTHENTICATION_FAILED: Final = 58


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _framed(message: bytes) -> bytes:
    return struct.pack(">i", len(message)) + message


def _auth_bytes(request: bytes) -> bytes:
    """The ``auth_bytes`` of a SaslAuthenticate request v0 or v1 (header v1: no tags)."""
    (client_id_len,) = struct.unpack_from(">h", request, 8)
    at = 10 + max(client_id_len, 0)
    (size,) = struct.unpack_from(">i", request, at)
    return request[at + 4 : at + 4 + size]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side closes or resets (Kafka never half-closes a connection)."""
    with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def proxied_broker(
    *,
    server_ssl: ssl.SSLContext | None = None,
    authentication: bool = False,
    logins: dict[str, str] | None = None,
) -> AsyncIterator[Proxy]:
    """A Tansu broker of its own, reachable only through a :class:`Proxy` it advertises.

    Yields the proxy: ``proxy.address`` is the bootstrap address clients use (TLS when
    ``server_ssl`` is given); ``proxy.cut()`` is a broker outage for all of them. With
    ``logins``, clients log in with SASL PLAIN at the proxy (:class:`Proxy`).
    """
    async with Proxy(server_ssl=server_ssl, logins=logins, kafka=True) as proxy:
        broker = EmbeddedBroker(advertised=proxy.address, authentication=authentication)
        proxy.target = await asyncio.to_thread(broker.start)
        try:
            yield proxy
        finally:
            await asyncio.to_thread(broker.stop)

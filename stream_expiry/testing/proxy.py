"""A TCP proxy on loopback that a test can cut: broker outages without restarting the broker.

Tansu loses every topic, group and offset when it restarts (README, "Tests"), so an outage
is made by cutting the network instead: :meth:`Proxy.cut` drops every open connection at
once (a reset, as when a broker dies) and drops each new one as soon as it is accepted,
until :meth:`Proxy.restore`. Clients only keep talking through the proxy if the broker
advertises the proxy's address (``EmbeddedBroker(advertised=proxy.address)``): after the
first metadata answer a Kafka client connects to the advertised address, not to the one it
was given. With ``server_ssl`` the proxy terminates TLS, which gives clients a real TLS path
to a broker that only speaks plaintext.

Plain asyncio, no threads: it runs in the test's event loop, so the test must keep awaiting
while clients in other processes use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING

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
    ) -> None:
        self.target = target
        self._port = port
        self._server_ssl = server_ssl
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._cut = False
        self.accepted = 0  # connections forwarded to the target since start
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
        pipes = [
            asyncio.create_task(_pipe(client_r, upstream_w)),
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


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side closes or resets (Kafka never half-closes a connection)."""
    with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def proxied_broker(
    *, server_ssl: ssl.SSLContext | None = None, authentication: bool = False
) -> AsyncIterator[Proxy]:
    """A Tansu broker of its own, reachable only through a :class:`Proxy` it advertises.

    Yields the proxy: ``proxy.address`` is the bootstrap address clients use (TLS when
    ``server_ssl`` is given); ``proxy.cut()`` is a broker outage for all of them.
    """
    async with Proxy(server_ssl=server_ssl) as proxy:
        broker = EmbeddedBroker(advertised=proxy.address, authentication=authentication)
        proxy.target = await asyncio.to_thread(broker.start)
        try:
            yield proxy
        finally:
            await asyncio.to_thread(broker.stop)

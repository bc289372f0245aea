"""``stream-expiry run``: the service process, its signals, its broker, its HTTP port
(metrics, liveness, readiness) and its log lines."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from functools import partial
from typing import TYPE_CHECKING

import anyio

from stream_expiry import exits
from stream_expiry.broker import EmbeddedBroker
from stream_expiry.cliargs import known_bootstrap, metrics_host, metrics_port
from stream_expiry.collection import tune_gc
from stream_expiry.endpoints import open_listener, serve_http, watch_process
from stream_expiry.errors import ConfigurationError
from stream_expiry.health import Health
from stream_expiry.kafka import close_clients_by
from stream_expiry.kafka_settings import Connection
from stream_expiry.logs import filtered
from stream_expiry.metrics import ServiceMetrics
from stream_expiry.service import Service, ServiceStats
from stream_expiry.stalls import StallNote, Stalls
from stream_expiry.stopping import stop_on_signals

if TYPE_CHECKING:
    import argparse

    from stream_expiry.config import Config

__all__ = ["embedded_port", "embedded_port_for", "run_service"]

log = logging.getLogger("stream_expiry.run")

PROGRESS_EVERY_S = 10.0
STALL_AFTER_S = 120.0  # a running loop silent this long is not live (/healthz 503)


class _ProgressLog:
    """One info line every ten seconds, with rates, so an operator sees it is alive."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._events = 0

    def __call__(self, stats: ServiceStats) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_S:
            return
        rate = (stats.events - self._events) / (now - self._last)
        self._last, self._events = now, stats.events
        log.info(
            "events %d (%s/s), stamped %d, tombstones %d ttl + %d explicit, dead letters %d, "
            "timers in wheel %d, oldest overdue %s",
            stats.events,
            f"{rate:.1f}" if rate < 10 else f"{rate:.0f}",  # 0.5/s is not 0/s
            stats.stamped,
            stats.tombstones,
            stats.explicit,
            stats.dead_letters,
            stats.pending_in_wheel,
            _overdue(stats),
        )


def _overdue(stats: ServiceStats) -> str:
    """How late deletions are, as stream_expiry_oldest_overdue_seconds says: the line gave
    only counters and rates, and a person reading it through a backlog after an outage
    (tombstones minutes late) saw "3410/s" and nothing of how late (a trial)."""
    said = f"{stats.oldest_overdue_ms / 1000:.1f} s" if stats.oldest_overdue_ms else "none"
    if stats.restoring:
        said += f" (not counting the {stats.restoring} partitions being restored"
        if stats.restoring_due:  # what they hold due waits for the restore's end
            said += f", where {stats.restoring_due} records read so far were due"
        said += ")"
    return said


def embedded_port(bootstrap_servers: str | None, source: str = "--bootstrap-servers") -> int | None:
    """The port ``run --embedded-broker`` listens on: that of the brokers given
    (``--bootstrap-servers``, else the config file's ``bootstrap_servers``, else
    ``STREAM_EXPIRY_BOOTSTRAP_SERVERS``, ``source`` naming which: one loopback address), so
    producers, sinks and ``explain`` keep one address across restarts, and the other
    commands given the same config file find the broker; else None, a free port (the log
    names it).

    Raises ConfigurationError for anything else: the broker listens on 127.0.0.1 only, and
    an address it would not serve, silently replaced by a random port, left the user's
    other clients pointing at nothing (the config file's address was so replaced: a trial
    whose ``status --config`` and ``sink --config`` then reached nothing)."""
    if bootstrap_servers is None or not bootstrap_servers.strip():
        return None
    host, sep, port = bootstrap_servers.strip().rpartition(":")
    if sep and host in ("127.0.0.1", "localhost") and port.isdigit() and 0 < int(port) < 65536:
        _check_free(int(port), source)
        return int(port)
    raise ConfigurationError(
        f"{source} {bootstrap_servers!r} with --embedded-broker: the embedded "
        "broker listens on 127.0.0.1 only; give 127.0.0.1:PORT to choose its port, or "
        f"{_leave_out(source)} for a free one"
    )


def embedded_port_for(args: argparse.Namespace, config: Config) -> int | None:
    """:func:`embedded_port` of the brokers ``run`` was given, from where every command
    takes them (the flag, else the config file, else the environment), so that ``status``,
    ``hold`` and ``sink`` given the same config file reach the broker ``run`` started."""
    given = known_bootstrap(args, config)
    return None if given is None else embedded_port(*given)


def _leave_out(source: str) -> str:
    """How to let the broker take a free port, for the source of its address."""
    if source.startswith("--"):
        return "leave the flag out"
    if source.startswith("bootstrap_servers"):
        return "remove bootstrap_servers from the config file"
    return f"unset {source}"


def _check_free(port: int, source: str = "--bootstrap-servers") -> None:
    """Raise ConfigurationError when another process listens on 127.0.0.1:``port``: the
    broker then failed after its start with "did not start on port P (is it in use?) (exit
    code 0)" and status 3, as if Kafka were unreachable (a trial); a port in use is the
    argument's matter, as ``--metrics-port``'s is."""
    with socket.socket() as probe:
        # As the broker binds (Rust's listeners set it): a port left in TIME_WAIT by the
        # clients of a broker just stopped is free to it, and to this probe (a review).
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigurationError(
                f"{source} 127.0.0.1:{port} with --embedded-broker: cannot listen "
                f"on port {port} ({exc.strerror or exc}): is another process using it? choose "
                f"a free port, or {_leave_out(source)} for one"
            ) from None


async def run_service(config: Config, args: argparse.Namespace) -> int:
    from stream_expiry.cli import connection_from

    listener = None
    http_port = metrics_port(getattr(args, "metrics_port", None), os.environ)
    if http_port is not None:
        # Bound first: a port in use stops the start with one line, before any broker work.
        listener = await open_listener(
            http_port, metrics_host(getattr(args, "metrics_host", None), os.environ)
        )
    with contextlib.ExitStack() as stack:
        if getattr(args, "embedded_broker", False):
            port = embedded_port_for(args, config)
            broker = stack.enter_context(EmbeddedBroker(port))
            conn = Connection(broker.bootstrap_servers)
            log.info(
                "embedded broker listening on %s (in memory: data is gone when it stops)", conn
            )
        else:
            conn = connection_from(args, config)
        tune_gc()
        stalls = Stalls()  # a process paused is not a broker outage: it says so
        health = Health(stall_after_s=STALL_AFTER_S, stalls=stalls)  # nor a hung loop
        progress = _ProgressLog()

        metrics = ServiceMetrics()
        service = Service(
            config,
            bootstrap_servers=conn,
            environ=os.environ,
            on_progress=progress,
            health=health,
            metrics=metrics,
            stalls=stalls,
        )
        metrics.watch_stats(service.stats, env_warnings=len(service.book.env_warnings))
        metrics.watch_health(health)
        metrics.watch_stalls(stalls)
        stop = anyio.Event()
        finished = False
        stack.enter_context(filtered(StallNote(stalls)))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    partial(stop_on_signals, stop, tg.cancel_scope, service.ready, log=log)
                )
                if listener is not None:
                    tg.start_soon(serve_http, listener, metrics.exposition, health)
                    listener = None  # served (and closed) by the task now
                watch_process(tg, stalls, health=health, conn=conn)
                await service.run(stop)
                health.stopping()
                finished = True
                tg.cancel_scope.cancel()
        finally:
            health.stopped()
            close_clients_by(None)  # the next run in this process (tests) has its own
            if listener is not None:
                await listener.aclose()
        if not finished and not service.ready.is_set():
            # Stopped while joining or restoring: nothing of the input read, nothing to
            # commit. That is a clean stop (status 0), not the forced one it was called.
            log.info("stopped while starting (joining the group or restoring its partitions)")
        elif not finished:
            # The README's table: a forced stop is 130, so an orchestrator or a script can
            # tell it from a clean one (it said "forced stop" and exited 0).
            log.warning(
                "forced stop: what was read since the last committed offsets is read again on "
                "restart (nothing is lost)"
            )
            return exits.INTERRUPTED
    return exits.OK

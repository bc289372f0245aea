"""``stream-expiry run``: the service process, its signals, its broker and its log lines."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

import anyio

from stream_expiry.broker import EmbeddedBroker
from stream_expiry.metrics import render, serve_metrics
from stream_expiry.service import Service, ServiceStats

if TYPE_CHECKING:
    import argparse

    from stream_expiry.config import Config

__all__ = ["run_service", "stop_on_signals"]

log = logging.getLogger("stream_expiry.run")

PROGRESS_EVERY_S = 10.0


async def stop_on_signals(stop: anyio.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM; a second signal is left to the default handler."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info(
                "received %s: finishing the current batch and stopping", signal.Signals(signum).name
            )
            stop.set()
            return


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
            "events %d (%.0f/s), stamped %d, tombstones %d (+%d explicit), dead letters %d, timers in wheel %d",
            stats.events,
            rate,
            stats.stamped,
            stats.tombstones,
            stats.explicit,
            stats.dead_letters,
            stats.pending_in_wheel,
        )


async def run_service(config: Config, args: argparse.Namespace) -> int:
    from stream_expiry.cli import bootstrap_from

    with contextlib.ExitStack() as stack:
        if getattr(args, "embedded_broker", False):
            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap_servers
            log.info(
                "embedded broker listening on %s (in memory: data is gone when it stops)", bootstrap
            )
        else:
            bootstrap = bootstrap_from(args, config)
        service = Service(
            config, bootstrap_servers=bootstrap, environ=os.environ, on_progress=_ProgressLog()
        )
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signals, stop)
            if getattr(args, "metrics_port", None):
                warnings = len(service.book.env_warnings)
                tg.start_soon(
                    serve_metrics,
                    args.metrics_port,
                    lambda: render(service.stats, env_warnings=warnings),
                )
            await service.run(stop)
            tg.cancel_scope.cancel()
    return 0

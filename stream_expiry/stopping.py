"""How every long-running command stops on SIGINT or SIGTERM: it finishes what it is doing
and commits, and a stop that cannot finish (a broker or a store that stopped answering) is
forced after a grace, so it always ends within the time it says.

``run``, ``rekey`` and ``sink`` share it. The sink had a stop of its own that only asked
its loop to end: with a table locked by another session (a migration, a DBA's ``LOCK
TABLE``) its batch never finished, and SIGTERM left it running until the lock went (a
review; 60 s and more in a trial), past any orchestrator's grace and its SIGKILL.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import anyio

from stream_expiry.kafka import STOP_TIMEOUT_S, close_clients_by

if TYPE_CHECKING:
    import logging

__all__ = ["STOPPED_WITHIN_S", "STOP_GRACE_S", "stop_on_signals"]

# A stop forced after this grace still closes the Kafka clients, for at most
# kafka.STOP_TIMEOUT_S (5 s) more, all of them together (kafka.close_clients_by): the
# producer's close waits for its batches, which a broker that is away never takes. Each
# client had 5 s of its own, one after another: a stop said "forced after 10 s" took 15 s
# in a trial, and all four clients' closes hanging (a partition where connects hang) took
# 30 s, the whole 30 s an orchestrator allows (deploy/, docker-compose.yml).
STOP_GRACE_S = 10.0
STOPPED_WITHIN_S = STOP_GRACE_S + STOP_TIMEOUT_S


async def stop_on_signals(
    stop: anyio.Event,
    scope: anyio.CancelScope,
    started: anyio.Event | None = None,
    *,
    log: logging.Logger,
    finishing: str = "the current batch",
) -> None:
    """On SIGINT or SIGTERM, set ``stop``: the command finishes ``finishing`` and commits.

    If it has not started its loop yet (``started`` not set: still joining or recovering),
    or does not stop within :data:`STOP_GRACE_S`, or a second signal comes, ``scope`` is
    cancelled: every write is transactional or read again, so a forced stop loses nothing
    either. ``log``: the command's own logger, which says each step.
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop.is_set():
                log.warning("received %s, a second stop signal: stopping now", name)
                close_clients_by(anyio.current_time() + STOP_TIMEOUT_S)
                scope.cancel()
                return
            stop.set()
            if started is not None and not started.is_set():
                log.info("received %s while starting: stopping now", name)
                close_clients_by(anyio.current_time() + STOP_TIMEOUT_S)
                scope.cancel()
                return
            log.info(
                "received %s: finishing %s and stopping (forced after %.0f s; "
                "stopped within %.0f s at most)",
                name,
                finishing,
                STOP_GRACE_S,
                STOPPED_WITHIN_S,
            )
            scope.deadline = min(scope.deadline, anyio.current_time() + STOP_GRACE_S)
            close_clients_by(scope.deadline + STOP_TIMEOUT_S)

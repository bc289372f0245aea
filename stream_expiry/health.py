"""Liveness and readiness of a service or sink process, as ``/healthz`` and ``/readyz`` say.

The process sets a :class:`Health`; the HTTP server (:mod:`stream_expiry.metrics`) only reads
it. Rules it keeps (the contract's words):

* **Live** (``/healthz`` 200) from :meth:`Health.starting` until :meth:`Health.stopping`:
  joining the group and restoring are alive, not stuck. With ``stall_after_s`` set, a loop
  that has reported a :meth:`Health.beat` and then none for that long while
  :attr:`Phase.RUNNING` is not live: an orchestrator restarts a process whose loop hangs.
  A restore may block the loop for long, so it never counts as a stall. Nor does time the
  process did not run (``stalls``: a SIGSTOP, a frozen VM, starved of CPU): on resume
  ``/healthz`` was asked before the loop's first turn, and after a pause over
  ``stall_after_s`` said 503, so a liveness probe killed a process that was fine.
* **Ready** (``/readyz`` 200) only when live, in :attr:`Phase.RUNNING` (partitions assigned and
  restored) and with the broker reachable. Before that (:attr:`Phase.JOINING` once
  subscribed, until the group assigns partitions), during a rebalance (from the
  revocation, :attr:`Phase.REBALANCING`, until the next assignment is restored,
  :attr:`Phase.RESTORING`) and while the broker is unreachable: 503. A member between a
  revocation and its next assignment owns nothing: saying ready then was saying it works
  on partitions it no longer has. A rebalance lasts seconds, less than the probes' failure
  threshold (deploy/kubernetes), so a fleet does not drop out of its Service at each one.
* A sink is ready only while its store answers, too (``watches_store``): a sink whose
  PostgreSQL is down deletes nothing, and a ``/readyz`` of 200 then told an operator that
  deletions were happening (a trial). Its liveness does not change: restarting the sink
  cures nothing, it waits for the store and loses nothing meanwhile.
* No IO, no asyncio: any task may set it; the clock is injected for tests.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

    from stream_expiry.stalls import Stalls

__all__ = ["Health", "Phase"]


class Phase(enum.Enum):
    """Where a process is in its life; the order below is the usual one."""

    STARTING = "starting"  # connecting, creating topics, reading the control topics
    JOINING = "joining"  # subscribed, the group's first assignment not here yet
    RECONNECTING = "reconnecting"  # the broker failed; the session is started again
    REBALANCING = "rebalancing"  # partitions revoked, the next assignment not here yet
    RESTORING = "restoring"  # partitions assigned, state being restored
    RUNNING = "running"  # partitions assigned and restored: ready
    STOPPING = "stopping"  # finishing the last batch
    STOPPED = "stopped"


_LIVE = frozenset(
    {
        Phase.STARTING,
        Phase.JOINING,
        Phase.RECONNECTING,
        Phase.REBALANCING,
        Phase.RESTORING,
        Phase.RUNNING,
    }
)


class Health:
    """The flags behind ``/healthz`` and ``/readyz``, set by the loop that owns them."""

    def __init__(
        self,
        *,
        stall_after_s: float | None = None,
        watches_store: bool = False,
        clock: Callable[[], float] = time.monotonic,
        stalls: Stalls | None = None,
    ) -> None:
        """``stalls``: the process' pauses, which a silent loop is not blamed for; given,
        silence is measured on its clock (which goes on while the machine sleeps, as the
        pauses it counts do) instead of ``clock``."""
        self.phase = Phase.STOPPED
        self.broker_error: str | None = None
        self.broker_failures = 0  # probes in a row that found the broker unreachable
        self._broker_waiters: list[anyio.Event] = []  # tasks in broker_lost
        self.watches_store = watches_store
        self.store_error: str | None = None
        self._stall_after_s = stall_after_s
        self._stalls = stalls
        self._clock = clock if stalls is None else stalls.now
        self._last_beat: float | None = None
        self._paused_at_beat = 0.0

    # -- set by the loop ----------------------------------------------------------------------

    def starting(self) -> None:
        self.phase = Phase.STARTING
        self._last_beat = None

    def joining(self) -> None:
        """A session subscribed and waits for the group to assign it partitions: not ready.
        "starting" said so through the whole join (a trial), and an operator could not tell
        a process still connecting from one the group coordinator keeps waiting."""
        self.phase = Phase.JOINING

    def reconnecting(self) -> None:
        """The broker failed a running process, which starts its session again until the
        broker answers: alive, not ready ("starting" said so, and read as a fresh start)."""
        self.phase = Phase.RECONNECTING

    def rebalancing(self) -> None:
        """The group took the partitions back to hand them out again: not ready until the
        next assignment is restored."""
        self.phase = Phase.REBALANCING

    def restoring(self) -> None:
        """Partitions were assigned and their state is being restored: not ready."""
        self.phase = Phase.RESTORING

    def running(self) -> None:
        """Every assigned partition is positioned and restored: ready."""
        self.phase = Phase.RUNNING
        self.beat()  # a stall is counted from here, not from the restore

    def stopping(self) -> None:
        self.phase = Phase.STOPPING

    def stopped(self) -> None:
        self.phase = Phase.STOPPED

    def beat(self) -> None:
        """The loop made a turn; call it at least every ``stall_after_s``."""
        self._last_beat = self._clock()
        self._paused_at_beat = self._paused_s()

    def _paused_s(self) -> float:
        """Seconds the process has not run since its start, as far as noticed now (a
        pause just over is noticed here, before the stalls' own watch has its turn)."""
        if self._stalls is None:
            return 0.0
        self._stalls.check()
        return self._stalls.seconds

    def broker_unreachable(self, reason: str) -> None:
        self.broker_error = reason
        self.broker_failures += 1
        waiting, self._broker_waiters = self._broker_waiters, []
        for event in waiting:
            event.set()

    async def broker_lost(self, probes: int = 1) -> str:
        """Once the broker is marked unreachable ``probes`` times in a row (at once if it
        is): why. For ``archive``, a consumer alone, whose client retries every failure
        itself: the probe is what tells it an outage (its fetches return nothing, its
        commit waits for the broker)."""
        while self.broker_error is None or self.broker_failures < probes:
            event = anyio.Event()
            self._broker_waiters.append(event)
            await event.wait()
        return self.broker_error

    def broker_reachable(self) -> None:
        self.broker_error = None
        self.broker_failures = 0

    def store_unreachable(self, reason: str) -> None:
        self.store_error = reason

    def store_reachable(self) -> None:
        self.store_error = None

    # -- read by the server -------------------------------------------------------------------

    @property
    def stalled(self) -> bool:
        if (
            self._stall_after_s is None
            or self._last_beat is None
            or self.phase is not Phase.RUNNING
        ):
            return False
        paused = self._paused_s() - self._paused_at_beat
        return self._clock() - self._last_beat - paused > self._stall_after_s

    @property
    def live(self) -> bool:
        return self.phase in _LIVE and not self.stalled

    @property
    def ready(self) -> bool:
        return (
            self.live
            and self.phase is Phase.RUNNING
            and self.broker_error is None
            and self.store_error is None
        )

    def report(self) -> dict[str, Any]:
        """What the health endpoints print, so a person with curl sees why."""
        report: dict[str, Any] = {
            "live": self.live,
            "ready": self.ready,
            "phase": self.phase.value,
            "stalled": self.stalled,
            "broker": "unreachable: " + self.broker_error if self.broker_error else "ok",
        }
        if self.watches_store:
            report["store"] = "unreachable: " + self.store_error if self.store_error else "ok"
        return report

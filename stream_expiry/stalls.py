"""Noticing that the process itself did not run: a pause is not a broker outage.

A process stopped (SIGSTOP, a debugger), a frozen VM, a cgroup that starves it of CPU or a
machine put to sleep stops every timer of the event loop at once. On resume each request
that was in flight meets its deadline before its answer, already waiting in the socket, is
read: the broker probe timed out and ``/readyz`` said 503 "Kafka unreachable", a Kafka
request failed with RequestTimedOutError, and the tombstones due meanwhile came out as
late as after an outage (a trial: a probe in flight at a SIGSTOP of 5 s). Nothing said the
broker had been fine all along.

Rules this module keeps:

* A stall is lateness of the loop spent off the CPU: between two turns of
  :meth:`Stalls.watch`, the time past the turn's tick minus the CPU time the process used
  meanwhile, of at least ``threshold_s``. A loop blocked by the process' own work (a long
  synchronous restore, a garbage collection) used that CPU, so it is not a stall: the
  process ran, and its work is its own to explain.
* The group does not care why: a loop that did not turn, paused or busy with the process'
  own work, ran none of the Kafka client's heartbeats. So a turn late by at least
  :data:`LATE_KEPT_S`, CPU time included, is kept too until taken (:meth:`Stalls.take_late`,
  a :class:`Late`), for :class:`~stream_expiry.fence.WriteFence`: a loop blocked as long as
  the group session has lost its partitions as surely as a process paused (with only the
  stalls, the fence stayed open until the next commit the group refused, and the timers
  fired meanwhile wrote for partitions perhaps another member's). It is neither counted
  nor said as a stall. Kept is the longest such turn since the last take, so a shorter one
  noticed before the fence asks does not hide it.
* Time is measured on ``CLOCK_BOOTTIME`` where there is one (Linux), which goes on while the
  machine sleeps, as the broker's clocks do; ``time.monotonic`` (the event loop's) stops
  then, so a machine that slept is told apart from a process that was paused.
* Any caller may ask (:meth:`Stalls.overlaps`, :meth:`Stalls.excuse`) before the watch's
  own turn has come after a resume: on resume the loop runs its due timers in an order it
  does not promise, so the question notices the stall itself.
* No asyncio in the arithmetic: :meth:`Stalls.check` reads three injected clocks, for tests.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["LATE_KEPT_S", "STALL_THRESHOLD_S", "Late", "Stall", "StallNote", "Stalls"]

log = logging.getLogger("stream_expiry.stalls")

# Shorter than the broker probe's 3 s timeout, the shortest deadline a stall can make a
# request miss; longer than the loop's worst turns under load (a full garbage collection
# of 150 ms, collection.tune_gc) and than the scheduler's delays on a busy 2-core machine.
STALL_THRESHOLD_S: Final = 2.0
# A turn late by this much or more, CPU time included, is kept for the write fence: below
# the shortest session less a heartbeat it may have to see (a 1 s session, a 333 ms
# heartbeat: 0.67 s), above a loop's turn under load (100-300 ms).
LATE_KEPT_S: Final = 0.5
TICK_S: Final = 0.25  # between two turns of the watch: a task waking 4 times a second
# The Kafka client's lines this soon after a stall was noticed are its requests that timed
# out on resume (they time out in the loop's first turns after it).
NOTE_WITHIN_S: Final = 2.0
# A Kafka request's longest timeout (the consumer's, 40 s) and then some: a failure of the
# broker this long after a stall may be the stall's (a request that was in flight).
EXCUSE_WITHIN_S: Final = 60.0


def _wall_clock() -> float:
    """``CLOCK_BOOTTIME`` (counts a machine's sleep), else the monotonic clock."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic()
    return time.clock_gettime(boottime)


@dataclass(frozen=True)
class Stall:
    """A time the process did not run: ``seconds`` long, noticed at ``noticed_at``
    (:func:`_wall_clock`), after a turn at ``after``; ``slept``: the machine was asleep
    (the monotonic clock stood still), not the process alone stopped."""

    seconds: float
    after: float
    noticed_at: float
    slept: bool

    def describe(self) -> str:
        why = "the machine slept" if self.slept else "paused, or starved of CPU"
        return f"the process did not run for {self.seconds:.1f} s ({why})"


@dataclass(frozen=True)
class Late:
    """A turn of the loop ``seconds`` later than its tick (:func:`_wall_clock`), CPU time
    included, noticed at ``noticed_at``; ``stall``: the part of it off the CPU, when that
    was a stall, else the process' own work blocked the loop."""

    seconds: float
    noticed_at: float
    stall: Stall | None

    def describe(self) -> str:
        if self.stall is not None and self.stall.seconds >= self.seconds / 2:
            return self.stall.describe()
        return f"the event loop was blocked for {self.seconds:.1f} s (the process' own work)"


class Stalls:
    """The stalls of this process: counted, the longest kept, each said once in the log."""

    def __init__(
        self,
        *,
        threshold_s: float = STALL_THRESHOLD_S,
        late_s: float = LATE_KEPT_S,
        tick_s: float = TICK_S,
        wall: Callable[[], float] = _wall_clock,
        monotonic: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self.count = 0
        self.seconds = 0.0  # all stalls together
        self.longest_s = 0.0
        self.last: Stall | None = None
        self._late: Late | None = None  # the longest late turn not taken (take_late)
        self._late_s = late_s
        self._threshold_s = threshold_s
        self._tick_s = tick_s
        self._wall, self._monotonic, self._cpu = wall, monotonic, cpu
        self._turn = (wall(), monotonic(), cpu())
        self._excused: Stall | None = None

    async def watch(self) -> None:
        """Until cancelled: a turn every ``tick_s``, each asking :meth:`check`."""
        while True:
            await anyio.sleep(self._tick_s)
            self.check()

    def check(self) -> Stall | None:
        """Compare the clocks with the last turn's; a stall found is counted, logged (one
        WARNING) and returned. Cheap: three clock reads."""
        wall, mono, cpu = self._wall(), self._monotonic(), self._cpu()
        last_wall, last_mono, last_cpu = self._turn
        self._turn = (wall, mono, cpu)
        late = (wall - last_wall) - self._tick_s
        off_cpu = late - max(0.0, cpu - last_cpu)
        if off_cpu < self._threshold_s:
            self._keep_late(late, wall, None)  # the process' own work: for the fence, unsaid
            return None
        slept = (wall - last_wall) - (mono - last_mono) >= self._threshold_s
        stall = Stall(seconds=off_cpu, after=last_wall, noticed_at=wall, slept=slept)
        self.count += 1
        self.seconds += off_cpu
        self.longest_s = max(self.longest_s, off_cpu)
        self.last = stall
        self._keep_late(late, wall, stall)
        log.warning(
            "%s; not a broker outage: requests in flight may time out now, and what fell "
            "due meanwhile is late by as much",
            stall.describe(),
        )
        return stall

    def _keep_late(self, late: float, wall: float, stall: Stall | None) -> None:
        kept = self._late
        if late >= self._late_s and (kept is None or late >= kept.seconds):
            self._late = Late(seconds=late, noticed_at=wall, stall=stall)

    def take_late(self) -> Late | None:
        """The longest turn late by :data:`LATE_KEPT_S` or more (CPU time included: paused
        or blocked) since the last take, noticed now perhaps; forgotten once taken."""
        self.check()
        late, self._late = self._late, None
        return late

    def now(self) -> float:
        """The clock stalls are measured on, for :meth:`overlaps`' ``since``."""
        return self._wall()

    def overlaps(self, since: float) -> bool:
        """Whether the process did not run at some time after ``since`` (a :meth:`now`):
        a timeout of something started then may be the stall's, not the other side's."""
        self.check()
        return self.last is not None and self.last.noticed_at >= since

    def recent(self, within_s: float) -> Stall | None:
        """The last stall, if noticed (now, perhaps) at most ``within_s`` ago."""
        self.check()
        stall = self.last
        if stall is None or self._wall() - stall.noticed_at > within_s:
            return None
        return stall

    def excuse(self) -> Stall | None:
        """The stall that may explain a failure of the broker now, once: the last one, if
        noticed within :data:`EXCUSE_WITHIN_S` and not used for a failure before. A second
        failure after one stall is the broker's, so a real outage is still seen, one
        session later."""
        self.check()
        stall = self.last
        if stall is None or stall is self._excused:
            return None
        if self._wall() - stall.noticed_at > EXCUSE_WITHIN_S:
            return None
        self._excused = stall
        return stall


class StallNote(logging.Filter):
    """Says on the Kafka client's warnings and errors just after a stall that a request in
    flight timed out while the process did not run, and makes its errors warnings.

    A pause longer than a request's timeout (the consumer's fetch: 40 s) made aiokafka log
    "ERROR Failed fetch messages from 111: [Error 7] RequestTimedOutError" on resume (a
    trial: SIGSTOP for 45 s and 130 s on the test broker), which reads as the broker's
    failure. The stall's own warning is logged first (:meth:`Stalls.recent` notices it).
    """

    def __init__(self, stalls: Stalls, within_s: float = NOTE_WITHIN_S) -> None:
        super().__init__()
        self._stalls = stalls
        self._within_s = within_s

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka") or record.levelno < logging.WARNING:
            return True
        stall = self._stalls.recent(self._within_s)
        if stall is not None:
            record.msg = f"{record.getMessage()} (just after {stall.describe()}: not the broker's)"
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True

"""A broker outage waited out by a command that closes its Kafka session and starts it again.

``run``, ``rekey`` and ``archive`` ride out a broker that stops answering in the same
words (each had its own copy, and ``rekey`` never said the outage's end). Rules this module
keeps, for every command using it:

* Only what retrying may cure (:func:`~stream_expiry.kafka.curable`: connections, timeouts,
  a lost membership), and only once a session of the command has started: a start that
  fails is the command's error, said in one line.
* The first failure just after the process itself did not run is the stall's
  (:meth:`Stalls.excuse <stream_expiry.stalls.Stalls.excuse>`): said so, the session started
  again at once, no outage said (:func:`stall_excuses`).
* An outage is one warning at its start, ``the broker failed (...); the session is closed and
  started again every N s until it answers``, each further session that fails a debug line
  (a warning again every :data:`OUTAGE_REPEAT_S`), and one line when a session answers again.
* A stop while it lasts is a clean one: what was not committed is done again at the next
  start, as after a crash, so nothing is lost (:meth:`SessionOutage.stopped_in`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

import anyio

from stream_expiry.errors import leaves
from stream_expiry.kafka import curable

if TYPE_CHECKING:
    from stream_expiry.stalls import Stalls

__all__ = [
    "OUTAGE_REPEAT_S",
    "OUTAGE_RETRY_S",
    "SessionOutage",
    "describe",
    "stall_excuses",
]

log = logging.getLogger("stream_expiry.outage")

OUTAGE_RETRY_S: Final = 2.0  # between two sessions while the broker is away
OUTAGE_REPEAT_S: Final = 30.0  # how often a lasting outage is said again (each retry: debug)


def describe(exc: BaseException) -> str:
    """Every real error of ``exc`` (a task group's opened): its own message ("unhandled
    errors in a TaskGroup") says nothing."""
    return "; ".join(str(leaf) or type(leaf).__name__ for leaf in leaves(exc))


def stall_excuses(
    stalls: Stalls | None, exc: BaseException, redone: str, logger: logging.Logger = log
) -> bool:
    """Whether the process not running explains the broker's failure ``exc`` (a request in
    flight through a SIGSTOP timed out on resume): said so, with ``redone`` (what the new
    session does again), and no outage to count. Once per stall (:meth:`Stalls.excuse`):
    a failure again is an outage."""
    stall = stalls.excuse() if stalls is not None else None
    if stall is None:
        return False
    logger.warning(
        "a Kafka request failed (%s) after %s: not a broker outage; the session is "
        "started again, %s",
        describe(exc),
        stall.describe(),
        redone,
    )
    return True


class SessionOutage:
    """The outage a command's sessions are in, if any: said, waited out, said to end.

    ``redone``: what a new session does again ("what was not committed is archived
    again"), in the warnings. ``retry_s``: between two sessions. :meth:`wait_out` is the
    whole of it; a command with more to do at each step (``run``: its health, its
    partitions forgotten) calls :func:`stall_excuses`, :meth:`failed` and :meth:`pause`."""

    def __init__(
        self,
        stalls: Stalls | None,
        redone: str,
        *,
        retry_s: float = OUTAGE_RETRY_S,
        logger: logging.Logger = log,
    ) -> None:
        self.stalls, self.redone, self.retry_s, self._log = stalls, redone, retry_s, logger
        self.since: float | None = None  # monotonic; None: no outage
        self.tries = 0  # sessions that failed in this outage
        self.outages = 0  # outages said since the start
        self._said = 0.0

    async def wait_out(self, exc: BaseException, stop: anyio.Event) -> bool:
        """After ``exc`` ended a session that had started: whether to start another. False
        when ``exc`` is no outage (not curable) or ``stop`` is set; else said, and waited
        :attr:`retry_s` (at once after a stall's failure), unless ``stop`` comes first."""
        if stop.is_set() or not curable(exc):
            return False
        if self.since is None and stall_excuses(self.stalls, exc, self.redone, self._log):
            return True
        self.failed(exc)
        return await self.pause(stop)

    def failed(self, exc: BaseException) -> None:
        """A session that the broker's failure ``exc`` ended: the outage's start said in a
        warning, each next one in a debug line (a warning every :data:`OUTAGE_REPEAT_S`)."""
        now = time.monotonic()
        if self.since is None:
            self.since = self._said = now
            self.tries = 1
            self.outages += 1
            self._log.warning(
                "the broker failed (%s); the session is closed and started again every %.0f "
                "s until it answers, %s",
                describe(exc),
                self.retry_s,
                self.redone,
            )
            return
        self.tries += 1
        lasting = now - self._said >= OUTAGE_REPEAT_S
        if lasting:
            self._said = now
        self._log.log(
            logging.WARNING if lasting else logging.DEBUG,
            "the broker still fails (%s), for %.0f s and %d sessions; trying again",
            describe(exc),
            now - self.since,
            self.tries,
        )

    async def pause(self, stop: anyio.Event) -> bool:
        """:attr:`retry_s` between two sessions, or until ``stop``; whether to go on."""
        with anyio.move_on_after(self.retry_s):
            await stop.wait()
        return not stop.is_set()

    def answered(self) -> None:
        """A session got an answer from the broker: an outage in course is over, said."""
        if self.since is not None:
            self._log.info(
                "the broker answers again, after %.0f s and %d sessions",
                time.monotonic() - self.since,
                self.tries,
            )
            self.since = None

    def stopped_in(self, exc: BaseException, stop: anyio.Event) -> bool:
        """Whether ``exc`` is the broker's failure met by a stop (a session started, or
        closed, while the broker was away): said as a clean stop, nothing lost. A trial:
        SIGTERM while ``run`` started its session again ended it with status 3."""
        if not stop.is_set() or not curable(exc):
            return False
        self._log.warning(
            "stopped while the broker fails (%s): the last offsets not committed; nothing "
            "is lost, %s at the next start",
            describe(exc),
            self.redone,
        )
        return True

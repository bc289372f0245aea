"""The service's warnings about the input events it dead-letters, bounded.

Each dead letter was one WARNING line. A producer that goes wrong goes wrong for every
event it sends: in a trial, 30,000 events of a misspelt category gave 30,000 lines in 3 s,
the same line but for the offset, and a bot sending thousands of events a second would
write as many lines a second into the log pipeline, burying every other line. Every dead
letter is on ``expiry.dlq`` with its reason (that is the evidence, not the log), and
``stream_expiry_dead_letters_total{code}`` counts them: the log needs the first ones, to
say what is wrong, and how many more there were.

So in each window of :data:`WINDOW_S` seconds the first :data:`SAID_PER_WINDOW` are said
one by one, as before, and the rest are counted by input topic and error code and said in
one line when the window ends (:meth:`DeadLetterLog.flush`, which the service calls once a
second and at its stop).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

__all__ = ["SAID_PER_WINDOW", "WINDOW_S", "DeadLetterLog"]

WINDOW_S: Final = 10.0  # the progress line's period: one summary beside each at most
SAID_PER_WINDOW: Final = 10


class DeadLetterLog:
    """Says dead letters on ``log``: the first of each window one by one, the others
    counted and said together when the window ends."""

    def __init__(
        self,
        log: logging.Logger,
        dlq_topic: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = WINDOW_S,
        said_per_window: int = SAID_PER_WINDOW,
    ) -> None:
        self._log = log
        self._dlq = dlq_topic
        self._clock = clock
        self._window_s = window_s
        self._said_per_window = said_per_window
        self._start = clock()
        self._said = 0
        self._held: Counter[tuple[str, str]] = Counter()  # (input topic, code) -> not said

    def say(self, topic: str, partition: int, offset: int, code: str, detail: str) -> None:
        """One dead letter of ``topic[partition]@offset``: said now, or counted."""
        self.flush()
        if self._said < self._said_per_window:
            self._said += 1
            self._log.warning(
                "dead letter %s[%d]@%d: %s (%s)", topic, partition, offset, code, detail
            )
        else:
            self._held[(topic, code)] += 1

    def flush(self, *, final: bool = False) -> None:
        """At the end of a window (or, ``final``, at a stop), say how many dead letters
        were counted and not said, and start the next window."""
        now = self._clock()
        if not final and now - self._start < self._window_s:
            return
        if self._held:
            total = sum(self._held.values())
            by = ", ".join(
                f"{n:,} {code} on {topic}" for (topic, code), n in sorted(self._held.items())
            )
            self._log.warning(
                "%s in the last %.0f s, not said one by one (%s): each is on %s with its "
                "reason in the headers expiry-error and expiry-error-detail",
                f"{total:,} more dead letter" + ("" if total == 1 else "s"),
                now - self._start,
                by,
                self._dlq,
            )
        self._start, self._said = now, 0
        self._held.clear()

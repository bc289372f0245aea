"""How a sink says that it skips malformed messages, and records its store cannot hold.

The first malformed message on a topic is said in full, with what the sink expects on that
topic and what to do when the topic is not the one meant; those after it are counted, and
said at most once a minute (and at stop) with how many and the latest one. A sink pointed
at another topic (an input topic as ``--tombstones-topic``, which only the service's
``--config`` lets it refuse when the inputs are not the default ones) logged one warning per
message, without bound (a trial: one line for each of 30 events, and as many more as the
topic had). Every one of them is still counted in ``metrics["invalid_total"]``.

A record whose identity the store cannot represent (PostgreSQL: a NUL, or ids too long for
an index row) is said the same way, as an error: the first on a topic in full, with the
record's ref, then counted; each is counted in ``metrics["unrepresentable_total"]``. It was
one error line per message, as many as the producer sent of such a record.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import orjson

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["SAID_EVERY_S", "MalformedReport", "Role"]

log = logging.getLogger("stream_expiry.sinks")

SAID_EVERY_S: Final = 60.0

# Fields every stamp or tombstone event carries, which an input event does not.
_SERVICE_FIELDS: Final = frozenset({"created_at", "expires_at", "emitted_at", "ttl_seconds"})


@dataclass(frozen=True, slots=True)
class Role:
    """What the sink reads a topic for: its ``name`` in ``[topics]`` (``tombstones``), the
    option that names the topic, what the service writes there (``carries``; not named
    ``holds``, which is the legal holds here), and the default topic."""

    name: str
    option: str
    carries: str
    default: str


@dataclass(slots=True)
class _Unsaid:
    count: int = 0
    latest: str = ""


@dataclass(frozen=True, slots=True)
class _Subject:
    """What a count is of: malformed messages on ``topic``, or (``store`` given) messages
    on ``topic`` of records whose identity that store cannot represent."""

    topic: str
    store: str | None = None


class MalformedReport:
    """Says the malformed messages, and the records the store cannot represent, of each
    topic: the first in full, then counts."""

    def __init__(
        self,
        roles: Mapping[str, Role],
        *,
        every_s: float = SAID_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._roles = roles
        self._every_s = every_s
        self._clock = clock
        self._said_at: dict[_Subject, float] = {}  # when it was last said
        self._unsaid: dict[_Subject, _Unsaid] = {}

    def skipped(
        self, topic: str, partition: int, offset: int, why: object, value: bytes | None
    ) -> None:
        """One malformed message skipped at ``topic[partition]@offset``, for ``why``."""
        place = f"{topic}[{partition}]@{offset}"
        if self._first_of(_Subject(topic), f"{place}: {why}"):
            log.warning("%s", self._first(topic, place, why, value))

    def unrepresentable(
        self, store: str, topic: str, partition: int, offset: int, ref: str
    ) -> None:
        """One message skipped at ``topic[partition]@offset`` because ``store`` cannot
        represent its record's identity; ``ref``: the record's ref (never its ids: a log
        outlives every erasure)."""
        place = f"{topic}[{partition}]@{offset}"
        if self._first_of(_Subject(topic, store), f"{place} (record {ref})"):
            log.error(
                "store %s cannot represent the identity of the record at %s; skipped (it "
                "cannot be in the store, unless a version before this check wrote it: the "
                "README's \"What PostgreSQL cannot hold\" says how to find such rows). More "
                "such records on %s are counted and said at most once every %.0f s",
                store, place, topic, self._every_s,
                extra={"record": ref},
            )  # fmt: skip

    def _first_of(self, subject: _Subject, latest: str) -> bool:
        """Whether this is the first of ``subject`` (to be said in full); else it is
        counted, and the count said if its minute has passed."""
        now = self._clock()
        said_at = self._said_at.get(subject)
        if said_at is None:
            self._said_at[subject] = now
            return True
        unsaid = self._unsaid.setdefault(subject, _Unsaid())
        unsaid.count += 1
        unsaid.latest = latest
        if now - said_at >= self._every_s:
            self._say(subject, now)
        return False

    def tick(self) -> None:
        """Say the counts whose minute has passed (the sink's loop calls it each turn, so a
        burst that stopped is said too, not only at the next malformed message)."""
        if not self._unsaid:
            return
        now = self._clock()
        for subject in [s for s in self._unsaid if now - self._said_at[s] >= self._every_s]:
            self._say(subject, now)

    def flush(self) -> None:
        """Say every count not said yet (at stop)."""
        now = self._clock()
        for subject in list(self._unsaid):
            self._say(subject, now)

    def _say(self, subject: _Subject, now: float) -> None:
        unsaid = self._unsaid.pop(subject)
        seconds = now - self._said_at[subject]
        self._said_at[subject] = now
        if subject.store is None:
            log.warning(
                "skipped %d more malformed message%s on %s in %.0f s (the latest at %s); the "
                "first was said with what to do",
                unsaid.count, "" if unsaid.count == 1 else "s", subject.topic, seconds,
                unsaid.latest,
            )  # fmt: skip
        else:
            log.error(
                "skipped %d more message%s on %s of records whose identity store %s cannot "
                "represent, in %.0f s (the latest at %s); the first was said with what it means",
                unsaid.count, "" if unsaid.count == 1 else "s", subject.topic, subject.store,
                seconds, unsaid.latest,
            )  # fmt: skip

    def _first(self, topic: str, place: str, why: object, value: bytes | None) -> str:
        """The first word about a topic: the message, what the sink expects there, and what
        to do if the topic is not that one."""
        said = f"skipping a malformed message at {place}: {why}"
        if _looks_like_input(value):
            said += " (it looks like an input event)"
        role = self._roles.get(topic)
        if role is not None:
            said += (
                f"; the sink reads {topic} as its {role.name} topic, for {role.carries} "
                f"({role.default} unless the service's [topics] {role.name} says otherwise): "
                f"if {topic} is not that topic, give the sink the right {role.option}, or "
                "the service's --config (which refuses its input topics here)"
            )
        return (
            f"{said}. More malformed messages on {topic} are counted and said at most once "
            f"every {self._every_s:.0f} s"
        )


def _looks_like_input(value: bytes | None) -> bool:
    """Whether ``value`` is a JSON object with an input event's ``ts`` and none of the
    fields the service's stamps and tombstones carry: the sink reads an input topic."""
    if value is None:
        return False
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "ts" in obj and not _SERVICE_FIELDS & obj.keys()

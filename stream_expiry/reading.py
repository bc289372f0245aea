"""Where the service reads each input partition: where an assigned one resumes, how far
each is read, and what it must read before its due timers may fire.

A sliding record's due timer can be postponed by a touch still unread, so it waits for
the partition to read up to what was there when it fell due (:mod:`stream_expiry.firing`):
its backlog's end while a newly assigned partition catches up, else its high watermark
while its reading lags. While a partition catches up, every due timer waits: an erasure
in the backlog ends its record at its own time, and a create behind it starts the next
life. :class:`InputReading` keeps those targets, the next offset of each
partition and the seeks that make a fetched batch stale; the service asks the consumer
and hands the answers here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
from aiokafka import TopicPartition

from stream_expiry.fetch import end_offsets
from stream_expiry.kafka import stable_end
from stream_expiry.logs import counted

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from aiokafka import AIOKafkaConsumer

__all__ = ["CATCH_UP_MAX_S", "END_UNKNOWN", "InputReading", "ResumePoint", "resume_point"]

log = logging.getLogger("stream_expiry.reading")

Slot = tuple[str, int]

# The longest a newly assigned partition's due records wait for it to read the backlog it
# had then (its touches, erasures and creates decide them): past it they fire, and the
# warning says so.
CATCH_UP_MAX_S = 300.0
END_UNKNOWN: Final = 2**63  # a partition assigned, its backlog's end not read yet


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where an assigned partition resumes, why (for the log line), and a warning to
    give first when the committed offset cannot be trusted."""

    offset: int
    why: str
    warning: str | None = None


def resume_point(
    tp: TopicPartition, committed: int | None, beginning: int, high: int, unmarked: str | None
) -> ResumePoint:
    """The group's committed offset, unless there is none, it lies past the partition's
    high watermark (the topic was deleted and recreated), or the message before it is not
    the one this instance read there (``unmarked`` says what it found: another topic of
    that name, a cluster rebuilt): then the partition's beginning, said, never waited at
    silently. (Past the stable end but not the high watermark is an open transaction that
    an earlier version, reading uncommitted data, read: trusted.)"""
    name = f"{tp.topic}[{tp.partition}]"
    if committed is None:
        return ResumePoint(beginning, "from the beginning (no committed offset)")
    if committed > high:
        return ResumePoint(
            beginning,
            "from the beginning (committed offset past the end)",
            f"{name}: the committed offset {committed} is past the partition's end {high} "
            "(was the topic deleted and recreated?); reading it from the beginning",
        )
    if unmarked is not None:
        return ResumePoint(
            beginning,
            "from the beginning (not this topic's committed offset)",
            f"{name}: the message before the committed offset {committed} is not the one "
            f"this instance read there ({unmarked}): the offset was committed for another "
            "topic of that name (a cluster rebuilt?); reading it from the beginning",
        )
    return ResumePoint(committed, "at the committed offset")


class InputReading:
    """The read positions of the input partitions this instance owns.

    ``let_go(slot, position)`` is called when a partition has read up to ``position``
    (``END_UNKNOWN``: its backlog, however far): the service lets the sliding records that
    waited for it be scheduled. ``seek`` is the consumer's. :attr:`unread` is the mapping
    the firing task reads; it is only ever changed in place."""

    def __init__(
        self, let_go: Callable[[Slot, int], None], seek: Callable[[TopicPartition, int], None]
    ) -> None:
        self._let_go = let_go
        self._seek = seek
        self.next_offset: dict[Slot, int] = {}  # the offset after the last record taken
        # Seeks made by the assignment's positioning, which runs while the loop reads: a
        # batch fetched before a partition's seek holds records from its old position.
        self.seeks = 0
        self._seeked_at: dict[Slot, int] = {}
        # Partitions reading the backlog found at their assignment, whose sliding records'
        # timers wait until then: the end offset to reach, and the monotonic time it is
        # given up at.
        self.catching_up: dict[Slot, tuple[int, float]] = {}
        # The offset each partition with input not read yet must read up to before its
        # sliding records fire: its backlog's end while it catches up, else its high
        # watermark while its reading lags.
        self.unread: dict[Slot, int] = {}
        # Partitions that have read their backlog since the last line that said so.
        self._backlogs_read = 0

    def assigned(self, slots: Iterable[Slot]) -> None:
        """Hold the sliding records of newly assigned partitions from the start: the firing
        task runs meanwhile, and would fire the timers a restore loads before the position
        says how far the backlog goes."""
        deadline = time.monotonic() + CATCH_UP_MAX_S
        for slot in slots:
            self.catching_up[slot] = (END_UNKNOWN, deadline)
            self.unread[slot] = END_UNKNOWN

    def positioned(self, tp: TopicPartition, start: int, end: int) -> str:
        """Seek ``tp`` to ``start``; its backlog runs to ``end`` (the stable end now).
        Returns what the resume line adds about the backlog ("" when there is none)."""
        slot = (tp.topic, tp.partition)
        self._seek(tp, start)
        self.next_offset[slot] = start
        self.seeks += 1
        self._seeked_at[slot] = self.seeks
        backlog = end - start
        if backlog <= 0:
            self.done_catching_up(slot)
            return ""
        self.catching_up[slot] = (end, time.monotonic() + CATCH_UP_MAX_S)
        self.unread[slot] = end
        return f"; due timers wait until the {backlog} events before {end} are read"

    def take(
        self, tp: TopicPartition, records: list[Any], seeks_before: int, end: int | None = None
    ) -> list[Any]:
        """The records of a fetched batch to decide (none: skip them), the partition's next
        offset moved past them. ``seeks_before`` is :attr:`seeks` when the batch was asked
        for; ``end`` is where the partition ends as the consumer's last fetch said (None:
        not known)."""
        slot = (tp.topic, tp.partition)
        expected = self.next_offset.get(slot)
        if expected is None:
            return []  # fetched before the assignment positioned the partition
        if self._seeked_at.get(slot, 0) > seeks_before:
            # Positioned since this batch was fetched (the positioning may even run while
            # the loop awaits a send): its records come from the old position, and taking
            # them would skip what lies between. Read again from the new one.
            self._seek(tp, expected)
            return []
        if records[0].offset < expected and end is not None and end < expected:
            # The partition now ends before where this instance had read it: the topic was
            # deleted and made again (or its log cut) while the service ran, and Kafka
            # answered the fetch "offset out of range", on which the consumer goes back to
            # the beginning (auto_offset_reset). Those are new events: dropped as records
            # read again, each create, touch and erasure of the new topic went undecided,
            # without a word, until its offsets passed the old ones.
            self._reset(tp, records[0].offset, expected, end)
            expected = records[0].offset
        # A fetch started before a seek hands back records again after it.
        if records[0].offset < expected:
            records = [rec for rec in records if rec.offset >= expected]
        if records:
            self.next_offset[slot] = records[-1].offset + 1
        return records

    def _reset(self, tp: TopicPartition, start: int, was: int, end: int) -> None:
        """Say that ``tp`` is read again from ``start``, its end ``end`` now before the
        offset ``was`` this instance had read to, and let go its sliding records that
        waited for offsets of the old log: nothing of it is left to read."""
        slot = (tp.topic, tp.partition)
        log.warning(
            "%s[%d] now ends at offset %d, before offset %d this instance had read it to "
            "(was the topic deleted and made again, or its log cut, while the service ran?): "
            "reading it from offset %d, so that its events are decided, not skipped; check "
            "that producers still write to the topic you meant",
            *slot,
            end,
            was,
            start,
        )
        self.next_offset[slot] = start
        self.catching_up.pop(slot, None)
        self.unread.pop(slot, None)
        self._let_go(slot, END_UNKNOWN)

    async def caught_up(self, cons: AIOKafkaConsumer) -> None:
        """Let go the sliding records of the partitions that have read their backlog, or
        have been reading it for ``CATCH_UP_MAX_S`` (said: a touch still unread cannot
        extend them then)."""
        for slot, (end, deadline) in list(self.catching_up.items()):
            if end == END_UNKNOWN:
                # Not positioned yet (restoring): the limit counts from the positioning,
                # which says how far the backlog goes. Given up here after a long restore,
                # every record that fell due meanwhile fired with its backlog unread.
                continue
            position = await _read_up_to(cons, slot, self.next_offset.get(slot, 0), end)
            if position >= end:
                log.debug("%s[%d] has read its backlog: its due timers fire", *slot)
                self._backlogs_read += 1
            elif time.monotonic() >= deadline:
                log.warning(
                    "%s[%d] is still reading its backlog (offset %d of %d) after %.0f s: its "
                    "due timers fire now, and an event still unread (a touch, an erasure) "
                    "cannot change them",
                    *slot,
                    position,
                    end,
                    CATCH_UP_MAX_S,
                )
            else:
                continue
            self.done_catching_up(slot)
        self._say_backlogs_read()

    def _say_backlogs_read(self) -> None:
        """One line once no positioned partition is left reading its backlog, for all
        that read it since the last: one a partition was dozens of lines a rebalance."""
        if not self._backlogs_read or any(
            end != END_UNKNOWN for end, _deadline in self.catching_up.values()
        ):
            return
        log.info(
            "%s read the backlog found when assigned: their due timers fire",
            counted(self._backlogs_read, "partition has", "partitions have"),
        )
        self._backlogs_read = 0

    def done_catching_up(self, slot: Slot) -> None:
        self.catching_up.pop(slot, None)
        self.unread.pop(slot, None)
        self._let_go(slot, END_UNKNOWN)

    async def track_unread(self, cons: AIOKafkaConsumer, owned: Iterable[Slot]) -> None:
        """Let go the sliding records that waited for what a partition has read now, and
        note how far each partition whose reading lags must read before the next ones
        fire: its high watermark (a trial: a service reading 2.6 s behind deleted 61 of
        25,000 sessions whose touch waited unread)."""
        for slot in list(owned):  # a revocation may come meanwhile
            read = self.next_offset.get(slot)
            if slot in self.catching_up or read is None:
                continue
            tp = TopicPartition(*slot)
            if (ends_at := cons.highwater(tp)) is not None and ends_at < read:
                # Made again while read: Kafka answers the fetch "offset out of range"
                # (the consumer goes back to the beginning: see take), a broker may also
                # answer it empty and wait there, until the new log passes the old
                # offsets, skipping what lies before (a trial on Tansu: every event of
                # the new topic, 102 creates in 30 s, never stamped, and no word said).
                self._reset(tp, 0, read, ends_at)
                self._seek(tp, 0)
                self.seeks += 1
                self._seeked_at[slot] = self.seeks
                continue
            high = stable_end(cons, tp)
            # An end learnt since (learn_ends) may be beyond the consumer's last fetch.
            target = max(high or 0, self.unread.get(slot, 0))
            position = read if not target else await _read_up_to(cons, slot, read, target)
            self._let_go(slot, position)
            # learn_ends may have noted a further end while this awaited: it stays.
            target = max(target, self.unread.get(slot, 0))
            if target > position:
                self.unread[slot] = target
            else:
                self.unread.pop(slot, None)

    async def learn_ends(self, cons: AIOKafkaConsumer, owned: Iterable[Slot]) -> None:
        """Ask the broker now how far each owned partition goes, and note a partition read
        short of it in ``unread``, so that its sliding records due by now wait for the
        input sent before they fell due. :meth:`track_unread` takes the ends from the
        consumer's last fetch, which the timer task may fire before: a touch acknowledged
        20 ms before its session's expiry, or seconds before it when the process had been
        paused, let the session be deleted on time for its old expiry (a trial: 24 of 45
        sessions, and 300 of 300 after a 4 s pause)."""
        at = {
            TopicPartition(*slot): read
            for slot in owned
            if slot not in self.catching_up and (read := self.next_offset.get(slot)) is not None
        }
        if not at:
            return
        for tp, end in (await end_offsets(cons, at, retries=ENDS_RETRIES)).items():
            slot = (tp.topic, tp.partition)
            if end > at[tp] and end > self.unread.get(slot, 0):
                self.unread[slot] = end

    def forget(self, slot: Slot) -> None:
        """A partition revoked (or taken and revoked before it was restored)."""
        self.next_offset.pop(slot, None)
        self.catching_up.pop(slot, None)
        self.unread.pop(slot, None)

    def clear(self) -> None:
        """A session ended: the next one positions every partition anew."""
        self.next_offset.clear()
        self.catching_up.clear()
        self.unread.clear()


# Two more tries (0.2 + 0.4 s: a leader moving), as the holds are read; then a broker
# away is the session's outage.
ENDS_RETRIES: Final = 2


async def _read_up_to(cons: AIOKafkaConsumer, slot: Slot, read: int, target: int) -> int:
    """How far a partition is read, ``read`` by its records' offsets: below ``target``,
    the consumer's own position counts too, since it also passes control records
    (transactions' markers), which no record reaches; asked without waiting long, the
    loop goes on."""
    tp = TopicPartition(*slot)
    if read < target and tp in cons.assignment():
        with anyio.move_on_after(0.1):
            read = max(read, await cons.position(tp))
    return read

"""The outbox: effects become messages, and are settled in order once the broker holds them.

The order of writes (../shared/DESIGN.md) without stalling the loop: ``send`` encodes a
slice's effects, hands the record batches to the producer and queues them; a settler task
(``run``, in the service's task group) takes the queue in order, waits for each entry's
acks, then settles its effects into the partitions' stores and makes their input offsets
committable. The loop goes on meanwhile (the processors' overlays answer for states not yet
settled); a bounded queue is the backpressure.

Messages for a record go to its input partition's number on each output topic, with the
headers that let a restore find them (:mod:`stream_expiry.codec`). ``[redact]`` is applied
here, where data leaves the process: redacted fields never reach a topic. So is the
producer's size limit (:mod:`stream_expiry.oversize`): a stamp too large goes without its
data, a dead letter too large is cut, and neither stops the partition.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
from typing import TYPE_CHECKING, Any, NamedTuple, get_args

import anyio
from aiokafka.errors import KafkaError

from stream_expiry import codec, model, oversize
from stream_expiry.errors import BrokerError
from stream_expiry.kafka import mark_seen, seen
from stream_expiry.logs import record_ref
from stream_expiry.state.store import position_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from aiokafka import AIOKafkaProducer

    from stream_expiry.config import Topics
    from stream_expiry.engine import Fired
    from stream_expiry.redact import Redactor
    from stream_expiry.state import Effects, PartitionProcessor
    from stream_expiry.state.store import ErasureRead
    from stream_expiry.stats import ServiceStats

__all__ = ["Outbox", "Run", "all_acked", "settled_or_failed"]

# Per record batch sent: its ack, its (topic, partition), its message count, the tracked
# messages with their place in it, and its last message's key and timestamp.
_Sent = list[
    tuple[Any, tuple[str, int], int, list[tuple["Effects", str, int]], tuple[bytes | None, int]]
]
# Per entry: what was sent at once; the changelog's batches, sent or to be sent (a task:
# their nulls wait for the tombstones' acks); the effects; the time they were made at.
_Entry = tuple[
    _Sent,
    "_Sent | asyncio.Task[_Sent]",
    list[tuple["PartitionProcessor", "Effects"]],
    int,
]

MAX_IN_FLIGHT = 16
# The ``expiry-reason`` header of a null, by the tombstone's reason: made once.
_REASON_HEADERS: dict[str, tuple[str, bytes]] = {
    reason: (codec.H_REASON, reason.encode()) for reason in get_args(model.Reason)
}
# Settled runs kept per changelog partition: more than one when entries' batches got their
# offsets out of the order they settle in (a later entry's stamps went ahead of an earlier
# entry's nulls, which wait for their tombstones), or another writer's message lies between.
MAX_RUNS = 8
# How long nulls whose tombstones are acked wait for the next send to go out with it.
CHANGELOG_LINGER_S = 0.01

log = logging.getLogger("stream_expiry.outbox")


async def all_acked(acks: Iterable[Awaitable[Any]]) -> None:
    """Wait for every ack; a refusal is a :class:`BrokerError`.

    aiokafka fails every message of a batch with one exception: the acks not awaited
    after the first failure (or after a cancellation: a session torn down in an outage)
    are marked seen, or asyncio logs each with a traceback ("Future exception was never
    retrieved") when it is collected, into the service's log after every outage."""
    pending = list(acks)
    try:
        for ack in pending:
            await ack
    except KafkaError as exc:
        mark_seen(pending)
        raise BrokerError(f"the broker did not acknowledge an output message: {exc!r}") from exc
    except BaseException:
        mark_seen(pending)
        raise


async def settled_or_failed(acks: list[Any]) -> None:
    """Wait for ``acks``, whatever they say: a refusal is the settler's to raise (it stops
    the session). For the firing task's group commit and the release's slices in flight."""
    if acks:
        await asyncio.wait(acks)


def _forget(counts: collections.Counter[bytes], keys: list[bytes]) -> None:
    """Count ``keys`` out of ``counts``, dropping those at zero (the outbox tests
    membership). ``pop``, not ``del``: ``Counter.__delitem__`` is a Python call a key."""
    for key in keys:
        left = counts[key] - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)


def _sent_well(task: asyncio.Task[_Sent]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


async def _changelog_after(
    out: _Batches,
    before: asyncio.Task[_Sent] | None,
    tombstone_acks: list[Any],
    next_send: Callable[[], Awaitable[Any]],
) -> _Sent:
    """``out``'s changelog batches, sent once ``before``'s are and ``tombstone_acks``
    are in, with the outbox's next send if one comes soon (``next_send``); a failure of
    either is raised, and nothing is sent."""
    if before is not None:
        await before
    if out.after_tombstones:  # batches only behind another entry's go once that one's are
        await all_acked(tombstone_acks)
        with anyio.move_on_after(CHANGELOG_LINGER_S):
            await next_send()
    return await out.flush_held()


class Run(NamedTuple):
    """Offsets ``[start, end)`` of a changelog partition filled by this outbox's settled
    batches, and the key and timestamp of the message at ``end - 1`` (which identify it)."""

    start: int
    end: int
    last_key: bytes | None
    last_timestamp: int


def add_run(runs: list[Run], batch: Run) -> None:
    """Add a settled batch's offsets to ``runs`` (ascending, disjoint, none ending where the
    next starts), joined with the runs it touches; the lowest go beyond :data:`MAX_RUNS`.

    Batches mostly settle in offset order (the first branch). Not always: a later entry's
    stamps may go out while an earlier entry's nulls wait for their tombstones, and settle
    after them; the two runs join once the gap between is settled too."""
    if runs and runs[-1].end == batch.start:
        runs[-1] = runs[-1]._replace(
            end=batch.end, last_key=batch.last_key, last_timestamp=batch.last_timestamp
        )
        return
    i = bisect.bisect_left(runs, batch.start, key=lambda r: r.start)
    if i > 0 and runs[i - 1].end == batch.start:
        i -= 1
        batch = batch._replace(start=runs.pop(i).start)
    if i < len(runs) and runs[i].start == batch.end:
        after = runs.pop(i)
        batch = after._replace(start=batch.start)
    runs.insert(i, batch)
    if len(runs) > MAX_RUNS:
        del runs[0]


class _Batches:
    """Record batches per (topic, partition): one produce request each, not one per message.

    Messages added with ``track`` are remembered with their place in their batch, so that
    once the batch is acknowledged their offsets are known (:meth:`offsets`).

    The batches of the ``held`` topic (the changelog) are not sent by :meth:`flush`, full
    or not, but by :meth:`flush_held`, so that their nulls can wait for the tombstones'
    acks (:meth:`Outbox.send`).
    """

    def __init__(self, prod: AIOKafkaProducer, held: str | None = None) -> None:
        self._prod = prod
        self._held_topic = held
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int]] = []  # held batches full, in the order they filled
        self._closed: dict[tuple[str, int], list[Any]] = {}
        self._tracked: dict[tuple[str, int], list[tuple[Effects, str, int]]] = {}
        self._last: dict[tuple[str, int], tuple[bytes | None, int]] = {}
        self.sent: _Sent = []
        # The held topic's batches wait for this entry's tombstones' acks: a null was added
        # there, or a stamp that drops the lives a hold kept (Outbox._put_tombstones).
        self.after_tombstones = False
        self.held_keys: list[bytes] = []  # the keys of every message added to it
        self.after_held = False  # a stamp must follow an earlier entry's held message

    def try_add(
        self,
        slot: tuple[str, int],
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: list[tuple[str, bytes]],
        track: Effects | None = None,
    ) -> bool:
        """Append a message to its open batch; False when the batch is full (then
        ``add``). Not a coroutine: it runs once per message, and the batch is rarely full."""
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open[slot] = self._prod.create_batch()
        # Straight to aiokafka's C builder inside the batch: ``BatchBuilder.append`` adds
        # two Python calls a message (serializers this producer has none of, a closed flag
        # only its ``close`` sets): 0.7 us a message against 0.3, twice per tombstone.
        # Private (hence aiokafka's upper bound); tests send through it all the time.
        offset = batch._relative_offset
        meta = batch._builder.append(offset, timestamp_ms, key=key, value=value, headers=headers)
        if meta is None:
            return False
        batch._relative_offset = offset + 1
        self._last[slot] = (key, timestamp_ms or 0)
        if key is not None and slot[0] == self._held_topic:
            self.held_keys.append(key)
            if value is None:
                self.after_tombstones = True
        if track is not None and key is not None:
            self._tracked.setdefault(slot, []).append((track, key.decode(), offset))
        return True

    @property
    def held_topic(self) -> str | None:
        return self._held_topic

    def open_batch(self, slot: tuple[str, int]) -> Any:
        """``slot``'s open batch, made if it has none (for an :class:`_Appender`)."""
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open[slot] = self._prod.create_batch()
        return batch

    def note_last(self, slot: tuple[str, int], last: tuple[bytes | None, int]) -> None:
        """``slot``'s last message was appended by an :class:`_Appender`: its key and
        timestamp, which mark the batch's end once acked (:class:`Run`)."""
        self._last[slot] = last

    async def add(
        self,
        slot: tuple[str, int],
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: list[tuple[str, bytes]],
        track: Effects | None = None,
    ) -> None:
        """Append a message, sending the open batch first if it is full."""
        if self.try_add(slot, key, value, timestamp_ms, headers, track):
            return
        if slot in self._open:
            if slot[0] == self._held_topic:
                self._hold(slot)
            else:
                await self._send(slot)
        if not self.try_add(slot, key, value, timestamp_ms, headers, track):
            raise BrokerError(f"a message for {slot[0]} is larger than the producer's batch size")

    def _hold(self, slot: tuple[str, int]) -> None:
        """Close a full batch of the held topic; :meth:`flush_held` sends it, in order."""
        batch = self._open.pop(slot)
        self._full.append(slot)
        tracked = self._tracked.pop(slot, [])
        self._closed.setdefault(slot, []).append((batch, tracked, self._last[slot]))

    async def _send(self, slot: tuple[str, int]) -> None:
        batch = self._open.pop(slot)
        await self._send_batch(slot, batch, self._tracked.pop(slot, []), self._last[slot])

    async def _send_batch(
        self,
        slot: tuple[str, int],
        batch: Any,
        tracked: list[tuple[Effects, str, int]],
        last: tuple[bytes | None, int],
    ) -> None:
        count = batch.record_count()
        future = await self._prod.send_batch(batch, slot[0], partition=slot[1])
        self.sent.append((future, slot, count, tracked, last))

    async def flush(self) -> _Sent:
        """Send the open batches but the held topic's; returns what was sent."""
        for slot in list(self._open):
            if slot[0] != self._held_topic:
                await self._send(slot)
        return self.sent

    async def flush_held(self) -> _Sent:
        """Send the held topic's batches, full ones first, each partition's in order;
        returns what this sent."""
        self.sent = []
        for slot in self._full:
            batch, tracked, last = self._closed[slot].pop(0)
            await self._send_batch(slot, batch, tracked, last)
        self._full = []
        for slot in list(self._open):
            await self._send(slot)
        return self.sent


class _Appender:
    """Appends messages to one slot's open batch of a :class:`_Batches` as its ``try_add``
    does (the batch made at the first message), with the slot's bookkeeping kept here
    meanwhile instead of in the batches' dictionaries a message (their keys are tuples,
    hashed at each look-up): :meth:`done` gives it back. Meanwhile nothing else may append
    to the slot; :meth:`add` goes through the batches' ``add`` when the batch is full."""

    __slots__ = ("_append", "_batch", "_held", "_last", "_offset", "_out", "_slot")

    def __init__(self, out: _Batches, slot: tuple[str, int]) -> None:
        self._out, self._slot = out, slot
        self._held = out.held_keys if slot[0] == out.held_topic else None
        self._append: Any = None  # the open batch's builder's append, once there is one
        self._batch: Any = None
        self._offset = 0
        self._last: tuple[bytes | None, int] | None = None  # the last message appended here

    def _open(self) -> Any:
        self._batch = batch = self._out.open_batch(self._slot)
        self._offset = batch._relative_offset
        self._append = batch._builder.append  # as _Batches.try_add appends
        return self._append

    def try_add(
        self, key: bytes, value: bytes | None, timestamp_ms: int, headers: list[tuple[str, bytes]]
    ) -> bool:
        """Append a message; False when the batch is full (then :meth:`add`)."""
        append = self._append
        if append is None:
            append = self._open()
        offset = self._offset
        if append(offset, timestamp_ms, key=key, value=value, headers=headers) is None:
            return False
        self._offset = offset + 1
        self._last = (key, timestamp_ms)
        held = self._held
        if held is not None:
            held.append(key)
            if value is None:
                self._out.after_tombstones = True
        return True

    async def add(
        self, key: bytes, value: bytes | None, timestamp_ms: int, headers: list[tuple[str, bytes]]
    ) -> None:
        """Append a message to a full batch: it goes (``_Batches.add``), the message in the
        next, and the appends after it too."""
        self.done()
        await self._out.add(self._slot, key, value, timestamp_ms, headers)
        self._open()

    def done(self) -> None:
        """Give the batch its offset and the batches the slot's last message."""
        if self._batch is not None:
            self._batch._relative_offset = self._offset
        if self._last is not None:
            self._out.note_last(self._slot, self._last)
            self._last = None


class Outbox:
    """Sends effects and settles them, in order, after their acks."""

    def __init__(
        self,
        prod: AIOKafkaProducer,
        topics: Topics,
        partitions: dict[str, int],
        *,
        redactor: Redactor | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        stats: ServiceStats | None = None,
        topic_limit: int | None = None,
    ) -> None:
        self._prod = prod
        # The record batches sent here skip the producer's own size check (``send`` makes
        # it): each message is held to the producer's limit here instead, and to the
        # output topics' ``max.message.bytes`` (``topic_limit``) when smaller.
        self._limit = oversize.output_limit(prod, topic_limit)
        self._stats = stats
        self._redactor = redactor if redactor else None  # an empty one removes nothing
        self._topics = topics
        self._partitions = partitions  # partition counts of the output topics
        self._send, self._receive = anyio.create_memory_object_stream[_Entry](max_in_flight)
        self._in_flight = 0
        self._drained = anyio.Event()
        self._drained.set()
        # input offsets whose effects are settled: what the group may commit
        self.committable: dict[tuple[str, int], int] = {}
        # input partitions whose store the settler wrote since ``take_written``: the ones
        # whose changelog positions a commit moves (the others' wait for a full checkpoint)
        self._written: set[tuple[str, int]] = set()
        # output (topic, partition) -> the latest runs [start, end) of offsets filled by
        # batches of this outbox, settled (another writer's message starts a new run), and
        # the key and timestamp of each one's last message (add_run)
        self._runs: dict[tuple[str, int], list[Run]] = {}
        # Per entry in flight, in order: the earliest expiry of its ttl tombstones (None:
        # none). A record fired is out of the wheel, and its store drops it only once
        # settled: the overdue gauge counts it meanwhile (an outage holds it for long).
        self._expiries: collections.deque[int | None] = collections.deque()
        # The latest entry's changelog batches while they wait to be sent (None: all sent).
        self._changelog: asyncio.Task[_Sent] | None = None
        self._waiting: set[asyncio.Task[_Sent]] = set()
        # The keys of the messages in those batches, not sent yet: a stamp of one waits too.
        self._held_unsent: collections.Counter[bytes] = collections.Counter()
        self._next_send = asyncio.Event()  # set as the next send hands its batches over

    async def send(self, items: list[tuple[PartitionProcessor, Effects]], now_ms: int) -> list[Any]:
        """Encode and send ``items``' messages; they settle later, in order. Returns the
        futures of their acks but the changelog's (the timer task waits for them before it
        fires again)."""
        out = _Batches(self._prod, held=self._topics.stamped)
        for proc, effects in items:
            await self._encode(out, proc, effects, now_ms)
        # Changelog batches waiting for this send go now: woken before the producer's
        # sender (it is woken by the flush below), they join this send's request.
        self._next_send.set()
        self._next_send = asyncio.Event()
        acks = await out.flush()
        changelog = await self._send_changelog(out, acks)
        due = [
            f.before.expires_at
            for _, effects in items
            for f in effects.tombstones
            if f.reason == "ttl" and f.before.expires_at is not None and not f.null_only
        ]
        self._expiries.append(min(due) if due else None)
        if self._in_flight == 0:
            self._drained = anyio.Event()
        self._in_flight += 1
        # Counted above, so queued it must be: cancelled while the queue was full (a clean
        # stop during a backlog), the entry was counted and never settled, and the stop
        # waited for it until it was forced (a review). The settler keeps taking entries
        # meanwhile; if it has ended, this raises at once (the stream is closed).
        with anyio.CancelScope(shield=True):
            await self._send.send((acks, changelog, items, now_ms))
        return [future for future, *_ in acks]

    async def _send_changelog(self, out: _Batches, sent: _Sent) -> _Sent | asyncio.Task[_Sent]:
        """Send ``out``'s changelog batches now, or return the task that sends them once
        the tombstones in ``sent`` are acknowledged.

        A null on the changelog says the record's tombstone went out (../shared/DESIGN.md,
        step 5: the tombstone acked, then the record marked deleted). Sent together, on
        two partitions, the null could be acked and the tombstone not (its partition's
        leader away past the producer's timeout): the session restarted, restored the
        null as a deletion, and the record was never tombstoned (a review). A null now
        waits for its tombstone's ack, and the changelog batches of a later entry with
        nulls wait behind it. So does a later entry with a stamp of a record that has a
        message waiting there, a null or a stamp: compaction keeps a key's last message,
        and a restore takes it for the record's state, so the record's next life must not
        land before the null of the last, nor a touch's stamp before the create's held
        beside another record's null (a review: the session restored without its slide,
        fired 30 s early). A stamp that drops the lives a hold kept, whose tombstones go
        with no null (the record lives on), waits for them likewise: restored without
        them, those lives were never tombstoned (a review). The wait is a task: the loop goes on meanwhile,
        and only the settling of those entries waits. Once acked, the nulls wait for the
        next send (at most :data:`CHANGELOG_LINGER_S`) and go in its produce request: sent
        on their own, each firing took two requests where it took one, and the next
        firing's tombstones queued behind the nulls (10k expirations/s: p99 lag 28-50 ms
        against 22-31 ms before this wait, alternated on a busy machine).

        Other entries' stamps go at once. They waited behind every null too (round 33):
        with 20k events/s ingested beside 10k expirations/s, the ingest's stamps queued
        behind each firing's acks, and the lag p50 rose from ~35 to ~43-70 ms."""
        before = self._changelog
        if before is not None and _sent_well(before):
            before = self._changelog = None
        if not out.after_tombstones and (before is None or not out.after_held):
            return await out.flush_held()
        tombstones = self._topics.tombstones
        acks = [future for future, slot, *_ in sent if slot[0] == tombstones]
        unsent, held = self._held_unsent, out.held_keys
        unsent.update(held)
        task = asyncio.create_task(
            _changelog_after(out, before, acks, lambda: self._next_send.wait())
        )
        self._changelog = task
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)
        task.add_done_callback(seen)
        task.add_done_callback(lambda _: _forget(unsent, held))
        return task

    async def _encode(
        self, out: _Batches, proc: PartitionProcessor, effects: Effects, now_ms: int
    ) -> None:
        t = self._topics
        source = codec.source_headers(proc.topic, proc.partition)
        stamped = (t.stamped, codec.output_partition(proc.partition, self._partitions[t.stamped]))
        tombs = (
            t.tombstones,
            codec.output_partition(proc.partition, self._partitions[t.tombstones]),
        )
        for stamps, tombstones in effects.runs():
            if stamps:
                await self._put_stamps(out, stamps, stamped, source, effects, now_ms)
            if tombstones:
                await self._put_tombstones(
                    out, tombstones, tombs, stamped, source, effects.erasures_read
                )
        if effects.deferred:
            audit = (t.audit, codec.output_partition(proc.partition, self._partitions[t.audit]))
            requests = effects.deferred_requests
            for index, (state, reason, hold_ids) in enumerate(effects.deferred):
                value = codec.encode_deferral(state, reason, hold_ids, now_ms)
                headers = [*source, *requests[index]] if index in requests else source
                await out.add(audit, state.identity.key.encode(), value, now_ms, headers)
        # Beside the input partition, as every output: a partition's dead letters keep its
        # order (they went to a random partition, and one record's arrived out of order).
        dlq = (t.dlq, codec.output_partition(proc.partition, self._partitions[t.dlq]))
        for rec, why in effects.dead_letters:
            letter_key, letter, headers, cut = oversize.fit_dead_letter(
                rec.key, rec.value, codec.dead_letter_headers(rec, why), self._limit
            )
            if cut:
                self._say_cut(rec, letter_key, letter)
            await out.add(dlq, letter_key, letter, None, headers)

    def _say_cut(self, rec: Any, key: bytes | None, value: bytes | None) -> None:
        if self._stats is not None:
            self._stats.dead_letters_truncated += 1
        oversize.say_cut(rec, self._limit, key, value)

    async def _put_stamps(
        self,
        out: _Batches,
        stamps: list[tuple[model.Stamp, Any]],
        stamped: tuple[str, int],
        source: codec.Headers,
        effects: Effects,
        now_ms: int,
    ) -> None:
        redactor = self._redactor
        limit = self._limit
        unsent = self._held_unsent
        arrived = effects.due_on_arrival
        named = effects.held_requests
        read = effects.erasures_read
        for state, data in stamps:
            removed: tuple[str, ...] = ()
            if redactor is not None and data is not None:
                data, removed = redactor.redact(state.identity.category, data)
            key = state.identity.key.encode()
            if unsent and key in unsent:
                out.after_held = True  # a message of the record waits: this one goes after
            headers = source
            if arrived or named:  # (rare: a late event's stamp, or erasures a hold deferred)
                headers = _stamp_headers(state, source, arrived, named, read)
            value, dropped = oversize.stamp_within(limit, state, data, removed, key, headers)
            if dropped:
                self._say_dropped(state, codec.source_of(source))
            if not out.try_add(stamped, key, value, now_ms, headers, effects):
                await out.add(stamped, key, value, now_ms, headers, effects)

    def _say_dropped(self, state: model.Stamp, source: tuple[str, int] | None) -> None:
        if self._stats is not None:
            self._stats.stamps_data_dropped += 1
        i = state.identity
        log.warning(
            "the stamp of a record (%s) from %s is over the producer's limit of %d bytes "
            "with its data: published without it (data null, data_dropped %r); its expiry "
            "stands",
            i.category,
            "an unknown input" if source is None else f"input {source[0]}[{source[1]}]",
            self._limit,
            oversize.DATA_DROPPED,
            extra={"record": record_ref(i.key)},
        )

    async def _put_tombstones(
        self,
        out: _Batches,
        tombstones: list[Fired],
        tombs: tuple[str, int],
        stamped: tuple[str, int],
        source: codec.Headers,
        erasures_read: Mapping[str, ErasureRead] | None = None,
    ) -> None:
        """Each tombstone's event on ``tombs`` and the Kafka-native null that compacts its
        stamp away on ``stamped``, in the order of ``tombstones`` on each.

        Once per fired record, twice a message: the messages go straight into their open
        batches (:class:`_Appender`), the fields :attr:`Fired.has_null` and
        :attr:`Fired.deleted_until` read inline. Through ``_Batches.try_add`` and the two
        properties, a tombstone cost 7,700 instructions more (round 46,
        ``bench.count_instructions --kinds send``)."""
        events, nulls = _Appender(out, tombs), _Appender(out, stamped)
        reasons = _REASON_HEADERS
        try:
            for fired in tombstones:
                before, after = fired.before, fired.after
                key = before.identity.key.encode()
                at = fired.emitted_at
                if fired.null_only:  # its tombstone event went out when the life ended
                    until = after.deleted_at
                    assert until is not None
                    deleted = [*source, (codec.H_DELETED_AT, b"%d" % until), reasons[fired.reason]]
                    if not nulls.try_add(key, None, at, deleted):
                        await nulls.add(key, None, at, deleted)
                    continue
                event = model.encode_tombstone(before, reason=fired.reason, emitted_at=at)
                until = after.deleted_at
                if until is None or not fired.ends_life:  # no null (not Fired.has_null)
                    # An earlier life a hold kept: the record lives on, no null but a stamp
                    # without that life, which must not be acked before this tombstone is:
                    # a restore from it would never tombstone the life (a review). Or an
                    # erasure of lives ended already, before the one the record's marker
                    # ends.
                    if until is None:
                        out.after_tombstones = True
                    # An erasure's tombstone says where the life ended, as below: the
                    # stores and the archive erase up to there, never the record's next life.
                    ended = before.erased_until if fired.reason == "explicit" else None
                    held = (
                        source if ended is None else [*source, (codec.H_DELETED_AT, b"%d" % ended)]
                    )
                    if fired.request is not None:
                        held = [*held, *fired.request]
                    if fired.reason == "explicit":
                        held = [*held, *_requested_at(fired)]
                    if fired.late_cause is not None:  # an earlier life a hold kept
                        held = [*held, (codec.H_LATE_CAUSE, fired.late_cause.encode())]
                    if not events.try_add(key, event, at, held):
                        await events.add(key, event, at, held)
                    continue
                # Both say when the record was deleted: an explicit delete's own time, which
                # the contract's event body does not carry; a sink bounding the lives it ends
                # by emitted_at instead took a life created between the two for the old one.
                if fired.erased_until is not None:  # Fired.deleted_until
                    until = fired.erased_until
                deleted_at = (codec.H_DELETED_AT, b"%d" % until)
                request = fired.request
                if fired.late_cause is not None:  # why it is late: the null says it too
                    request = (*(request or ()), (codec.H_LATE_CAUSE, fired.late_cause.encode()))
                if fired.reason == "explicit":  # when it was requested: the receipts say it
                    request = (*(request or ()), *_requested_at(fired))
                    if erasures_read and fired.request is not None:
                        read_at = _erasure_read_at(fired, erasures_read)
                        if read_at is not None:  # where the erasure was read: a restore keeps it
                            request = (*request, read_at, *_first_created_at(fired))
                if request:
                    event_headers = [*source, deleted_at, *request]
                    deleted = [*source, deleted_at, reasons[fired.reason], *request]
                else:
                    event_headers = [*source, deleted_at]
                    deleted = [*source, deleted_at, reasons[fired.reason]]
                if not events.try_add(key, event, at, event_headers):
                    await events.add(key, event, at, event_headers)
                if not nulls.try_add(key, None, at, deleted):
                    await nulls.add(key, None, at, deleted)
        finally:
            events.done()
            nulls.done()

    async def run(self) -> None:
        """The settler: run it in the service's task group for the outbox's lifetime.

        Its end closes both ends of the queue, however it ends (a session that fails is
        cancelled without :meth:`close`): nothing sent after it would ever be settled."""
        try:
            with self._send:
                async with self._receive:
                    await self._settle_in_order()
        finally:
            for task in self._waiting:  # nothing is sent after the settler
                task.cancel()

    async def _settle_in_order(self) -> None:
        """Each entry's acks, then its effects into the stores, in the order sent."""
        async for first, changelog, items, now_ms in self._receive:
            sent = first + (changelog if isinstance(changelog, list) else await changelog)
            await all_acked(future for future, *_ in sent)
            batches: list[tuple[tuple[str, int], int, int, tuple[bytes | None, int]]] = []
            for future, slot, count, tracked, last in sent:
                base = future.result().offset
                for effects, key, relative in tracked:
                    effects.stamp_offsets[key] = base + relative
                batches.append((slot, base, base + count, last))
            committable, written = self.committable, self._written
            for proc, effects in items:
                proc.settle(effects, now_ms)
                if effects.writes:
                    written.add((proc.topic, proc.partition))
                if effects.next_offset is not None:
                    slot = (proc.topic, proc.partition)
                    committable[slot] = max(committable.get(slot, 0), effects.next_offset)
            runs = self._runs
            for slot, base, end, (last_key, last_ts) in batches:
                add_run(runs.setdefault(slot, []), Run(base, end, last_key, last_ts))
            self._expiries.popleft()
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.set()

    def take_written(self) -> set[tuple[str, int]]:
        """The input partitions whose store was written since the last call."""
        written, self._written = self._written, set()
        return written

    def runs(self, proc: PartitionProcessor) -> dict[str, list[Run]]:
        """The latest runs of offsets this outbox filled and settled on each changelog
        partition of ``proc``'s input partition
        (:func:`~stream_expiry.state.store.position_name` -> :class:`Run` s, ascending).

        A run is made of settled batches only, so it holds only this instance's messages,
        all in their stores: a store that holds the changelog up to an offset within a run
        holds it up to the run's end (:meth:`PartitionProcessor.checkpoint`). A message of
        another writer (another instance's partition, or ``replay``) ends a run: what lies
        beyond it is read again at the next restore, as it must be.
        """
        runs = {}
        for topic in (self._topics.stamped, self._topics.tombstones):
            slot = (topic, codec.output_partition(proc.partition, self._partitions[topic]))
            kept = self._runs.get(slot)
            if kept:
                runs[position_name(*slot)] = list(kept)
        return runs

    def oldest_unsettled_ms(self) -> int | None:
        """The earliest expiry of a ttl tombstone sent and not yet settled, or None."""
        return min((e for e in self._expiries if e is not None), default=None)

    async def drain(self) -> None:
        """Wait until everything sent is settled (before a revocation or a stop)."""
        await self._drained.wait()

    def close(self) -> None:
        self._send.close()


def _requested_at(fired: Fired) -> tuple[tuple[str, bytes], ...]:
    """The header that says when the erasure ``fired`` carries out was requested
    (:data:`codec.H_ERASURE_REQUESTED_AT`, from :attr:`Fired.requested`), none when the
    state does not know (never for an erasure the engine decided)."""
    requested = fired.requested
    if requested is None:
        return ()
    return ((codec.H_ERASURE_REQUESTED_AT, b"%d" % requested),)


def _erasure_read_at(
    fired: Fired, erasures_read: Mapping[str, ErasureRead]
) -> tuple[str, bytes] | None:
    """The header that says where the erasure ``fired`` carries out was read
    (:data:`codec.H_ERASURE_READ_AT`), when it left the marker the effects noted it for
    (``Effects.erasures_read``: the same erasure's time); None otherwise."""
    noted = erasures_read.get(fired.before.identity.key)
    if noted is None or fired.after.deleted_at is None or noted[0] != fired.after.erase_at:
        return None
    return codec.H_ERASURE_READ_AT, codec.encode_read_at(noted[1])


def _first_created_at(fired: Fired) -> tuple[tuple[str, bytes], ...]:
    """The header that says the latest creation any stamp of the life ``fired`` erases
    said (:data:`codec.H_FIRST_CREATED_AT`), only when a create read late moved it back
    (``first_created_at``; nearly never): the stores' window of the erasure ends there
    (``sinks._messages.erased_life_before``)."""
    first = fired.before.first_created_at
    if first is None:
        return ()
    return ((codec.H_FIRST_CREATED_AT, b"%d" % first),)


def _stamp_headers(
    state: model.Stamp,
    source: codec.Headers,
    arrived: dict[str, codec.ArrivedLife],
    named: dict[str, dict[codec.DeferredErasure, codec.Request]] | None,
    read: Mapping[str, ErasureRead] | None = None,
) -> codec.Headers:
    """A stamp's headers when its life was due on arrival (``codec.H_DUE_AT_INGEST``: a
    restore of the changelog knows its late cause) or its record keeps erasures a legal
    hold deferred (their requests: a restore knows what each tombstone of the release
    names). The stamp's own erasure's (``erase_requested_at``) in the two request headers,
    as before, and where it was read (``codec.H_ERASURE_READ_AT``, from ``read``, the
    effects' ``erasures_read``, when it names that erasure): the release's tombstone and
    null say it, restored or not; the others the record keeps (an erased life beside the
    next, erasures naming no life) in ``codec.H_DEFERRED_REQUESTS``, only when there are
    any: a restore reads a record's latest stamp alone, whichever erasure it records.
    (Their tombstones at the release have no null, and say no read position.)"""
    headers = source
    key = state.identity.key
    life = arrived.get(key)
    if life is not None and life == (state.created_at, state.expires_at):
        headers = [*headers, (codec.H_DUE_AT_INGEST, b"%d" % life[1])]
    kept = named.get(key) if named else None
    if kept is None:
        return headers
    own = None
    if state.erase_at is not None:
        own = (state.erase_at, state.created_at is not None)
        request = kept.get(own)
        if request is not None:
            headers = [*headers, *request]
        noted = read.get(key) if read else None
        if noted is not None and noted[0] == state.erase_at:
            headers = [*headers, (codec.H_ERASURE_READ_AT, codec.encode_read_at(noted[1]))]
    if state.held_lives:  # the others wait in the lives the record keeps, if anywhere
        waiting = codec.deferred_erasures(state)
        others = {e: r for e, r in kept.items() if e != own and e in waiting}
        if others:
            headers = [
                *headers,
                (codec.H_DEFERRED_REQUESTS, codec.encode_deferred_requests(others)),
            ]
    return headers

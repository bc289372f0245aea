"""Restore input partitions' stores from the changelog (Kafka Streams' restore).

The changelog is ``expiry.stamped`` (the latest stamp of every record, a null once it is
deleted) and ``expiry.tombstones``. A partition's messages sit on the same partition number
of each topic (:func:`stream_expiry.codec.output_partition`) and name their input partition
in headers. Every input partition with that number (one per input topic) shares the
changelog partition, so the stores being restored are grouped by it and each changelog
partition is read ONCE, each message going to the store its headers name.

Each store remembers how far it has read each changelog partition (written in the same
batch as the states), so a store that already holds most of the partition (the instance
had it before) only takes what was written since: the shared read starts at the lowest
position of its stores and a store skips what lies before its own. An empty store reads
from the start. Messages are applied in log order, which is the order they were written:
the last one of a record wins, as compaction would have it. Tombstone events come second:
they turn into deletion markers only where they are newer than what the stamps said (a
record deleted and then created again stays alive).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aiokafka import TopicPartition

from stream_expiry import model, native
from stream_expiry.codec import (
    H_DEFERRED_REQUESTS,
    ArrivedLife,
    DeferredErasure,
    Request,
    deferred_requests_in,
    deleted_at_of,
    due_at_ingest_of,
    erasure_read_at_of,
    output_partition,
    reason_of,
    request_in,
    source_headers,
    source_of,
    stamp_fields,
)
from stream_expiry.errors import BrokerError
from stream_expiry.fetch import messages_at, read_ranges
from stream_expiry.kafka import partitions_of, stable_ends
from stream_expiry.logs import record_ref
from stream_expiry.state.store import mark_holds, position_marks, position_name

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from aiokafka import AIOKafkaConsumer

    from stream_expiry.state.store import ErasureRead, PartitionStore, RestoredRow

__all__ = [
    "Mark",
    "PreparedRestore",
    "RestoreReport",
    "RestoreResult",
    "broken_marks",
    "position_name",
    "prepare_restore",
    "restore_partitions",
]

Source = tuple[str, int]

log = logging.getLogger(__name__)

# Messages held before they are written (with the positions). Measured on 1 M stamps
# (bench.bench_restore): 50,000 used the same CPU as 20,000 and peaked ~35 MiB higher.
FLUSH = 20_000


# Changelog partitions read again that the warning names one by one; the rest are counted.
_AGAIN_SHOWN = 8


@dataclass
class RestoreReport:
    """What a restore read and kept, for the log line and the restore metric."""

    read: int = 0  # changelog messages read (for a store: those that were its own)
    stamps: int = 0  # states restored from stamps
    markers: int = 0  # deletion markers restored (nulls and tombstone events)
    unreadable: int = 0  # messages of ours that could not be decoded (skipped, logged)
    remaining: int = 0  # changelog messages still to read
    # records whose running life has a tombstone event and no null on expiry.stamped
    # (once each; no log line or metric shows it)
    nulls_owed: int = 0
    # stamps whose expiry-deferred-requests could not be read (logged): the erasures it
    # names go out at the release naming no request
    requests_unreadable: int = 0
    # live records already due (expires_at <= the restore's now) in the stores, as far as
    # the changelog is read: those a store held at the start, plus the stamps read since,
    # less those that a later message of their record deleted or moved (the store knows
    # which: PartitionStore.write_restored). A record whose null is still ahead counts
    # until it is read, so before the end it is at most the truth.
    due: int = 0
    # stores kept from before (PartitionStore.was_kept: a restart that kept its state
    # directory), caught up from their positions: 1 or 0 for a store, their count in a
    # whole read's total. The others were made anew, empty, and read from the beginning.
    # (Restored in worker processes, the stores' own processes say what the workers found.)
    kept: int = 0
    seconds: float = 0.0


@dataclass
class RestoreResult:
    """One restore of several stores: the whole read, and each store's share."""

    total: RestoreReport = field(default_factory=RestoreReport)
    stores: dict[Source, RestoreReport] = field(default_factory=dict)
    # The stamps read of input partitions not restored here (other instances', or no
    # instance's: a retired topic made again with fewer partitions, which the service says):
    # a changelog partition is read by one process, so the workers' never overlap.
    others: dict[Source, int] = field(default_factory=dict)


async def restore_partitions(
    cons: AIOKafkaConsumer,
    stores: Mapping[Source, PartitionStore],
    *,
    stamped: str,
    tombstones: str,
    now_ms: int,
    progress: Callable[[RestoreReport], None] | None = None,
) -> RestoreResult:
    """Bring every store of ``stores`` (keyed by its input partition) up to date with the
    changelog, reading each changelog partition they need once.

    ``cons`` is a consumer without a group; it is left assigned to the changelog
    partitions, paused (its own fetcher learns their ends; :mod:`stream_expiry.fetch`
    reads them). ``progress`` is told the whole read's report after every fetch.
    """
    prepared = await prepare_restore(
        cons, stores, stamped=stamped, tombstones=tombstones, now_ms=now_ms
    )
    return await prepared.run(cons, progress)


class PreparedRestore:
    """A restore with both changelog topics positioned and their ends known: what is left
    to read, and how the stores group by changelog partition, can be asked before it
    runs (:mod:`stream_expiry.state.restore_workers` decides on workers from them)."""

    def __init__(
        self,
        readers: list[_TopicRead],
        result: RestoreResult,
        started: float,
        stores: Mapping[Source, PartitionStore],
        now_ms: int,
    ) -> None:
        self._readers = readers
        self._result = result
        self._started = started
        self._stores = stores
        self._now_ms = now_ms

    @property
    def remaining(self) -> int:
        """Changelog messages to read (what the stores hold already is not counted)."""
        return self._result.total.remaining

    def groups(self) -> list[list[Source]]:
        """The stores grouped by the partition of ``expiry.stamped`` they are read from."""
        stamps = self._readers[0]
        return [stamps.members[tp] for tp in stamps.tps]

    async def run(
        self, cons: AIOKafkaConsumer, progress: Callable[[RestoreReport], None] | None = None
    ) -> RestoreResult:
        result = self._result
        # What each store holds due at the restore's now when it begins, counted by the
        # process that runs it: a restore handed to worker processes is prepared here too,
        # and counted at its preparation as well as in each worker, it scanned every
        # store's due index twice (up to an outage's worth of records).
        for source, store in self._stores.items():
            result.stores[source].due = store.count_due(self._now_ms)
        result.total.due = sum(report.due for report in result.stores.values())
        stamps_read = self._readers[0]
        for tp in stamps_read.tps:
            members = stamps_read.members[tp]
            for source in members:
                # A store restored from empty skips the look-ups of keys it never wrote;
                # the partition's messages are shared by its members' stores.
                to_read = stamps_read.ends[tp] - stamps_read.own[source]
                self._stores[source].start_key_filter(max(0, to_read) // len(members))
        try:
            for reader, stamps in zip(self._readers, (True, False), strict=True):
                await reader.read(cons, stamps=stamps, progress=progress)
        finally:
            for store in self._stores.values():
                store.stop_key_filter()  # its memory back (up to 16 MiB a store)
        total = result.total
        total.seconds = time.monotonic() - self._started
        for report in result.stores.values():
            report.seconds = total.seconds
        return result


async def prepare_restore(
    cons: AIOKafkaConsumer,
    stores: Mapping[Source, PartitionStore],
    *,
    stamped: str,
    tombstones: str,
    now_ms: int,
) -> PreparedRestore:
    """The reads of both changelog topics for ``stores``, positioned, their ends known and
    what is left to read counted (one metadata look-up and one fetch of the ends)."""
    started = time.monotonic()
    # Each store's due records are counted when the restore runs (:meth:`PreparedRestore.run`).
    result = RestoreResult(
        stores={
            source: RestoreReport(kept=int(store.was_kept())) for source, store in stores.items()
        }
    )
    result.total.kept = sum(report.kept for report in result.stores.values())
    readers: list[_TopicRead] = []
    for topic in (stamped, tombstones):
        count = len(await partitions_of(cons, topic))
        if count == 0:  # a modulo by zero below, and nothing to restore from
            raise BrokerError(
                f"the changelog topic {topic!r} does not exist on the cluster: the service "
                "makes it when it starts; check the topic names and the cluster"
            )
        groups: dict[int, list[Source]] = {}
        for source in stores:
            groups.setdefault(output_partition(source[1], count), []).append(source)
        readers.append(_TopicRead(topic, groups, stores, now_ms, result))
    tps = [tp for reader in readers for tp in reader.tps]
    cons.assign(tps)
    for reader in readers:
        reader.seek(cons)
    ends = await stable_ends(cons, tps)
    cons.pause(*tps)  # the reads fetch for themselves (stream_expiry.fetch)
    for reader in readers:
        reader.ends = {tp: ends[tp] for tp in reader.tps}
        await reader.check_positions(cons)
        result.total.remaining += sum(max(0, ends[tp] - reader.start[tp]) for tp in reader.tps)
    return PreparedRestore(readers, result, started, stores, now_ms)


class _TopicRead:
    """The read of one changelog topic for a set of stores: each partition once."""

    def __init__(
        self,
        topic: str,
        groups: dict[int, list[Source]],
        stores: Mapping[Source, PartitionStore],
        now_ms: int,
        result: RestoreResult,
    ) -> None:
        self.topic = topic
        self.stores = stores
        self.now_ms = now_ms
        self.result = result
        self.tps = [TopicPartition(topic, q) for q in sorted(groups)]
        self.members = {TopicPartition(topic, q): sources for q, sources in groups.items()}
        # Where each store's own read starts: what it already holds is skipped.
        self.own: dict[Source, int] = {}
        self.names: dict[Source, str] = {}
        for q, sources in groups.items():
            name = position_name(topic, q)
            for source in sources:
                self.names[source] = name
                self.own[source] = stores[source].meta(name) or 0
        self.start = {tp: min(self.own[s] for s in self.members[tp]) for tp in self.tps}
        self.ends: dict[TopicPartition, int] = {}
        # The headers a service writes first on every message for each source, as aiokafka
        # hands them over (a tuple of pairs): one dict lookup of a message's first two
        # routes it, whatever follows (a null's deletion time, a tombstone event's);
        # anything else is parsed. Only the stores of a partition take its messages
        # (positions are per partition).
        self.routes = {
            tp: {tuple(source_headers(*source)): source for source in self.members[tp]}
            for tp in self.tps
        }

    async def check_positions(self, cons: AIOKafkaConsumer) -> None:
        """Read each partition from the beginning for a store whose saved position is not
        on this topic: past its end, or the message before it is not the one the store
        marked (``position_marks``). The topic was deleted and made again, a cluster
        rebuilt: its offsets start at 0 again, and the old position would skip the new
        messages below it for good. The store's states stay; the new messages go over
        them. (A position saved without marks, by an earlier version, is trusted unless
        it is past the end.) Needs :attr:`ends`."""
        marked: dict[Source, Mark] = {}
        again: list[str] = []
        for tp in self.tps:
            for source in self.members[tp]:
                position = self.own[source]
                if position == 0:
                    continue
                if position > self.ends[tp]:
                    again.append(self._read_again(source, tp, f"past its end, {self.ends[tp]}"))
                    continue
                mark = self.stores[source].position_mark(self.names[source])
                if mark is not None and mark[0] < position:
                    marked[source] = (tp, *mark)
        for source, why in (await broken_marks(cons, marked)).items():
            again.append(self._read_again(source, marked[source][0], why))
        if again:
            # One line for them all: a rebuilt cluster makes every store of every
            # partition say it (a line each was 12 lines an instance in a trial).
            shown = "; ".join(again[:_AGAIN_SHOWN])
            more = f"; and {len(again) - _AGAIN_SHOWN} more" if len(again) > _AGAIN_SHOWN else ""
            log.warning(
                "%d changelog partitions are not the ones the stores read (the topic was made "
                "again: a rebuilt cluster?); reading them from their beginning, over what the "
                "stores hold: %s%s",
                len(again), shown, more,
            )  # fmt: skip
        self.start = {tp: min(self.own[s] for s in self.members[tp]) for tp in self.tps}

    def _read_again(self, source: Source, tp: TopicPartition, why: str) -> str:
        """Read ``tp`` from its beginning for ``source``'s store; what to say of it."""
        said = (
            f"{tp.topic}[{tp.partition}] for the store of {source[0]}[{source[1]}], "
            f"read up to offset {self.own[source]} ({why})"
        )
        self.own[source] = 0
        return said

    def seek(self, cons: AIOKafkaConsumer) -> None:
        for tp in self.tps:
            cons.seek(tp, self.start[tp])

    def _route(self, tp: TopicPartition, headers: Sequence[Any], stamp: bool) -> Source | None:
        """The store of a message whose headers do not begin with a member's source
        headers, or None: another partition's message (counted in ``others`` when it is a
        ``stamp``), or not ours."""
        found = source_of(headers)
        if found in self.members[tp]:
            return found
        if stamp and found is not None:
            others = self.result.others
            others[found] = others.get(found, 0) + 1
        return None

    async def read(
        self,
        cons: AIOKafkaConsumer,
        *,
        stamps: bool,
        progress: Callable[[RestoreReport], None] | None,
    ) -> None:
        total = self.result.total
        # Messages waiting to be applied, by store: flushed at FLUSH, so memory is bounded.
        pending: dict[Source, list[Any]] = {s: [] for s in self.own}
        position = dict(self.start)
        last: dict[TopicPartition, tuple[int, bytes | None, int]] = {}  # the latest one read
        routes, route = self.routes, self._route
        own = self.own
        rounds = read_ranges(cons, self.start, ends=self.ends)
        async with contextlib.aclosing(rounds):
            async for fetched in rounds:
                done = []
                read = 0
                for part in fetched:
                    tp = part.tp
                    total.remaining = max(0, total.remaining - (part.position - position[tp]))
                    position[tp] = part.position
                    if part.position >= part.end:
                        done.append(tp)
                    plain = routes[tp]
                    rec = None
                    for rec in part:
                        read += 1
                        headers: Any = rec.headers
                        source = plain.get(tuple(headers[:2]))
                        if source is None:
                            source = route(tp, headers, stamps and rec.value is not None)
                            if source is None:
                                continue
                        if rec.offset >= own[source]:
                            pending[source].append(rec)
                    if rec is not None:
                        last[tp] = (rec.offset, rec.key, rec.timestamp)
                total.read += read
                held = sum(len(mine) for mine in pending.values())
                for tp in self.tps if held >= FLUSH else done:
                    for source in self.members[tp]:
                        mark = last.get(tp)
                        self._flush(source, pending[source], position[tp], mark, stamps=stamps)
                        pending[source] = []
                if progress is not None:
                    progress(total)

    def _flush(
        self,
        source: Source,
        records: list[Any],
        position: int,
        mark: tuple[int, bytes | None, int] | None,
        *,
        stamps: bool,
    ) -> None:
        """Apply a store's messages up to ``position`` and save that position with them,
        marked with ``mark``, the offset, key and timestamp of the last message read."""
        if position <= self.own[source]:
            return  # the shared read has not reached this store's own position yet
        name = self.names[source]
        meta = {name: position}
        if mark is not None:
            meta.update(position_marks(name, *mark))
        store = self.stores[source]
        report = self.result.stores[source]
        report.read += len(records)
        if stamps:
            due_before = report.due
            _apply_stamps(store, records, self.now_ms, meta, report)
            self.result.total.due += report.due - due_before
        else:
            _apply_tombstones(store, records, self.now_ms, meta, report)
        self.own[source] = position


K = TypeVar("K", bound=Hashable)
Mark = tuple[TopicPartition, int, int, int]
"""Where a mark points and what it saw there: (partition, offset, key CRC-32, timestamp)."""


async def broken_marks(cons: AIOKafkaConsumer, marks: Mapping[K, Mark]) -> dict[K, str]:
    """The marks (``position_marks``) whose message is not at their offset any more, each
    with why: the topic was made again, a cluster rebuilt. The changelog's checkpoints and
    the inputs' committed offsets are both checked so. One fetch per partition and round;
    marks on one partition at several offsets take several rounds (nearly never)."""
    todo = dict(marks)
    broken: dict[K, str] = {}
    while todo:
        wanted: dict[TopicPartition, int] = {}
        for tp, offset, _, _ in todo.values():
            wanted[tp] = min(offset, wanted.get(tp, offset))
        found = await messages_at(cons, wanted)
        for key, (tp, offset, key_crc, timestamp) in list(todo.items()):
            if wanted[tp] != offset:
                continue
            del todo[key]
            rec = found.get(tp)
            if rec is None:
                broken[key] = f"no message at offset {offset}"
            elif not mark_holds(rec, key_crc, timestamp):
                broken[key] = f"another message at offset {offset}"
    return broken


# -- decoding ----------------------------------------------------------------------------

# A record key of plain parts (the service writes no other): the category is its 4th part.
_PLAIN_KEY = re.compile(
    rb"[A-Za-z0-9_.~-]*/[A-Za-z0-9_.~-]*/[A-Za-z0-9_.~-]*/([A-Za-z0-9_.~-]*)/[A-Za-z0-9_.~-]*"
)


def _plain_category_matched(key: bytes) -> bytes | None:
    m = _PLAIN_KEY.fullmatch(key)
    return None if m is None else m.group(1)


_plain_category: Callable[[bytes], bytes | None] = (
    _plain_category_matched if native.compiled is None else native.compiled.key_category
)
"""The category part of a key of plain parts, else None; in C where it is built (the
regular expression took 6 % of a restored stamp's CPU, round 55)."""


def _key_of(key: bytes | None, categories: dict[bytes, str]) -> tuple[bytes, str] | None:
    """A changelog key as the store keys it, and its category (None: not a record key).

    The one place restore reads record keys: a plain key is its own store key and needs no
    :class:`~stream_expiry.model.Identity`; any other goes through ``decode_key``, whose
    identity's key is canonical."""
    if key is None:
        return None
    raw = _plain_category(key)
    if raw is not None:
        cat = categories.get(raw)
        if cat is None:
            cat = categories[raw] = raw.decode()
        return key, cat
    identity = _identity(key)
    return None if identity is None else (identity.key.encode(), identity.category)


def _identity(key: bytes | None) -> model.Identity | None:
    if key is None:
        return None
    try:
        return model.decode_key(key.decode())
    except ValueError:  # UnicodeDecodeError is one
        return None


def _apply_stamps(
    store: PartitionStore,
    records: Sequence[Any],
    now_ms: int,
    meta: dict[str, int],
    report: RestoreReport,
) -> None:
    """The latest message of each key becomes its stored state (a null: a marker), and a
    stamp that says its life was due on arrival (``codec.H_DUE_AT_INGEST``) is kept so
    (``PartitionStore.due_on_arrival``): its tombstone, late, says ``late_event``; one
    that records an erasure a legal hold deferred keeps its request's headers
    (``PartitionStore.deferred_requests``), which the release's tombstone names, and
    those of the others its record keeps (``codec.H_DEFERRED_REQUESTS``), and where its
    own was read (``codec.H_ERASURE_READ_AT``, ``PartitionStore.erasure_read_at``)."""
    latest: dict[bytes | None, Any] = {}
    for rec in records:
        latest[rec.key] = rec
    rows: dict[bytes, RestoredRow] = {}
    arrived: dict[bytes, ArrivedLife] = {}
    requests: dict[bytes, dict[DeferredErasure, Request]] = {}
    erasures_read: dict[bytes, ErasureRead] = {}
    categories: dict[bytes, str] = {}
    for rec in latest.values():
        found = _key_of(rec.key, categories)
        if found is None:
            report.unreadable += 1
            continue
        key, cat = found
        value = rec.value
        if value is None:
            deleted_at = deleted_at_of(rec.headers)
            if deleted_at is None:
                deleted_at = rec.timestamp  # an older null without the header: its time
            # An erasure's marker remembers it went out; a ttl marker (or an older null
            # without the header) lets an erasure request read late go out again.
            erased = deleted_at if reason_of(rec.headers) == "explicit" else None
            rows[key] = (
                key, cat, None, None, None, None, deleted_at, erased, None, None, (), None
            )  # fmt: skip
            if erased is not None and (read := erasure_read_at_of(rec.headers)) is not None:
                # And where the erasure was read: events read again from before it are its.
                erasures_read[key] = (erased, read)
            continue
        try:
            created, expires, ttl, source, erase, floor, older, first = stamp_fields(value)
        except ValueError:
            report.unreadable += 1
            continue
        rows[key] = (
            key, cat, created, expires, ttl, source, None, erase, rec.offset, floor, older, first
        )  # fmt: skip
        headers = rec.headers
        if len(headers) > 2:  # (the service's stamps have two headers, nearly all)
            if expires is not None and due_at_ingest_of(headers) == expires:
                arrived[key] = (created, expires)
            kept = _requests_of(headers, erase, created is not None, key, report)
            if kept:
                requests[key] = kept
            if erase is not None and (read := erasure_read_at_of(headers)) is not None:
                # Where the erasure a hold keeps was read (an earlier version's stamp says
                # nothing): the release's tombstone and null say it, and events read again
                # from before it are repeats.
                erasures_read[key] = (erase, read)
    lives, markers, due = store.write_restored(
        list(rows.values()),
        now_ms=now_ms,
        meta=meta,
        arrived=arrived,
        requests=requests,
        erasures_read=erasures_read,
    )
    report.stamps += lives
    report.markers += markers
    report.due += due


def _requests_of(
    headers: Sequence[tuple[str, bytes]],
    erase: int | None,
    names_life: bool,
    key: bytes,
    report: RestoreReport,
) -> dict[DeferredErasure, Request]:
    """The erasure requests a stamp names: its own erasure's (``erase``, the stamp's
    ``erase_requested_at``; ``names_life``, whether the stamp's life has a creation), and
    those of the others its record keeps. One it cannot read is counted and logged, and
    the restore goes on: their tombstones name no request at the release, as an
    older version's stamps left them."""
    try:
        kept = deferred_requests_in(headers)
    except ValueError as exc:
        report.requests_unreadable += 1
        log.warning(
            "a stamp's %s could not be read (%s): the erasures it names go out at the "
            "release naming no request",
            H_DEFERRED_REQUESTS,
            exc,
            extra={"record": record_ref(key.decode(errors="replace"))},
        )
        kept = {}
    if erase is not None and (request := request_in(headers)) is not None:
        kept[erase, names_life] = request
    return kept


def _apply_tombstones(
    store: PartitionStore,
    records: Sequence[Any],
    now_ms: int,
    meta: dict[str, int],
    report: RestoreReport,
) -> None:
    identities: dict[str, model.Identity] = {}
    keyed: list[tuple[str, Any]] = []
    for rec in records:
        identity = _identity(rec.key)
        if identity is None:
            continue  # not a record's event: nothing to restore from it
        identities[identity.key] = identity
        keyed.append((identity.key, rec))
    current = dict(zip(identities, store.get_many(list(identities.values())), strict=True))
    first: dict[str, model.Stamp | None] = {}
    erasures_read: dict[str, ErasureRead] = {}
    owed: set[str] = set()
    for key, rec in keyed:
        prior = current[key]
        marker = model.deletion_from_tombstone(rec.value, prior)
        if marker is None:
            continue
        if prior is not None and prior.live:
            # expiry.stamped still holds this life: the service stopped after the broker
            # acked the tombstone event and before it acked the null. Left live, the record
            # is tombstoned again (it is due, or its delete is read again: nothing of it was
            # committed), and this time its null is written. Or the event owes no null: it
            # names no life (an erasure of the lives before this one, read again while it
            # runs) or another life (an earlier one's erasure a hold deferred, sent at the
            # release while this one runs): left live all the same, but not counted. Nor
            # twice, a tombstone event the producer sent twice.
            if marker.created_at == prior.created_at and key not in owed:
                owed.add(key)
                report.nulls_owed += 1
            continue
        first.setdefault(key, prior)
        current[key] = marker
        if marker.erase_at is not None and (read := erasure_read_at_of(rec.headers)):
            # An erasure's tombstone event, its null compacted away (or read first): where
            # it was read, as its null says (``_apply_stamps``). A ttl tombstone says none:
            # a marker that keeps its prior's erasure keeps that erasure's entry.
            erasures_read[key] = (marker.erase_at, read)
        if prior is None or prior.deleted_at != marker.deleted_at:
            report.markers += 1  # (not a marker that only learnt its life's creation)
    changes = [(old, new) for k, old in first.items() if (new := current[k]) is not None]
    store.write(changes, now_ms=now_ms, meta=meta, erasures_read=erasures_read or None)

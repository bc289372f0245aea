"""Whole partitions read fast: Kafka fetches decoded straight into aiokafka's C records.

Restore and replay read millions of changelog messages and keep a few fields of each. The
consumer's ``getmany`` builds a Python ``ConsumerRecord`` per message, through a generator:
reading 1 M stamps and nothing else took 2.8-3.1 us of CPU per message that way, 0.9 us
this way (embedded broker). This module sends the Fetch requests itself, through the
consumer's client, and hands over the record objects that aiokafka's C extension decodes
from the response (``offset``, ``timestamp``, ``key``, ``value``, and ``headers`` as a
list of pairs), as the caller takes them. Measured end to end (``bench.e2e_replay``, 1 M):
replay went from 86k to 99-100k records/s at the same peak RSS; restore, whose time goes to
the stamps themselves (JSON, timestamps, the store), did not move beyond the noise.

It reads ranges: each partition from a start offset to the high watermark of its first
answer (what was there when the read began), as restore and replay need. The next fetch is
sent before the caller works on the last one's records, so the broker prepares it meanwhile.

It also tells where partitions end now (:func:`end_offsets`): every Fetch answer carries
the partition's high watermark, on every broker, while ``AIOKafkaConsumer.end_offsets``
(ListOffsets) is wrong on some Kafka-protocol brokers (../shared/BROKER.md: Tansu answers
below the end) and ``AIOKafkaConsumer.highwater`` is the answer to the consumer's last
fetch, which may have been sent before the caller's clock was read.

It reads committed data only, as the consumers do (``stream_expiry.kafka.consumer``): the
policy and holds topics it follows are written by users' producers, which may be
transactional. The broker answers up to the last stable offset (nothing of a transaction
still open), and that is where a read ends, not the high watermark: a read that waited for
the high watermark behind an open transaction would take the empty answers for a compacted
tail and step over the transaction for good. Batches of aborted transactions are passed
over as Kafka's own consumers do, from the answer's list of aborted transactions
(:func:`_committed`).

It uses aiokafka's private client and fetch protocol, hence the upper bound on aiokafka in
``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import TopicPartition
from aiokafka.client import ConnectionGroup
from aiokafka.errors import (
    KafkaError,
    NoError,
    OffsetOutOfRangeError,
    for_code,
)
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord

from stream_expiry.errors import BrokerError, BrokerUnavailableError
from stream_expiry.kafka import readable_end, transient
from stream_expiry.kafka_settings import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping

    from aiokafka import AIOKafkaConsumer

__all__ = [
    "ENDS_WAIT_MS",
    "Fetched",
    "RawRecord",
    "end_offsets",
    "ends_and_highs",
    "messages_at",
    "read_ranges",
    "read_to_now",
]

log = logging.getLogger(__name__)

READ_COMMITTED = 1  # Kafka's isolation level: nothing of open or aborted transactions
# The fetches go on a connection of their own, not the consumer's: a broker answers the
# requests of one connection in order, and the consumer's own fetches wait there up to
# its fetch_max_wait_ms (100 ms) for data. Sent behind one, the service's read of the
# control topics to their end took 95-190 ms (a loop turn's worth, every turn), not 2.
# aiokafka keeps a second connection per broker for the group coordinator's requests
# (joins, heartbeats, commits: short ones); a consumer outside a group never uses it.
_OWN_CONNECTION = ConnectionGroup.COORDINATION
FETCH_WAIT_MS = 100  # an idle partition answers (with its high watermark) this fast
# A read of where partitions end now: Kafka answers a Fetch with nothing to give at once
# when it may wait 0 ms; Tansu answers it with no partitions at all (measured), and waits
# max_wait_ms whatever it holds.
ENDS_WAIT_MS = 1
FETCH_BYTES = 4 * 1024 * 1024  # per request; bounds what one round holds in memory
# Rounds in a row where no partition had records while this one was below its end, before
# the rest of it is taken as compacted away (a consumer would wait there for good).
EMPTY_ROUNDS = 20
# Retriable errors (a leader moving, a connection dropped) in a row before the read gives
# up, waiting 0.2 s after the first, twice as long after each next, at most 5 s: ~30 s.
RETRIES = 10
RETRY_BACKOFF_S = 0.2
RETRY_MAX_S = 5.0


class RawRecord(Protocol):
    """One message as aiokafka's record decoder gives it."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def timestamp_type(self) -> int: ...  # 0: the producer's (CreateTime), 1: the broker's
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> list[tuple[str, bytes | None]]: ...


@dataclass(slots=True)
class Fetched:
    """One partition's share of a fetch: iterate it (once) for its records in
    ``[start, end)``, in log order. They are decoded as they are taken, so a caller that
    keeps a few fields of each never holds a whole answer's record objects at once."""

    tp: TopicPartition
    start: int  # the first offset wanted
    position: int  # the next offset to read
    end: int  # where this read of the partition stops
    batches: list[Any]  # aiokafka's record batches, control batches left out

    def __iter__(self) -> Iterator[RawRecord]:
        start, end = self.start, self.end
        for batch in self.batches:
            if start <= batch.base_offset and batch.next_offset <= end:
                yield from batch  # the whole batch is in range: no test per record
            else:
                for rec in batch:
                    if start <= rec.offset < end:
                        yield rec


@dataclass(slots=True)
class _Partition:
    position: int
    end: int | None = None  # known from the first answer
    empty: int = 0


async def read_ranges(
    cons: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    *,
    ends: Mapping[TopicPartition, int] | None = None,
    fetch_bytes: int = FETCH_BYTES,
    wait_ms: int = FETCH_WAIT_MS,
    retries: int = RETRIES,
) -> AsyncGenerator[list[Fetched], None]:
    """Read each partition of ``starts`` from its offset to its end (``ends``, or else the
    high watermark of its first answer), one list of :class:`Fetched` per round of
    fetches. A partition found at or past its end yields one empty :class:`Fetched`.
    ``wait_ms``: how long the broker may hold a fetch with nothing to give (small: to learn
    the ends of partitions that are mostly at their end, at once). ``retries``: retriable
    errors in a row (a leader moving, a connection dropped) tried again before
    :class:`~stream_expiry.errors.BrokerUnavailableError` is raised; a long read (a
    restore) rides out a broker's restart, a short one in a running loop hands the outage
    to its caller at once."""
    parts = {tp: _Partition(start, (ends or {}).get(tp)) for tp, start in starts.items()}
    if all(_done(part) for part in parts.values()):
        return
    # From the consumer's metadata where it knows them all, else looked up by the first
    # round (and again after errors).
    leaders = _cached_leaders(cons, parts)
    failures = unanswered = 0
    round_ = asyncio.ensure_future(_round(cons, parts, leaders, fetch_bytes, wait_ms))
    try:
        while True:
            try:
                answers = await round_
            except _Retry as retry:
                failures += 1
                failed = f"reading {retry}: still failing after {failures} tries"
                await _wait_to_retry(retry, failures, retries, failed, logging.WARNING,
                                     "reading %s; trying again in %.1f s")  # fmt: skip
                leaders.clear()  # a leader may have moved
                round_ = asyncio.ensure_future(_round(cons, parts, leaders, fetch_bytes, wait_ms))
                continue
            failures = 0
            if not answers:  # a fetch answered without any partition asked for
                unanswered += 1
                if unanswered > EMPTY_ROUNDS:
                    raise BrokerError(f"fetches of {sorted(parts)} came back without them")
            else:
                unanswered = 0
            # A partition answered without records while others filled the answer says
            # nothing about it; only a round where none had any can mean "nothing left".
            idle = not any(batches for _hw, _start, batches, _high in answers.values())
            out = [_take(parts[tp], tp, answer, idle) for tp, answer in answers.items()]
            more = any(not _done(part) for part in parts.values())
            if more:
                # The next round goes out now: the broker prepares it while the caller works.
                round_ = asyncio.ensure_future(_round(cons, parts, leaders, fetch_bytes, wait_ms))
            yield out
            if not more:
                return
    finally:
        round_.cancel()


def _done(part: _Partition) -> bool:
    return part.end is not None and part.position >= part.end


class _Retry(Exception):
    """A retriable error from the broker (a leader moved, a connection dropped)."""


_Answer = tuple[int, int, list[Any], int]  # stable end, log start, record batches, high watermark


async def _leaders(cons: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The leader of each partition, from fresh metadata (the consumer's own metadata only
    covers what it subscribed to)."""
    try:
        cluster = await cons._client.fetch_all_metadata()
    except KafkaError as exc:
        raise _Retry(f"metadata: {exc}") from exc
    leaders = {}
    for tp in tps:
        leader = cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            raise _Retry(f"{tp.topic}[{tp.partition}]: no leader (is the topic there?)")
        leaders[tp] = leader
    return leaders


async def _round(
    cons: AIOKafkaConsumer,
    parts: Mapping[TopicPartition, _Partition],
    leaders: dict[TopicPartition, int],
    fetch_bytes: int,
    wait_ms: int,
    partition_bytes: int = MAX_MESSAGE_BYTES,
) -> dict[TopicPartition, _Answer]:
    """One fetch to each leader for its open partitions, sent at once (the leaders are
    looked up first when ``leaders`` is empty)."""
    client = cons._client
    if not leaders:
        leaders.update(await _leaders(cons, list(parts)))
    by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for tp, part in parts.items():
        if not _done(part):
            by_node[leaders[tp]][tp.topic].append((tp.partition, part.position, partition_bytes))
    requests = [
        client.send(
            node,
            FetchRequest(
                wait_ms, _min_bytes(wait_ms), fetch_bytes, READ_COMMITTED, list(topics.items())
            ),
            group=_OWN_CONNECTION,
        )
        for node, topics in by_node.items()
    ]
    # Every request is waited for, failed or not: none is left running behind a failure.
    responses: list[Any] = []
    for result in await asyncio.gather(*requests, return_exceptions=True):
        if isinstance(result, KafkaError):
            if transient(result):
                raise _Retry(str(result)) from result
            raise BrokerError(f"fetch failed: {result}") from result
        if isinstance(result, BaseException):
            raise result
        responses.append(result)
    return _answers(responses)


def _answers(responses: list[Any]) -> dict[TopicPartition, _Answer]:
    """Each partition's answer in Fetch responses: committed batches only, and where a
    committed read can go now; raises :class:`_Retry` for what retrying may cure."""
    answers: dict[TopicPartition, _Answer] = {}
    for response in responses:
        version = response.API_VERSION
        for topic, partitions in response.topics:
            for partition, code, highwater, *data in partitions:
                tp = TopicPartition(topic, partition)
                error = for_code(code)
                end, log_start = _stable_end(version, highwater, data), _log_start(version, data)
                if error is OffsetOutOfRangeError:
                    answers[tp] = (end, log_start, [], highwater)
                    continue
                if error is not NoError:
                    if error.retriable:
                        raise _Retry(f"{tp.topic}[{tp.partition}]: {error.__name__}")
                    raise BrokerError(f"reading {tp.topic}[{tp.partition}]: {error.__name__}")
                batches = _committed(_batches(tp, data[-1]), _aborted(version, data))
                answers[tp] = (end, log_start, batches, highwater)
    return answers


def _stable_end(version: int, highwater: int, data: list[Any]) -> int:
    """Where a committed read of the partition can go now: the last stable offset an
    answer carries (v4 and later; below the high watermark while a transaction is open),
    else the high watermark."""
    return readable_end(highwater, int(data[0]) if version >= 4 else None)


def _aborted(version: int, data: list[Any]) -> list[tuple[int, int]]:
    """The aborted transactions an answer lists, as (producer id, first offset): v4 has
    them after the last stable offset, v5 and later after the log start offset too."""
    if version < 4:
        return []
    return list((data[2] if version >= 5 else data[1]) or ())


@dataclass(frozen=True, slots=True)
class _Passed:
    """An aborted transaction's batch in an answer: the position moves past it, as past a
    control batch, and none of its records is read."""

    base_offset: int
    next_offset: int
    is_control_batch: bool = True


def _committed(batches: list[Any], aborted: list[tuple[int, int]]) -> list[Any]:
    """``batches`` with those of aborted transactions replaced by :class:`_Passed`.

    Kafka's consumers do it so (``Fetcher``, KIP-98): a producer's transactional batches
    from the first offset of one of its aborted transactions on are dropped, until its
    abort marker (a control batch). The broker lists only the aborted transactions that
    overlap the answer; a batch outside any of them is kept, transactional or not."""
    if not aborted:
        return batches
    pending = sorted(aborted, key=lambda entry: entry[1])
    aborting: set[int] = set()
    out: list[Any] = []
    for batch in batches:
        while pending and pending[0][1] <= batch.base_offset:
            aborting.add(pending.pop(0)[0])
        producer = batch.producer_id
        if producer not in aborting:
            out.append(batch)
        elif batch.is_control_batch:
            if _is_abort_marker(batch):
                aborting.discard(producer)
            out.append(batch)
        elif batch.is_transactional:
            out.append(_Passed(batch.base_offset, batch.next_offset))
        else:
            out.append(batch)
    return out


def _is_abort_marker(batch: Any) -> bool:
    """Whether a control batch ends a transaction by aborting it (its one record's key)."""
    for record in batch:
        return bool(ControlRecord.parse(record.key) == ABORT_MARKER)
    return False


def _min_bytes(wait_ms: int) -> int:
    """A read that learns where partitions end now (a wait of a millisecond or so) asks
    for no minimum: Kafka answers it at once, where it held it ``wait_ms`` for a byte at
    a partition's end (Tansu holds it the wait either way: 2.5 -> 2.0 ms a read there). A
    long read waits for data, not for an empty answer a round."""
    return 0 if wait_ms <= ENDS_WAIT_MS else 1


def _log_start(version: int, data: list[Any]) -> int:
    """The log start offset an answer carries (v5 and later), or -1."""
    return int(data[1]) if version >= 5 else -1


def _batches(tp: TopicPartition, raw: bytes | None) -> list[Any]:
    records = MemoryRecords(raw or b"")
    out = []
    while records.has_next():
        batch = records.next_batch()
        if batch is None:
            break  # a partial batch at the end of the answer: fetched again next round
        if not batch.validate_crc():
            raise BrokerError(f"{tp.topic}[{tp.partition}]: a record batch failed its CRC")
        out.append(batch)
    return out


def _take(part: _Partition, tp: TopicPartition, answer: _Answer, idle: bool) -> Fetched:
    """Apply one answer to a partition's read: its batches, and its new position."""
    stable, log_start, batches, _high = answer
    if part.end is None:
        part.end = stable
        if part.position > stable:
            log.warning(
                "%s[%d]: read from offset %d, past the end (%d): nothing to read",
                tp.topic,
                tp.partition,
                part.position,
                stable,
            )
    start, end = part.position, part.end
    if start >= end:
        return Fetched(tp, start, start, end, [])
    if not batches:
        if 0 <= start < log_start:
            # What lay before the log start is gone (retention): read on from there.
            log.warning("%s[%d]: offsets %d-%d are gone", tp.topic, tp.partition, start, log_start)
            part.position = min(log_start, end)
        elif idle:
            part.empty += 1
            if part.empty >= EMPTY_ROUNDS:
                part.position = end  # nothing left before the end: compacted away
        return Fetched(tp, start, part.position, end, [])
    part.empty = 0
    part.position = min(max(batches[-1].next_offset, start), end)
    return Fetched(tp, start, part.position, end, [b for b in batches if not b.is_control_batch])


async def end_offsets(
    cons: AIOKafkaConsumer, at: Mapping[TopicPartition, int], *, retries: int = 0
) -> dict[TopicPartition, int]:
    """The stable end of each partition of ``at`` (the high watermark, or the last stable
    offset below it while a transaction is open), from one Fetch per leader sent now
    at the offset ``at`` gives (what the caller has read), asking for one byte and
    waiting for no data: the broker answers at once, with little or nothing, dropped here.

    Raises :class:`~stream_expiry.errors.BrokerUnavailableError` for what retrying may cure
    (no leader, a connection lost), after ``retries`` more tries as :func:`read_ranges`
    makes them (the leaders looked up again), else :class:`~stream_expiry.errors.BrokerError`.
    """
    ends = await ends_and_highs(cons, at, retries=retries)
    return {tp: stable for tp, (stable, _high) in ends.items()}


async def _wait_to_retry(
    retry: _Retry, failures: int, retries: int, failed: str, level: int, said: str
) -> None:
    """After ``failures`` failed rounds in a row: past ``retries``, raise ``failed`` as the
    broker's unavailability; else say so (``said``: the retry and the wait) and wait 0.2 s
    after the first, twice as long after each next, at most ``RETRY_MAX_S``."""
    if failures > retries:
        raise BrokerUnavailableError(failed) from retry
    backoff = min(RETRY_MAX_S, RETRY_BACKOFF_S * 2 ** (failures - 1))
    log.log(level, said, retry, backoff)
    await asyncio.sleep(backoff)


async def ends_and_highs(
    cons: AIOKafkaConsumer, at: Mapping[TopicPartition, int], *, retries: int = 0
) -> dict[TopicPartition, tuple[int, int]]:
    """:func:`end_offsets`, each with the high watermark too (above the stable end while a
    transaction is open): a committed offset past the stable end may still be within the
    partition. A consumer's ``getmany`` learns them as well, but its fetch waits out the
    consumer's ``fetch_max_wait_ms`` on a partition with nothing new (0.1 s a call), and a
    restart asked it while ``/readyz`` waited."""
    if not at:
        return {}
    parts = {tp: _Partition(offset) for tp, offset in at.items()}
    leaders = _cached_leaders(cons, parts)
    failures = 0
    while True:
        try:
            answers = await _round(cons, parts, leaders, 1, ENDS_WAIT_MS, partition_bytes=1)
            break
        except _Retry as retry:
            failures += 1
            failed = f"asking for the partitions' ends failed: {retry}"
            await _wait_to_retry(retry, failures, retries, failed, logging.DEBUG,
                                 "asking for the partitions' ends: %s; again in %.1f s")  # fmt: skip
            leaders = {}  # a leader may have moved: looked up again
    missing = parts.keys() - answers.keys()
    if missing:
        raise BrokerError(f"the broker gave no end for {sorted(missing)}")
    return {tp: (answer[0], answer[3]) for tp, answer in answers.items()}


def _cached_leaders(
    cons: AIOKafkaConsumer, tps: Mapping[TopicPartition, Any]
) -> dict[TopicPartition, int]:
    """The leaders the consumer's metadata knows (it subscribes to these topics: no
    metadata request per call), or none, and :func:`_round` asks the cluster."""
    cluster = cons._client.cluster
    leaders = {tp: cluster.leader_for_partition(tp) for tp in tps}
    if any(leader is None or leader < 0 for leader in leaders.values()):
        return {}
    return {tp: leader for tp, leader in leaders.items() if leader is not None}


async def messages_at(
    cons: AIOKafkaConsumer, wanted: Mapping[TopicPartition, int]
) -> dict[TopicPartition, RawRecord]:
    """The message at each partition's offset, where there is one (not: a partition
    shorter than that, or a gap compaction left): to check a saved position's mark."""
    found: dict[TopicPartition, RawRecord] = {}
    ends = {tp: offset + 1 for tp, offset in wanted.items()}
    rounds = read_ranges(cons, wanted, ends=ends, fetch_bytes=1)  # the first batch: enough
    async with contextlib.aclosing(rounds):
        async for fetched in rounds:
            for part in fetched:
                for rec in part:
                    if rec.offset == wanted[part.tp]:
                        found[part.tp] = rec
    return found


async def read_to_now(
    cons: AIOKafkaConsumer,
    apply: Callable[[Mapping[TopicPartition, list[Any]]], Awaitable[None]],
) -> None:
    """Read ``cons``'s assigned partitions from its positions to the ends they have now,
    learnt from a fetch the broker answers at once (the consumer's own fetches may be
    older, and ``end_offsets`` is wrong on some brokers), handing each partition's records
    to ``apply``; the consumer goes on from there. Everything acknowledged before the call
    is read: the service's legal holds before it fires, the sink's before it sweeps."""
    starts = {tp: await cons.position(tp) for tp in cons.assignment()}
    # Two quick retries (0.6 s: a leader moving), then a broker away is the caller's
    # outage to handle, not a wait of half a minute in the loop or the firing, which then
    # stopped the service with a BrokerError.
    rounds = read_ranges(cons, starts, wait_ms=ENDS_WAIT_MS, retries=2)
    async with contextlib.aclosing(rounds):
        async for fetched in rounds:
            for part in fetched:
                tp = part.tp
                records = [_consumer_record(tp, r) for r in part]
                if records:
                    await apply({tp: records})
                if part.position > starts[tp]:
                    cons.seek(tp, part.position)


def _consumer_record(tp: TopicPartition, r: RawRecord) -> ConsumerRecord[bytes, bytes]:
    """A record of a raw fetch as the consumer gives them (the appliers read its topic and
    partition, for the dead-letter headers)."""
    return ConsumerRecord(
        tp.topic, tp.partition, r.offset, r.timestamp, r.timestamp_type,
        r.key, r.value, None, -1, -1, r.headers,
    )  # fmt: skip

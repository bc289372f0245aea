"""``expiry.stamped`` read back whole: the latest value of every record, on disk.

``replay`` and ``status`` need every record's current stamp. The topic is streamed into a
temporary RocksDB keyed by record key (the last value wins, as compaction would keep it),
so memory stays bounded whatever the topic's size; each value keeps the partition it was
on and the input partition its headers name, so a re-derived stamp can go back beside it,
the requests of the erasures a legal hold deferred that a stamp names
(``expiry-deferred-requests``), so a re-derived stamp names them too, and the expiry a
stamp says was due on arrival (``expiry-due-at-ingest``), which a re-derived stamp that
keeps that expiry says too.
:func:`read_latest` is the streaming underneath, with the caller saying what to keep of
each message (``replay`` keeps a verdict, not the stamp).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from aiokafka import TopicPartition

from stream_expiry import codec
from stream_expiry.fetch import read_ranges
from stream_expiry.kafka import consumer, partitions_of

if TYPE_CHECKING:
    from collections.abc import Collection

    from stream_expiry.kafka_settings import Brokers
    from stream_expiry.state import KeyValue, RocksKV

__all__ = ["Current", "Fold", "Latest", "Progress", "read_current", "read_latest"]

_SOURCE = struct.Struct(">iH")  # kafka partition, length of the source topic name
# The whole topic is read: small fetches keep the responses (and the records decoded from
# them) from dominating replay's memory. Measured with ``bench.e2e_replay --records
# 1000000``: aiokafka's default fetch (50 MiB) peaked at 144 MiB, 4 MiB at 125 MiB, at the
# same rate.
READ_BYTES = 4 * 1024 * 1024


class Progress(Protocol):
    """A progress display: told the total, then how many are done."""

    total: int

    def __call__(self, done: int, final: bool = False) -> None: ...


class Latest(NamedTuple):
    """A record's latest message on ``expiry.stamped``, as :class:`Current` keeps it."""

    partition: int  # of expiry.stamped
    source: tuple[str, int] | None  # the input partition its headers name
    value: bytes | None  # None: a null
    # Its ``expiry-deferred-requests`` (codec.H_DEFERRED_REQUESTS), as written; None when
    # it has none, as nearly every stamp.
    deferred: bytes | None
    # The expiry its ``expiry-due-at-ingest`` (codec.H_DUE_AT_INGEST) says was due when
    # its event arrived; None when it says none, as nearly every stamp.
    due_at_ingest: int | None


# After the head of a kept value: a null; a stamp with none of its headers kept; or the
# flags of what is kept of them, then each that is there, in this order: its deferred
# requests (_DEFERRED: their length, then the header's bytes), its due-at-ingest expiry
# (_DUE: 8 bytes); then the value. So a stamp replay publishes in its place says them too
# (a restore reads a record's latest stamp alone). The common path is a byte.
_NULL, _STAMP = b"\x00", b"\x01"
_DEFERRED, _DUE = 0x02, 0x04
_LENGTH = struct.Struct(">I")
_DUE_AT = struct.Struct(">q")


class Current:
    """The latest value of every key on ``expiry.stamped``, with where it came from."""

    def __init__(self, kv: RocksKV) -> None:
        self.kv = kv

    @staticmethod
    def pack(partition: int, headers: list[tuple[str, bytes]], value: bytes | None) -> bytes:
        source = codec.source_of(headers)
        topic, src_p = source if source is not None else ("", -1)
        name = topic.encode()
        head = _SOURCE.pack(partition, len(name)) + name + struct.pack(">i", src_p)
        return head + (_NULL if value is None else _lead(headers) + value)

    @staticmethod
    def unpack(raw: bytes) -> Latest:
        partition, n = _SOURCE.unpack_from(raw)
        at = _SOURCE.size
        topic = raw[at : at + n].decode()
        (src_p,) = struct.unpack_from(">i", raw, at + n)
        source = (topic, src_p) if src_p >= 0 else None
        return Latest(partition, source, *_tail(raw[at + n + 4 :]))

    def get(self, key: bytes) -> bytes | None:
        return self.kv.multi_get([key])[0]


def _lead(headers: list[tuple[str, bytes]]) -> bytes:
    """What goes before a stamp's value: its ``expiry-deferred-requests`` and its
    ``expiry-due-at-ingest``, those it has (a readable one: a stamp whose header is not a
    number is as one without)."""
    deferred = None
    due = None
    for name, value in headers:
        if name == codec.H_DEFERRED_REQUESTS and value is not None:
            deferred = value
        elif name == codec.H_DUE_AT_INGEST:
            due = codec.due_at_ingest_of([(name, value)])
    if deferred is None and due is None:
        return _STAMP
    lead = b""
    flags = 0
    if deferred is not None:
        flags |= _DEFERRED
        lead += _LENGTH.pack(len(deferred)) + deferred
    if due is not None:
        flags |= _DUE
        lead += _DUE_AT.pack(due)
    return bytes((flags,)) + lead


def _tail(body: bytes) -> tuple[bytes | None, bytes | None, int | None]:
    """(the value, its deferred requests, its due-at-ingest expiry) of what follows a kept
    value's head."""
    kind = body[:1]
    if kind == _NULL:
        return None, None, None
    if kind == _STAMP:
        return body[1:], None, None
    flags = body[0]
    at = 1
    deferred = None
    due = None
    if flags & _DEFERRED:
        (length,) = _LENGTH.unpack_from(body, at)
        at += _LENGTH.size
        deferred = body[at : at + length]
        at += length
    if flags & _DUE:
        (due,) = _DUE_AT.unpack_from(body, at)
        at += _DUE_AT.size
    return body[at:], deferred, due


async def read_current(
    bootstrap: Brokers,
    topic: str,
    kv: RocksKV,
    progress: Progress | None = None,
    *,
    ends: dict[int, int] | None = None,
) -> tuple[Current, int]:
    """Stream ``topic`` into ``kv``: the latest value per key, as compaction would keep.
    ``ends``, if given, is filled as by :func:`read_latest`."""
    # The packed head of a value depends only on its partition and its headers (the
    # source, which repeats for every stamp of an input partition, and rarely the deferred
    # requests): packed once (nulls carry one more header, with a time: those are packed
    # each; so are stamps due on arrival, whose header is an expiry: kept, they would fill
    # the cache with heads used once).
    heads: dict[tuple[int, Any], bytes] = {}

    def pack(partition: int, _offset: int, headers: Any, key: bytes, value: bytes | None) -> bytes:
        if value is None:
            return Current.pack(partition, headers, None)
        slot = (partition, tuple(headers))
        head = heads.get(slot)
        if head is None:
            head = Current.pack(partition, headers, b"")  # all but the value
            if len(heads) < 10_000 and codec.due_at_ingest_of(headers) is None:
                heads[slot] = head
        return head + value

    read = await read_latest(bootstrap, topic, kv, pack, progress, ends=ends)
    return Current(kv), read


# (partition, offset, headers, key, value) of a message -> what to keep of it, or None.
Fold = Callable[[int, int, Any, bytes, bytes | None], bytes | None]


async def read_latest(
    bootstrap: Brokers,
    topic: str,
    kv: KeyValue,
    fold: Fold,
    progress: Progress | None = None,
    *,
    partitions: Collection[int] | None = None,
    ends: dict[int, int] | None = None,
) -> int:
    """Stream ``topic`` into ``kv``, keyed by message key, the last message of a key winning:
    ``fold(partition, offset, headers, key, value)`` says what to keep of each message
    (None: the key is dropped). Only ``partitions`` are read, if given (a key is on one partition
    only, so each share of the partitions holds whole keys). Returns how many messages
    were read. ``ends``, if given, is filled with the offset each partition was read up to
    (what a writer adds after it is not in ``kv``)."""
    read = 0
    read_to: dict[TopicPartition, int] = {}
    async with consumer(bootstrap) as cons:
        found = await partitions_of(cons, topic)
        wanted = sorted(found if partitions is None else set(found) & set(partitions))
        tps = [TopicPartition(topic, p) for p in wanted]
        bar = progress or (lambda done, final=False: None)
        reader = read_ranges(cons, dict.fromkeys(tps, 0), fetch_bytes=READ_BYTES)
        async with contextlib.aclosing(reader):
            async for fetched in reader:
                puts: dict[bytes, bytes] = {}
                drops: set[bytes] = set()
                for part in fetched:
                    read_to[part.tp] = part.end
                    partition = part.tp.partition
                    for rec in part:
                        read += 1
                        key = rec.key
                        if key is None:
                            continue
                        kept = fold(partition, rec.offset, rec.headers, key, rec.value)
                        if kept is None:
                            puts.pop(key, None)
                            drops.add(key)
                        else:
                            puts[key] = kept  # written after the drops: a later put wins
                kv.apply(puts, [k for k in drops if k not in puts])
                if progress is not None:
                    progress.total = sum(read_to.values())  # known after the first answers
                bar(read)
        bar(read, final=True)
    if ends is not None:
        ends.update({tp.partition: end for tp, end in read_to.items()})
    return read

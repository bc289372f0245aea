"""The state store of one input partition: record states, an expiry index, deletion markers.

Layout (byte keys in one ordered key-value engine, quix-streams' ``ttl_codec`` idea):

* ``s`` + record key -> the record's state (:mod:`stream_expiry.state.codec`);
* ``x`` + due time (8 bytes, big-endian) + record key -> the record's timer as the wheel
  holds it (:func:`~stream_expiry.state.codec.timer_bytes`; empty where an earlier
  version wrote it, which did not read it): the live records with a finite expiry (or an
  erasure request), in due order, so the next horizon of timers is one range scan, without
  a look-up of each state;
* ``m`` + prune_at + record key -> empty: deletion markers in the order they may go;
* ``h`` + record key -> empty: records a legal hold keeps (due, or with an erasure
  request), off the expiry index until a release frees them;
* ``l`` + record key -> a creation time and an expiry (8 bytes each): the record's life
  with that creation and expiry was due when the event that set it arrived
  (``late_event``: :meth:`PartitionStore.due_on_arrival`), so that its tombstone, decided
  again after a restart or a restore, says so. Few (late events only), read only for a
  tombstone that goes out late, and dropped with the record's deletion marker; an entry
  that is not the record's running life is stale, and ignored. The creation tells the
  lives apart: an erasure read before the firing ends a life due on arrival, and the next
  life, created after a shorter ttl came into force, may expire at the same millisecond
  (keyed by the expiry alone, its tombstone said ``late_event``). ``a`` + record key -> an
  expiry (8 bytes) is the entry of the version before this one, read as it read it (its
  expiry alone) and dropped with the marker too. An older version ignores either prefix
  it does not know (format 1 still: nothing it reads changed);
* ``r`` + record key -> an erasure's time (8 bytes) and its request's headers: the
  request a legal hold deferred (:meth:`PartitionStore.deferred_request`), which the
  release's tombstone names. Few (deferred erasures only), read only at a release (and
  at a deferral, to keep the others, and at an event of a record keeping some, whose
  stamps carry them all: the outbox's ``expiry-request*`` and
  :data:`~stream_expiry.codec.H_DEFERRED_REQUESTS`), dropped with the record's marker,
  ignored when its time is not the erasure's; ignored by older versions as ``a`` is. A
  restore of the changelog writes them from a record's latest stamp, which names them
  all. A record keeping several (:data:`~stream_expiry.codec.DeferredErasure`) has them
  all in one value, whose time is :data:`_SEVERAL` (no erasure's: a version before this
  one finds none there, as for an erasure it did not keep, and its tombstone names
  none), then each as a kind byte and the length of that erasure's own value;
* ``e`` + record key -> an erasure's time and where its request was read (its input
  offset and Kafka timestamp, 8 bytes each, :data:`~stream_expiry.model.ReadAt`): of the
  deletion marker that erasure left (:meth:`PartitionStore.erasure_read_at`), or of the
  erasure a legal hold keeps in the record's state for the release (written at the
  deferral; the release's tombstone and null say it), so that an event read again from
  before the request (a restart resumes at the committed offset, which a parked create
  keeps back) is taken for a repeat. Few (erasures only), read only for an event of a
  record whose state is an erasure's marker or a held erasure, and at a release, dropped
  with the marker; an
  entry whose time is not the marker's erasure's is stale (an older version, rolled back
  to, erased the record again or pruned its marker without it), and ignored. Ignored by
  older versions as ``a`` is: the marker's own value is unchanged, so the format stays 1;
* ``~`` + name -> an integer: counters and changelog positions, written in the same batch
  as the states they describe; ``~format``, the store's format (:data:`STORE_FORMAT`).

The format says how keys and values are laid out, so that a version never misreads a store
another version wrote (a rolling upgrade, a rollback). Format 1 is the layout above with
:mod:`stream_expiry.state.codec`'s values; stores written before the format was kept have
none, and are format 1 too: each field added since (a previous life's deletion, the lives
a hold keeps) was added to the value's tail behind a marker byte, so the older values read
unchanged. A store is stamped with :data:`STORE_FORMAT` when it opens; one of a higher
format (a newer version wrote it: this one was rolled back to) is refused with
:class:`~stream_expiry.errors.NewerStoreError` before anything else of it is read, and the
service sets it aside and restores it from the changelog (an older version, reading the
newer tail, raised a ``UnicodeDecodeError`` at the first event or timer of such a record).
A change an older version would misread raises :data:`STORE_FORMAT`; a format this version
can still read (migrated or not) stays below it.

Rules kept here:

* Every write names the state it replaces (the processor knows it), so index entries are
  kept exact without a read; the batch is atomic.
* A deletion marker lives for ``grace_ms`` after the latest of its deletion time, the
  expiry the deleted life had (an erasure ends a life early: until that expiry, a create
  of it re-delivered, or re-sent by a producer, would bring it back to life, and after it
  would be tombstoned at once) and the moment it was written: long enough that no
  re-delivered input event can bring a deleted record back, and no longer: disk use follows
  live records, not history (Cassandra's ``gc_grace_seconds``).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stream_expiry.errors import NewerStoreError
from stream_expiry.model import HeldLife, Identity, ReadAt, Stamp, identity_of_key
from stream_expiry.state.codec import (
    decode_state,
    encode_fields,
    encode_state,
    timer_bytes,
    timer_of_state,
)
from stream_expiry.state.key_filter import KeyFilter

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from stream_expiry.codec import ArrivedLife, DeferredErasure, Request
    from stream_expiry.engine import Timer
    from stream_expiry.fetch import RawRecord
    from stream_expiry.state.kv import KeyValue

__all__ = [
    "DEFAULT_GRACE_MS",
    "STORE_FORMAT",
    "ErasureRead",
    "PartitionStore",
    "RestoredRow",
    "StoreCounts",
    "input_position_name",
    "mark_holds",
    "position_marks",
    "position_name",
]

DEFAULT_GRACE_MS = 7 * 24 * 3_600_000  # as long as input topics keep events, by default
STORE_FORMAT = 1  # the layout this version writes (see the module's rules)


def position_name(topic: str, partition: int) -> str:
    """The meta name of how far a store holds its own messages of a changelog partition:
    everything of its own before that offset is in the store (restore reads from there)."""
    return f"changelog/{topic}/{partition}"


def input_position_name(topic: str, partition: int) -> str:
    """The meta name of the mark of the input message before the offset this instance
    last committed for the partition (see :func:`position_marks`)."""
    return f"input/{topic}/{partition}"


def mark_holds(rec: RawRecord | None, key_crc: int, timestamp: int) -> bool:
    """Whether ``rec``, the message found where a mark points, is the marked one: same key,
    and the same timestamp unless the broker stamps the messages itself (LogAppendTime)."""
    if rec is None:
        return False
    if zlib.crc32(rec.key or b"") != key_crc:
        return False
    return rec.timestamp_type != 0 or rec.timestamp == timestamp


def position_marks(name: str, offset: int, key: bytes | None, timestamp: int) -> dict[str, int]:
    """The meta entries that say which message a store read last before its saved
    position ``name``: its offset, its key's CRC-32 and its timestamp. A topic deleted
    and made again (a cluster rebuilt) numbers its messages from 0 again; a position saved
    on the old one, once the new one has grown past it, would skip the new one's messages
    for good. The restore reads the message there and compares (:meth:`position_mark`).
    The offset is the message's own, not the position's predecessor: compaction leaves
    gaps, and a batch may end past its last message."""
    return {f"{name}#at": offset, f"{name}#key": zlib.crc32(key or b""), f"{name}#ts": timestamp}


_TIME = struct.Struct(">Q")
_INT = struct.Struct(">q")
_BIAS = 1 << 63  # signed times sort as unsigned big-endian bytes
_STATE, _DUE, _MARKER, _HELD, _META = b"s", b"x", b"m", b"h", b"~"
_ARRIVED, _ARRIVED_BEFORE, _REQUEST, _ERASURE_READ = b"l", b"a", b"r", b"e"
_LIFE = struct.Struct(">qq")  # an ``l`` entry's value: the life's creation, its expiry
_NO_CREATION = -(1 << 63)  # a life without a creation time (none is stamped so)
# An ``e`` entry's value: the erasure's time, the request's input offset and its Kafka
# timestamp (:data:`_NO_CREATION` for none).
_READ = struct.Struct(">qqq")
_PENDING_PREFIX = "pending/"
_FORMAT = _META + b"format"

# A state read back from the changelog, as :meth:`PartitionStore.write_restored` takes it:
# (record key, category, created_at, expires_at, ttl_ms, ttl_source, deleted_at, erase_at,
# stamp_offset, previous_deleted_at, held_lives, first_created_at). A tuple, not a Stamp: a
# restore writes millions.
RestoredRow = tuple[
    bytes,
    str,
    int | None,
    int | None,
    int | None,
    str | None,
    int | None,
    int | None,
    int | None,
    int | None,
    tuple[HeldLife, ...],
    int | None,
]


# Where the erasure request that left a record's deletion marker was read: the erasure's
# time (the marker's ``erase_at``, which the entry must name) and the request's
# :data:`~stream_expiry.model.ReadAt`, as :meth:`PartitionStore.write` takes it.
ErasureRead = tuple[int, ReadAt]


_NONE_LATER = 1 << 62  # a floor above every time: the index was found empty


def _prune_time(deleted: int, expires: int | None, now_ms: int, grace_ms: int) -> int:
    """When a deletion marker may go (see the module's rules)."""
    end = deleted + 1 if expires is None or expires <= deleted else expires
    return max(end, now_ms) + grace_ms


def _time_key(prefix: bytes, ms: int, key: bytes) -> bytes:
    return prefix + _TIME.pack(ms + _BIAS) + key


def _timed(state: Stamp) -> bool:
    """Whether ``state`` has an entry in the due index (live, not frozen by a hold)."""
    return state.deleted_at is None and not state.held


def _time_of(index_key: bytes) -> int:
    return int(_TIME.unpack_from(index_key, 1)[0]) - _BIAS


@dataclass
class StoreCounts:
    """What the store holds, kept exact in every write (``status`` and metrics read it)."""

    pending: dict[str, int] = field(default_factory=dict)  # live, finite expiry, by category
    never: int = 0  # live records that never expire
    markers: int = 0  # deletion markers not yet pruned
    # records a legal hold keeps past their expiry or erasure request, or with earlier
    # lives it keeps (those are in the held index too, and in the due index when pending)
    held: int = 0

    @property
    def pending_total(self) -> int:
        return sum(self.pending.values())


class PartitionStore:
    """Record states of one input partition, on any :class:`KeyValue` engine."""

    def __init__(self, kv: KeyValue, *, grace_ms: int = DEFAULT_GRACE_MS) -> None:
        """Open the store in ``kv``; a :class:`NewerStoreError` if a newer version wrote it
        (its meta included: nothing else of it is read first)."""
        self.kv = kv
        self.grace_ms = grace_ms
        self.counts = StoreCounts()
        # No live entry of the due index (of the markers' index) is earlier than this time;
        # None: not known yet. A seek from an index's start walks every entry deleted
        # since the memtable's last flush: after 300,000 firings, 130 ms of a blocked
        # loop for one gauge reading. From the floor it walks only those deleted since the
        # last seek. Lowered by every write of an earlier entry, raised by each seek.
        self._due_floor: int | None = None
        self._marker_floor: int | None = None
        # The keys a restore into this store, empty when it began, has written
        # (start_key_filter); None: any key may be here.
        self._written: KeyFilter | None = None
        formatted = self._adopt_format()
        # Whether the store may hold entries of lives due on arrival: nearly never, and a
        # tombstone that goes out late then looks up nothing (a catch-up fires thousands).
        self._arrived_any = self._holds_any(_ARRIVED)
        # Those the version before this one kept (by expiry alone): read while any may be.
        self._arrived_before = self._holds_any(_ARRIVED_BEFORE)
        self._arrived_any = self._arrived_any or self._arrived_before
        # Likewise for deferred erasures' requests (looked up at a release only).
        self._requests_any = self._holds_any(_REQUEST)
        # And for where erasures were read (looked up for an event of an erased record only).
        self._erasures_any = self._holds_any(_ERASURE_READ)
        # Kept from before this opening (was_kept): a format an earlier opening stamped, or
        # any other meta (a position, a counter: a store of a version before the format).
        self._kept = formatted
        for name, value in self._scan_meta():
            self._kept = self._kept or name != "format"
            if name.startswith(_PENDING_PREFIX):
                self.counts.pending[name[len(_PENDING_PREFIX) :]] = value
            elif name == "never":
                self.counts.never = value
            elif name == "markers":
                self.counts.markers = value
            elif name == "held":
                self.counts.held = value

    def _holds_any(self, prefix: bytes) -> bool:
        """Whether any key begins with ``prefix`` (one seek)."""
        return any(True for _ in self.kv.scan(prefix, prefix + b"\xff"))

    def _adopt_format(self) -> bool:
        """Stamp this version's format on a store of it or of an older one (format 1, or
        none: every layout before the format was kept reads as format 1); refuse one of a
        newer format. Whether a format was there already (an earlier opening's)."""
        raw = self.kv.multi_get([_FORMAT])[0]
        found = None if raw is None else int(_INT.unpack(raw)[0])
        if found == STORE_FORMAT:
            return True
        if found is not None and found > STORE_FORMAT:
            raise NewerStoreError(
                f"a newer version of stream-expiry wrote this state store (store format "
                f"{found}; this version reads formats up to {STORE_FORMAT})",
                found,
            )
        self.kv.apply({_FORMAT: _INT.pack(STORE_FORMAT)}, ())
        return found is not None

    def _scan_meta(self) -> Iterator[tuple[str, int]]:
        for key, value in self.kv.scan(_META, _META + b"\xff"):
            yield key[1:].decode(), _INT.unpack(value)[0]

    # -- reads ----------------------------------------------------------------------------

    def get_many(self, identities: Sequence[Identity]) -> list[Stamp | None]:
        """The stored states of ``identities`` (None where the store has none)."""
        raw = self.kv.multi_get([_STATE + i.key.encode() for i in identities])
        return [
            None if value is None else decode_state(identity, value)[0]
            for identity, value in zip(identities, raw, strict=True)
        ]

    def get(self, key: str) -> Stamp | None:
        value = self.kv.multi_get([_STATE + key.encode()])[0]
        return None if value is None else decode_state(identity_of_key(key), value)[0]

    def due_timers(self, since: int, before: int, *, batch: int = 1024) -> Iterator[Timer]:
        """The timers (key, due time, packed as the wheel holds them) of the live records
        with ``since <= due_at < before``, in the order of their due times, read ``batch``
        at a time (a caller that takes a few asks for a few). Each is the due index's own
        copy, or for an entry an earlier version wrote (empty) cut from the stored state
        (:func:`timer_of_state`): no state decoded, and none looked up. At 50,000
        expirations a second the look-ups of recently written states were the firing's
        largest cost (13 us a timer) once the wheel was bounded."""
        floor = self._due_floor
        low = _time_key(_DUE, since if floor is None else max(since, floor), b"")
        high = _time_key(_DUE, before, b"")
        entries: list[tuple[bytes, bytes]] = []
        for entry in self.kv.scan(low, high):
            entries.append(entry)
            if len(entries) >= batch:
                yield from self._timers_of(entries)
                entries = []
        yield from self._timers_of(entries)

    def _timers_of(self, entries: list[tuple[bytes, bytes]]) -> Iterator[Timer]:
        if all(packed for _, packed in entries):
            for index_key, packed in entries:
                yield index_key[9:].decode(), _time_of(index_key), packed
            return
        # In due order all the same: a batch with one older entry is looked up whole.
        keys = [index_key[9:] for index_key, _ in entries]
        for key, value in zip(keys, self.kv.multi_get([_STATE + k for k in keys]), strict=True):
            if value is not None and (found := timer_of_state(value)) is not None:
                yield key.decode(), found[0], found[1]

    def count_due(self, now_ms: int) -> int:
        """How many live records are due at ``now_ms`` and not yet tombstoned (held ones
        aside): a scan of the due index up to it, for a restore's start (a store kept on
        disk holds what an outage left due; an empty one, none)."""
        floor = self._due_floor
        if floor is not None and floor > now_ms:
            return 0
        low = _DUE if floor is None else _time_key(_DUE, floor, b"")
        return sum(1 for _ in self.kv.scan(low, _time_key(_DUE, now_ms + 1, b"")))

    def first_due_ms(self) -> int | None:
        """The earliest expiry of a live record not yet tombstoned (held ones aside), or
        None: one seek, without the broker, for the overdue gauge. A record stays in the
        due index until its tombstone is acked, so one fired and in flight counts."""
        floor = self._due_floor
        low = _DUE if floor is None else _time_key(_DUE, floor, b"")
        for index_key, _ in self.kv.scan(low, _DUE + b"\xff"):
            self._due_floor = _time_of(index_key)
            return self._due_floor
        self._due_floor = _NONE_LATER
        return None

    def _states(self, keys: list[bytes]) -> Iterator[Stamp]:
        for key, value in zip(keys, self.kv.multi_get([_STATE + k for k in keys]), strict=True):
            if value is not None:
                yield decode_state(identity_of_key(key.decode()), value)[0]

    def held(self, after: bytes = b"", limit: int = 1000) -> tuple[list[Stamp], bytes | None]:
        """Up to ``limit`` held records with keys after ``after``, and the cursor for the
        next call (None: the end was reached). Held records are on disk, not in memory."""
        keys: list[bytes] = []
        low = _HELD + after + (b"\x00" if after else b"")
        for index_key, _ in self.kv.scan(low, _HELD + b"\xff"):
            keys.append(index_key[1:])
            if len(keys) >= limit:
                return list(self._states(keys)), keys[-1]
        return list(self._states(keys)), None

    def due_on_arrival(self, lives: Sequence[Stamp]) -> set[str]:
        """The keys of those of ``lives`` (records' running lives) that were due when the
        event that set them arrived (written with the state, :meth:`write`'s
        ``arrived``): a record's entry counts only while it names that life, by its
        creation and expiry (an entry of the version before this one, by its expiry). One
        look-up for them all, none when the store holds no such entry."""
        if not self._arrived_any or not lives:
            return set()
        keys = [life.identity.key.encode() for life in lives]
        wanted = [_ARRIVED + k for k in keys]
        if self._arrived_before:
            wanted += [_ARRIVED_BEFORE + k for k in keys]
        raw = self.kv.multi_get(wanted)
        ours, before = raw[: len(keys)], raw[len(keys) :] or [None] * len(keys)
        found: set[str] = set()
        for life, value, old in zip(lives, ours, before, strict=True):
            named = False
            if value is not None:
                created, due = _LIFE.unpack(value)
                if created == _NO_CREATION:
                    created = None
                named = (created, due) == (life.created_at, life.expires_at)
            if not named and old is not None:
                # Beside an ``l`` entry, an ``a`` entry is newer (noting a life drops the
                # record's ``a``): the version before wrote it after a rollback, of a later
                # life than the stale ``l`` names.
                named = _INT.unpack(old)[0] == life.expires_at
            if named:
                found.add(life.identity.key)
        return found

    def erasure_read_at(self, marker: Stamp) -> ReadAt | None:
        """Where the erasure request that left ``marker`` (a deletion marker with an
        erasure's time, ``erase_at``, or the state of a record a legal hold keeps with
        that erasure) was read, as written with it (:meth:`write`'s
        ``erasures_read``); None when the store keeps none for that erasure (a ttl
        marker, an erasure an older version made or restored, an entry of another
        erasure). No look-up when the store holds no such entry."""
        if not self._erasures_any or marker.erase_at is None:
            return None
        value = self.kv.multi_get([_ERASURE_READ + marker.identity.key.encode()])[0]
        if value is None:
            return None
        erase_at, offset, produced = _READ.unpack(value)
        if erase_at != marker.erase_at:
            return None
        return offset, None if produced == _NO_CREATION else produced

    def deferred_request(self, key: str, erasure: DeferredErasure) -> Request | None:
        """The headers of the request of ``erasure``, deferred by a legal hold for
        ``key`` (written with the state, :meth:`write`'s ``requests``); None when the store
        keeps none for that erasure (an older version deferred it)."""
        return self.deferred_requests(key).get(erasure)

    def deferred_requests(self, key: str) -> dict[DeferredErasure, Request]:
        """Every erasure request the store keeps for ``key``. One kept by the version
        before this one (one per record, no kind) stands for either kind at its time."""
        if not self._requests_any:
            return {}
        value = self.kv.multi_get([_REQUEST + key.encode()])[0]
        return {} if value is None else _decode_requests(value)

    def was_kept(self) -> bool:
        """Whether the store was there before this opening (an earlier one stamped its
        format) or holds something (a position, a counter: one of a version before the
        format was kept). False for a store made anew: a new or lost state directory, one
        moved aside. Once opened, a store made anew is stamped: opened again (by a restore's
        worker process), it would say it was kept."""
        return self._kept

    def meta(self, name: str) -> int | None:
        value = self.kv.multi_get([_META + name.encode()])[0]
        return None if value is None else int(_INT.unpack(value)[0])

    def position_mark(self, name: str) -> tuple[int, int, int] | None:
        """(offset, key CRC-32, timestamp) of the message read last before the position
        ``name``, as :func:`position_marks` saved them; None for a position saved without
        them (by an earlier version)."""
        names = [_META + f"{name}#{part}".encode() for part in ("at", "key", "ts")]
        values = self.kv.multi_get(names)
        if any(v is None for v in values):
            return None
        at, key, ts = (int(_INT.unpack(v)[0]) for v in values if v is not None)
        return at, key, ts

    def items(self) -> Iterator[Stamp]:
        """Every state, markers included, in key order (for ``replay`` and tests)."""
        for key, value in self.kv.scan(_STATE, _STATE + b"\xff"):
            yield decode_state(identity_of_key(key[1:].decode()), value)[0]

    # -- writes ---------------------------------------------------------------------------

    def start_key_filter(self, expected: int) -> bool:
        """If the store holds no state, note the keys :meth:`write_restored` writes from
        now on (about ``expected`` of them), so that it looks up only those it may have
        written (:mod:`.key_filter`); any :meth:`write` ends it. Whether it started."""
        if self._holds_any(_STATE):
            return False
        self._written = KeyFilter(expected)
        return True

    def stop_key_filter(self) -> None:
        """The restore is over: every key is looked up again, and the filter freed."""
        self._written = None

    def write(
        self,
        changes: Iterable[tuple[Stamp | None, Stamp]],
        *,
        now_ms: int,
        meta: Mapping[str, int] | None = None,
        arrived: Mapping[str, ArrivedLife] | None = None,
        requests: Mapping[str, Mapping[DeferredErasure, Request]] | None = None,
        erasures_read: Mapping[str, ErasureRead] | None = None,
    ) -> None:
        """Replace each ``(stored, new)`` pair's stored state by the new one, atomically.

        ``stored`` must be the state the store holds now (None: none), which the caller
        knows from its own lookup; index entries are moved accordingly. ``arrived``: record
        key -> the life (its creation and expiry) that was due already when the event that
        set it arrived (:meth:`due_on_arrival`), kept in the same batch; ``requests``, record key -> every
        erasure a legal hold deferred that the record keeps, with its request's headers
        (:meth:`deferred_requests`: these replace the record's), likewise; ``erasures_read``,
        record key -> the erasure's time and where its request was read, for the marker it
        left (:meth:`erasure_read_at`), likewise.
        """
        self._written = None  # states written without the filter knowing their keys
        puts: dict[bytes, bytes] = {}
        deletes: list[bytes] = []
        counts = self.counts
        pending = counts.pending
        grace = self.grace_ms
        due_floor, marker_floor = self._due_floor, self._marker_floor
        for old, new in changes:
            key = new.identity.key.encode()
            if old is not None:
                # Inline, the common case of every firing and touch: a pending record
                # (live, not held, no erasure waiting) leaves its place in the due index.
                expires = old.expires_at
                if (
                    old.deleted_at is None
                    and old.erase_at is None
                    and expires is not None
                    and not old.held
                    and not old.held_lives
                ):
                    deletes.append(_DUE + _TIME.pack(expires + _BIAS) + key)
                    cat = old.identity.category
                    pending[cat] = pending.get(cat, 0) - 1
                else:
                    self._unindex(old, key, deletes, now_ms)
            prune_at = None
            deleted = new.deleted_at
            if deleted is None:
                value = encode_state(new, None)
                due = new.due_at
                if new.held or new.held_lives:  # the release scan looks at it
                    counts.held += 1
                    puts[_HELD + key] = b""
                if new.held:  # frozen: no timer
                    pass
                elif due is None:
                    counts.never += 1
                else:
                    puts[_DUE + _TIME.pack(due + _BIAS) + key] = timer_bytes(value)
                    cat = new.identity.category
                    pending[cat] = pending.get(cat, 0) + 1
                    if due_floor is not None and due < due_floor:
                        due_floor = due
            else:
                counts.markers += 1
                prune_at = _prune_time(deleted, new.expires_at, now_ms, grace)
                puts[_MARKER + _TIME.pack(prune_at + _BIAS) + key] = b""
                if marker_floor is not None and prune_at < marker_floor:
                    marker_floor = prune_at
                value = encode_state(new, prune_at)
            puts[_STATE + key] = value
        self._due_floor, self._marker_floor = due_floor, marker_floor
        for name, number in (meta or {}).items():
            puts[_META + name.encode()] = _INT.pack(number)
        if arrived:
            self._put_arrived({k.encode(): life for k, life in arrived.items()}, puts, deletes)
        if requests:
            self._put_requests({k.encode(): kept for k, kept in requests.items()}, puts)
        if erasures_read:
            self._put_erasures_read({k.encode(): r for k, r in erasures_read.items()}, puts)
        self._put_counts(puts)
        # A key both deleted and put (an index entry that did not move) must stay.
        self.kv.apply(puts, [d for d in deletes if d not in puts])

    def write_restored(
        self,
        rows: Sequence[RestoredRow],
        *,
        now_ms: int,
        meta: Mapping[str, int],
        arrived: Mapping[bytes, ArrivedLife] | None = None,
        requests: Mapping[bytes, Mapping[DeferredErasure, Request]] | None = None,
        erasures_read: Mapping[bytes, ErasureRead] | None = None,
    ) -> tuple[int, int, int]:
        """Make each row the stored state of its key, atomically with ``meta`` (and
        ``arrived``, ``requests`` and ``erasures_read``, as :meth:`write` takes them, by store key: the
        erasure requests a stamp names, its own erasure's and those of the others its
        record keeps); returns how many live states and deletion markers changed, and by
        how much the live records already due at ``now_ms`` changed (:meth:`count_due`:
        a row made live and due adds one, a live due one it replaces takes one away).

        The bulk form of :meth:`write` for a restore, which does not know what the store
        holds: one multi-get finds the stored states, a row equal to its stored state is
        skipped, and rows without one (a restore into an empty store: nearly all) are
        indexed without building a :class:`Stamp`. Keys must be distinct.
        """
        if not rows:
            if meta:
                self.set_meta(meta)
            return 0, 0, 0
        puts: dict[bytes, bytes] = {}
        deletes: list[bytes] = []
        if arrived:
            self._put_arrived(arrived, puts, deletes)
        if requests:
            self._put_requests(requests, puts)
        if erasures_read:
            self._put_erasures_read(erasures_read, puts)
        olds = self._stored([row[0] for row in rows])
        counts = self.counts
        pending = counts.pending
        grace = self.grace_ms
        due_floor, marker_floor = self._due_floor, self._marker_floor
        lives = markers = due_now = 0
        for row, raw in zip(rows, olds, strict=True):
            key, cat, created, expires, ttl, source, deleted, erase, offset, floor, older, first = (
                row
            )
            prune_at = None if deleted is None else _prune_time(deleted, expires, now_ms, grace)
            # A stamp with an erasure request is a record a legal hold keeps (only a hold
            # defers an erasure): held, as it was, until the release scan lets it go.
            held = erase is not None and deleted is None
            value = encode_fields(
                created, expires, ttl, deleted, prune_at, erase, offset, source, held, floor,
                older, first,
            )  # fmt: skip
            if raw is not None:
                if raw == value:
                    continue
                old = decode_state(identity_of_key(key.decode()), raw)[0]
                new = Stamp(
                    old.identity,
                    created,
                    expires,
                    ttl,
                    source,
                    deleted,
                    erase,
                    held,
                    offset,
                    floor,
                    older,
                    first,
                )
                if old == new:
                    continue  # a marker: only its prune time differs
                if _timed(old) and old.due_at is not None and old.due_at <= now_ms:
                    due_now -= 1
                self._unindex(old, key, deletes, now_ms)
            if prune_at is None:
                lives += 1
                due = expires if erase is None else erase
                if held or older:  # the release scan looks at it
                    counts.held += 1
                    puts[_HELD + key] = b""
                if held:  # frozen: no timer
                    pass
                elif due is None:
                    counts.never += 1
                else:
                    puts[_DUE + _TIME.pack(due + _BIAS) + key] = timer_bytes(value)
                    pending[cat] = pending.get(cat, 0) + 1
                    if due <= now_ms:
                        due_now += 1
                    if due_floor is not None and due < due_floor:
                        due_floor = due
            else:
                markers += 1
                counts.markers += 1
                puts[_MARKER + _TIME.pack(prune_at + _BIAS) + key] = b""
                if marker_floor is not None and prune_at < marker_floor:
                    marker_floor = prune_at
            puts[_STATE + key] = value
        self._due_floor, self._marker_floor = due_floor, marker_floor
        for name, number in meta.items():
            puts[_META + name.encode()] = _INT.pack(number)
        self._put_counts(puts)
        self.kv.apply(puts, [d for d in deletes if d not in puts])
        return lives, markers, due_now

    def _stored(self, keys: list[bytes]) -> list[bytes | None]:
        """The stored states of ``keys``: looked up, but for those the key filter says no
        restore wrote (:meth:`start_key_filter`)."""
        written = self._written
        if written is None:
            return self.kv.multi_get([_STATE + key for key in keys])
        found: list[bytes | None] = [None] * len(keys)
        maybe = written.seen(keys)
        if maybe:
            looked = self.kv.multi_get([_STATE + keys[i] for i in maybe])
            for i, raw in zip(maybe, looked, strict=True):
                found[i] = raw
        return found

    def _put_arrived(
        self, arrived: Mapping[bytes, ArrivedLife], puts: dict[bytes, bytes], deletes: list[bytes]
    ) -> None:
        """Note each record's life due on arrival (``l``), dropping the record's entry of the
        version before (``a``) if the store may have one: an ``a`` entry beside an ``l`` one
        is then always the newer of the two (written by the version before after a
        rollback), which :meth:`due_on_arrival` relies on."""
        self._arrived_any = True
        for key, (created, due) in arrived.items():
            puts[_ARRIVED + key] = _LIFE.pack(_NO_CREATION if created is None else created, due)
            if self._arrived_before:
                deletes.append(_ARRIVED_BEFORE + key)

    def _put_requests(
        self,
        requests: Mapping[bytes, Mapping[DeferredErasure, Request]],
        puts: dict[bytes, bytes],
    ) -> None:
        self._requests_any = True
        for key, kept in requests.items():
            puts[_REQUEST + key] = _encode_requests(kept)

    def _put_erasures_read(
        self, erasures_read: Mapping[bytes, ErasureRead], puts: dict[bytes, bytes]
    ) -> None:
        self._erasures_any = True
        for key, (erase_at, (offset, produced)) in erasures_read.items():
            puts[_ERASURE_READ + key] = _READ.pack(
                erase_at, offset, _NO_CREATION if produced is None else produced
            )

    def _unindex(self, old: Stamp, key: bytes, deletes: list[bytes], now_ms: int) -> None:
        counts = self.counts
        if old.deleted_at is None:
            due = old.due_at
            if old.held or old.held_lives:
                counts.held -= 1
                deletes.append(_HELD + key)
            if old.held:
                pass
            elif due is None:
                counts.never -= 1
            else:
                deletes.append(_time_key(_DUE, due, key))
                cat = old.identity.category
                counts.pending[cat] = counts.pending.get(cat, 0) - 1
        else:
            value = self.kv.multi_get([_STATE + key])[0]
            if value is None:
                # Pruned (:meth:`prune`) while the record's next state was decided, and
                # counted out then (the counts went below zero, a review).
                return
            counts.markers -= 1
            prune_at = decode_state(old.identity, value)[1]
            if prune_at is None:
                prune_at = _prune_time(old.deleted_at or 0, old.expires_at, now_ms, self.grace_ms)
            deletes.append(_time_key(_MARKER, prune_at, key))

    def _put_counts(self, puts: dict[bytes, bytes]) -> None:
        c = self.counts
        for cat, n in c.pending.items():
            puts[_META + (_PENDING_PREFIX + cat).encode()] = _INT.pack(n)
        puts[_META + b"never"] = _INT.pack(c.never)
        puts[_META + b"markers"] = _INT.pack(c.markers)
        puts[_META + b"held"] = _INT.pack(c.held)

    def set_meta(self, values: Mapping[str, int]) -> None:
        self.kv.apply({_META + k.encode(): _INT.pack(v) for k, v in values.items()}, ())

    def prune(self, now_ms: int, *, budget: int = 10_000) -> int:
        """Drop up to ``budget`` markers whose time has come; returns how many went."""
        high = _time_key(_MARKER, now_ms + 1, b"")
        floor = self._marker_floor
        low = _MARKER if floor is None else _time_key(_MARKER, floor, b"")
        gone: list[bytes] = []
        for index_key, _ in self.kv.scan(low, high):
            gone.append(index_key)
            if len(gone) >= budget:
                break
        # Every entry found goes below: none is left before the last one, or before the
        # scan's end when it found fewer than its budget.
        self._marker_floor = _time_of(gone[-1]) if len(gone) >= budget else now_ms + 1
        if not gone:
            return 0
        keys = [k[9:] for k in gone]
        deletes = list(gone)
        arrived: list[bytes] = []
        dropped = 0
        for key, index_key, value in zip(
            keys, gone, self.kv.multi_get([_STATE + k for k in keys]), strict=True
        ):
            if value is None:
                continue
            state, prune_at = decode_state(identity_of_key(key.decode()), value)
            if state.deleted_at is not None and prune_at == _time_of(index_key):
                deletes.append(_STATE + key)
                dropped += 1
                if self._arrived_any:  # a life due on arrival goes with the marker
                    arrived.append(_ARRIVED + key)
                    if self._arrived_before:
                        arrived.append(_ARRIVED_BEFORE + key)
                if self._requests_any:  # and so does a deferred erasure's request
                    arrived.append(_REQUEST + key)
                if self._erasures_any:  # and where its erasure was read
                    arrived.append(_ERASURE_READ + key)
        if arrived:
            found = self.kv.multi_get(arrived)
            deletes += [a for a, v in zip(arrived, found, strict=True) if v is not None]
        self.counts.markers -= dropped
        puts: dict[bytes, bytes] = {}
        self._put_counts(puts)
        self.kv.apply(puts, deletes)
        return dropped

    def close(self) -> None:
        self.kv.close()


_PART = struct.Struct(">I")


# The time of a value of several erasure requests (``r``): no erasure's, nor any time
# an event can have (``MIN_TS_MS``).
_SEVERAL = -(2**63)


def _encode_request(erase_at: int, request: Request) -> bytes:
    """An erasure's time and its request's headers (names and values, each after its
    length), as :meth:`PartitionStore.deferred_request` reads them."""
    parts = [_INT.pack(erase_at)]
    for name, value in request:
        raw = name.encode()
        parts += [_PART.pack(len(raw)), raw, _PART.pack(len(value)), value]
    return b"".join(parts)


def _encode_requests(kept: Mapping[DeferredErasure, Request]) -> bytes:
    """A record's deferred erasure requests as one value: one alone as the version
    before this one wrote it (it reads it still, after a rollback), several after
    :data:`_SEVERAL`, each as its kind and its own value's length, then that value."""
    if len(kept) == 1:
        ((erase_at, _), request), *_ = kept.items()
        return _encode_request(erase_at, request)
    parts = [_INT.pack(_SEVERAL)]
    for (erase_at, names_life), request in kept.items():
        one = _encode_request(erase_at, request)
        parts += [b"\x01" if names_life else b"\x00", _PART.pack(len(one)), one]
    return b"".join(parts)


def _decode_requests(value: bytes) -> dict[DeferredErasure, Request]:
    (erase_at,) = _INT.unpack_from(value)
    if erase_at != _SEVERAL:  # one, of either kind (none was said before several)
        request = _decode_request(value)
        return {(erase_at, True): request, (erase_at, False): request}
    kept: dict[DeferredErasure, Request] = {}
    at = _INT.size
    while at < len(value):
        names_life = value[at] == 1
        (size,) = _PART.unpack_from(value, at + 1)
        at += 1 + _PART.size
        one = value[at : at + size]
        at += size
        kept[_INT.unpack_from(one)[0], names_life] = _decode_request(one)
    return kept


def _decode_request(value: bytes) -> Request:
    headers: list[tuple[str, bytes]] = []
    at = _INT.size
    while at < len(value):
        (size,) = _PART.unpack_from(value, at)
        at += _PART.size
        name = value[at : at + size].decode()
        at += size
        (size,) = _PART.unpack_from(value, at)
        at += _PART.size
        headers.append((name, value[at : at + size]))
        at += size
    return tuple(headers)

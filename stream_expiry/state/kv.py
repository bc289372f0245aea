"""Ordered byte key-value engines under the partition store: RocksDB, and memory for tests.

Why RocksDB (through ``rocksdict``, the binding quix-streams builds on): every input event is
a random-key lookup plus an upsert, which is what an LSM tree is made for; a B-tree with text
keys (the SQLite index of the first round) slowed to a third of its speed by 1 M records. The
comparison, with its command, is in docs/BENCHMARKS.md.

The interface is the least the store needs: multi-get, an atomic batch of puts and deletes,
and an ordered scan of a key range. The memory engine keeps the same semantics so that one
test suite runs over both.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from stream_expiry.errors import CorruptStoreError, StoreError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    from rocksdict import Options, Rdict

__all__ = [
    "ASIDE",
    "CORRUPT",
    "NEWER",
    "KeyValue",
    "MemoryKV",
    "RocksKV",
    "StoreSizes",
    "move_aside",
    "partition_stores",
    "scratch_directory",
    "store_sizes",
]

log = logging.getLogger(__name__)

# What a store moved aside is renamed to, after its own name and a dot: ``<dir>.<label>-<UTC
# time>``; the service never reads them again, and names those still there at each start.
CORRUPT = "corrupt"  # RocksDB found it damaged
NEWER = "newer"  # a newer version of stream-expiry wrote it (a rollback)
# each label's store, said in one and in more
ASIDE = {
    CORRUPT: ("damaged state store", "damaged state stores"),
    NEWER: ("state store of a newer version", "state stores of a newer version"),
}


def _store_error(what: str, path: str, exc: Exception) -> StoreError:
    """rocksdict raises plain ``Exception`` whose text starts with RocksDB's status code:
    a damaged store is told apart (:func:`_damaged`), for the service moves that store
    aside and restores it."""
    message = f"{what} {path}: {exc}"
    if _damaged(str(exc), path):
        return CorruptStoreError(message, path)
    return StoreError(message + _what_to_do(str(exc), path))


# RocksDB's words for a file system the store cannot write to, and for a full one.
_UNWRITABLE = ("Permission denied", "Operation not permitted", "Read-only file system")
_FULL = "No space left on device"
# RocksDB's words for a flush refused because the database is closing
_SHUTDOWN = "Shutdown in progress"


def _what_to_do(text: str, path: str) -> str:
    """What an operator does about a store that cannot be written, said after RocksDB's
    error: a full disk and a directory the service may not write stopped it with RocksDB's
    words alone (an incident drill). Nothing is lost either way: the group's offsets are
    committed only after the store has written what they cover."""
    if _FULL in text:
        return (
            "; free space on the file system of the state directory (or give it a larger "
            "volume) and start the service again: nothing is lost, and what was not "
            "written is read again"
        )
    if any(words in text for words in _UNWRITABLE):
        return (
            f"; make {path} writable by the service's user (uid {os.getuid()}): its owner "
            "and mode, a read-only mount, the immutable flag (lsattr); then start the "
            "service again: nothing is lost, and what was not written is read again"
        )
    return ""


def _damaged(text: str, path: str) -> bool:
    """Whether RocksDB's error ``text`` says the store at ``path`` is damaged: its status
    ``Corruption``, or a file of the store's own that its records name and that is not
    there (a MANIFEST deleted, a CURRENT naming one that is not there), which RocksDB calls
    an IO error. Either way the store cannot be used again, and the changelog restores it;
    the missing file stopped the service (exit 4, "IO error: No such file or directory
    ... MANIFEST-000005", in an incident drill) until a person deleted the store."""
    if text.startswith("Corruption"):
        return True
    missing = text.startswith("IO error: No such file or directory")
    return missing and os.path.join(path, "") in text


def partition_stores(state_dir: str) -> Iterator[tuple[str, int, str]]:
    """The partition stores in ``state_dir`` (RocksDB databases named ``<topic>-<n>``;
    not those moved aside, nor a directory that is not a database, which opened would be
    made one), by name: topic, partition and path."""
    for entry in sorted(os.scandir(state_dir), key=lambda e: e.name):
        topic, _, number = entry.name.rpartition("-")
        if not (topic and number.isdigit() and entry.is_dir()):
            continue  # a store moved aside, or not a store at all
        if not os.path.exists(os.path.join(entry.path, "CURRENT")):
            continue  # not a RocksDB database: opened, it would be made one
        yield topic, int(number), entry.path


def move_aside(path: str, label: str, why: str) -> str:
    """Rename a store's directory to ``<path>.<label>-<UTC time>`` (``label``: one of
    :data:`ASIDE`); its new name. The store is a cache of the changelog: one the service
    cannot use is restored afresh, the old one kept for a person to look at."""
    aside = f"{path}.{label}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    try:
        os.rename(path, aside)
    except OSError as exc:
        raise StoreError(
            f"the state store {path} {why} and cannot be moved aside ({exc}): "
            "remove it, and it is restored from the changelog"
        ) from exc
    return aside


@contextlib.contextmanager
def scratch_directory(prefix: str, within: str | None = None) -> Iterator[str]:
    """A temporary directory for a command's working store (``status``, ``replay``), removed
    after; a :class:`StoreError` saying what to do where none can be made (a container with
    a read-only root file system and nothing mounted on /tmp), not a traceback.

    ``within``: a scratch directory of the parent process to make it in (None: the
    system's). A worker process's store holds every stamp of its partitions, ``data``
    included, and a worker stopped by a kill (its parent's failure, cancellation or
    interruption) removes nothing: its parent's removal of ``within`` takes it along."""
    try:
        work = tempfile.TemporaryDirectory(prefix=prefix, dir=within)
    except OSError as exc:
        raise StoreError(
            f"no writable temporary directory for a working store ({exc}): set TMPDIR to "
            "a writable directory (in a container with a read-only root file system, mount "
            "an emptyDir or a tmpfs on /tmp)"
        ) from exc
    with work as path:
        yield path


class KeyValue(Protocol):
    """An ordered map of bytes to bytes with atomic batches."""

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def apply(self, puts: Mapping[bytes, bytes], deletes: Iterable[bytes]) -> None:
        """Write every put and delete, all or nothing (deletes first)."""
        ...

    def scan(self, low: bytes, high: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Items with ``low <= key < high`` in key order; do not write while iterating."""
        ...

    def size_on_disk(self) -> int: ...

    def close(self) -> None: ...


class MemoryKV:
    """A dict plus a lazily sorted key list: for unit tests and in-memory replays."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._sorted: list[bytes] | None = None

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        get = self._data.get
        return [get(k) for k in keys]

    def apply(self, puts: Mapping[bytes, bytes], deletes: Iterable[bytes]) -> None:
        for key in deletes:
            self._data.pop(key, None)
        self._data.update(puts)
        self._sorted = None

    def scan(self, low: bytes, high: bytes) -> Iterator[tuple[bytes, bytes]]:
        if self._sorted is None:
            self._sorted = sorted(self._data)
        keys = self._sorted
        for i in range(bisect.bisect_left(keys, low), bisect.bisect_left(keys, high)):
            yield keys[i], self._data[keys[i]]

    def size_on_disk(self) -> int:
        return 0

    def close(self) -> None:
        self._data.clear()
        self._sorted = None


class StoreSizes(NamedTuple):
    """What one store may take of its process's budgets (:func:`store_sizes`)."""

    write_buffer: int  # bytes of one memtable; its Bloom filter is a tenth of it, made at once
    table_files: int  # table (.sst) files the store keeps open (RocksDB's table cache)

    @property
    def max_open_files(self) -> int:
        """RocksDB's option: its table cache holds 10 fewer (the files of its own)."""
        return self.table_files + 10


def store_sizes(stores: int, *, memtables: int, write_buffer: int, table_files: int) -> StoreSizes:
    """Each store's share when ``stores`` are open in one process: ``memtables`` bytes and
    ``table_files`` open files are the process's budgets, ``write_buffer`` the most one
    store gets.

    Why a share and not a fixed size: a memtable's Bloom filter is made, and zeroed, with
    the memtable, a tenth of ``write_buffer``, empty store or not, outside the shared
    budget; at 16 MiB, 144 stores (48 partitions a topic) held 230 MiB of empty filters. The
    write buffer manager flushes a store at about ``memtables / stores`` anyway, so the
    share costs nothing at many stores, and a few stores keep their 16 MiB buffers.
    Open table files: RocksDB keeps every one open by default (1,332 descriptors at 144
    stores, above a default ``ulimit -n`` of 1,024); a share of ``table_files``, at least
    10 (RocksDB's floor), keeps a store's files open while it has few, which a store of a
    partition has: its level-0 files and a file or two a level below.
    """
    n = max(1, stores)
    buffer = min(write_buffer, max(RocksKV.MIN_WRITE_BUFFER, memtables // n))
    return StoreSizes(buffer, max(RocksKV.MIN_TABLE_FILES, table_files // n))


def _raise_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; the limit now.

    The soft limit of 1,024 that shells and many container runtimes give is kept for
    programs that use ``select()``; the service waits with epoll, and each store holds 6
    files of its own (log, lock, manifest, write-ahead log, two of its directory) before
    its table files: 144 stores need more than 1,024. Go's runtime does the same at start."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):  # macOS refuses above OPEN_MAX: keep the soft limit
            return soft
        return want
    return soft


class _Shared:
    """One block cache and one memtable budget for every store of the process: with one
    database per input partition, per-database caches would multiply memory by the
    partition count. It counts the stores open, and those announced
    (:meth:`RocksKV.opening`), to size each new one's share (:func:`store_sizes`)."""

    cache: Any = None
    write_buffers: Any = None
    open_stores = 0
    announced = 0  # stores a caller is opening together, this one included
    file_limit = -1
    warned_files = False

    @classmethod
    def get(cls) -> tuple[Any, Any]:
        if cls.cache is None:
            from rocksdict import Cache, WriteBufferManager

            cls.cache = Cache(RocksKV.BLOCK_CACHE)
            # Memtables are charged to the same cache: one limit for both (RocksDB's
            # "cost memory used by memtables to block cache").
            cls.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
                RocksKV.MEMTABLES, False, cls.cache
            )
            cls.file_limit = _raise_file_limit()
        return cls.cache, cls.write_buffers

    @classmethod
    def sizes(cls) -> StoreSizes:
        """The share of a store opening now."""
        stores = cls.open_stores + max(1, cls.announced)
        sizes = store_sizes(
            stores,
            memtables=RocksKV.MEMTABLES,
            write_buffer=RocksKV.WRITE_BUFFER,
            table_files=RocksKV.TABLE_FILES,
        )
        need = stores * (sizes.table_files + RocksKV.OWN_FILES) + RocksKV.OTHER_FILES
        if 0 <= cls.file_limit < need and not cls.warned_files:
            cls.warned_files = True
            log.warning(
                "%d state stores may hold up to %d open files, and this process may open "
                "%d (ulimit -n): raise its limit, or give it fewer partitions",
                stores,
                need,
                cls.file_limit,
            )
        return sizes

    @classmethod
    def opened(cls) -> None:
        cls.open_stores += 1
        cls.announced = max(0, cls.announced - 1)

    @classmethod
    def closed(cls) -> None:
        cls.open_stores = max(0, cls.open_stores - 1)


def _open_whole(path: str, options: Options) -> Rdict:
    """The database at ``path`` opened with ``options``; one whose write-ahead log is cut
    short or damaged is said in a WARNING, and opened as it was before the damage.

    RocksDB's default recovery (point in time) replays a log up to its first damaged
    record and drops the rest, saying so only in the store's own LOG file: a machine that
    crashed before the log's pages reached the disk (writes skip the fsync) left a store
    short of its last batches without a word. Nothing is lost (the store is as it was at
    that point, its changelog positions with it, and the restore reads the rest again),
    but an operator is told of the crash and the disk. So the log is first replayed in
    full or not at all (absolute consistency: a damaged record is an error); a
    ``Corruption`` there is the log's alone if the usual recovery opens the store, which
    it does, dropping the damaged part. A store damaged elsewhere (its table files, its
    ``MANIFEST``) fails both, and the second error is raised, as before. A whole log
    costs one opening, as before."""
    from rocksdict import DBRecoveryMode, Rdict

    options.set_wal_recovery_mode(DBRecoveryMode.absolute_consistency())
    try:
        return Rdict(path, options)
    except Exception as exc:  # rocksdict raises plain Exception, RocksDB's status first
        if not str(exc).startswith("Corruption"):
            raise
        damage = str(exc)
    options.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    db = Rdict(path, options)
    log.warning(
        "the state store %s: its write-ahead log is cut short or damaged (%s), as a "
        "machine crash before the log reached the disk leaves it: opened as it was before "
        "the damage, what the log held after it dropped; the changelog has it, and the "
        "store's restore reads it again",
        path,
        damage,
    )
    return db


class RocksKV:
    """One RocksDB database in a directory of its own (one per input partition).

    Writes go through the write-ahead log without an fsync per batch (``sync=False``): a
    machine crash can lose the last batches, which the changelog restores; a process crash
    loses nothing. Memory and open files are bounded for the whole process (:class:`_Shared`,
    :func:`store_sizes`): each store takes a share of them, whatever the count. Filters are
    partitioned and their top level pinned: with whole-file bloom filters in a small cache,
    every lookup of a key never seen re-read a filter (2-3x slower lookups, measured by
    ``bench.bench_state_store``).
    """

    WRITE_BUFFER = 16 * 1024 * 1024  # the most one store's memtable gets
    MIN_WRITE_BUFFER = 256 * 1024  # the least (a flush writes a file of that much)
    BLOCK_CACHE = 64 * 1024 * 1024
    MEMTABLES = 48 * 1024 * 1024
    TABLE_FILES = 500  # table files the stores of the process keep open together (32 GB of them)
    MIN_TABLE_FILES = 10  # RocksDB's floor: a max_open_files of 20 less its own 10
    OWN_FILES = 6  # what a store holds open besides its table files
    OTHER_FILES = 200  # the rest of the process: sockets, its own logs, Python
    # room a flush needs besides its table: the manifest's record, blocks rounded up
    _FLUSH_SLACK = 1024 * 1024

    @classmethod
    @contextlib.contextmanager
    def opening(cls, count: int) -> Iterator[None]:
        """Stores opened within are ``count`` opening together (an assignment's): each is
        sized for them all from the first, not for those open so far (the first of 144
        would get a whole 16 MiB buffer, and its filter, made at once, 1.6 MiB)."""
        before = _Shared.announced
        _Shared.announced = count
        try:
            yield
        finally:
            _Shared.announced = before

    @classmethod
    def share_memory(cls, parts: int) -> None:
        """Give this process ``1/parts`` of the memory budget: for worker processes that
        together do what one process would (``replay``'s). Call it before any database of
        the process opens (the budget is fixed then)."""
        if _Shared.cache is not None:
            raise RuntimeError("RocksKV.share_memory() after a database opened")
        cls.WRITE_BUFFER //= parts
        cls.BLOCK_CACHE //= parts
        cls.MEMTABLES //= parts
        cls.TABLE_FILES //= parts

    def __init__(self, path: str, *, durable: bool = True) -> None:
        """``durable=False``: writes skip the write-ahead log (a scratch database that is
        thrown away after use, like ``replay``'s, loses nothing that matters on a crash)."""
        from rocksdict import (
            BlockBasedIndexType,
            BlockBasedOptions,
            DBCompressionType,
            Options,
            WriteBatch,
            WriteOptions,
        )

        self.path = path
        cache, write_buffers = _Shared.get()
        self.sizes = sizes = _Shared.sizes()
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(sizes.write_buffer)
        options.set_max_write_buffer_number(3)
        options.set_write_buffer_manager(write_buffers)
        options.set_target_file_size_base(64 * 1024 * 1024)
        options.set_level_compaction_dynamic_level_bytes(True)
        options.set_bytes_per_sync(1024 * 1024)
        options.set_compression_type(DBCompressionType.lz4())
        options.set_max_background_jobs(2)
        options.set_max_open_files(sizes.max_open_files)
        # One shard: the table cache's capacity is split among its shards (64 by default),
        # each keeping at least one file, so 10 files a store were up to 64 (24 of 30
        # measured). Lookups come from one thread: no contention to shard against.
        options.set_table_cache_num_shard_bits(0)
        # Most lookups are of keys never seen (a create): a Bloom filter over each memtable
        # answers them without searching its skip list: 1.2-1.3 us a lookup instead of
        # 2.4-2.8 over 1 M new keys in multi-gets and write batches of 5,000; restore in
        # one process 63.8k -> 67.0-71.5k stamps/s (`bench.bench_restore --workers 1`).
        # A tenth of the write buffer, which is a share of the process's (store_sizes).
        options.set_memtable_prefix_bloom_ratio(0.1)
        options.set_memtable_whole_key_filtering(True)
        # No compaction triggered by deletions (RocksDB's deletion collector, used here
        # from round 3 to round 53): a firing deletes each record's due-index entry, and
        # those entries sit side by side in key order, so every file flushed during a
        # firing was marked for compaction at once, whatever the thresholds. At 50,000
        # expirations a second its compactions took 2.1-3.8 s of CPU in a 10 s window
        # against 0.9-1.0 s without it (the process's 25-34 us of CPU a tombstone against
        # 21), on a core the broker and the event loop need. Level compaction still
        # drops deleted data as files accumulate: bench.bench_disk's stores ended their
        # tail at 7.6 MiB without it and 7.9 with it (peak 26.0 MiB against 17.7).
        options.set_keep_log_file_num(3)
        options.set_max_log_file_size(8 * 1024 * 1024)
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)  # most lookups are for keys never seen
        table.set_block_cache(cache)
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_top_level_index_and_filter(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        if os.path.lexists(path) and not os.path.isdir(path):
            # Not a store's directory: a file left there by hand, or a link to nothing. It
            # stopped the service with "[Errno 17] File exists" (an incident drill); it is
            # moved aside as a damaged store is, and the changelog restores the store.
            raise CorruptStoreError(
                f"cannot open the state store in {path}: it is not a directory", path
            )
        try:
            os.makedirs(path, exist_ok=True)
            self._db = _open_whole(path, options)
        except Exception as exc:  # rocksdict raises plain Exception for IO errors
            raise _store_error("cannot open the state store in", path, exc) from exc
        _Shared.opened()
        self._closed = False
        self._durable = durable
        self._write_options = WriteOptions()
        self._write_options.sync = False
        # A property at run time, whatever rocksdict's stubs say.
        self._write_options.disable_wal = not durable  # type: ignore[method-assign,assignment]
        self._write_batch = WriteBatch

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            found: list[bytes | None] = self._db.get(list(keys))  # type: ignore[assignment]
        except Exception as exc:
            raise _store_error("cannot read the state store", self.path, exc) from exc
        return found

    def apply(self, puts: Mapping[bytes, bytes], deletes: Iterable[bytes]) -> None:
        # In key order: the memtable, a skip list, inserts each key from where the one
        # before it went, so keys in order skip the descent from its top that a random
        # key makes (cache misses at each level). 20,000-entry batches of random 41-byte
        # keys: 0.8-0.9 us an entry to write in order against 2.3-3.8 us as they came,
        # for 0.3-0.4 us more to sort them (round 55). Deletes first, as they were.
        batch = self._write_batch(raw_mode=True)
        for key in sorted(deletes):
            batch.delete(key)
        for key in sorted(puts):
            batch.put(key, puts[key])
        try:
            self._db.write(batch, self._write_options)
        except Exception as exc:
            raise _store_error("cannot write to the state store", self.path, exc) from exc

    def scan(self, low: bytes, high: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self._scan(self._db.iter(), low, high, self.path)

    def scan_once(self, low: bytes, high: bytes) -> Iterator[tuple[bytes, bytes]]:
        """:meth:`scan` for a pass over a whole store (``replay``): blocks are read ahead
        and NOT kept in the block cache, where they would only push out what lookups need
        and raise the process's memory to the cache's limit."""
        from rocksdict import ReadOptions

        options = ReadOptions()
        options.fill_cache(False)  # type: ignore[call-arg]  # takes the flag, stubs aside
        options.set_readahead_size(2 * 1024 * 1024)
        return self._scan(self._db.iter(options), low, high, self.path)

    @staticmethod
    def _scan(it: Any, low: bytes, high: bytes, path: str) -> Iterator[tuple[bytes, bytes]]:
        it.seek(low)
        while it.valid():
            key: bytes = it.key()
            if key >= high:
                return
            yield key, it.value()
            it.next()
        # An iterator stops at a block it cannot read as if the range ended there: a
        # damaged store's due index looked short (timers never loaded), not damaged.
        try:
            it.status()
        except Exception as exc:
            error = _store_error("cannot read the state store", path, exc)
            error.__cause__ = exc
        else:
            return
        # The error's traceback keeps this frame, and the iterator keeps the database
        # open: closed and moved aside, a damaged store still held its lock, and the
        # store opened at its path to be restored failed (an incident drill).
        del it
        raise error

    def size_on_disk(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:
                    continue  # compaction removed it meanwhile
        return total

    def compact(self) -> None:
        """Reclaim the space of deleted keys now (RocksDB does it in the background too)."""
        self._db.compact_range(None, None)

    def close(self) -> None:
        """Close once: the service's stop and its session's end both close every store,
        and a second close raised ``DbClosedError`` over the first one's error. A close
        that fails (RocksDB flushes, and may find a damaged file) is a :class:`StoreError`
        of one line; the database counts as closed all the same."""
        if self._closed:
            return
        self._closed = True
        _Shared.closed()
        skip_flush = self._flush_cannot_fit()
        try:
            if skip_flush:  # closing now: rocksdict's close syncs the log, its flush refused
                self._db.cancel_all_background(False)
            self._db.close()
        except Exception as exc:
            text = str(exc)
            if skip_flush and text.startswith(_SHUTDOWN):
                # the flush refused, as asked; what follows is the log's own sync, if any
                text = text.partition("; ")[2]
                if not text:
                    return
            raise _store_error("cannot close the state store", self.path, Exception(text)) from exc

    def _flush_cannot_fit(self) -> bool:
        """Whether the close is to skip its flush of the memtables: a durable store's
        memtables whose bytes (more than the table a flush writes: a skip list, and a
        Bloom filter that is not written) its file system has no room for.

        Why: a flush that fails leaves RocksDB's flush thread asleep for a second (a fixed
        ``SleepForMicroseconds(1000000)`` after a background flush error, no option sets
        it), and the close waits for that thread. On a full disk each store took 1.0 s to
        close (measured on a 4 MiB tmpfs: 1.00-1.04 s a store, with its write-ahead log or
        without), and a stop of dozens of partitions as many seconds, with the GIL held
        (24 stores: 24.0 s; 0.002 s without the flush).
        Nothing is lost by skipping it: the close still syncs the write-ahead log, which
        holds every write the memtables do (a durable store writes through it), and the
        next open replays it; on a full disk the flush would have failed all the same. A
        store without the log (``durable=False``) flushes, or loses its writes."""
        if not self._durable:
            return False
        try:
            held = self._db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
            fs = os.statvfs(self.path)
        except Exception:  # a directory gone, a property not known: close as before
            return False
        return fs.f_bavail * fs.f_frsize < held + self._FLUSH_SLACK

    @staticmethod
    def destroy(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

"""Which storage engine can hold a partition's expiry state at 10 M records (issue 10, item 2).

    python -m bench.bench_state_store [--records 10000000] [--batch 5000]
        [--engine sqlite-text --engine sqlite-hash --engine rocksdb] [--cap-seconds 480]
        [--dir DIR]

One workload, three engines, each in its own process (so RSS is its own):

* ``sqlite-text``: the present schema of ``stream_expiry/store.py`` (``key TEXT PRIMARY KEY``
  ``WITHOUT ROWID``, partial index on ``(topic, partition, expires_at)``, same pragmas), through
  the stdlib ``sqlite3`` synchronously: this measures the engine, not aiosqlite's thread hop.
* ``sqlite-hash``: the same columns in a rowid table keyed by a 64-bit BLAKE2b hash of the key
  (``INTEGER PRIMARY KEY``); the key text is a column, compared on every read to count
  collisions.
* ``none``: no store (only with ``--engine none``): the workload's own Python, the floor.
* ``rocksdb``: ``rocksdict`` in raw mode: ``s<key>`` -> packed state and an expiry index
  ``x<8-byte big-endian expires_at><key>`` -> ``b""``, one ``WriteBatch`` per batch (WAL on,
  ``sync=False``: the same durability as SQLite's WAL with ``synchronous=NORMAL``), reads by
  multi-get.

The workload, identical for every engine (seeded): batches of ``--batch`` keys, 90 % of them
new random record keys (``org-N/bot-N/live/conversation/<32 hex>``, ~64 bytes) and 10 %
earlier keys drawn at random (touches). Each batch is one lookup of all its keys (get many),
then one write of all of them: new records inserted, touched ones get a later ``expires_at``
(their old index entry is replaced). Expiries are spread uniformly over 100 hours, so the
"next hour" is ~1 % of the records. Runs until ``--records`` records exist, or until
``--cap-seconds`` of ingest have passed (the result then says where it stopped).

Reported: the ingest rate per tenth of ``--records`` (the target: last tenth >= 0.8 x the
first), by the wall clock and per CPU second of the process (all its threads, RocksDB's
flushes and compactions too: on a shared machine the steadier number), the time of the
range scan of the next-hour slice in expiry order at the end (keys and their states), disk
size and RSS. ONE JSON object on stdout (``bench.common.envelope``),
progress on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, Protocol

from bench.common import emit_result, envelope, log, utc_now_iso

if TYPE_CHECKING:
    from collections.abc import Sequence

ENGINES = ("sqlite-text", "sqlite-hash", "rocksdb")
FLOOR = "none"  # no store at all: what the workload's own Python costs
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the workload's clock
HOUR = 3_600_000
SPREAD = 100 * HOUR  # expiries spread over 100 h: one hour is ~1 % of the records
TOUCH_SHARE = 0.1
TOPIC, PARTITION = "conversations", 0
SLICE_FROM = T0 + 50 * HOUR  # the "next hour" scanned at the end
SLICE_TO = SLICE_FROM + HOUR

# A record's state as the index holds it: created_at, expires_at, ttl_ms, ttl_source, deleted_at.
State = tuple[int, int, int, str, int | None]


def record_key(i: int) -> str:
    """The i-th record key: a function of i alone, so touches can name earlier records
    without the benchmark holding 10 M strings."""
    digest = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).hexdigest()
    return f"org-{i * 7919 % 1000}/bot-{i % 13}/live/conversation/{digest}"


class Store(Protocol):
    def get_many(self, keys: Sequence[str]) -> dict[str, State]: ...
    def put_many(self, states: Sequence[tuple[str, State, State | None]]) -> None: ...
    def scan(self, lo: int, hi: int) -> list[tuple[str, State]]: ...
    def close(self) -> None: ...


# ----------------------------------------------------------------------------------- SQLite

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA wal_autocheckpoint=10000",
    "PRAGMA cache_size=-16000",
)
_CHUNK = 500
_COLS = "created_at, expires_at, ttl_ms, ttl_source, deleted_at"


class SqliteText:
    """stream_expiry/store.py's schema and statements, synchronously."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(os.path.join(path, "index.sqlite"), isolation_level=None)
        for p in _PRAGMAS:
            self.db.execute(p)
        self.db.executescript(
            """
            CREATE TABLE records (
                key TEXT PRIMARY KEY, topic TEXT NOT NULL, partition INTEGER NOT NULL,
                created_at INTEGER, expires_at INTEGER, ttl_ms INTEGER, ttl_source TEXT,
                deleted_at INTEGER
            ) WITHOUT ROWID;
            CREATE INDEX records_due ON records (topic, partition, expires_at)
                WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
            """
        )

    def get_many(self, keys: Sequence[str]) -> dict[str, State]:
        found: dict[str, State] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT key, {_COLS} FROM records WHERE key IN ({marks})", chunk
            ):
                found[row[0]] = row[1:]
        return found

    def put_many(self, states: Sequence[tuple[str, State, State | None]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO records (key, topic, partition, created_at, expires_at, ttl_ms, "
            "ttl_source, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET topic = excluded.topic, "
            "partition = excluded.partition, created_at = excluded.created_at, "
            "expires_at = excluded.expires_at, ttl_ms = excluded.ttl_ms, "
            "ttl_source = excluded.ttl_source, deleted_at = excluded.deleted_at",
            [(k, TOPIC, PARTITION, *s) for k, s, _ in states],
        )
        self.db.execute("COMMIT")

    def scan(self, lo: int, hi: int) -> list[tuple[str, State]]:
        return [
            (row[0], row[1:])
            for row in self.db.execute(
                f"SELECT key, {_COLS} FROM records WHERE topic = ? AND partition = ? "
                "AND deleted_at IS NULL AND expires_at IS NOT NULL "
                "AND expires_at >= ? AND expires_at < ? ORDER BY expires_at",
                (TOPIC, PARTITION, lo, hi),
            )
        ]

    def close(self) -> None:
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


def key_hash(key: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True
    )


class SqliteHash:
    """A rowid table keyed by a 64-bit hash of the key: 8-byte keys in the primary B-tree."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(os.path.join(path, "index.sqlite"), isolation_level=None)
        for p in _PRAGMAS:
            self.db.execute(p)
        self.db.executescript(
            """
            CREATE TABLE records (
                id INTEGER PRIMARY KEY, key TEXT NOT NULL, topic TEXT NOT NULL,
                partition INTEGER NOT NULL, created_at INTEGER, expires_at INTEGER,
                ttl_ms INTEGER, ttl_source TEXT, deleted_at INTEGER
            );
            CREATE INDEX records_due ON records (topic, partition, expires_at)
                WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
            """
        )
        self.collisions = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, State]:
        found: dict[str, State] = {}
        wanted = {key_hash(k): k for k in keys}
        ids = list(wanted)
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT id, key, {_COLS} FROM records WHERE id IN ({marks})", chunk
            ):
                if row[1] == wanted[row[0]]:
                    found[row[1]] = row[2:]
                else:  # another key under the same 64-bit hash
                    self.collisions += 1
        return found

    def put_many(self, states: Sequence[tuple[str, State, State | None]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO records (id, key, topic, partition, created_at, expires_at, ttl_ms, "
            "ttl_source, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET key = excluded.key, topic = excluded.topic, "
            "partition = excluded.partition, created_at = excluded.created_at, "
            "expires_at = excluded.expires_at, ttl_ms = excluded.ttl_ms, "
            "ttl_source = excluded.ttl_source, deleted_at = excluded.deleted_at",
            [(key_hash(k), k, TOPIC, PARTITION, *s) for k, s, _ in states],
        )
        self.db.execute("COMMIT")

    def scan(self, lo: int, hi: int) -> list[tuple[str, State]]:
        return [
            (row[0], row[1:])
            for row in self.db.execute(
                f"SELECT key, {_COLS} FROM records WHERE topic = ? AND partition = ? "
                "AND deleted_at IS NULL AND expires_at IS NOT NULL "
                "AND expires_at >= ? AND expires_at < ? ORDER BY expires_at",
                (TOPIC, PARTITION, lo, hi),
            )
        ]

    def close(self) -> None:
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


# ---------------------------------------------------------------------------------- RocksDB

_STATE = struct.Struct(">qqqbq")
_SOURCES = ("org", "bot", "env", "cap", "default")
_BE = struct.Struct(">Q")


def rocksdb_options(
    cache_mb: int = 64,
    write_buffer_mb: int = 64,
    compression: str = "lz4",
    bloom_bits: int = 10,
    filters: str = "partitioned",
) -> Any:
    """The options measured best here (see docs/BENCHMARKS.md); raw mode: bytes in, bytes out."""
    from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, Options

    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_max_background_jobs(2)  # flush + compaction threads; the machine has 2 cores
    opts.set_write_buffer_size(write_buffer_mb * 1024 * 1024)  # memtable; 3 of them at most
    opts.set_max_write_buffer_number(3)
    opts.set_target_file_size_base(64 * 1024 * 1024)
    opts.set_level_compaction_dynamic_level_bytes(True)
    opts.set_compression_type(getattr(DBCompressionType, compression)())
    opts.set_bytes_per_sync(1024 * 1024)
    table = BlockBasedOptions()
    if bloom_bits:  # 10 bits: ~1 % false positives, a lookup of a new key rarely reads a block
        table.set_bloom_filter(bloom_bits, False)
    table.set_block_cache(Cache(cache_mb * 1024 * 1024))
    if filters == "partitioned":
        # Index and filters in the block cache (RSS bounded by the cache) but cut into 4 KiB
        # partitions under a pinned top level: a lookup loads one small partition, where a
        # whole-file filter (MiBs) evicted from a small cache is re-read on every miss.
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_top_level_index_and_filter(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    elif filters == "cached":  # whole-file filters and indexes inside the block cache
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    # "table": RocksDB's default, filters and indexes held by the open files, outside the cache
    opts.set_block_based_table_factory(table)
    return opts


def _pack(s: State) -> bytes:
    created, expires, ttl_ms, source, deleted = s
    return _STATE.pack(
        created, expires, ttl_ms, _SOURCES.index(source), -1 if deleted is None else deleted
    )


def _unpack(b: bytes) -> State:
    created, expires, ttl_ms, source, deleted = _STATE.unpack(b)
    return (created, expires, ttl_ms, _SOURCES[source], None if deleted < 0 else deleted)


class RocksStore:
    """``s<key>`` -> state, ``x<expires_at big-endian><key>`` -> b"" (the expiry index)."""

    def __init__(self, path: str, args: argparse.Namespace) -> None:
        from rocksdict import Rdict, WriteOptions

        self.path = os.path.join(path, "rocks")
        opts = rocksdb_options(
            args.cache_mb, args.write_buffer_mb, args.compression, args.bloom_bits, args.filters
        )
        self.db: Any = Rdict(self.path, opts)  # raw mode: bytes only, which the stubs miss
        self.write_opt = WriteOptions()
        self.write_opt.sync = False  # the WAL is written, not fsynced per batch

    def get_many(self, keys: Sequence[str]) -> dict[str, State]:
        values = self.db.get([b"s" + k.encode() for k in keys])
        return {k: _unpack(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def put_many(self, states: Sequence[tuple[str, State, State | None]]) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        for key, new, old in states:
            kb = key.encode()
            wb.put(b"s" + kb, _pack(new))
            if old is not None:
                if old[1] == new[1]:
                    continue
                wb.delete(b"x" + _BE.pack(old[1]) + kb)
            wb.put(b"x" + _BE.pack(new[1]) + kb, b"")
        self.db.write(wb, self.write_opt)

    def scan(self, lo: int, hi: int) -> list[tuple[str, State]]:
        from rocksdict import ReadOptions

        ro = ReadOptions()
        ro.set_iterate_upper_bound(b"x" + _BE.pack(hi))
        keys: list[bytes] = [k[9:] for k in self.db.keys(from_key=b"x" + _BE.pack(lo), read_opt=ro)]
        values: list[bytes] = self.db.get([b"s" + k for k in keys])
        return [(k.decode(), _unpack(v)) for k, v in zip(keys, values, strict=True)]

    def close(self) -> None:
        self.db.flush()
        self.db.close()


class NullStore:
    """Finds nothing, keeps nothing: the floor under every engine's rate."""

    def get_many(self, keys: Sequence[str]) -> dict[str, State]:
        return {}

    def put_many(self, states: Sequence[tuple[str, State, State | None]]) -> None:
        pass

    def scan(self, lo: int, hi: int) -> list[tuple[str, State]]:
        return []

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------- driver


def _open(engine: str, path: str, args: argparse.Namespace) -> Store:
    if engine == "sqlite-text":
        return SqliteText(path)
    if engine == "sqlite-hash":
        return SqliteHash(path)
    if engine == FLOOR:
        return NullStore()
    return RocksStore(path, args)


def _disk_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total


def _rss() -> tuple[int, int]:
    """(current, peak) resident set size in bytes, from /proc."""
    cur = peak = 0
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cur, peak


def run_one(engine: str, args: argparse.Namespace, path: str) -> dict[str, Any]:
    """Ingest up to ``--records`` records into one engine; the result of that engine."""
    rng = random.Random(args.seed)
    store = _open(engine, path, args)
    get_s = put_s = 0.0
    n, batch = args.records, args.batch
    tenth = max(n // 10, 1)
    tenths: list[dict[str, Any]] = []
    inserted = touched = 0
    start = mark = time.perf_counter()
    cpu_start = cpu_mark = time.process_time()  # every thread: RocksDB's flushes too
    mark_count = 0
    stopped_at: float | None = None
    while inserted < n:
        boundary = (inserted // tenth + 1) * tenth  # batches never straddle a tenth
        fresh = min(batch - int(batch * TOUCH_SHARE) if inserted else batch, boundary - inserted)
        fresh = min(fresh, n - inserted)
        keys = [record_key(inserted + j) for j in range(fresh)]
        olds = [
            record_key(rng.randrange(inserted)) for _ in range(batch - fresh if inserted else 0)
        ]
        fresh_set = set(keys)
        keys.extend(dict.fromkeys(k for k in olds if k not in fresh_set))
        t = time.perf_counter()
        prior = store.get_many(keys)
        get_s += time.perf_counter() - t
        now = T0 + inserted  # the workload's clock: one ms per record
        rows: list[tuple[str, State, State | None]] = []
        for k in keys:
            old = prior.get(k)
            if old is None:
                ttl = rng.randrange(HOUR, SPREAD)
                rows.append((k, (now, now + ttl, ttl, "default", None), None))
            else:  # a touch: slide the expiry later
                slid = old[1] + rng.randrange(1, HOUR)
                rows.append((k, (old[0], slid, old[2], old[3], None), old))
        t = time.perf_counter()
        store.put_many(rows)
        put_s += time.perf_counter() - t
        inserted += fresh
        touched += len(keys) - fresh
        if inserted - mark_count >= tenth or inserted >= n:
            t, cpu = time.perf_counter(), time.process_time()
            tenths.append(
                {
                    "tenth": len(tenths) + 1,
                    "records_at_end": inserted,
                    "seconds": round(t - mark, 3),
                    "records_per_s": round((inserted - mark_count) / (t - mark)),
                    "cpu_seconds": round(cpu - cpu_mark, 3),
                    "records_per_cpu_s": round((inserted - mark_count) / max(cpu - cpu_mark, 1e-9)),
                    "rss_mib": round(_rss()[0] / 2**20, 1),
                }
            )
            log(f"{engine}: {inserted:,} records, {tenths[-1]['records_per_s']:,}/s this tenth")
            mark, mark_count, cpu_mark = t, inserted, cpu
        if time.perf_counter() - start > args.cap_seconds:
            stopped_at = time.perf_counter() - start
            t = time.perf_counter()
            if inserted > mark_count:
                partial_rate = round((inserted - mark_count) / (t - mark))
            else:
                partial_rate = tenths[-1]["records_per_s"] if tenths else 0
            log(f"{engine}: capped after {stopped_at:.0f} s at {inserted:,} records")
            break
    ingest_s = time.perf_counter() - start
    ingest_cpu_s = time.process_time() - cpu_start
    t = time.perf_counter()
    slice_rows = store.scan(SLICE_FROM, SLICE_TO)
    scan_s = time.perf_counter() - t
    ordered = all(a[1][1] <= b[1][1] for a, b in itertools.pairwise(slice_rows))
    rss_before_close, peak = _rss()
    collisions = getattr(store, "collisions", None)
    store.close()
    result: dict[str, Any] = {
        "engine": engine,
        "records": inserted,
        "touches": touched,
        "completed": stopped_at is None,
        "ingest_seconds": round(ingest_s, 1),
        "records_per_s": round(inserted / ingest_s),
        "cpu_seconds": round(ingest_cpu_s, 1),
        "records_per_cpu_s": round(inserted / max(ingest_cpu_s, 1e-9)),
        "get_many_seconds": round(get_s, 1),
        "put_many_seconds": round(put_s, 1),
        "tenths": tenths,
        "last_over_first": (
            round(tenths[-1]["records_per_s"] / tenths[0]["records_per_s"], 3)
            if len(tenths) >= 2
            else None
        ),
        "scan": {
            "rows": len(slice_rows),
            "share": round(len(slice_rows) / max(inserted, 1), 4),
            "seconds": round(scan_s, 3),
            "rows_per_s": round(len(slice_rows) / scan_s) if scan_s else None,
            "in_expiry_order": ordered,
        },
        "disk_mib": round(_disk_bytes(path) / 2**20, 1),
        "rss_mib": round(rss_before_close / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
    }
    if stopped_at is not None:
        result["stopped"] = {
            "after_s": round(stopped_at, 1),
            "in_tenth": inserted // tenth + 1,
            "rate_in_that_tenth": partial_rate,
        }
    if collisions is not None:
        result["hash_collisions"] = collisions
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--records", type=int, default=10_000_000)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument(
        "--engine",
        action="append",
        choices=(*ENGINES, FLOOR),
        help=f"repeat; default: {', '.join(ENGINES)}",
    )
    p.add_argument("--cap-seconds", type=float, default=480.0, help="stop an engine's ingest")
    p.add_argument("--cache-mb", type=int, default=64, help="RocksDB block cache")
    p.add_argument("--write-buffer-mb", type=int, default=64, help="RocksDB memtable size")
    p.add_argument("--compression", choices=("lz4", "none", "zstd", "snappy"), default="lz4")
    p.add_argument("--bloom-bits", type=int, default=10, help="RocksDB bloom filter (0: none)")
    p.add_argument(
        "--filters",
        choices=("partitioned", "cached", "table"),
        default="partitioned",
        help="where RocksDB keeps bloom filters and indexes",
    )
    p.add_argument("--seed", type=int, default=10)
    p.add_argument("--dir", help="parent directory for the stores (default: a temp dir)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.records < 1 or args.batch < 1:
        p.error("--records and --batch must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    engines = args.engine or list(ENGINES)
    started = utc_now_iso()
    if args.child:  # one engine in this process: print its result alone
        path = tempfile.mkdtemp(prefix=f"store-{engines[0]}-", dir=args.dir)
        try:
            print(json.dumps(run_one(engines[0], args, path)), flush=True)
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    results = []
    for engine in engines:  # each engine in a fresh process: RSS and caches are its own
        cmd = [sys.executable, "-m", "bench.bench_state_store", "--child", "--engine", engine]
        cmd += ["--records", str(args.records), "--batch", str(args.batch)]
        cmd += ["--cap-seconds", str(args.cap_seconds), "--cache-mb", str(args.cache_mb)]
        cmd += [
            "--write-buffer-mb",
            str(args.write_buffer_mb),
            "--bloom-bits",
            str(args.bloom_bits),
        ]
        cmd += ["--compression", args.compression, "--filters", args.filters]
        cmd += ["--seed", str(args.seed)] + (["--dir", args.dir] if args.dir else [])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(out))
    emit_result(
        envelope(
            "bench_state_store",
            "stream-expiry",
            params={
                "records": args.records,
                "batch": args.batch,
                "cap_seconds": args.cap_seconds,
                "cache_mb": args.cache_mb,
                "write_buffer_mb": args.write_buffer_mb,
                "compression": args.compression,
                "bloom_bits": args.bloom_bits,
                "filters": args.filters,
                "seed": args.seed,
                "touch_share": TOUCH_SHARE,
            },
            throughput=[
                {"name": r["engine"], "ops_per_s": r["records_per_s"], "ops": r["records"]}
                for r in results
            ],
            extra={"engines": results},
            started_at=started,
        )
    )


if __name__ == "__main__":
    main()

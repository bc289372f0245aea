"""Soak of the downstream stores: R rows in and R deletions out a second, for M minutes.

    python -m bench.sink_soak [--stores sqlite,postgres] [--minutes 4] [--rate 2000]
                              [--lead 30] [--marker-grace 60s] [--prune-every 10]
                              [--sample-every 10] [--dsn postgresql://...]

Issue 11's "stores that keep up": the service's soak (``bench.soak``) found its deletion
markers pruned slower than they fell due; this checks the sinks' (``Sink.prune_once``'s
rolling pages and the stores' ``prune``) under a steady flow. An embedded Tansu broker;
a producer child (its own process, as ``bench.soak``'s) writes, for record i, its stamp on
the stamped topic at ``start + i / rate - lead``, and ``--lead`` seconds later what the
service's outbox sends when it expires: its ``ttl`` tombstone on the tombstones topic and
the null (header ``expiry-reason: ttl``) on the stamped topic. Each stamp's ``expires_at``
is that due time, so its marker settles when it is deleted. Once the first ``--lead``
seconds are over each store takes ``rate`` new rows and ``rate`` deletions a second.

Every store's sink runs in this process (``stream_expiry.sinks.framework.Sink``, as
``bench.bench_sinks``'s Kafka pass), all of them at once on the same topics, each in its
own group, so one run of M minutes measures every store. The sinks' ``marker_grace_s`` is
``--marker-grace`` (``stream-expiry sink --marker-grace``; by default 7 days, which would
keep every marker of the run) and their ``prune_interval_s`` ``--prune-every`` (the
sink's default is 60 s; ``SinkConfig.prune_interval_s``, which the command does not
expose). The safety-net sweep is off, as by default.

Every ``--sample-every`` seconds, per store: live rows, deletion markers, receipts, the
store's bytes on disk (SQLite: the database, WAL and shared-memory files; PostgreSQL:
``pg_total_relation_size`` of its tables), the bytes of its tables but the receipts'
(SQLite's ``dbstat``; receipts are append-only proof and grow by design, so they are
reported as bytes a receipt), this process's RSS (every sink's), and the sink's lag:
messages acknowledged by the broker less messages the sink read. ``t = 0`` is the first
due time; the steady state runs to ``t = duration - lead`` (the last stamp), and
``reference`` is its first sample at or after ``marker grace + prune interval`` (as
``bench.soak``: markers pile up until then), ``end`` its last.

Prints ONE JSON object (``bench.common.envelope``; per store its samples and ratios in
``extra.stores``) on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from bench.bench_sinks import dispose, make_store
from bench.common import (
    envelope,
    log,
    on_embedded_broker,
    ratio,
    reference_and_end,
    rss_bytes,
    utc_now_iso,
)
from stream_expiry.collection import tune_gc
from stream_expiry.durations import parse_duration
from stream_expiry.sinks.postgres import DEFAULT_DSN, PostgresStore
from stream_expiry.sinks.sqlite import SQLiteStore

if TYPE_CHECKING:
    from collections.abc import Mapping
    from multiprocessing.sharedctypes import Synchronized

    from stream_expiry.sinks.framework import Sink
    from stream_expiry.sinks.store import Store

PARTITIONS = 4
ORGS = 50
# How often the producer child wakes to send what fell due: at 2,000 records a second,
# 100 stamps and 200 expiry messages a wake, each wake's batch acknowledged before the next.
TICK_S = 0.05


def due_count(rate: float, elapsed_s: float, total: int) -> int:
    """How many of ``total`` records sent at ``rate`` a second from elapsed 0 are due by
    ``elapsed_s``: record i goes at ``i / rate``, so those with ``i / rate <= elapsed_s``."""
    if elapsed_s < 0:
        return 0
    return min(total, int(elapsed_s * rate) + 1)


def split_sizes(sizes: Mapping[str, int]) -> tuple[int, int]:
    """(bytes of the receipts' tables and indexes, bytes of everything else) from the
    bytes per table or index: a name with ``receipts`` in it is the receipts' (their table,
    their outbox, their indexes), whose growth is by design."""
    receipts = sum(v for k, v in sizes.items() if "receipts" in k)
    return receipts, sum(sizes.values()) - receipts


def _stamp_of(tag: str, i: int, due_ms: int, lead_ms: int) -> Any:
    from stream_expiry.model import Identity, Stamp

    ident = Identity(f"org{i % ORGS}", "bot", "live", "conversation", f"{tag}-{i}")
    return Stamp(ident, due_ms - lead_ms, due_ms, lead_ms, "org")


@dataclass(frozen=True)
class Flow:
    """What the producer child sends: record i's stamp at ``start + i / rate - lead``, its
    tombstone and null at ``start + i / rate``, on topics ``stamped`` and ``tombstones``."""

    bootstrap: str
    stamped: str
    tombstones: str
    tag: str
    rate: float
    count: int
    start_ns: int
    lead_s: float


def _producer_main(
    flow: Flow, sent_stamped: Synchronized[int], sent_tombstones: Synchronized[int]
) -> None:
    asyncio.run(_produce(flow, sent_stamped, sent_tombstones))


async def _produce(
    flow: Flow, sent_stamped: Synchronized[int], sent_tombstones: Synchronized[int]
) -> None:
    """Send ``flow``, each wake's messages acknowledged before the counters move (what the
    sinks can read)."""
    from stream_expiry import codec
    from stream_expiry.kafka import key_partition, producer
    from stream_expiry.model import encode_stamp, encode_tombstone
    from stream_expiry.sinks._publish import BatchPublisher

    bootstrap, stamped, tombstones, tag = flow.bootstrap, flow.stamped, flow.tombstones, flow.tag
    rate, count, start_ns, lead_s = flow.rate, flow.count, flow.start_ns, flow.lead_s
    lead_ms = int(lead_s * 1000)
    start_ms = start_ns // 1_000_000
    null_headers = [(codec.H_REASON, b"ttl")]
    data = {"text": "x" * 200}
    stamps_done = deaths_done = 0
    async with producer(bootstrap, linger_ms=5) as prod:
        n_stamped = len(await prod.partitions_for(stamped))
        n_tombs = len(await prod.partitions_for(tombstones))
        while deaths_done < count:
            now_s = (time.time_ns() - start_ns) / 1e9
            out = BatchPublisher(prod)
            stamps_to = due_count(rate, now_s + lead_s, count)
            for i in range(stamps_done, stamps_to):
                s = _stamp_of(tag, i, start_ms + int(i * 1000 / rate), lead_ms)
                key = s.identity.key.encode()
                out.add(stamped, key_partition(key, n_stamped), key, encode_stamp(s, data))
            deaths_to = due_count(rate, now_s, count)
            now_ms = time.time_ns() // 1_000_000
            for i in range(deaths_done, deaths_to):
                s = _stamp_of(tag, i, start_ms + int(i * 1000 / rate), lead_ms)
                key = s.identity.key.encode()
                tomb = encode_tombstone(s, reason="ttl", emitted_at=now_ms)
                out.add(tombstones, key_partition(key, n_tombs), key, tomb)
                out.add(stamped, key_partition(key, n_stamped), key, None, null_headers)
            await out.flush()
            with sent_stamped.get_lock():
                sent_stamped.value += (stamps_to - stamps_done) + (deaths_to - deaths_done)
            with sent_tombstones.get_lock():
                sent_tombstones.value += deaths_to - deaths_done
            stamps_done, deaths_done = stamps_to, deaths_to
            await asyncio.sleep(TICK_S)


@dataclass
class Probe:
    """A store's figures, read beside its sink (its own connection, never the sink's)."""

    kind: str
    store: Store
    pg: Any = None  # PostgreSQL: an asyncpg connection

    async def vacuum(self) -> None:
        """VACUUM (not FULL) each of a PostgreSQL store's tables: what autovacuum would do,
        for a server that has it off (the test server here: ``autovacuum = off``), so that
        the space of deleted rows and forgotten markers is used again. SQLite: nothing (a
        deleted row's page goes to the file's free list at once)."""
        store = self.store
        if not isinstance(store, PostgresStore):
            return
        tables = await self.pg.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'r'",
            store.schema,
        )
        for r in tables:
            await self.pg.execute(f'VACUUM "{store.schema}"."{r[0]}"')

    async def sample(self) -> dict[str, Any]:
        if isinstance(self.store, SQLiteStore):
            path = Path(self.store.path)
            return await anyio.to_thread.run_sync(self._sqlite, path, self.store.prefix)
        return await self._postgres()

    @staticmethod
    def _sqlite(path: Path, prefix: str) -> dict[str, Any]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:

            def count(table: str) -> int:
                return int(conn.execute(f"SELECT count(*) FROM {prefix}{table}").fetchone()[0])

            rows, markers, receipts = count("records"), count("deletions"), count("receipts")
            sizes = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
        finally:
            conn.close()
        files = sum(
            p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
        )
        receipt_bytes, other = split_sizes({str(k): int(v) for k, v in sizes.items()})
        return {
            "rows": rows, "markers": markers, "receipts": receipts, "disk_bytes": files,
            "tables_bytes": sum(int(v) for v in sizes.values()),
            "receipts_bytes": receipt_bytes, "other_bytes": other,
        }  # fmt: skip

    async def _postgres(self) -> dict[str, Any]:
        store = self.store
        assert isinstance(store, PostgresStore)
        schema, p = store.schema, store.prefix

        async def count(table: str) -> int:
            return int(await self.pg.fetchval(f'SELECT count(*) FROM "{schema}".{p}{table}'))

        rows, markers, receipts = (
            await count("records"),
            await count("deletions"),
            await count("receipts"),
        )
        got = await self.pg.fetch(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind = 'r'",
            schema,
        )
        sizes = {str(r[0]): int(r[1]) for r in got}
        receipt_bytes, other = split_sizes(sizes)
        return {
            "rows": rows, "markers": markers, "receipts": receipts,
            "disk_bytes": sum(sizes.values()), "tables_bytes": sum(sizes.values()),
            "receipts_bytes": receipt_bytes, "other_bytes": other,
        }  # fmt: skip


def summarise(
    samples: list[dict[str, Any]], settled_s: float, steady_end_s: float
) -> dict[str, Any]:
    """A store's reference and end samples and the end/reference ratios."""
    ref, end = reference_and_end(samples, settled_s, steady_end_s)
    out: dict[str, Any] = {
        "reference_t_s": ref["t_s"] if ref else None,
        "end_t_s": end["t_s"] if end else None,
    }
    for key in ("rows", "markers", "other_bytes", "disk_bytes", "rss_bytes"):
        out[f"{key}_end_over_reference"] = (
            ratio(end.get(key), ref.get(key)) if ref and end else None
        )
    # The lag is a count around 0 (negative: read before the producer saw its acks), not
    # a size: its worst in the steady state says whether the sink kept up.
    steady = [s for s in samples if 0 <= s["t_s"] <= steady_end_s]
    out["lag_messages_max"] = max((s["lag_messages"] for s in steady), default=None)
    if end and end["receipts"]:
        out["bytes_per_receipt"] = round(end["receipts_bytes"] / end["receipts"], 1)
    return out


async def run(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    import asyncpg

    from stream_expiry.kafka import ensure_topics
    from stream_expiry.sinks.framework import Sink, SinkConfig

    started = utc_now_iso()
    kinds = [k for k in args.stores.split(",") if k]
    grace_s = parse_duration(args.marker_grace) / 1000
    duration_s = args.minutes * 60
    count = int(args.rate * duration_s)
    tag = f"soak{uuid.uuid4().hex[:8]}"
    stamped, tombs = f"{tag}.stamped", f"{tag}.tombstones"
    await ensure_topics(bootstrap, [stamped, tombs], partitions=PARTITIONS)
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    sinks: dict[str, Sink] = {}
    probes: dict[str, Probe] = {}
    autovacuum: str | None = None
    with tempfile.TemporaryDirectory(prefix="sink-soak-") as tmp:
        for kind in kinds:
            store = make_store(kind, Path(tmp), args.dsn)
            await store.open()
            pg = await asyncpg.connect(args.dsn) if kind == "postgres" else None
            if pg is not None:
                autovacuum = str(await pg.fetchval("SHOW autovacuum"))
            probes[kind] = Probe(kind, store, pg)
            config = SinkConfig(
                bootstrap_servers=bootstrap, group_id=f"{tag}.{kind}", stamped_topic=stamped,
                tombstones_topic=tombs, receipts_topic=f"{tag}.receipts.{kind}",
                batch_size=args.batch, poll_timeout_ms=50, marker_grace_s=grace_s,
                prune_interval_s=args.prune_every,
                consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
            )  # fmt: skip
            await ensure_topics(bootstrap, [config.receipts_topic or ""], partitions=PARTITIONS)
            sinks[kind] = Sink(store, config)
        tune_gc()  # as the sink's command does
        ctx = mp.get_context("spawn")
        sent_stamped, sent_tombs = ctx.Value("q", 0), ctx.Value("q", 0)
        start_ns = time.time_ns() + int((args.lead + 5) * 1e9)
        child = ctx.Process(
            target=_producer_main,
            args=(
                Flow(bootstrap, stamped, tombs, tag, args.rate, count, start_ns, args.lead),
                sent_stamped,
                sent_tombs,
            ),
            daemon=True,
        )  # fmt: skip
        stop = anyio.Event()
        log(
            f"sink soak: {count:,} records, {args.rate:g}/s in and out for {args.minutes:g} "
            f"min, deleted {args.lead:g}s after they are written; stores {', '.join(kinds)}; "
            f"marker grace {args.marker_grace}, prune every {args.prune_every:g}s"
        )
        t0 = time.perf_counter()
        try:
            async with anyio.create_task_group() as tg:
                for sink in sinks.values():
                    tg.start_soon(sink.run, stop)
                child.start()
                tail_end_ns = start_ns + int((duration_s + args.tail) * 1e9)
                while time.time_ns() < tail_end_ns:
                    t_s = round((time.time_ns() - start_ns) / 1e9, 1)
                    produced = sent_stamped.value + sent_tombs.value
                    caught_up = t_s > duration_s
                    for kind in kinds:
                        m = sinks[kind].metrics
                        point: dict[str, Any] = {"t_s": t_s, **await probes[kind].sample()}
                        point.update(
                            rss_bytes=rss_bytes(os.getpid()),
                            lag_messages=produced - m["messages_total"],
                            written=m["written_total"],
                            deleted=m["deleted_total"],
                            pruned=m["markers_pruned_total"],
                            stale=m["stale_total"],
                        )
                        samples[kind].append(point)
                        caught_up = caught_up and point["lag_messages"] <= 0
                        log(
                            f"sink soak {kind:8s} t={t_s:5.0f}s rows {point['rows']:>8,} "
                            f"markers {point['markers']:>8,} receipts {point['receipts']:>9,} "
                            f"disk {point['disk_bytes'] / 2**20:7.1f} MiB (not receipts "
                            f"{point['other_bytes'] / 2**20:6.1f}) RSS "
                            f"{point['rss_bytes'] / 2**20:4.0f} MiB lag "
                            f"{point['lag_messages']:,}"
                        )
                    if caught_up:
                        break
                    if args.vacuum:
                        for probe in probes.values():
                            await probe.vacuum()
                    await anyio.sleep(args.sample_every)
                stop.set()
        finally:
            if child.is_alive():
                child.kill()
            child.join(5)
            for probe in probes.values():
                if probe.pg is not None:
                    await probe.pg.close()
                await dispose(probe.store)
    elapsed = time.perf_counter() - t0
    settled_s = grace_s + args.prune_every
    steady_end_s = duration_s - args.lead
    stores: dict[str, Any] = {}
    for kind in kinds:
        summary = summarise(samples[kind], settled_s, steady_end_s)
        stores[kind] = {
            **summary,
            "metrics": dict(sinks[kind].metrics),
            "samples": samples[kind],
        }
        log(
            f"sink soak {kind}: end/reference rows {summary['rows_end_over_reference']}, "
            f"markers {summary['markers_end_over_reference']}, bytes but receipts "
            f"{summary['other_bytes_end_over_reference']}, "
            f"{summary.get('bytes_per_receipt')} bytes a receipt"
        )
    return envelope(
        "sink_soak",
        "stream-expiry-sink-soak",
        params={
            "stores": kinds,
            "minutes": args.minutes,
            "rate": args.rate,
            "lead_s": args.lead,
            "marker_grace": args.marker_grace,
            "prune_every_s": args.prune_every,
            "sample_every_s": args.sample_every,
            "batch": args.batch,
            "vacuum": args.vacuum,
            "partitions": PARTITIONS,
        },
        extra={
            "settled_s": settled_s,
            "steady_end_s": steady_end_s,
            "produced": {"stamped": sent_stamped.value, "tombstones": sent_tombs.value},
            "elapsed_s": round(elapsed, 1),
            "stores": stores,
        },
        notes=[
            "Every store's sink runs in this process at once (rss_bytes is theirs together); "
            "the producer is a separate process; the broker is the embedded Tansu.",
            f"SinkConfig.prune_interval_s = {args.prune_every:g} s (the sink's default: 60 s), "
            f"marker_grace_s = {grace_s:g} s; the sweep is off.",
            "lag_messages: messages the broker acknowledged (stamps, nulls, tombstones) less "
            "those the sink read.",
            "other_bytes: the store's tables and indexes but the receipts' (append-only).",
            "PostgreSQL: the server's autovacuum setting is "
            f"{autovacuum or 'not read'}; "
            + (
                f"the benchmark ran VACUUM on the store's tables every {args.sample_every:g} s."
                if args.vacuum
                else "no VACUUM was run by the benchmark."
            ),
        ],
        started_at=started,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--stores", default="sqlite,postgres")
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--rate", type=float, default=2000.0, help="records a second")
    p.add_argument("--lead", type=float, default=30.0, help="seconds from stamp to deletion")
    p.add_argument("--marker-grace", default="60s", help="the sinks' marker grace")
    p.add_argument("--prune-every", type=float, default=10.0, help="the sinks' prune interval")
    p.add_argument("--sample-every", type=float, default=10.0)
    p.add_argument("--tail", type=float, default=20.0, help="seconds sampled after the last")
    p.add_argument("--batch", type=int, default=5000, help="the sinks' batch size")
    p.add_argument("--dsn", default=DEFAULT_DSN)
    p.add_argument(
        "--vacuum",
        action="store_true",
        help="VACUUM the PostgreSQL store's tables after each sample (a server without "
        "autovacuum: its deleted rows' space is otherwise never used again)",
    )
    args = p.parse_args(argv)
    if min(args.rate, args.minutes, args.lead, args.sample_every, args.prune_every) <= 0:
        p.error("--rate, --minutes, --lead, --sample-every and --prune-every must be positive")
    return args


def main(argv: list[str] | None = None) -> int:

    args = parse_args(argv)
    return on_embedded_broker("sink soak", lambda servers: anyio.run(run, args, servers))


if __name__ == "__main__":
    sys.exit(main())

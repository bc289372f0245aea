"""Deletes per second of the downstream stores, by batch size, and through Kafka.

    python -m bench.bench_sinks [--stores sqlite,sqlite-normal,postgres] [--batches 1,10,100,1000]
                                [--scale 1.0] [--kafka | --no-kafka] [--dsn postgresql://...]

Prints one JSON object on stdout (the envelope of bench/common.py), progress on stderr.

``store`` passes time :meth:`Store.apply` directly: N rows are written first (untimed), then
deleted by their tombstones, ``batch`` tombstones per transaction. Each transaction loads the
batch's rows and markers, deletes, writes the markers and the receipts, and commits, so a
rate at batch 1 is the cost of one durable commit (SQLite ``synchronous=FULL`` fsyncs the
WAL per commit; PostgreSQL's ``synchronous_commit`` is on). ``sqlite-normal`` is the same
store with ``synchronous=NORMAL``: safe against a process crash, not against a power cut.

``kafka`` passes (on by default) run the whole sink against an embedded Tansu broker: N
stamps then N tombstones are produced up front, and the time is from the sink's start
(after its group join) to the last row deleted with every receipt published.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import emit_result, envelope, log, throughput_entry, utc_now_iso
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.sinks._messages import Change, decode_stamped, decode_tombstone
from stream_expiry.sinks.postgres import DEFAULT_DSN, PostgresStore
from stream_expiry.sinks.sqlite import SQLiteStore

if TYPE_CHECKING:
    from stream_expiry.sinks.store import Store

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
# Tombstones per pass at each batch size: about a second or two per pass on a laptop.
BASE_COUNT = {1: 200, 10: 1_000, 100: 5_000, 1000: 10_000}


def stamps(n: int, tag: str) -> list[Stamp]:
    """n records spread over 50 orgs, as a platform's stores hold them."""
    return [
        Stamp(
            Identity(f"org{i % 50}", "bot", "live", "conversation", f"{tag}-{i}"),
            T0,
            T0 + HOUR,
            HOUR,
            "org",
        )
        for i in range(n)
    ]


def stamp_changes(ss: list[Stamp]) -> list[Change]:
    return [
        decode_stamped(s.identity.key.encode(), encode_stamp(s, {"text": "x" * 200})) for s in ss
    ]


def tombstone_changes(ss: list[Stamp]) -> list[Change]:
    return [
        decode_tombstone(None, encode_tombstone(s, reason="ttl", emitted_at=T0 + HOUR)) for s in ss
    ]


def make_store(kind: str, workdir: Path, dsn: str) -> Store:
    unique = f"b{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        return SQLiteStore(workdir / f"{unique}.db", name=kind)
    if kind == "sqlite-normal":
        return SQLiteStore(workdir / f"{unique}.db", name=kind, synchronous="NORMAL")
    if kind == "postgres":
        return PostgresStore(dsn, name=kind, schema=unique)
    raise SystemExit(f"unknown store {kind!r}: use sqlite, sqlite-normal or postgres")


async def dispose(store: Store) -> None:
    if isinstance(store, PostgresStore):
        await store.drop_schema()
    await store.close()


async def store_pass(kind: str, batch: int, n: int, workdir: Path, dsn: str) -> dict[str, Any]:
    store = make_store(kind, workdir, dsn)
    await store.open()
    try:
        ss = stamps(n, f"b{batch}")
        writes = stamp_changes(ss)
        for i in range(0, n, 1000):
            await store.apply(writes[i : i + 1000], now_ms=T0)
        kills = tombstone_changes(ss)
        start = time.perf_counter()
        for i in range(0, n, batch):
            await store.apply(kills[i : i + batch], now_ms=T0 + HOUR)
        seconds = time.perf_counter() - start
        left = await store.count()
        if left:
            raise SystemExit(f"{kind}: {left} rows left after the tombstones")
        # The same tombstones again: the idempotent path (nothing to delete, no receipt).
        start = time.perf_counter()
        for i in range(0, n, batch):
            await store.apply(kills[i : i + batch], now_ms=T0 + HOUR)
        dup_seconds = time.perf_counter() - start
    finally:
        await dispose(store)
    entry = throughput_entry(
        f"{kind}/batch={batch}", n, seconds, method="store.apply", unit="deletes/s"
    )
    entry["duplicates_per_s"] = round(n / dup_seconds, 1)
    log(f"{kind:14s} batch {batch:5d}: {entry['value']:>10} deletes/s  ({n} in {seconds:.2f} s)")
    return entry


async def kafka_pass(kind: str, n: int, workdir: Path, dsn: str, bootstrap: str) -> dict[str, Any]:
    import anyio

    from stream_expiry.kafka import ensure_topics, producer
    from stream_expiry.sinks.framework import Sink, SinkConfig

    p = f"bench{uuid.uuid4().hex[:8]}"
    stamped, tombs, receipts = f"{p}.stamped", f"{p}.tombstones", f"{p}.receipts"
    await ensure_topics(bootstrap, [stamped, tombs, receipts], partitions=4)
    ss = stamps(n, p)
    async with producer(bootstrap, linger_ms=20) as prod:
        futures = [
            await prod.send(stamped, encode_stamp(s, {"t": 1}), key=s.identity.key.encode())
            for s in ss
        ]
        futures += [
            await prod.send(
                tombs,
                encode_tombstone(s, reason="ttl", emitted_at=T0 + HOUR),
                key=s.identity.key.encode(),
            )
            for s in ss
        ]
        for f in futures:
            await f
    store = make_store(kind, workdir, dsn)
    await store.open()
    started: list[float] = []
    done = anyio.Event()
    config = SinkConfig(
        bootstrap_servers=bootstrap, group_id=f"{p}.sink", stamped_topic=stamped,
        tombstones_topic=tombs, receipts_topic=receipts, batch_size=1000, poll_timeout_ms=50,
        consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 500},
    )  # fmt: skip

    def on_batch(_report: object) -> None:
        """Runs after each batch's receipts are published and its offsets committed."""
        if not started:
            started.append(time.perf_counter())
        if sink.metrics["messages_total"] >= 2 * n:
            done.set()

    sink = Sink(store, config, on_batch=on_batch)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sink.run, stop)
            with anyio.fail_after(60):
                await done.wait()
            end = time.perf_counter()
            stop.set()
        rows_left = await store.count()
    finally:
        await dispose(store)
    seconds = end - started[0]
    entry = throughput_entry(f"{kind}/kafka", n, seconds, method="sink via Kafka", unit="deletes/s")
    entry.update(messages=2 * n, batches=sink.metrics["batches_total"], rows_left=rows_left)
    log(
        f"{kind:14s} via Kafka : {entry['value']:>10} deletes/s  ({2 * n} messages in {seconds:.2f} s)"
    )
    return entry


async def main(args: argparse.Namespace) -> dict[str, Any]:
    started_at = utc_now_iso()
    kinds = [k for k in args.stores.split(",") if k]
    batches = [int(b) for b in args.batches.split(",") if b]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as tmp:
        workdir = Path(tmp)
        for kind in kinds:
            for b in batches:
                n = max(b, int(BASE_COUNT.get(b, 10 * b) * args.scale))
                results.append(await store_pass(kind, b, n, workdir, args.dsn))
        if args.kafka:
            from stream_expiry.broker import EmbeddedBroker

            with EmbeddedBroker() as broker:
                for kind in kinds:
                    n = max(1000, int(5_000 * args.scale))
                    results.append(
                        await kafka_pass(kind, n, workdir, args.dsn, broker.bootstrap_servers)
                    )
    return envelope(
        "sinks",
        "stream-expiry-sinks",
        params={"stores": kinds, "batches": batches, "scale": args.scale, "kafka": args.kafka},
        throughput=results,
        notes=[
            "store.apply: one transaction per batch (load rows and markers, delete, write "
            "markers and receipts, commit); rows were written beforehand, untimed.",
            "duplicates_per_s: the same tombstones again, which change nothing (idempotence).",
            "sqlite: synchronous=FULL (the default, durable before the offset commit); "
            "sqlite-normal: synchronous=NORMAL.",
        ],
        started_at=started_at,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--stores", default="sqlite,sqlite-normal,postgres")
    p.add_argument("--batches", default="1,10,100,1000")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every count (default 1)")
    p.add_argument("--kafka", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dsn", default=DEFAULT_DSN)
    return p.parse_args(argv)


if __name__ == "__main__":
    emit_result(asyncio.run(main(parse_args())))

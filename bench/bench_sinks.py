"""Deletes per second of the downstream stores, by batch size, and through Kafka.

    python -m bench.bench_sinks [--stores sqlite,sqlite-normal,postgres] [--batches 1,10,100,1000]
                                [--scale 1.0] [--kafka | --no-kafka] [--dsn postgresql://...]
                                [--kafka-records N] [--kafka-batch N] [--parallel 1,2]

Prints one JSON object on stdout (the envelope of bench/common.py), progress on stderr.

``store`` passes time :meth:`Store.apply` directly: N rows are written first (untimed), then
deleted by their tombstones, ``batch`` tombstones per transaction. Each transaction loads the
batch's rows and markers, deletes, writes the markers and the receipts, and commits, so a
rate at batch 1 is the cost of one durable commit (SQLite ``synchronous=FULL`` fsyncs the
WAL per commit; PostgreSQL's ``synchronous_commit`` is on). ``sqlite-normal`` is the same
store with ``synchronous=NORMAL``: safe against a process crash, not against a power cut.

``kafka`` passes (on by default) run the whole sink against an embedded Tansu broker, in
two timed phases (see :func:`kafka_pass`): N stamps written, then N tombstones applied,
each deleting a row, with every receipt published and every offset committed (checked at
the end). ``--kafka-records 500000`` for the sustained figure of docs/BENCHMARKS.md.
``--parallel 1,2`` runs the PostgreSQL store's Kafka pass once per value of its
``parallel`` (transactions a batch is split into), one after the other in the same run;
without it, the store's default.
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
from stream_expiry.collection import tune_gc
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


def make_store(kind: str, workdir: Path, dsn: str, parallel: int | None = None) -> Store:
    unique = f"b{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        return SQLiteStore(workdir / f"{unique}.db", name=kind)
    if kind == "sqlite-normal":
        return SQLiteStore(workdir / f"{unique}.db", name=kind, synchronous="NORMAL")
    if kind == "postgres":
        if parallel is None:
            return PostgresStore(dsn, name=kind, schema=unique)
        return PostgresStore(dsn, name=kind, schema=unique, parallel=parallel)
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


async def produce_all(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Write ``messages`` as record batches on their CRC-32 partitions, as the service does."""
    from stream_expiry.kafka import key_partition, producer
    from stream_expiry.sinks._publish import BatchPublisher

    async with producer(bootstrap, linger_ms=20) as prod:
        count = len(await prod.partitions_for(topic))
        for i in range(0, len(messages), 50_000):
            out = BatchPublisher(prod)
            for key, value in messages[i : i + 50_000]:
                out.add(topic, key_partition(key, count), key, value)
            await out.flush()


async def committed_everything(bootstrap: str, group: str, topics: list[str]) -> bool:
    """Whether the group's committed offsets are at the end of every partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    cons = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await cons.start()
    try:
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(cons.partitions_for_topic(t) or [])
        ]
        cons.assign(tps)
        for tp in tps:
            await cons.seek_to_beginning(tp)
        await cons.getmany(timeout_ms=500)  # fetches the high watermarks
        for tp in tps:
            if (await cons.committed(tp) or 0) < (cons.highwater(tp) or 0):
                return False
        return True
    finally:
        await cons.stop()


def _cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) a process has used so far, from Linux's
    /proc; 0 when unknown (no pid, another OS)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    import os

    # utime and stime are fields 14 and 15 of stat(5), i.e. 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu_seconds() -> float:
    """CPU seconds used so far by every process named ``postgres`` on this machine (the
    server's backends and helpers, from /proc): the database's share of a PostgreSQL
    pass. Other users of the same server count too; the suite runs alone on it."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += _cpu_seconds(int(entry.name))
            except OSError:
                continue
    return total


async def sink_phase(
    store: Store, config: Any, expect: int, broker_pid: int | None
) -> dict[str, Any]:
    """Run one sink over a backlog of ``expect`` messages already in Kafka, until it has
    committed them all; return its metrics and the timing of its batches.

    Timed from the report of the sink's first batch (its transaction committed; its
    records are left out of the count: joining the group and the first fetch are not the
    store's speed) to the moment every message is applied and every receipt published. The backlog is produced before the sink
    starts, so the harness's producer never shares the process's CPU with the timed sink.
    """
    import os

    import anyio

    from stream_expiry.sinks.framework import BatchReport, Sink

    marks: dict[str, float] = {}
    done = anyio.Event()
    me = os.getpid()

    def on_batch(report: BatchReport) -> None:
        if "first" not in marks:
            marks["first"], marks["skip"] = time.perf_counter(), report.messages
            marks["cpu0"], marks["broker0"] = _cpu_seconds(me), _cpu_seconds(broker_pid)
            marks["pg0"] = _postgres_cpu_seconds()

    async def watch() -> None:
        """The end: every message applied and every receipt published. A batch is reported
        once its transaction commits, before its receipts go out and its offsets are
        committed, so the end is watched for (every 5 ms), not taken from a report."""
        m = sink.metrics
        # Polled: no event says "published" (a report comes before it).
        while not (  # noqa: ASYNC110
            m["messages_total"] >= expect and m["published_total"] >= m["receipts_total"]
        ):
            await anyio.sleep(0.005)
        marks["end"] = time.perf_counter()
        marks["cpu1"], marks["broker1"] = _cpu_seconds(me), _cpu_seconds(broker_pid)
        marks["pg1"] = _postgres_cpu_seconds()
        done.set()

    sink = Sink(store, config, on_batch=on_batch)
    stop = anyio.Event()
    # As the sink's command does: what is alive now, the harness's included, is frozen
    # out of the cyclic collector's walks.
    tune_gc()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sink.run, stop)
        tg.start_soon(watch)
        with anyio.fail_after(900):
            await done.wait()
        stop.set()
    counted = expect - int(marks["skip"])
    if counted <= 0:
        raise SystemExit(
            f"the sink's first batch took all {expect} records, and the first batch is not "
            "timed: give --kafka-records several times --kafka-batch"
        )
    seconds = marks["end"] - marks["first"]
    return {
        "metrics": dict(sink.metrics),
        "records": counted,
        "seconds": seconds,
        "sink_cpu_us": round(1e6 * (marks["cpu1"] - marks["cpu0"]) / max(1, counted), 1),
        "postgres_cpu_us": round(1e6 * (marks["pg1"] - marks["pg0"]) / max(1, counted), 1),
        "broker_cpu_us": round(1e6 * (marks["broker1"] - marks["broker0"]) / max(1, counted), 1)
        if broker_pid is not None
        else None,
    }


async def kafka_pass(
    kind: str,
    n: int,
    workdir: Path,
    dsn: str,
    bootstrap: str,
    batch_size: int,
    broker_pid: int | None = None,
    parallel: int | None = None,
) -> list[dict[str, Any]]:
    """The whole sink through Kafka, in two timed phases, each over a backlog.

    1. N stamps are produced (untimed), then a sink starts and writes N rows.
    2. That sink stops; N tombstones are produced (untimed), then a sink of the same group
       starts and deletes the N rows, writes N receipts, publishes them, and commits.
       Every record thus has its stamp written before its tombstone is read, so every
       deletion really deletes a row (checked: rows_deleted=1 for all N).

    Each phase is timed from the commit of its first batch to the commit of its last, so
    the rate is the sink's capacity (what it does with a backlog), not the harness's
    producer: producing while the sink runs made both share one process and its CPU.
    ``end_to_end`` is N over the sum of both phases: per record, a stamp written, a
    tombstone read, a row deleted, a receipt written and published, offsets committed.
    ``sink_cpu_us`` / ``broker_cpu_us``: CPU microseconds per record of the sink's
    process and of the broker's during the timed part (from /proc; the sink's includes
    its database thread); ``postgres_cpu_us`` likewise for the PostgreSQL server's processes.
    """
    from stream_expiry.kafka import ensure_topics
    from stream_expiry.sinks.framework import SinkConfig

    p = f"bench{uuid.uuid4().hex[:8]}"
    stamped, tombs, receipts = f"{p}.stamped", f"{p}.tombstones", f"{p}.receipts"
    await ensure_topics(bootstrap, [stamped, tombs, receipts], partitions=4)
    store = make_store(kind, workdir, dsn, parallel)
    label = kind if parallel is None else f"{kind}(parallel={parallel})"
    await store.open()
    group = f"{p}.sink"
    config = SinkConfig(
        bootstrap_servers=bootstrap, group_id=group, stamped_topic=stamped,
        tombstones_topic=tombs, receipts_topic=receipts, batch_size=batch_size,
        poll_timeout_ms=50,
        consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
    )  # fmt: skip
    try:
        await produce_all(
            bootstrap,
            stamped,
            [(s.identity.key.encode(), encode_stamp(s, {"text": "x" * 200})) for s in stamps(n, p)],
        )
        log(f"{kind:14s} via Kafka : {n} stamps produced; the sink writes them")
        writes = await sink_phase(store, config, n, broker_pid)
        await produce_all(
            bootstrap,
            tombs,
            [
                (s.identity.key.encode(), encode_tombstone(s, reason="ttl", emitted_at=T0 + HOUR))
                for s in stamps(n, p)
            ],
        )
        log(f"{kind:14s} via Kafka : {n} tombstones produced; the sink applies them")
        deletes = await sink_phase(store, config, n, broker_pid)
        rows_left = await store.count()
        unpublished = len(await store.pending_receipts(10))
    finally:
        await dispose(store)
    committed = await committed_everything(bootstrap, group, [stamped, tombs])
    if rows_left or unpublished or not committed:
        raise SystemExit(
            f"{kind}: {rows_left} rows left, {unpublished} receipts unpublished, "
            f"offsets committed to the end: {committed}"
        )
    mw, md = writes["metrics"], deletes["metrics"]
    if (mw["written_total"], mw["stale_total"], mw["receipts_total"]) != (n, 0, 0):
        raise SystemExit(f"{kind}: not every stamp wrote a row: {mw}")
    if (md["deleted_total"], md["stale_total"], md["published_total"]) != (n, 0, n):
        raise SystemExit(f"{kind}: not every tombstone deleted a row with one receipt: {md}")
    writes_s, deletes_s = writes["seconds"], deletes["seconds"]
    n_writes, n_deletes = writes["records"], deletes["records"]
    common = {
        "messages": 2 * n,
        "batches": mw["batches_total"] + md["batches_total"],
        "batch_size": batch_size,
        "deleted": md["deleted_total"],
        "receipts": md["published_total"],
        "parallel": getattr(store, "parallel", 1),
    }
    out = [
        throughput_entry(f"{label}/kafka/stamps", n_writes, writes_s, method="sink via Kafka",
                         unit="rows written/s"),
        throughput_entry(f"{label}/kafka/tombstones", n_deletes, deletes_s,
                         method="sink via Kafka", unit="deletes/s"),
        throughput_entry(f"{label}/kafka/end_to_end", n, writes_s * n / n_writes
                         + deletes_s * n / n_deletes, method="sink via Kafka", unit="deletes/s"),
    ]  # fmt: skip
    for e, phase in zip(out, (writes, deletes, None), strict=True):
        e.update(common)
        if phase is not None:
            e.update(
                sink_cpu_us=phase["sink_cpu_us"],
                broker_cpu_us=phase["broker_cpu_us"],
                postgres_cpu_us=phase["postgres_cpu_us"] if kind == "postgres" else None,
            )
    log(
        f"{label:14s} via Kafka : {out[0]['value']:>10} rows written/s, {out[1]['value']:>10} "
        f"deletes/s, {out[2]['value']:>10} end to end ({n} records, batch {batch_size}); "
        f"CPU us/record sink {writes['sink_cpu_us']} + {deletes['sink_cpu_us']}, "
        f"broker {writes['broker_cpu_us']} + {deletes['broker_cpu_us']}"
        + (
            f", postgres {writes['postgres_cpu_us']} + {deletes['postgres_cpu_us']}"
            if kind == "postgres"
            else ""
        )
    )
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    started_at = utc_now_iso()
    kinds = [k for k in args.stores.split(",") if k]
    batches = [int(b) for b in args.batches.split(",") if b]
    parallels: list[int | None] = [int(p) for p in args.parallel.split(",") if p] or [None]
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
                    n = args.kafka_records or max(1000, int(5_000 * args.scale))
                    for parallel in parallels if kind == "postgres" else [None]:
                        results.extend(
                            await kafka_pass(
                                kind,
                                n,
                                workdir,
                                args.dsn,
                                broker.bootstrap_servers,
                                args.kafka_batch,
                                getattr(getattr(broker, "_proc", None), "pid", None),
                                parallel,
                            )
                        )
    return envelope(
        "sinks",
        "stream-expiry-sinks",
        params={
            "stores": kinds,
            "batches": batches,
            "scale": args.scale,
            "kafka": args.kafka,
            "kafka_records": args.kafka_records,
            "kafka_batch": args.kafka_batch,
            "parallel": args.parallel,
        },
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
    p.add_argument(
        "--kafka-records",
        type=int,
        default=0,
        help="records of the Kafka pass (default: 5000 x scale, at least 1000)",
    )
    p.add_argument(
        "--kafka-batch",
        type=int,
        default=5000,
        help="the sink's batch size (messages per store transaction) in the Kafka pass",
    )
    p.add_argument(
        "--parallel",
        default="",
        help="PostgreSQL's Kafka pass once per value (comma-separated) of the store's "
        "parallel transactions per batch (default: the store's default)",
    )
    args = p.parse_args(argv)
    if args.kafka_batch < 1:
        p.error("--kafka-batch must be at least 1")
    if 0 < args.kafka_records <= args.kafka_batch:
        # Each phase is timed from its first batch's commit, so a backlog one batch holds
        # leaves nothing to time (it stopped on a ZeroDivisionError).
        p.error(
            f"--kafka-records {args.kafka_records} fits in one batch of --kafka-batch "
            f"{args.kafka_batch}, and the first batch is not timed: give more records than "
            "that (ten batches or more for a steady figure)"
        )
    return args


if __name__ == "__main__":
    emit_result(asyncio.run(main(parse_args())))

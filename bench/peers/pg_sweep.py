"""Peer benchmark: a PostgreSQL table swept every 100 ms.

What a user would build instead of stream-expiry: a table ``(key text primary key,
expires_at timestamptz not null)`` with an index on ``expires_at``, and a sweeper that runs
``DELETE FROM t WHERE expires_at <= now() RETURNING key, expires_at`` every 100 ms and
forwards each returned row as the tombstone.

It uses the PostgreSQL server at 127.0.0.1:5432 (trust auth, database ``test``; override with
``--dsn`` or ``BENCH_PG_DSN``), in a table with a unique name that is dropped at the end. The
table is an ordinary (logged, durable) one, as a user would have.

Fair to stream-expiry (issue 11): by default (``--forward kafka``) the sweeper forwards each
sweep's deleted rows to a Kafka topic on an embedded Tansu broker (a record batch per sweep,
acks=all, awaited before the next sweep) and the lag is measured at a consumer in its own
process (``bench.e2e_expiry``'s tombstone reader), as stream-expiry's is; the lag at the
sweeper stays in ``extra.lag.lag_at_sweeper_ms``. ``--forward none`` measures at the sweeper
only (system ``...-at-sweeper``). LISTEN/NOTIFY is not implemented.

Lag phase (``--rate R --seconds S``): ``R * S`` rows are inserted (batches of 5,000 through
``unnest``) with ``expires_at`` spread evenly, R per second, over an S-second window that
starts once the inserts are expected to be done (a calibration run sizes that lead). The
sweeper ticks every 100 ms on a fixed schedule (a sweep that overruns is followed at once by
the next); lag = the wall clock when the DELETE's rows reached the sweeper minus the row's
``expires_at``. Rows not returned within the grace window after the last due time are
counted as missing. ``--background N`` adds N rows that expire far in the future.

Memory phase (``--pending N``): ``pg_total_relation_size`` (heap + primary key + expires_at
index + TOAST) after COPYing N rows (realistic ~45-byte record keys) that expire in 30 days,
at several counts.

Run alone: ``python -m bench.peers.pg_sweep --rate 10000 --seconds 10``.
Prints one JSON object (see ``bench.common.envelope``); progress goes to stderr.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import datetime as dt
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    NS_PER_MS,
    NS_PER_S,
    RateSchedule,
    base_parser,
    emit_result,
    envelope,
    fmt_ms,
    human_count,
    log,
    memory_point,
    percentile,
    record_key,
    summarize,
    throughput_entry,
    utc_now_iso,
)

DEFAULT_DSN = "postgresql://127.0.0.1:5432/test"
INSERT_BATCH = 5000
COPY_BATCH = 100_000
CALIBRATION_ROWS = 20_000
SWEEP_PERIOD_S = 0.1
FAR_FUTURE = dt.timedelta(days=30)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _ts(ns: int) -> dt.datetime:
    """Epoch ns -> aware datetime at microsecond resolution (what timestamptz keeps)."""
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


async def _create_table(conn: Any, name: str) -> None:
    await conn.execute(
        f"CREATE TABLE {name} (key text PRIMARY KEY, expires_at timestamptz NOT NULL)"
    )
    await conn.execute(f"CREATE INDEX {name}_expires_at ON {name} (expires_at)")


async def _insert(conn: Any, table: str, keys: list[str], expires: list[dt.datetime]) -> None:
    await conn.execute(
        f"INSERT INTO {table} (key, expires_at) "
        "SELECT * FROM unnest($1::text[], $2::timestamptz[])",
        keys,
        expires,
    )


async def _sizes(conn: Any, table: str) -> dict[str, int]:
    row = await conn.fetchrow(
        "SELECT pg_total_relation_size($1::regclass) AS total, "
        "pg_relation_size($1::regclass) AS heap, pg_indexes_size($1::regclass) AS indexes",
        table,
    )
    return {"total": int(row["total"]), "heap": int(row["heap"]), "indexes": int(row["indexes"])}


@dataclass
class SweepStats:
    lags: array.array[float] = field(default_factory=lambda: array.array("d"))
    delivered: int = 0
    duplicates: int = 0
    foreign: int = 0
    sweeps: int = 0
    overruns: int = 0
    sweep_ms: list[float] = field(default_factory=list)
    max_rows: int = 0


class KafkaForward:
    """The sweeper's hop to a consumer: each deleted row as a tombstone-like message on a
    Kafka topic (one record batch per sweep, acks=all, awaited before the next sweep), in the
    shape ``bench.e2e_expiry``'s tombstone reader measures stream-expiry's tombstones with."""

    def __init__(self, prod: Any, topic: str) -> None:
        self._prod = prod
        self._topic = topic

    async def send(self, rows: list[tuple[int, int]]) -> None:
        """``rows``: (record number, expires_at ms) of the rows one DELETE returned."""
        import orjson

        from stream_expiry.timeutil import format_ts

        emitted = format_ts(time.time_ns() // NS_PER_MS)
        acks = []
        batch = self._prod.create_batch()
        for idx, expires_ms in rows:
            key = f"pg/lag-{idx}".encode()
            value = orjson.dumps(
                {"reason": "ttl", "expires_at": format_ts(expires_ms), "emitted_at": emitted}
            )
            if batch.append(key=key, value=value, timestamp=None) is None:
                acks.append(await self._prod.send_batch(batch, self._topic, partition=0))
                batch = self._prod.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        acks.append(await self._prod.send_batch(batch, self._topic, partition=0))
        for ack in acks:
            await ack


async def _sweeper(
    conn: Any,
    table: str,
    expected: int,
    deadline_ns: int,
    stats: SweepStats,
    forward: KafkaForward | None = None,
) -> None:
    """Run the DELETE every 100 ms until every row came back or the deadline passed; with
    ``forward``, send each sweep's rows on before the next sweep."""
    query = f"DELETE FROM {table} WHERE expires_at <= now() RETURNING key, expires_at"
    seen = bytearray(expected)
    period_ns = int(SWEEP_PERIOD_S * NS_PER_S)
    next_tick = time.monotonic_ns()
    while stats.delivered < expected and time.time_ns() < deadline_ns:
        t0 = time.perf_counter()
        rows = await conn.fetch(query)
        t_ms = time.time_ns() / NS_PER_MS  # when the rows reached the sweeper
        stats.sweep_ms.append((time.perf_counter() - t0) * 1000)
        stats.sweeps += 1
        stats.max_rows = max(stats.max_rows, len(rows))
        out: list[tuple[int, int]] = []
        for key, expires_at in rows:
            due_s, _, idx_s = key.partition(":")
            try:
                idx = int(idx_s)
                int(due_s)
            except ValueError:
                stats.foreign += 1
                continue
            if not 0 <= idx < expected:
                stats.foreign += 1
                continue
            if seen[idx]:
                stats.duplicates += 1
                continue
            seen[idx] = 1
            stats.delivered += 1
            stats.lags.append(t_ms - expires_at.timestamp() * 1000)
            out.append((idx, int(due_s)))
        if forward is not None and out:
            await forward.send(out)
        next_tick += period_ns
        now = time.monotonic_ns()
        if next_tick <= now:
            stats.overruns += 1
            next_tick = now
        else:
            await asyncio.sleep((next_tick - now) / NS_PER_S)


async def lag_phase(
    dsn: str,
    table: str,
    rate: int,
    seconds: float,
    grace: float,
    background: int,
    bootstrap: str | None = None,
) -> dict[str, Any]:
    """The lag run; with ``bootstrap``, deleted rows are forwarded through Kafka and the lag
    is measured at a consumer in its own process (the lag at the sweeper is kept too)."""
    async with contextlib.AsyncExitStack() as stack:
        forward = None
        reader_for = None
        if bootstrap is not None:
            from bench.e2e_expiry import tombstone_reader
            from stream_expiry.kafka import ensure_topics, producer

            topic = f"{table}.forward"
            await ensure_topics(bootstrap, [topic], partitions=1)
            prod = await stack.enter_async_context(producer(bootstrap))
            forward = KafkaForward(prod, topic)

            async def reader_for(schedule: RateSchedule, deadline_ns: int) -> Any:
                return await stack.enter_async_context(
                    tombstone_reader(
                        bootstrap, topic, schedule.count, rate, schedule.start_ns, deadline_ns
                    )
                )

        return await _lag_phase(dsn, table, rate, seconds, grace, background, forward, reader_for)


async def _lag_phase(
    dsn: str,
    table: str,
    rate: int,
    seconds: float,
    grace: float,
    background: int,
    forward: KafkaForward | None,
    reader_for: Any,
) -> dict[str, Any]:
    import asyncpg

    loader = await asyncpg.connect(dsn)
    sweeper = await asyncpg.connect(dsn)
    try:
        await _create_table(loader, table)
        # Calibrate the insert rate, then empty the table (TRUNCATE returns no rows to sweep).
        far = _ts(time.time_ns()) + FAR_FUTURE
        t0 = time.perf_counter()
        for lo in range(0, CALIBRATION_ROWS, INSERT_BATCH):
            keys = [f"cal:{i}" for i in range(lo, lo + INSERT_BATCH)]
            await _insert(loader, table, keys, [far] * len(keys))
        insert_rate = CALIBRATION_ROWS / (time.perf_counter() - t0)
        await loader.execute(f"TRUNCATE {table}")
        log(f"pg lag: unnest inserts reach ~{insert_rate:,.0f} rows/s here")
        if background:
            log(f"pg lag: inserting {background} background rows expiring in 30 days")
            await _copy_far_future(loader, table, background)

        count = int(rate * seconds)
        lead_s = 1.0 + 1.5 * count / insert_rate + (4.0 if forward is not None else 0.0)
        schedule = RateSchedule(
            rate=rate, count=count, start_ns=time.time_ns() + int(lead_s * NS_PER_S)
        )
        deadline_ns = schedule.end_ns + int(grace * NS_PER_S)
        stats = SweepStats()
        result = None
        if reader_for is not None:
            result = await reader_for(schedule, deadline_ns)  # subscribed before any delete
        sweep_task = asyncio.create_task(
            _sweeper(sweeper, table, count, deadline_ns, stats, forward)
        )

        log(
            f"pg lag: inserting {count} rows due at {rate}/s over {seconds:g}s (lead {lead_s:.1f}s)"
        )
        t0 = time.perf_counter()
        for batch in schedule.batches(INSERT_BATCH):
            keys = [f"{schedule.due_ms(i)}:{i}" for i in batch]
            expires = [_ts(schedule.due_ns(i)) for i in batch]
            await _insert(loader, table, keys, expires)
        insert_s = time.perf_counter() - t0
        overlap_s = max(0.0, (time.time_ns() - schedule.start_ns) / NS_PER_S)
        if overlap_s > 0:
            log(f"pg lag: inserts ran {overlap_s:.2f}s into the expiry window")
        log("pg lag: waiting for the sweeper")
        await sweep_task
        left_due = await loader.fetchval(f"SELECT count(*) FROM {table} WHERE expires_at <= now()")
        consumer_res: dict[str, Any] | None = None
        if result is not None:
            wait_s = (deadline_ns - time.time_ns()) / NS_PER_S + 30
            consumer_res = await result(max(wait_s, 5))
    finally:
        await sweeper.close()
        await loader.close()

    from bench.e2e_expiry import READER_ARRAYS
    from bench.e2e_expiry import lag_split as _lag_split

    at_sweeper = summarize(stats.lags)
    lags = stats.lags
    delivered = stats.delivered
    if consumer_res is not None:
        lags = array.array("d")
        lags.frombytes(consumer_res["lags"])
        delivered = int(consumer_res["delivered"])
    summary = summarize(lags)
    sorted_lags = sorted(lags)
    sweep_summary = summarize(stats.sweep_ms)
    lag = {
        "rate": rate,
        "seconds": seconds,
        "scheduled": count,
        "delivered": delivered,
        "missing": count - delivered,
        "delivered_fraction": round(delivered / count, 6) if count else None,
        "grace_s": grace,
        "lag_ms": summary.to_json(),
    }
    extra = {
        "measured_at": "consumer" if consumer_res is not None else "sweeper",
        "lag_at_sweeper_ms": at_sweeper.to_json(),
        "consumer": None
        if consumer_res is None
        else {k: v for k, v in consumer_res.items() if k not in READER_ARRAYS},
        **(_lag_split(consumer_res, lags) if consumer_res is not None else {}),
        "lag_percentiles_ms": {
            "p90": round(percentile(sorted_lags, 90), 3) if sorted_lags else None,
            "p99.9": round(percentile(sorted_lags, 99.9), 3) if sorted_lags else None,
        },
        "duplicates": stats.duplicates,
        "foreign_rows": stats.foreign,
        "sweeps": stats.sweeps,
        "sweep_overruns": stats.overruns,
        "sweep_duration_ms": sweep_summary.to_json(),
        "max_rows_per_sweep": stats.max_rows,
        "due_rows_left_after_grace": int(left_due),
        "write_overlap_into_window_s": round(overlap_s, 3),
        "lead_s": round(lead_s, 3),
        "background_rows": background,
        "throughput": throughput_entry(
            "insert rows",
            count,
            insert_s,
            method=f"INSERT ... SELECT unnest($1, $2), batches of {INSERT_BATCH}, one connection",
        ),
    }
    log(
        f"pg lag: {delivered}/{count} rows, p50 {fmt_ms(summary.p50)}, "
        f"p99 {fmt_ms(summary.p99)}, max {fmt_ms(summary.max)}; "
        f"sweep p99 {fmt_ms(sweep_summary.p99)}"
    )
    return {"lag": lag, "extra": extra}


async def _copy_far_future(
    conn: Any, table: str, n: int, checkpoints: list[int] | None = None
) -> tuple[float, list[dict[str, int]]]:
    """COPY ``n`` record rows expiring in 30 days; the seconds spent and sizes at checkpoints."""
    far = _ts(time.time_ns()) + FAR_FUTURE
    marks = sorted(set(checkpoints or []))
    sizes: list[dict[str, int]] = []
    spent = 0.0
    lo = 0
    while lo < n:
        hi = min(lo + COPY_BATCH, marks[0] if marks else n, n)
        records = [(record_key(i), far) for i in range(lo, hi)]
        t0 = time.perf_counter()
        await conn.copy_records_to_table(table, records=records, columns=["key", "expires_at"])
        spent += time.perf_counter() - t0
        lo = hi
        while marks and lo >= marks[0]:
            marks.pop(0)
            sizes.append(await _sizes(conn, table))
    return spent, sizes


async def memory_phase(
    dsn: str, table: str, pending: int
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await _create_table(conn, table)
        base = await _sizes(conn, table)
        checkpoints = sorted(
            {max(1, pending // 10), max(1, pending // 4), max(1, pending // 2), pending}
        )
        log(f"pg memory: copying {pending} rows expiring in 30 days")
        seconds, sizes = await _copy_far_future(conn, table, pending, checkpoints)
        points = [
            memory_point(
                n,
                s["total"],
                baseline_bytes=base["total"],
                what="pg_total_relation_size delta (heap + indexes)",
                heap_bytes=s["heap"] - base["heap"],
                index_bytes=s["indexes"] - base["indexes"],
            )
            for n, s in zip(checkpoints, sizes, strict=True)
        ]
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    tp = throughput_entry(
        "copy far-future rows",
        pending,
        seconds,
        method=f"asyncpg copy_records_to_table, batches of {COPY_BATCH}, one connection",
    )
    return points, tp, {"server_version": version, "baseline_sizes": base}


async def _drop(dsn: str, tables: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for t in tables:
            await conn.execute(f"DROP TABLE IF EXISTS {t}")
    finally:
        await conn.close()


async def run(args: Any, bootstrap: str | None = None) -> dict[str, Any]:
    started = utc_now_iso()
    table = f"bench_sweep_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    lag: dict[str, Any] | None = None
    throughput: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"table": table}
    notes = [
        "The sweeper runs DELETE ... WHERE expires_at <= now() RETURNING key, expires_at every "
        "100 ms on its own connection"
        + (
            "; it forwards each sweep's rows to a Kafka topic (embedded Tansu, acks=all) and "
            "lag is from expires_at to their arrival at a consumer in its own process, as "
            "for stream-expiry (lag_at_sweeper_ms: at the sweeper)."
            if bootstrap is not None
            else "; lag is from expires_at to the wall clock when the deleted rows reached the "
            "sweeper (--forward none: no hop to a consumer)."
        ),
        "Ordinary logged table with a text primary key and an index on expires_at.",
    ]
    try:
        if args.pending > 0:
            memory, tp, mem_extra = await memory_phase(args.dsn, table + "_mem", args.pending)
            throughput.append(tp)
            extra["memory"] = mem_extra
            await _drop(args.dsn, [table + "_mem"])
        if args.rate > 0:
            out = await lag_phase(
                args.dsn,
                table,
                args.rate,
                args.seconds,
                args.grace,
                args.background,
                bootstrap,
            )
            lag = out["lag"]
            lag_extra = out["extra"]
            throughput.insert(0, lag_extra.pop("throughput"))
            extra["lag"] = lag_extra
            if lag and lag["missing"]:
                notes.append(
                    f"{lag['missing']} of {lag['scheduled']} rows had not been swept "
                    f"{args.grace:g}s after the last due time."
                )
    finally:
        await _drop(args.dsn, [table, table + "_mem"])
    system = "postgres-sweep-100ms" + (
        f"-bg{human_count(args.background)}" if args.background else ""
    )
    if bootstrap is None and args.rate > 0:
        system += "-at-sweeper"
    return envelope(
        "pg_sweep",
        system,
        params={
            "rate": args.rate,
            "seconds": args.seconds,
            "pending": args.pending,
            "grace": args.grace,
            "sweep_period_s": SWEEP_PERIOD_S,
            "background": args.background,
            "forward": args.forward,
        },
        lag=lag,
        throughput=throughput,
        memory=memory,
        extra=extra,
        notes=notes,
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "postgres sweep")
    parser.add_argument(
        "--dsn", default=os.environ.get("BENCH_PG_DSN", DEFAULT_DSN), help="PostgreSQL DSN"
    )
    parser.add_argument(
        "--background", type=int, default=0, help="far-future rows present during the lag phase"
    )
    parser.add_argument(
        "--forward",
        choices=("kafka", "none"),
        default="kafka",
        help="kafka: deleted rows go through Kafka to a consumer, where lag is measured "
        "(default); none: lag at the sweeper",
    )
    args = parser.parse_args(argv)
    if args.forward == "kafka" and args.rate > 0:
        from stream_expiry.broker import EmbeddedBroker

        with EmbeddedBroker() as broker:
            emit_result(asyncio.run(run(args, broker.bootstrap_servers)))
    else:
        emit_result(asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

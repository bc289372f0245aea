"""The floor under every tombstone's lag: produce -> broker -> a consumer in another process.

    python -m bench.bench_transport --rate 10000 --seconds 10 [--tick-ms 1] [--linger-ms 2]
                                    [--shape plain|service] [--prefill N]

No stream-expiry logic: a producer with the service's settings (``stream_expiry.kafka.
producer``: acks=all, linger 2 ms) sends ``rate`` small messages per second, a batch per
partition every ``--tick-ms`` (what the service's outbox does with a tick's tombstones),
each stamped with its CreateTime; a reader process (fetch_max_wait_ms 5, as the tombstone
reader of ``bench.e2e_expiry``) takes ``arrival - CreateTime``. Whatever lag this shows, the
service cannot beat on the same broker: ``e2e_expiry``'s ``transport_lag_ms`` is the same hop
plus the service's own encoding and settling.

``--shape service`` sends what the service sends for each expiration, not one message: the
tombstone event (about as large as the service's) and, in the same produce request, a null
under the same key on a second topic (the null that ends the stamp on ``expiry.stamped``);
the reader reads the first topic only, as ``e2e_expiry``'s does. ``--prefill N`` (with
``--shape service``, ``rate x seconds`` unless given) first writes N stamp-sized messages on
that second topic, in batches of ``PREFILL_BATCH``, as the service's ingest leaves
``expiry.stamped`` before the window of an ``e2e_expiry`` run with N records. With both,
this is the floor of that run's own broker traffic. The plain floor flatters it: it writes
half the batches, into empty topics, and the embedded broker's transport slows down as its
topics fill (measured, docs/BENCHMARKS.md round 10; why, inside Tansu, not looked into).
``extra.lag_windows`` gives the lag per tenth of the run, by sending time.

Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.
"""

from __future__ import annotations

import array
import asyncio
import multiprocessing as mp
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

from bench.common import (
    base_parser,
    emit_result,
    envelope,
    lag_windows,
    log,
    summarize,
    utc_now_iso,
)

if TYPE_CHECKING:
    import argparse
    from multiprocessing.connection import Connection

READER_FETCH_WAIT_MS = 5
PARTITIONS = 4
PREFILL_BATCH = 500  # stamps per batch and partition, as the service's ingest slices write them
# About the size of the service's tombstone event and of its stamp (bench.changelog's).
TOMBSTONE = (
    b'{"org":"org-0001","bot":"bot-01","env":"live","category":"error",'
    b'"record_id":"lag-0000000123","reason":"ttl","created_at":"2026-12-02T03:00:00.000Z",'
    b'"expires_at":"2026-12-02T03:10:00.000Z","ttl_seconds":600,"ttl_source":"default",'
    b'"emitted_at":"2026-12-02T03:10:00.002Z","deleted_at":"2026-12-02T03:09:59.999Z"}'
)
STAMP = TOMBSTONE[:-1] + b',"last_activity_at":"2026-12-02T03:00:00.000Z","data":null}'


async def _read(
    bootstrap: str, topic: str, expected: int, seconds: float, conn: Connection
) -> dict[str, Any]:
    from aiokafka import TopicPartition

    from stream_expiry.kafka import consumer

    lags = array.array("d")
    sent_at = array.array("q")  # each message's CreateTime: its window
    async with consumer(bootstrap, fetch_max_wait_ms=READER_FETCH_WAIT_MS) as cons:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        await cons.getmany(timeout_ms=200)
        conn.send("ready")
        deadline = time.monotonic() + seconds + 120
        while len(lags) < expected and time.monotonic() < deadline:
            batch = await cons.getmany(timeout_ms=100, max_records=20_000)
            t_ms = time.time_ns() / 1e6
            for records in batch.values():
                for rec in records:
                    lags.append(t_ms - rec.timestamp)
                    sent_at.append(rec.timestamp)
    return {"lags": lags.tobytes(), "sent_at": sent_at.tobytes()}


def _reader(bootstrap: str, topic: str, expected: int, seconds: float, conn: Connection) -> None:
    conn.send(asyncio.run(_read(bootstrap, topic, expected, seconds, conn)))


async def _produce(
    bootstrap: str,
    topics: list[str],
    rate: int,
    seconds: float,
    tick_ms: float,
    linger_ms: int,
) -> int:
    """Send ``rate`` messages a second on ``topics[0]``, and with each a null under its key
    on every other topic (``--shape service``), a batch per topic and partition a tick."""
    from stream_expiry.kafka import producer

    per_tick = rate * tick_ms / 1000
    sent = 0
    owed = 0.0
    async with producer(bootstrap, linger_ms=linger_ms) as prod:
        start = time.monotonic()
        n_ticks = int(seconds * 1000 / tick_ms)
        futures = []
        for tick in range(n_ticks):
            await asyncio.sleep(max(0.0, start + tick * tick_ms / 1000 - time.monotonic()))
            owed += per_tick
            count = int(owed)
            owed -= count
            if not count:
                continue
            now_ms = time.time_ns() // 1_000_000
            batches = {(t, p): prod.create_batch() for t in topics for p in range(PARTITIONS)}
            for i in range(count):
                key, p = b"k%d" % (sent + i), (sent + i) % PARTITIONS
                for n, topic in enumerate(topics):
                    value = TOMBSTONE if n == 0 else None
                    batches[topic, p].append(timestamp=now_ms, key=key, value=value)
            for (topic, p), batch in batches.items():
                futures.append(await prod.send_batch(batch, topic, partition=p))
            sent += count
        for f in futures:
            await f
    return sent


async def _prefill(bootstrap: str, topic: str, count: int) -> None:
    """``count`` stamp-sized messages on ``topic``, as an ingest leaves ``expiry.stamped``."""
    from stream_expiry.kafka import producer

    async with producer(bootstrap, linger_ms=0) as prod:
        futures = []
        for first in range(0, count, PREFILL_BATCH * PARTITIONS):
            n = min(PREFILL_BATCH * PARTITIONS, count - first)
            batches = [prod.create_batch() for _ in range(PARTITIONS)]
            now_ms = time.time_ns() // 1_000_000
            for i in range(first, first + n):
                batches[i % PARTITIONS].append(timestamp=now_ms, key=b"s%d" % i, value=STAMP)
            for p, batch in enumerate(batches):
                futures.append(await prod.send_batch(batch, topic, partition=p))
        for f in futures:
            await f


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from stream_expiry.broker import EmbeddedBroker

    prefix = f"transport-{uuid.uuid4().hex[:8]}"
    topics = [f"{prefix}.tombstones"]
    if args.shape == "service" or args.prefill:
        topics.append(f"{prefix}.stamped")
    topic = topics[0]
    expected = int(args.rate * args.seconds)
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        await _create(bootstrap, topics)
        if args.prefill:
            await _prefill(bootstrap, topics[-1], args.prefill)
            log(f"transport: {args.prefill:,} stamps written first on {topics[-1]}")
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_reader, args=(bootstrap, topic, expected, args.seconds, child))
        proc.start()
        parent.recv()  # ready
        log(
            f"transport: {expected:,} messages at {args.rate:,}/s, tick {args.tick_ms} ms, "
            f"shape {args.shape}"
        )
        shape = topics if args.shape == "service" else topics[:1]
        sent = await _produce(
            bootstrap, shape, args.rate, args.seconds, args.tick_ms, args.linger_ms
        )
        res = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        proc.join()
    lags = array.array("d")
    lags.frombytes(res["lags"])
    sent_at = array.array("q")
    sent_at.frombytes(res["sent_at"])
    summary = summarize(lags)
    windows = lag_windows(sent_at, lags, args.seconds / 10)
    log(
        f"transport: {len(lags):,}/{sent:,} arrived, p50 {summary.p50:.1f} ms, "
        f"p99 {summary.p99:.1f} ms, max {summary.max:.1f} ms; p99 by tenth of the run: "
        + ", ".join(f"{w['p99']:.0f}" for w in windows)
    )
    return {
        "lag": {
            "rate": args.rate,
            "seconds": args.seconds,
            "scheduled": sent,
            "delivered": len(lags),
            "lag_ms": summary.to_json(),
        },
        "extra": {
            "tick_ms": args.tick_ms,
            "linger_ms": args.linger_ms,
            "reader_fetch_max_wait_ms": READER_FETCH_WAIT_MS,
            "shape": args.shape,
            "prefill": args.prefill,
            "lag_windows": windows,
        },
    }


async def _create(bootstrap: str, topics: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1) for topic in topics])
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    # The suite's shape (--rate --seconds --pending --grace; the last two are ignored here).
    ap = base_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--tick-ms", type=float, default=1.0, help="a batch per partition this often")
    ap.add_argument("--linger-ms", type=int, default=2, help="the producer's linger_ms")
    ap.add_argument(
        "--shape",
        choices=("plain", "service"),
        default="plain",
        help="plain: one message per expiration; service: the tombstone and its null (two topics)",
    )
    ap.add_argument(
        "--prefill",
        type=int,
        default=None,
        help="stamps written on the second topic first (default: rate x seconds with "
        "--shape service, as many as the e2e_expiry run it stands under; else 0)",
    )
    args = ap.parse_args(argv)
    if args.prefill is None:
        args.prefill = int(args.rate * args.seconds) if args.shape == "service" else 0
    started = utc_now_iso()
    result = asyncio.run(_main(args))
    emit_result(
        envelope(
            "bench_transport",
            "broker-floor" if args.shape == "plain" else "broker-floor-service-shape",
            params=vars(args),
            started_at=started,
            **result,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

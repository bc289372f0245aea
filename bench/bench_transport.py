"""The floor under every tombstone's lag: produce -> broker -> a consumer in another process.

    python -m bench.bench_transport --rate 10000 --seconds 10 [--tick-ms 1] [--linger-ms 2]

No stream-expiry logic: a producer with the service's settings (``stream_expiry.kafka.
producer``: acks=all, linger 2 ms) sends ``rate`` small messages per second, a batch per
partition every ``--tick-ms`` (what the service's outbox does with a tick's tombstones),
each stamped with its CreateTime; a reader process (fetch_max_wait_ms 5, as the tombstone
reader of ``bench.e2e_expiry``) takes ``arrival - CreateTime``. Whatever lag this shows, the
service cannot beat on the same broker: ``e2e_expiry``'s ``transport_lag_ms`` is the same hop
plus the service's own encoding and settling.

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

from bench.common import base_parser, emit_result, envelope, log, summarize, utc_now_iso

if TYPE_CHECKING:
    import argparse
    from multiprocessing.connection import Connection

READER_FETCH_WAIT_MS = 5
PARTITIONS = 4


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


def lag_windows(
    sent_at: array.array[int], lags: array.array[float], window_s: float = 10.0
) -> list[dict[str, Any]]:
    """Lag percentiles per window of sending time: whether the floor itself drifts over a
    long run (the soak's question)."""
    if not sent_at:
        return []
    t0 = min(sent_at)
    windows: dict[int, list[float]] = {}
    for t, lag in zip(sent_at, lags, strict=True):
        windows.setdefault(int((t - t0) / (window_s * 1000)), []).append(lag)
    return [{"t_s": i * window_s, **summarize(w).to_json()} for i, w in sorted(windows.items())]


async def _produce(
    bootstrap: str, topic: str, rate: int, seconds: float, tick_ms: float, linger_ms: int
) -> int:
    from stream_expiry.kafka import producer

    per_tick = rate * tick_ms / 1000
    value = b'{"org":"org-0001","bot":"bot-01","env":"live","category":"error"}' * 3
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
            batches = [prod.create_batch() for _ in range(PARTITIONS)]
            for i in range(count):
                batches[(sent + i) % PARTITIONS].append(
                    timestamp=now_ms, key=b"k%d" % (sent + i), value=value
                )
            for p, batch in enumerate(batches):
                futures.append(await prod.send_batch(batch, topic, partition=p))
            sent += count
        for f in futures:
            await f
    return sent


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from stream_expiry.broker import EmbeddedBroker

    topic = f"transport-{uuid.uuid4().hex[:8]}"
    expected = int(args.rate * args.seconds)
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        await _create(bootstrap, topic)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_reader, args=(bootstrap, topic, expected, args.seconds, child))
        proc.start()
        parent.recv()  # ready
        log(f"transport: {expected:,} messages at {args.rate:,}/s, tick {args.tick_ms} ms")
        sent = await _produce(
            bootstrap, topic, args.rate, args.seconds, args.tick_ms, args.linger_ms
        )
        res = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        proc.join()
    lags = array.array("d")
    lags.frombytes(res["lags"])
    sent_at = array.array("q")
    sent_at.frombytes(res["sent_at"])
    summary = summarize(lags)
    log(
        f"transport: {len(lags):,}/{sent:,} arrived, p50 {summary.p50:.1f} ms, "
        f"p99 {summary.p99:.1f} ms, max {summary.max:.1f} ms"
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
            "lag_windows": lag_windows(sent_at, lags),
        },
    }


async def _create(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    # The suite's shape (--rate --seconds --pending --grace; the last two are ignored here).
    ap = base_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--tick-ms", type=float, default=1.0, help="a batch per partition this often")
    ap.add_argument("--linger-ms", type=int, default=2, help="the producer's linger_ms")
    args = ap.parse_args(argv)
    started = utc_now_iso()
    result = asyncio.run(_main(args))
    emit_result(
        envelope("bench_transport", "broker-floor", params=vars(args), started_at=started, **result)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

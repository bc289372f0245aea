"""Reading a whole changelog topic: aiokafka's ``getmany`` against ``stream_expiry.fetch``.

    python -m bench.bench_fetch [--stamps 1000000] [--rounds 2]

Setup (not timed): ``--stamps`` stamps on ``expiry.stamped`` as a running service leaves them
(``bench.changelog``), on the embedded broker.

Timed, in this process, ``--rounds`` times each, alternating: the topic read from its
beginning to its end, touching each message's key, value, headers and offset and nothing
else, (1) with ``getmany`` (``stream_expiry.kafka.read_to_end``, 10,000 records a call,
4 MiB fetches: what restore and replay used before) and (2) with
``stream_expiry.fetch.read_ranges`` (4 MiB fetches, records decoded as they are taken).
Reported: messages/s (wall) and CPU microseconds per message of this process for each; the
broker's CPU is not counted.

Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import anyio
from aiokafka import TopicPartition

from bench.changelog import fresh_changelog
from bench.common import (
    base_parser,
    envelope,
    log,
    on_embedded_broker,
    throughput_entry,
    utc_now_iso,
)
from bench.e2e_expiry import quiet_logging
from stream_expiry.fetch import read_ranges
from stream_expiry.kafka import consumer, partitions_of, read_to_end

FETCH_BYTES = 4 * 1024 * 1024


async def with_getmany(bootstrap: str, topic: str) -> int:
    read = 0
    async with consumer(bootstrap, fetch_max_bytes=FETCH_BYTES) as cons:
        async for batch in read_to_end(cons, topic, max_records=10_000):
            for records in batch.values():
                for rec in records:
                    rec.key, rec.value, rec.headers, rec.offset  # noqa: B018
                read += len(records)
    return read


async def with_read_ranges(bootstrap: str, topic: str) -> int:
    read = 0
    async with consumer(bootstrap) as cons:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(cons, topic))]
        reader = read_ranges(cons, dict.fromkeys(tps, 0), fetch_bytes=FETCH_BYTES)
        async with contextlib.aclosing(reader):
            async for fetched in reader:
                for part in fetched:
                    for rec in part:
                        rec.key, rec.value, rec.headers, rec.offset  # noqa: B018
                        read += 1
    return read


async def run(args: Any, bootstrap: str) -> dict[str, Any]:
    started = utc_now_iso()
    topics, _ = await fresh_changelog(bootstrap, args.stamps, what="bench_fetch")
    ways = {"getmany": with_getmany, "read_ranges": with_read_ranges}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, read in ways.items():
            t0, cpu0 = time.perf_counter(), time.process_time()
            count = await read(bootstrap, topics.stamped)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            if count != args.stamps:
                raise SystemExit(f"bench_fetch: {name} read {count:,} of {args.stamps:,}")
            runs[name].append({"seconds": wall, "cpu_us_per_message": cpu / count * 1e6})
            log(
                f"bench_fetch: {name}: {count / wall:,.0f} messages/s, {cpu / count * 1e6:.2f} us CPU"
            )
    throughput = [
        throughput_entry(
            f"{name}: messages read",
            args.stamps,
            min(r["seconds"] for r in got),
            method=f"the best of {args.rounds} reads of the whole topic",
            unit="messages/s",
        )
        for name, got in runs.items()
    ]
    return envelope(
        "bench_fetch",
        "stream-expiry",
        params={"stamps": args.stamps, "rounds": args.rounds, "fetch_bytes": FETCH_BYTES},
        throughput=throughput,
        extra={"runs": runs},
        notes=["CPU is this process's only; the embedded broker runs beside it on 2 cores."],
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "fetch")
    parser.add_argument("--stamps", type=int, default=1_000_000, help="stamps on the topic")
    parser.add_argument("--rounds", type=int, default=2, help="reads of each kind")
    args = parser.parse_args(argv)
    quiet_logging()
    return on_embedded_broker("bench_fetch", lambda servers: anyio.run(run, args, servers))


if __name__ == "__main__":
    sys.exit(main())

"""``stream-expiry rekey``: events/s copied keyed by record, against an aiokafka passthrough.

    python -m bench.bench_rekey [--events 200000]

N input events (``bench.e2e_ingest``'s mix: 3 input topics of 4 partitions) are produced
first. Then, in this process and on the same events, one after the other:

1. **passthrough**: ``bench.e2e_ingest.passthrough``: consume, ``send_batch`` one message
   per event, wait for the acks; no parsing.
2. **rekey**: :class:`stream_expiry.rekey.Rekeyer` in a consumer group of its own. The clock
   runs from its first batch committed to its last, every event copied (the first batch's
   events are not counted: the test broker holds a group's first join for seconds): each
   event parsed as the service parses it, keyed by its record, sent, its batch
   acknowledged, its offsets committed.

With rekey in front of it, the service reads the copies, so a deployment's ingest is bounded
by the slower of the two: compare ``events_per_s`` with ``bench.e2e_ingest``'s.
Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio

from bench.common import (
    base_parser,
    envelope,
    log,
    on_embedded_broker,
    throughput_entry,
    utc_now_iso,
)
from bench.e2e_expiry import (
    PARTITIONS,
    BenchTopics,
    ProduceSpec,
    make_config,
    produce_in_child,
    quiet_logging,
    temp_state_dir,
)
from bench.e2e_ingest import passthrough
from stream_expiry.kafka import ensure_topics
from stream_expiry.rekey import Rekeyer, targets_for

DEFAULT_EVENTS = 200_000


async def rekey(
    config: Any, bootstrap: str, sources: tuple[str, ...], events: int
) -> dict[str, Any]:
    rekeyer = Rekeyer(config, bootstrap, targets_for(sources), group_id=f"{config.group_id}-rk")
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(rekeyer.run, stop)
        with anyio.fail_after(60):
            await rekeyer.ready.wait()
        # The clock starts at the first batch committed, not at the join: the test broker
        # holds a group's first join for seconds, which is no part of copying. That batch's
        # events are left out of the count.
        with anyio.fail_after(600 + events / 5_000):
            while rekeyer.stats.committed == 0:  # noqa: ASYNC110 - another task counts
                await anyio.sleep(0.001)
            t0, first = time.perf_counter(), rekeyer.stats.committed
            while rekeyer.stats.committed < events:  # noqa: ASYNC110 - another task counts
                await anyio.sleep(0.01)
        seconds = time.perf_counter() - t0
        stop.set()
    stats = rekeyer.stats
    return {
        "events": stats.forwarded + stats.rejected,
        "forwarded": stats.forwarded,
        "rejected": stats.rejected,
        "batches": stats.batches,
        "timed_events": events - first,
        "seconds": round(seconds, 3),
        "events_per_s": round((events - first) / seconds, 1),
    }


async def run(args: Any, bootstrap: str, events: int) -> dict[str, Any]:
    started = utc_now_iso()
    topics = BenchTopics.fresh()
    out = f"{topics.prefix}.passthrough"
    await ensure_topics(bootstrap, [*topics.inputs, out], partitions=PARTITIONS)
    log(f"bench rekey: producing {events:,} events")
    ts = time.time_ns() // 1_000_000 - events // 10 - 60_000
    await produce_in_child(
        bootstrap,
        ProduceSpec("mixed", 0, events, ts_ms=ts),
        topics,
        timeout_s=600 + events / 10_000,
    )
    best = await passthrough(bootstrap, topics.inputs, out, events)
    log(f"bench rekey: passthrough {best['events_per_s']:,.0f} events/s")
    with temp_state_dir("rekey") as state_dir:
        config = make_config(topics, state_dir)
        copied = await rekey(config, bootstrap, topics.inputs, events)
    log(f"bench rekey: rekey {copied['events_per_s']:,.0f} events/s")
    ratio = round(copied["events_per_s"] / best["events_per_s"], 3)
    return envelope(
        "bench_rekey",
        "stream-expiry rekey",
        params={"events": events, "partitions": PARTITIONS},
        throughput=[
            throughput_entry(
                "rekey: parsed, keyed by record, sent, acked, committed",
                copied["timed_events"],
                copied["seconds"],
                method="pre-produced events; from its first batch committed to its last (the "
                "first batch's events not counted: the broker's join hold is no part of it)",
                unit="events/s",
            ),
            throughput_entry(
                "aiokafka passthrough (same events)",
                events,
                best["seconds"],
                method="consume, send_batch one message per event, wait for the acks",
                unit="events/s",
            ),
        ],
        extra={"rekey": copied, "passthrough": best, "ratio_to_passthrough": ratio},
        notes=[
            "Events were produced before anything was timed; rekey and the passthrough run "
            "in this process one after the other; the broker is the embedded Tansu.",
            f"rekey / passthrough = {ratio}.",
        ],
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "bench rekey")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="events to copy")
    args = parser.parse_args(argv)
    if args.events <= 0:
        parser.error("--events must be positive")
    quiet_logging()
    return on_embedded_broker(
        "bench rekey", lambda servers: anyio.run(run, args, servers, args.events)
    )


if __name__ == "__main__":
    sys.exit(main())

"""stream-expiry end to end: replay rate (``replay(..., dry_run=True)``) over N input events.

    python -m bench.e2e_replay [--events 1000000] [--no-stamps]

Setup (not timed): N input events (the ingest mix of ``bench.e2e_expiry.mixed_event``:
conversations, sessions with touches, errors) are produced on the three input topics (4
partitions each), and, unless ``--no-stamps``, the stamps a live service would have left on
``expiry.stamped`` for them: derived by the pure engine with the same config in the producer
process, one message per stamp as the service publishes them. So replay has what it has in
production: N events to re-derive, a stamped topic to compare with (one message per
create or extending touch), and an (empty) tombstones topic.

Timed: ``stream_expiry.replay.replay(config, bootstrap, environ={}, dry_run=True)`` in this
process: read the policies, the tombstones, the latest stamp per key, then every input event
through the engine, and compare. Rate = events / wall seconds. With the stamps, every record
must come out ``unchanged`` (re-derivation is deterministic): the JSON says whether it did.

N is ``--events``; without it, ``--pending`` when the suite passes one, else 1,000,000.
Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING, Any, cast

import anyio

from bench.common import (
    NS_PER_MS,
    base_parser,
    emit_result,
    envelope,
    log,
    rss_bytes,
    throughput_entry,
    utc_now_iso,
)
from bench.e2e_expiry import (
    PARTITIONS,
    BenchTopics,
    ProduceSpec,
    make_config,
    mixed_event,
    produce_in_child,
    produce_messages,
    quiet_logging,
    receive,
    spawn,
    stop_child,
    temp_state_dir,
)
from stream_expiry.broker import EmbeddedBroker
from stream_expiry.kafka import ensure_topics

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.connection import Connection

DEFAULT_EVENTS = 1_000_000


def stamp_messages(
    events: int, ts_ms: int, now_ms: int, topics: BenchTopics
) -> Iterator[tuple[str, bytes, bytes]]:
    """The stamps a live service publishes for the mixed workload, from the pure engine."""
    from stream_expiry.engine import Engine
    from stream_expiry.model import InputEvent, Op, Stamp, encode_stamp
    from stream_expiry.policy import PolicyBook

    config = make_config(topics, "/nonexistent")
    book = PolicyBook(config, {})
    engine: Engine[int] = Engine(book.resolve, config.sliding, now_ms=now_ms, horizon_ms=0)
    states: dict[str, Stamp] = {}
    for i in range(events):
        ident, op = mixed_event(i, ts_ms)
        key = ident.key
        event = InputEvent(ident, cast("Op", op), ts_ms + i // 10)
        out = engine.feed(event, states.get(key), now_ms, 0)
        for fired in out.fired:
            states[key] = fired.after
        if out.state is not None:
            states[key] = out.state
            if out.publish:
                yield topics.stamped, key.encode(), encode_stamp(out.state)


def _stamps_main(
    bootstrap: str, events: int, ts_ms: int, now_ms: int, prefix: str, conn: Connection
) -> None:
    t0 = time.perf_counter()
    topics = BenchTopics(prefix)
    n = asyncio.run(produce_messages(bootstrap, stamp_messages(events, ts_ms, now_ms, topics)))
    conn.send({"sent": n, "seconds": time.perf_counter() - t0})
    conn.close()


async def run(args: Any, bootstrap: str, events: int) -> dict[str, Any]:
    started = utc_now_iso()
    topics = BenchTopics.fresh()
    await ensure_topics(
        bootstrap,
        [*topics.inputs, topics.policies, topics.stamped, topics.tombstones, topics.dlq],
        partitions=PARTITIONS,
    )
    now = time.time_ns() // NS_PER_MS
    ts = now - events // 10 - 60_000  # all created in the recent past; none due yet
    log(f"e2e replay: producing {events:,} input events")
    produced = await produce_in_child(bootstrap, ProduceSpec("mixed", 0, events, ts_ms=ts), topics)
    log(f"e2e replay: produced in {produced['seconds']:.1f}s")
    stamps = 0
    if args.stamps:
        log("e2e replay: deriving and producing the stamps a live run would have published")
        proc, conn = spawn(_stamps_main, bootstrap, events, ts, now, topics.prefix)
        try:
            res = await receive(conn, 1200, "stamp producer")
        finally:
            stop_child(proc)
        stamps = int(res["sent"])
        log(f"e2e replay: {stamps:,} stamps in {res['seconds']:.1f}s")

    from stream_expiry.replay import replay

    with temp_state_dir("replay") as state_dir:
        config = make_config(topics, state_dir)
        rss0 = rss_bytes(os.getpid())
        log("e2e replay: replay(dry_run=True)")
        t0 = time.perf_counter()
        report = await replay(config, bootstrap, environ={}, dry_run=True)
        seconds = time.perf_counter() - t0
        rss1 = rss_bytes(os.getpid())
    counts = report.counts()
    tp = throughput_entry(
        "replay --dry-run",
        counts["events"],
        seconds,
        method="stream_expiry.replay.replay(dry_run=True) in-process: policies, tombstones, "
        "latest stamp per key, every input event through the engine, compare",
        unit="events/s",
    )
    log(f"e2e replay: {counts} in {seconds:.2f}s: {tp['value']:,.0f} events/s")
    deterministic = (
        counts["unchanged"] == counts["records"] and counts["records"] > 0 if stamps else None
    )
    notes = [
        "Replay runs in the benchmark's process against the embedded Tansu broker on loopback.",
        "The stamped topic holds what a live run would have published for these events "
        "(derived by the engine beforehand), so replay compares against real stamps."
        if stamps
        else "No stamps were produced (--no-stamps): every record counts as changed.",
    ]
    if deterministic is False:
        notes.append("Replay did NOT reproduce every stamp: see extra.counts.")
    return envelope(
        "e2e_replay",
        "stream-expiry",
        params={
            "events": events,
            "stamps": stamps,
            "rate": args.rate,
            "seconds": args.seconds,
            "pending": args.pending,
            "partitions": PARTITIONS,
        },
        throughput=[tp],
        extra={
            "counts": counts,
            "all_unchanged": deterministic,
            "records_per_s": round(counts["records"] / seconds, 1) if seconds > 0 else None,
            "rss_before_bytes": rss0,
            "rss_after_bytes": rss1,
            "produce_s": round(float(produced["seconds"]), 3),
        },
        notes=notes,
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "e2e replay")
    parser.add_argument(
        "--events", type=int, default=None, help=f"input events (default {DEFAULT_EVENTS:,})"
    )
    parser.add_argument(
        "--stamps",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also publish the stamps a live run would have left (default: yes)",
    )
    args = parser.parse_args(argv)
    events = args.events or (args.pending if args.pending > 0 else DEFAULT_EVENTS)
    quiet_logging()
    with EmbeddedBroker() as broker:
        log(f"e2e replay: embedded broker on {broker.bootstrap_servers}")
        result = anyio.run(run, args, broker.bootstrap_servers, events)
    emit_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Restore rate: a partition store rebuilt from ``expiry.stamped`` into an empty directory.

    python -m bench.bench_restore [--stamps 1000000] [--input-topics 3] [--workers N]
                                  [--data-bytes B]

Setup (not timed): ``--stamps`` stamps are produced on ``expiry.stamped`` as a running
service leaves them (``bench.changelog``: the right partition, the source headers, values
by ``model.encode_stamp``), spread over ``--input-topics`` input topics of 4 partitions.
``--data-bytes`` gives each stamp a chat transcript of about that many bytes as its
``data``, as a platform's conversations carry (none by default): a restore parses every
stamp's body, so its rate falls as the payloads grow.

Timed: an empty ``PartitionStore`` on RocksDB in a fresh directory for every input
partition and ONE ``stream_expiry.state.restore_workers.restore_stores`` call over all of
them, exactly what the service's ``assign`` does before it positions its partitions (in
worker processes for a large read: ``--workers 1`` keeps it in this process). Each changelog partition carries the messages of every input
partition with its number (one per input topic); it is read once and each message goes to
the store its headers name. Then a ``PartitionProcessor`` is built on each restored store
(it loads the timers within the horizon), timed apart.

Reported: stamps applied per second (issue 10's target: >= 200,000/s) over all partitions,
and changelog messages read per second (the same number of messages as stamps, now).

``--stamps`` defaults to 1,000,000 (``--pending`` when the suite passes one).
Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Any

import anyio

from bench.changelog import fresh_changelog
from bench.common import (
    NS_PER_MS,
    base_parser,
    envelope,
    log,
    on_embedded_broker,
    rss_bytes,
    throughput_entry,
    utc_now_iso,
)
from bench.e2e_expiry import (
    PARTITIONS,
    BenchTopics,
    index_file_bytes,
    make_config,
    quiet_logging,
    temp_state_dir,
)
from stream_expiry.policy import PolicyBook
from stream_expiry.state import PartitionProcessor
from stream_expiry.state.restore_workers import restore_stores

DEFAULT_STAMPS = 1_000_000


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that ended (restore's workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


async def restore_all(
    bootstrap: str,
    topics: BenchTopics,
    inputs: tuple[str, ...],
    state_dir: str,
    workers: int | None,
) -> dict[str, Any]:
    """Every input partition restored as the service's ``assign`` does: one
    ``restore_stores`` call over empty stores (in worker processes for a large read), then
    a processor on each store."""
    config = make_config(topics, state_dir)
    book = PolicyBook(config, {})
    now = time.time_ns() // NS_PER_MS
    parts: list[dict[str, Any]] = []
    sources = [(topic, p) for topic in inputs for p in range(PARTITIONS)]
    paths = {(topic, p): os.path.join(state_dir, f"{topic}-{p}") for topic, p in sources}
    t0, cpu0 = time.perf_counter(), _cpu_s()
    stores, result = await restore_stores(
        paths,
        bootstrap=bootstrap,
        stamped=topics.stamped,
        tombstones=topics.tombstones,
        now_ms=now,
        grace_ms=config.marker_grace_ms,
        workers=workers,
    )
    t1, cpu1 = time.perf_counter(), _cpu_s()
    try:
        for topic, p in sources:
            store = stores[(topic, p)]
            report = result.stores[(topic, p)]
            t2 = time.perf_counter()
            proc = PartitionProcessor.from_config(topic, p, store, config, book, now_ms=now)
            load = time.perf_counter() - t2
            parts.append(
                {
                    "partition": f"{topic}[{p}]",
                    "read": report.read,
                    "stamps": report.stamps,
                    "markers": report.markers,
                    "unreadable": report.unreadable,
                    "load_timers_s": round(load, 3),
                    "pending": store.counts.pending_total,
                    "timers": proc.timers,
                }
            )
    finally:
        for store in stores.values():
            store.close()
    load_s = sum(p["load_timers_s"] for p in parts)
    log(
        f"bench_restore: {sum(p['stamps'] for p in parts):,} stamps of "
        f"{result.total.read:,} read in {t1 - t0:.2f}s"
    )
    return {
        "partitions": parts,
        "restore_s": t1 - t0,
        "restore_cpu_s": cpu1 - cpu0,
        "load_timers_s": load_s,
        "read": result.total.read,
    }


async def run(args: Any, bootstrap: str, stamps: int) -> dict[str, Any]:
    started = utc_now_iso()
    topics, produced = await fresh_changelog(
        bootstrap,
        stamps,
        what="bench_restore",
        input_topics=args.input_topics,
        data_bytes=args.data_bytes,
    )
    inputs = topics.inputs[: args.input_topics]
    log("bench_restore: restoring")
    with temp_state_dir("restore") as state_dir:
        rss0 = rss_bytes(os.getpid())
        res = await restore_all(bootstrap, topics, inputs, state_dir, args.workers)
        rss1 = rss_bytes(os.getpid())
        disk = index_file_bytes(state_dir)
    applied = sum(p["stamps"] for p in res["partitions"])
    read = res["read"]
    seconds = res["restore_s"]
    tp = throughput_entry(
        "restore: stamps applied",
        applied,
        seconds,
        method="restore_stores over every input partition at once, empty RocksDB stores",
        unit="stamps/s",
    )
    tp_read = throughput_entry(
        "restore: changelog messages read",
        read,
        seconds,
        method="changelog messages read (each changelog partition once)",
        unit="messages/s",
    )
    log(
        f"bench_restore: {applied:,} stamps applied ({read:,} read) in {seconds:.2f}s: "
        f"{tp['value']:,.0f} stamps/s ({res['restore_cpu_s']:.2f}s of CPU here); timers loaded "
        f"in {res['load_timers_s']:.2f}s"
    )
    notes = [
        "Restore runs as the service's assign runs it (restore_stores over every input "
        "partition: in worker processes, one per CPU, for 500,000 messages or more, else "
        "in the benchmark's process); the broker is the embedded Tansu. CPU counts the "
        "workers' too.",
        "Issue 10's target: >= 200,000 stamps/s.",
    ]
    if applied != stamps:
        notes.append(f"{stamps - applied:,} stamps were NOT applied: see extra.partitions.")
    return envelope(
        "bench_restore",
        "stream-expiry",
        params={
            "stamps": stamps,
            "input_topics": len(inputs),
            "partitions": PARTITIONS,
            "workers": args.workers,
            "data_bytes": args.data_bytes,
        },
        throughput=[tp, tp_read],
        extra={
            "applied": applied,
            "read": read,
            "restore_s": round(seconds, 3),
            # CPU of this process (the restore) per stamp: what the broker's share leaves.
            "restore_cpu_s": round(res["restore_cpu_s"], 3),
            "cpu_us_per_stamp": round(res["restore_cpu_s"] / max(1, applied) * 1e6, 2),
            "load_timers_s": round(res["load_timers_s"], 3),
            "partitions": res["partitions"],
            "store_disk_bytes": disk,
            "rss_before_bytes": rss0,
            "rss_after_bytes": rss1,
            "produce_s": round(float(produced["seconds"]), 3),
        },
        notes=notes,
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "restore")
    parser.add_argument("--stamps", type=int, default=None, help="stamps in the changelog")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="restore's worker processes (default: its own choice, one per CPU for "
        "500,000 messages or more)",
    )
    parser.add_argument(
        "--input-topics",
        type=int,
        choices=(1, 2, 3),
        default=3,
        help="input topics (of 4 partitions)",
    )
    parser.add_argument(
        "--data-bytes",
        type=int,
        default=0,
        help="about this many bytes of data (a chat transcript) in every stamp (default 0)",
    )
    args = parser.parse_args(argv)
    stamps = args.stamps or (args.pending if args.pending > 0 else DEFAULT_STAMPS)
    if stamps <= 0:
        parser.error("--stamps must be positive")
    quiet_logging()
    return on_embedded_broker(
        "bench_restore", lambda servers: anyio.run(run, args, servers, stamps)
    )


if __name__ == "__main__":
    sys.exit(main())

"""Bounded disk: the stores' size while many records go through create and expiry.

    python -m bench.bench_disk [--records 500000] [--rate 10000] [--ttl 5s] [--marker-grace 5s]
                               [--prune-every 2] [--tail 30]

The service (``stream_expiry.service.Service``, in this process as in ``bench.e2e_expiry``)
runs with category ``error`` given a short TTL (``--ttl``) and ``[service] marker_grace`` set
to ``--marker-grace``; the service prunes deletion markers every ``PRUNE_EVERY_S`` (5 s), which
this benchmark lowers to ``--prune-every`` by setting the module constant before it starts.

A child process produces ``--records`` creates of distinct ``error`` records at ``--rate``
per second, each with ``ts`` = the moment it is sent: every record lives ``--ttl``, is
tombstoned, its deletion marker lives ``--marker-grace`` and is pruned. Every second the benchmark
samples the files under the state directory (the partitions' RocksDB directories: SST
files, WAL, manifest) and the stores' counts (live pending records, markers). After the last
record's marker is pruned it keeps sampling for ``--tail`` seconds (RocksDB reclaims deleted
keys' space when it compacts, in the background), then compacts every store by hand
(``RocksKV.compact``) and measures once more, then compacts again forcing the bottommost
level to be rewritten (which drops the deletions' tombstones) and measures: what the live
records (none by then) need.

Reported: the peak size, the size at the end of the tail, after the manual compaction, and
the size of the same empty stores before the run (the floor), with the samples over time
(``extra.samples``). Issue 10's target: the size falls back to what live records need.
Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio

from bench.common import (
    NS_PER_MS,
    base_parser,
    envelope,
    log,
    on_embedded_broker,
    rss_bytes,
    utc_now_iso,
)
from bench.e2e_expiry import (
    PARTITIONS,
    BenchTopics,
    event_value,
    index_file_bytes,
    make_config,
    quiet_logging,
    record_identity,
    running_service,
    spawn,
    stop_child,
    temp_state_dir,
)
from stream_expiry import service as service_module
from stream_expiry.kafka import ensure_topics

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from stream_expiry.service import Service

TICKS_PER_S = 10


def disk_by_kind(state_dir: str) -> dict[str, int]:
    """Bytes under ``state_dir`` by RocksDB file kind: sst, wal (``*.log``), info log
    (``LOG*``), manifest and the rest."""
    kinds: dict[str, int] = {"sst": 0, "wal": 0, "info_log": 0, "manifest": 0, "other": 0}
    for root, _dirs, files in os.walk(state_dir):
        for name in files:
            try:
                size = os.path.getsize(os.path.join(root, name))
            except OSError:
                continue  # removed by a compaction meanwhile
            if name.endswith(".sst"):
                kind = "sst"
            elif name.endswith(".log"):
                kind = "wal"
            elif name.startswith("LOG"):
                kind = "info_log"
            elif name.startswith("MANIFEST"):
                kind = "manifest"
            else:
                kind = "other"
            kinds[kind] += size
    return kinds


async def produce_paced(bootstrap: str, topic: str, count: int, rate: int) -> int:
    """``count`` creates of distinct error records, ``rate`` per second, ts = send time."""
    from stream_expiry.kafka import OutputBuffer, producer

    per_tick = max(1, rate // TICKS_PER_S)
    sent = 0
    t0 = time.monotonic()
    async with producer(bootstrap, linger_ms=5) as prod:
        out = OutputBuffer(prod)
        while sent < count:
            now_ms = time.time_ns() // NS_PER_MS
            for i in range(sent, min(count, sent + per_tick)):
                ident = record_identity(i, "error", prefix="disk")
                await out.add(topic, ident.key.encode(), event_value(ident, now_ms))
            sent = min(count, sent + per_tick)
            for ack in await out.flush():
                await ack
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    return sent


def _producer_main(bootstrap: str, topic: str, count: int, rate: int, conn: Connection) -> None:
    t0 = time.perf_counter()
    n = asyncio.run(produce_paced(bootstrap, topic, count, rate))
    conn.send({"sent": n, "seconds": time.perf_counter() - t0})
    conn.close()


def force_compact(kv: Any) -> None:
    """A manual compaction that rewrites the bottommost level too (``RocksKV.compact`` uses
    RocksDB's default, which may move a file down without rewriting it, keeping the
    deletions' tombstones: measured, 416 kB of SST left for 50k keys put then deleted)."""
    from rocksdict import BottommostLevelCompaction, CompactOptions

    options = CompactOptions()
    options.set_bottommost_level_compaction(BottommostLevelCompaction.force())
    kv._db.compact_range(None, None, options)


def counts(service: Service) -> tuple[int, int]:
    """(live pending records, deletion markers) over the service's stores."""
    pending = markers = 0
    for proc in service.processors.values():
        pending += proc.store.counts.pending_total
        markers += proc.store.counts.markers
    return pending, markers


async def run(args: Any, bootstrap: str) -> dict[str, Any]:
    started = utc_now_iso()
    topics = BenchTopics.fresh()
    await ensure_topics(bootstrap, topics.all, partitions=PARTITIONS)
    service_module.PRUNE_EVERY_S = args.prune_every
    samples: list[dict[str, Any]] = []
    with temp_state_dir("disk") as state_dir:
        config = make_config(
            topics,
            state_dir,
            service_extra=f'marker_grace = "{args.marker_grace}"',
            defaults=("30d", "30d", args.ttl),
        )
        async with running_service(config, bootstrap) as service:
            floor = index_file_bytes(state_dir)
            t0 = time.perf_counter()

            def sample(phase: str) -> dict[str, Any]:
                pending, markers = counts(service)
                point = {
                    "t_s": round(time.perf_counter() - t0, 2),
                    "phase": phase,
                    "disk_bytes": index_file_bytes(state_dir),
                    "pending": pending,
                    "markers": markers,
                    "events": service.stats.events,
                    "tombstones": service.stats.tombstones,
                    "rss_bytes": rss_bytes(os.getpid()),
                }
                samples.append(point)
                return point

            log(f"bench_disk: producing {args.records:,} records at {args.rate:,}/s")
            proc, conn = spawn(_producer_main, bootstrap, topics.errors, args.records, args.rate)
            try:
                produced = None
                while produced is None:
                    if conn.poll():
                        produced = conn.recv()
                    p = sample("produce")
                    if len(samples) % 10 == 0:
                        log(
                            f"bench_disk: {p['events']:,} events, {p['pending']:,} pending, "
                            f"{p['markers']:,} markers, {p['disk_bytes'] / 2**20:.1f} MiB"
                        )
                    await anyio.sleep(1.0)
            finally:
                stop_child(proc)
            log("bench_disk: all produced; waiting for every record to expire and be pruned")
            deadline = time.perf_counter() + 120 + args.records / 2_000
            while True:
                p = sample("drain")
                done = p["events"] >= args.records and p["pending"] == 0 and p["markers"] == 0
                if done or time.perf_counter() > deadline:
                    break
                await anyio.sleep(1.0)
            drained = done
            log(f"bench_disk: drained={drained}; {args.tail:g}s of tail")
            tail_end = time.perf_counter() + args.tail
            while time.perf_counter() < tail_end:
                await anyio.sleep(1.0)
                sample("tail")
            end = samples[-1]
            end_kinds = disk_by_kind(state_dir)
            for proc_ in service.processors.values():
                proc_.store.kv.compact()  # type: ignore[attr-defined]  # RocksKV
            compacted = sample("compacted")
            compacted_kinds = disk_by_kind(state_dir)
            for proc_ in service.processors.values():
                force_compact(proc_.store.kv)
            forced = sample("forced")
            forced_kinds = disk_by_kind(state_dir)
            stats = service.stats.as_dict()
    peak = max(samples, key=lambda s: s["disk_bytes"])
    log(
        f"bench_disk: floor {floor / 2**20:.2f} MiB, peak {peak['disk_bytes'] / 2**20:.1f} MiB "
        f"at {peak['t_s']}s, end of tail {end['disk_bytes'] / 2**20:.2f} MiB, after compaction "
        f"{compacted['disk_bytes'] / 2**20:.2f} MiB, after a forced compaction "
        f"{forced['disk_bytes'] / 2**20:.2f} MiB"
    )
    notes = [
        f"PRUNE_EVERY_S was set to {args.prune_every:g} s for this run (5 s in the service); "
        f"marker_grace {args.marker_grace}, error TTL {args.ttl}.",
        "Disk = every file under the state directory (the partitions' RocksDB directories).",
        "Issue 10's target: the stores' size falls back to what live records need.",
    ]
    if not drained:
        notes.append("Not every record was expired and pruned before the deadline.")
    return envelope(
        "bench_disk",
        "stream-expiry",
        params={
            "records": args.records,
            "rate": args.rate,
            "ttl": args.ttl,
            "marker_grace": args.marker_grace,
            "prune_every_s": args.prune_every,
            "tail_s": args.tail,
            "partitions": PARTITIONS,
        },
        extra={
            "floor_bytes": floor,
            "peak_bytes": peak["disk_bytes"],
            "peak_at_s": peak["t_s"],
            "peak_pending": max(s["pending"] for s in samples),
            "peak_markers": max(s["markers"] for s in samples),
            "end_of_tail_bytes": end["disk_bytes"],
            "after_compaction_bytes": compacted["disk_bytes"],
            "end_of_tail_by_kind": end_kinds,
            "after_compaction_by_kind": compacted_kinds,
            "after_forced_compaction_bytes": forced["disk_bytes"],
            "after_forced_compaction_by_kind": forced_kinds,
            "drained": drained,
            "produce": produced,
            "service_stats": stats,
            "samples": samples,
        },
        notes=notes,
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "disk")
    parser.add_argument(
        "--records", type=int, default=None, help="records created (default 500,000)"
    )
    parser.add_argument("--ttl", default="5s", help="TTL of the records (category error)")
    parser.add_argument("--marker-grace", default="5s", help="[service] marker_grace")
    parser.add_argument(
        "--prune-every", type=float, default=2.0, help="seconds between prunes (service: 60)"
    )
    parser.add_argument("--tail", type=float, default=30.0, help="seconds sampled after drain")
    args = parser.parse_args(argv)
    if args.records is None:
        args.records = args.pending if args.pending > 0 else 500_000
    if args.rate == 0:  # the suite's "once" plan passes --rate 0
        args.rate = 10_000
    if args.records <= 0 or args.rate <= 0:
        parser.error("--records and --rate must be positive")
    quiet_logging()
    return on_embedded_broker("bench_disk", lambda servers: anyio.run(run, args, servers))


if __name__ == "__main__":
    sys.exit(main())

"""Soak: events in and expirations out at a steady rate for a long time; RSS, disk, lag.

    python -m bench.soak [--minutes 30] [--rate 5000] [--lead 60] [--marker-grace 2m]
                         [--prune-every 10] [--sample-every 10]

The service (``stream_expiry.service.Service``, in this process as in ``bench.e2e_expiry``)
runs on an embedded Tansu broker. A producer child sends ``--rate`` creates per second for
``--minutes``; each record (category ``error``, 10-minute TTL, created in the past) falls due
``--lead`` seconds after it is sent, so once the first ``--lead`` seconds are over the
service takes ``--rate`` events/s in and sends ``--rate`` tombstones/s out, with about
``rate x lead`` records pending in its wheel. A reader child (its own process) consumes
``expiry.tombstones`` and measures each tombstone's lag (arrival minus due time), summarised
per ``--sample-every`` window of arrival time.

Deletion markers live ``--marker-grace`` (``[service] marker_grace``; the default, 7 days,
would make the stores grow by every record deleted during the run) and are pruned every
``--prune-every`` seconds (the service's ``PRUNE_EVERY_S`` is 5 s; the benchmark lowers it
by setting the module constant).

Every ``--sample-every`` seconds: the service process's RSS, the files under the state
directory (the stores), the stores' pending records and markers, events and tombstones.
Issue 11's target: RSS and disk at the end within 10 % of their values after the first 5
minutes, lag flat. The steady state runs from t = 0 (the first due time) to t = duration -
lead (the last send); ``reference`` is its first sample at or after min(5 min, a sixth of it,
or the marker grace and one prune interval if later: markers pile up until then) and ``end``
its last sample.

Prints ONE JSON object (``bench.common.envelope``: ``lag`` over the whole run, the series in
``extra.samples`` and ``extra.lag_windows``) on stdout; progress on stderr. Each window and
``extra.decided_lag_ms`` also give the lag to the service's decision (the tombstone's
``emitted_at``), so a late window tells the service's firing from the broker's delivery.
"""

from __future__ import annotations

import array
import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from bench.common import (
    NS_PER_MS,
    NS_PER_S,
    RateSchedule,
    base_parser,
    envelope,
    log,
    on_embedded_broker,
    ratio,
    reference_and_end,
    rss_bytes,
    summarize,
    utc_now_iso,
)
from bench.e2e_expiry import (
    GC,
    LAG_PREFIX,
    PARTITIONS,
    BenchTopics,
    ProduceSpec,
    index_file_bytes,
    make_config,
    paced_producer,
    quiet_logging,
    receive,
    running_service,
    spawn,
    stop_child,
    temp_state_dir,
)
from stream_expiry import service as service_module
from stream_expiry.durations import parse_duration
from stream_expiry.kafka import ensure_topics

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from stream_expiry.service import Service


def _reader_main(
    bootstrap: str,
    topic: str,
    count: int,
    rate: int,
    start_ns: int,
    window_s: float,
    deadline_ns: int,
    conn: Connection,
) -> None:
    conn.send(
        asyncio.run(
            _read_windows(bootstrap, topic, count, rate, start_ns, window_s, deadline_ns, conn)
        )
    )
    conn.close()


async def _read_windows(
    bootstrap: str,
    topic: str,
    count: int,
    rate: int,
    start_ns: int,
    window_s: float,
    deadline_ns: int,
    conn: Connection,
) -> dict[str, Any]:
    """Tombstone lags summarised per window of arrival time, until all came or the deadline.

    Each window also says how late the service decided (``decided_p50``, ``decided_p99``:
    the tombstone's ``emitted_at`` less its due time), so a late window tells the service's
    firing from the broker's delivery."""
    from aiokafka import TopicPartition

    from stream_expiry.kafka import consumer, partitions_of
    from stream_expiry.timeutil import parse_ts

    sched = RateSchedule(rate, count, start_ns)
    seen = bytearray(count)
    windows: dict[int, array.array[float]] = {}
    decided: dict[int, array.array[float]] = {}
    got = duplicates = foreign = 0
    window_ns = int(window_s * NS_PER_S)
    async with consumer(
        bootstrap, fetch_max_wait_ms=5, max_partition_fetch_bytes=4 * 1024 * 1024
    ) as cons:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(cons, topic))]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        await cons.getmany(timeout_ms=200)
        conn.send("ready")
        while got < count and time.time_ns() < deadline_ns:
            batch = await cons.getmany(timeout_ms=100, max_records=20_000)
            t_ns = time.time_ns()
            if not batch:
                continue
            t_ms = t_ns / NS_PER_MS
            w = (t_ns - start_ns) // window_ns
            lags = windows.setdefault(w, array.array("d"))
            decisions = decided.setdefault(w, array.array("d"))
            for records in batch.values():
                for rec in records:
                    key: bytes = rec.key or b""
                    cut = key.rfind(LAG_PREFIX)
                    idx = int(key[cut + len(LAG_PREFIX) :]) if cut >= 0 else -1
                    if not 0 <= idx < count:
                        foreign += 1
                        continue
                    if seen[idx]:
                        duplicates += 1
                        continue
                    seen[idx] = 1
                    got += 1
                    due_ms = sched.due_ms(idx)
                    lags.append(t_ms - due_ms)
                    decisions.append(parse_ts(orjson.loads(rec.value)["emitted_at"]) - due_ms)
    out: list[dict[str, Any]] = []
    everything, decisions_all = array.array("d"), array.array("d")
    for w in sorted(windows):
        everything.extend(windows[w])
        decisions_all.extend(decided[w])
        late = summarize(decided[w])
        out.append(
            {
                "t_s": round(w * window_s, 1),
                **summarize(windows[w]).to_json(),
                "decided_p50": late.p50,
                "decided_p99": late.p99,
            }
        )
    return {
        "windows": out,
        "lags": everything.tobytes(),
        "decided": decisions_all.tobytes(),
        "delivered": got,
        "duplicates": duplicates,
        "foreign": foreign,
    }


def store_counts(service: Service) -> tuple[int, int]:
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
    duration_s = args.minutes * 60
    count = int(args.rate * duration_s)
    samples: list[dict[str, Any]] = []
    with temp_state_dir("soak") as state_dir:
        config = make_config(
            topics, state_dir, service_extra=f'marker_grace = "{args.marker_grace}"'
        )
        async with running_service(config, bootstrap) as service:
            # Record i is due at start + i / rate and is sent `lead` seconds before that.
            start_ns = time.time_ns() + int((args.lead + 5) * NS_PER_S)
            sched = RateSchedule(args.rate, count, start_ns)
            deadline_ns = sched.end_ns + int(args.grace * NS_PER_S)
            reader, conn = spawn(
                _reader_main,
                bootstrap,
                topics.tombstones,
                count,
                args.rate,
                start_ns,
                args.sample_every,
                deadline_ns,
            )
            try:
                if await receive(conn, 60, "tombstone reader") != "ready":
                    raise RuntimeError("tombstone reader did not start")
                spec = ProduceSpec("lag", 0, count, rate=args.rate, start_ns=start_ns)
                log(
                    f"soak: {count:,} records, {args.rate:,}/s in and out for "
                    f"{args.minutes:g} min; due {args.lead:g}s after they are sent"
                )
                async with paced_producer(
                    bootstrap,
                    spec,
                    topics,
                    rate=args.rate,
                    start_ns=start_ns,
                    lead_ns=int(args.lead * NS_PER_S),
                ) as produced:
                    t0 = time.perf_counter()
                    while time.time_ns() < deadline_ns:
                        pending, markers = store_counts(service)
                        point = {
                            "t_s": round((time.time_ns() - start_ns) / NS_PER_S, 1),
                            "rss_bytes": rss_bytes(os.getpid()),
                            "disk_bytes": index_file_bytes(state_dir),
                            "pending": pending,
                            "markers": markers,
                            "timers": sum(p.timers for p in service.processors.values()),
                            "events": service.stats.events,
                            "tombstones": service.stats.tombstones,
                        }
                        samples.append(point)
                        log(
                            f"soak: t={point['t_s']:.0f}s RSS {point['rss_bytes'] / 2**20:.0f} "
                            f"MiB, disk {point['disk_bytes'] / 2**20:.1f} MiB, {pending:,} "
                            f"pending, {markers:,} markers, {point['events']:,} in, "
                            f"{point['tombstones']:,} out"
                        )
                        if point["tombstones"] >= count:
                            break
                        await anyio.sleep(args.sample_every)
                    prod: dict[str, Any] = await produced(60)
                wait_s = (deadline_ns - time.time_ns()) / NS_PER_S + 60
                res: dict[str, Any] = await receive(conn, max(wait_s, 10), "tombstone reader")
            finally:
                stop_child(reader)
            stats = service.stats.as_dict()
            elapsed = time.perf_counter() - t0
    lags = array.array("d")
    lags.frombytes(res["lags"])
    summary = summarize(lags)
    decided = array.array("d")
    decided.frombytes(res["decided"])
    # Steady state: from t = 0 to t = duration - lead, rate in and rate out; then only out.
    # The reference waits for the stores' steady state too: markers pile up for a grace
    # before the first is pruned (a short run's sixth came before that, and read growth).
    settled_s = parse_duration(args.marker_grace) / 1000 + args.prune_every
    ref_t = min(300.0, max((duration_s - args.lead) / 6, settled_s))
    ref, end = reference_and_end(samples, ref_t, duration_s - args.lead, or_all=True)
    rss_ratio = ratio(end["rss_bytes"], ref["rss_bytes"]) if ref and end else None
    disk_ratio = ratio(end["disk_bytes"], ref["disk_bytes"]) if ref and end else None
    windows = res["windows"]
    log(
        f"soak: {res['delivered']:,}/{count:,} tombstones, p50 {summary.p50} ms, p99 "
        f"{summary.p99} ms (decided: p99 {summarize(decided).p99 if decided else None} ms); "
        f"RSS end/ref {rss_ratio}, disk end/ref {disk_ratio}"
    )
    # Sent and acknowledged, never read: the broker's, not the service's (round 48's 30
    # minutes at 5k/s: Tansu held 10 GB and served ~1k events/s from minute 15 on, and the
    # end's ratios measured a service with no input left).
    unread = int(prod.get("sent", 0)) - int(stats.get("events", 0))
    if unread > 0:
        log(
            f"soak: {unread:,} of the {int(prod['sent']):,} events sent were never read by "
            "the service: the broker fell behind, and the end's figures are of a service "
            "starved of input"
        )
    notes = [
        "The service runs in the benchmark's process; the producer and the tombstone reader "
        "are separate processes; the broker is the embedded Tansu (in memory).",
        f"PRUNE_EVERY_S was set to {args.prune_every:g} s (5 s in the service); marker_grace "
        f"{args.marker_grace}.",
        f"Reference sample at t >= {ref_t:g} s, end at the last send; issue 11's target: RSS and disk at the end "
        "within 10 % of the reference (ratio 0.9 to 1.1).",
    ]
    return envelope(
        "soak",
        "stream-expiry-soak",
        params={
            "minutes": args.minutes,
            "rate": args.rate,
            "lead_s": args.lead,
            "marker_grace": args.marker_grace,
            "prune_every_s": args.prune_every,
            "sample_every_s": args.sample_every,
            "partitions": PARTITIONS,
        },
        lag={
            "rate": args.rate,
            "seconds": duration_s,
            "scheduled": count,
            "delivered": res["delivered"],
            "missing": count - res["delivered"],
            "delivered_fraction": round(res["delivered"] / count, 6) if count else None,
            "grace_s": args.grace,
            "lag_ms": summary.to_json(),
        },
        extra={
            "reference_t_s": ref["t_s"] if ref else None,
            "end_t_s": end["t_s"] if end else None,
            "rss_end_over_reference": rss_ratio,
            "disk_end_over_reference": disk_ratio,
            "lag_p99_first_window_ms": windows[0]["p99"] if windows else None,
            "lag_p99_last_window_ms": windows[-1]["p99"] if windows else None,
            # Due -> the service's decision (the tombstone's emitted_at): the rest of the
            # lag is produce, the broker and the fetch (round 49: the soak's late tail was
            # the embedded broker's, every window's decisions p99 <= 54 ms).
            "decided_lag_ms": summarize(decided).to_json() if decided else None,
            "duplicates": res["duplicates"],
            "foreign": res["foreign"],
            "produce": prod,
            "sent_not_read": max(unread, 0),
            "elapsed_s": round(elapsed, 1),
            "service_stats": stats,
            "gc": GC.as_dict(),
            "samples": samples,
            "lag_windows": windows,
        },
        notes=notes,
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "soak")
    parser.set_defaults(rate=5_000, grace=10.0)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    parser.add_argument("--lead", type=float, default=60.0, help="seconds from send to due")
    parser.add_argument("--marker-grace", default="2m", help="[service] marker_grace")
    parser.add_argument(
        "--prune-every", type=float, default=10.0, help="seconds between prunes (service: 60)"
    )
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds per sample")
    args = parser.parse_args(argv)
    if args.rate == 0:  # the suite's "once" plan passes --rate 0
        args.rate = 5_000
    if args.rate <= 0 or args.minutes <= 0 or args.lead <= 0 or args.sample_every <= 0:
        parser.error("--rate, --minutes, --lead and --sample-every must be positive")
    quiet_logging()
    return on_embedded_broker("soak", lambda servers: anyio.run(run, args, servers))


if __name__ == "__main__":
    sys.exit(main())

"""stream-expiry end to end: ingest throughput against an aiokafka passthrough, same events.

    python -m bench.e2e_ingest [--events 200000] [--passthrough-runs 2]

N input events are produced first (by a separate process, acknowledged by the broker). Then,
in this process and on the same events:

1. **passthrough** (the ceiling the broker and the client put on any consumer): a plain
   aiokafka consumer reads the input topics from the beginning and produces one message per
   event (its key and value) with ``create_batch``/``send_batch``, one batch per input
   partition per fetch, to a topic of its own; no parsing, no state. Its clock runs from the
   first fetch to the last acknowledgement. With ``--passthrough-runs 2`` (the default) it
   runs once before and once after the service, and the better of the two is kept, so a
   busy moment does not flatter the ratio.
2. **stream-expiry**: the service (:class:`stream_expiry.service.Service`, as in
   ``bench.e2e_expiry``) on an empty state directory. The clock starts when it is ready
   (partitions assigned, restored from the empty changelog, positioned) and stops when the
   consumer group's committed offsets (read by a consumer that never joins the group) add up
   to N: every event decided, its stamps acknowledged by the broker, its state written to the
   partition's RocksDB store, its offset committed (once a second, so the end is late by up
   to a second).

Flatness: the service's decided-events counter is sampled every 20 ms; ``tenths`` are the
events/s over each tenth of the events (from the moment the counter crossed k*N/10), and
``last_over_first`` is the last tenth's rate over the first's (issue 10's target: >= 0.8).
The passthrough's tenths are reported the same way.

The workload (``bench.e2e_expiry.mixed_event``), per 20 events: 14 creates of conversations
(30-day TTL), 3 creates of sessions (30-day sliding), 2 touches of earlier sessions, 1 error
create (10 minutes); ~45-byte record keys over 997 orgs and 13 bots, all distinct (random-ish
lookups in the store); 3 input topics of 4 partitions. No record is due during the run, so no
timer fires.

Scale-out (``--instances N``, N > 1): N service instances, each in a process of its own
with its own state directory, join one consumer group, as N pods would. They start at
once; the clock runs from the first one ready (it consumes from then on, and any later
rebalance is inside the measured time) to the committed offsets covering every event. On
the 2-core machine of docs/BENCHMARKS.md the instances share the cores with the broker.

N is ``--events``; without it, ``--pending`` when the suite passes one, else 200,000. A run of
10 M events takes about 5 minutes of producing plus the service's time, and the embedded
broker holds every message in memory (~3 GiB at 10 M).
Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
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
    throughput_entry,
    utc_now_iso,
)
from bench.e2e_expiry import (
    GC,
    PARTITIONS,
    BenchTopics,
    CommittedOffsets,
    ProduceSpec,
    input_partitions,
    make_config,
    produce_in_child,
    quiet_logging,
    receive,
    running_service,
    stop_child,
    temp_state_dir,
    wait_for,
)
from stream_expiry.kafka import consumer, ensure_topics, producer

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

DEFAULT_EVENTS = 200_000
SAMPLE_S = 0.02
MAX_IN_FLIGHT = 64  # passthrough: produce requests awaiting their ack before it waits


def tenths(samples: list[tuple[float, int]], total: int) -> list[dict[str, Any]]:
    """Events/s over each tenth of ``total`` events, from (time, events so far) samples.

    Each boundary k*total/10 is timed at the first sample that reached it; a tenth whose
    boundaries fell in the same sample has no measurable rate (None).
    """
    marks: list[float] = []
    k = 0
    for t, n in samples:
        while k <= 10 and n >= k * total // 10:
            marks.append(t)
            k += 1
    out: list[dict[str, Any]] = []
    for i in range(min(10, len(marks) - 1)):
        seconds = marks[i + 1] - marks[i]
        events = (i + 1) * total // 10 - i * total // 10
        out.append(
            {
                "tenth": i + 1,
                "events": events,
                "seconds": round(seconds, 3),
                "events_per_s": round(events / seconds, 1) if seconds > 0 else None,
            }
        )
    return out


def flatness(parts: list[dict[str, Any]]) -> float | None:
    """The last tenth's rate over the first's (None when either is unmeasured)."""
    if len(parts) < 10:
        return None
    first: float | None = parts[0]["events_per_s"]
    last: float | None = parts[-1]["events_per_s"]
    if not first or last is None:
        return None
    return round(last / first, 3)


async def passthrough(
    bootstrap: str, inputs: tuple[str, ...], out_topic: str, events: int
) -> dict[str, Any]:
    """Consume ``events`` input events and produce one message per event: no processing."""
    tps = input_partitions(inputs)
    samples: list[tuple[float, int]] = []
    async with (
        consumer(bootstrap, max_partition_fetch_bytes=4 * 1024 * 1024) as cons,
        producer(bootstrap) as prod,
    ):
        out_partitions = len(await prod.partitions_for(out_topic))
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        acks: list[Any] = []
        done = 0
        t0 = time.perf_counter()
        samples.append((t0, 0))
        while done < events:
            batch = await cons.getmany(timeout_ms=100, max_records=5000)
            for tp, records in batch.items():
                partition = tp.partition % out_partitions
                out = prod.create_batch()
                for rec in records:
                    if out.append(key=rec.key, value=rec.value, timestamp=None) is None:
                        acks.append(await prod.send_batch(out, out_topic, partition=partition))
                        out = prod.create_batch()
                        out.append(key=rec.key, value=rec.value, timestamp=None)
                acks.append(await prod.send_batch(out, out_topic, partition=partition))
                done += len(records)
            while len(acks) > MAX_IN_FLIGHT:
                await acks.pop(0)
            samples.append((time.perf_counter(), done))
        for ack in acks:
            await ack
        seconds = time.perf_counter() - t0
    samples.append((t0 + seconds, done))
    parts = tenths(samples, events)
    return {
        "events": done,
        "seconds": round(seconds, 3),
        "events_per_s": round(done / seconds, 1),
        "tenths": parts,
        "last_over_first": flatness(parts),
    }


async def ingest(
    bootstrap: str, topics: BenchTopics, events: int, state_dir: str, profile: str | None = None
) -> dict[str, Any]:
    """The service on an empty state directory, until the group has committed every event."""
    config = make_config(topics, state_dir)
    tps = input_partitions(topics.inputs)
    t_start = time.perf_counter()
    async with (
        running_service(config, bootstrap) as service,
        CommittedOffsets(bootstrap, config.group_id, tps) as committed,
    ):
        t_ready = time.perf_counter()
        log(f"e2e ingest: service ready after {t_ready - t_start:.1f}s; ingesting")
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        samples: list[tuple[float, int]] = [(t_ready, 0)]
        last_log = t_ready

        def counted() -> bool:
            nonlocal last_log
            now = time.perf_counter()
            n = service.stats.events
            if n != samples[-1][1]:
                samples.append((now, n))
            if now - last_log >= 10:
                k = next(i for i in range(len(samples) - 1, -1, -1) if samples[i][0] <= now - 10)
                rate = (n - samples[k][1]) / (now - samples[k][0])
                log(f"e2e ingest: {n:,} events ({rate:,.0f}/s over the last 10 s)")
                last_log = now
            return n >= events

        t_counted = await wait_for(counted, 600 + events / 2_000, "ingest", poll_s=SAMPLE_S)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(profile))
            log(f"e2e ingest: profile of the ingest written to {profile}")
        total = await committed_all(committed, events, timeout_s=60)
        t_done = time.perf_counter()
        stats = service.stats.as_dict()
        stores = {
            f"{t}[{p}]": proc.store.counts.pending_total
            for (t, p), proc in service.processors.items()
        }
        rss = rss_bytes(os.getpid())
    parts = tenths(samples, events)
    return {
        "ready_s": round(t_ready - t_start, 3),
        "counted_s": round(t_counted - t_ready, 3),
        "committed_s": round(t_done - t_ready, 3),
        "events_per_s": round(events / (t_done - t_ready), 1),
        "committed_total": total,
        "tenths": parts,
        "last_over_first": flatness(parts),
        "service_stats": stats,
        "gc": GC.as_dict(),
        "pending_in_stores": sum(stores.values()),
        "rss_after_bytes": rss,
    }


async def committed_all(committed: CommittedOffsets, events: int, *, timeout_s: float) -> int:
    """Poll the group's committed offsets until they cover ``events``; returns their sum."""
    deadline = time.monotonic() + timeout_s
    while (total := await committed.total()) < events:
        if time.monotonic() > deadline:
            msg = f"committed offsets at {total:,} of {events:,} after {timeout_s:g} s"
            raise TimeoutError(msg)
        await anyio.sleep(0.02)  # a poll interval: the committed offsets decide
    return total


def _instance_main(bootstrap: str, prefix: str, state_dir: str, conn: Connection) -> None:
    """A child: one instance of the group, until the parent says ``stop``."""
    quiet_logging()
    anyio.run(_instance, bootstrap, prefix, state_dir, conn)


async def _instance(bootstrap: str, prefix: str, state_dir: str, conn: Connection) -> None:
    config = make_config(BenchTopics(prefix), state_dir)
    async with running_service(config, bootstrap, ready_timeout_s=120) as service:
        conn.send(("ready", time.time()))  # wall clock: the parent compares across processes
        await anyio.to_thread.run_sync(conn.poll, None)  # until the parent says stop
        conn.send(
            (
                "done",
                {
                    "events": service.stats.events,
                    "partitions_at_end": len(service.processors),
                    "rss_bytes": rss_bytes(os.getpid()),
                },
            )
        )


async def ingest_instances(
    bootstrap: str, topics: BenchTopics, events: int, instances: int
) -> dict[str, Any]:
    """``instances`` services in one group, each in its own process, until the group has
    committed every event."""
    ctx = mp.get_context("spawn")
    tps = input_partitions(topics.inputs)
    group_id = make_config(topics, "unused").group_id
    children: list[tuple[Any, Connection]] = []
    with contextlib.ExitStack() as cleanup:
        for i in range(instances):
            state_dir = cleanup.enter_context(temp_state_dir(f"ingest{i}"))
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_instance_main,
                args=(bootstrap, topics.prefix, state_dir, theirs),
                daemon=True,
            )
            proc.start()
            cleanup.callback(stop_child, proc)
            theirs.close()
            children.append((proc, ours))
        async with CommittedOffsets(bootstrap, group_id, tps) as committed:
            readies = [
                float((await receive(conn, 180, f"instance {i}"))[1])
                for i, (_, conn) in enumerate(children)
            ]
            t0 = min(readies)
            log(
                f"e2e ingest: {instances} instances ready, {max(readies) - t0:.1f}s apart; "
                "ingesting"
            )
            total = await committed_all(committed, events, timeout_s=600 + events / 2_000)
            t_done = time.time()
        ends = []
        for i, (_, conn) in enumerate(children):
            conn.send("stop")
            ends.append((await receive(conn, 60, f"instance {i}"))[1])
    return {
        "instances": instances,
        "ready_spread_s": round(max(readies) - t0, 3),
        "committed_s": round(t_done - t0, 3),
        "events_per_s": round(events / (t_done - t0), 1),
        "committed_total": total,
        "per_instance": ends,
        "tenths": [],
        "last_over_first": None,
    }


async def run(args: Any, bootstrap: str, events: int) -> dict[str, Any]:
    started = utc_now_iso()
    topics = BenchTopics.fresh()
    runs = max(0, args.passthrough_runs)
    outs = [f"{topics.prefix}.passthrough{i}" for i in range(runs)]
    await ensure_topics(bootstrap, [*topics.inputs, *outs], partitions=PARTITIONS)
    log(f"e2e ingest: producing {events:,} events")
    ts = time.time_ns() // NS_PER_MS - events // 10 - 60_000  # all in the recent past
    produced = await produce_in_child(
        bootstrap,
        ProduceSpec("mixed", 0, events, ts_ms=ts),
        topics,
        timeout_s=600 + events / 10_000,
    )
    log(f"e2e ingest: produced in {produced['seconds']:.1f}s")
    passes: list[dict[str, Any]] = []
    if runs:
        passes.append(await passthrough(bootstrap, topics.inputs, outs[0], events))
        log(f"e2e ingest: passthrough {passes[-1]['events_per_s']:,.0f} events/s")
    if args.instances > 1:
        svc = await ingest_instances(bootstrap, topics, events, args.instances)
    else:
        with temp_state_dir("ingest") as state_dir:
            svc = await ingest(bootstrap, topics, events, state_dir, args.profile)
    log(
        f"e2e ingest: stream-expiry ({args.instances} instance(s)) "
        f"{svc['events_per_s']:,.0f} events/s (committed after "
        f"{svc['committed_s']:.1f}s); last/first tenth {svc['last_over_first']}"
    )
    for out in outs[1:]:
        passes.append(await passthrough(bootstrap, topics.inputs, out, events))
        log(f"e2e ingest: passthrough {passes[-1]['events_per_s']:,.0f} events/s")
    best = max(passes, key=lambda p: p["events_per_s"]) if passes else None
    ratio = round(svc["events_per_s"] / best["events_per_s"], 3) if best else None
    throughput = [
        throughput_entry(
            "ingest: decided, stamped, stored, committed",
            events,
            svc["committed_s"],
            method="pre-produced events; from the service ready to the group's committed "
            "offsets covering every event (stamps acked and states stored before each commit)",
            unit="events/s",
        )
    ]
    if best is not None:
        throughput.append(
            throughput_entry(
                "aiokafka passthrough (same events)",
                events,
                best["seconds"],
                method="consume the input topics, send_batch one message per event, wait for "
                "the acks; no processing",
                unit="events/s",
            )
        )
    where = (
        "the service runs in the benchmark's process, as does the passthrough (one after the "
        "other, never at once)"
        if args.instances == 1
        else f"{args.instances} service instances run in one group, a process each; the "
        "passthrough runs in the benchmark's process, never at the same time"
    )
    notes = [
        f"Events were produced before anything was timed; {where}; the broker is the "
        "embedded Tansu on loopback, sharing the cores.",
        "Issue 10's targets: last tenth >= 0.8 x first tenth; service >= 0.4 x passthrough.",
    ]
    if ratio is not None:
        notes.append(
            f"service / passthrough = {ratio} "
            f"({svc['events_per_s']:,.0f} vs {best['events_per_s']:,.0f} events/s)."  # type: ignore[index]
        )
    return envelope(
        "e2e_ingest",
        "stream-expiry" if args.instances == 1 else f"stream-expiry-{args.instances}-instances",
        params={
            "events": events,
            "passthrough_runs": runs,
            "rate": args.rate,
            "seconds": args.seconds,
            "pending": args.pending,
            "partitions": PARTITIONS,
            "instances": args.instances,
        },
        throughput=throughput,
        extra={
            "service": svc,
            "passthrough": passes,
            "ratio_to_passthrough": ratio,
            "last_over_first": svc["last_over_first"],
            "produce": {
                "seconds": round(float(produced["seconds"]), 3),
                "events_per_s": round(events / float(produced["seconds"]), 1),
            },
            "workload": "per 20 events: 14 conversation creates, 3 session creates, "
            "2 session touches, 1 error create",
        },
        notes=notes,
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "e2e ingest")
    parser.add_argument(
        "--events", type=int, default=None, help=f"events to ingest (default {DEFAULT_EVENTS:,})"
    )
    parser.add_argument(
        "--passthrough-runs",
        type=int,
        default=2,
        help="passthrough runs: 1 before the service, 2 before and after (0: none)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="write a cProfile of the service's ingest (this process) to FILE (pstats)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="service instances in one group, each in a process of its own (default 1: "
        "one, in this process)",
    )
    args = parser.parse_args(argv)
    events = args.events or (args.pending if args.pending > 0 else DEFAULT_EVENTS)
    if events <= 0:
        parser.error("--events must be positive")
    if args.instances < 1:
        parser.error("--instances must be 1 or more")
    if args.instances > 1 and args.profile:
        parser.error("--profile profiles the in-process service: use --instances 1")
    quiet_logging()
    return on_embedded_broker("e2e ingest", lambda servers: anyio.run(run, args, servers, events))


if __name__ == "__main__":
    sys.exit(main())

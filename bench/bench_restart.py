"""Restart time to the first tombstone, with 1 M pending records in the index.

    python -m bench.bench_restart [--pending 1000000] [--due 1000] [--no-compare-empty]

The situation after an outage: the index holds ``--pending`` records (written straight into
it with ``Index.write``, as in ``bench.bench_memory``: expiring over the next year), of which
the first ``--due`` expired during the last hour while the service was down. A reader of
``expiry.tombstones`` (its own process) is subscribed first; then the clock starts and the
service is started as a process, ``python -m stream_expiry run --config FILE``, on an
embedded Tansu broker with the topics already created.

Measured from the moment the process is spawned (so Python's start and imports count):

* ``to_join_s``: the log line "joining group" (topics checked, policies and tombstones read);
* ``to_ready_s``: the log line "assigned ...: K timers within the horizon" (group joined,
  positioned, the horizon loaded from the index, due timers included);
* ``to_first_tombstone_s``: the first tombstone received by the reader;
* ``to_all_due_s``: the last of the ``--due`` tombstones received.

Unless ``--no-compare-empty``, the same is measured with only the due records in the index,
so the cost of the pending ones shows. On Tansu every JoinGroup is held ~3 s by the broker
(../shared/BROKER.md): most of ``to_ready_s`` is that wait, not the service.

``--pending`` defaults to 1,000,000 (also under the suite, which passes its own count).
Prints ONE JSON object (``bench.common.envelope``, results under ``extra.runs``) on stdout;
progress on stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

import anyio

from bench.bench_memory import ServiceProcess, all_topics, write_config, write_index
from bench.common import (
    NS_PER_MS,
    NS_PER_S,
    base_parser,
    emit_result,
    envelope,
    human_count,
    log,
    rss_bytes,
    utc_now_iso,
)
from bench.e2e_expiry import PARTITIONS, BenchTopics, temp_state_dir, tombstone_reader
from stream_expiry.broker import EmbeddedBroker
from stream_expiry.kafka import ensure_topics

_JOIN = re.compile(r"joining group")
_READY = re.compile(r"assigned .*: (\d+) timers within the horizon")
TIMEOUT_S = 120.0


async def measure(bootstrap: str, pending: int, due: int) -> dict[str, Any]:
    topics = BenchTopics.fresh()
    await ensure_topics(bootstrap, all_topics(topics), partitions=PARTITIONS)
    now_ms = time.time_ns() // NS_PER_MS
    total = max(pending, due)
    with temp_state_dir(f"restart{human_count(total)}") as state_dir:
        log(f"bench_restart: writing {total:,} records ({due:,} due) into the index")
        written = await write_index(state_dir, topics, total, now_ms, due_in_past=due)
        config_path = write_config(topics, state_dir)
        deadline_ns = time.time_ns() + int(TIMEOUT_S * NS_PER_S)
        try:
            async with tombstone_reader(
                bootstrap, topics.tombstones, due, 1, 0, deadline_ns
            ) as result:
                svc = ServiceProcess(config_path, bootstrap)
                log("bench_restart: starting the service")
                svc.start()
                try:
                    res: dict[str, Any] = await result(TIMEOUT_S + 30)
                    t_join, _ = svc.wait_line(_JOIN, 5)
                    t_ready, m = svc.wait_line(_READY, 5)
                    rss = rss_bytes(svc.pid)
                finally:
                    code = await anyio.to_thread.run_sync(svc.stop)
        finally:
            await anyio.Path(config_path).unlink(missing_ok=True)
    t0 = svc.started_ns
    first = res["first_arrival_ns"]
    last = res["last_arrival_ns"]
    delivered = int(res["delivered"])
    out = {
        "pending": total,
        "due": due,
        "delivered_due": delivered,
        "to_join_s": round((t_join - t0) / NS_PER_S, 3),
        "to_ready_s": round((t_ready - t0) / NS_PER_S, 3),
        "to_first_tombstone_s": None if first is None else round((first - t0) / NS_PER_S, 3),
        "to_all_due_s": None
        if last is None or delivered < due
        else round((last - t0) / NS_PER_S, 3),
        "timers_loaded": int(m.group(1)),
        "rss_bytes": rss,
        "exit_code": code,
        "duplicates": res["duplicates"],
        "index_write_s": written["seconds"],
        "index_file_bytes": written["file_bytes"],
    }
    log(
        f"bench_restart: {human_count(total)} in the index: join {out['to_join_s']}s, ready "
        f"{out['to_ready_s']}s, first tombstone {out['to_first_tombstone_s']}s, all "
        f"{delivered}/{due} due {out['to_all_due_s']}s"
    )
    return out


async def run(args: Any, bootstrap: str) -> dict[str, Any]:
    started = utc_now_iso()
    pending = args.pending if args.pending > 0 else 1_000_000
    due = max(1, args.due)
    runs = [await measure(bootstrap, pending, due)]
    if args.compare_empty:
        runs.append(await measure(bootstrap, 0, due))
    main_run = runs[0]
    notes = [
        "Times are from spawning `python -m stream_expiry run` (interpreter start and imports "
        "included) to each event; the tombstone reader is a separate process subscribed "
        "beforehand.",
        "Tansu holds every JoinGroup ~3 s, which dominates to_ready_s; a Kafka broker with "
        "group.initial.rebalance.delay.ms=0 answers a lone member at once.",
    ]
    if main_run["to_all_due_s"] is None:
        notes.append(
            f"Only {main_run['delivered_due']} of {due} due tombstones arrived within "
            f"{TIMEOUT_S:g}s."
        )
    return envelope(
        "bench_restart",
        "stream-expiry",
        params={
            "pending": pending,
            "due": due,
            "compare_empty": args.compare_empty,
            "partitions": PARTITIONS,
        },
        extra={"runs": runs},
        notes=notes,
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "restart")
    parser.add_argument(
        "--due", type=int, default=1000, help="records that expired while the service was down"
    )
    parser.add_argument(
        "--compare-empty",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure with only the due records in the index (default: yes)",
    )
    args = parser.parse_args(argv)
    with EmbeddedBroker() as broker:
        log(f"bench_restart: embedded broker on {broker.bootstrap_servers}")
        result = anyio.run(run, args, broker.bootstrap_servers)
    emit_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""stream-expiry end to end: ``replay`` from ``expiry.stamped``, its rate and its peak RSS.

    python -m bench.e2e_replay [--records 1000000] [--workers N] [--memory-limit MIB]

Setup (not timed): ``--records`` stamps are produced on ``expiry.stamped`` as a running
service leaves them (``bench.changelog``: the right partitions, the source headers, values by
``model.encode_stamp``; records of the three input topics, 1-year TTLs). The config gives
every category a 365-day TTL, so re-derivation must find every record ``unchanged``: the
JSON says whether it did.

Timed: ``stream_expiry.replay.replay(config, bootstrap, environ={}, dry_run=True)`` (the
default source, ``expiry.stamped``: each stamp re-derived and compared as the topic streams,
the verdict of each key's latest message kept in a temporary RocksDB and counted at the
end) in a CHILD process (multiprocessing ``spawn``) that does
nothing else, so its peak RSS (``getrusage`` ``ru_maxrss``, i.e. VmHWM) is replay's own:
interpreter, imports, aiokafka's fetch buffers, RocksDB's memtables and block cache. Rate =
records / wall seconds of the call, in the child. With worker processes (replay's default
for 500,000 stamps or more on a machine of several CPUs), the peak RSS reported is the
child's plus every worker's (an upper bound: their peaks need not coincide), and each is
in the JSON.

``--apply``: a config whose TTLs are 30 days moves every record (``earlier``), and the
replay publishes every changed stamp and mends what another writer put after its read
(:mod:`stream_expiry.replay_mend`: a second read of what it wrote); the rate is of that
whole applied replay.

``--memory-limit MIB`` runs the child (and so its workers) in a memory cgroup limited to
MIB, as a container would (:mod:`bench.cgroup`): the sum of peak RSS counts the
interpreter's and the libraries' pages once per process, while the cgroup charges each page
once. The run then either completes under the limit or is killed by the kernel's OOM
killer; the JSON says which (``extra.cgroup``), and a killed run fails the benchmark.

Issue 10's targets: >= 200,000 records/s with RSS <= 200 MiB at 10 M records.

``--records`` defaults to 1,000,000 (``--pending`` when the suite passes one).
Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio

from bench.cgroup import CgroupUnavailable, MemoryCgroup, open_cgroup
from bench.changelog import fresh_changelog
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
    make_config,
    quiet_logging,
    receive,
    spawn,
    stop_child,
    temp_state_dir,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

DEFAULT_RECORDS = 1_000_000
YEAR = ("365d", "365d", "365d")
MONTH = ("30d", "30d", "30d")  # --apply: every record earlier


def _replay_main(
    bootstrap: str,
    prefix: str,
    state_dir: str,
    workers: int | None,
    cgroup: MemoryCgroup | None,
    apply: bool,
    conn: Connection,
) -> None:
    """The child: one replay call, then its report, time and peak RSS to the parent."""
    if cgroup is not None:
        cgroup.join()  # before the imports: everything the replay allocates is charged
    from stream_expiry.replay import replay

    config = make_config(BenchTopics(prefix), state_dir, defaults=MONTH if apply else YEAR)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    report = asyncio.run(replay(config, bootstrap, environ={}, dry_run=not apply, workers=workers))
    seconds = time.perf_counter() - t0
    conn.send(
        {
            "counts": report.counts(),
            "seconds": seconds,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_rss_before_bytes": rss0,
            "worker_peak_rss_bytes": report.worker_rss,
        }
    )
    conn.close()


async def run(args: Any, bootstrap: str, records: int) -> dict[str, Any]:
    started = utc_now_iso()
    try:  # before the stamps are produced: a run that cannot be limited stops at once
        cgroup = None if args.memory_limit is None else open_cgroup(args.memory_limit * 2**20)
    except CgroupUnavailable as exc:
        raise SystemExit(f"e2e replay: --memory-limit: {exc}") from None
    try:
        topics, produced = await fresh_changelog(bootstrap, records, what="e2e replay")
        log(f"e2e replay: replay(dry_run={not args.apply}) in a child")
        with temp_state_dir("replay") as state_dir:
            proc, conn = spawn(
                _replay_main,
                bootstrap,
                topics.prefix,
                state_dir,
                args.workers,
                cgroup,
                args.apply,
                daemon=False,
            )
            try:
                res: dict[str, Any] = await receive(conn, 600 + records / 2_000, "replay child")
            except EOFError:
                kills = 0 if cgroup is None else cgroup.oom_kills()
                why = f"{kills} process(es) OOM-killed in its cgroup" if kills else "see above"
                limit = "" if cgroup is None else f" within {args.memory_limit} MiB"
                msg = f"e2e replay: the replay did not complete{limit} ({why})"
                raise SystemExit(msg) from None
            finally:
                stop_child(proc)
        cgroup_report = None if cgroup is None else _cgroup_report(cgroup)
    finally:
        if cgroup is not None:
            cgroup.remove()
    counts = res["counts"]
    seconds = float(res["seconds"])
    workers = [int(b) for b in res["worker_peak_rss_bytes"]]
    # With workers, the memory of the replay is theirs plus the parent's: their peaks are
    # added (whether or not they coincided, so this is an upper bound).
    peak = int(res["peak_rss_bytes"]) + sum(workers)
    tp = throughput_entry(
        "replay, applied (from expiry.stamped)"
        if args.apply
        else "replay --dry-run (from expiry.stamped)",
        counts["records"],
        seconds,
        method=f"stream_expiry.replay.replay(dry_run={not args.apply}) in a child process: stream "
        "expiry.stamped, re-derive and compare each stamp, keep each key's latest verdict "
        "in a temporary RocksDB, count them",
        unit="records/s",
    )
    expected = "moved" if args.apply else "unchanged"
    moved = counts["records"] - counts["unchanged"]
    unchanged = (moved if args.apply else counts["unchanged"]) == counts["records"] == records
    log(
        f"e2e replay: {counts['records']:,} records in {seconds:.2f}s: "
        f"{tp['value']:,.0f} records/s, peak RSS {peak / 2**20:.0f} MiB"
        + (
            f" ({len(workers)} workers: "
            + ", ".join(f"{b / 2**20:.0f}" for b in workers)
            + f" MiB, parent {int(res['peak_rss_bytes']) / 2**20:.0f} MiB)"
            if workers
            else " (one process)"
        )
        + (
            ""
            if cgroup_report is None
            else f"; completed in a {args.memory_limit} MiB memory cgroup "
            f"(v{cgroup_report['version']}, peak charge "
            f"{(cgroup_report['peak_bytes'] or 0) / 2**20:.0f} MiB, page cache included)"
        )
    )
    notes = [
        "Replay ran alone in a child process against the embedded Tansu broker on loopback; "
        "its peak RSS is that process's high-water mark (ru_maxrss), plus each worker's "
        "when replay shared the partitions among worker processes (an upper bound).",
        "Issue 10's targets: >= 200,000 records/s and peak RSS <= 200 MiB at 10 M records.",
    ]
    if cgroup_report is not None:
        notes.append(
            "extra.cgroup: the replay ran in a memory cgroup limited to limit_bytes (what a "
            "container enforces: each page charged once, page cache included) and completed; "
            "peak_bytes is the most it was charged, about the limit whenever RocksDB's files "
            "filled the page cache up to it."
        )
    if not unchanged:
        notes.append(f"Replay did NOT find every record {expected}: see extra.counts.")
    return envelope(
        "e2e_replay",
        "stream-expiry",
        params={
            "records": records,
            "source": "expiry.stamped",
            "rate": args.rate,
            "seconds": args.seconds,
            "pending": args.pending,
            "partitions": PARTITIONS,
            "workers": args.workers,
            "memory_limit_mib": args.memory_limit,
            "apply": args.apply,
        },
        throughput=[tp],
        extra={
            "counts": counts,
            f"all_{expected}": unchanged,
            "peak_rss_bytes": peak,
            "peak_rss_mib": round(peak / 2**20, 1),
            "child_rss_before_replay_bytes": res["peak_rss_before_bytes"],
            "parent_peak_rss_bytes": res["peak_rss_bytes"],
            "worker_peak_rss_bytes": workers,
            "produce_s": round(float(produced["seconds"]), 3),
            "cgroup": cgroup_report,
        },
        notes=notes,
        started_at=started,
    )


def _cgroup_report(cgroup: MemoryCgroup) -> dict[str, Any]:
    return {
        "version": cgroup.version,
        "limit_bytes": cgroup.limit_bytes,
        "peak_bytes": cgroup.peak_bytes(),
        "oom_kills": cgroup.oom_kills(),
        "completed": True,
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "e2e replay")
    parser.add_argument(
        "--records",
        "--events",
        dest="records",
        type=int,
        default=None,
        help=f"stamps on expiry.stamped (default {DEFAULT_RECORDS:,})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="replay's worker processes (default: replay's own choice, one per CPU for "
        "500,000 stamps or more)",
    )
    parser.add_argument(
        "--memory-limit",
        type=int,
        default=None,
        metavar="MIB",
        help="run the replay in a memory cgroup limited to MIB, as a container would "
        "(needs root); the benchmark fails if the replay is OOM-killed",
    )
    parser.add_argument(
        "--apply",
        action="store_true",
        help="a policy that moves every record, applied: publish and mend (default: a dry "
        "run that finds every record unchanged)",
    )
    args = parser.parse_args(argv)
    records = args.records or (args.pending if args.pending > 0 else DEFAULT_RECORDS)
    if records <= 0:
        parser.error("--records must be positive")
    quiet_logging()
    return on_embedded_broker("e2e replay", lambda servers: anyio.run(run, args, servers, records))


if __name__ == "__main__":
    sys.exit(main())

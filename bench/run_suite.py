"""Run every benchmark the suite knows, save each JSON result, then plot and tabulate them.

    python -m bench.run_suite [--quick | --targets] [--out results/DATE] [--only redis]
                              [--rates 1000,10000]

Each benchmark is a module run as ``python -m MODULE --rate R --seconds S --pending N
--grace G [variant args]`` in its own process; it prints one JSON object on stdout (see
``bench.common.envelope``) and its progress on stderr, which is passed through. The results
land in ``OUT/<module>[-variant]-<kind>[-rate].json``, with ``OUT/suite.json`` listing every run,
skip and failure; then ``bench.plot`` writes ``lag.png``, ``throughput.png``, ``memory.png``
and ``RESULTS.md`` in ``OUT``.

Modules in :data:`REGISTRY` that are not present yet are skipped with a note. Modules named
``bench.e2e_*`` found in the ``bench`` folder but missing from the registry are run with the
default plan (``lag`` per rate, then ``memory``).

Plans, i.e. which invocations a module gets:
- ``lag``: once per rate, ``--rate R --seconds S --pending 0`` (expect ``lag`` in the JSON);
- ``memory``: once, ``--rate 0 --seconds S --pending N`` (expect ``memory``), first variant only;
- ``once``: once, ``--rate 0 --seconds S --pending N`` (throughput-style: ingest, replay);
- ``own``: once, with the entry's own arguments only (a benchmark with flags of its own:
  ``bench.bench_sinks``, the stores' deletes/s end to end through Kafka).

Sizes: the default run (rates 1k, 10k, 50k; 10 s windows; 5 s grace; 1 M pending, 1 M
events for ingest, replay and memory, a 5-minute soak, 500k records through each store)
takes 27-33 minutes on 2 cores (24 in round 43 and 29 in round 47 without the stores);
``--quick`` (same rates; 1 s windows; 1 s grace; 100k everywhere; a 1-minute soak; 50k
records through each store) about 5; ``--targets`` the sizes issues 10 and 11 state their
targets at: 10 M events for ingest, replay and memory, a 30-minute soak (several hours).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import importlib.util
import json
import os
import pkgutil
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import human_count, log, machine_info, utc_now_iso


@dataclass(frozen=True)
class Entry:
    """One benchmark module and how the suite runs it.

    ``args`` are extra arguments for this entry; ``{pending}`` in them is replaced by the
    suite's pending count. List a module several times to run several variants of it (each
    variant names its own ``system`` in its JSON, so it gets its own bars in the plots).
    """

    module: str
    plans: tuple[str, ...] = ("lag", "memory")
    args: tuple[str, ...] = ()
    # Rates for the lag plan; None = the suite's rates.
    rates: tuple[int, ...] | None = None
    what: str = ""


REGISTRY: list[Entry] = [
    # stream-expiry end to end on the real broker. {pending}, {big}, {soak_minutes} and
    # {sink_records} are the suite's sizes (see FULL, QUICK and TARGETS below).
    Entry("bench.e2e_expiry", ("lag", "memory"), what="stream-expiry tombstone lag and RSS"),
    Entry(
        "bench.e2e_expiry",
        ("lag",),
        ("--background", "{pending}"),
        rates=(10_000,),
        what="stream-expiry with far-future records pending during the lag run (as the peers)",
    ),
    Entry(
        "bench.e2e_expiry",
        ("lag",),
        ("--ingest-rate", "20000"),
        rates=(10_000,),
        what="stream-expiry lag while 20k far-future events/s are ingested",
    ),
    Entry(
        "bench.e2e_ingest",
        ("once",),
        ("--events", "{big}"),
        what="stream-expiry ingest throughput against an aiokafka passthrough",
    ),
    Entry(
        "bench.e2e_ingest",
        ("once",),
        ("--instances", "2", "--events", "{big}"),
        what="the same with two instances in one group, a process each (scale-out)",
    ),
    Entry(
        "bench.e2e_replay",
        ("once",),
        ("--records", "{big}"),
        what="stream-expiry replay from expiry.stamped: rate and peak RSS",
    ),
    Entry(
        "bench.bench_restore",
        ("once",),
        what="stream-expiry restore rate from expiry.stamped into empty stores",
    ),
    Entry("bench.bench_engine", ("once",), what="stream-expiry pure engine events/s (no IO)"),
    Entry(
        "bench.bench_memory",
        ("once",),
        ("--counts", "0,{pending},{big}"),
        what="stream-expiry service RSS with pending records preloaded in its stores",
    ),
    Entry(
        "bench.bench_restart",
        ("once",),
        what="stream-expiry restart (warm and cold) to the first tombstone with pending records",
    ),
    Entry(
        "bench.bench_disk",
        ("once",),
        what="stream-expiry store size on disk through create, expiry and pruning",
    ),
    Entry(
        "bench.soak",
        ("once",),
        ("--minutes", "{soak_minutes}"),
        what="stream-expiry soak: 5k/s in and out, RSS, disk and lag over time",
    ),
    Entry(
        "bench.bench_sinks",
        ("own",),
        ("--stores", "sqlite,postgres", "--batches", "", "--kafka-records", "{sink_records}"),
        what="the stores (SQLite, PostgreSQL) end to end through Kafka: each record's stamp "
        "written, its tombstone read, its row deleted, the receipt published, offsets committed",
    ),
    Entry(
        "bench.bench_transport",
        ("lag",),
        ("--tick-ms", "10", "--linger-ms", "0"),
        rates=(10_000,),
        what="the floor under every lag: produce -> broker -> a consumer, no stream-expiry code",
    ),
    Entry(
        "bench.bench_transport",
        ("lag",),
        ("--tick-ms", "10", "--linger-ms", "0", "--shape", "service"),
        rates=(10_000,),
        what="the same floor with the service's traffic: a null beside each tombstone, "
        "the stamps of the run written first",
    ),
    # Peers.
    Entry(
        "bench.peers.redis_expiry",
        ("lag", "memory"),
        ("--hz", "10"),
        what="Redis PXAT keys + __keyevent@0__:expired, default hz",
    ),
    Entry("bench.peers.redis_expiry", ("lag",), ("--hz", "100"), what="Redis with hz 100"),
    Entry(
        "bench.peers.redis_expiry",
        ("lag",),
        ("--hz", "10", "--stream-lead", "1"),
        rates=(1000, 10_000),  # at 50k/s the Python writer cannot keep ahead on 2 cores
        what="Redis with keys written 1 s before due (few keys with a TTL at once)",
    ),
    Entry(
        "bench.peers.redis_expiry",
        ("lag",),
        ("--hz", "10", "--background", "{pending}"),
        rates=(10_000,),
        what="Redis with far-future keys pending during the lag run",
    ),
    Entry(
        "bench.peers.pg_sweep",
        ("lag", "memory"),
        what="PostgreSQL DELETE sweep every 100 ms, rows forwarded through Kafka to a consumer",
    ),
    Entry(
        "bench.peers.pg_sweep",
        ("lag",),
        ("--background", "{pending}"),
        rates=(10_000,),
        what="PostgreSQL sweep with far-future rows pending",
    ),
]

# Sizes. {big} is the count of the 10 M targets of issue 10 (ingest, replay, memory) and
# {soak_minutes} the soak's length; the default run keeps both at a size that fits in half an
# hour. {sink_records}: the records each store takes end to end (issue 11: at least 500k).
FULL = {
    "rates": [1000, 10_000, 50_000],
    "seconds": 10.0,
    "pending": 1_000_000,
    "grace": 5.0,
    "big": 1_000_000,
    "soak_minutes": 5,
    "sink_records": 500_000,
}
QUICK = {
    "rates": [1000, 10_000, 50_000],
    "seconds": 1.0,
    "pending": 100_000,
    "grace": 1.0,
    "big": 100_000,
    "soak_minutes": 1,
    "sink_records": 50_000,
}
# --targets: the sizes issues 10 and 11 state their targets at (several hours on 2 cores).
TARGETS = {**FULL, "big": 10_000_000, "soak_minutes": 30}
_SHORT_FLAGS = {"background": "bg"}


# End-to-end benchmarks run by hand only: their own flags, sizes that are their subject.
BY_HAND = frozenset({"bench.e2e_partitions"})


def discover_e2e() -> list[str]:
    """``bench.e2e_*`` modules present in the bench package folder, those run by hand
    aside (round 26's e2e_partitions was taken into the suite and failed on its flags)."""
    folder = Path(__file__).resolve().parent
    found = (f"bench.{m.name}" for m in pkgutil.iter_modules([str(folder)]))
    return sorted(m for m in found if m.startswith("bench.e2e_") and m not in BY_HAND)


def module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def variant_tag(args: tuple[str, ...]) -> str:
    """('--hz', '100', '--background', '1000000') -> 'hz100-bg1M'."""
    parts: list[str] = []
    for a in args:
        if a.startswith("--"):
            parts.append(_SHORT_FLAGS.get(a[2:], a[2:]))
        elif parts:
            parts[-1] += human_count(int(a)) if a.isdigit() else a.replace(",", "_")
        else:
            parts.append(a)
    return "-".join(parts).replace("/", "_").replace(" ", "")


@dataclass(frozen=True)
class Invocation:
    entry: Entry
    plan: str
    args: tuple[str, ...]
    file: str
    rate: int | None


def plan_invocations(entry: Entry, cfg: dict[str, Any]) -> list[Invocation]:
    out: list[Invocation] = []
    short = entry.module.rsplit(".", 1)[-1]
    common = ("--seconds", f"{cfg['seconds']:g}", "--grace", f"{cfg['grace']:g}")
    extra = tuple(
        a.replace("{pending}", str(cfg["pending"]))
        .replace("{big}", str(cfg["big"]))
        .replace("{soak_minutes}", f"{cfg['soak_minutes']:g}")
        .replace("{sink_records}", str(cfg["sink_records"]))
        for a in entry.args
    )
    tag = f"-{variant_tag(extra)}" if extra else ""
    for plan in entry.plans:
        if plan == "lag":
            for rate in entry.rates or cfg["rates"]:
                args = ("--rate", str(rate), "--pending", "0", *common, *extra)
                name = f"{short}{tag}-lag-{human_count(rate)}.json"
                out.append(Invocation(entry, plan, args, name, rate))
        elif plan == "own":
            out.append(Invocation(entry, plan, extra, f"{short}.json", None))
        elif plan in ("memory", "once"):
            args = ("--rate", "0", "--pending", str(cfg["pending"]), *common, *extra)
            out.append(Invocation(entry, plan, args, f"{short}{tag}-{plan}.json", None))
        else:
            raise ValueError(f"unknown plan {plan!r} for {entry.module}")
    return out


def _pump(stream: Any, tail: collections.deque[str]) -> None:
    for line in iter(stream.readline, ""):
        sys.stderr.write("    " + line)
        sys.stderr.flush()
        tail.append(line.rstrip("\n"))
    stream.close()


def run_one(inv: Invocation, out_dir: Path, timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", inv.entry.module, *inv.args]
    log(f"run {shlex.join(cmd[1:])}")
    t0 = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=30)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    pump = threading.Thread(target=_pump, args=(proc.stderr, tail), daemon=True)
    out_chunks: list[str] = []
    reader = threading.Thread(
        target=lambda: out_chunks.append(proc.stdout.read() if proc.stdout else ""), daemon=True
    )
    pump.start()
    reader.start()
    status = "ok"
    error: str | None = None
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status, error = "failed", f"timed out after {timeout_s:g}s"
    reader.join(10)
    pump.join(5)
    stdout = "".join(out_chunks)
    record: dict[str, Any] = {
        "module": inv.entry.module,
        "plan": inv.plan,
        "rate": inv.rate,
        "command": shlex.join(["python", *cmd[1:]]),
        "seconds": round(time.monotonic() - t0, 2),
    }
    if status == "ok" and proc.returncode != 0:
        status, error = "failed", f"exit code {proc.returncode}"
    result: Any = None
    if status == "ok":
        lines = [ln for ln in stdout.splitlines() if ln.strip()]
        try:
            result = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError as e:
            status, error = "failed", f"stdout is not JSON: {e}"
        if status == "ok" and not isinstance(result, dict):
            status, error = "failed", "no JSON object on stdout"
    if status == "ok":
        (out_dir / inv.file).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        record["file"] = inv.file
    else:
        record["error"] = error
        record["stderr_tail"] = list(tail)
        log(f"FAILED {inv.entry.module} ({error})")
    record["status"] = status
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run the benchmark suite, then plot and tabulate.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (about 15 minutes)")
    size.add_argument(
        "--targets",
        action="store_true",
        help="the sizes of issues 10 and 11's targets: 10 M events/records for ingest, replay "
        "and memory, a 30-minute soak (several hours; per-run timeout 3600 s)",
    )
    p.add_argument("--out", type=Path, help="results folder (default results/<UTC date-time>)")
    p.add_argument("--rates", help="comma-separated expiration rates, e.g. 1000,10000")
    p.add_argument("--seconds", type=float, help="expiry window per lag run")
    p.add_argument("--pending", type=int, help="far-future records for memory runs")
    p.add_argument("--grace", type=float, help="seconds to wait after the last due time")
    p.add_argument("--only", action="append", help="run modules whose name contains this")
    p.add_argument("--timeout", type=float, help="per-run timeout in seconds")
    p.add_argument("--no-plot", action="store_true", help="write JSON only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg: dict[str, Any] = dict(QUICK if args.quick else TARGETS if args.targets else FULL)
    if args.rates:
        cfg["rates"] = [int(r) for r in args.rates.split(",") if r.strip()]
    for k in ("seconds", "pending", "grace"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    timeout_s = args.timeout or (300.0 if args.quick else 3600.0 if args.targets else 1200.0)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
    tag = "-quick" if args.quick else "-targets" if args.targets else ""
    out_dir: Path = args.out or Path("results") / (stamp + tag)
    out_dir.mkdir(parents=True, exist_ok=True)

    entries = list(REGISTRY)
    known = {e.module for e in entries}
    skipped_modules: set[str] = set()
    entries += [Entry(m, what="discovered") for m in discover_e2e() if m not in known]
    if args.only:
        entries = [e for e in entries if any(o in e.module for o in args.only)]

    suite: dict[str, Any] = {
        "started_at_utc": utc_now_iso(),
        "quick": args.quick,
        "targets": args.targets,
        "config": cfg,
        "command": shlex.join(["python", *getattr(sys, "orig_argv", sys.argv)[1:]]),
        "cwd": os.getcwd(),
        "machine": machine_info(),
        "runs": [],
        "skipped": [],
    }
    t0 = time.monotonic()
    for entry in entries:
        if not module_present(entry.module):
            if entry.module not in skipped_modules:
                skipped_modules.add(entry.module)
                note = f"{entry.module} is not present yet ({entry.what})"
                log(f"skip: {note}")
                suite["skipped"].append({"module": entry.module, "reason": note})
            continue
        for inv in plan_invocations(entry, cfg):
            suite["runs"].append(run_one(inv, out_dir, timeout_s))
            _write_suite(out_dir, suite)
    suite["finished_at_utc"] = utc_now_iso()
    suite["seconds"] = round(time.monotonic() - t0, 1)
    _write_suite(out_dir, suite)

    if not args.no_plot:
        from bench import plot

        plot.render(out_dir)
    failed = [r for r in suite["runs"] if r["status"] != "ok"]
    log(
        f"suite done in {suite['seconds']:g}s: {len(suite['runs']) - len(failed)} ok, "
        f"{len(failed)} failed, {len(suite['skipped'])} skipped; results in {out_dir}"
    )
    return 1 if failed else 0


def _write_suite(out_dir: Path, suite: dict[str, Any]) -> None:
    (out_dir / "suite.json").write_text(json.dumps(suite, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())

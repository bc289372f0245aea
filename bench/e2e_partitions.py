"""stream-expiry with many input partitions on one instance: start, firing, holds, restarts.

    python -m bench.e2e_partitions --partitions 48 [--pending 200000] [--lag 50000]
        [--rate 10000] [--held 150000]

Runs the real service (``python -m stream_expiry run --config F --metrics-port P``, a child
process) against the embedded Tansu broker, with ``[topics] partitions`` set: the three input
topics and every output topic get that many partitions (3 x N input partitions, one RocksDB
store each). Phases, each measured from outside the process:

1. start: seconds to ``/readyz`` 200, then RSS, open file descriptors and threads of the
   service (``/proc``); ``--pending`` far-future records (the ingest mix) are then ingested
   and the same figures read again.
2. lag: ``--lag`` records of category ``error`` due at ``--rate`` a second, spread over the
   partitions by key, ingested before their window opens; a consumer of ``expiry.tombstones``
   in its own process measures lag (arrival - expires_at), duplicates and early ones
   (``bench.e2e_expiry``'s reader).
3. hold: an org-wide hold, ``--held`` records of that org due 2 s after they are sent, spread
   over every input partition; once they are ingested and due, the hold is released while
   ``--rate`` other records a second fall due: the seconds from the release to the last
   held tombstone, the lag of the others meanwhile, the service's peak RSS.
4. restart: stop (SIGTERM), start on the same state directory, then with it deleted
   (a restore of every store from the changelog): seconds to ``/readyz`` each time.

Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.common import rss_bytes, summarize
from bench.e2e_expiry import (
    BenchTopics,
    CommittedOffsets,
    ProduceSpec,
    config_toml,
    event_value,
    input_partitions,
    lag_split,
    produce_in_child,
    produce_messages,
    receive,
    spawn,
    stop_child,
    tombstone_reader,
)
from stream_expiry.broker import EmbeddedBroker, free_port
from stream_expiry.model import Identity

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.connection import Connection

HELD_ORG = "held-org"
HOLD_ID = "bench-hold"
HELD_DUE_IN_MS = 2_000
TTLS_MS = {"conversation": 30 * 86_400_000, "session": 30 * 86_400_000, "error": 600_000}


def log(msg: str) -> None:
    print(f"[e2e_partitions] {msg}", file=sys.stderr, flush=True)


def config_text(topics: BenchTopics, state_dir: str, partitions: int) -> str:
    """``bench.e2e_expiry``'s config, with every topic at ``partitions`` partitions."""
    return config_toml(
        topics,
        state_dir,
        topics_extra=f"""receipts = "{topics.prefix}.expiry.receipts"
partitions = {partitions}
replication_factor = 1
""",
    )


def proc_figures(pid: int, state_dir: str) -> dict[str, Any]:
    """What the service holds right now: memory, descriptors (and which kind), threads."""
    fds = os.listdir(f"/proc/{pid}/fd")
    kinds = {"sst": 0, "log": 0, "socket": 0, "other": 0}
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.endswith(".sst"):
                kinds["sst"] += 1
            elif target.endswith(".log"):
                kinds["log"] += 1
            elif target.startswith("socket:"):
                kinds["socket"] += 1
            else:
                kinds["other"] += 1
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    files = sum(len(names) for _root, _dirs, names in os.walk(state_dir))
    return {
        "rss_mib": round(rss_bytes(pid) / 2**20, 1),
        "open_fds": len(fds),
        "fd_kinds": kinds,
        "threads": threads,
        "state_files": files,
        "stores": len(os.listdir(state_dir)) if os.path.isdir(state_dir) else 0,
    }


class ServiceProcess:
    """``stream-expiry run`` in a child process, its output in a log file."""

    def __init__(self, config_path: str, bootstrap: str, log_path: str) -> None:
        self.config_path, self.bootstrap, self.log_path = config_path, bootstrap, log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; return the seconds until ``/readyz`` answered 200."""
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stream_expiry",
                    "run",
                    "--config",
                    self.config_path,
                    "--bootstrap-servers",
                    self.bootstrap,
                    "--metrics-port",
                    str(self.port),
                    "--metrics-host",
                    "127.0.0.1",
                ],
                stdout=out,
                stderr=out,
            )
        deadline = t0 + 600
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited {self.proc.returncode}: {self.log_path}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                url = f"http://127.0.0.1:{self.port}/readyz"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - t0
            time.sleep(0.05)
        raise RuntimeError("the service was not ready within 600 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> float:
        """SIGTERM and wait; the seconds it took."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.perf_counter() - t0


async def ingested(bootstrap: str, group: str, tps: list[Any], target: int) -> float:
    """Poll the group's committed offsets until they add up to ``target``; seconds waited."""
    t0 = time.perf_counter()
    async with CommittedOffsets(bootstrap, group, tps) as offsets:
        while (total := await offsets.total()) < target:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"only {total} of {target} events committed after 600 s")
            await asyncio.sleep(0.25)
    return time.perf_counter() - t0


def held_messages(topics: BenchTopics, n: int, due_ms: int) -> Iterator[tuple[str, bytes, bytes]]:
    """``n`` records of the held org over the three categories (every input partition)."""
    cats = ("conversation", "session", "error")
    for i in range(n):
        cat = cats[i % 3]
        ident = Identity(HELD_ORG, f"bot-{i % 7}", "live", cat, f"held-{i:012d}")
        yield topics.input_for(cat), ident.key.encode(), event_value(ident, due_ms - TTLS_MS[cat])


def other_messages(
    topics: BenchTopics, rate: int, start_ns: int
) -> Iterator[tuple[str, bytes, bytes]]:
    """Records of another org due at ``rate`` a second for 10 s from ``start_ns``."""
    ttl = TTLS_MS["error"]
    for i in range(rate * 10):
        ident = Identity("other-org", f"bot-{i % 7}", "live", "error", f"other-{i:012d}")
        due_ms = (start_ns + i * 10**9 // rate) // 10**6
        yield topics.errors, ident.key.encode(), event_value(ident, due_ms - ttl)


def _release_reader_main(bootstrap: str, topic: str, held: int, conn: Connection) -> None:
    conn.send(asyncio.run(_release_reader(bootstrap, topic, held, conn)))
    conn.close()


async def _release_reader(bootstrap: str, topic: str, held: int, conn: Connection) -> Any:
    """Read tombstones from now on: when each held one arrived, and the lag of the others."""
    from aiokafka import TopicPartition

    from stream_expiry.kafka import consumer, partitions_of
    from stream_expiry.timeutil import parse_ts

    lags = array.array("d")
    seen: set[bytes] = set()
    last_held_ns = 0
    duplicates = early = 0
    async with consumer(bootstrap, fetch_max_wait_ms=5) as cons:
        tps = [TopicPartition(topic, p) for p in sorted(await partitions_of(cons, topic))]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        while await cons.getmany(timeout_ms=300, max_records=50_000):
            pass  # skip what came before
        conn.send("ready")
        deadline = time.time_ns() + 300 * 10**9
        while len(seen) < held and time.time_ns() < deadline:
            batch = await cons.getmany(timeout_ms=100, max_records=50_000)
            t_ns = time.time_ns()
            for records in batch.values():
                for rec in records:
                    body = orjson.loads(rec.value)
                    if body["reason"] == "ttl" and body["emitted_at"] < body["expires_at"]:
                        early += 1
                    if body["org"] == HELD_ORG:
                        if rec.key in seen:
                            duplicates += 1
                        seen.add(rec.key)
                        last_held_ns = t_ns
                    else:
                        lags.append(t_ns / 1e6 - parse_ts(body["expires_at"]))
    return {
        "held_tombstones": len(seen),
        "duplicates": duplicates,
        "early": early,
        "last_held_ns": last_held_ns,
        "others_lag_ms": summarize(lags).to_json(),
    }


async def send_hold(bootstrap: str, topic: str, value: bytes | None) -> None:
    from stream_expiry.kafka import producer

    async with producer(bootstrap) as prod:
        await prod.send_and_wait(topic, value, key=HOLD_ID.encode())


async def hold_phase(
    args: Any, bootstrap: str, topics: BenchTopics, service: ServiceProcess, tps: list[Any]
) -> tuple[dict[str, Any], int]:
    holds = f"{topics.prefix}.expiry.holds"
    hold = {"hold_id": HOLD_ID, "org": HELD_ORG, "reason": "bench"}
    await send_hold(bootstrap, holds, orjson.dumps(hold))
    due_ms = int(time.time() * 1000) + HELD_DUE_IN_MS
    t0 = time.perf_counter()
    sent = await produce_messages(bootstrap, held_messages(topics, args.held, due_ms))
    log(f"hold: {sent} held records sent in {time.perf_counter() - t0:.1f}s")
    return {"due_ms": due_ms, "hold_topic": holds}, sent


async def release_phase(
    args: Any, bootstrap: str, topics: BenchTopics, service: ServiceProcess, hold: dict[str, Any]
) -> dict[str, Any]:
    proc, conn = spawn(_release_reader_main, bootstrap, topics.tombstones, args.held)
    try:
        if await receive(conn, 120, "release reader") != "ready":
            raise RuntimeError("release reader did not start")
        # Others fall due during the release: lag records starting now, for 10 s.
        start_ns = time.time_ns() + 1_000_000_000
        await produce_messages(bootstrap, other_messages(topics, args.rate, start_ns))
        await asyncio.sleep(max(0.0, (start_ns - time.time_ns()) / 1e9))
        peak = 0
        released_ns = time.time_ns()
        await send_hold(bootstrap, hold["hold_topic"], None)
        while not await asyncio.to_thread(conn.poll, 0.05):
            peak = max(peak, rss_bytes(service.pid))
        res: dict[str, Any] = conn.recv()
    finally:
        stop_child(proc)
    res["release_to_last_held_s"] = round((res.pop("last_held_ns") - released_ns) / 1e9, 3)
    res["peak_rss_mib"] = round(peak / 2**20, 1)
    return res


@contextlib.contextmanager
def prepared(args: Any) -> Iterator[tuple[BenchTopics, str]]:
    """Fresh topic names and a work directory holding the service's config, removed
    afterwards unless ``--keep``."""
    topics = BenchTopics.fresh()
    work = tempfile.mkdtemp(prefix="se-bench-parts-")
    try:
        text = config_text(topics, os.path.join(work, "state"), args.partitions)
        Path(work, "expiry.toml").write_text(text, "utf-8")
        yield topics, work
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


async def run(args: Any, topics: BenchTopics, work: str) -> dict[str, Any]:
    group = f"{topics.prefix}-group"
    tps = input_partitions(topics.inputs, args.partitions)
    out: dict[str, Any] = {"partitions": args.partitions, "input_partitions": len(tps)}
    state_dir = os.path.join(work, "state")
    config_path = os.path.join(work, "expiry.toml")
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        service = ServiceProcess(config_path, bootstrap, os.path.join(work, "service.log"))
        try:
            out["ready_s"] = round(service.start(), 2)
            await asyncio.sleep(1)  # the gauges after the first loop turns
            out["at_ready"] = proc_figures(service.pid, state_dir)
            log(f"ready in {out['ready_s']}s: {out['at_ready']}")
            total = 0
            if args.pending:
                spec = ProduceSpec("mixed", 0, args.pending, ts_ms=int(time.time() * 1000))
                total += (await produce_in_child(bootstrap, spec, topics))["sent"]
                out["pending_ingest_s"] = round(await ingested(bootstrap, group, tps, total), 1)
                out["with_pending"] = proc_figures(service.pid, state_dir)
                log(f"pending ingested: {out['with_pending']}")
            if args.lag:
                start_ns = time.time_ns() + int(args.lead * 1e9)
                window = args.lag / args.rate
                deadline = start_ns + int((window + 5) * 1e9)
                spec = ProduceSpec("lag", 0, args.lag, rate=args.rate, start_ns=start_ns)
                async with tombstone_reader(
                    bootstrap, topics.tombstones, args.lag, args.rate, start_ns, deadline
                ) as result:
                    total += (await produce_in_child(bootstrap, spec, topics))["sent"]
                    out["lag_ingest_s"] = round(await ingested(bootstrap, group, tps, total), 1)
                    if time.time_ns() > start_ns:
                        log("lag records ingested after the window opened: raise --lead")
                    res = await result(window + 120)
                lags = array.array("d")
                lags.frombytes(res["lags"])
                out["lag"] = {
                    "tombstones": res["delivered"],
                    "expected": args.lag,
                    "duplicates": res["duplicates"],
                    "early": res["early"],
                    "lag_ms": summarize(lags).to_json(),
                    "decided_lag_ms": lag_split(res, lags)["decided_lag_ms"],
                    "transport_lag_ms": lag_split(res, lags)["transport_lag_ms"],
                }
                out["after_lag"] = proc_figures(service.pid, state_dir)
                log(f"lag: {out['lag']}")
            if args.held:
                hold, sent = await hold_phase(args, bootstrap, topics, service, tps)
                total += sent
                await ingested(bootstrap, group, tps, total)
                # Every held record due (and deferred) before the release.
                await asyncio.sleep(max(0.0, hold["due_ms"] / 1000 + 1.5 - time.time()))
                out["release"] = await release_phase(args, bootstrap, topics, service, hold)
                total += args.rate * 10
                await ingested(bootstrap, group, tps, total)
                log(f"release: {out['release']}")
            out["stop_s"] = round(service.stop(), 2)
            out["restart_kept_ready_s"] = round(service.start(), 2)
            out["after_restart"] = proc_figures(service.pid, state_dir)
            service.stop()
            shutil.rmtree(state_dir)
            out["restart_lost_ready_s"] = round(service.start(), 2)
            out["after_restore"] = proc_figures(service.pid, state_dir)
            log(
                f"restarts: kept {out['restart_kept_ready_s']}s, "
                f"lost {out['restart_lost_ready_s']}s"
            )
        finally:
            service.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--partitions", type=int, default=48)
    parser.add_argument("--pending", type=int, default=200_000)
    parser.add_argument("--lag", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--lead", type=float, default=15.0)
    parser.add_argument("--held", type=int, default=150_000)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args(argv)
    with prepared(args) as (topics, work):
        print(json.dumps(asyncio.run(run(args, topics, work)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

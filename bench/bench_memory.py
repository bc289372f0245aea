"""Resident memory of the service with 1 M (and 10 M) pending records spread over a year.

    python -m bench.bench_memory [--counts 0,100000,1000000] [--with-10m] [--settle 10]

Issue 10's target: at most 200 MiB for 10 M pending records. For each count N:

1. N records are written straight into fresh partition stores (``PartitionStore.write``)
   in batches of 100,000 (how they sit after ingest): category ``conversation``, ~45-byte keys (997 orgs,
   13 bots), a 1-year TTL, ``expires_at`` uniform over the next year (fixed seed), spread over
   the 4 partitions of the input topic by the service's own key partitioner. The topics are
   empty, so the service's restore and its input reading find nothing to do.
2. The service is started as its own process, ``python -m stream_expiry run --config FILE``,
   against an embedded Tansu broker with matching topics; its log line "assigned ...: K
   timers within the horizon" marks it ready (partitions owned, restored from the empty
   changelog, the first hour's timers loaded from the stores into the wheel). RSS (psutil) is read then, and again after
   ``--settle`` seconds of running, with the peak (``VmHWM``).
3. It is stopped with SIGINT.

Memory points (``bench.common.memory_point``) are the service's RSS after the settle minus
the same with empty stores (count 0), so bytes per record near 0 means flat. The stores'
size per record (on disk) and the write rate are in ``extra``.

Without ``--counts``: 0, N/10 and N, N being ``--pending`` (the suite's count) or
1,000,000; ``--with-10m`` adds 10,000,000, which takes several minutes of store writing
(~25k records/s through ``PartitionStore.write`` on a busy 2-core machine), hence a flag.
Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    NS_PER_MS,
    base_parser,
    envelope,
    human_count,
    log,
    memory_point,
    on_embedded_broker,
    rss_bytes,
    throughput_entry,
    utc_now_iso,
)
from bench.e2e_expiry import (
    PARTITIONS,
    BenchTopics,
    config_toml,
    index_file_bytes,
    record_identity,
    temp_state_dir,
)
from stream_expiry.kafka import ensure_topics, key_partition
from stream_expiry.model import Stamp
from stream_expiry.state import PartitionStore, RocksKV

if TYPE_CHECKING:
    from collections.abc import Iterator


Slot = tuple[str, int]
YEAR_MS = 365 * 86_400_000
WRITE_BATCH = 100_000
SEED = 7
_TIMERS = re.compile(r"assigned .*: (\d+) timers within the horizon")


def pending_records(
    lo: int, hi: int, now_ms: int, topic: str, *, due_in_past: int = 0
) -> Iterator[tuple[Stamp, Slot]]:
    """Records ``lo..hi``: expiring uniformly over the next year, except the first
    ``due_in_past`` which expired during the last hour (as if the service had been down);
    those have record ids ``lag-<i>``, which ``bench.e2e_expiry``'s tombstone reader counts."""
    rng = random.Random(SEED * 1_000_003 + lo)
    for i in range(lo, hi):
        if i < due_in_past:
            ident = record_identity(i, prefix="lag")
            expires = now_ms - 3_600_000 + (i * 3_600_000) // max(due_in_past, 1)
        else:
            ident = record_identity(i)
            expires = now_ms + 60_000 + rng.randrange(YEAR_MS)
        slot = (topic, key_partition(ident.key.encode(), PARTITIONS))
        yield Stamp(ident, expires - YEAR_MS, expires, YEAR_MS, "default"), slot


async def write_index(
    state_dir: str, topics: BenchTopics, count: int, now_ms: int, *, due_in_past: int = 0
) -> dict[str, Any]:
    """Write ``count`` pending records into the partitions' stores; returns timings, sizes."""
    stores: dict[Slot, PartitionStore] = {}
    t0 = time.perf_counter()
    gen_s = 0.0
    try:
        for lo in range(0, count, WRITE_BATCH):
            hi = min(lo + WRITE_BATCH, count)
            g0 = time.perf_counter()
            rows = list(
                pending_records(lo, hi, now_ms, topics.conversations, due_in_past=due_in_past)
            )
            gen_s += time.perf_counter() - g0
            by_slot: dict[Slot, list[tuple[None, Stamp]]] = {}
            for stamp, slot in rows:
                by_slot.setdefault(slot, []).append((None, stamp))
            for slot, changes in by_slot.items():
                store = stores.get(slot)
                if store is None:
                    path = f"{state_dir}/{slot[0]}-{slot[1]}"
                    store = stores[slot] = PartitionStore(RocksKV(path))
                store.write(changes, now_ms=now_ms)
            if hi % 1_000_000 == 0 or hi == count:
                log(f"  stores: {hi:,}/{count:,} records written ({time.perf_counter() - t0:.0f}s)")
        counts = {
            "pending": sum(s.counts.pending_total for s in stores.values()),
            "never": sum(s.counts.never for s in stores.values()),
            "deleted": sum(s.counts.markers for s in stores.values()),
        }
    finally:
        for store in stores.values():
            store.close()
    seconds = time.perf_counter() - t0
    return {
        "records": count,
        "seconds": round(seconds, 2),
        "generate_seconds": round(gen_s, 2),
        "write_rate_per_s": round(count / (seconds - gen_s), 1) if count else None,
        "file_bytes": index_file_bytes(state_dir),
        "bytes_per_record": round(index_file_bytes(state_dir) / count, 1) if count else None,
        "index_counts": counts,
    }


@dataclass
class ServiceProcess:
    """``python -m stream_expiry run`` with its stderr lines timestamped by a thread."""

    config_path: str
    bootstrap: str
    proc: subprocess.Popen[str] | None = None
    started_ns: int = 0
    lines: list[tuple[int, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "stream_expiry",
            "run",
            "--config",
            self.config_path,
            "--bootstrap-servers",
            self.bootstrap,
            "--log-level",
            "INFO",
        ]
        self.started_ns = time.time_ns()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, ""):
            with self._lock:
                self.lines.append((time.time_ns(), line.rstrip("\n")))
            if "WARNING" in line or "ERROR" in line or "Traceback" in line:
                sys.stderr.write("    service: " + line)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_line(self, pattern: re.Pattern[str], timeout_s: float) -> tuple[int, re.Match[str]]:
        """The first stderr line matching ``pattern``: (its arrival ns, the match)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            with self._lock:
                new = self.lines[seen:]
            for t_ns, line in new:
                m = pattern.search(line)
                if m:
                    return t_ns, m
            seen += len(new)
            if self.proc is not None and self.proc.poll() is not None:
                tail = "\n".join(line for _, line in self.lines[-20:])
                raise RuntimeError(f"the service exited with {self.proc.returncode}:\n{tail}")
            time.sleep(0.005)
        raise TimeoutError(f"no log line matching {pattern.pattern!r} in {timeout_s:g}s")

    def peak_rss(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def write_config(topics: BenchTopics, state_dir: str) -> str:
    path = Path(state_dir).parent / f"{Path(state_dir).name}.toml"
    path.write_text(config_toml(topics, state_dir), encoding="utf-8")
    return str(path)


def measure(bootstrap: str, count: int, settle_s: float) -> dict[str, Any]:
    topics = BenchTopics.fresh()
    asyncio.run(ensure_topics(bootstrap, topics.all, partitions=PARTITIONS))
    now_ms = time.time_ns() // NS_PER_MS
    with temp_state_dir(f"mem{human_count(count)}") as state_dir:
        log(f"bench_memory: writing {count:,} pending records into the stores")
        written = asyncio.run(write_index(state_dir, topics, count, now_ms))
        config_path = write_config(topics, state_dir)
        try:
            svc = ServiceProcess(config_path, bootstrap)
            log("bench_memory: starting the service")
            svc.start()
            try:
                t_ready, m = svc.wait_line(_TIMERS, 120)
                rss_ready = rss_bytes(svc.pid)
                log(
                    f"bench_memory: ready in {(t_ready - svc.started_ns) / 1e9:.1f}s with "
                    f"{int(m.group(1)):,} timers in the horizon: RSS {rss_ready / 2**20:.1f} MiB"
                )
                time.sleep(settle_s)
                rss_settled = rss_bytes(svc.pid)
                peak = svc.peak_rss()
            finally:
                code = svc.stop()
        finally:
            Path(config_path).unlink(missing_ok=True)
    log(
        f"bench_memory: {human_count(count)} pending: RSS {rss_settled / 2**20:.1f} MiB after "
        f"{settle_s:g}s (peak {0 if peak is None else peak / 2**20:.1f} MiB); index "
        f"{written['file_bytes'] / 2**20:.0f} MiB"
    )
    return {
        "pending": count,
        "rss_ready_bytes": rss_ready,
        "rss_settled_bytes": rss_settled,
        "rss_peak_bytes": peak,
        "ready_s": round((t_ready - svc.started_ns) / 1e9, 3),
        "timers_in_horizon": int(m.group(1)),
        "exit_code": code,
        "index": written,
    }


def run(args: Any, bootstrap: str, counts: list[int]) -> dict[str, Any]:
    started = utc_now_iso()
    runs = [measure(bootstrap, n, args.settle) for n in counts]
    base = next((r for r in runs if r["pending"] == 0), None)
    memory: list[dict[str, Any]] = []
    throughput: list[dict[str, Any]] = []
    notes = [
        "The service runs as its own process (python -m stream_expiry run); records were "
        "written into its partition stores beforehand, as they sit after ingest, expiring over "
        "a year.",
        "RSS after the settle time minus the RSS of the same service with empty stores.",
    ]
    for r in runs:
        if r["pending"] == 0:
            continue
        if base is not None:
            memory.append(
                memory_point(
                    r["pending"],
                    r["rss_settled_bytes"],
                    baseline_bytes=base["rss_settled_bytes"],
                    what="service RSS delta vs empty stores (stores on disk)",
                    rss_bytes=r["rss_settled_bytes"],
                    index_file_bytes=r["index"]["file_bytes"],
                    index_bytes_per_record=r["index"]["bytes_per_record"],
                )
            )
        idx = r["index"]
        throughput.append(
            throughput_entry(
                f"PartitionStore.write ({human_count(r['pending'])} records)",
                r["pending"],
                idx["seconds"] - idx["generate_seconds"],
                method=f"PartitionStore.write on RocksDB, batches of {WRITE_BATCH:,} split by "
                "partition",
            )
        )
        mib = r["rss_settled_bytes"] / 2**20
        if r["pending"] >= 10_000_000:
            verdict = "within" if mib <= 200 else "OVER"
            notes.append(
                f"{human_count(r['pending'])} pending: RSS {mib:.0f} MiB, {verdict} the "
                "200 MiB target of issue 10."
            )
    if 10_000_000 not in counts:
        notes.append("10 M pending was not measured in this run (pass --with-10m).")
    return envelope(
        "bench_memory",
        "stream-expiry-preloaded",
        params={"counts": counts, "settle_s": args.settle, "partitions": PARTITIONS},
        memory=memory,
        throughput=throughput,
        extra={"runs": runs, "year_ms": YEAR_MS},
        notes=notes,
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "memory")
    parser.add_argument("--counts", help="comma-separated pending counts (0 = baseline)")
    parser.add_argument("--with-10m", action="store_true", help="also measure 10,000,000")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of running")
    args = parser.parse_args(argv)
    if args.counts:
        counts = [int(c) for c in args.counts.split(",") if c.strip()]
    else:
        n = args.pending if args.pending > 0 else 1_000_000
        counts = [0, n // 10, n]
    if args.with_10m:
        counts.append(10_000_000)
    counts = sorted(set(counts))
    return on_embedded_broker("bench_memory", lambda servers: run(args, servers, counts))


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by every benchmark: summaries, the JSON envelope, RSS, a rate schedule.

Every benchmark module (``bench.peers.*`` and the stream-expiry ``bench.e2e_*`` ones) prints
ONE JSON object to stdout, built with :func:`envelope`, and its progress to stderr. The suite
(``bench.run_suite``) and the plots (``bench.plot``) read only the fields documented in
:func:`envelope`, so a new module plugs in by filling them.

The pure parts (:func:`percentile`, :func:`summarize`, :class:`RateSchedule`) read no clock
and do no IO; they are unit-tested in ``tests/unit/test_bench_common.py``. Optional imports
(psutil) are done inside the functions that need them, so importing this module needs only
the standard library.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

__all__ = [
    "NS_PER_MS",
    "NS_PER_S",
    "LatencySummary",
    "RateSchedule",
    "base_parser",
    "emit_result",
    "envelope",
    "fmt_ms",
    "human_count",
    "lag_windows",
    "log",
    "machine_info",
    "memory_point",
    "percentile",
    "record_key",
    "rss_bytes",
    "run_paced",
    "summarize",
    "throughput_entry",
    "utc_now_iso",
]

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000

# Version of the JSON shape below; bump it when a field changes meaning.
SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- latency summary


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Exact nearest-rank percentile of values already sorted ascending.

    The result is always one of the observed values (no interpolation, no histogram
    buckets): the smallest value such that at least ``p`` percent of the values are <= it,
    i.e. the value at rank ``ceil(p / 100 * n)`` (rank 1 for p = 0).
    """
    n = len(sorted_values)
    if n == 0:
        raise ValueError("percentile of no values")
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {p}")
    # Exact rational arithmetic on the decimal the caller wrote (99.9 is 999/10, not the
    # nearest binary float), so e.g. p99.9 of 41,000 values is rank 40,959, not 40,960.
    rank = math.ceil(Fraction(str(p)) * n / 100)
    return float(sorted_values[max(rank, 1) - 1])


@dataclass(frozen=True)
class LatencySummary:
    """p50/p99/max/mean/min of a list of lag values (milliseconds), exact percentiles."""

    count: int
    p50: float | None
    p99: float | None
    max: float | None
    mean: float | None
    min: float | None

    def to_json(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        return {
            "count": self.count,
            "p50": r(self.p50),
            "p99": r(self.p99),
            "max": r(self.max),
            "mean": r(self.mean),
            "min": r(self.min),
        }


def summarize(values: Iterable[float]) -> LatencySummary:
    """Summarize lag values in ms; an empty input gives count 0 and None everywhere else."""
    data = sorted(float(v) for v in values)
    if not data:
        return LatencySummary(0, None, None, None, None, None)
    return LatencySummary(
        count=len(data),
        p50=percentile(data, 50),
        p99=percentile(data, 99),
        max=data[-1],
        mean=math.fsum(data) / len(data),
        min=data[0],
    )


def lag_windows(
    at_ms: Sequence[float], lags: Sequence[float], window_s: float
) -> list[dict[str, Any]]:
    """Lag percentiles per window of ``at_ms`` (when each message was due or sent): whether
    the lag drifts within one run. It does on the embedded broker, whose transport slows
    down as its topics fill (docs/BENCHMARKS.md, round 10), so a run's p99 depends on its
    length as well as on the code."""
    if not at_ms:
        return []
    t0 = min(at_ms)
    windows: dict[int, list[float]] = {}
    for t, lag in zip(at_ms, lags, strict=True):
        windows.setdefault(int((t - t0) / (window_s * 1000)), []).append(lag)
    return [
        {"t_s": round(i * window_s, 3), **summarize(w).to_json()}
        for i, w in sorted(windows.items())
    ]


# --------------------------------------------------------------------------- rate schedule


@dataclass(frozen=True)
class RateSchedule:
    """``count`` events at ``rate`` per second, spread evenly from ``start_ns`` on.

    Event ``i`` is due at ``start_ns + floor(i * 1e9 / rate)`` nanoseconds: integer arithmetic,
    so no float drift however long the run. ``start_ns`` is on whatever clock the caller uses
    (``time.time_ns()`` for due times that a server compares with its wall clock).
    """

    rate: int
    count: int
    start_ns: int

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")

    def due_ns(self, i: int) -> int:
        """Due time of event ``i`` in ns."""
        if not 0 <= i < self.count:
            raise IndexError(f"event {i} outside [0, {self.count})")
        return self.start_ns + (i * NS_PER_S) // self.rate

    def due_ms(self, i: int) -> int:
        """Due time of event ``i`` in whole ms, rounded down (``PXAT`` takes ms)."""
        return self.due_ns(i) // NS_PER_MS

    @property
    def end_ns(self) -> int:
        """Due time of the last event (``start_ns`` when there are none)."""
        return self.due_ns(self.count - 1) if self.count else self.start_ns

    def count_due_by(self, t_ns: int) -> int:
        """How many events are due at or before ``t_ns`` (events ``0 .. result-1``)."""
        d = t_ns - self.start_ns
        if d < 0:
            return 0
        # floor(i * G / r) <= d  <=>  i * G < (d + 1) * r  <=>  i < ceil((d + 1) * r / G)
        n = -((-(d + 1) * self.rate) // NS_PER_S)
        return min(n, self.count)

    def batches(self, size: int) -> Iterator[range]:
        """The event indices in order, in ranges of at most ``size``."""
        if size <= 0:
            raise ValueError(f"batch size must be positive, got {size}")
        for lo in range(0, self.count, size):
            yield range(lo, min(lo + size, self.count))

    def per_second(self) -> list[int]:
        """How many events fall in each whole second after ``start_ns`` (for checks)."""
        out: list[int] = []
        for i in range(self.count):
            sec = (self.due_ns(i) - self.start_ns) // NS_PER_S
            while len(out) <= sec:
                out.append(0)
            out[sec] += 1
        return out


def run_paced(
    schedule: RateSchedule,
    send: Callable[[range], None],
    *,
    lead_ns: int = 0,
    max_batch: int = 1000,
    clock_ns: Callable[[], int] = time.time_ns,
    sleep: Callable[[float], None] = time.sleep,
    tick_ns: int = NS_PER_MS,
) -> int:
    """Call ``send`` with every event index, each no later than ``lead_ns`` before it is due.

    Events are sent in order, at most ``max_batch`` per call, as soon as they are within
    ``lead_ns`` of their due time (so ``lead_ns`` = 0 generates them at the rate itself).
    The clock and sleep are injected; returns the number of ``send`` calls.
    """
    sent = 0
    calls = 0
    while sent < schedule.count:
        ready = schedule.count_due_by(clock_ns() + lead_ns)
        if ready > sent:
            hi = min(ready, sent + max_batch)
            send(range(sent, hi))
            calls += 1
            sent = hi
            continue
        # Sleep until the next event is within the lead, by at most a second at once.
        wait_ns = schedule.due_ns(sent) - lead_ns - clock_ns()
        sleep(max(min(wait_ns, NS_PER_S), tick_ns) / NS_PER_S)
    return calls


# --------------------------------------------------------------------------- workload keys


def record_key(i: int) -> str:
    """A realistic record key (~45 bytes) for memory-per-record phases, same on every system.

    Shaped like stream-expiry's record keys: org / bot / env / category / record id.
    """
    return f"org-{i % 997:04d}/bot-{i % 13:02d}/live/conversation/rec-{i:012d}"


# --------------------------------------------------------------------------- machine and RSS


def reference_and_end(
    samples: Sequence[Mapping[str, Any]],
    settled_s: float,
    steady_end_s: float,
    *,
    or_all: bool = False,
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """A soak's reference and end samples: the steady state's first sample at or after
    ``settled_s`` and its last one (the steady state: ``0 <= t_s <= steady_end_s``); the
    last steady sample for both when none comes after ``settled_s``. With no steady sample,
    None for both, or with ``or_all`` every sample taken as the steady state (``bench.soak``
    still reports a run cut short before its first due time)."""
    steady = [s for s in samples if 0 <= s["t_s"] <= steady_end_s] or (
        list(samples) if or_all else []
    )
    if not steady:
        return None, None
    ref = next((s for s in steady if s["t_s"] >= settled_s), steady[-1])
    return ref, steady[-1]


def ratio(end: float | None, ref: float | None) -> float | None:
    """end / ref, rounded, for a soak's end sample against its reference (None when either
    is unknown or the reference is 0)."""
    if end is None or not ref:
        return None
    return round(end / ref, 3)


def utc_now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _total_memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """Cores, memory, CPU model, Python, platform and the load average at the time."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": _total_memory_bytes(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "loadavg_1_5_15": load,
    }


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (psutil, or /proc on Linux)."""
    try:
        import psutil
    except ImportError:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process(pid).memory_info().rss)


# --------------------------------------------------------------------------- result envelope


def throughput_entry(
    name: str, records: int, seconds: float, *, method: str, unit: str = "records/s"
) -> dict[str, Any]:
    """One entry of the ``throughput`` list: ``records`` handled in ``seconds``."""
    value = records / seconds if seconds > 0 else None
    return {
        "name": name,
        "unit": unit,
        "value": None if value is None else round(value, 1),
        "records": records,
        "seconds": round(seconds, 4),
        "method": method,
    }


def memory_point(
    pending: int, bytes_used: int, *, what: str, baseline_bytes: int = 0, **extra: Any
) -> dict[str, Any]:
    """One entry of the ``memory`` list: bytes attributed to ``pending`` pending records.

    ``bytes_used`` is already net of the baseline when ``baseline_bytes`` is 0; otherwise the
    delta ``bytes_used - baseline_bytes`` is what is divided by ``pending``.
    """
    delta = bytes_used - baseline_bytes
    return {
        "pending": pending,
        "bytes": delta,
        "bytes_per_record": round(delta / pending, 2) if pending > 0 else None,
        "what": what,
        **extra,
    }


def envelope(
    benchmark: str,
    system: str,
    *,
    params: dict[str, Any],
    lag: dict[str, Any] | None = None,
    throughput: list[dict[str, Any]] | None = None,
    memory: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    started_at: str | None = None,
) -> dict[str, Any]:
    """The one JSON object a benchmark prints. Fields the suite and plots read:

    - ``benchmark``: module short name, e.g. ``redis_expiry``; ``system``: the label plots
      and tables use (e.g. ``redis-hz10``, ``postgres-sweep-100ms``, ``stream-expiry``).
    - ``params``: the knobs (``rate``, ``seconds``, ``pending``, ...).
    - ``lag`` (optional): ``{"rate": R, "scheduled": n, "delivered": n, "missing": n,
      "grace_s": s, "lag_ms": summarize(...).to_json()}``: due time to delivery.
    - ``throughput`` (optional): list of :func:`throughput_entry`.
    - ``memory`` (optional): list of :func:`memory_point`, one per pending count measured.
    - ``extra``: anything else, shown in the JSON only; ``notes``: sentences for a person.
    """
    return {
        "schema": SCHEMA_VERSION,
        "benchmark": benchmark,
        "system": system,
        "params": params,
        "machine": machine_info(),
        "started_at_utc": started_at,
        "date_utc": utc_now_iso(),
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "lag": lag,
        "throughput": throughput or [],
        "memory": memory or [],
        "extra": extra or {},
        "notes": notes or [],
    }


def emit_result(result: dict[str, Any]) -> None:
    """Print the result as one JSON line on stdout (the only thing a benchmark prints there)."""
    sys.stdout.write(json.dumps(result, sort_keys=False) + "\n")
    sys.stdout.flush()


def on_embedded_broker(name: str, measure: Callable[[str], dict[str, Any]]) -> int:
    """Every broker bench's ``main`` ends so: ``measure`` runs against a fresh embedded
    broker (its bootstrap address the argument), stopped before the result is printed, so
    the one JSON line on stdout is all there is once the broker's own output is gone."""
    from stream_expiry.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        log(f"{name}: embedded broker on {broker.bootstrap_servers}")
        result = measure(broker.bootstrap_servers)
    emit_result(result)
    return 0


def log(msg: str) -> None:
    """Progress for a person, on stderr with a timestamp."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- command line


def base_parser(description: str) -> argparse.ArgumentParser:
    """The command-line shape every benchmark module shares (the suite passes these).

    ``--rate R --seconds S``: R expirations per second due during S seconds (the lag phase;
    ``--rate 0`` skips it). ``--pending N``: measure memory with N records pending far in the
    future (0 skips it). ``--grace G``: how long after the last due time to wait for late
    deliveries before counting the rest as missing.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--rate", type=int, default=10_000, help="expirations per second (0: no lag phase)"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of the expiry window")
    p.add_argument(
        "--pending", type=int, default=0, help="far-future records for the memory phase (0: skip)"
    )
    p.add_argument("--grace", type=float, default=5.0, help="seconds to wait after the last due")
    return p


def fmt_ms(v: float | None) -> str:
    """A lag for a log line: '12.3 ms', or 'n/a'."""
    return "n/a" if v is None else f"{v:,.1f} ms"


def human_count(n: int) -> str:
    """1000 -> '1k', 1000000 -> '1M', 2500 -> '2.5k'."""
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= div:
            v = n / div
            return f"{v:g}{suffix}" if v == round(v, 1) else f"{v:.1f}{suffix}"
    return str(n)

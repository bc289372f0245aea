"""Micro-benchmark of the timing wheel against a heapq and asyncio's ``loop.call_at``.

    python -m bench.bench_wheel [--n 1000000] [--window-ms 3600000] [--tick-ms 10]

Workload: ``n`` timers with realistic ~45-byte record keys (``bench.common.record_key``), due
uniformly at random (fixed seed) over the next ``window-ms`` (an hour: what the service keeps
in memory). Keys, due times and asyncio's float times are built before any clock starts. The
garbage collector stays on, as in the service. Rates are wall-clock (``perf_counter``); the CPU
seconds of each phase are recorded too, since this machine may be shared.

Phases, each on a fresh structure:

* ``schedule``: insert the ``n`` timers.
* ``fire``: drive time the way an event loop does, sleeping until the next due time and then
  firing everything due (``next_due_ms()`` then ``advance()``), until all have fired; one
  "wakeup" per distinct due time, about 0.87 n here. ``schedule+fire`` is
  ``n / (schedule seconds + fire seconds)``: whole timers per second.
* ``fire, periodic``: the same timers fired by an ``advance`` every ``--step-ms`` (a service
  that wakes at most every 100 ms); wheel and heapq only.
* ``schedule+cancel``: insert ``n`` timers, then cancel them all in random order;
  ``2 n / seconds`` operations per second, including any pruning that happens on the way.

The three implementations:

* ``wheel``: :class:`stream_expiry.wheel.TimingWheel`.
* ``heapq``: a heap of ``(due, seq, key, value)`` with a key index and lazy cancellation
  (trio's ``Deadlines``), pruned when dead entries outnumber live ones: the same API and
  semantics as the wheel (one timer per key, stable order, never early).
* ``asyncio``: ``loop.call_at`` on a real ``SelectorEventLoop`` whose clock is warped: the
  loop's ``time()`` is virtual and the selector, asked to wait ``t`` seconds, moves the virtual
  clock by ``t`` and polls with timeout 0 instead (one real ``epoll_wait`` per wakeup, no
  sleeping). So this is asyncio's own timer path (``TimerHandle``, its heap, ``_run_once``,
  callback dispatch) at full speed. The callback is a C builtin (a counter), the cheapest
  possible. Raw ``call_at`` keeps no key index, so it cannot replace a timer by key as the other
  two do: a keyed timer service built on it would cost more than measured here.

Memory: bytes per pending timer of each structure (keys and values excluded, they exist
anyway), with ``tracemalloc`` on ``min(n, 100000)`` timers.

Prints ONE JSON object (``bench.common.envelope``; plus top-level ``n``, ``python`` and
``ops_per_s``) on stdout; progress on stderr. Takes about a minute at the default ``n`` on
2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import itertools
import platform
import random
import selectors
import time
import tracemalloc
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from bench.common import (
    emit_result,
    envelope,
    log,
    memory_point,
    record_key,
    throughput_entry,
    utc_now_iso,
)
from stream_expiry.wheel import TimingWheel

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_PRUNE_MIN = 1024


class Timers(Protocol):
    """What the wheel and the heapq baseline both offer (str keys, int values)."""

    def schedule(self, key: str, due_ms: int, value: int) -> None: ...
    def cancel(self, key: str) -> bool: ...
    def advance(self, now_ms: int) -> list[tuple[int, str, int]]: ...
    def next_due_ms(self) -> int | None: ...
    def __len__(self) -> int: ...


class HeapTimers(Generic[K, V]):
    """The baseline: a binary heap with lazy cancellation (trio's ``Deadlines``).

    Same contract as the wheel: one timer per key (scheduling again replaces it), batches
    sorted by (due, insertion order), never early, time as a high-water mark.
    """

    __slots__ = ("_heap", "_index", "_now", "_seq", "_stale")

    def __init__(self, start_ms: int = 0) -> None:
        self._heap: list[tuple[int, int, K, V]] = []
        self._index: dict[K, tuple[int, int, K, V]] = {}
        self._seq = 0
        self._stale = 0
        self._now = start_ms

    def __len__(self) -> int:
        return len(self._index)

    def schedule(self, key: K, due_ms: int, value: V) -> None:
        entry = (due_ms, self._seq, key, value)
        self._seq += 1
        index = self._index
        if key in index:
            self._stale += 1
        index[key] = entry
        heapq.heappush(self._heap, entry)
        if self._stale > _PRUNE_MIN and self._stale > len(index):
            self._prune()

    def cancel(self, key: K) -> bool:
        if self._index.pop(key, None) is None:
            return False
        self._stale += 1
        if self._stale > _PRUNE_MIN and self._stale > len(self._index):
            self._prune()
        return True

    def next_due_ms(self) -> int | None:
        heap = self._heap
        index_get = self._index.get
        while heap and index_get(heap[0][2]) is not heap[0]:
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][0] if heap else None

    def advance(self, now_ms: int) -> list[tuple[int, K, V]]:
        if now_ms > self._now:
            self._now = now_ms
        else:
            now_ms = self._now
        heap = self._heap
        index = self._index
        heappop = heapq.heappop
        out: list[tuple[int, K, V]] = []
        while heap and heap[0][0] <= now_ms:
            entry = heappop(heap)
            key = entry[2]
            if index.get(key) is entry:
                del index[key]
                out.append((entry[0], key, entry[3]))
            else:
                self._stale -= 1
        return out

    def _prune(self) -> None:
        index_get = self._index.get
        self._heap = [e for e in self._heap if index_get(e[2]) is e]
        heapq.heapify(self._heap)
        self._stale = 0


# -- asyncio with a warped clock ------------------------------------------------------------


class _VirtualClock:
    __slots__ = ("now", "polls")

    def __init__(self) -> None:
        self.now = 0.0
        self.polls = 0


class _WarpSelector(selectors.DefaultSelector):
    """Asked to wait, moves the virtual clock instead and only polls (timeout 0)."""

    def __init__(self, clock: _VirtualClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("the warped loop would block forever: nothing is scheduled")
        clock = self.clock
        clock.polls += 1
        if timeout > 0:
            clock.now += timeout
        return super().select(0)


class _WarpLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: _VirtualClock) -> None:
        self.clock = clock
        super().__init__(selector=_WarpSelector(clock))

    def time(self) -> float:
        return self.clock.now


# -- measuring ------------------------------------------------------------------------------


class Phase:
    """Wall and CPU seconds of a block."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Phase:
        gc.collect()
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def fill(timers: Timers, keys: Sequence[str], dues: Sequence[int]) -> None:
    schedule = timers.schedule
    for i, key in enumerate(keys):
        schedule(key, dues[i], i)


def drain_by_next_due(timers: Timers) -> tuple[int, int]:
    """Fire everything as an event loop would: wake at the next due time. (fired, wakeups)"""
    next_due = timers.next_due_ms
    advance = timers.advance
    fired = wakeups = 0
    while True:
        due = next_due()
        if due is None:
            return fired, wakeups
        fired += len(advance(due))
        wakeups += 1


def drain_periodic(timers: Timers, start_ms: int, end_ms: int, step_ms: int) -> tuple[int, int]:
    """Fire everything with an advance every ``step_ms``. (fired, wakeups)"""
    advance = timers.advance
    fired = wakeups = 0
    for now in range(start_ms + step_ms, end_ms + 2 * step_ms, step_ms):
        fired += len(advance(now))
        wakeups += 1
    return fired, wakeups


def bench_structure(
    name: str,
    make: Callable[[], Timers],
    keys: Sequence[str],
    dues: Sequence[int],
    cancel_order: Sequence[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    n = len(keys)
    result: dict[str, Any] = {}
    timers = make()
    with Phase() as sched:
        fill(timers, keys, dues)
    assert len(timers) == n
    with Phase() as fire:
        fired, wakeups = drain_by_next_due(timers)
    assert fired == n, (name, fired)
    assert len(timers) == 0, (name, len(timers))
    log(f"{name}: schedule {sched.wall:.2f} s, fire {fire.wall:.2f} s ({wakeups:,} wakeups)")
    result["schedule"] = (n, sched, "insert n timers")
    result["fire"] = (n, fire, f"fire all, waking at each next due time ({wakeups} wakeups)")
    result["schedule+fire"] = (n, _sum(sched, fire), "whole timers: schedule then fire")
    del timers

    timers = make()
    fill(timers, keys, dues)
    with Phase() as periodic:
        fired, wakeups = drain_periodic(
            timers, args.start_ms, args.start_ms + args.window_ms, args.step_ms
        )
    assert fired == n, (name, fired)
    assert len(timers) == 0, (name, len(timers))
    log(f"{name}: fire with an advance every {args.step_ms} ms {periodic.wall:.2f} s")
    result["fire, periodic"] = (n, periodic, f"fire all, an advance every {args.step_ms} ms")
    del timers

    timers = make()
    with Phase() as cancel:
        fill(timers, keys, dues)
        cancel_one = timers.cancel
        for key in cancel_order:
            cancel_one(key)
    assert len(timers) == 0, (name, len(timers))
    assert timers.next_due_ms() is None
    log(f"{name}: schedule+cancel {cancel.wall:.2f} s")
    result["schedule+cancel"] = (2 * n, cancel, "insert n timers, cancel them in random order")
    del timers
    return result


def bench_asyncio(whens: Sequence[float], cancel_order: Sequence[int]) -> dict[str, Any]:
    n = len(whens)
    result: dict[str, Any] = {}
    clock = _VirtualClock()
    loop = _WarpLoop(clock)
    try:
        counter = itertools.count()
        callback = counter.__next__
        call_at = loop.call_at
        with Phase() as sched:
            for when in whens:
                call_at(when, callback)
        with Phase() as fire:
            loop.call_at(max(whens) + 1.0, loop.stop)
            loop.run_forever()
        fired = next(counter)
        assert fired == n, fired
        wakeups = clock.polls
        log(f"asyncio: schedule {sched.wall:.2f} s, fire {fire.wall:.2f} s ({wakeups:,} wakeups)")
        result["schedule"] = (n, sched, "loop.call_at n times")
        result["fire"] = (
            n,
            fire,
            f"run the loop until all fired, warped clock ({wakeups} wakeups)",
        )
        result["schedule+fire"] = (n, _sum(sched, fire), "whole timers: schedule then fire")

        clock.now = 0.0
        with Phase() as cancel:
            handles = [call_at(when, callback) for when in whens]
            for i in cancel_order:
                handles[i].cancel()
            loop.call_soon(loop.stop)
            loop.run_forever()  # one iteration: asyncio drops cancelled handles here
        assert not loop._scheduled, len(loop._scheduled)  # type: ignore[attr-defined]
        log(f"asyncio: schedule+cancel {cancel.wall:.2f} s")
        result["schedule+cancel"] = (
            2 * n,
            cancel,
            "call_at n times, cancel the handles in random order, one loop iteration",
        )
    finally:
        loop.close()
    return result


def _sum(a: Phase, b: Phase) -> Phase:
    total = Phase()
    total.wall = a.wall + b.wall
    total.cpu = a.cpu + b.cpu
    return total


def bytes_per_timer(make: Callable[[], Timers], keys: Sequence[str], dues: Sequence[int]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        timers = make()
        fill(timers, keys, dues)
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del timers
    return size


def bytes_asyncio(whens: Sequence[float]) -> int:
    loop = _WarpLoop(_VirtualClock())
    try:
        gc.collect()
        tracemalloc.start()
        try:
            call_at = loop.call_at
            callback = itertools.count().__next__
            for when in whens:
                call_at(when, callback)
            size, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        loop.close()
    return size


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1_000_000, help="timers per phase")
    parser.add_argument("--window-ms", type=int, default=3_600_000, help="due times spread over")
    parser.add_argument("--tick-ms", type=int, default=10, help="the wheel's tick")
    parser.add_argument("--slots", type=int, default=256, help="the wheel's slots per level")
    parser.add_argument("--step-ms", type=int, default=100, help="periodic advance step")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-asyncio", action="store_true")
    args = parser.parse_args(argv)
    started = utc_now_iso()
    n = args.n
    # Time starts at a realistic epoch-milliseconds "now"; due times are in the next window.
    args.start_ms = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    rng = random.Random(args.seed)
    log(f"building {n:,} keys and due times")
    keys = [record_key(i) for i in range(n)]
    offsets = [rng.randrange(1, args.window_ms + 1) for _ in range(n)]
    dues = [args.start_ms + off for off in offsets]
    whens = [off / 1000.0 for off in offsets]  # asyncio's loop.time() is float seconds
    order = list(range(n))
    rng.shuffle(order)
    cancel_keys = [keys[i] for i in order]

    def make_wheel() -> Timers:
        return TimingWheel[str, int](tick_ms=args.tick_ms, slots=args.slots, start_ms=args.start_ms)

    def make_heap() -> Timers:
        return HeapTimers[str, int](args.start_ms)

    results: dict[str, dict[str, Any]] = {}
    results["wheel"] = bench_structure("wheel", make_wheel, keys, dues, cancel_keys, args)
    results["heapq"] = bench_structure("heapq", make_heap, keys, dues, cancel_keys, args)
    if not args.skip_asyncio:
        results["asyncio_call_at"] = bench_asyncio(whens, order)

    m = min(n, 100_000)
    memory = [
        memory_point(m, bytes_per_timer(make_wheel, keys[:m], dues[:m]), what="wheel"),
        memory_point(m, bytes_per_timer(make_heap, keys[:m], dues[:m]), what="heapq"),
    ]
    if not args.skip_asyncio:
        memory.append(memory_point(m, bytes_asyncio(whens[:m]), what="asyncio call_at"))

    throughput = []
    ops_per_s: dict[str, dict[str, float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    for impl, phases in results.items():
        ops_per_s[impl] = {}
        cpu[impl] = {}
        for phase, (ops, timing, method) in phases.items():
            unit = "ops/s" if phase == "schedule+cancel" else "timers/s"
            entry = throughput_entry(f"{impl} {phase}", ops, timing.wall, method=method, unit=unit)
            entry["cpu_seconds"] = round(timing.cpu, 4)
            throughput.append(entry)
            ops_per_s[impl][phase] = entry["value"]
            cpu[impl][phase] = round(ops / timing.cpu, 1) if timing.cpu > 0 else 0.0
    result = envelope(
        "wheel",
        "stream-expiry-wheel",
        params={
            "n": n,
            "window_ms": args.window_ms,
            "tick_ms": args.tick_ms,
            "slots": args.slots,
            "step_ms": args.step_ms,
            "seed": args.seed,
        },
        throughput=throughput,
        memory=memory,
        extra={"ops_per_cpu_s": cpu},
        notes=[
            "Rates are wall-clock; extra.ops_per_cpu_s has the same per CPU second.",
            "schedule+fire: n / (schedule s + fire s), fire waking at each next due time.",
            "schedule+cancel: 2n operations (n inserts, n cancels in random order).",
            "asyncio: real SelectorEventLoop, warped clock (virtual time, one poll with "
            "timeout 0 per wakeup, no sleeping); callback is a C builtin; no key index.",
            "memory: tracemalloc bytes of the structure alone (keys, values preallocated).",
        ],
        started_at=started,
    )
    result["n"] = n
    result["python"] = platform.python_version()
    result["ops_per_s"] = ops_per_s
    emit_result(result)


if __name__ == "__main__":
    main()

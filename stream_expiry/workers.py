"""Work shared out to worker processes: one job each, their progress, their results.

Restore and replay spend Python CPU on every changelog message, and one process uses one
core. Their work divides by partition, so each worker takes some partitions and the parent
adds the results up. Workers are started with ``spawn`` (a fresh interpreter: nothing of the
parent's event loop, Kafka connections or open stores is inherited), which costs a few
tenths of a second (the interpreter and the imports), so callers use them for large reads
only (:func:`worker_count`).

A worker sends its progress as it goes and its result (or its error) at the end; a
worker's error is raised in the parent and the others are stopped.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import time
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio

from stream_expiry.collection import tune_gc
from stream_expiry.errors import StreamExpiryError

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

__all__ = [
    "AUTO_FROM_MESSAGES",
    "Reporter",
    "give_back_freed_memory",
    "run_in_workers",
    "worker_count",
]

log = logging.getLogger("stream_expiry.workers")

# Below this many messages to read, one process: starting workers (a new interpreter each)
# would cost more than they save.
AUTO_FROM_MESSAGES: Final = 500_000
PROGRESS_EVERY_S: Final = 0.2
# How long a worker that sent its result may take to exit before it is killed.
EXIT_WAIT_S: Final = 5.0
_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h
# glibc's mallopt parameters (malloc.h) and the size from which a worker's allocations are
# mapped on their own (see give_back_freed_memory).
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD_BYTES: Final = 256 * 1024

J = TypeVar("J")
R = TypeVar("R")


def _cpus() -> int:
    """The CPUs this process may use: those it may run on, fewer under a cgroup CPU quota
    (a container's ``--cpus``, a Kubernetes CPU limit), where each worker's memory would
    otherwise be paid for CPUs it cannot use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, quota)) if quota is not None else cpus


def _cgroup_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """The CPU quota of this process's cgroup, rounded up (None: no quota, or unknown)."""
    try:  # cgroup v2: "max 100000" or "150000 100000"
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else -(-int(quota) // int(period))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else -(-quota_us // period_us)


def worker_count(asked: int | None, parts: int, messages: int) -> int:
    """How many processes share ``parts`` holding ``messages``: ``asked`` (at most one per
    part), or, when not asked, one per CPU for a large read and 1 otherwise. A daemonic
    process (one that multiprocessing started as such) may not start any."""
    if asked is None:
        asked = 1 if messages < AUTO_FROM_MESSAGES else _cpus()
    n = max(1, min(asked, parts))
    if n > 1 and multiprocessing.current_process().daemon:
        log.warning("working in this process: a daemonic process cannot start workers")
        return 1
    return n


class Reporter:
    """What a worker's function is given to send its progress with (a few times a second)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._at = 0.0

    def __call__(self, progress: object, *, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._at >= PROGRESS_EVERY_S:
            self._at = now
            self._conn.send(("progress", progress))


async def run_in_workers(
    target: Callable[[J, Reporter], R],
    jobs: list[J],
    *,
    name: str,
    on_progress: Callable[[int, Any], None] | None = None,
    hint: str = "",
) -> list[R]:
    """``target(job, reporter)`` for each job, each in a worker process of its own, and
    their results in the order of ``jobs``. ``target`` must be a module-level function (it
    is sent by name). ``on_progress(i, progress)`` is called, in a thread of this process,
    with what worker ``i`` reports. ``hint`` ends the error raised when a worker stops
    without a result (killed, out of memory): what to do next."""
    ctx = multiprocessing.get_context("spawn")
    procs: list[BaseProcess] = []
    conns: list[Connection] = []
    finished = False
    try:
        for i, job in enumerate(jobs):
            ours, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker,
                args=(target, job, theirs, os.getpid()),
                name=f"{name}-{i}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            procs.append(proc)
            conns.append(ours)
        results = await anyio.to_thread.run_sync(
            _collect, conns, procs, name, on_progress, hint, abandon_on_cancel=True
        )
        finished = True
        return results
    finally:
        for started in procs:
            if finished:  # each sent its result and is exiting: let it end on its own
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(started.join, EXIT_WAIT_S)
            if started.is_alive():  # a failure or a cancellation: stop the others now
                started.kill()
            started.join()
        for c in conns:
            c.close()


def _collect(
    conns: list[Connection],
    procs: list[BaseProcess],
    name: str,
    on_progress: Callable[[int, Any], None] | None,
    hint: str,
) -> list[Any]:
    """Wait for every worker's result, passing their progress on; a worker's error is
    raised here."""
    from multiprocessing.connection import wait

    results: dict[int, Any] = {}
    while len(results) < len(conns):
        for ready in wait([c for i, c in enumerate(conns) if i not in results]):
            i = conns.index(ready)  # type: ignore[arg-type]
            try:
                kind, payload = conns[i].recv()
            except EOFError:
                procs[i].join(5)
                raise StreamExpiryError(
                    f"{name} worker {i} stopped without a result (exit code "
                    f"{procs[i].exitcode}; -9 is a kill, often for memory){hint}"
                ) from None
            if kind == "failed":
                raise payload
            if kind == "done":
                results[i] = payload
            elif on_progress is not None:
                on_progress(i, payload)
    return [results[i] for i in range(len(conns))]


def _worker(
    target: Callable[[Any, Reporter], Any], job: Any, conn: Connection, parent: int
) -> None:
    """A worker process: one job, its result (or its error) to the parent."""
    _die_with(parent)
    tune_gc()
    try:
        conn.send(("done", target(job, Reporter(conn))))
    except BaseException as exc:  # every error goes to the parent, to be raised there
        conn.send(("failed", _sendable(exc)))
    finally:
        conn.close()


def _die_with(parent: int) -> None:
    """Have the kernel kill this worker when its parent dies (Linux), so that a parent
    killed outright (SIGKILL, the OOM killer) leaves no worker behind that still holds its
    stores' locks when the service starts again."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pipe's end stops the worker later
        return
    if os.getppid() != parent:  # the parent died before the request: nothing will come
        os._exit(1)


def give_back_freed_memory() -> None:
    """Have glibc map large allocations on their own and return freed memory promptly:
    for a worker whose memory matters more than a few per cent of its speed (replay's).

    A worker reads a changelog in rounds of fetches: megabytes of responses and record
    batches, freed a round later, beside RocksDB's memtable arenas. glibc raises its mmap
    threshold each time such a mapped block is freed, so after the first rounds these
    buffers come from the heap, whose freed space it keeps; a replay worker at 3 M stamps
    held 37 MiB of free heap. A fixed threshold keeps them mapped and unmapped when freed:
    a 10 M-stamp replay's workers peaked at 100-104 MiB instead of 120-125 (RSS), at the
    same rate, and the whole replay completed in a 200 MiB memory cgroup, where it was
    OOM-killed before (``bench.e2e_replay --memory-limit 200``, docs/BENCHMARKS.md).
    Restore's workers do without: the page faults of fresh mappings cost its rate 9 %
    (``bench.bench_restore``, alternating). Elsewhere than glibc (musl, macOS) this does
    nothing.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else an error that tells what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return StreamExpiryError(f"worker failed: {type(exc).__name__}: {exc}")
    return exc

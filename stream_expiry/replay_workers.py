"""``replay`` from ``expiry.stamped`` shared among worker processes, one per CPU.

Replay is Python work per stamp (decode, re-derive, keep a verdict), and one process uses
one core. A record's stamps are all on one partition, so the partitions can be shared out:
each worker replays its own partitions into its own temporary store, publishes its own
changed stamps, and sends its report back; the reports add up to the one a single process
would give (counts add; the sample is the first changes in key order, which the first
changes of each worker's share contain).

Workers are started with ``spawn`` (a fresh interpreter: nothing of this process's event
loop or Kafka connections is inherited), which costs about a second, so a small topic is
replayed here, in this process. They send progress as they read; a worker that fails
sends its error, which is raised here, and the others are stopped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import resource
import time
from dataclasses import replace
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Final

import anyio
from aiokafka import TopicPartition

from stream_expiry.errors import StreamExpiryError
from stream_expiry.kafka import consumer, high_watermarks, partitions_of
from stream_expiry.replay import ProgressBar, ReplayReport, Share, replay_share
from stream_expiry.state import RocksKV

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess
    from typing import TextIO

__all__ = ["AUTO_FROM_MESSAGES", "merge_reports", "replay_stamps", "worker_count"]

log = logging.getLogger("stream_expiry.replay")

# Below this many messages on expiry.stamped, one process: starting workers (a new
# interpreter each, ~1 s) would cost more than they save.
AUTO_FROM_MESSAGES: Final = 500_000
PROGRESS_EVERY_S: Final = 0.2


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count(asked: int | None, partitions: int, messages: int) -> int:
    """How many processes replay ``partitions`` holding ``messages``: ``asked`` (at most
    one per partition), or, when not asked, one per CPU for a large topic and 1 otherwise.
    A daemonic process (one that multiprocessing started as such) may not start any."""
    if asked is None:
        asked = 1 if messages < AUTO_FROM_MESSAGES else _cpus()
    n = max(1, min(asked, partitions))
    if n > 1 and multiprocessing.current_process().daemon:
        log.warning("replaying in this process: a daemonic process cannot start workers")
        return 1
    return n


def merge_reports(reports: list[ReplayReport], sample_size: int) -> ReplayReport:
    """The report of a whole replay from the reports of its shares (disjoint records)."""
    out = ReplayReport()
    for r in reports:
        out.events += r.events
        out.records += r.records
        out.unchanged += r.unchanged
        out.earlier += r.earlier
        out.later += r.later
        out.due_now += r.due_now
        out.never += r.never
        out.states.update(r.states)
        out.worker_rss += r.worker_rss
    samples = sorted((c for r in reports for c in r.sample), key=lambda c: c.key)
    out.sample = samples[:sample_size]
    return out


async def replay_stamps(
    share: Share, *, workers: int | None, progress: TextIO | None
) -> ReplayReport:
    """Replay every partition of ``expiry.stamped``: here, or in worker processes."""
    bar = ProgressBar("stamps", 0, progress) if progress is not None else None
    if workers == 1:
        return await replay_share(share, bar)
    partitions, messages = await _layout(share)
    n = worker_count(workers, len(partitions), messages)
    if n == 1:
        return await replay_share(share, bar)
    shares = [replace(share, partitions=tuple(partitions[i::n])) for i in range(n)]
    return await _in_workers(shares, bar)


async def _layout(share: Share) -> tuple[list[int], int]:
    """The partitions of ``expiry.stamped`` and how many messages they hold."""
    stamped = share.config.topics.stamped
    async with consumer(share.bootstrap) as cons:
        partitions = sorted(await partitions_of(cons, stamped))
        if not partitions:
            return [], 0
        tps = [TopicPartition(stamped, p) for p in partitions]
        cons.assign(tps)
        return partitions, sum((await high_watermarks(cons, tps)).values())


async def _in_workers(shares: list[Share], bar: ProgressBar | None) -> ReplayReport:
    ctx = multiprocessing.get_context("spawn")
    procs: list[BaseProcess] = []
    conns: list[Connection] = []
    try:
        for i, part in enumerate(shares):
            ours, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker,
                args=(part, len(shares), theirs),
                name=f"stream-expiry-replay-{i}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            procs.append(proc)
            conns.append(ours)
        reports = await anyio.to_thread.run_sync(
            _collect, conns, procs, bar, abandon_on_cancel=True
        )
    finally:
        for started in procs:
            if started.is_alive():
                started.kill()
            started.join()
        for c in conns:
            c.close()
    return merge_reports(reports, shares[0].sample_size)


def _collect(
    conns: list[Connection], procs: list[BaseProcess], bar: ProgressBar | None
) -> list[ReplayReport]:
    """Wait for every worker's report, showing their progress added up; a worker's error
    is raised here."""
    done = [0] * len(conns)
    totals = [0] * len(conns)
    reports: dict[int, ReplayReport] = {}
    while len(reports) < len(conns):
        waiting = [c for i, c in enumerate(conns) if i not in reports]
        for ready in wait(waiting):
            i = conns.index(ready)  # type: ignore[arg-type]
            try:
                kind, payload = conns[i].recv()
            except EOFError:
                procs[i].join(5)
                raise StreamExpiryError(
                    f"replay worker {i} stopped without a report (exit code "
                    f"{procs[i].exitcode}); run with --workers 1 to replay in one process"
                ) from None
            if kind == "failed":
                raise payload
            if kind == "done":
                reports[i] = payload
            else:
                done[i], totals[i] = payload
            if bar is not None:
                bar.total = sum(totals)
                bar(sum(done))
    if bar is not None:
        bar(sum(done), final=True)
    return [reports[i] for i in range(len(conns))]


class _Forward:
    """A worker's progress, sent to the parent a few times a second."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.total = 0
        self._at = 0.0

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._at >= PROGRESS_EVERY_S:
            self._at = now
            self.conn.send(("progress", (done, self.total)))


def _worker(share: Share, workers: int, conn: Connection) -> None:
    """A worker process: one share, its report (or its error) to the parent. Its temporary
    store takes its part of one process's memory budget."""
    try:
        RocksKV.share_memory(workers)
        report = anyio.run(replay_share, share, _Forward(conn))
        report.worker_rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        conn.send(("done", report))
    except BaseException as exc:  # every error goes to the parent, to be raised there
        conn.send(("failed", _sendable(exc)))
    finally:
        conn.close()


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else an error that tells what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return StreamExpiryError(f"replay worker failed: {type(exc).__name__}: {exc}")
    return exc

"""``replay`` from ``expiry.stamped`` shared among worker processes, one per CPU.

A record's stamps are all on one partition, so the partitions can be shared out
(:mod:`stream_expiry.workers`): each worker replays its own partitions into its own
temporary store, publishes its own changed stamps, and sends its report back; the reports
add up to the one a single process would give (counts add; the sample is the first changes
in key order, which the first changes of each worker's share contain).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import anyio
from aiokafka import TopicPartition

from stream_expiry.kafka import consumer, partitions_of, stable_ends
from stream_expiry.parts import add_up
from stream_expiry.replay import ProgressBar, ReplayReport, Share, replay_share
from stream_expiry.state import RocksKV
from stream_expiry.state.kv import scratch_directory
from stream_expiry.workers import Reporter, give_back_freed_memory, run_in_workers, worker_count

if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["merge_reports", "replay_stamps"]


def merge_reports(reports: list[ReplayReport], sample_size: int) -> ReplayReport:
    """The report of a whole replay from the reports of its shares (disjoint records)."""
    out = add_up(reports, ReplayReport())
    out.sample = sorted(out.sample, key=lambda c: c.key)[:sample_size]
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
    done, totals = [0] * n, [0] * n

    def on_progress(i: int, read: tuple[int, int]) -> None:
        done[i], totals[i] = read
        if bar is not None:
            bar.total = sum(totals)
            bar(sum(done))

    # The workers' stores go in one directory of this process, removed here: a worker
    # killed (another's failure, an interruption) leaves its store, data included, behind.
    with scratch_directory("stream-expiry-replay-") as scratch:
        jobs = [
            _Job(replace(share, partitions=tuple(partitions[i::n]), scratch=scratch), n)
            for i in range(n)
        ]
        reports = await run_in_workers(
            _replay_job,
            jobs,
            name="replay",
            on_progress=on_progress,
            hint="; --workers 1 replays in one process, with less memory",
        )
    if bar is not None:
        bar(sum(r.events for r in reports), final=True)
    return merge_reports(reports, share.sample_size)


async def _layout(share: Share) -> tuple[list[int], int]:
    """The partitions of ``expiry.stamped`` and how many messages they hold."""
    stamped = share.config.topics.stamped
    async with consumer(share.bootstrap) as cons:
        partitions = sorted(await partitions_of(cons, stamped))
        if not partitions:
            return [], 0
        tps = [TopicPartition(stamped, p) for p in partitions]
        cons.assign(tps)
        return partitions, sum((await stable_ends(cons, tps)).values())


@dataclass(frozen=True)
class _Job:
    share: Share
    workers: int  # how many share the memory budget of one process


class _Forward:
    """A worker's read, as :mod:`stream_expiry.changelog` reports it, sent to the parent."""

    def __init__(self, report: Reporter) -> None:
        self.report = report
        self.total = 0

    def __call__(self, done: int, final: bool = False) -> None:
        self.report((done, self.total), final=final)


def _replay_job(job: _Job, report: Reporter) -> ReplayReport:
    """In a worker: one share replayed, its temporary store taking its part of one
    process's memory budget, and its freed buffers given back as it goes."""
    give_back_freed_memory()
    RocksKV.share_memory(job.workers)
    result = anyio.run(replay_share, job.share, _Forward(report))
    result.worker_rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return result

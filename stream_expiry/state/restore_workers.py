"""Open partition stores and restore them from the changelog, in worker processes when the
read is large.

A cold start (a lost disk, a new instance taking partitions over) reads the whole
changelog, and a restore is Python CPU per stamp: one process uses one core. The stores
divide by changelog partition (those whose stamps share a partition of
``expiry.stamped`` are read together, so each changelog partition is still read once), so
each worker restores some of them with :func:`~stream_expiry.state.restore.restore_partitions`,
exactly what this process would run (:mod:`stream_expiry.workers`). RocksDB lets one
process open a database at a time: the stores are closed here while the workers write
them, and opened again when all are done. A small read is restored here, in this process.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from stream_expiry.errors import NewerStoreError, StoreError
from stream_expiry.fetch import ENDS_WAIT_MS
from stream_expiry.kafka import consumer
from stream_expiry.parts import add_up
from stream_expiry.state.kv import NEWER, RocksKV, move_aside
from stream_expiry.state.restore import (
    RestoreReport,
    RestoreResult,
    prepare_restore,
    restore_partitions,
)
from stream_expiry.state.store import PartitionStore
from stream_expiry.workers import Reporter, run_in_workers, worker_count

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from stream_expiry.kafka_settings import Brokers

__all__ = ["merge_results", "restore_stores"]

log = logging.getLogger("stream_expiry.state.restore")

Source = tuple[str, int]


@dataclass(frozen=True)
class _Job:
    """One worker's stores and what it needs to restore them (sent to the worker)."""

    bootstrap: Brokers
    paths: dict[Source, str]
    grace_ms: int
    stamped: str
    tombstones: str
    now_ms: int
    workers: int  # how many share the memory budget of one process


async def _open_aside(paths: Mapping[Source, str], grace_ms: int) -> dict[Source, PartitionStore]:
    """The stores opened in a worker thread: opening an assignment's 12 held the event loop
    0.28 s (a warm restart, 1 M pending), and heartbeats, ``/healthz`` and the firing of
    partitions already restored wait for the loop. Each database is used by that thread
    alone until it is handed back. Shielded: a cancellation (a revocation) cannot take the
    thread back, and one that dropped its result would leave the stores open, locked; the
    caller's next wait raises it instead, and closes them."""
    if not paths:
        return {}
    with anyio.CancelScope(shield=True):
        stores = await anyio.to_thread.run_sync(_open, paths, grace_ms)
    return stores


def _open(paths: Mapping[Source, str], grace_ms: int) -> dict[Source, PartitionStore]:
    stores: dict[Source, PartitionStore] = {}
    try:
        with RocksKV.opening(len(paths)):  # each sized for them all
            for source, path in paths.items():
                stores[source] = _open_store(path, grace_ms)
    except BaseException:
        _close(stores, failing=True)
        raise
    return stores


def _open_store(path: str, grace_ms: int) -> PartitionStore:
    """The store at ``path``; one a newer version wrote (a rollback) is moved aside, with a
    warning, and an empty one opened in its place, which the restore fills from the
    changelog: read, the newer store would be misread."""
    kv = RocksKV(path)
    try:
        return PartitionStore(kv, grace_ms=grace_ms)
    except NewerStoreError as exc:
        kv.close()
        aside = move_aside(path, NEWER, "was written by a newer version")
        log.warning(
            "%s: %s; moved aside to %s (delete it once the rollback is settled), restoring "
            "it from the changelog",
            path,
            exc,
            aside,
        )
    except BaseException:
        # Closed now, not when the error is collected: the database's lock goes with it.
        # The error crosses from the opening thread (its traceback, holding ``kv``, is
        # kept there a while), and the same store, moved aside when damaged, was opened
        # again while the lock was still held.
        with contextlib.suppress(StoreError):
            kv.close()
        raise
    return PartitionStore(RocksKV(path), grace_ms=grace_ms)


def _close(stores: Mapping[Source, PartitionStore], *, failing: bool = False) -> None:
    """Close every store, also past one whose close fails (RocksDB flushes, and may find a
    damaged file): a store left open keeps its lock, and its path, the damaged store
    moved aside and the restore tried again, was opened afresh against it: "lock hold by
    current process", the service stopped (CI, one run in three of a damaged-store test).
    The first failure is raised once all are closed; ``failing``: an error is on its way
    up already, which a close's must not replace (the damage it found is found again)."""
    first: StoreError | None = None
    for store in stores.values():
        try:
            store.close()
        except StoreError as exc:
            if failing:
                log.warning("%s (the restore had failed already)", exc)
            elif first is None:
                first = exc
    if first is not None:
        raise first


async def restore_stores(
    paths: Mapping[Source, str],
    *,
    bootstrap: Brokers,
    stamped: str,
    tombstones: str,
    now_ms: int,
    grace_ms: int,
    progress: Callable[[RestoreReport], None] | None = None,
    workers: int | None = None,
    max_workers: int | None = None,
    opened: Mapping[Source, PartitionStore] | None = None,
) -> tuple[dict[Source, PartitionStore], RestoreResult]:
    """Open the store of each input partition at its path and bring it up to date with the
    changelog; return the open stores and what the restore did.

    ``opened``: stores of some of them open already (a rebalance gave back partitions the
    service had kept open), used as they are unless the restore goes to worker processes,
    which open every store themselves. Closed, like the others, if the restore fails.

    ``workers``: processes that share the stores out (None: one per CPU when 500,000
    changelog messages or more are to be read, else this process alone), at most
    ``max_workers`` (the service's ``[service] workers``: a small restore, such as a warm
    restart's, stays in this process whatever it says).
    """
    started = time.monotonic()
    opened = opened or {}
    try:
        stores = await _open_aside({s: p for s, p in paths.items() if s not in opened}, grace_ms)
    except BaseException:
        _close(opened, failing=True)
        raise
    stores.update(opened)
    try:
        # Its own fetches only learn the ends (the reads fetch for themselves): a broker
        # holding them for the default wait held every restore 0.1 s, resumed ones too.
        async with consumer(bootstrap, fetch_max_wait_ms=ENDS_WAIT_MS) as reader:
            prepared = await prepare_restore(
                reader, stores, stamped=stamped, tombstones=tombstones, now_ms=now_ms
            )
            groups, backlog = prepared.groups(), prepared.remaining
            # Which were kept, as opened here: the workers open them again, stamped.
            kept = {source: int(store.was_kept()) for source, store in stores.items()}
            n = worker_count(workers, len(groups), backlog)
            n = n if max_workers is None else min(n, max_workers)
            if n == 1:
                return stores, await prepared.run(reader, progress)
    except BaseException:
        _close(stores, failing=True)
        raise
    _close(stores)  # the workers open them
    log.info(
        "restoring %d stores from %d changelog messages in %d worker processes",
        len(paths),
        backlog,
        n,
    )
    jobs = [
        _Job(
            bootstrap,
            {s: paths[s] for group in groups[i::n] for s in group},
            grace_ms,
            stamped,
            tombstones,
            now_ms,
            n,
        )
        for i in range(n)
    ]
    reads = [RestoreReport() for _ in jobs]

    def on_progress(i: int, report: RestoreReport) -> None:
        reads[i] = report
        if progress is not None:
            progress(
                RestoreReport(
                    read=sum(r.read for r in reads),
                    remaining=sum(r.remaining for r in reads),
                    due=sum(r.due for r in reads),
                )
            )

    results = await run_in_workers(
        _restore_job,
        jobs,
        name="restore",
        on_progress=on_progress,
        hint="; [service] workers = 1 restores in the service's own process, with less memory",
    )
    merged = merge_results(results)
    for source, report in merged.stores.items():
        report.kept = kept[source]
    merged.total.kept = sum(kept.values())
    merged.total.seconds = time.monotonic() - started
    for report in merged.stores.values():
        report.seconds = merged.total.seconds
    return await _open_aside(paths, grace_ms), merged


def merge_results(results: list[RestoreResult]) -> RestoreResult:
    """One restore's result from its workers' (each restored its own stores)."""
    return add_up(results, RestoreResult())


def _restore_job(job: _Job, report: Reporter) -> RestoreResult:
    """In a worker: its stores opened, restored, closed; its store memory a share of one
    process's budget."""
    RocksKV.share_memory(job.workers)
    stores = _open(job.paths, job.grace_ms)
    try:
        result = anyio.run(_restore, job, stores, report)
    except BaseException:
        _close(stores, failing=True)
        raise
    _close(stores)
    return result


async def _restore(
    job: _Job, stores: dict[Source, PartitionStore], report: Reporter
) -> RestoreResult:
    async with consumer(job.bootstrap) as reader:
        result = await restore_partitions(
            reader,
            stores,
            stamped=job.stamped,
            tombstones=job.tombstones,
            now_ms=job.now_ms,
            progress=report,
        )
    report(result.total, final=True)
    return result

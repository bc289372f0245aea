"""Retired input topics (``[topics] retired``): taken out of the inputs, their records still
tombstoned at their expiry.

Each stamp names the input partition its event was read from, and the changelog restores
it to that partition's store; an instance fires the stores of the partitions its group
assigns it. So a topic simply taken out of ``[topics] inputs`` left its records to no
instance: kept past their expiry, data and all (a trial). A retired topic stays in the
group's subscription: its partitions are assigned, restored, handed over and fired like
an input's (the range assignor gives partition n of it to the member that has partition n
of the inputs, so its changelog partitions keep their single writer), but they are paused
from the assignment on and never positioned, read or committed. The reading gate
(:mod:`stream_expiry.reading`) never holds them: nothing unread can postpone their records,
since nothing of theirs is read (what producers still send there is ignored). The
committed offsets stay as they were, so a topic listed as an input again resumes there.

A retired topic missing on the cluster is created as an input is (``[topics]
partitions``): its partitions carry the assignment of its stores and hold nothing. The
stores of partitions beyond that count (the topic had more) are assigned to no one:
``stream-expiry status`` counts their records by partition.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

from stream_expiry.errors import StoreError
from stream_expiry.logs import counted
from stream_expiry.state.kv import RocksKV
from stream_expiry.state.store import PartitionStore

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from aiokafka import TopicPartition

__all__ = ["read_and_retired", "say_created", "say_unlisted_stores"]

log = logging.getLogger("stream_expiry.retired")


def read_and_retired(
    tps: Iterable[TopicPartition], retired: Collection[str]
) -> tuple[list[TopicPartition], list[TopicPartition]]:
    """``tps`` split into the partitions to read (inputs) and those of retired topics."""
    read: list[TopicPartition] = []
    kept: list[TopicPartition] = []
    for tp in tps:
        (kept if tp.topic in retired else read).append(tp)
    return read, kept


def say_created(topic: str, partitions: int) -> None:
    """A retired topic the service created, as it was missing (deleted since it was an
    input, or a name mistyped)."""
    log.warning(
        "created retired topic %s, which did not exist, with %d partitions: it is never "
        "read, its partitions only give the instances the stores of the records it stamped. "
        "Records stamped from a partition beyond these are tombstoned by no instance "
        "(`stream-expiry status` counts them); check the name if it is mistyped",
        topic,
        partitions,
    )


def say_unlisted_stores(state_dir: str, inputs: Iterable[str], retired: Iterable[str]) -> None:
    """Warn of the stores in the state directory of partitions of topics that ``[topics]``
    lists neither as inputs nor as retired, with records still to tombstone: no instance
    is assigned such a partition, so none restores its store or fires its timers (a
    trial took a topic out of the inputs, as the switch to ``rekey``'s copies does)."""
    listed = frozenset((*inputs, *retired))
    found: list[tuple[str, int]] = []
    for entry in sorted(os.scandir(state_dir), key=lambda e: e.name):
        topic, _, number = entry.name.rpartition("-")
        if not (topic and number.isdigit() and topic not in listed and entry.is_dir()):
            continue  # a listed topic's store, a store moved aside, or not a store at all
        if not os.path.exists(os.path.join(entry.path, "CURRENT")):
            continue  # not a RocksDB database: opened, it would be made one
        left = _records_left(entry.path)
        if left:
            found.append((f"{topic}[{number}]", left))
    if found:
        total = sum(n for _name, n in found)
        log.warning(
            "the state directory holds %s of partitions of topics that [topics] lists "
            "neither in inputs nor in retired: %s. No instance is assigned those partitions, "
            "so none tombstones these records, at their expiry or later; list their topics "
            "in [topics] retired (or inputs, if producers still write to them) until "
            "`stream-expiry status` says they can be removed (README: Changing the input "
            "topics)",
            counted(total, "record") + " pending or held",
            ", ".join(f"{name} {n:,}" for name, n in found),
        )


def _records_left(path: str) -> int:
    """The records of the store at ``path`` still to tombstone: pending, or kept by a
    legal hold (0, with a warning, when it cannot be read)."""
    kv = None
    try:
        kv = RocksKV(path)
        counts = PartitionStore(kv).counts
        return counts.pending_total + counts.held
    except StoreError as exc:  # damaged, or a newer version's: the service never reads it
        log.warning("%s: its records cannot be counted (%s)", path, exc)
        return 0
    finally:
        if kv is not None:
            with contextlib.suppress(StoreError):
                kv.close()

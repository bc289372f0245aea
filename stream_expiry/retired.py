"""Retired input topics (``[topics] retired``): taken out of the inputs, their records still
tombstoned at their expiry.

Each stamp names the input partition its event was read from, and the changelog restores
it to that partition's store; an instance fires the stores of the partitions its group
assigns it. So a topic simply taken out of ``[topics] inputs`` left its records to no
instance: kept past their expiry, data and all (a trial). A retired topic stays in the
group's subscription: its partitions are assigned, restored, handed over and fired like
an input's (the range assignor gives partition n of it to the member that has partition n
of the inputs when their partition counts are equal, so its changelog partitions keep
their single writer; every partition of it either way), but they are paused
from the assignment on and never positioned, read or committed. The reading gate
(:mod:`stream_expiry.reading`) never holds them: nothing unread can postpone their records,
since nothing of theirs is read (what producers still send there is ignored). The
committed offsets stay as they were, so a topic listed as an input again resumes there.

A retired topic missing on the cluster (deleted since its retirement, or a name
mistyped) is created with as many partitions as the stamps on ``expiry.stamped`` name of
it (at least ``[topics] partitions``): its partitions hold nothing, they only carry the
assignment of its stores, and one made with ``[topics] partitions`` alone, fewer than
the topic had, left the records stamped from the partitions beyond to no instance, kept
forever (a deleted retired topic of 4 partitions under ``partitions = 2``, tested). The
count takes one read of the changelog's headers, at the one start that finds the topic
missing. The group assigns every partition of a retired topic, whatever its count beside
the inputs' (more or fewer, with two instances: each record tombstoned once, tested).

A retired topic that exists with fewer partitions than its stamps name (made again by
hand) is not altered: :class:`PartitionsGone` says which records no instance tombstones
and what to do, from the state directory's stores and the stamps a restore reads.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from stream_expiry.codec import source_of
from stream_expiry.errors import StoreError
from stream_expiry.kafka import (
    consumer,
    ensure_topics,
    key_partition,
    partition_counts,
    read_to_end,
)
from stream_expiry.kafka_settings import topic_configs
from stream_expiry.logs import counted, named
from stream_expiry.reading import END_UNKNOWN
from stream_expiry.state.kv import RocksKV, partition_stores
from stream_expiry.state.store import PartitionStore
from stream_expiry.state.succession import UNREAD

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

    from aiokafka import TopicPartition

    from stream_expiry.config import Config
    from stream_expiry.kafka_settings import Brokers
    from stream_expiry.model import Stamp
    from stream_expiry.state.processor import PartitionProcessor
    from stream_expiry.state.succession import _Unread

__all__ = [
    "PartitionsGone",
    "Successors",
    "create_missing_retired",
    "partitions_stamped_from",
    "read_and_retired",
    "say_created",
    "say_unlisted_stores",
]

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


async def partitions_stamped_from(
    brokers: Brokers, stamped: str, topics: Collection[str]
) -> dict[str, tuple[int, int]]:
    """For each of ``topics`` that stamps on ``stamped`` name as their input: how many
    stamps name it, and the highest partition they name, plus one. Headers only: every
    message of the changelog, nulls and stamps of deleted records too (a partition more
    than needed costs nothing)."""
    wanted = frozenset(topics)
    found: dict[str, tuple[int, int]] = {}
    async with consumer(brokers) as cons:
        async for batch in read_to_end(cons, stamped):
            for records in batch.values():
                for rec in records:
                    source = source_of(rec.headers or ())
                    if source is None or source[0] not in wanted or rec.value is None:
                        continue
                    stamps, count = found.get(source[0], (0, 0))
                    found[source[0]] = (stamps + 1, max(count, source[1] + 1))
    return found


async def create_missing_retired(brokers: Brokers, config: Config) -> dict[str, int]:
    """Create the retired topics the cluster does not have, each with the partitions its
    stamps name (at least ``[topics] partitions``), so that the group assigns the store of
    every partition that stamped a record; and say so, naming the topic. Returns how many
    partitions each retired topic has now."""
    t = config.topics
    if not t.retired:
        return {}  # no metadata request at every session's start for nothing
    counts = await partition_counts(brokers, t.retired)
    missing = [topic for topic, count in counts.items() if count == 0]
    if not missing:
        return counts
    stamped = await partitions_stamped_from(brokers, t.stamped, missing)
    least = config.topic_settings.partitions
    for topic in missing:
        stamps, needed = stamped.get(topic, (0, 0))
        partitions = counts[topic] = max(least, needed)
        created = await ensure_topics(
            brokers,
            [topic],
            partitions=partitions,
            configs={topic: topic_configs(config)[topic]},
            replication=config.topic_settings.replication_factor,
        )
        if created:
            say_created(topic, partitions, stamps)
    return counts


class PartitionsGone:
    """Says which records were stamped from partitions that a retired topic no longer has
    (deleted and made again by hand with fewer, or by a broker that makes a topic when a
    client names it, with its default count): the group assigns only the partitions the
    topic has, so no instance restores or fires the stores of the others, and their
    records were kept, data and all, forever without a word.

    Two cheap sources, neither a read of its own: the stores of such partitions in the
    state directory (the instance held them before), and the stamps of such partitions a
    restore reads on the changelog anyway (a new instance, or a lost state directory,
    reads its changelog partitions whole). The group's committed offsets do not tell:
    deleting a topic deletes them (Apache Kafka, Redpanda, and the test broker, measured).
    The topic is not altered: adding partitions cannot be undone, and it is a topic the
    user made; the warning says how. Each partition is said once a run."""

    def __init__(self) -> None:
        self._said: set[tuple[str, int]] = set()

    def in_state_dir(self, state_dir: str, counts: Mapping[str, int]) -> None:
        """Say the records of the stores in ``state_dir`` of partitions past ``counts``
        (each retired topic's partitions now) still to tombstone."""
        found: dict[str, dict[int, int]] = {}
        for topic, partition, path in partition_stores(state_dir):
            count = counts.get(topic, 0)
            if (topic, partition) in self._said or not 0 < count <= partition:
                continue
            if left := _records_left(path):
                found.setdefault(topic, {})[partition] = left
        for topic, partitions in found.items():
            self._say(
                topic,
                counts[topic],
                partitions,
                f"this instance's state directory holds "
                f"{counted(sum(partitions.values()), 'record')} pending or held",
            )

    def on_changelog(
        self, stamps: Mapping[tuple[str, int], int], counts: Mapping[str, int]
    ) -> None:
        """Say the ``stamps`` a restore read of partitions past ``counts``. Messages, not
        records: a record tombstoned since still has its stamp there until compaction
        removes it, so the warning sends the operator to ``status`` (live records only)
        before the topic is altered, which cannot be undone (a review)."""
        found: dict[str, dict[int, int]] = {}
        for (topic, partition), n in sorted(stamps.items()):
            if 0 < counts.get(topic, 0) <= partition:
                found.setdefault(topic, {})[partition] = n
        for topic, partitions in found.items():
            self._say(
                topic,
                counts[topic],
                partitions,
                f"the changelog holds {counted(sum(partitions.values()), 'stamp')}",
                caveat="Those stamps may be of records tombstoned since (compaction removes "
                "them later): `stream-expiry status` counts the live ones; if it names none "
                "of this topic's, there is nothing to do. ",
            )

    def _say(
        self,
        topic: str,
        count: int,
        partitions: Mapping[int, int],
        holds: str,
        caveat: str = "",
    ) -> None:
        if all((topic, p) in self._said for p in partitions):
            return
        self._said.update((topic, p) for p in partitions)
        needed = max(partitions) + 1
        log.warning(
            "retired topic %s has %d partitions, but %s of its partitions %s, which it no "
            "longer has (made again with fewer?): the group assigns no instance those "
            "partitions, so none tombstones these records, at their expiry or ever. %sGive "
            "it its %d partitions again (kafka-topics.sh --alter --topic %s --partitions %d), "
            "or stop the instances and delete it: the next start makes it with as many as "
            "its stamps name. Its records are then tombstoned, those overdue at once "
            "(README: Changing the input topics)",
            topic,
            count,
            holds,
            named([f"{topic}[{p}] {n:,}" for p, n in sorted(partitions.items())]),
            caveat,
            needed,
            topic,
            needed,
        )


class Successors:
    """Where a retired partition's record lives on, as far as this instance sees
    (:class:`~stream_expiry.state.succession.Successor`): the partition of each input
    topic that ``rekey`` copies the record to, the CRC-32 of its key modulo the topic's
    partitions (:func:`~stream_expiry.kafka.key_partition`, as ``rekey`` produces), if
    this instance holds it. A record the copies hold in several topics (two producers'
    topics copied, one record's events in both) follows the latest expiry; :data:`UNREAD`
    while any of those partitions has input not read yet (``unread``, the reading's
    :attr:`~stream_expiry.reading.InputReading.unread`: a backlog being caught up, or a
    touch sent before the expiry), up to the end noted when the record was first asked
    about: once that partition's processor has decided its input up to there
    (:attr:`~stream_expiry.state.processor.PartitionProcessor.decided_to`; the reading's
    position moves before the records it took are decided), the record is decided,
    whatever was sent since (waiting for no input unread at all, a partition never idle
    kept it waiting for ever). A partition another instance holds is not seen: its
    record fires as before (README: Changing the input topics)."""

    def __init__(
        self,
        processors: Mapping[tuple[str, int], PartitionProcessor],
        unread: Mapping[tuple[str, int], int],
        inputs: Sequence[str],
        partitions: Callable[[str], int],
    ) -> None:
        self._processors = processors
        self._unread = unread
        self._inputs = inputs
        self._partitions = partitions
        # (record key, partition) -> the offset that partition must read up to before the
        # record is decided: its end when the record was first asked about.
        self._targets: dict[tuple[str, tuple[str, int]], int] = {}

    def __call__(self, key: str) -> Stamp | _Unread | None:
        raw = key.encode()
        latest: Stamp | None = None
        for topic in self._inputs:
            count = self._partitions(topic)
            if count <= 0:
                continue
            slot = (topic, key_partition(raw, count))
            proc = self._processors.get(slot)
            if self._waits(key, slot, proc):  # assigned, restoring, catching up, or lagging
                return UNREAD
            if proc is None:
                continue
            state = proc.state_of(key)
            if state is not None and (latest is None or _later(state, latest)):
                latest = state
        return latest

    def _waits(self, key: str, slot: tuple[str, int], proc: PartitionProcessor | None) -> bool:
        """Whether ``slot`` (``proc``: None while it is restored) has not decided yet what
        was sent to it before ``key`` was first asked about (an end not known yet,
        ``END_UNKNOWN``, is taken once it is)."""
        end = self._unread.get(slot)
        if end is None:
            self._targets.pop((key, slot), None)
            return False
        noted = self._targets.get((key, slot))
        target = end if noted is None or noted == END_UNKNOWN else noted
        if proc is not None and proc.decided_to >= target:
            self._targets.pop((key, slot), None)
            return False
        self._targets[(key, slot)] = target
        while len(self._targets) > _TARGETS_MAX:  # left by partitions revoked meanwhile
            del self._targets[next(iter(self._targets))]
        return True


# Records waiting for a successor's input remembered at most (the oldest dropped: asked
# again, such a record waits for the end noted then).
_TARGETS_MAX = 100_000


def _later(state: Stamp, than: Stamp) -> bool:
    """Whether ``state`` is live and ends after ``than`` (never counts as latest)."""
    if not state.live:
        return False
    if not than.live or state.expires_at is None:
        return True
    return than.expires_at is not None and state.expires_at > than.expires_at


def say_created(topic: str, partitions: int, stamps: int) -> None:
    """A retired topic the service created, as it was missing (deleted since it was an
    input, or a name mistyped): with no stamp naming it, a typo is likely."""
    if stamps:
        log.warning(
            "created retired topic %s, which did not exist, with %d partitions, as many as "
            "the %s naming it on the changelog need: it is never read, its partitions only "
            "give the instances the stores of the records it stamped, which are tombstoned "
            "at their expiry",
            topic,
            partitions,
            counted(stamps, "stamp"),
        )
        return
    log.warning(
        "created retired topic %s, which did not exist, with %d partitions: no stamp on "
        "the changelog names it, so no record of it is left to tombstone; check the name "
        "if it is mistyped (the records of the topic meant are tombstoned by no instance "
        "until it is listed: `stream-expiry status` counts them)",
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
    for topic, partition, path in partition_stores(state_dir):
        if topic in listed:
            continue
        left = _records_left(path)
        if left:
            found.append((f"{topic}[{partition}]", left))
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

"""``stream-expiry status``: what is pending, due, overdue and held, and how far behind.

Computed from Kafka alone, so it answers for the whole deployment whatever the number of
instances and wherever their disks are: the records from ``expiry.stamped`` (streamed
through a temporary on-disk store, like ``replay``, which keeps of each record only what
the counts need, never its ``data``), the holds from ``expiry.holds``, and the lag from the
input partitions' ends and the service group's committed offsets.

A record is *pending* until its due time (its expiry, or an erasure request), *held* when
it is due but a legal hold matches it, and *overdue* when it is due and nothing holds it:
the service should have tombstoned it (a few are normal for an instant; many mean it is down
or behind). With ``[archive] required``, *waiting for the archive* counts the overdue
records whose latest stamp the archive group has not committed past: the service keeps
those on purpose (:mod:`stream_expiry.archive_gate`), so their purges are late because the
archive is, not the service. The one read of ``expiry.stamped`` keeps where each record's
latest stamp is (partition and offset), which is compared with the group's committed
offsets, asked for after the read (what the archive wrote meanwhile, it holds).

Records stamped from input topics that ``[topics] inputs`` does not list are said apart
(no instance tombstones them), and those of ``[topics] retired`` by topic; of a retired
topic, those stamped from partitions it no longer has (made again with fewer) are said
too, with what to do: the group assigns only the partitions a topic has, so no instance
tombstones them. The service says the same at its start, but only an instance that held
those stores or restored those changelog partitions sees them; ``status`` reads the whole
changelog and sees all.
"""

from __future__ import annotations

import difflib
import logging
import os
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiokafka.errors import KafkaError

from stream_expiry import codec
from stream_expiry.archive import archived_offsets
from stream_expiry.changelog import read_latest
from stream_expiry.errors import BrokerError
from stream_expiry.hold_command import doubt_as_dict, doubt_line, placed_by, read_holds
from stream_expiry.instances import (
    CLIENT_ID,
    POLICY_FORM,
    SINK_STORES,
    Group,
    describe_group,
    earlier_digests,
    mixed_policies,
    sink_group,
)
from stream_expiry.kafka import (
    admin_client,
    committed_offsets,
    consumer,
    missing_topics,
    partition_counts,
    stable_ends,
    topic_partitions,
)
from stream_expiry.logs import counted, printable
from stream_expiry.model import decode_key
from stream_expiry.state import RocksKV
from stream_expiry.state.kv import scratch_directory
from stream_expiry.timeutil import format_ts

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Collection, Mapping, Sequence

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream_expiry.changelog import Fold
    from stream_expiry.config import Config
    from stream_expiry.holds import HoldBook
    from stream_expiry.kafka_settings import Brokers

__all__ = ["Status", "StoreProgress", "run_status", "status", "text_lines"]

log = logging.getLogger("stream_expiry.status")


@dataclass
class Status:
    """The figures ``status`` prints (``--json`` gives this as one object)."""

    at: int
    pending: Counter[str] = field(default_factory=Counter)  # by category
    never: int = 0
    next_due: int | None = None
    overdue: int = 0
    oldest_overdue: int | None = None  # the earliest due time among the overdue
    held: Counter[str] = field(default_factory=Counter)  # records held, by hold id
    # Of those, the records that wait with an erasure request, and the oldest request
    # among them, by hold id: an erasure has a deadline, and "N records held" did not say
    # which erasures a hold kept waiting, nor since when (a trial).
    erasures_held: Counter[str] = field(default_factory=Counter)
    oldest_erasure_held: dict[str, int] = field(default_factory=dict)
    # Records each hold matches, pending ones too: a hold placed on records not due yet
    # held none, alike a hold with a typo in its record id (a trial), until they fell due.
    matched: Counter[str] = field(default_factory=Counter)
    holds: list[dict[str, Any]] = field(default_factory=list)
    # Who placed each hold, by (hold id, placed_at), as its hold_placed entry on
    # expiry.audit says (hold_command.placed_by, as `hold list` reads it): the hold's
    # message does not carry it, and an officer reading status asked who to turn to
    # about a hold; absent, unknown.
    placers: dict[tuple[str, str], str] = field(default_factory=dict)
    # Hold ids whose latest message on a partition cannot be read: a start refuses for
    # them, and left out they looked like ids that hold nothing.
    holds_in_doubt: list[dict[str, Any]] = field(default_factory=list)
    lag: dict[str, dict[str, int | None]] = field(default_factory=dict)  # "topic[p]" -> ...
    # Of the overdue, those the archive has not written ([archive] required; else None).
    archive_waiting: int | None = None
    # The consumer group whose committed offsets the lag is measured from: the service's
    # group_id as this command's config gives it (a wrong one shows every event as lag).
    group: str | None = None
    # The service's instances: its group's members as the broker describes them.
    instances: Group | None = None
    # Live records (pending or overdue) whose latest stamp came from a topic the config's
    # [topics] inputs does not list, by that topic: no instance holds their partitions, so
    # none tombstones them (inputs changed, a rekey switch say); they are in the counts too.
    not_inputs: dict[str, Counter[str]] = field(default_factory=dict)
    # The same of each topic of [topics] retired (every one, 0 when none is left): the
    # instances fire them; a topic with none left can be taken out of retired.
    retired: dict[str, Counter[str]] = field(default_factory=dict)
    # Of those, the records stamped from partitions a retired topic no longer has (made
    # again with fewer), by topic and partition: the group assigns no instance those
    # partitions, so none tombstones them; and how many partitions each topic has now.
    partitions_gone: dict[str, dict[int, Counter[str]]] = field(default_factory=dict)
    retired_partitions: dict[str, int] = field(default_factory=dict)
    # The downstream stores: by sink group, what it has not applied yet of expiry.stamped
    # and expiry.tombstones. A tombstone on time in Kafka is data still held until its
    # store applies it, and nothing else here said how far behind the stores were.
    stores: dict[str, StoreProgress] = field(default_factory=dict)
    # The groups looked for: those named (--sink-group), else the sinks' default ones.
    sink_groups: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": format_ts(self.at),
            "pending": dict(sorted(self.pending.items())),
            "pending_total": sum(self.pending.values()),
            "never": self.never,
            "next_due": None if self.next_due is None else format_ts(self.next_due),
            "overdue": self.overdue,
            "oldest_overdue": None
            if self.oldest_overdue is None
            else format_ts(self.oldest_overdue),
            "archive_waiting": self.archive_waiting,
            "holds": [
                h
                | {
                    "records_held": self.held.get(h["hold_id"], 0),
                    "erasures_held": self.erasures_held.get(h["hold_id"], 0),
                    "oldest_erasure_held": _ts_or_none(self.oldest_erasure_held.get(h["hold_id"])),
                    "records_matched": self.matched.get(h["hold_id"], 0),
                    "by": self.placers.get((h["hold_id"], h["placed_at"])),
                }
                for h in self.holds
            ],
            "holds_in_doubt": self.holds_in_doubt,
            "lag": self.lag,
            "group": self.group,
            "instances": None if self.instances is None else self.instances.as_dict(),
            "not_inputs": {
                topic: {"pending": n["pending"], "due": n["due"]}
                for topic, n in sorted(self.not_inputs.items())
            },
            "retired": {
                topic: {"pending": n["pending"], "due": n["due"]}
                for topic, n in sorted(self.retired.items())
            },
            "retired_partitions_gone": {
                topic: _gone_dict(topic, self.retired_partitions.get(topic, 0), gone)
                for topic, gone in sorted(self.partitions_gone.items())
            },
            "stores": {group: p.as_dict(self.at) for group, p in self.stores.items()},
            "sink_groups": list(self.sink_groups),
        }


@dataclass
class StoreProgress:
    """How far one sink group (a downstream store) is behind the service's outputs."""

    # Every partition of expiry.stamped and expiry.tombstones: "topic[p]" -> end, committed
    # and lag, as the input partitions' lag.
    partitions: dict[str, dict[str, int | None]]
    stamps_behind: int = 0  # stamps (and nulls) not written to the store yet
    # False: the group committed tombstones and no offset on a changelog partition that has
    # messages: a consumer of the tombstones alone (examples/tombstone_consumer.py), whose
    # "changelog messages not applied" were every message, a count that never went down (a
    # user trial). Its stamps_behind is then not counted (null in the JSON).
    reads_changelog: bool = True
    tombstones_behind: int = 0  # deletions the store has not made yet
    # The Kafka timestamp of the oldest tombstone not applied: since when a deletion is due
    # in the store and the row is still there (None: none waits).
    oldest_tombstone_waiting: int | None = None
    # The group's members as the broker describes it (None: it would not say): a store
    # behind with none is a sink that is not running, not one too slow; the SRE's first
    # question, and nothing here answered it.
    running: int | None = None
    # A group named that committed nothing: the listed group closest to its name that has
    # committed on these topics (a mistyped --sink-group; None: none is close).
    did_you_mean: str | None = None

    @property
    def committed(self) -> bool:
        """Whether the group committed anything: a group that never did is no sink (a name
        mistyped, or a store that never ran), and its "lag" would be every message."""
        return any(p["committed"] is not None for p in self.partitions.values())

    def as_dict(self, at: int) -> dict[str, Any]:
        oldest = self.oldest_tombstone_waiting
        return {
            "committed": self.committed,
            "running": self.running,
            "stamps_behind": self.stamps_behind if self.reads_changelog else None,
            "reads_changelog": self.reads_changelog,
            "tombstones_behind": self.tombstones_behind,
            "oldest_tombstone_waiting": _ts_or_none(oldest),
            # How late the store's deletions are: status's time less that tombstone's.
            "tombstones_waiting_s": None if oldest is None else max(0, at - oldest) / 1000,
            "partitions": self.partitions,
            "did_you_mean": self.did_you_mean,
        }


def _ts_or_none(ms: int | None) -> str | None:
    return None if ms is None else format_ts(ms)


def _gone_dict(topic: str, partitions: int, gone: dict[int, Counter[str]]) -> dict[str, Any]:
    """A retired topic's records of partitions it no longer has, as ``--json`` gives them:
    its partitions now, as many as its stamps need (``needed``, what to give it), and the
    live records of each partition gone (``"topic[p]"``, as ``lag`` names partitions)."""
    return {
        "partitions": partitions,
        "needed": max(gone) + 1,
        "pending": sum(n["pending"] for n in gone.values()),
        "due": sum(n["due"] for n in gone.values()),
        "gone": {
            f"{topic}[{p}]": {"pending": n["pending"], "due": n["due"]}
            for p, n in sorted(gone.items())
        },
    }


# What status keeps of a record, and no more (its counts need no data, and a scratch store
# holding every stamp's data put every user's data on disk while it ran): the partition and
# offset of its latest stamp (what ``[archive] required`` compares with the archive's
# commits), its due time (_NEVER: none), two flags, the input topic its stamp names, as
# an index into :class:`_Sources` (0: an input of the config, or none named), and its
# oldest erasure request a hold keeps waiting, of its own life or of a held one (_NEVER:
# none). The key,
# which names the record, is the store's key: a hold matches records by their ids.
_AT = struct.Struct(">iqqBHq")
_NEVER = -(2**63)
_ERASURE = 1  # the due time is an erasure request's: it never waits for the archive
_HELD_LIVES = 2  # it keeps earlier lives a hold kept


class _Sources:
    """The input topics named by stamps that ``[topics] inputs`` does not list, each given
    a number (from 1) that a record's entry keeps: a record of such a topic is one no
    instance tombstones unless the topic is in ``retired`` (the instances hold the
    partitions of their inputs and retired topics only, and the service routes each
    changelog message to the store of the input partition it names). A partition of a
    retired topic past ``counts`` (its partitions now; 0 or none: not known, as for a
    missing topic, which the service makes with the partitions its stamps name) gets a
    number of its own (``partitions``: which one; -1 for a whole topic): the group assigns
    it to no instance."""

    def __init__(
        self,
        inputs: Collection[str],
        retired: Collection[str] = (),
        counts: Mapping[str, int] | None = None,
    ) -> None:
        self._inputs = frozenset(inputs)
        self.retired = frozenset(retired)
        self._counts = {t: n for t, n in (counts or {}).items() if t in self.retired and n > 0}
        self.topics: list[str] = [""]  # index 0: an input, or no source named
        self.partitions: list[int] = [-1]  # -1: not a partition gone
        self._index: dict[tuple[str, int], int] = {}

    def index(self, headers: Any) -> int:
        source = codec.source_of(headers or ())
        if source is None or source[0] in self._inputs:
            return 0
        topic, partition = source
        count = self._counts.get(topic)
        slot = (topic, partition if count is not None and partition >= count else -1)
        found = self._index.get(slot)
        if found is None:
            # More topics than an index holds would be a cluster shared by thousands of
            # configs; the last index then stands for the rest.
            found = self._index[slot] = min(len(self.topics), 0xFFFF)
            if found == len(self.topics):
                self.topics.append(topic)
                self.partitions.append(slot[1])
        return found


def _folding(sources: _Sources | None) -> Fold:
    """A :data:`~stream_expiry.changelog.Fold` keeping what :func:`_count` needs of the
    latest stamp; a deletion, or a stamp that cannot be read, drops the key (nothing of it
    is counted). ``sources``: where the input topics a stamp names are told from the
    others (None: not asked)."""

    def fold(
        partition: int, offset: int, headers: Any, key: bytes, value: bytes | None
    ) -> bytes | None:
        if value is None:
            return None
        try:
            stamp = codec.decode_stamp(key, value)
        except ValueError:
            return None
        due = stamp.due_at
        flags = (_ERASURE if stamp.erase_at is not None else 0) | (
            _HELD_LIVES if stamp.held_lives else 0
        )
        source = 0 if sources is None else sources.index(headers)
        erasures = [life[4] for life in stamp.held_lives if life[4] is not None]
        if stamp.erase_at is not None:
            erasures.append(stamp.erase_at)
        erased = min(erasures, default=_NEVER)
        return _AT.pack(partition, offset, _NEVER if due is None else due, flags, source, erased)

    return fold


_latest = _folding(None)


def _count(
    result: Status,
    kv: RocksKV,
    holds: HoldBook,
    archived: dict[int, int] | None = None,
    sources: _Sources | None = None,
) -> None:
    """Count every record of ``kv`` (as :func:`_latest` keeps them). ``archived``
    (``[archive] required``): the archive group's committed offset per partition of
    ``expiry.stamped``; a record whose latest stamp is at or after it is not archived."""
    now = result.at
    any_holds = len(holds) > 0
    if archived is not None:
        result.archive_waiting = 0
    for key, raw in kv.scan(b"", b"\xff" * 8):
        partition, offset, due_or_never, flags, source, erased = _AT.unpack(raw)
        identity = decode_key(key.decode())
        due = None if due_or_never == _NEVER else due_or_never
        overdue = due is not None and due <= now
        if source and due is not None and sources is not None:
            topic = sources.topics[source]
            left = result.retired if topic in sources.retired else result.not_inputs
            when = "due" if overdue else "pending"
            left.setdefault(topic, Counter())[when] += 1
            if (gone := sources.partitions[source]) >= 0:
                result.partitions_gone.setdefault(topic, {}).setdefault(gone, Counter())[when] += 1
        if due is None:
            result.never += 1
        elif not overdue:
            result.pending[identity.category] += 1
            result.next_due = due if result.next_due is None else min(result.next_due, due)
        matching = holds.holding(identity) if any_holds else []
        for h in matching:
            result.matched[h.hold_id] += 1
        # Held: overdue under a hold, or keeping earlier lives a hold kept.
        holding = matching if overdue or flags & _HELD_LIVES else []
        for h in holding:
            result.held[h.hold_id] += 1
            if erased != _NEVER:
                result.erasures_held[h.hold_id] += 1
                old = result.oldest_erasure_held.get(h.hold_id)
                result.oldest_erasure_held[h.hold_id] = erased if old is None else min(old, erased)
        if overdue and not holding:
            assert due is not None
            result.overdue += 1
            old = result.oldest_overdue
            result.oldest_overdue = due if old is None else min(old, due)
            # An erasure never waits for the archive; an expiry does, until it is written.
            if (
                archived is not None
                and not flags & _ERASURE
                and offset >= archived.get(partition, 0)
            ):
                result.archive_waiting = (result.archive_waiting or 0) + 1
        elif (
            archived is not None
            and flags & _HELD_LIVES
            and not holding
            and offset >= archived.get(partition, 0)
        ):
            # Earlier lives no hold keeps: they wait for the archive (an event after a
            # life's expiry kept it and started the next one, a trial saw counted nowhere).
            result.archive_waiting = (result.archive_waiting or 0) + 1


async def _ends(cons: AIOKafkaConsumer, topics: Collection[str]) -> dict[TopicPartition, int]:
    """The end of each partition of ``topics``, which ``cons`` is assigned to fetch them."""
    tps = await topic_partitions(cons, topics)
    if not tps:
        return {}
    cons.assign(tps)
    return await stable_ends(cons, tps)


async def _offsets(
    brokers: Brokers,
    group_id: str,
    topics: Collection[str],
    ends: Mapping[TopicPartition, int] | None = None,
) -> dict[TopicPartition, dict[str, int | None]]:
    """Each partition of ``topics``: its end, the group's committed offset (None: never
    committed) and the lag between them (from 0 where none is committed). ``ends``: the
    topics' ends read already, for another group (:func:`_stores`), else read here."""
    async with consumer(brokers, group_id=group_id) as cons:
        if ends is None:
            ends = await _ends(cons, topics)
        committed = await committed_offsets(cons, ends)
    return {
        tp: {"end": ends[tp], "committed": c, "lag": ends[tp] - (c or 0)}
        for tp, c in committed.items()
    }


def _named(
    parts: Mapping[TopicPartition, dict[str, int | None]],
) -> dict[str, dict[str, int | None]]:
    return {f"{tp.topic}[{tp.partition}]": v for tp, v in parts.items()}


async def _lag(config: Config, brokers: Brokers) -> dict[str, dict[str, int | None]]:
    return _named(await _offsets(brokers, config.group_id, config.topics.inputs))


async def _oldest_message(brokers: Brokers, at: Mapping[TopicPartition, int]) -> int | None:
    """The Kafka timestamp of the oldest of the first messages at or after each offset of
    ``at`` (None when none is read within 10 s): a plain reader, which commits nothing."""
    if not at:
        return None
    found: dict[TopicPartition, int] = {}
    async with consumer(brokers) as reader:
        reader.assign(list(at))
        for tp, offset in at.items():
            reader.seek(tp, offset)
        deadline = time.monotonic() + 10
        while len(found) < len(at) and time.monotonic() < deadline:
            for tp, records in (await reader.getmany(timeout_ms=500)).items():
                if records and tp not in found:
                    found[tp] = records[0].timestamp
                    reader.pause(tp)
    return min(found.values(), default=None)


async def _stores(
    config: Config, brokers: Brokers, groups: Collection[str], *, named: bool
) -> dict[str, StoreProgress]:
    """What each sink group has not applied yet of the service's outputs. Groups looked
    for by their default names (``named`` False) are left out when they committed nothing:
    no such store runs here."""
    t = config.topics
    out: dict[str, StoreProgress] = {}
    if not groups:
        return out
    outputs = (t.stamped, t.tombstones)
    # Every group against the same ends, read once (each group's consumer fetched them
    # again: one fetch a group, for the same topics), by a plain reader. Every group's
    # committed offsets then, before the slower lookups below: a sink that runs commits
    # on, and later than the ends it would seem to have gone past them.
    async with consumer(brokers) as reader:
        ends = await _ends(reader, outputs)
    offsets = {group: await _offsets(brokers, group, outputs, ends) for group in groups}
    for group, parts in offsets.items():
        progress = StoreProgress(_named(parts))
        if not progress.committed:
            if named:
                progress.did_you_mean = await _closest_sink(brokers, group, outputs, ends)
                out[group] = progress
            continue
        changelog = [p for tp, p in parts.items() if tp.topic == t.stamped]
        progress.reads_changelog = any(p["committed"] is not None for p in changelog) or not any(
            p["end"] for p in changelog
        )
        waiting: dict[TopicPartition, int] = {}
        for tp, p in parts.items():
            behind = max(0, p["lag"] or 0)
            if tp.topic == t.tombstones:
                progress.tombstones_behind += behind
                if behind:
                    waiting[tp] = p["committed"] or 0
            else:
                progress.stamps_behind += behind
        progress.oldest_tombstone_waiting = await _oldest_message(brokers, waiting)
        described = await describe_group(brokers, group)
        progress.running = None if described.error else len(described.members)
        out[group] = progress
    return out


async def _closest_sink(
    brokers: Brokers, group: str, outputs: Collection[str], ends: Mapping[TopicPartition, int]
) -> str | None:
    """The group the cluster lists whose name is closest to ``group``'s, among those that
    committed offsets on ``outputs``: a ``--sink-group`` mistyped by a letter was said to
    be "not a sink's --group-id, or its sink never ran", and nothing named the group meant
    (a trial), as every other misspelt name here is answered."""
    try:
        async with admin_client(brokers) as admin:
            listed = await admin.list_consumer_groups()
    except (KafkaError, BrokerError):  # the admin client's own failures come as BrokerError
        return None  # the suggestion is a help, not the answer
    names = sorted({str(g[0]) for g in listed} - {group})
    for close in difflib.get_close_matches(group, names, n=3):
        parts = await _offsets(brokers, close, outputs, ends)
        if any(p["committed"] is not None for p in parts.values()):
            return close
    return None


async def _sink_groups(brokers: Brokers) -> tuple[str, ...]:
    """The groups a sink joins unless given ``--group-id``: ``stream-expiry-sink-NAME``,
    NAME its ``--name`` (else its store type). The two store types' first, then every
    other such group the cluster lists: a store given ``--name eu`` (its receipts say
    ``store eu`` to ``deletions``) was left out without a word, only the two type names
    were looked for. A broker that will not list its groups leaves the two."""
    defaults = [sink_group(store) for store in SINK_STORES]
    prefix = sink_group("")
    try:
        async with admin_client(brokers) as admin:
            listed = await admin.list_consumer_groups()
    except KafkaError as exc:
        log.warning(
            "the broker did not list its consumer groups (%r): sink groups other "
            "than %s are not looked for",
            exc,
            " and ".join(defaults),
        )
        listed = []
    named = sorted({str(g[0]) for g in listed if str(g[0]).startswith(prefix)} - set(defaults))
    return (*defaults, *named)


async def status(
    config: Config,
    brokers: Brokers,
    *,
    now_ms: int | None = None,
    clock: Callable[[], int],
    sink_groups: Sequence[str] = (),
) -> Status:
    """``sink_groups``: the downstream stores' consumer groups to report on; none named,
    the sinks' default groups (:func:`~stream_expiry.instances.sink_group`, of every
    ``--name``) that have committed offsets on this config's topics."""
    result = Status(at=clock() if now_ms is None else now_ms)
    t = config.topics
    said = {t.stamped: "no record is counted", t.holds: "no hold is shown"}
    for topic in await missing_topics(brokers, [t.stamped, t.holds, *t.inputs]):
        # Read as empty, a mistyped or left-out [topics] gave "pending 0" and no lag lines,
        # which look like an idle deployment; and "legal holds 0" (a compliance trial).
        # Where the name came from: "is it the service's [topics] of --config?" was also
        # said to a run given it, whose STREAM_EXPIRY_TOPICS_* variable was the cause.
        source, fix = t.origin(t.key_of(topic), config.path)
        log.warning(
            "%s (%s) does not exist on the cluster: %s (if that is not the services' name: "
            "%s; else the service creates its topics at its first start)",
            topic,
            source,
            said.get(topic, "no lag is shown for it"),
            fix,
        )
    holds = await read_holds(config, brokers)
    result.holds = [h.as_dict() for h in sorted(holds, key=lambda h: h.hold_id)]
    result.placers = await placed_by(config, brokers, holds)
    result.holds_in_doubt = [
        {"hold_id": d.hold_id, **doubt_as_dict(t.holds, d)} for d in holds.in_doubt()
    ]
    topic = config.topics.stamped
    with scratch_directory("stream-expiry-status-") as work:
        # A scratch store, thrown away after the count (as replay's): no write-ahead log.
        kv = RocksKV(os.path.join(work, "current"), durable=False)
        try:
            # One metadata request (none without retired topics): a retired topic's
            # partitions now, to tell the records of partitions it no longer has.
            counts = await partition_counts(brokers, t.retired) if t.retired else {}
            result.retired_partitions = counts
            sources = _Sources(t.inputs, t.retired, counts)
            result.retired = {name: Counter() for name in t.retired}
            await read_latest(brokers, topic, kv, _folding(sources))
            archived = None
            if config.archive.required:  # after: what the archive wrote since, it holds
                archived = await archived_offsets(brokers, config.archive.group_id, topic)
            _count(result, kv, holds, archived, sources)
        finally:
            kv.close()
    result.lag = await _lag(config, brokers)
    result.group = config.group_id
    result.instances = await describe_group(brokers, config.group_id)
    groups = tuple(dict.fromkeys(sink_groups)) or await _sink_groups(brokers)
    result.sink_groups = groups
    result.stores = await _stores(config, brokers, groups, named=bool(sink_groups))
    return result


async def run_status(config: Config, brokers: Brokers, args: argparse.Namespace) -> int:
    from stream_expiry.service import wall_clock_ms

    result = await status(config, brokers, clock=wall_clock_ms, sink_groups=args.sink_group or ())
    if args.json:
        sys.stdout.write(orjson.dumps(result.as_dict()).decode() + "\n")
        return 0
    for line in text_lines(result.as_dict()):
        print(line)
    return 0


def _past_end(part: dict[str, int | None]) -> str:
    """A committed offset past the partition's end gave a negative lag with no word: the
    topic was made again (or the cluster rebuilt) since the group committed there. The
    service reads such a partition from its beginning, with a warning, when it is next
    assigned (the contract); until then, this says what the negative figure means."""
    end, committed = part["end"], part["committed"]
    if end is None or committed is None or committed <= end:
        return ""
    return (
        f"   committed offset {committed:,} is past the end {end:,}: the topic was made again?"
        " (read from its beginning when next assigned)"
    )


#: The states of a group whose members read: settled, or rebalancing (which ends by itself).
WORKING_STATES: Final = ("Stable", "PreparingRebalance", "CompletingRebalance")


def _instance_lines(inst: dict[str, Any] | None) -> list[str]:
    """Whether the service runs, and where: its group's members (:mod:`~stream_expiry.instances`),
    each with its host and partitions where the broker says them. A member whose client id
    is not the service's is named as such: another program sharing the group id takes
    partitions from the service."""
    if inst is None:
        return []
    group = printable(repr(inst["group"]))
    if inst["error"]:
        return [f"  instances running: unknown (group {group}: {printable(inst['error'])})"]
    if not inst["members"]:
        return [
            f"  instances running: none (group {group} is {printable(inst['state'])}): nothing "
            "is stamped or tombstoned until `stream-expiry run` starts"
        ]
    lines = [
        f"  instances running: {len(inst['members'])} (group {group}, {printable(inst['state'])})"
    ]
    if inst["state"] not in WORKING_STATES:
        # Members listed in a group that is not working (Dead, Empty, or a state the
        # client cannot name, Unknown) were shown as if they ran, without a word (a trial).
        lines.append(
            f"    not a working group (the broker says {printable(inst['state'])}, not Stable "
            "or rebalancing): these members may read nothing; check each instance's /readyz "
            "and log, restart those that do not answer, and run status again"
        )
    for m in inst["members"]:
        said = m["member_id"]
        if m["client_id"] and m["client_id"] != CLIENT_ID:
            said += f" (client {m['client_id']!r}, not stream-expiry)"
        if m["host"]:
            said += f" on {m['host']}"
        if m.get("policy"):
            said += f", policy {m['policy']}"
        if m["partitions"] is not None:
            said += ": " + (", ".join(m["partitions"]) or "no partition")
        lines.append(f"    {printable(said)}")
    policies = {m["member_id"]: m.get("policy") for m in inst["members"]}
    forms = {m["member_id"]: m.get("policy_form") or POLICY_FORM for m in inst["members"]}
    for said in (mixed_policies(policies, forms), earlier_digests(policies, forms)):
        if said is not None:
            lines.append(f"    {printable(said)}")
    return lines


def _not_inputs_lines(orphans: dict[str, dict[str, int]]) -> list[str]:
    """The records stamped from topics ``[topics] inputs`` does not list: no instance holds
    their partitions, so none tombstones them, and the service's own gauges (overdue,
    pending) do not see them. Said after the counts, which include them."""
    if not orphans:
        return []
    total = sum(n["pending"] + n["due"] for n in orphans.values())
    lines = [
        f"  {counted(total, 'live record')} stamped from topics that [topics] lists neither "
        "in inputs nor in retired: no instance tombstones them, due or not (inputs changed "
        "since they were stamped?); list those topics in [topics] retired, and the "
        "instances tombstone them at their expiry (README: Changing the input topics)"
    ]
    for topic, n in orphans.items():
        lines.append(printable(f"    {topic}: {n['due']:,} due, {n['pending']:,} pending"))
    return lines


def _in_doubt_lines(doubts: list[dict[str, Any]]) -> list[str]:
    """A line per hold id whose latest message on a partition cannot be read: a start of
    the service refuses until it is placed again or released."""
    return [f"    {printable(doubt_line(d['hold_id'], d, ''))}" for d in doubts]


def _retired_lines(retired: dict[str, dict[str, int]]) -> list[str]:
    """The records left of each topic of ``[topics] retired``, which the instances fire
    and never read: a topic with none left can be taken out of retired."""
    if not retired:
        return []
    lines = ["  retired topics (records left, tombstoned at their expiry; never read)"]
    for topic, n in retired.items():
        if n["due"] + n["pending"]:
            said = f"{topic}: {n['due']:,} due, {n['pending']:,} pending"
        else:
            said = f"{topic}: none left: can be removed from [topics] retired"
        lines.append(printable(f"    {said}"))
    return lines


def _partitions_gone_lines(gone: dict[str, dict[str, Any]]) -> list[str]:
    """The records stamped from partitions a retired topic no longer has (deleted and made
    again by hand with fewer): the group assigns no instance those partitions, so none
    tombstones them. What to do, as the service's warning at its start says
    (``retired.PartitionsGone``), with the command for each topic."""
    if not gone:
        return []
    total = sum(g["pending"] + g["due"] for g in gone.values())
    lines = [
        f"  {counted(total, 'live record')} stamped from partitions that retired topics no "
        "longer have (made again with fewer?): the group assigns no instance those "
        "partitions, so none tombstones them, due or not. Give each topic its partitions "
        "again, or stop the instances and delete it: the next start makes it with as many "
        "as its stamps name. Its records are then tombstoned, those overdue at once "
        "(README: Changing the input topics)"
    ]
    for topic, g in gone.items():
        needed = g["needed"]
        parts = "; ".join(
            f"{name} {n['due']:,} due, {n['pending']:,} pending" for name, n in g["gone"].items()
        )
        said = (
            f"{topic}: {counted(g['partitions'], 'partition')}, its stamps name {needed}: {parts}"
        )
        lines.append(printable(f"    {said}"))
        lines.append(
            printable(f"      kafka-topics.sh --alter --topic {topic} --partitions {needed}")
        )
    return lines


def _many(n: int, noun: str) -> str:
    """``n`` with thousands separators and its noun, as the figures above the stores have
    them (a store behind by 1234567 tombstones read beside ``pending 1,234,567``)."""
    return f"{n:,} {noun if n == 1 else noun + 's'}"


def _sink_running(running: int | None, *, behind: bool) -> str:
    """Whether a sink reads for the group: with tombstones waiting, a group with no member
    is a stopped sink (start it), not a slow one. -1: a Status from before it was said."""
    if running is None:
        return "; the broker did not describe the group (whether a sink runs is unknown)"
    if running == 0:
        return "; no sink is running in the group" + (": start it" if behind else "")
    if running > 0:
        return f"; {counted(running, 'member')} in the group"
    return ""


def _store_lines(stores: dict[str, dict[str, Any]], groups: list[str]) -> list[str]:
    """The downstream stores, by sink group: the tombstones not applied yet and since when
    the oldest waits (a deletion due that long is not made in that store, or, for a record
    it never held, not on its record), and the changelog messages (stamps and nulls) not
    applied."""
    if not groups:  # a Status from before stores were reported
        return []
    if not stores:
        return [
            "  downstream stores: no sink group with committed offsets under the sinks' default "
            f"names ({sink_group('NAME')}: {', '.join(groups)}): name each store's with "
            "--sink-group GROUP"
        ]
    lines = ["  downstream stores (by sink group: what each has not applied yet)"]
    for group, p in stores.items():
        if not p["committed"]:
            said = (
                f"{group}: has committed no offset on the stamped or the tombstones topic: not "
                "a sink's --group-id, or its sink never ran"
            )
            if p.get("did_you_mean"):
                said += f"; did you mean --sink-group {p['did_you_mean']}?"
        else:
            said = f"{group}: {_many(p['tombstones_behind'], 'tombstone')} not applied"
            if p["oldest_tombstone_waiting"] is not None:
                said += (
                    f", the oldest from {p['oldest_tombstone_waiting']} "
                    f"({p['tombstones_waiting_s']:,.1f} s: deletions due that long are not made in it yet)"
                )
            if p.get("reads_changelog", True):
                said += f"; {_many(p['stamps_behind'], 'changelog message')} not applied"
            else:
                said += (
                    "; reads no changelog (no offset committed on the stamped topic): its "
                    "changelog messages are not counted"
                )
            said += _sink_running(p.get("running", -1), behind=bool(p["tombstones_behind"]))
        lines.append(printable(f"    {said}"))
    return lines


def text_lines(d: dict[str, Any]) -> list[str]:
    """``status`` for a person, from :meth:`Status.as_dict`. The figures form one column
    right of the longest name (a category such as ``training_expression``, an input
    partition's name), so they line up whatever the names are. With ``[archive] required``
    (``archive_waiting`` not None) a row under *overdue* says how many of them wait for the
    archive: a stopped archive, not the service, is then why purges are late."""
    rows: list[tuple[str, int, str]] = [
        ("  pending", d["pending_total"], f"   next due {d['next_due'] or '-'}")
    ]
    rows += [(f"    {category}", n, "") for category, n in d["pending"].items()]
    rows.append(("  never expire", d["never"], ""))
    oldest = f"   oldest due {d['oldest_overdue']}" if d["oldest_overdue"] else ""
    rows.append(("  overdue", d["overdue"], oldest))
    waiting = d.get("archive_waiting")
    if waiting is not None:  # [archive] required
        why = "   the archive has not written them: their purges wait for it" if waiting else ""
        rows.append(("    waiting for the archive", waiting, why))
    rows.append(("  legal holds", len(d["holds"]), ""))
    orphans = d.get("not_inputs") or {}
    lag = [(f"    {name}", part["lag"], _past_end(part)) for name, part in d["lag"].items()]
    width = max(len(name) for name, _n, _rest in rows + lag)

    def row(name: str, n: int, rest: str) -> str:
        return f"{name:<{width}} {n:>10,}{rest}"

    lines = [f"as of {d['at']}", *_instance_lines(d.get("instances"))]
    lines += [row(*r) for r in rows]
    lines += _not_inputs_lines(orphans)
    lines += _retired_lines(d.get("retired") or {})
    lines += _partitions_gone_lines(d.get("retired_partitions_gone") or {})
    for h in d["holds"]:
        n, matched = h["records_held"], h.get("records_matched", 0)
        erasures = h.get("erasures_held") or 0
        waiting = (
            f", {erasures:,} of them {'an erasure request' if erasures == 1 else 'erasure requests'}"
            f" waiting since {h.get('oldest_erasure_held')}"
            if erasures
            else ""
        )
        said = (
            f"{h['hold_id']}: {n:,} record{'' if n == 1 else 's'} held{waiting}, "
            f"{matched:,} matched ({h['reason']}), placed by {h.get('by') or '(unknown)'}"
        )
        lines.append(f"    {printable(said)}")
    lines += _in_doubt_lines(d.get("holds_in_doubt") or [])
    group = d.get("group")
    of = "" if group is None else f" of group {printable(repr(group))}"
    lines.append(f"  lag per input partition{of} (end - committed offset)")
    lines += [row(*r) for r in lag]
    if not lag:
        # All zeros and an empty list read as "all is well" on a cluster where the service
        # never ran, or with another config than the service's (a trial).
        lines.append(
            "    no input topic of [topics] inputs exists on this cluster: is this the "
            "service's cluster (--bootstrap-servers) and its config (--config)?"
        )
    parts = list(d["lag"].values())
    if group is not None and parts and all(p["committed"] is None for p in parts):
        # Every event shows as lag: a service that never ran, or (more often) a status run
        # without the service's config, asking another group than the service's.
        lines.append(
            f"    group {printable(repr(group))} has committed no offset on these partitions:"
            " not the service's group_id? (give its --config, or STREAM_EXPIRY_GROUP_ID)"
        )
    elif (unread := sum(max(0, p["lag"] or 0) for p in parts)) > 0:
        # The counts above are the changelog's: an event not read yet is in none of them, an
        # expired create with nothing else to show (a trial: overdue 0, the service down).
        lines.append(
            f"    {counted(unread, 'input event')} not read by the service yet: what "
            f"{'it creates or ends is' if unread == 1 else 'they create or end is'} not in "
            "the counts above (a lag that stays or grows: is the service running?)"
        )
    lines += _store_lines(d.get("stores") or {}, d.get("sink_groups") or [])
    return lines

"""The IO shell: Kafka in, the partition processors, Kafka out, and a clock.

One loop does the work; the outbox's settler writes behind it (:mod:`stream_expiry.outbox`):

1. read a batch of input events;
2. apply policy updates that arrived, so they count for records created after them;
3. cut the batch into slices; each slice goes to its partition's processor and its effects
   to the outbox;
4. the settler writes each slice's states to its store once the broker acked its messages;
5. the consumer group's offsets are committed from what is settled, once a second;
6. now and then, horizons are extended and old deletion markers pruned.

Timers fire in a task of their own (:mod:`stream_expiry.firing`), so a due timer never
waits for the backlog: at most for the slice being decided (a few milliseconds). Both
decide and send under one lock, ``_deciding``, so that effects settle in the order made.

Partitions come and go with the consumer group. An assigned partition gets a store (a
RocksDB directory under the state directory) brought up to date from the changelog, and a
processor; it resumes at the group's committed offset (from its beginning when there is
none, or when that offset lies past the partition's end: the topic was recreated). A
revoked partition is settled, committed, and dropped alone. From the moment the group may
have given the partitions to another member (a stall as long as the session, a commit
refused by a rebalance) until its next assignment, nothing fires nor is decided
(:mod:`stream_expiry.fence`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError

from stream_expiry import native
from stream_expiry.archive_follower import ArchiveFollower
from stream_expiry.archive_gate import ArchiveGate
from stream_expiry.codec import REKEYED_SUFFIX
from stream_expiry.commits import OffsetCommits
from stream_expiry.control import (
    DEAD_LETTERED_FILE,
    ControlTopics,
    DeadLettered,
    UnsaidDrops,
    refuse_a_lost_holds_topic,
    refuse_holds_in_doubt,
)
from stream_expiry.dead_letter_log import DeadLetterLog
from stream_expiry.durations import format_duration
from stream_expiry.errors import (
    BrokerError,
    ConfigurationError,
    CorruptStoreError,
    StoreError,
    leaves,
)
from stream_expiry.event_fields import DEFAULTS
from stream_expiry.fence import WriteFence
from stream_expiry.fetch import end_offsets, ends_and_highs
from stream_expiry.firing import Firing
from stream_expiry.health import Health, Phase
from stream_expiry.holds import HoldBook
from stream_expiry.housekeeping import Tidying, budget_for
from stream_expiry.instances import CLIENT_ID, assignors, instance_name
from stream_expiry.kafka import (
    BATCH_BYTES,
    batch_bytes,
    cluster_id,
    committed_offsets,
    consumer,
    curable,
    ensure_config_topics,
    known_partition_counts,
    mapped,
    missing_topics,
    producer,
    request_rejoin,
    size_limits,
    stable_end,
    standby_said,
    topic_config_values,
    topic_ends,
)
from stream_expiry.kafka_settings import REBALANCE_TIMEOUT_MS, member_liveness
from stream_expiry.logs import counted, named
from stream_expiry.outage import SessionOutage, describe, stall_excuses
from stream_expiry.outbox import Outbox, settled_or_failed
from stream_expiry.oversize import producer_limit
from stream_expiry.policy import PolicyBook
from stream_expiry.reading import END_UNKNOWN, InputReading, resume_point
from stream_expiry.redact import Redactor
from stream_expiry.retired import (
    PartitionsGone,
    Successors,
    create_missing_retired,
    read_and_retired,
    say_unlisted_stores,
)
from stream_expiry.state import PartitionProcessor
from stream_expiry.state.cluster_mark import check_cluster
from stream_expiry.state.dir_lock import check_state_dir, state_dir_locked
from stream_expiry.state.kv import ASIDE, CORRUPT, move_aside
from stream_expiry.state.restore import Mark, broken_marks
from stream_expiry.state.restore_workers import restore_stores
from stream_expiry.state.store import PartitionStore, input_position_name
from stream_expiry.stats import ServiceStats
from stream_expiry.timeutil import format_ts, wall_clock_ms

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from stream_expiry.config import Config
    from stream_expiry.engine import Fired
    from stream_expiry.kafka_settings import Brokers
    from stream_expiry.metrics import ServiceMetrics
    from stream_expiry.stalls import Stalls
    from stream_expiry.state import Effects
    from stream_expiry.state.restore import RestoreReport, RestoreResult

__all__ = ["Service", "ServiceStats", "wall_clock_ms"]

log = logging.getLogger("stream_expiry.service")

MAX_BATCH = 5000
SLICE = 200  # events decided as one outbox entry at most (a produce, acks, a settle)
# Events decided at once: an entry is cut there when a timer waits (Firing.wants_the_lock).
STEP = 50
RELEASE_BATCH = 2_000  # held records a release slice looks at, over the partitions releasing
RELEASES_IN_FLIGHT = 2  # release slices sent and not acknowledged, at most
GAUGES_EVERY_S = 1.0
# How long the gauges' task waits for the ends of paused partitions: it goes on without
# them (an outage's gauges are read then) and asks again at its next turn.
PAUSED_ENDS_WAIT_S = 1.0
OVERDUE_NOTED = 100_000  # records stamped already expired, kept out of the lag at once
IDLE_WAIT_MS = 200
_MISSPELT_SAID_MAX = 100  # distinct names of events said to stand for a field, per run
# Partition n of every input topic to one instance (the topics have equal partition counts),
# so each changelog partition has a single writer and its stores' checkpoints run to its
# end. With aiokafka's default, round-robin, two instances and three partitions a topic
# share every changelog partition, and a checkpoint stops at the other's first message, so
# a restart re-reads from there. Round-robin stays second: a group still running earlier
# versions agrees on it during a rolling upgrade, then moves to range. Anything that joins
# the service's group must offer these (the test broker refuses a member without the
# group's current protocol). The service joins with the same two by name, each carrying its
# policy digest (stream_expiry.instances.assignors).
ASSIGNORS: Final = (RangePartitionAssignor, RoundRobinPartitionAssignor)
JOIN_SAID_EVERY_S = 30.0  # how often a join that has not ended is said
ENDS_FAILED_SAID_EVERY_S = 30.0  # how often the firing says it could not ask the ends
PRUNE_EVERY_S = 5.0  # and every turn while markers are left due: pruning keeps up
RESTORE_SAID_EVERY_S = 10.0  # a restore's progress line


def _first_error(exc: BaseException) -> str:
    """The first real error's message: a task group's own ("unhandled errors in a
    TaskGroup (1 sub-exception)") tells a person with curl nothing."""
    first = leaves(exc)[0]
    return str(first) or type(first).__name__


_REDONE: Final = "what was not committed is read again"  # by a session after an outage

# What Kafka keeps a topic's messages for unless the topic or the broker says otherwise
# (log.retention.hours = 168): assumed for an input the broker describes no retention of.
KAFKA_DEFAULT_RETENTION_MS: Final = 7 * 24 * 3_600_000


def _say_short_marker_grace(
    grace_ms: int, inputs: Sequence[str], described: Mapping[str, Mapping[str, str]]
) -> None:
    """Warn when ``[service] marker_grace`` is shorter than an input topic keeps events: a
    deleted record's marker goes after the grace, and a create of it re-delivered later
    (a consumer group reset, `replay --from-inputs`) brings the erased record and its data
    back as live (a trial, with a 20 s grace: nothing said)."""
    for topic in inputs:
        raw = described.get(topic, {}).get("retention.ms")
        retention = int(raw) if raw is not None and raw.lstrip("-").isdigit() else None
        source = "its retention.ms"
        if retention is None:
            retention, source = KAFKA_DEFAULT_RETENTION_MS, "Kafka's default retention"
        if 0 <= retention <= grace_ms:
            continue
        kept = "forever" if retention < 0 else format_duration(retention)
        log.warning(
            "[service] marker_grace %s is shorter than input topic %s keeps events (%s: %s): "
            "a deleted record's create re-delivered after the grace brings it back, data and "
            "all; set marker_grace to at least the input topics' retention",
            format_duration(grace_ms), topic, source, kept,
        )  # fmt: skip


def _say_moved_aside(state_dir: str) -> None:
    """Warn of the stores moved aside in the state directory that are still there (damaged
    ones, and those a newer version wrote): the service never deletes them (a person may
    want to look), and they take disk."""
    for label, (one, more) in ASIDE.items():
        mark = f".{label}-"
        # A file too: one found where a store's directory should be is moved aside.
        aside = sorted(e.path for e in os.scandir(state_dir) if mark in e.name)
        if not aside:
            continue
        size = sum(_disk_use(path) for path in aside)
        log.warning(
            "%s moved aside earlier take %.1f MiB here: %s; delete them once looked at (the "
            "service never reads them)",
            f"1 {one}" if len(aside) == 1 else f"{len(aside)} {more}",
            size / 2**20,
            ", ".join(os.path.basename(p) for p in aside),
        )


def _disk_use(path: str) -> int:
    """Bytes of the file at ``path``, or of the files under the directory at it."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _dirs, names in os.walk(path)
        for name in names
    )


def _restored_from_changelog(restored: int, kept: int) -> str:
    """The assignment line's count of the partitions restored from the changelog, ``kept``
    of them into stores kept from before (a restart that kept its state directory: they
    read what was written since their positions, seconds), the rest into stores made
    anew (a lost disk, a partition new to this instance: the whole changelog, minutes at
    scale). "12 restored from the changelog" alone read as a full
    rebuild after a restart that kept every store (an SRE trial)."""
    said = f"{restored} restored from the changelog"
    if not restored:
        return said
    return (
        f"{said} ({kept} kept stores caught up from their positions, "
        f"{restored - kept} rebuilt from empty)"
    )


def _partitions_named(tps: Sequence[TopicPartition]) -> str:
    """``tps`` as "topic[p]", the first few of them (:func:`~stream_expiry.logs.named`)."""
    return named([f"{tp.topic}[{tp.partition}]" for tp in tps])


def _close_store(proc: PartitionProcessor) -> None:
    """Close a partition's store; one that fails to close (RocksDB found a damaged file as
    it flushed) is said in one line: the changelog restores it, a stop need not fail."""
    try:
        proc.store.close()
    except StoreError as exc:
        log.warning("%s; it is restored from the changelog when next assigned", exc)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka logs a failing listener and carries on, which would leave a partition
    unpositioned; so a failure is kept and raised by the service's loop instead."""

    def __init__(self, service: Service) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        try:
            await self._service.revoke(revoked)
        except Exception as exc:
            self._service.rebalance_error = exc

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        try:
            await self._service.assign(assigned)
        except Exception as exc:
            self._service.rebalance_error = exc


def created_input_said(topic: str, *, source_exists: bool) -> str:
    """The warning for an input topic the service had to make. A rekey copy
    (``X.by-record``) of a topic the cluster has is made so whenever the service starts
    before ``rekey`` (every first start of docker-compose.yml with the rekey profile): "check
    the name" read as a mistake there, where what to check is that rekey runs, or X's
    events are never read. Any other is likely a typo in ``[topics] inputs``."""
    if source_exists:
        source = topic.removesuffix(REKEYED_SUFFIX)
        return (
            f"created input topic {topic}, which did not exist yet: it is the copy "
            f"`stream-expiry rekey --from {source}` writes (made here when the service starts "
            f"before rekey); check that rekey runs, or the events producers write to {source} "
            "are never read"
        )
    said = (
        f"created input topic {topic}, which did not exist: check the name if producers "
        "write elsewhere"
    )
    if topic.endswith(REKEYED_SUFFIX):
        source = topic.removesuffix(REKEYED_SUFFIX)
        said += f" (or start `stream-expiry rekey --from {source}`, which writes it)"
    return said


def partition_counts_said(before: Mapping[str, int], now: Mapping[str, int]) -> list[str]:
    """Warnings for the input topics' partition counts at an assignment: a topic whose
    count changed since the last assignment of this process (partitions added while the
    service runs, which Kafka allows and the group follows with a rebalance, and nothing
    said), and counts that differ among the inputs (said when they change). ``before`` is
    empty at a process' first assignment; a count of 0 is a topic not known yet."""
    said = []
    for topic, count in now.items():
        was = before.get(topic)
        if was and count and count != was:
            said.append(
                f"input topic {topic} has {count} partitions, {was} at the last assignment: "
                "producers' keys now go to other partitions, so a later touch or erasure of "
                "a record alive now may reach another partition than the one that holds its "
                "life, which then still ends at its old expiry (a session deleted despite "
                "its user's activity, an erased record's stamp and data kept on the "
                "changelog until then); nothing undoes it (README: Sizing, under Running it "
                "for real): check with `stream-expiry history` the records that must not "
                "wait, and give every input topic the same count"
            )
    counts = {t: c for t, c in now.items() if c}
    if len(set(counts.values())) > 1 and counts != {t: c for t, c in before.items() if c}:
        said.append(
            "the input topics have different partition counts ("
            + ", ".join(f"{t} {c}" for t, c in sorted(counts.items()))
            + "): partition n of each no longer goes to one instance, so a changelog "
            "partition gets several writers and a restart or a rebalance reads more of it; "
            "give them one count, one your instance counts divide"
        )
    return said


def _say_early_ts(early: list[tuple[Any, int, str | None]]) -> None:
    """Events dated before 1973, one line a batch for each form of ``ts``, not one an
    event: a producer with such a fault sends nothing else, and a line per event would
    bury every other line of the log. An integer is most likely epoch seconds; an RFC 3339
    string cannot be, so it is quoted as sent, most likely an unset date (a trial's
    ``0001-01-01T00:00:00+00:00`` was said as "ts -62135596800000 ... seconds?")."""
    integers = [(rec, ts) for rec, ts, text in early if text is None]
    strings = [(rec, text) for rec, _, text in early if text is not None]
    if integers:
        rec, ts = integers[0]
        log.warning(
            "%s with a ts before 1973 as epoch milliseconds, e.g. %s[%d]@%d: ts %d "
            "is %s: does the producer send seconds? Such records with a TTL are long "
            "expired, so they are tombstoned at once",
            counted(len(integers), "event"),
            rec.topic,
            rec.partition,
            rec.offset,
            ts,
            format_ts(ts),
        )
    if strings:
        rec, raw = strings[0]
        log.warning(
            "%s with an RFC 3339 ts before 1973, e.g. %s[%d]@%d: ts %r: does the "
            "producer send an unset date (a default such as .NET's DateTimeOffset.MinValue)? "
            "Such records with a TTL are long expired, so they are tombstoned at once",
            counted(len(strings), "event"),
            rec.topic,
            rec.partition,
            rec.offset,
            raw,
        )


class Service:
    """Runs until ``stop`` is set; every instance with the same group shares the work."""

    def __init__(
        self,
        config: Config,
        *,
        bootstrap_servers: Brokers,
        environ: Mapping[str, str],
        clock: Callable[[], int] = wall_clock_ms,
        on_progress: Callable[[ServiceStats], Awaitable[None] | None] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
        health: Health | None = None,
        metrics: ServiceMetrics | None = None,
        stalls: Stalls | None = None,
    ) -> None:
        self.config = config
        self.bootstrap = bootstrap_servers
        self.clock = clock
        self.book = PolicyBook(config, environ)
        # What this instance joins its group with: instances that differ are said
        # (stream_expiry.instances), as their records' TTLs would differ silently.
        self.policy_digest = self.book.digest(config.sliding)
        self.holds = HoldBook()
        self.archive: ArchiveGate | None = None  # with [archive] required, once started
        self.stats = ServiceStats()
        self.ready = anyio.Event()
        self.health = health or Health()
        self.metrics = metrics
        # Whether the process itself did not run: a request it had in flight then timed
        # out on resume, which is not the broker's failure (:meth:`_outage`).
        self.stalls = stalls
        self.rebalance_error: Exception | None = None
        self.processors: dict[tuple[str, int], PartitionProcessor] = {}
        # Partitions revoked by a rebalance, their stores open and timers loaded, until the
        # assignment that ends it says whether they come back (:meth:`revoke`).
        self._suspended: dict[tuple[str, int], PartitionProcessor] = {}
        self._on_progress = on_progress
        self._consumer_options = dict(consumer_options or {})
        self._misspelt_said: set[str] = set()  # names of events said to stand for a field
        self._unkeyed_said: set[str] = set()  # input topics said to carry events without a key
        # The dead letters of input events, said one by one up to a bound a window, then
        # counted (a producer gone wrong is wrong for every event it sends).
        self._dead_letter_log = DeadLetterLog(log, config.topics.dlq)
        # aiokafka options of the producer over the service's (``max_request_size``: the
        # size limit outputs are held to, see stream_expiry.oversize)
        self._producer_options = dict(producer_options or {})
        self._said_limit = False  # the output topics' smaller size limit, said once
        self._said_grace = False  # a marker grace shorter than the inputs' retention, once
        self._overdue_on_arrival: dict[str, int] = {}  # key -> expiry: see _note_overdue
        self._said_batches = False  # and their limit smaller than a record batch, once
        self._consumer: AIOKafkaConsumer | None = None
        self._outbox: Outbox | None = None
        self._firing: Firing | None = None
        # Held while effects are decided and handed to the outbox, by the loop and by the
        # timer task: the outbox gets them in the order the processors made them.
        self._deciding = anyio.Lock()
        self._reading = InputReading(self._let_go, self._seek)
        # Where a retired partition's session lives on (rekey's copy): it follows that.
        self._successors = Successors(
            self.processors,
            self._reading.unread,
            self.config.topics.inputs,
            self._input_partitions,
        )
        # The service clock's time just before the inputs' ends were last asked for
        # (learn_ends): the firing fires a sliding record due at T once they were since
        # T less a tick, as it does with the legal holds.
        self._ends_asked_at = -(2**63)
        self._ends_lock = asyncio.Lock()
        self._ends_failed_said = -ENDS_FAILED_SAID_EVERY_S  # when that failing was last said
        self._dead_lettered = DeadLettered(None)  # in the state directory once it is known
        # Closed from the moment the group may have given the partitions to another member
        # (a stall as long as the session, a commit refused by a rebalance) until its next
        # assignment: nothing fires nor is decided for them meanwhile (stream_expiry.fence).
        member = self._group_options()
        self._fence = WriteFence(
            stalls,
            session_ms=member["session_timeout_ms"],
            heartbeat_ms=member["heartbeat_interval_ms"],
            owned=lambda: len(self.processors),
            rejoin=self._rejoin,
            fenced=self._count_fenced,
        )
        self._commits = OffsetCommits(self.processors, describe, on_rebalance=self._fence.close)
        # A release's slices: the partition the next one starts at (its index among the
        # processors), and the acks of those sent, oldest first.
        self._release_next = 0
        self._release_acks: collections.deque[list[Any]] = collections.deque()
        self._pruned_at = time.monotonic()
        self._tidied_at = self._pruned_at  # the last turn's housekeeping: its budget follows
        self._tidying = Tidying()  # horizons and markers, a budget a turn
        self._restore_seen = 0  # changelog messages of the running restore already counted
        self._restore_said = 0.0  # when its progress was last logged (monotonic)
        # Partitions assigned and paused, for the restorer task; the restore in progress.
        self._to_restore: list[TopicPartition] = []
        self._assigned_at = 0.0  # monotonic time of the last assignment with partitions to take
        self._restore_wanted = anyio.Event()
        self._restore_scope: anyio.CancelScope | None = None
        self._restore_done = anyio.Event()
        # A broker outage the sessions are in (since: None when none)
        self._outage_now = SessionOutage(None, _REDONE, logger=log)
        self._stop: anyio.Event | None = None  # run's
        self._polling: anyio.CancelScope | None = None  # the loop's wait for a batch
        # The earliest expiry pending in the stores when last seen (ms), kept while an
        # outage has closed them: the overdue gauge goes on rising from it.
        self._oldest_due: int | None = None
        # Stores found damaged while running, moved aside (a second time stops the service).
        self._moved_while_running: set[str] = set()
        # Records stamped from partitions a retired topic no longer has, said once a run.
        self._partitions_gone = PartitionsGone()
        # Policy updates that took values away, read by a session's catch-up that failed
        # before saying them: the book kept them, so the next session's catch-up, a
        # ControlTopics of its own, finds nothing taken away and says them from here.
        self._unsaid_drops: UnsaidDrops = {}
        self._state_path = config.state_dir  # made absolute by run
        # Each input topic's partition count at the last assignment (a count that changes
        # while the service runs is said: partition_counts_said).
        self._input_counts: dict[str, int] = {}
        # Whether the group's last assignment gave this instance nothing (a standby): said
        # once a stretch, not at each rebalance that keeps it so.
        self._standby = False
        for warning in self.book.env_warnings:
            log.warning("%s", warning)

    @property
    def owned(self) -> frozenset[tuple[str, int]]:
        """The input partitions this instance holds now."""
        return frozenset(self.processors)

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self, stop: anyio.Event) -> None:
        self._stop = stop
        self.health.starting()
        state_dir = await self._state_dir()
        with state_dir_locked(str(state_dir)):
            await self._run_in(state_dir, stop)

    async def _run_in(self, state_dir: anyio.Path, stop: anyio.Event) -> None:
        self._state_path = str(state_dir)
        self._dead_lettered = DeadLettered(str(state_dir / DEAD_LETTERED_FILE))
        log.info(
            "state directory %s; events read and written by the %s",
            state_dir,
            native.describe(),
        )
        _say_moved_aside(str(state_dir))
        say_unlisted_stores(str(state_dir), self.config.topics.inputs, self.config.topics.retired)
        failure: Exception | None = None
        try:
            # The gauges in a task of their own: the loop waits on the broker in an outage,
            # and the oldest overdue record is what an operator alerts on then.
            async with anyio.create_task_group() as gauges:
                gauges.start_soon(self._watch_gauges)
                try:
                    await self._sessions(stop)
                except Exception as exc:  # raised below as it is, not in a task group's
                    failure = exc
                gauges.cancel_scope.cancel()
            if failure is not None:
                raise failure
        finally:
            self._close_all()
            self.health.stopped()

    async def _sessions(self, stop: anyio.Event) -> None:
        while True:
            try:
                await self._session(stop)
                return
            except Exception as exc:
                if self._damaged_while_running(exc, stop) or await self._outage(exc, stop):
                    continue
                # Stopped in an outage: the broker's failure is the outage's, not the stop's,
                # and nothing is lost (a trial: SIGTERM while the session was started again
                # ended run with exit 3, "cannot reach Kafka", 4 of 4).
                if self.ready.is_set() and self._outage_now.stopped_in(exc, stop):
                    return
                raise

    async def _state_dir(self) -> anyio.Path:
        """The state directory, made if missing: checked before anything is created on the
        cluster, so that a path that cannot be one stops the start with its reason."""
        state_dir = await anyio.Path(self.config.state_dir).absolute()
        check_state_dir(str(state_dir))
        try:
            # The owner's only (0700): its stores hold every record's identity.
            await state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = state_dir / ".stream-expiry-write-check"
            await probe.write_bytes(b"")
            await probe.unlink()
        except OSError as exc:
            why = "it is not a directory" if isinstance(exc, FileExistsError) else exc.strerror
            raise StoreError(
                f"the state directory {str(state_dir)!r} cannot be used: {why or exc}; "
                "give a writable directory (--state-dir, $STREAM_EXPIRY_STATE_DIR, or state_dir in "
                "the config file)"
            ) from exc
        return state_dir

    async def _session(self, stop: anyio.Event) -> None:
        """One connection to the cluster: from joining the group until ``stop``."""
        t = self.config.topics
        # Before anything is made on it: brokers of another cluster than the stores' would
        # have them tombstone their records there (at every session: an address may come
        # back as another cluster after an outage).
        check_cluster(self._state_path, await cluster_id(self.bootstrap), str(self.bootstrap))
        await self._ensure_topics()
        # Every topic this producer writes: its record batches fit the smallest limit.
        outputs = (t.stamped, t.dlq, t.tombstones, t.audit)
        described = await topic_config_values(
            self.bootstrap, (*outputs, *t.inputs), ("max.message.bytes", "retention.ms")
        )
        limits = size_limits({n: described[n] for n in outputs if n in described})
        if not self._said_grace:
            self._said_grace = True
            _say_short_marker_grace(self.config.marker_grace_ms, t.inputs, described)
        topic_limit = min((limits[n] for n in (t.stamped, t.dlq) if n in limits), default=None)
        options = {
            # No linger: the outbox hands the producer whole batches, and a batch that waits
            # for more is a tombstone late (bench.bench_transport: p50 8.0 ms -> 4.8 ms).
            "linger_ms": 0,
            "max_batch_size": batch_bytes(limits.values()),
            **self._producer_options,
        }
        async with (
            producer(self.bootstrap, **options) as prod,
            consumer(self.bootstrap, enable_auto_commit=False) as policies,
            consumer(self.bootstrap, enable_auto_commit=False) as holds,
        ):
            control = ControlTopics(
                t,
                self.book,
                self.holds,
                self.stats,
                policies=policies,
                holds_reader=holds,
                prod=prod,
                dead_lettered=self._dead_lettered,
                topic_limit=topic_limit,
                unsaid_drops=self._unsaid_drops,
            )
            self._say_limit(prod, topic_limit)
            self._say_batches(limits)
            await control.read_all()
            if not self.ready.is_set():
                # A start, not a session after an outage: the book of a process that ran
                # keeps the hold placed before a message it could not read. Before the task
                # group: raised as it is, as the other refusals of a start are.
                refuse_holds_in_doubt(self.holds, t.holds)
            await self._serve(prod, control, topic_limit, stop)

    async def _serve(
        self,
        prod: AIOKafkaProducer,
        control: ControlTopics,
        topic_limit: int | None,
        stop: anyio.Event,
    ) -> None:
        """The session once the control topics are read and the start allowed: the outbox,
        the archive follower if required, the group's consumer and the loop, until
        ``stop`` (or an error, which ends the session)."""
        t = self.config.topics
        async with anyio.create_task_group() as tg:
            counts = await self._partition_counts(prod)
            outbox = self._outbox = Outbox(
                prod,
                t,
                counts,
                redactor=Redactor.from_config(self.config.redact),
                stats=self.stats,
                topic_limit=topic_limit,
            )
            tg.start_soon(outbox.run)
            if self.config.archive.required:
                if self.archive is None:
                    self.archive = ArchiveGate(partitions=counts[t.stamped])
                archive = ArchiveFollower(
                    self.archive, self.config, self.bootstrap, self.processors, self.stats
                )
                await archive.once()
                tg.start_soon(archive.run, stop)
            async with consumer(self.bootstrap, **self._group_options()) as cons:
                self._consumer, self._standby = cons, False  # a standby said again in a new session
                # Retired topics too: their partitions are assigned, fired, never read.
                cons.subscribe([*t.inputs, *t.retired], listener=_Rebalance(self))
                self.health.joining()  # the broker answered; the group's turn now
                log.info(
                    "joining group %r on %s for %s%s, with policy %s",
                    self.config.group_id,
                    self.bootstrap,
                    ", ".join(t.inputs),
                    f" (retired, fired and not read: {', '.join(t.retired)})" if t.retired else "",
                    self.policy_digest,
                )
                firing = self._firing = Firing(
                    self.processors,
                    outbox,
                    self._deciding,
                    clock=self.clock,
                    on_fired=self._count_fired,
                    tick_ms=self.config.tick_ms,
                    unread=self._reading.unread,
                    catching_up=self._reading.catching_up,
                    read_since=partial(self._read_since, control, cons),
                    fenced=self._fence.closed,
                )
                try:
                    async with anyio.create_task_group() as timers:
                        timers.start_soon(self._say_joining, self.stats.assignments)
                        timers.start_soon(firing.run)
                        timers.start_soon(self._restorer)
                        timers.start_soon(self._stop_polling, stop)
                        await self._loop(cons, control, stop)
                        timers.cancel_scope.cancel()
                finally:
                    # A session ended by an error is torn down to be tried again (or the
                    # error stops the service after): the loop still runs, /healthz 200.
                    if stop.is_set():
                        self.health.stopping()
                    else:
                        self.health.reconnecting()
                    await outbox.drain()
                committed = await self._commit(cons)
                self._close_all()
                self._dead_letter_log.flush(final=True)
                log.info(
                    "stopped: %s; %d events, %d stamped, %d tombstones ttl + %d explicit, "
                    "%d dead letters",
                    "offsets committed"
                    if committed
                    else "the last offsets not committed (the broker did not take them): the "
                    "next start reads those events again, and nothing is lost",
                    self.stats.events,
                    self.stats.stamped,
                    self.stats.tombstones,
                    self.stats.explicit,
                    self.stats.dead_letters,
                )
            outbox.close()
            tg.cancel_scope.cancel()  # the archive follower, if any

    def _say_limit(self, prod: AIOKafkaProducer, topic_limit: int | None) -> None:
        """Say once when the output topics take less than the producer: stamps and dead
        letters are then held to the topics' limit (stream_expiry.oversize)."""
        if topic_limit is None or topic_limit >= producer_limit(prod) or self._said_limit:
            return
        self._said_limit = True
        t = self.config.topics
        log.warning(
            "%s or %s takes messages of at most %d bytes (max.message.bytes), less than the "
            "producer's %d: stamps larger than that go without their data, dead letters are cut",
            t.stamped,
            t.dlq,
            topic_limit,
            producer_limit(prod),
        )

    def _say_batches(self, limits: dict[str, int]) -> None:
        """Say once when a topic the service writes takes less than a record batch: the
        producer's batches are then that small, and ingest slower (bench.e2e_ingest, 64 KiB
        against 256 KiB: 8-13k events/s against 23-24k)."""
        small = sorted(name for name, size in limits.items() if size < BATCH_BYTES)
        if not small or self._said_batches:
            return
        self._said_batches = True
        log.warning(
            "%s take record batches of at most %d bytes (max.message.bytes): the producer's "
            "batches are cut to that from %d, which slows ingest; give them at least %d",
            ", ".join(small),
            batch_bytes(limits.values()),
            BATCH_BYTES,
            BATCH_BYTES,
        )

    async def _ensure_topics(self) -> None:
        """Make the topics that are missing. At every session's start and every assignment,
        not only the first: after an outage the cluster may be another behind the same
        address (rebuilt, or the test broker restarted empty), the consumer rejoins it on its
        own, and a restore cannot read a changelog topic that is gone."""
        t = self.config.topics
        await refuse_a_lost_holds_topic(self.bootstrap, t.holds, t.stamped, audit=t.audit)
        # First, with the partitions their stamps name: made with [topics] partitions, a
        # retired topic that had more left their records to no instance.
        retired = await create_missing_retired(self.bootstrap, self.config)
        self._partitions_gone.in_state_dir(self.config.state_dir, retired)
        created = await ensure_config_topics(self.bootstrap, self.config)
        # A mistyped name in [topics] inputs made an empty topic and the service idled on
        # it without a word: a new input topic is probably not where producers write.
        made = [topic for topic in created if topic in self.config.topics.inputs]
        copies = [t.removesuffix(REKEYED_SUFFIX) for t in made if t.endswith(REKEYED_SUFFIX)]
        gone = set(await missing_topics(self.bootstrap, copies)) if copies else set()
        for topic in made:
            source = topic.removesuffix(REKEYED_SUFFIX)
            log.warning(
                created_input_said(topic, source_exists=source != topic and source not in gone)
            )

    async def _outage(self, exc: Exception, stop: anyio.Event) -> bool:
        """After the broker failed a running service: forget the session, wait, go on.

        Only for what retrying may cure (connections, timeouts, a lost membership), and only
        once the service has been ready: a start that fails says so and stops. What was in
        flight is done again, exactly as after a crash: the stores hold only what the broker
        acked, and the partitions are restored and resume at the committed offsets when the
        group is joined again. The first failure after the process itself did not run is
        the stall's (:func:`~stream_expiry.outage.stall_excuses`): its session starts again at once, and no
        outage is said or counted. Returns False when ``exc`` is to be raised.
        """
        if stop.is_set() or not self.ready.is_set() or not curable(exc):
            return False
        self.health.reconnecting()
        outage = self._outage_now
        if outage.since is None and stall_excuses(self.stalls, exc, _REDONE, log):
            self._forget_session()
            return True
        self.health.broker_unreachable(_first_error(exc))
        outage.failed(exc)
        self._forget_session()
        return await outage.pause(stop)

    def _damaged_while_running(self, exc: Exception, stop: anyio.Event) -> bool:
        """After a store of an owned partition was found damaged while the service ran
        (a block that fails its checksum when a lookup or a scan reads it): move it aside
        and start the session again, whose assignment restores it from the changelog, as
        at a start (it stopped the service, exit 4). What was in flight is done again, as
        after an outage. A store damaged again after that is a disk that damages what is
        written to it, and stops the service. Returns False when ``exc`` is to be raised."""
        if stop.is_set():
            return False
        owned = {self._store_path(*slot) for slot in self.processors}
        damaged = {
            leaf.path: str(leaf)
            for leaf in leaves(exc)
            if isinstance(leaf, CorruptStoreError) and leaf.path in owned
        }
        if not damaged or damaged.keys() & self._moved_while_running:
            return False
        self._forget_session()
        self.health.starting()
        for path, why in damaged.items():
            self._moved_while_running.add(path)
            log.warning(
                "the state store %s is damaged (%s): moved aside to %s (delete it once "
                "looked at); the session starts again and restores it from the changelog",
                path,
                why,
                move_aside(path, CORRUPT, "is damaged"),
            )
        return True

    def _forget_session(self) -> None:
        """Close the stores and forget what the session knew of its partitions: the next
        one restores them (from the stores kept, else the changelog) and resumes at the
        committed offsets."""
        self._close_all()
        self._reading.clear()
        self._outbox = self._consumer = None
        self._release_acks.clear()  # the closed producer's
        self._to_restore = []
        self._overdue_on_arrival.clear()
        self.rebalance_error = None
        self._fence.open()  # the next session joins afresh

    def _count_fenced(self) -> None:
        """The partitions may be another member's: the member may have been dropped
        (:class:`~stream_expiry.fence.WriteFence` closed, not for a routine rebalance)."""
        self.stats.writes_fenced += 1

    def _rejoin(self) -> None:
        """The :class:`~stream_expiry.fence.WriteFence` closed: the group asked for a new
        assignment."""
        if self._consumer is not None:
            request_rejoin(self._consumer)

    def _input_partitions(self, topic: str) -> int:
        """How many partitions an input topic has, as the group's consumer knows it (0
        outside a session)."""
        return known_partition_counts(self._consumer, (topic,))[topic]

    def _partition_counts_known(self, topics: Iterable[str]) -> dict[str, int]:
        """How many partitions each of ``topics`` has, as the group's consumer knows it
        (0: not known): what each join of the group says (:func:`assignors`)."""
        return known_partition_counts(self._consumer, topics)

    def _retired_counts(self) -> dict[str, int]:
        """How many partitions each retired topic has, as the group's consumer knows it
        (it subscribes them: no request)."""
        assert self._consumer is not None
        return known_partition_counts(self._consumer, self.config.topics.retired)

    def _store_path(self, topic: str, partition: int) -> str:
        return os.path.join(self.config.state_dir, f"{topic}-{partition}")

    def _group_options(self) -> dict[str, Any]:
        session_ms = self.config.session_timeout_ms
        return {
            "group_id": self.config.group_id,
            # Its members are named by it: ``status`` tells the service's from others.
            "client_id": CLIENT_ID,
            # Fast crash detection: by default Kafka's minimum session timeout (6 s).
            **member_liveness(session_ms),
            "rebalance_timeout_ms": max(session_ms, REBALANCE_TIMEOUT_MS),
            "max_poll_records": MAX_BATCH,
            "enable_auto_commit": False,
            "partition_assignment_strategy": assignors(
                self.policy_digest,
                instance_name(socket.gethostname(), self.config.state_dir),
                self._partition_counts_known,
            ),
            **self._consumer_options,
        }

    async def _partition_counts(self, prod: AIOKafkaProducer) -> dict[str, int]:
        t = self.config.topics
        return {
            topic: len(await prod.partitions_for(topic))
            for topic in (t.stamped, t.tombstones, t.dlq, t.audit)
        }

    def _close_all(self) -> None:
        """Close every store. The partitions stop being this instance's, so their lag series
        go too, as at a revocation: left behind (a session torn down in a broker outage),
        they stayed frozen, and beside the next session's if the group handed it others."""
        for slot, proc in self.processors.items():
            _close_store(proc)
            if self.metrics is not None:
                self.metrics.forget_partition(*slot)
        self.processors.clear()
        self.stats.assigned_partitions = 0
        self._close_suspended(keep=())

    def _close_suspended(self, keep: Iterable[tuple[str, int]]) -> None:
        """Close the stores of the revoked partitions that did not come back."""
        back = set(keep)
        for slot in [slot for slot in self._suspended if slot not in back]:
            _close_store(self._suspended.pop(slot))

    async def _loop(
        self, cons: AIOKafkaConsumer, control: ControlTopics, stop: anyio.Event
    ) -> None:
        releasing = False  # a release under way: poll without waiting
        while not stop.is_set():
            seeks_before = self._reading.seeks
            batch = await self._poll(cons, 0 if releasing else IDLE_WAIT_MS)
            if batch is None:
                break  # stopped while the consumer waited (for a join, say)
            self.health.beat()
            if self.rebalance_error is not None:
                raise self.rebalance_error
            if self._fence.closed():
                releasing = False  # nothing decided nor committed until the group assigns
                continue
            # Policy updates and holds sent before these records apply to them.
            await control.poll(max(r[-1].timestamp for r in batch.values()) if batch else None)
            if batch:
                await self._ingest(batch, seeks_before)
            await self._unpark()
            if self._reading.catching_up:
                await self._reading.caught_up(cons)
            await self._reading.track_unread(cons, self.processors)
            releasing = await self._release_held(control)
            self._housekeeping()
            if self._commits.due:
                await self._commit(cons, every_store=False)
                self._observe_lag(cons)

    async def _poll(
        self, cons: AIOKafkaConsumer, timeout_ms: int = IDLE_WAIT_MS
    ) -> dict[TopicPartition, list[Any]] | None:
        """The next batch, or None if :meth:`_stop_polling` gave the wait up.

        aiokafka's ``getmany`` waits, whatever its timeout, for a (re)join to end: a stop
        during the first join (the test broker holds a JoinGroup ~6 s; Kafka up to the
        rebalance timeout) was seen only once the group had assigned partitions. Given up
        at an await, it has taken no records."""
        with anyio.CancelScope() as self._polling:
            try:
                batch: dict[TopicPartition, list[Any]] = await cons.getmany(
                    timeout_ms=timeout_ms, max_records=MAX_BATCH
                )
                return batch
            except KafkaError as exc:
                self.health.broker_unreachable(str(exc))
                raise mapped(exc, "reading input topics failed") from exc
            finally:
                self._polling = None
        return None

    async def _say_joining(self, assignments: int, every_s: float = JOIN_SAID_EVERY_S) -> None:
        """Say every ``every_s`` while the group has given this member no assignment since
        it asked to join (``assignments``, the count then). A join that never ended (a
        trial: the test broker's group stuck after every member left) showed "joining
        group" and then nothing at all, /readyz 503 "starting" (now "joining")."""
        started = time.monotonic()
        while True:
            await anyio.sleep(every_s)
            if self.stats.assignments > assignments:
                return
            log.warning(
                "still joining group %r after %.0f s: the group coordinator has given this "
                "member no partitions yet (a member that left without saying so holds the "
                "join until its session times out; one that never ends is the broker's: "
                "kafka-consumer-groups.sh --describe --group shows its state)",
                self.config.group_id,
                time.monotonic() - started,
            )

    async def _stop_polling(self, stop: anyio.Event) -> None:
        """Give up the loop's wait for a batch once ``stop`` is set (see :meth:`_poll`). The
        loop checks ``stop`` between batches with no await before it polls again, so a stop
        is either seen there or finds the wait here."""
        await stop.wait()
        if self._polling is not None:
            self._polling.cancel()

    def _observe_lag(
        self, cons: AIOKafkaConsumer, paused_ends: Mapping[TopicPartition, int] | None = None
    ) -> None:
        """The consumer lag gauges, after a commit and once a second (:meth:`_watch_gauges`):
        the consumer knows the high watermarks from its fetches. Only after a commit, a
        gauge stood still while the loop committed nothing: a partition that stopped being
        read showed a lag of 0 while `status` counted 55 events unread (a trial). Only the
        partitions assigned now: between a revocation and the reading's own, the consumer
        knows nothing of the others. A paused partition (positioned, not resumed yet) is
        fetched nothing, so the end its last fetch gave stood still and its gauge said 0
        over events sent since: its end is ``paused_ends``' (:meth:`_paused_ends`), and
        without one its gauge is left as it is."""
        if self.metrics is None:
            return
        assigned, paused = cons.assignment(), cons.paused()
        for (topic, partition), position in self._reading.next_offset.items():
            tp = TopicPartition(topic, partition)
            if tp not in assigned:
                continue
            high = (paused_ends or {}).get(tp) if tp in paused else stable_end(cons, tp)
            if high is not None:
                self.metrics.set_lag(topic, partition, max(0, high - position))

    async def _paused_ends(self, cons: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Where the paused partitions that have a position end now, from one Fetch per
        leader (:func:`~stream_expiry.fetch.end_offsets`: ListOffsets is wrong on some
        brokers); none asked when none is paused (the usual case: no request). Nothing
        when the broker does not answer within :data:`PAUSED_ENDS_WAIT_S`."""
        paused = cons.paused()
        at = {
            tp: offset
            for slot, offset in self._reading.next_offset.items()
            if (tp := TopicPartition(*slot)) in paused
        }
        if not at:
            return {}
        with anyio.move_on_after(PAUSED_ENDS_WAIT_S):
            try:
                return await end_offsets(cons, at)
            except BrokerError as exc:
                log.debug("the paused partitions' lag not updated: %s", exc)
        return {}

    async def _watch_gauges(self) -> None:
        """:meth:`_observe` once a second, whatever the loop waits on, and the progress
        callback with it: given from the loop, it waited with the loop for an offset commit
        a broker that stopped answering never took, and ``run``'s progress line was silent
        for 19-26 s of an outage in a trial, when its oldest overdue is read."""
        while True:
            self._observe_said()
            cons = self._consumer
            if cons is not None:
                paused_ends = await self._paused_ends(cons)
                if self._consumer is cons:  # the session not torn down meanwhile
                    self._observe_lag(cons, paused_ends)
            self._dead_letter_log.flush()
            if self._on_progress is not None:
                result = self._on_progress(self.stats)
                if result is not None:
                    await result
            await anyio.sleep(GAUGES_EVERY_S)

    def _observe_said(self) -> None:
        """:meth:`_observe`; a store's error is the loop's to meet, and say."""
        try:
            self._observe()
        except StoreError as exc:
            log.debug("gauges not updated: %s", exc)

    def _observe(self) -> None:
        """Gauges for operators from the stores alone (no broker): timers, pending records,
        the oldest overdue. The oldest overdue is the earliest expiry still in a store's
        due index, in a timer wheel (stamped, not settled yet), in a tombstone in flight,
        or among the records kept for the archive (``[archive] required``, off the due
        index: a stopped archive makes purges late, and the gauge must say so), so a
        record fired and not yet acked by the broker still counts; with the stores
        closed by an outage, the last one seen goes on ageing. During a rebalance
        (nothing assigned, the revoked stores kept open) their records count: nothing
        fires then, and the gauge read 0 while deletions waited seconds (a trial)."""
        procs = list(self.processors.values())
        self.stats.pending_in_wheel = sum(p.timers for p in procs)
        watched = procs or list(self._suspended.values())
        if watched:
            dues = [d for p in watched if (d := p.store.first_due_ms()) is not None]
            dues += [d for p in watched if (d := p.next_due_ms()) is not None]  # not settled
            in_flight = None if self._outbox is None else self._outbox.oldest_unsettled_ms()
            if in_flight is not None:
                dues.append(in_flight)  # fired, not acked yet
            waiting = self.stats.archive_waiting_since
            if self.stats.archive_waiting and waiting is not None:
                dues.append(waiting)  # due, kept for the archive ([archive] required): late
            self._oldest_due = min(dues) if dues else None
        elif self._outage_now.since is None:
            self._oldest_due = None  # none owned: another instance has the records
        now = self.clock()
        oldest = self._oldest_due
        overdue = now - oldest if oldest is not None and oldest <= now else 0
        self.stats.oldest_overdue_ms = overdue  # for the progress line, which says it too
        metrics = self.metrics
        if metrics is None:
            return
        if watched or self._outage_now.since is None:
            # The stores it holds, the revoked ones during a rebalance as for the oldest
            # overdue; none (its partitions gone to others, or a restore of others under
            # way): 0. Left at its last counts, an instance whose partitions all went
            # elsewhere went on showing them beside their new owners (a trial). In an outage
            # the closed stores' last counts stay, as the oldest overdue does.
            pending: dict[str, int] = dict.fromkeys(self.config.categories, 0)
            for proc in watched:
                for category, n in proc.store.counts.pending.items():
                    pending[category] = pending.get(category, 0) + n
            for category, n in pending.items():
                metrics.set_pending(category, n)
            metrics.set_held(sum(proc.store.counts.held for proc in watched))
        metrics.set_oldest_overdue_seconds(overdue / 1000)

    # -- ingest -----------------------------------------------------------------------------

    async def _ingest(self, batch: Mapping[TopicPartition, list[Any]], seeks_before: int) -> None:
        """Decide a batch in slices of ``SLICE`` events, each slice one outbox entry over
        as many partitions as it takes: a batch spread over 144 partitions was one entry
        (a produce, a wait for acks, a settle) per partition, 16 in flight at most. A
        slice is decided ``STEP`` events at a time, and ends early when a timer waits."""
        group: list[tuple[tuple[str, int], PartitionProcessor, list[Any]]] = []
        size = 0
        for tp, records in batch.items():
            taken = self._records_to_take(tp, records, seeks_before)
            if taken is None:
                continue
            proc, records = taken
            slot = (tp.topic, tp.partition)
            for i in range(0, len(records), STEP):
                chunk = records[i : i + STEP]
                group.append((slot, proc, chunk))
                size += len(chunk)
                if size >= SLICE:
                    await self._decide(group)
                    group, size = [], 0
        if group:
            await self._decide(group)

    def _records_to_take(
        self, tp: TopicPartition, records: list[Any], seeks_before: int
    ) -> tuple[PartitionProcessor, list[Any]] | None:
        """The partition's processor and the records of the batch it takes (None: none)."""
        proc = self.processors.get((tp.topic, tp.partition))
        if proc is None:
            return None  # fetched before our assignment callback took the partition
        # The high watermark, not the stable end: a partition whose end falls below what
        # this instance read was made again (reading.InputReading.take).
        end = None if self._consumer is None else self._consumer.highwater(tp)
        records = self._reading.take(tp, records, seeks_before, end)
        return (proc, records) if records else None

    async def _decide(
        self, group: list[tuple[tuple[str, int], PartitionProcessor, list[Any]]]
    ) -> None:
        """Decide consecutive records of one or more partitions and send their effects
        as one outbox entry; or as several, when a timer waits for the lock
        (:meth:`Firing.wants_the_lock`): what is decided is sent, and the firing goes
        first. Nothing is decided twice or skipped: the rest is decided after it."""
        firing, clock = self._firing, self.clock
        while group:
            taken = 0

            def decide(
                now: int, todo: list[tuple[tuple[str, int], PartitionProcessor, list[Any]]] = group
            ) -> Iterator[tuple[PartitionProcessor, Effects]]:
                nonlocal taken
                for slot, proc, chunk in todo:
                    if taken and firing is not None and firing.wants_the_lock(clock()):
                        return  # the rest after the firing
                    taken += 1
                    if self.processors.get(slot) is not proc:
                        continue  # revoked meanwhile: its owner reads on
                    self._commits.decided(slot, chunk[-1])
                    yield proc, proc.process(chunk, now)

            await self._send_decided(decide)
            if taken == 0:
                return  # the session ended, or the partitions may be another's: as before
            group = group[taken:]
            if group:
                await anyio.lowlevel.checkpoint()  # the firing takes the lock

    async def _unpark(self) -> None:
        """Decide the creates parked until their record's running life expired, whose
        time has come (``PartitionProcessor.unpark``), as one outbox entry."""
        if not any(proc.parked for proc in self.processors.values()):
            return

        def decide(now: int) -> Iterator[tuple[PartitionProcessor, Effects]]:
            for proc in list(self.processors.values()):
                effects = proc.unpark(now) if proc.parked else None
                if effects is not None:
                    yield proc, effects

        await self._send_decided(decide)

    async def _send_decided(
        self, decide: Callable[[int], Iterator[tuple[PartitionProcessor, Effects]]]
    ) -> None:
        """Send what ``decide`` decides at one time, counted, as one outbox entry, and
        tell the firing when the partitions' next timers are due."""
        assert self._firing is not None
        items: list[tuple[PartitionProcessor, Effects]] = []
        async with self._deciding:
            if self._outbox is None or self._fence.closed():
                return  # the session ended meanwhile, or the partitions may be another's
            # One time for the decisions and their messages: stamps timestamped at the send,
            # tombstones at the decision, put a record's stamp after its own null (a late
            # create and its erasure read together), and `history` listed it so (a trial).
            now = self.clock()
            for proc, effects in decide(now):
                self._count(effects)
                self._note_overdue(effects, now)
                items.append((proc, effects))
            if items:
                await self._outbox.send(items, now)
        for proc, _ in items:
            self._firing.due_at(proc.next_due_ms())

    def _count(self, effects: Effects) -> None:
        stats = self.stats
        stats.events += effects.events
        stats.stamped += len(effects.stamps)
        stats.verdicts.update(effects.verdicts)
        for rec, why in effects.dead_letters:
            stats.dead_letters += 1
            stats.dead_letter_codes[why.code] += 1
            self._dead_letter_log.say(rec.topic, rec.partition, rec.offset, why.code, why.detail)
        if effects.seconds_like:
            _say_early_ts(effects.seconds_like)
        for rec, pairs in effects.misspelt:
            self._say_misspelt(rec, pairs)
        if effects.unkeyed is not None:
            self._say_unkeyed(effects.unkeyed)
        for fired in effects.tombstones:
            self._count_tombstone(fired)

    def _say_unkeyed(self, rec: Any) -> None:
        """Events without a key, said once per input topic: the producer's partitioner
        spreads them over the partitions, each with a processor of its own, so a record's
        delete or touch can reach one that never saw its create (the erasure then names no
        life, and the life runs on to its expiry, its data on expiry.stamped)."""
        if rec.topic in self._unkeyed_said:
            return
        self._unkeyed_said.add(rec.topic)
        log.warning(
            "events without a key on %s (first seen at %s[%d]@%d; said once): the producer "
            "spreads them over the partitions, so a record's delete or touch can reach an "
            "instance that never saw its create and does not end or slide its life; key "
            "every event of a record alike (its record id, say), or run `stream-expiry "
            "rekey --from %s` and read its copy (README: Producers that do not key by record)",
            rec.topic,
            rec.topic,
            rec.partition,
            rec.offset,
            rec.topic,
        )

    def _say_misspelt(self, rec: Any, pairs: tuple[tuple[str, str], ...]) -> None:
        """Each name an event gives for an optional field it lacks, said once per run: a
        producer that misspells a field misspells it in every event, and the event is
        valid (the contract ignores the name), so the default it takes instead is what
        changes, the policy of bot ``_`` or of ``live``, say. Names said are bounded."""
        said = self._misspelt_said
        for name, field_name in pairs:
            if name in said or len(said) >= _MISSPELT_SAID_MAX:
                continue
            said.add(name)
            log.warning(
                "events carry %r, which no event field is: is it %r? It is ignored, so they "
                "take %s's default, %s (first seen at %s[%d]@%d; said once)",
                name,
                field_name,
                field_name,
                DEFAULTS[field_name],
                rec.topic,
                rec.partition,
                rec.offset,
            )

    def _count_tombstone(self, fired: Fired) -> None:
        if fired.null_only:
            return  # no tombstone event: the null of one that went out before
        if fired.reason == "explicit":
            self.stats.explicit += 1
        else:
            self.stats.tombstones += 1

    def _count_fired(self, fired: Fired) -> None:
        """A tombstone its timer fired: counted, and its lag observed (ServiceStats) unless
        its record was overdue when its event was read (:meth:`_note_overdue`)."""
        self._count_tombstone(fired)
        expires_at = fired.before.expires_at
        overdue = self._overdue_on_arrival
        if overdue and overdue.pop(fired.before.identity.key, None) == expires_at:
            return  # the life that was overdue when read: its lateness is not the service's
        if fired.reason != "explicit" and expires_at is not None:
            self.stats.observe_lag(fired.emitted_at - expires_at)

    def _note_overdue(self, effects: Effects, now: int) -> None:
        """Note the records stamped already expired (a late event, a ts in epoch seconds),
        with that expiry: their timers fire at once, and their lateness is the producer's,
        not a lag of the service's (one event in epoch seconds put 56 years into the lag's
        sum, a trial). A record the batch itself tombstoned or a hold deferred leaves the
        notes; so does every note once ``OVERDUE_NOTED`` are held (those then observed)."""
        overdue = self._overdue_on_arrival
        for stamp, _ in effects.stamps:
            if stamp.expires_at is not None and stamp.expires_at <= now:
                if len(overdue) >= OVERDUE_NOTED:
                    overdue.clear()
                overdue[stamp.identity.key] = stamp.expires_at
        if overdue:
            ended = [(f.before.identity.key, f.before.expires_at) for f in effects.tombstones]
            ended += [(held.identity.key, held.expires_at) for held, _, _ in effects.deferred]
            for key, expires_at in ended:
                if key in overdue and overdue[key] == expires_at:  # that life, not a next one
                    del overdue[key]

    async def _release_held(self, control: ControlTopics) -> bool:
        """After a hold's release, tombstone what it kept, a slice per loop turn; returns
        whether a release is still under way (the loop then does not wait for input).

        Each slice is decided with the holds read to their end since a tick before, as
        a firing is: the loop's consumer fetches each partition of the holds topic on
        its own, and a hold placed on one before a release on another came after the
        release; the slice then tombstoned records that hold kept (a review).

        A slice looks at ``RELEASE_BATCH`` held records at most, shared by the partitions
        releasing in turn. Each partition took 5,000 a turn: an org-wide hold over 300,000
        records on 144 partitions was decided in one turn, the timers waiting behind it
        (bench.e2e_partitions: the others' lag p99 7.4 s). At most ``RELEASES_IN_FLIGHT``
        slices wait for their acks, so a firing's tombstones queue behind two slices, not
        the whole release."""
        acks = self._release_acks
        while len(acks) >= RELEASES_IN_FLIGHT:
            await settled_or_failed(acks.popleft())
        if any(proc.releasing for proc in self.processors.values()):
            await control.holds_read_since(self.clock() - self.config.tick_ms)
        async with self._deciding:
            return await self._release_held_slice()

    async def _release_held_slice(self) -> bool:
        assert self._outbox is not None
        if self._fence.closed():
            return False  # the partitions may be another member's: the release waits
        now = self.clock()
        released: list[tuple[PartitionProcessor, Effects]] = []
        procs = list(self.processors.values())
        budget, start, more = RELEASE_BATCH, self._release_next, False
        for i in range(len(procs)):
            proc = procs[(start + i) % len(procs)]
            if not proc.releasing:
                continue
            if budget <= 0:
                more = True
                break
            effects = proc.release_due(now, budget=budget)
            budget -= max(1, proc.release_looked)
            self._release_next = (start + i + 1) % len(procs)
            more = more or proc.releasing
            if effects:
                released.append((proc, effects))
                for f in effects.tombstones:
                    self._count_tombstone(f)
        if released:
            self._release_acks.append(await self._outbox.send(released, now))
        return more

    def _housekeeping(self) -> None:
        """Horizons and markers, within one budget a turn (:mod:`stream_expiry.housekeeping`)."""
        now = time.monotonic()
        prune = now - self._pruned_at >= PRUNE_EVERY_S
        if prune:
            self._pruned_at = now
        budget = budget_for(now - self._tidied_at)
        self._tidied_at = now
        _, pruned = self._tidying.turn(
            list(self.processors.values()), self.clock(), prune=prune, budget=budget
        )
        if pruned:
            log.debug("pruned %d deletion markers past their grace", pruned)

    async def _commit(self, cons: AIOKafkaConsumer, *, every_store: bool = True) -> bool:
        """Commit what is settled (:class:`~stream_expiry.commits.OffsetCommits`)."""
        assert self._outbox is not None
        return await self._commits.commit(cons, self._outbox, every_store=every_store)

    # -- partitions -------------------------------------------------------------------------

    async def assign(self, assigned: list[TopicPartition]) -> None:
        """Take the new partitions, paused, for :meth:`_restorer` to restore and position.

        Called by the group's coordinator, which sends no heartbeat until it returns: a
        restore in here (minutes for tens of millions of stamps) outlasted the session
        timeout, the group dropped the member and rebalanced, and its partitions went to
        another member that had to restore them in turn (measured on the test broker: an
        8 s restore with a 6 s session, "member_id was not recognized", one more
        rebalance). So this only notes them; the loop goes on polling, which keeps the
        member within ``max.poll.interval.ms`` too, and reads nothing of them until they
        are resumed.
        """
        assert self._consumer is not None
        if self._stop is not None and self._stop.is_set():
            # The group may still hand partitions to a member that is stopping: restoring
            # them would open stores after the stop closed them, say "running" again, and
            # cost the other members one more rebalance once this one leaves.
            log.info(
                "stopping: the assignment of %s is not taken",
                _partitions_named(assigned) if assigned else "nothing",
            )
            return
        self.stats.assignments += 1
        self._fence.open()  # the group has said which partitions are this member's
        counts = self._partition_counts_known(self.config.topics.inputs)
        for warning in partition_counts_said(self._input_counts, counts):
            log.warning("%s", warning)
        self._input_counts = counts
        was_standby, self._standby = self._standby, not assigned
        if self._standby and not was_standby:
            # More instances than the inputs have partitions: ready (below), and it said
            # nothing, so an operator could not tell a standby from one stuck joining.
            log.info(
                "%s", standby_said("this instance", self.config.group_id, counts, doing="reading")
            )
        self._close_suspended(keep=((tp.topic, tp.partition) for tp in assigned))
        fresh = [tp for tp in assigned if (tp.topic, tp.partition) not in self.processors]
        if not fresh:
            self._settled()
            return
        read, retired = read_and_retired(assigned, self.config.topics.retired)
        # Retired partitions are never read: paused even when not fresh (a new assignment's
        # partitions are not), and never held by the reading gate, which nothing postpones.
        self._consumer.pause(*retired)
        self._reading.assigned((tp.topic, tp.partition) for tp in fresh if tp in read)
        self._consumer.pause(*fresh)
        self._to_restore.extend(fresh)
        self._assigned_at = time.monotonic()
        self.health.restoring()
        self._restore_wanted.set()

    async def _read_since(self, control: ControlTopics, cons: AIOKafkaConsumer, at_ms: int) -> None:
        """What the firing reads before it fires what falls due at ``at_ms`` plus a tick,
        unless read since ``at_ms``: the legal holds, and the ends of the input partitions
        (a sliding record waits for input sent before it fell due), in one round trip."""
        await asyncio.gather(control.holds_read_since(at_ms), self._ends_since(cons, at_ms))

    async def _ends_since(self, cons: AIOKafkaConsumer, at_ms: int) -> None:
        if not self.config.sliding or self._ends_asked_at >= at_ms:
            return
        async with self._ends_lock:
            started = self.clock()
            if self._ends_asked_at >= at_ms:
                return  # asked meanwhile
            owned = [slot for slot, proc in self.processors.items() if proc.may_slide]
            try:
                await self._reading.learn_ends(cons, owned)
            except BrokerError as exc:
                # Unanswered, the firing goes on with what the loop noted from its
                # consumer's fetches, as before it asked; the next firing asks again. Raised,
                # it ended the service: late in a soak, the test broker gave no end in time.
                now = time.monotonic()
                if now - self._ends_failed_said >= ENDS_FAILED_SAID_EVERY_S:
                    self._ends_failed_said = now
                    log.warning(
                        "the input partitions' ends went unanswered (%s): sessions due now "
                        "wait only for what the consumer has fetched",
                        exc,
                    )
                return
            self._ends_asked_at = started

    async def _restorer(self) -> None:
        """Restore and position what :meth:`assign` took, in a task of the session: the
        coordinator heartbeats meanwhile, a revocation cancels it (:meth:`revoke`; what
        was restored stays in the stores and is not read again) and so does a stop."""
        while True:
            await self._restore_wanted.wait()
            self._restore_wanted = anyio.Event()
            await self._restore_assigned()

    async def _restore_assigned(self) -> None:
        cons = self._consumer
        assert cons is not None
        tps, self._to_restore = self._to_restore, []
        if not tps:
            return
        # Retired topics' partitions are restored and fire, and are never positioned.
        read, retired = read_and_retired(tps, self.config.topics.retired)
        resumed_before = self.stats.resumed_partitions
        self._restore_done = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                self._restore_scope = scope
                if self.ready.is_set():  # a rejoin, perhaps to another cluster
                    await self._ensure_topics()
                kept = await self._restore(tps)
                # Counted now: once positioned, the firing takes what is due (the line
                # below said "0 timers" after lines that listed hundreds, a trial).
                loaded = self._timers_of(tps)
                if read:
                    await self._position(read)
        except Exception as exc:
            self.rebalance_error = exc  # raised by the loop, as its own errors are
            return
        finally:
            self._restore_scope = None
            self._restoring(0)  # done, cancelled by a revocation, or failed: none restores
            self._restore_done.set()
        if scope.cancel_called:
            return  # revoked meanwhile: the revocation closed what was opened
        cons.resume(*(set(read) & cons.assignment()))
        resumed = self.stats.resumed_partitions - resumed_before
        # One line for them all, the first few named: one per partition (restored, then
        # positioned) was some 300 lines at each rebalance of an instance owning 144.
        log.info(
            "assigned %s (%s), %d resumed as they were and %s: "
            "%d timers within the horizon loaded; reading %.2f s after the assignment%s",
            counted(len(tps), "partition"),
            _partitions_named(tps),
            resumed,
            _restored_from_changelog(len(tps) - resumed, kept),
            loaded,
            time.monotonic() - self._assigned_at,
            f"; retired, fired and not read: {_partitions_named(retired)}" if retired else "",
        )
        if not self._to_restore:
            self._settled()

    def _procs_of(self, tps: list[TopicPartition]) -> list[PartitionProcessor]:
        """The processors of those of ``tps`` this instance holds."""
        procs = [self.processors.get((tp.topic, tp.partition)) for tp in tps]
        return [p for p in procs if p is not None]

    def _timers_of(self, tps: list[TopicPartition]) -> int:
        """The timers the processors of ``tps`` hold, set aside or in their wheels."""
        return sum(p.timers + p.waiting for p in self._procs_of(tps))

    async def _judge_held_without_holds(
        self, procs: Mapping[tuple[str, int], PartitionProcessor]
    ) -> None:
        """When the stores just restored keep records for legal holds and no hold is
        active, the release scan lets them go: say so, or stop the start. Called before
        the partitions are the service's, so no scan has looked at them yet.

        With the holds topic never having had a message (a topic whose holds were
        released has their nulls), the holds that kept them were never on it: a mistyped
        ``[topics] holds`` naming a topic made by hand or by an earlier sink (with the
        audit trail intact the start stopped before: :func:`refuse_a_lost_holds_topic`),
        or a holds topic made again empty with its audit trail (a rebuilt cluster). Read
        as "every hold released", the start let go of every record they kept (a trial):
        it raises :class:`ConfigurationError` instead. With ``[archive] required`` the
        stores keep records for the archive too, which the count cannot tell apart, and
        nothing was said at all: it warns. On a holds topic that has had messages, the
        holds were released before this start (the service down, or the partition
        another member's), and the records go, as they should: an info line says so,
        where a warning that "the holds topic was lost" alarmed a trial."""
        if len(self.holds):
            return
        held = {slot: p.store.counts.held for slot, p in procs.items() if p.store.counts.held}
        if not held:
            return
        total = sum(held.values())
        where = ", ".join(f"{t}[{p}] ({n:,})" for (t, p), n in sorted(held.items()))
        holds = self.config.topics.holds
        written = (await topic_ends(self.bootstrap, [holds]))[holds]
        if self.config.archive.required and not written:
            log.warning(
                "the stores of %s keep %s for the archive or for legal holds ([archive] "
                "required: the stores do not tell which), and the legal holds topic %s "
                "has never had a message: a record a hold kept is let go as soon as the "
                "archive has it. If holds were placed in this deployment, they are on "
                "another topic: check [topics] holds (and STREAM_EXPIRY_TOPICS_HOLDS), or "
                "place them again (stream-expiry hold place)",
                where,
                counted(total, "record"),
                holds,
            )
            return
        if not written:
            raise ConfigurationError(
                f"the stores of {where} keep {total:,} record{'' if total == 1 else 's'} for "
                f"legal holds, but no hold is active and the legal holds topic {holds!r} has "
                "never had a message: the holds that keep them were on another topic (a "
                "mistyped [topics] holds naming a topic made by hand or by an earlier sink, "
                "or a holds topic made again empty), and started on this one the service "
                "would delete every record they keep. Check [topics] holds (and "
                "STREAM_EXPIRY_TOPICS_HOLDS); if the holds topic was lost, place the holds "
                "again with `stream-expiry hold place` before starting (if they were all "
                "released, place a hold and release it: the start reads the release and "
                "lets them go)"
            )
        log.info(
            "the stores of %s keep %s for legal holds released before this start (read "
            "now from %s, which has no active hold)%s",
            where,
            counted(total, "record"),
            holds,
            ", or for the archive ([archive] required: the stores do not tell which): each "
            "is let go once the archive has it, and tombstoned if due"
            if self.config.archive.required
            else ": let go now, and tombstoned if due; expiry.audit says when each hold was "
            "released",
        )

    async def _cancel_restore(self) -> None:
        """Stop a restore in progress and wait until its stores are closed."""
        scope = self._restore_scope
        if scope is not None:
            scope.cancel()
            await self._restore_done.wait()

    def _settled(self) -> None:
        """Every assigned partition is restored and positioned: ready."""
        self.health.running()
        self.health.broker_reachable()  # the group answered: whatever failed before works
        self._outage_now.answered()
        # The gauges of what it owns now, before /readyz says 200: a second's refresh
        # showed the records of the partitions it had before the rebalance.
        self._observe_said()
        self.ready.set()  # ready: partitions owned, restored, positioned, timers loaded

    async def _restore(self, tps: list[TopicPartition]) -> int:
        """Restore the stores of ``tps``; how many of those restored from the changelog
        (not resumed as they were) were kept from before, caught up from their positions
        (the others were made anew, and read from the beginning)."""
        t = self.config.topics
        now = self.clock()
        # Said from the start: the first progress report comes after the first fetch, and
        # the stores' opening and the changelog's offsets come before it (seconds for a
        # hundred stores, longer from a slow broker), the gauge at 0 meanwhile.
        self._restoring(len(tps))
        self._restore_seen = 0
        self._restore_said = time.monotonic()
        paths = {(tp.topic, tp.partition): self._store_path(tp.topic, tp.partition) for tp in tps}
        # Partitions given back after a rebalance: their stores are open, their timers loaded.
        kept = {slot: self._suspended.pop(slot) for slot in paths if slot in self._suspended}
        # One read of each changelog partition for all the stores that share it; a large
        # read (a lost disk) is shared among worker processes, one per CPU.
        moved: set[str] = set()
        while True:
            try:
                stores, result = await restore_stores(
                    paths,
                    bootstrap=self.bootstrap,
                    stamped=t.stamped,
                    tombstones=t.tombstones,
                    now_ms=now,
                    grace_ms=self.config.marker_grace_ms,
                    progress=self._restore_progress,
                    max_workers=self.config.workers,
                    opened={slot: proc.store for slot, proc in kept.items()},
                )
                # A kept partition resumes as it was when nothing was read into its store:
                # no other member wrote its changelog while it was away (what this one
                # wrote was settled and checkpointed at the revocation). Otherwise, and
                # when worker processes restored it (they open the stores anew), its
                # timers are loaded from the store as at any assignment.
                resumed = {
                    slot: proc
                    for slot, proc in kept.items()
                    if stores[slot] is proc.store and result.stores[slot].read == 0
                }
                # Loading the timers reads each store's due index: damage is found there too.
                procs = self._processors_for(
                    {slot: store for slot, store in stores.items() if slot not in resumed}
                )
                procs.update(resumed)
                break
            except Exception as exc:
                for proc in kept.values():  # closed by a failed restore; else closed here
                    _close_store(proc)
                kept = {}
                # The state directory is a cache of the changelog: a damaged store costs a
                # restore, not the service. It is moved aside, not deleted, for a person
                # (or RocksDB's tools) to look at; a second time for one store is a disk
                # that damages what is written to it, and stops the service.
                damaged = {
                    leaf.path: str(leaf)
                    for leaf in leaves(exc)
                    if isinstance(leaf, CorruptStoreError)
                    and leaf.path in paths.values()
                    and leaf.path not in moved
                }
                if not damaged:
                    raise
                for path, why in damaged.items():
                    moved.add(path)
                    aside = move_aside(path, CORRUPT, "is damaged")
                    log.warning(
                        "the state store %s is damaged (%s): moved aside to %s (delete it "
                        "once looked at); restoring it from the changelog",
                        path,
                        why,
                        aside,
                    )
                self._restore_seen = 0
        self._restore_seen = 0
        self._partitions_gone.on_changelog(result.others, self._retired_counts())
        try:
            await self._judge_held_without_holds(procs)
        except BaseException:  # refused, or cancelled: the stores are nobody's
            for proc in procs.values():
                _close_store(proc)
            raise
        self.stats.restored += result.total.read
        if resumed:  # one line for them all: a rebalance gives back dozens
            self.stats.resumed_partitions += len(resumed)
            log.info(
                "resumed %s as they were before the rebalance (stores kept open, "
                "changelogs unchanged since): %s",
                counted(len(resumed), "partition"),
                named([f"{t}[{p}]" for t, p in resumed]),
            )
        for tp in tps:
            slot = (tp.topic, tp.partition)
            store, report, proc = stores[slot], result.stores[slot], procs[slot]
            self._restoring(self.stats.restoring - 1)
            self.processors[slot] = proc
            self.stats.assigned_partitions = len(self.processors)
            self._timers_loaded(proc)
            if slot in resumed:
                continue
            c = store.counts
            log.debug(
                "%s[%d] restored in %.2f s: %d changelog messages read, %d states and "
                "%d deletion markers applied; its store has %d records pending, %d never "
                "expiring, %d markers; %d timers within the horizon",
                tp.topic,
                tp.partition,
                report.seconds,
                report.read,
                report.stamps,
                report.markers,
                c.pending_total,
                c.never,
                c.markers,
                proc.timers,
            )
            if report.unreadable:
                log.warning(
                    "%s[%d]: %d changelog messages could not be read and were skipped",
                    tp.topic,
                    tp.partition,
                    report.unreadable,
                )
        restored = [tp for tp in tps if (tp.topic, tp.partition) not in resumed]
        self._say_restored(restored, result)
        return sum(result.stores[(tp.topic, tp.partition)].kept for tp in restored)

    def _say_restored(self, restored: list[TopicPartition], result: RestoreResult) -> None:
        """One line for the partitions read from the changelog (each has its own at DEBUG):
        what was read and what their stores hold now."""
        if not restored:
            return
        reports = [result.stores[(tp.topic, tp.partition)] for tp in restored]
        procs = self._procs_of(restored)
        counts = [proc.store.counts for proc in procs]
        log.info(
            "restored %s from the changelog in %.2f s (%s): %d changelog messages read, "
            "%d states and %d deletion markers applied; their stores have %d records "
            "pending (%d due when the restore began), %d never expiring, %d markers; %d "
            "timers within the horizon",
            counted(len(restored), "partition"),
            max(r.seconds for r in reports),
            _partitions_named(restored),
            sum(r.read for r in reports),
            sum(r.stamps for r in reports),
            sum(r.markers for r in reports),
            sum(c.pending_total for c in counts),
            sum(r.due for r in reports),
            sum(c.never for c in counts),
            sum(c.markers for c in counts),
            sum(proc.timers for proc in procs),
        )

    def _restoring(self, partitions: int) -> None:
        """``partitions`` are being restored now: the count and its gauge. A revocation
        that cancelled a restore left the gauge at its last count, with no restore
        running, until the next one."""
        self.stats.restoring = partitions
        self.stats.restoring_due = 0
        if self.metrics is not None:
            self.metrics.restore_progress(partitions=partitions)

    def _timers_loaded(self, proc: PartitionProcessor) -> None:
        """Wake the firing task for a partition whose timers were just loaded, before it
        is positioned. Asleep for up to ``firing.IDLE_S`` (0.2 s) while no partition had
        a timer, it found them only at its next look, and the positioning that follows
        (a fetch from each partition) takes as long: a warm restart's first tombstone
        came 0.17-0.2 s after its restore (``bench.bench_restart``, round 27). What is
        due may fire before the position is known: a sliding record waits for the
        partition's backlog (held since :meth:`assign`, let go by
        :class:`~stream_expiry.reading.InputReading`), and nothing in the input can
        postpone the others."""
        if self._firing is not None:
            self._firing.due_at(proc.next_due_ms())

    def _processors_for(
        self, stores: Mapping[tuple[str, int], PartitionStore]
    ) -> dict[tuple[str, int], PartitionProcessor]:
        """A processor for each restored store, its timers loaded; on an error every store
        is closed (a damaged one is moved aside and all are restored again)."""
        retired = self.config.topics.retired
        try:
            procs = {
                (topic, partition): PartitionProcessor.from_config(
                    topic,
                    partition,
                    store,
                    self.config,
                    self.book,
                    now_ms=self.clock(),
                    holds=self.holds,
                    archive=self.archive,
                )
                for (topic, partition), store in stores.items()
            }
            for (topic, _partition), proc in procs.items():
                if topic in retired and self.config.sliding:
                    proc.successor = self._successors
            return procs
        except BaseException:
            for store in stores.values():
                with contextlib.suppress(StoreError):
                    store.close()
            raise

    def _restore_progress(self, report: RestoreReport) -> None:
        """The restore metrics, and a line every ``RESTORE_SAID_EVERY_S``: a restore of
        tens of millions of stamps takes minutes, which an operator should see pass.
        (Called from a thread when workers restore.)"""
        read = report.read - self._restore_seen
        self._restore_seen = report.read
        self.stats.restoring_due = report.due
        now = time.monotonic()
        if now - self._restore_said >= RESTORE_SAID_EVERY_S:
            self._restore_said = now
            log.info(
                "restoring %d partitions from the changelog: %d messages read, %d to go; "
                "%d records read so far were due when it began (they wait for its end)",
                self.stats.restoring,
                report.read,
                report.remaining,
                report.due,
            )
        if self.metrics is not None:
            self.metrics.restore_progress(
                partitions=self.stats.restoring,
                records_read=read,
                remaining=report.remaining,
                due=report.due,
            )

    async def _position(self, tps: list[TopicPartition]) -> None:
        """Resume at the group's committed offsets; a position past the end (the topic was
        recreated) is said and read from the beginning, never waited at silently."""
        assert self._consumer is not None
        cons = self._consumer
        async with consumer(self.bootstrap) as reader:
            # Nothing assigned to the reader: its fetches would hold its connection up to
            # fetch_max_wait_ms (0.1 s) on empty partitions, and the requests queued there.
            starts: dict[TopicPartition, int] = await reader.beginning_offsets(tps)
            committed_at = await committed_offsets(cons, tps)
            at = {tp: starts[tp] if c is None else c for tp, c in committed_at.items()}
            bounds = await ends_and_highs(reader, at)
            ends = {tp: stable for tp, (stable, _high) in bounds.items()}
            # A committed offset is past the end when it is past the high watermark: it may
            # be past the stable end, within an open transaction that an earlier version,
            # reading uncommitted data, read (the topic was not made again).
            highs = {tp: max(stable, high) for tp, (stable, high) in bounds.items()}
            unmarked, marked = await self._unmarked(reader, committed_at, ends)
        whys: collections.Counter[str] = collections.Counter()
        behind: list[int] = []  # the backlog of each partition that has one
        resumes: list[str] = []  # each partition and the offset it resumes at
        for tp, committed in committed_at.items():
            point = resume_point(tp, committed, starts[tp], highs[tp], unmarked.get(tp))
            if point.warning is not None:
                log.warning("%s", point.warning)
            elif tp in marked and point.offset == committed:
                self._commits.resumed((tp.topic, tp.partition), point.offset)
            waits = self._reading.positioned(tp, point.offset, ends[tp])
            whys[point.why] += 1
            resumes.append(f"{tp.topic}[{tp.partition}] {point.offset}")
            if waits:
                behind.append(ends[tp] - point.offset)
            if self.metrics is not None:
                # Known now: the loop's gauges came a commit after the first fetch, and
                # /metrics showed no lag for a partition given a second before.
                self.metrics.set_lag(tp.topic, tp.partition, ends[tp] - point.offset)
            log.debug(
                "%s[%d] resumes at offset %d, %s%s",
                tp.topic,
                tp.partition,
                point.offset,
                point.why,
                waits,
            )
        # Every partition's offset, in this one line (unlike the others' names): where
        # each resumes is what an operator looks for after a restart or a lost topic, and
        # the per-partition lines are DEBUG.
        log.info(
            "positioned %s: %s%s; each resumes at: %s",
            counted(len(committed_at), "partition"),
            ", ".join(f"{n} {why}" for why, n in whys.most_common()),
            f"; the due timers of {len(behind)} wait until their backlogs "
            f"({sum(behind):,} events) are read"
            if behind
            else "",
            ", ".join(resumes),
        )

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        assert self._consumer is not None
        self._consumer.seek(tp, offset)

    def _let_go(self, slot: tuple[str, int], position: int) -> None:
        """The partition has read up to ``position``: its sliding records that waited for
        it are scheduled again, and fire when due (most are: the firing task is woken).
        ``END_UNKNOWN``: it has read the backlog found at its assignment, and its timers,
        which waited for that, may fire (the task is woken)."""
        proc = self.processors.get(slot)
        woken = proc is not None and proc.waiting and proc.let_go_read(position)
        if (woken or position == END_UNKNOWN) and self._firing is not None:
            self._firing.wake()

    async def _unmarked(
        self,
        reader: AIOKafkaConsumer,
        committed: Mapping[TopicPartition, int | None],
        ends: Mapping[TopicPartition, int],
    ) -> tuple[dict[TopicPartition, str], set[TopicPartition]]:
        """The partitions whose committed offset follows a message other than the one
        this instance marked when it committed that offset, each with why; and those
        whose mark holds. (A commit another instance made since has no mark here, and is
        trusted.)"""
        marked: dict[TopicPartition, Mark] = {}
        for tp, offset in committed.items():
            proc = self.processors.get((tp.topic, tp.partition))
            if offset is None or not 0 < offset <= ends[tp] or proc is None:
                # Nothing to look at: past the end (said as such), or past the stable end
                # (a message in a transaction still open cannot be read yet).
                continue
            mark = proc.store.position_mark(input_position_name(tp.topic, tp.partition))
            if mark is not None and mark[0] == offset - 1:
                marked[tp] = (tp, *mark)
        broken = await broken_marks(reader, marked)
        return broken, {tp for tp in marked if tp not in broken}

    async def revoke(self, revoked: list[TopicPartition]) -> None:
        """Settle, commit and set aside the revoked partitions; the others keep their
        timers. A restore in progress is stopped first: its partitions may be among them.

        A rebalance takes every partition from every member (aiokafka's protocol is the
        eager one) and gives most of them back to the members that had them (the range
        assignor, with the members unchanged but one). So a revoked partition's store stays
        open with its timers loaded until the assignment that ends the rebalance: one given
        back is resumed as it was, unless another member wrote its changelog meanwhile
        (:meth:`_restore`), instead of being opened, read and loaded again (seconds for
        dozens of partitions, with every member's deletions stopped meanwhile)."""
        await self._cancel_restore()
        if self.health.phase in (Phase.RUNNING, Phase.RESTORING):
            self.health.rebalancing()  # /readyz 503 until the next assignment is restored
        slots = [(tp.topic, tp.partition) for tp in revoked]
        gone = set(slots)
        self._to_restore = [tp for tp in self._to_restore if (tp.topic, tp.partition) not in gone]
        for slot in slots:
            if slot not in self.processors:  # taken, not restored yet
                self._reading.forget(slot)
        mine = [slot for slot in slots if slot in self.processors]
        if not mine:
            return
        committed = True
        async with self._deciding:  # nothing new for these partitions while they settle
            if self._outbox is not None:
                await self._outbox.drain()
            if self._consumer is not None:
                committed = await self._commit(self._consumer)
            for slot in mine:
                self._suspended[slot] = self.processors.pop(slot)
                self._reading.forget(slot)
                self._commits.forget(slot)
                if self.metrics is not None:
                    self.metrics.forget_partition(*slot)
            self.stats.assigned_partitions = len(self.processors)
        # A member the group dropped (paused past its session timeout: a long GC pause, a
        # throttled container, SIGSTOP in a trial) has its commit refused: "committed" was
        # said all the same, after the warning that the commit failed.
        log.info(
            "revoked %s (%s): the group is rebalancing (a member joined, left or stopped "
            "answering); %s",
            counted(len(mine), "partition"),
            named([f"{t}[{p}]" for t, p in mine]),
            "committed and handed over"
            if committed
            else "handed over with the last offsets not committed (the group had moved on "
            "without this member): the next owner reads those events again, and what was "
            "sent for them goes out again (at least once), nothing is lost",
        )

"""The sink loop: Kafka in, one store transaction per batch, receipts out, offsets last.

The order of writes, and why (a crash at any point loses no deletion):

1. ``getmany`` a batch from ``expiry.stamped`` and ``expiry.tombstones``.
2. Apply it to the store in ONE transaction: rows, deletions and their receipts commit
   together, and so does the "published" mark of earlier batches' receipts (one commit,
   one fsync, per batch).
3. Publish the batch's receipts to ``expiry.receipts`` and the Kafka-native deletions
   to the compacted topics mapped to the deleted records' categories (a null value under
   the key that topic uses, on the partition Kafka's default partitioner picks for it, as
   a Java producer placed the record; none for a record the store holds a later life of,
   whose value that key now holds); wait for the broker's acks.
4. Only then commit the batch's Kafka offsets.

Steps 3 and 4 of batch n run beside step 2 of batch n+1 (and the decoding of batch n+2),
so the store, the broker and this process work at the same time; batches still commit
their transactions in order, and their offsets in order, each after its own publish. A
store whose driver needs this process's GIL for every row (SQLite) gets the steps one
after the other instead (``Store.overlaps``).

A crash before 2 re-reads the batch; after 2 the store has the deletions, and re-reading
changes nothing (the store is idempotent); after 2, the receipts not yet marked published
wait in the store's outbox and are published (again) at the next start. Published receipts
are at-least-once: consumers de-duplicate them by ``receipt_id``. A batch whose publish
failed leaves its receipts in the outbox and its offsets to a later batch's commit. A
commit the group refuses because it rebalanced meanwhile leaves the batch to be read again
by its partitions' owner (this sink or another), which changes nothing in the store.

A batch is counted (``metrics``, ``on_batch``) once its transaction commits, from what
the store did with it (its plan), whatever becomes of its publish and its commit after.

Every instance of one store joins the same consumer group, with the range assignor so that
partition n of both topics goes to the same instance: with equal partition counts (the
service's topics have them), a record's stamp and its tombstone then meet in one process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError

from stream_expiry.control import refuse_a_lost_holds_topic, refuse_holds_in_doubt
from stream_expiry.errors import BrokerError, BrokerUnavailableError, ConfigurationError, quoted
from stream_expiry.fetch import end_offsets, read_to_now
from stream_expiry.holds import (
    Hold,
    HoldBook,
    apply_hold_message,
    rejected_fate,
)
from stream_expiry.kafka import (
    OwnedPartitions,
    batch_bytes,
    broker_errors,
    committed_offsets,
    consumer,
    counting_partitions,
    ensure_topics,
    key_partition,
    known_partition_counts,
    message_limits,
    producer,
    read_to_end,
    stable_end,
    standby_said,
    topic_partitions,
)
from stream_expiry.kafka_settings import (
    REBALANCE_TIMEOUT_MS,
    Connection,
    KafkaSecurity,
    TopicSettings,
    member_liveness,
    role_configs,
)
from stream_expiry.logs import record_ref
from stream_expiry.model import Rejection
from stream_expiry.murmur2 import partition_for
from stream_expiry.sinks._malformed import MalformedReport, Role
from stream_expiry.sinks._messages import (
    Change,
    InvalidMessage,
    Receipt,
    decode_stamped,
    decode_tombstone,
    encode_receipt,
    receipt_headers,
)
from stream_expiry.sinks._publish import BatchPublisher
from stream_expiry.sinks.store import StoreUnavailableError
from stream_expiry.timeutil import format_ts, wall_clock_ms

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from stream_expiry.kafka import LagGauges
    from stream_expiry.key_template import KeyTemplate
    from stream_expiry.model import Identity
    from stream_expiry.sinks._logic import Plan
    from stream_expiry.sinks.store import PrunePosition, Store, SweepPosition

__all__ = ["BatchReport", "Outage", "Sink", "SinkConfig", "run_sink", "wall_clock_ms"]

log = logging.getLogger("stream_expiry.sinks")

DEFAULT_STAMPED: Final = "expiry.stamped"
DEFAULT_TOMBSTONES: Final = "expiry.tombstones"
DEFAULT_RECEIPTS: Final = "expiry.receipts"
DEFAULT_HOLDS: Final = "expiry.holds"
DEFAULT_AUDIT: Final = "expiry.audit"
METRICS: Final = (
    "batches_total",
    "messages_total",
    "written_total",
    "stale_total",
    "deleted_total",
    "swept_total",
    "unsettled_total",
    "markers_pruned_total",
    "receipts_total",
    "published_total",
    "compacted_nulls_total",
    "invalid_total",
    "unrepresentable_total",
    "broker_errors_total",
    "store_errors_total",
)
RETRY_S: Final = 1.0  # a broker or store that does not answer is tried again this often
# How often, at most, the sink says again that its sweep waits for it to catch up.
SWEEP_WAIT_SAID_EVERY_S: Final = 60.0
# How long a deletion marker outlives its settling: the service's default
# ``[service] marker_grace`` (``stream-expiry sink`` takes the configured one).
DEFAULT_MARKER_GRACE_S: Final = 7 * 24 * 3600.0
# The group's session: the service's default ``[service] session_timeout`` (``stream-expiry
# sink`` takes the configured one).
DEFAULT_SESSION_MS: Final = 6_000
# The share of a page of markers forgotten that has the sink prune the next page at once
# (see Sink.prune_once).
_PRUNE_AGAIN_SHARE: Final = 0.1
# Messages decoded between two yields to the event loop while a store transaction runs:
# small enough that the transaction resumes within a few milliseconds of its database.
_DECODE_SLICE: Final = 500


def archived_by(seen: collections.deque[tuple[int, dict[int, int]]], cutoff: int) -> dict[int, int]:
    """What the archive had committed by ``cutoff``, as far as the sweeps saw (``seen``:
    when each reading was made, oldest first; readings before the last one at or before
    ``cutoff`` are dropped): that reading's offsets, or none when every reading is later.

    A row the archive wrote after ``cutoff`` is the service's to tombstone, within the
    grace: after an archive outage longer than the grace, the sweep took at once every
    row the archive had just written, racing the service's ttl tombstones, and half of
    them got a ``sweep`` receipt (a trial: 980 of 1,925)."""
    while len(seen) > 1 and seen[1][0] <= cutoff:
        seen.popleft()
    at, offsets = seen[0]
    return offsets if at <= cutoff else {}


def _behind(ends: Mapping[Any, int], applied: Mapping[Any, int]) -> int:
    """Messages below ``ends`` not applied yet."""
    return sum(max(0, end - applied.get(tp, 0)) for tp, end in ends.items())


class Outage:
    """When a broker or the store was first found not answering, and the one line that
    says its end (``end``, given the seconds it lasted, at ``level``).

    The store's (:attr:`Sink.store_outage`) is shared by the sink's loop and its probe
    (:func:`~stream_expiry.sinks.command.watch_store`), and its end is said by whichever
    of the two gets an answer first: each said it, and a trial's sink said one PostgreSQL
    outage's end twice ("the store answers again, 2 s after the sink's first try that
    failed" at WARNING, "the store answers again" at INFO). At INFO, as the service says
    the broker's return: the end of a trouble is no trouble."""

    def __init__(
        self,
        end: str = "the store answers again, %.0f s after it was first found not answering",
        level: int = logging.INFO,
    ) -> None:
        self._end, self._level = end, level
        self.since: float | None = None

    def failed(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def answered(self) -> None:
        if self.since is not None:
            log.log(self._level, self._end, time.monotonic() - self.since)
            self.since = None


class _Retrying:
    """The sink loop's side of an outage of ``what``: each failed try counted, a warning
    when its tries start failing, and the end said (by ``outage``, once) when they answer
    again. ``failing`` is the loop's own state, not the outage's: the store probe may have
    seen the store answer while the loop has yet to try it again (see :meth:`Sink._loop`)."""

    def __init__(self, what: str, metrics: dict[str, int], counter: str, outage: Outage) -> None:
        self.what, self._metrics, self._counter = what, metrics, counter
        self._outage = outage
        self.failing = False

    def failed(self, exc: BaseException) -> None:
        """A try that failed: said when it starts an outage, the loop's (its tries were
        answered) or the shared one's (the probe said its end while the loop waited to try
        again: a flapping store's second outage went unsaid, and its end with it)."""
        self._metrics[self._counter] += 1
        if not self.failing or self._outage.since is None:
            self.failing = True
            log.warning("%s; retrying until the %s answers", exc, self.what)
            self._outage.failed()

    def answered(self) -> None:
        if self.failing:
            self.failing = False
            self._outage.answered()  # the store's: unless its probe said it already


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """Where a sink reads and writes, and how it batches and sweeps.

    ``compacted`` maps a category to a compacted user topic: every deletion of a record of
    that category also produces a null value there, so Kafka's own compaction removes the
    record from that topic. ``key_templates`` maps such a topic to the key it gives a
    record (our record key for a topic not in it); the null goes to the partition Kafka's
    default partitioner (murmur2) picks for that key, where a Java producer put the record. ``receipts_topic=None`` keeps receipts
    in the store only (none waits in its outbox, unless ``compacted`` has nulls to send). ``sweep_interval_s=None`` turns the safety-net sweep off; when on,
    it deletes rows whose ``expires_at`` is ``sweep_grace_s`` or more before the
    read-complete time (:meth:`Sink.read_complete_ms`: what the store holds is judged
    only against what the sink has read; the grace leaves the service time to deliver
    the real tombstone, which carries the rule),
    except the rows a legal hold on ``holds_topic`` keeps: the sink follows that topic
    itself, so a hold is kept even while the service is down (``holds_topic=None``: no
    holds are followed, for a deployment that has none). A hold released (or narrowed)
    keeps sparing what it matched for ``sweep_grace_s`` more: its records' tombstones
    are on their way from the service, and they carry the rule, not ``sweep``.
    ``audit_topic``: the service's audit trail, which only holds write; a sweep's start
    refuses a holds topic that has never had a message while it has entries, as the
    service's does (a mistyped holds topic that something made empty read as "no hold",
    and the sweep deleted what the holds kept). None: not checked.

    ``marker_grace_s``: how long past its settling the store remembers a deletion (rule 7
    of :mod:`~stream_expiry.sinks._logic`), counted, as the sweep's grace is, from the
    read-complete time; every ``prune_interval_s`` the sink looks at the next
    ``prune_limit`` markers along the primary key and forgets those past it (again at
    once while a tenth of a page or more goes: see :meth:`Sink.prune_once`), whether
    the sweep is on or not.

    ``archive_group`` (``[archive] required`` in the service's config): the archive's
    consumer group. The service tombstones no record (``ttl``) before that group has
    committed past the record's latest stamp on ``stamped_topic``; the sweep, standing in
    for those tombstones, keeps the same rule and deletes a row only once the group has
    committed past the stamp the row was written from. A stopped archive then delays the
    sweep as it delays the service's purges, and nothing unarchived is swept. None: the
    sweep does not wait for an archive.

    ``sliding``: the categories whose expiry a touch moves (the service's ``[categories]
    sliding``). The sweep leaves their rows to the service's tombstones: a touch the service
    has not read yet may have moved a row's expiry, and the store cannot know it. Swept,
    every session touched during a service outage was deleted (a trial: 100 of 100, 16 s
    before their expiry; with 30-minute sessions and the default grace, up to 29 minutes
    early), and the service's later stamp of the moved expiry was dropped as stale.

    ``session_timeout_ms``: the group's session (``[service] session_timeout``). A sink
    killed without leaving its group (SIGKILL, an OOM kill) keeps its partitions, and
    holds the join of the sink restarted in its place, until the session runs out:
    aiokafka's default of 10 s had a restarted sink wait ~20 s on the test broker.
    ``consumer_options`` beat it (and everything else the group consumer is given).
    """

    bootstrap_servers: str
    group_id: str
    stamped_topic: str = DEFAULT_STAMPED
    tombstones_topic: str = DEFAULT_TOMBSTONES
    receipts_topic: str | None = DEFAULT_RECEIPTS
    compacted: Mapping[str, str] = field(default_factory=dict)
    key_templates: Mapping[str, KeyTemplate] = field(default_factory=dict)
    sweep_interval_s: float | None = None
    sweep_grace_s: float = 60.0
    sweep_limit: int = 10_000
    marker_grace_s: float = DEFAULT_MARKER_GRACE_S
    prune_interval_s: float = 60.0
    prune_limit: int = 10_000
    holds_topic: str | None = DEFAULT_HOLDS
    archive_group: str | None = None
    sliding: frozenset[str] = frozenset({"session"})
    session_timeout_ms: int = DEFAULT_SESSION_MS
    # Messages per store transaction at most (fewer when fewer wait): through Kafka, 5,000
    # measured 30 % faster than 1,000 for SQLite and 20 % for PostgreSQL (bench_sinks).
    batch_size: int = 5000
    poll_timeout_ms: int = 200
    consumer_options: Mapping[str, Any] = field(default_factory=dict)
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    topic_settings: TopicSettings = field(default_factory=TopicSettings)
    # Last, so the fields before keep their positions.
    audit_topic: str | None = DEFAULT_AUDIT

    @property
    def connection(self) -> Connection:
        return Connection(self.bootstrap_servers, self.security)


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one batch (or one sweep) did; given to ``on_batch`` once its store transaction
    committed (before its receipts are published and its offsets committed, which may fail
    and be done again later: the batch is reported once all the same)."""

    kind: Literal["batch", "sweep"]
    messages: int
    written: int
    stale: int
    deleted: int
    swept: int
    invalid: int
    receipts: tuple[Receipt, ...]


@dataclass(frozen=True, slots=True)
class _Probe:
    """The end offsets of the stamped and tombstone partitions, as the broker gave them to
    a request sent at ``at_ms`` (the wall clock just before it)."""

    at_ms: int
    ends: dict[Any, int]


@dataclass(slots=True)
class _Decoded:
    """A batch read from Kafka and decoded, not yet applied."""

    changes: list[Change]
    offsets: dict[Any, int]  # next offset to commit, per partition
    starts: dict[Any, int]  # first offset, per partition: where the unapplied part begins
    messages: int
    invalid: int  # malformed messages among them (already counted in the metrics)
    generation: int = 0  # the sink's assignment it was read under (Sink._generation)


class _HandOver(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before the group moves this sink's partitions, its transaction in flight ends and
    what it read and did not apply is dropped (:meth:`Sink._revoked`); their lag series
    go (another member reports them now), and only those given next get one again
    (:meth:`Sink._observe`)."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._sink._owned.revoked(revoked, self._sink._lag)
        await self._sink._revoked()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._sink._owned.assigned(assigned)
        self._sink._given(assigned)


class Sink:
    """Runs one store against the stamped and tombstone topics until told to stop.

    ``metrics`` holds counters (names in ``METRICS``) that only go up; ``swept_total`` above
    zero means tombstones did not arrive in time, which is worth an alert.
    """

    def __init__(
        self,
        store: Store,
        config: SinkConfig,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        on_batch: Callable[[BatchReport], object] | None = None,
        on_ready: Callable[[], object] | None = None,
        lag: LagGauges | None = None,
    ) -> None:
        self.store = store
        self.config = config
        # The store's outage, whose end the loop and the store probe say once between them.
        self.store_outage = Outage()
        # Ready once the group gave this sink its partitions, or none (a standby), not
        # merely once the store is open; the lag of each it owns is reported at most once
        # a second.
        self._on_ready = on_ready
        self._on_joining: Callable[[], object] | None = None
        self._lag = lag
        self._lag_at = 0.0
        self._owned = OwnedPartitions()  # the group's assignment, as its listener says
        self._positions: dict[Any, int] = {}  # next offset per partition, from what was read
        self.metrics: dict[str, int] = dict.fromkeys(METRICS, 0)
        self._clock = clock
        self._on_batch = on_batch
        # Receipts Kafka acknowledged, marked published in the next store transaction.
        self._acked: list[str] = []
        # The next batch, read and decoded while the previous one was being applied.
        self._ready: _Decoded | None = None
        # How the holds are read to their end before a sweep (the unit tests give theirs).
        self._read_to_now = read_to_now
        # Held while a batch's transaction runs; a revocation waits for it (_revoked).
        self._applying = anyio.Lock()
        # When the store transaction in flight began (time.monotonic) and the messages it
        # applies; None between them. The progress line warns of one that takes long: a
        # table another session had locked held a sink's batch for minutes, and its log
        # said nothing (a review; its ping, ``SELECT 1``, took no lock and answered).
        self.applying: tuple[float, int] | None = None
        # Counts the revocations: a batch read before the last one is not applied.
        self._generation = 0
        # The applied batch whose receipts are being published and offsets committed,
        # beside the next batch's transaction (see :meth:`_hand_off`).
        self._finishing: asyncio.Future[None] | None = None
        # Next offset per partition of every applied batch, until a commit holds it.
        self._uncommitted: dict[Any, int] = {}
        # Whether the sink said that the group rebalanced under a commit, since the last
        # commit that went through (said once a rebalance, not once a batch).
        self._rebalance_said = False
        # The sweep's view of the legal holds, and where its next page starts.
        self.holds = HoldBook()
        # Holds released or replaced within the sweep's grace, with when this sink read
        # that: what they kept is due at once, and its tombstones are on their way.
        self._let_go = HoldBook()
        self._let_go_at: dict[str, int] = {}
        self._holds_reader: AIOKafkaConsumer | None = None
        # The group's consumer: the partition counts it knows are said at each join.
        self._consumer: AIOKafkaConsumer | None = None
        # Whether the group answered this run's join (an empty assignment too), and whether
        # its last assignment was empty (said once, not at each rebalance that keeps it so).
        self._joined = False
        self._standby = False
        # Reads the archive group's committed offsets ([archive] required), and when the
        # sink last said that its sweep keeps rows for the archive.
        self._archive_reader: AIOKafkaConsumer | None = None
        self._archive_said_at: float | None = None
        # The archive's committed offsets as the sweeps read them, with when (wall ms),
        # oldest first: back to the last one read by the latest sweep's cutoff.
        self._archive_seen: collections.deque[tuple[int, dict[int, int]]] = collections.deque()
        self._sweep_from: SweepPosition | None = None
        # Where the rolling scan of deletion markers goes on (see prune_once); a restart
        # starts it from the first marker again.
        self._prune_from: PrunePosition | None = None
        # The read-complete time W (see :meth:`read_complete_ms`), the request of end
        # offsets that may move it on, the partitions both were made for, and when the
        # sink last said that its sweep waits for W.
        self._read_to_ms: int | None = None
        self._probe: _Probe | None = None
        self._probed_key: tuple[frozenset[Any], frozenset[Any]] = (frozenset(), frozenset())
        self._wait_said_at: float | None = None
        # Malformed messages, and records the store cannot represent: the first of a topic
        # said with what to do, then counted.
        self.malformed = MalformedReport(
            {
                config.stamped_topic: Role(
                    "stamped", "--stamped-topic", "the service's stamps", DEFAULT_STAMPED
                ),
                config.tombstones_topic: Role(
                    "tombstones",
                    "--tombstones-topic",
                    "the service's tombstone events",
                    DEFAULT_TOMBSTONES,
                ),
            }
        )

    async def run(self, stop: anyio.Event) -> None:
        """Consume until ``stop`` is set, then return after the current batch committed.

        Opens the store if it is not open (it is never closed here: the caller owns it).
        Raises :class:`~stream_expiry.errors.StoreError` or
        :class:`~stream_expiry.errors.BrokerError` without committing the failed batch;
        a broker that does not answer, or a store that lost its connection
        (:class:`~stream_expiry.sinks.store.StoreUnavailableError`), is waited for instead.
        """
        cfg = self.config
        await self.store.open()
        ts = cfg.topic_settings
        own = {
            cfg.stamped_topic: role_configs("compacted", ts),
            cfg.tombstones_topic: role_configs("data", ts),
        }
        if cfg.receipts_topic:
            own[cfg.receipts_topic] = role_configs("evidence", ts)
        follow_holds = cfg.sweep_interval_s is not None and cfg.holds_topic is not None
        if follow_holds:
            assert cfg.holds_topic is not None
            own[cfg.holds_topic] = role_configs("compacted", ts)
        conn = cfg.connection
        if follow_holds:
            assert cfg.holds_topic is not None
            await refuse_a_lost_holds_topic(
                conn,
                cfg.holds_topic,
                cfg.stamped_topic,
                audit=cfg.audit_topic,
                lost="the sweep would delete every row a hold keeps",
                check="--holds-topic ([topics] holds of --config)",
            )
        created = await ensure_topics(
            conn, own, configs=own, partitions=ts.partitions, replication=ts.replication_factor
        )
        # The service writes these: one the sink had to create is probably not the
        # service's (a mistyped --tombstones-topic read nothing, and its rows were deleted
        # by the nulls alone, with no receipt, without a word: a trial).
        for topic in created:
            if topic in (cfg.stamped_topic, cfg.tombstones_topic, cfg.holds_topic):
                log.warning(
                    "created topic %s, which did not exist: the service writes it; check "
                    "the name (the sink's --*-topic options, [topics] of --config) if the "
                    "service runs already",
                    topic,
                )
        options = self._group_options()
        # The receipts and the users' compacted topics: record batches that fit them all.
        written = [t for t in (cfg.receipts_topic, *cfg.compacted.values()) if t]
        limits = await message_limits(conn, written) if written else {}
        async with contextlib.AsyncExitStack() as stack:
            prod = await stack.enter_async_context(
                producer(conn, max_batch_size=batch_bytes(limits.values()))
            )
            cons = await stack.enter_async_context(consumer(conn, **options))
            self._consumer, self._joined, self._standby = cons, False, False
            cons.subscribe([cfg.stamped_topic, cfg.tombstones_topic], listener=_HandOver(self))
            if follow_holds:
                # Every hold is known before the first sweep, as the service knows them
                # before its first event.
                self._holds_reader = await stack.enter_async_context(
                    consumer(conn, enable_auto_commit=False)
                )
                await self._read_holds(to_end=True)
                # A hold id whose latest message cannot be read keeps what it was meant to
                # keep only by refusing, as the service's start does.
                assert cfg.holds_topic is not None
                refuse_holds_in_doubt(
                    self.holds,
                    cfg.holds_topic,
                    lost="the sweep would delete the rows each was meant to keep",
                )
            if cfg.sweep_interval_s is not None and cfg.archive_group is not None:
                # A member of no group: it only asks for the archive group's offsets, and
                # never commits any (auto-commit is off in every consumer here).
                self._archive_reader = await stack.enter_async_context(
                    consumer(conn, group_id=cfg.archive_group, enable_auto_commit=False)
                )
            await self._check_compacted(prod)
            self._say_start()
            await self._say_if_group_used(cons)
            await self._flush_outbox(prod)
            # A batch decoded by an earlier run belongs to that run's consumer: its
            # offsets were not committed, so this one reads it again.
            self._ready = None
            if self._on_ready is not None and self._on_joining is not None:
                self._on_joining()  # started; the group's first assignment not taken yet
            try:
                await self._loop(stop, prod, cons)
                await self._settle()
            except BrokerUnavailableError as exc:  # the last batch's publish or commit
                log.warning(
                    "stopping with the last batch unconfirmed (%s): its receipts wait in "
                    "the store's outbox and its messages are read again at the next start",
                    exc,
                )
                return
            finally:
                self.malformed.flush()  # what was counted and not said yet, however it stops
                await self._abandon()
            try:
                await self._mark_acked()
            except StoreUnavailableError as exc:
                log.warning(
                    "stopping without marking the last receipts published (%s): they are "
                    "published again at the next start",
                    exc,
                )

    def _group_options(self) -> dict[str, Any]:
        """The group consumer's options: the range assignor (a record's stamp and its
        tombstone meet in one sink), each join saying the topics' partition counts
        (:func:`~stream_expiry.kafka.counting_partitions`: partitions added to them were
        never assigned on the test broker), the service's session (a sink killed holds the one
        restarted in its place until it runs out), and a rebalance timeout that covers
        the store transaction a revocation waits for (:meth:`_revoked`; aiokafka's
        default is the session). The caller's ``consumer_options`` win."""
        cfg = self.config
        return {
            "group_id": cfg.group_id,
            "partition_assignment_strategy": (
                counting_partitions(RangePartitionAssignor, lambda: self._consumer),
            ),
            **member_liveness(cfg.session_timeout_ms),
            "rebalance_timeout_ms": max(cfg.session_timeout_ms, REBALANCE_TIMEOUT_MS),
            **cfg.consumer_options,
        }

    def _say_start(self) -> None:
        """One line at start: what the sink reads and writes (a sink without metrics said
        nothing until its first progress line, or ever when there was nothing to read)."""
        cfg = self.config
        compacted = ", ".join(f"{c}={t}" for c, t in sorted(cfg.compacted.items()))
        sweep = (
            "sweep off"
            if cfg.sweep_interval_s is None
            else f"sweep every {cfg.sweep_interval_s:g} s, grace {cfg.sweep_grace_s:g} s"
            + (
                ""
                if cfg.archive_group is None
                else f", only what the archive (group {cfg.archive_group}) has written"
            )
        )
        log.info(
            "sink %s: reading %s and %s from %s (group %s); receipts to %s%s; %s",
            self.store.name, cfg.stamped_topic, cfg.tombstones_topic, cfg.bootstrap_servers,
            cfg.group_id, cfg.receipts_topic or "the store only",
            f", nulls to {compacted}" if compacted else "", sweep,
        )  # fmt: skip

    async def _say_if_group_used(self, cons: AIOKafkaConsumer) -> None:
        """Warn when the store is empty while its group has committed offsets: it starts
        where the group left off and never gets what came before. Two stores started
        with one group (the default is one a store type: a second PostgreSQL schema
        without a --name of its own) share the topics' partitions, and each misses the
        other's stamps and deletions (a trial: the second schema got 0 of 12 receipts,
        without a word)."""
        if not await self.store.is_empty():
            return
        cfg = self.config
        with broker_errors(f"reading the committed offsets of {cfg.group_id}"):
            tps = await topic_partitions(cons, (cfg.stamped_topic, cfg.tombstones_topic))
            committed = await committed_offsets(cons, tps)
        if any(offset for offset in committed.values()):
            log.warning(
                "store %s is empty, but the consumer group %r has read %s and %s before: "
                "this store starts where the group left off and never gets what came before. "
                "If another store reads with this group, the two share the partitions and "
                "each misses the other's stamps and deletions: give each store a --name of "
                "its own (its group is stream-expiry-sink-NAME) or a --group-id",
                self.store.name, cfg.group_id, cfg.stamped_topic, cfg.tombstones_topic,
            )  # fmt: skip

    async def _loop(
        self, stop: anyio.Event, prod: AIOKafkaProducer, cons: AIOKafkaConsumer
    ) -> None:
        cfg = self.config
        next_sweep = next_prune = time.monotonic()
        # Counted from the first try that failed: a broker's outage may start well before
        # (a fetch returns nothing while it is away; a commit is what fails), and "answers
        # again after 6 s" was said of a 62 s outage (a trial).
        broker_outage = Outage(
            "the broker answers again, %.0f s after the sink's first try that failed",
            logging.WARNING,
        )
        broker = _Retrying("broker", self.metrics, "broker_errors_total", broker_outage)
        store = _Retrying("store", self.metrics, "store_errors_total", self.store_outage)
        while not stop.is_set():
            self.malformed.tick()
            try:
                if store.failing:  # said to answer again only once it does
                    await self.store.ping()
                if broker.failing or store.failing:
                    # Receipts of a batch whose publish failed; or of one the store
                    # committed while it said it had not (COMMIT's answer lost): applied
                    # again, that batch makes none, and its receipts waited for a restart.
                    # Those published already are marked first, or they went out twice
                    # (their mark rides with the next transaction, which the outage undid).
                    await self._settle()
                    if self._acked:
                        await self._mark_acked()
                    await self._flush_outbox(prod)
                if self._ready is None:
                    with broker_errors(f"consuming from {cfg.bootstrap_servers}"):
                        batch = await cons.getmany(
                            timeout_ms=cfg.poll_timeout_ms, max_records=cfg.batch_size
                        )
                    self._observe(cons, batch)
                    if batch:
                        self._ready = await self._decode_batch(batch)
                if self._ready is not None:
                    await self._step(prod, cons)
                else:  # idle: finish the last batch, and mark its receipts without waiting
                    await self._settle()
                    if self._acked:
                        await self._mark_acked()
                    await self.store.idle()
                sweep_every = cfg.sweep_interval_s
                sweep = sweep_every is not None and time.monotonic() >= next_sweep
                prune = time.monotonic() >= next_prune
                read_to = await self.read_complete_ms(cons) if sweep or prune else None
                if sweep and sweep_every is not None:
                    full = read_to is not None and await self.sweep_once(prod, read_to_ms=read_to)
                    next_sweep = time.monotonic() + (0 if full else sweep_every)
                if prune:
                    more = read_to is not None and await self.prune_once(
                        read_to_ms=read_to, read_over=self._probed_key[0]
                    )
                    next_prune = time.monotonic() + (0 if more else cfg.prune_interval_s)
            except (BrokerUnavailableError, StoreUnavailableError) as exc:
                # Broker: the store holds every applied batch and its receipts wait in the
                # outbox; offsets not committed are read again. Store: the batch that was not
                # applied was put back to be read again (see _step), and applying it again
                # changes nothing where a part of it was. Waiting loses nothing.
                (broker if isinstance(exc, BrokerUnavailableError) else store).failed(exc)
                with anyio.move_on_after(RETRY_S):
                    await stop.wait()
                continue
            store.answered()
            broker.answered()

    def observe(
        self,
        *,
        on_joining: Callable[[], object] | None = None,
        on_ready: Callable[[], object] | None = None,
        lag: LagGauges | None = None,
    ) -> None:
        """Be told when the sink has started and waits for its group's first assignment
        (it said "starting" through the whole join), when the group gave this
        sink its partitions (or none: a standby, see :meth:`_given`), and each one's lag."""
        self._on_joining, self._on_ready, self._lag = on_joining, on_ready, lag

    def _given(self, assigned: Collection[Any]) -> None:
        """The group's assignment, as the listener gets it: even an empty one ends the join.
        A member given nothing (the group has more members than the topics have
        partitions) is a standby, ready, idle until a member leaves and the group hands
        it partitions; it waited for partitions, said "joining" for good, and /readyz never
        said 200, so an orchestrator held back or restarted a healthy instance."""
        self._joined = True
        was_standby, self._standby = self._standby, not assigned
        if self._standby and not was_standby:
            cfg = self.config
            topics = (cfg.stamped_topic, cfg.tombstones_topic)
            counts = known_partition_counts(self._consumer, topics)
            said = standby_said("this sink", cfg.group_id, counts, doing="reading")
            log.info("sink %s %s", self.store.name, said)

    def _observe(self, cons: AIOKafkaConsumer, batch: Mapping[Any, list[Any]]) -> None:
        assignment = cons.assignment()
        if self._on_ready is not None and self._joined:  # a standby given nothing too
            self._on_ready()
            self._on_ready = None
        for tp, records in batch.items():
            if records:
                self._positions[tp] = records[-1].offset + 1
        if self._lag is None or time.monotonic() - self._lag_at < 1.0:
            return
        self._lag_at = time.monotonic()
        # Those the listener says are this sink's: from a revocation to the next assignment
        # ``assignment`` still lists the partitions taken (:class:`OwnedPartitions`).
        for tp in self._owned:
            high = stable_end(cons, tp) if tp in assignment else None
            if high is not None:
                self._lag.set_lag(tp.topic, tp.partition, high - self._positions.get(tp, high))

    async def _mark_acked(self) -> None:
        acked, self._acked = self._acked, []
        try:
            await self.store.mark_published(acked, now_ms=self._clock())
        except BaseException:
            self._acked = acked + self._acked  # marked at the next try
            raise

    async def _check_compacted(self, prod: AIOKafkaProducer) -> None:
        """A user's topic must exist: producing to a missing one would create it (with the
        broker's default partition count) and the null would land where no record is."""
        wanted = set(self.config.compacted.values())
        if not wanted:
            return
        with broker_errors("reading topic metadata"):
            metadata = await prod.client.fetch_all_metadata()
        missing = sorted(wanted - metadata.topics())
        if missing:
            raise ConfigurationError(
                f"compacted topic(s) {', '.join(missing)} do not exist on "
                f"{self.config.bootstrap_servers}; a sink deletes from a user's existing topic"
            )

    def _decode(self, topic: str, rec: Any) -> Change | None:
        try:
            if topic == self.config.tombstones_topic:
                # By position (see decode_tombstone): key, value, headers, timestamp,
                # topic, partition.
                change: Change = decode_tombstone(
                    rec.key, rec.value, rec.headers, rec.timestamp, topic, rec.partition
                )
            else:
                # key, value, partition, offset, headers, timestamp, topic.
                change = decode_stamped(
                    rec.key, rec.value, rec.partition, rec.offset, rec.headers, rec.timestamp,
                    topic,
                )  # fmt: skip
        except InvalidMessage as exc:
            self.metrics["invalid_total"] += 1
            self.malformed.skipped(topic, rec.partition, rec.offset, exc, rec.value)
            return None
        if not self.store.holds(change.identity):
            self.metrics["unrepresentable_total"] += 1
            self.malformed.unrepresentable(
                self.store.name, topic, rec.partition, rec.offset,
                record_ref(change.identity.key),
            )  # fmt: skip
            return None
        return change

    async def _decode_batch(self, batch: Mapping[Any, list[Any]]) -> _Decoded:
        """Decode a batch, yielding to the event loop every few hundred messages so that a
        store transaction running beside it (see :meth:`_step`) resumes as soon as its
        database answers. Called as soon as ``batch`` is read (no await between): it is
        of the assignment in force then."""
        generation = self._generation
        changes: list[Change] = []
        offsets: dict[Any, int] = {}
        starts: dict[Any, int] = {}
        messages = 0
        invalid_before = self.metrics["invalid_total"]
        since_yield = 0
        for tp, recs in batch.items():
            if not recs:
                continue
            messages += len(recs)
            topic = tp.topic
            for rec in recs:
                change = self._decode(topic, rec)
                if change is not None:
                    changes.append(change)
                since_yield += 1
                if since_yield >= _DECODE_SLICE:
                    since_yield = 0
                    await asyncio.sleep(0)
            offsets[tp] = recs[-1].offset + 1
            starts[tp] = recs[0].offset
        invalid = self.metrics["invalid_total"] - invalid_before
        return _Decoded(changes, offsets, starts, messages, invalid, generation)

    async def _step(self, prod: AIOKafkaProducer, cons: AIOKafkaConsumer) -> None:
        """Apply the ready batch; meanwhile, read the next one if the consumer holds it
        already, and decode it while the store works on this one (its database, in
        another process, and the decoding, here, then overlap). The previous batch's
        receipts are published and its offsets committed beside both. A store that does
        not overlap (:attr:`Store.overlaps`) gets the same steps one after the other.

        Transactions run one after another, in order; so do the offset commits. The next
        batch is kept in ``_ready`` before this one's outcome is known, so a broker outage
        while publishing does not lose it (its offsets are not committed yet).
        """
        with broker_errors(f"consuming from {self.config.bootstrap_servers}"):
            following = await cons.getmany(timeout_ms=0, max_records=self.config.batch_size)
        self._observe(cons, following)
        current, self._ready = self._ready, None
        if current is None:  # dropped by a revocation while the consumer was asked
            if following:
                self._ready = await self._decode_batch(following)
            return
        try:
            await self._apply_and_hand_off(current, following, prod, cons)
        except StoreUnavailableError:
            self._rewind(cons, current)
            raise

    async def _apply_and_hand_off(
        self,
        current: _Decoded,
        following: Mapping[Any, list[Any]],
        prod: AIOKafkaProducer,
        cons: AIOKafkaConsumer,
    ) -> None:
        """:meth:`_step` once the batches are taken: ``current`` applied, ``following``
        decoded into ``_ready`` meanwhile."""
        if not self.store.overlaps:  # one step after the other: see Store.overlaps
            if following:  # kept before anything can fail, as below
                self._ready = await self._decode_batch(following)
            await self._hand_off(await self._transact(current), prod, cons)
            await self._settle()
            return
        if not following:
            out = await self._transact(current)
        else:
            task = asyncio.ensure_future(self._transact(current))
            try:
                self._ready = await self._decode_batch(following)
            except BaseException:
                # Cancelled (or a bug): the transaction must not outlive this sink's loop.
                task.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([task])
                raise
            out = await task
        await self._hand_off(out, prod, cons)

    def _rewind(self, cons: AIOKafkaConsumer, failed: _Decoded) -> None:
        """The store lost its connection while applying ``failed``: read it again, and the
        batch read after it, from their first offsets (what a restart would do, without
        one). Records the consumer had fetched beyond them are dropped by the seek."""
        starts = dict(failed.starts)
        if self._ready is not None:
            for tp, offset in self._ready.starts.items():
                starts.setdefault(tp, offset)  # ``failed`` came first where both have one
            self._ready = None
        assigned = cons.assignment()
        for tp, offset in starts.items():
            if tp in assigned:  # a partition taken away is read again by its new owner
                cons.seek(tp, offset)

    async def _handle(
        self, batch: Mapping[Any, list[Any]], prod: AIOKafkaProducer, cons: AIOKafkaConsumer
    ) -> None:
        """Decode, apply, publish and commit one batch, each step awaited in turn: what
        :meth:`_step` does, unpipelined."""
        decoded = await self._decode_batch(batch)
        await self._hand_off(await self._transact(decoded), prod, cons)
        await self._settle()

    async def _revoked(self) -> None:
        """The group takes this sink's partitions back (to hand them out again, to this
        sink or another): the transaction in flight ends first, and a batch read before
        now is not applied (its offsets are not committed: its partitions' owner reads it
        again). Without this, a new owner applied a record's stamp while the old one
        applied its tombstone, in two transactions that each found no row and no marker
        (neither has one to lock): the row stayed, its data with it (a review)."""
        self._generation += 1
        async with self._applying:
            self._ready = None

    async def _transact(self, batch: _Decoded) -> Plan | None:
        """The batch's store transaction, which also marks the receipts acknowledged so
        far; None when the batch was read before its partitions were taken back (not
        applied, see :meth:`_revoked`)."""
        async with self._applying:
            if batch.generation != self._generation:
                return None
            acked, self._acked = self._acked, []
            self.applying = (time.monotonic(), len(batch.changes))
            try:
                out = await self.store.apply(
                    batch.changes,
                    now_ms=self._clock(),
                    published=acked,
                    living=bool(self.config.compacted),
                )
            except BaseException:
                self._acked = acked + self._acked
                raise
            finally:
                self.applying = None
        # The store holds the batch now: re-reading it after a restart is harmless.
        self._uncommitted.update(batch.offsets)
        self._count(batch, out)
        return out

    def _count(self, batch: _Decoded, out: Plan) -> None:
        """Count and report a batch whose transaction committed: what the store did is
        done, whatever becomes of its publish and its commit. Counted after those, a
        commit refused by a rebalance left two batches uncounted (the failed one, and the
        next, not handed off), their receipts published from the outbox all the same (a
        trial). A batch read again (after a rebalance, a restart) is applied again, and
        its plan then says that nothing new was written, deleted or receipted."""
        m = self.metrics
        m["batches_total"] += 1
        m["messages_total"] += batch.messages
        m["written_total"] += out.written
        m["stale_total"] += out.stale
        m["deleted_total"] += out.deleted
        m["receipts_total"] += len(out.receipts)
        self._report("batch", out, batch.messages, batch.invalid)

    async def _hand_off(
        self, out: Plan | None, prod: AIOKafkaProducer, cons: AIOKafkaConsumer
    ) -> None:
        """Start publishing an applied batch and committing its offsets, in the background.

        The previous batch's publish and commit are awaited first, so commits stay in
        order and at most one batch is in flight beside the next transaction. If that one
        failed, its error is raised here and this batch is not handed off: its receipts
        wait in the outbox (flushed once the broker answers) and its offsets stay in
        ``_uncommitted`` for the next commit (it was counted with its transaction). A
        batch not applied (``out`` None: its partitions were taken back) is not handed off.
        """
        await self._settle()
        if out is None:
            return
        offsets = dict(self._uncommitted)
        self._finishing = asyncio.ensure_future(self._finish(out, offsets, prod, cons))

    async def _finish(
        self,
        out: Plan,
        offsets: dict[Any, int],
        prod: AIOKafkaProducer,
        cons: AIOKafkaConsumer,
    ) -> None:
        """Publish the batch's receipts, then commit the offsets of every batch applied up
        to it (a partition the group took away meanwhile is left out). The batch was
        counted with its transaction (:meth:`_count`)."""
        await self._publish(prod, out.receipts, living=out.living)
        assigned = cons.assignment()
        mine = {tp: o for tp, o in offsets.items() if tp in assigned}
        if mine:
            with broker_errors(f"committing offsets for group {self.config.group_id}"):
                try:
                    await cons.commit(mine)
                except CommitFailedError:
                    self._say_rebalanced(mine)
                else:
                    self._rebalance_said = False
        for tp, offset in offsets.items():
            if self._uncommitted.get(tp) == offset:
                del self._uncommitted[tp]

    def _say_rebalanced(self, offsets: Mapping[Any, int]) -> None:
        """The group refused a commit: it rebalanced meanwhile (an instance of the store
        joined, left or stopped answering), not a broker outage. The offsets are the old
        assignment's: after the rebalance each partition is read again from its committed
        offset by its owner, this sink or another, and the batches applied again change
        nothing in the store. Said as a broker outage, it was counted in
        ``broker_errors_total``, waited for a second, and came with aiokafka's advice
        about ``max_poll_interval_ms`` (a trial)."""
        if self._rebalance_said:
            return
        self._rebalance_said = True
        log.info(
            "store %s: the consumer group %s rebalanced (an instance joined, left or "
            "stopped answering) before the offsets of %s were committed; their owners "
            "read those messages again, which changes nothing in the store",
            self.store.name, self.config.group_id,
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(offsets)),
        )  # fmt: skip

    async def _settle(self) -> None:
        """Wait for the batch in flight (if any) to be published and committed; its
        failure is raised here."""
        task, self._finishing = self._finishing, None
        if task is not None:
            await task

    async def _abandon(self) -> None:
        """Leaving the loop on an error or a cancellation: stop the batch in flight. Its
        receipts are in the outbox and its offsets are read again: nothing is lost."""
        task, self._finishing = self._finishing, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.debug("the batch in flight failed as the sink stopped: %s", task.exception())

    async def _read_holds(self, *, to_end: bool = False) -> None:
        """Apply what ``expiry.holds`` says: all of it (at start), or what came since the
        last look, to its end now (before each sweep: a hold acknowledged before the sweep
        spares its rows). A malformed hold is skipped here, with a warning (the service
        sends it to the dead-letter topic with its reason): the hold its id had stays.

        Before a sweep this took what the consumer had fetched already, without waiting:
        the holds came a sweep late, and a trial's sweeps deleted 37 of 40 held rows (and
        8 of 10 with the service running, its tombstones held)."""
        reader, topic = self._holds_reader, self.config.holds_topic
        if reader is None or topic is None:
            return
        if to_end:
            batches = [b async for b in read_to_end(reader, topic, then_follow=True)]
        else:
            batches = []

            async def collect(batch: Mapping[Any, list[Any]]) -> None:
                batches.append(dict(batch))

            with broker_errors(f"reading {topic}"):
                await self._read_to_now(reader, collect)
        placed: dict[str, Hold] = {}
        # The holds said to be spared before this read: a release of one is said too (the
        # log said "the sweep spares" and never that it stopped); a hold placed and
        # released within one read (a start reads the topic whole) was never said.
        said = {hold.hold_id: hold for hold in self.holds}
        now = self._clock()
        for batch in batches:
            for tp, records in batch.items():
                for rec in records:
                    before = self.holds.get(rec.key.decode(errors="replace") if rec.key else "")
                    hold = apply_hold_message(
                        self.holds, rec.key, rec.value, tp.partition, rec.offset
                    )
                    if before is not None and self.holds.get(before.hold_id) is not before:
                        self._let_go.place(before)
                        self._let_go_at[before.hold_id] = now
                    if isinstance(hold, Rejection):
                        _say_rejected_hold(rec, hold, self.holds)
                    elif hold is not None and rec.value is not None:
                        placed[hold.hold_id] = hold
        for hold in placed.values():  # said once read: not the holds released since
            if self.holds.get(hold.hold_id) is not None:
                log.info("legal hold %s: the sweep spares %s", hold.hold_id, hold.scope())
        for hold_id, hold in said.items():
            if self.holds.get(hold_id) is None:
                log.info(
                    "legal hold %s released: the sweep spares %s no more (unless another "
                    "hold matches it) once the service's tombstones have had %g s to come",
                    hold_id,
                    hold.scope(),
                    self.config.sweep_grace_s,
                )

    async def read_complete_ms(self, cons: AIOKafkaConsumer) -> int | None:
        """The read-complete time W: every message on the stamped and tombstone topics
        before W is applied to the store; None while no such time is known yet.

        The sweep judges a row by the ``expires_at`` the store holds, which is stale while
        later stamps (a touch's) and tombstones wait unread: judged by the clock, a sink
        restarted behind its topics swept sessions touched while it was down, before
        their real expiry, and gave rows whose tombstone waited unread a ``sweep``
        receipt. Judged by W, the service's tombstone of every row due before ``W -
        grace`` had the grace to reach the topic, and what reached it before W is applied.

        W is the wall clock just before a request for the partitions' end offsets
        (:func:`~stream_expiry.fetch.end_offsets`), once
        the store has applied every partition up to them: the sink's own partitions as
        far as its consumer returned them, less the batch read but not yet applied (this
        runs between batches, when no transaction is in flight); the partitions other
        instances of the store read, up to the group's committed offsets (committed after
        their transactions: never ahead of what they applied). A request the sink has
        not caught up with stays, and moves W on at a later sweep once it has, so a sink
        that keeps up with a busy topic sweeps without ever being idle.
        """
        cfg = self.config
        known = [cons.partitions_for_topic(t) for t in (cfg.stamped_topic, cfg.tombstones_topic)]
        partitions = frozenset(
            TopicPartition(topic, p)
            for topic, parts in zip((cfg.stamped_topic, cfg.tombstones_topic), known, strict=True)
            for p in parts or ()
        )
        if not all(known):  # a topic the metadata does not hold yet: W would leave it out
            partitions = frozenset()
        mine = frozenset(cons.assignment())
        if (partitions, mine) != self._probed_key:  # new partitions, or a rebalance
            self._probed_key = (partitions, mine)
            self._probe, self._read_to_ms = None, None
        behind: int | None = None
        if self._probe is not None:
            behind = _behind(self._probe.ends, await self._applied(cons, partitions))
            if behind == 0:
                self._read_to_ms, self._probe = self._probe.at_ms, None
        if self._probe is None and partitions:
            applied = await self._applied(cons, partitions)
            at = self._clock()
            self._probe = _Probe(at, await end_offsets(cons, applied))
            behind = _behind(self._probe.ends, applied)
            if behind == 0:
                self._read_to_ms, self._probe = at, None
        if self._read_to_ms is not None:
            self._wait_said_at = None
        elif (
            self._wait_said_at is None
            or time.monotonic() - self._wait_said_at >= SWEEP_WAIT_SAID_EVERY_S
        ):
            self._wait_said_at = time.monotonic()
            log.info(
                "%s waits until the sink has caught up with %s and %s (%s): it "
                "judges rows only by what the store has applied",
                "the sweep" if cfg.sweep_interval_s is not None
                else "forgetting deleted records' markers",
                cfg.stamped_topic, cfg.tombstones_topic,
                "no partitions known yet" if behind is None else f"{behind} messages behind",
            )  # fmt: skip
        return self._read_to_ms

    async def _applied(
        self, cons: AIOKafkaConsumer, partitions: frozenset[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """How far the store has applied each partition (see :meth:`read_complete_ms`)."""
        ready = self._ready.starts if self._ready is not None else {}
        applied: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            if tp in ready:  # returned by the consumer, not applied yet
                applied[tp] = ready[tp]
                continue
            try:
                applied[tp] = await cons.position(tp)
            except IllegalStateError:  # not this instance's (or no longer)
                with broker_errors(f"reading the committed offsets of {self.config.group_id}"):
                    applied[tp] = await cons.committed(tp)
        never = [tp for tp, at in applied.items() if at is None]
        if never:  # no instance has committed a batch of it: nothing read before its start
            with broker_errors(f"asking {self.config.bootstrap_servers} for offsets"):
                applied.update(await cons.beginning_offsets(never))
        return {tp: at or 0 for tp, at in applied.items()}

    async def sweep_once(self, prod: AIOKafkaProducer, *, read_to_ms: int) -> bool:
        """Run one bounded sweep and publish its receipts; True when more is left to look
        at now. Rows a legal hold keeps are passed over, never deleted.

        ``read_to_ms`` is the read-complete time W (:meth:`read_complete_ms`): rows that
        expired, and were written, ``sweep_grace_s`` or more before it are the sweep's, not
        rows that expired that long before now (the store may be behind its topics). A
        record already due when the service read it is stamped and tombstoned then, late,
        its tombstone perhaps behind a burst of others: judged by its expiry alone, its row
        was swept as soon as its stamp was applied (a trial).
        """
        cfg = self.config
        await self._read_holds()
        now = self._clock()
        cutoff = read_to_ms - int(cfg.sweep_grace_s * 1000)
        for hold_id, at in list(self._let_go_at.items()):
            # Read at ``at``, the release made the service tombstone what it kept; those
            # tombstones are in the store once W is a grace past it.
            if at <= cutoff:
                self._let_go.release(hold_id)
                del self._let_go_at[hold_id]
        # Read before the rows are: the group's offsets only move on, so what they show
        # archived stays archived.
        archived = await self._archived()
        by_cutoff = None
        if archived is not None:
            seen = self._archive_seen
            if not seen or seen[-1][1] != archived:  # the same offsets: the older reading says it
                seen.append((self._clock(), archived))  # read by then
            by_cutoff = archived_by(self._archive_seen, cutoff)
        page = await self.store.sweep(
            cutoff_ms=cutoff,
            now_ms=now,
            limit=cfg.sweep_limit,
            spare=self._spare() if len(self.holds) or len(self._let_go) or cfg.sliding else None,
            after=self._sweep_from,
            archived=archived,
            archived_by_cutoff=by_cutoff,
        )
        self._sweep_from = page.next_from
        out = page.plan
        if out.kept_for_archive:
            self._say_kept_for_archive(out.kept_for_archive)
        if out.swept:
            self.metrics["swept_total"] += out.swept
            log.warning(
                "store %s swept %d rows that expired before %s with no tombstone; "
                "is the stream-expiry service running and keeping up?",
                self.store.name, out.swept, format_ts(cutoff),
            )  # fmt: skip
        if out.unsettled:
            self.metrics["unsettled_total"] += out.unsettled
            log.warning(
                "store %s wrote the receipts of %d rows their nulls deleted before %s, "
                "whose tombstones never came: does --tombstones-topic (%s) name the "
                "service's, and was the sink down longer than that topic keeps them?",
                self.store.name, out.unsettled, format_ts(cutoff), cfg.tombstones_topic,
            )  # fmt: skip
        if out.swept or out.unsettled:
            # Counted and reported once the store did it, as a batch is (see _count).
            self.metrics["receipts_total"] += len(out.receipts)
            self._report("sweep", out, 0, 0)
            await self._publish(prod, out.receipts, living=out.living)
        return page.more

    async def prune_once(
        self, *, read_to_ms: int, read_over: Collection[TopicPartition] = ()
    ) -> bool:
        """Look at the next page of deletion markers and forget those past their grace;
        True when the sink should look at the next page at once.

        ``read_to_ms`` is the read-complete time W (:meth:`read_complete_ms`), as for the
        sweep: a marker goes once it settled ``marker_grace_s`` before W, so a sink that
        was stopped, or lags on one of its topics, first applies every stamp the service
        wrote before the deletion (rule 7 of :mod:`~stream_expiry.sinks._logic`).
        ``read_over``: the partitions W covers, for which the store keeps the pruning's
        bound (a message of one of them dated before it was read before; of a partition
        W did not cover, such as a topic the sink reads for the first time, nothing is
        known).

        The pages roll along the primary key (:meth:`Store.prune`), so a marker is
        forgotten at most a round of the table after its grace. One page per
        ``prune_interval_s`` is cheap but slow for a large table; so the next page comes
        at once while a tenth or more of a page went (:data:`_PRUNE_AGAIN_SHARE`): a
        backlog (an old store's first run, a sink that was stopped) goes at the
        database's pace, and under a steady flow of deletions the rounds shorten until
        about a tenth of the grace, at no more than ten markers read per marker
        forgotten.
        """
        cfg = self.config
        before = read_to_ms - int(cfg.marker_grace_s * 1000)
        page = await self.store.prune(
            settled_before_ms=before, limit=cfg.prune_limit, after=self._prune_from,
            sources=[(tp.topic, tp.partition) for tp in read_over],
        )  # fmt: skip
        self._prune_from = page.next_from
        if page.forgotten:
            self.metrics["markers_pruned_total"] += page.forgotten
            log.debug(
                "store %s forgot %d deletion markers settled before %d ms",
                self.store.name, page.forgotten, before,
            )  # fmt: skip
        return page.forgotten >= cfg.prune_limit * _PRUNE_AGAIN_SHARE

    async def _archived(self) -> dict[int, int] | None:
        """The archive group's committed offset per partition of the stamped topic (a
        partition it never committed is absent: nothing of it is archived); None when no
        archive is required."""
        reader, cfg = self._archive_reader, self.config
        if reader is None:
            return None
        topic = cfg.stamped_topic
        with broker_errors(f"reading the committed offsets of the archive ({cfg.archive_group})"):
            committed = await committed_offsets(reader, await topic_partitions(reader, [topic]))
        return {tp.partition: o for tp, o in committed.items() if o is not None}

    def _say_kept_for_archive(self, kept: int) -> None:
        """A warning, at most once a minute, while the sweep keeps rows for the archive:
        they are purged late, as the service's are, until it runs again."""
        now = time.monotonic()
        if self._archive_said_at is not None and now - self._archive_said_at < (
            SWEEP_WAIT_SAID_EVERY_S
        ):
            return
        self._archive_said_at = now
        log.warning(
            "store %s: the sweep keeps %d rows past their expiry that the archive (group %r) "
            "has not written yet ([archive] required); is `stream-expiry archive` running?",
            self.store.name, kept, self.config.archive_group,
        )  # fmt: skip

    def _spare(self) -> Callable[[Identity], bool]:
        """What the sweep keeps: rows of a sliding category, rows a hold keeps, and rows a
        hold let go of within the grace."""
        held, let_go, sliding = self.holds.is_held, self._let_go.is_held, self.config.sliding
        return lambda identity: identity.category in sliding or held(identity) or let_go(identity)

    def _report(
        self, kind: Literal["batch", "sweep"], out: Plan, messages: int, invalid: int
    ) -> None:
        if self._on_batch is not None:
            self._on_batch(
                BatchReport(
                    kind, messages, out.written, out.stale, out.deleted, out.swept, invalid,
                    tuple(out.receipts),
                )
            )  # fmt: skip

    async def _flush_outbox(self, prod: AIOKafkaProducer) -> None:
        """Publish receipts a crash left unpublished, before anything new. With nowhere
        to publish them, take them out of the outbox instead: they are kept in the store
        only, as the sink's own are (see :meth:`_publish`), and would otherwise be
        published by the next run that has a topic, however long after."""
        if not self.publishes:
            kept = 0
            while pending := await self.store.pending_receipts(1000):
                ids = [r.receipt_id for r in pending]
                await self.store.mark_published(ids, now_ms=self._clock())
                kept += len(ids)
            if kept:
                log.info(
                    "%d receipts waiting in the outbox are kept in the store only (no "
                    "receipts topic)",
                    kept,
                )
            return
        published = 0
        while pending := await self.store.pending_receipts(1000):
            living = await self._living(pending)
            await self._publish(prod, pending, mark_now=True, living=living)
            published += len(pending)
        if published:
            # One line, not one a page; and "left over from a previous run" was not always
            # so: another instance of the store may have written them a moment ago, not
            # published yet (a trial). Receipts are at-least-once: duplicates are counted
            # once by receipt_id.
            log.info(
                "published %d receipts the store's outbox held: left by an earlier run, or "
                "written by another instance of this store and not yet published by it "
                "(then twice: count receipts by receipt_id)",
                published,
            )

    async def _living(self, receipts: list[Receipt]) -> list[Identity]:
        """Of the receipts' records whose category has a compacted topic, those the store
        holds a row of: a later life than the deleted one (``Plan.living``, rule 6 of
        :mod:`~stream_expiry.sinks._logic`), asked of the store for receipts whose plan is
        gone (left in the outbox by a crash)."""
        compacted = self.config.compacted
        asked = dict.fromkeys(r.identity for r in receipts if r.identity.category in compacted)
        return [i for i in asked if await self.store.get(i) is not None]

    @property
    def publishes(self) -> bool:
        """Whether receipts leave the store: a receipts topic, or a compacted topic for
        their nulls. Without either, receipts are kept in the store only (none waits in
        its outbox), and the progress line says so."""
        return bool(self.config.receipts_topic or self.config.compacted)

    async def _publish(
        self,
        prod: AIOKafkaProducer,
        receipts: list[Receipt],
        *,
        mark_now: bool = False,
        living: Collection[Identity] = (),
    ) -> None:
        """Send receipts and compacted-topic nulls and wait for every ack.

        The acknowledged receipts are marked published in the next store transaction, or
        at once with ``mark_now`` (the outbox replay at start, which loops on the outbox).
        A record in ``living`` lives on in a later life (``Plan.living``): its receipt is
        published, but no null goes to a compacted topic, where it would erase that life.
        """
        if not receipts:
            return
        if not self.publishes:
            # Kept in the store only (no receipts topic, no compacted topic): nothing is
            # left to publish, so they leave the outbox at once. Left there, they piled up
            # (every receipt of a trial), and a later run with a topic published them all
            # as left over from a previous run.
            self._acked.extend(r.receipt_id for r in receipts)
            return
        cfg = self.config
        out = BatchPublisher(prod)
        nulls = 0
        lives_on = set(living)
        with broker_errors(f"publishing receipts to {cfg.bootstrap_servers}"):
            counts = {t: await self._partitions(prod, t) for t in self._topics(receipts)}
            # Looked up once, not once a receipt.
            receipts_topic, compacted, add = cfg.receipts_topic, cfg.compacted, out.add
            receipt_partitions = counts[receipts_topic] if receipts_topic else 0
            for r in receipts:
                key = r.identity.key.encode("utf-8")
                if receipts_topic:
                    partition = key_partition(key, receipt_partitions)
                    add(receipts_topic, partition, key, encode_receipt(r), receipt_headers(r))
                topic = compacted.get(r.identity.category) if compacted else None
                if topic is not None and r.identity not in lives_on:
                    template = cfg.key_templates.get(topic)
                    user_key = key if template is None else template.render(r.identity)
                    out.add(topic, partition_for(user_key, counts[topic]), user_key, None)
                    nulls += 1
            await out.flush()
        ids = [r.receipt_id for r in receipts]
        if mark_now:
            await self.store.mark_published(ids, now_ms=self._clock())
        else:
            self._acked.extend(ids)
        self.metrics["published_total"] += len(receipts)
        self.metrics["compacted_nulls_total"] += nulls

    def _topics(self, receipts: list[Receipt]) -> set[str]:
        cfg = self.config
        topics = {
            cfg.compacted[c] for c in {r.identity.category for r in receipts} & cfg.compacted.keys()
        }
        if cfg.receipts_topic:
            topics.add(cfg.receipts_topic)
        return topics

    @staticmethod
    async def _partitions(prod: AIOKafkaProducer, topic: str) -> int:
        """The topic's partition count now (from the producer's cached metadata), as a Java
        producer would see it when it wrote a record today."""
        partitions = await prod.partitions_for(topic)
        if not partitions:
            raise BrokerError(f"topic {topic} has no partitions in the broker's metadata")
        return len(partitions)


async def run_sink(
    store: Store,
    *,
    bootstrap_servers: str,
    group_id: str,
    stop: anyio.Event,
    stamped_topic: str = DEFAULT_STAMPED,
    tombstones_topic: str = DEFAULT_TOMBSTONES,
    receipts_topic: str | None = DEFAULT_RECEIPTS,
    compacted: Mapping[str, str] | None = None,
    key_templates: Mapping[str, KeyTemplate] | None = None,
    sweep_interval_s: float | None = None,
    sweep_grace_s: float = 60.0,
    batch_size: int = 5000,
    on_batch: Callable[[BatchReport], object] | None = None,
    clock: Callable[[], int] = wall_clock_ms,
) -> Sink:
    """Run ``store`` as a sink until ``stop`` is set; return the sink (for its metrics).

    The store is opened if needed and left open; the last batch is committed before return.
    """
    config = SinkConfig(
        bootstrap_servers=bootstrap_servers,
        group_id=group_id,
        stamped_topic=stamped_topic,
        tombstones_topic=tombstones_topic,
        receipts_topic=receipts_topic,
        compacted=dict(compacted or {}),
        key_templates=dict(key_templates or {}),
        sweep_interval_s=sweep_interval_s,
        sweep_grace_s=sweep_grace_s,
        batch_size=batch_size,
    )
    sink = Sink(store, config, clock=clock, on_batch=on_batch)
    await sink.run(stop)
    return sink


def _say_rejected_hold(rec: Any, why: Rejection, holds: HoldBook) -> None:
    """Warn of a hold message the sink skips, where it is, and of the hold its id named
    that stays (or that none is in force), and that the next start refuses until the id
    is placed again or released: said at debug level alone, a hold the stores did not keep
    (a producer's repeated ``org``, say) went unnoticed where the sink runs."""
    key = "null" if rec.key is None else quoted(rec.key.decode(errors="replace"), 80)
    after = rejected_fate(holds, rec.key, rec.value)
    log.warning(
        "legal hold rejected: %s (%s); key %s, %s[%d]@%d: skipped, it changes no hold; %s",
        why.code, why.detail, key, rec.topic, rec.partition, rec.offset, after,
    )  # fmt: skip

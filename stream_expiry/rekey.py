"""``stream-expiry rekey``: input topics copied, each event keyed by its record.

The service keeps a record's state with the input partition its events arrive on, and
writes its stamps beside it on ``expiry.stamped``, which Kafka compacts per partition. The
contract leaves input keys to the producers, and a producer that keys by something else
(an org, an event id, or no key at all, which its partitioner spreads over the partitions)
sends one record's events to several partitions: an erasure then reaches a processor that
never saw the record's create, and the life it should end runs on, its data kept on
``expiry.stamped`` by a stamp that no null on another partition removes. A touch extends
nothing, and a record's stamps stay on two partitions.

This command does what Kafka Streams does before an operation on a new key (its
``repartition`` topics): it reads the producers' topics in a consumer group of its own and
writes every valid event, bytes and headers unchanged, to a topic of its own keyed by the
record key, which the service then reads instead (``[topics] inputs``). An event the service
would reject goes to the dead-letter topic from here, with the contract's headers naming
where it was produced. Offsets are committed only once the broker acknowledged every
message of the batch, so a crash re-sends (the service's rules make a repeated event change
nothing) and never drops one.

Events of one record produced to different partitions meet in one partition of the target,
in an order no one chose; the contract's rules are built for that (the earliest creation
wins, a touch only extends, a delete at d ignores what happened at or before d).
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson
from aiokafka import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    RebalanceInProgressError,
)

from stream_expiry import exits, oversize
from stream_expiry.codec import (
    H_DETAIL,
    H_ERROR,
    H_PRODUCED_AT,
    H_REKEYED_FROM,
    REKEYED_SUFFIX,
    dead_letter_headers,
)
from stream_expiry.errors import BrokerError, ConfigurationError, suggestion
from stream_expiry.event_fields import FIELDS
from stream_expiry.kafka import (
    OutputBuffer,
    OwnedPartitions,
    batch_bytes,
    broker_errors,
    close_clients_by,
    consumer,
    counting_partitions,
    curable,
    ensure_topics,
    known_partition_counts,
    message_limits,
    producer,
    stable_end,
    standby_said,
    topic_ends,
    topic_names,
)
from stream_expiry.kafka_settings import as_connection, member_liveness, role_configs
from stream_expiry.model import Rejection, parse_event
from stream_expiry.outage import SessionOutage

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from stream_expiry.config import Config
    from stream_expiry.health import Health
    from stream_expiry.kafka_settings import Brokers
    from stream_expiry.metrics import RekeyMetrics
    from stream_expiry.stalls import Stalls

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_SUFFIX",
    "H_REKEYED_FROM",
    "Rekeyer",
    "Routed",
    "close_topics",
    "fit",
    "likely_meant",
    "route",
    "targets_for",
]

log = logging.getLogger("stream_expiry.rekey")

DEFAULT_SUFFIX: Final = REKEYED_SUFFIX
DEFAULT_GROUP: Final = "stream-expiry-rekey"
PROGRESS_EVERY_S: Final = 10.0
RETRY_S: Final = 1.0
_REDONE: Final = "what was not committed is copied again"  # by a session after an outage
_BATCH_RECORDS: Final = 5_000
# Within this of the limit a copy is measured exactly (aiokafka's estimate costs more than
# the rest of its way); its header and a record key are far smaller.
_NEAR: Final = 64 * 1024
Headers = list[tuple[str, bytes]]
_KEPT_WITHOUT_DATA: Final = FIELDS - {"data"}
_REBALANCED = (CommitFailedError, IllegalGenerationError, RebalanceInProgressError)


@dataclass(frozen=True, slots=True)
class Routed:
    """Where one input message goes: the target keyed by its record, or the dead letters."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    rejected: bool = False


def route(
    rec: Any,
    *,
    target: str,
    dlq: str,
    categories: frozenset[str] | tuple[str, ...],
    now_ms: int,
    max_skew_ms: int,
) -> Routed:
    """One consumer record's destination; never raises on bad input.

    The value is parsed as the service parses it, so the key is the record key the service
    computes (defaults and all: an event without ``env`` and one with ``"env": "live"`` are
    one record) and what the service would dead-letter is dead-lettered here, naming the
    producer's topic, partition and offset rather than the target's.
    """
    parsed = parse_event(rec.value, categories=categories, now_ms=now_ms, max_skew_ms=max_skew_ms)
    if type(parsed) is Rejection:
        return Routed(dlq, rec.key, rec.value, dead_letter_headers(rec, parsed), rejected=True)
    assert not isinstance(parsed, Rejection)
    origin = f"{rec.topic}[{rec.partition}]@{rec.offset}".encode()
    produced = rec.timestamp
    # The producer's time goes before the origin, which ``fit`` takes to be the last.
    kept = [(H_PRODUCED_AT, b"%d" % produced)] if type(produced) is int and produced >= 0 else []
    headers = [*(rec.headers or ()), *kept, (H_REKEYED_FROM, origin)]
    return Routed(target, parsed.identity.key.encode(), rec.value, headers)


def fit(routed: Routed, limit: int) -> tuple[bytes | None, bytes | None, Headers, bool]:
    """``(key, value, headers, changed)``: ``routed``'s message within ``limit`` bytes.

    A copy is the event plus its origin header under a record key that may be longer than
    the producer's own: an event at its topic's limit fits no longer, and a send refused
    would stop the partition for good. It then goes without the header, else without its
    ``data`` (and any field the contract does not have), which the service's stamp would
    drop anyway (``data_dropped``), with the origin header again where it then fits, else
    without the producer's headers too: its expiry is what must not be lost. A dead
    letter is cut as the service cuts one (:func:`oversize.fit_dead_letter`)."""
    key, value, headers = routed.key, routed.value, routed.headers
    if routed.rejected:
        return oversize.fit_dead_letter(key, value, headers, limit)
    if len(value or b"") + len(key or b"") + _header_bytes(headers) < limit - _NEAR:
        return key, value, headers, False
    if oversize.message_bytes(key, value, headers) <= limit:
        return key, value, headers, False
    headers = headers[:-1]  # the origin header, added last
    if oversize.message_bytes(key, value, headers) <= limit:
        return key, value, headers, True
    body = orjson.loads(value or b"{}")
    value = orjson.dumps({k: v for k, v in body.items() if k in _KEPT_WITHOUT_DATA})
    # Without its data, the origin header comes back where it fits (it names where an
    # erasure was produced); the producer's own headers are what is left that can be large
    # (the fields are bounded: ids of 512 characters): they go before the origin does.
    for kept in (routed.headers, headers, routed.headers[-1:]):
        if oversize.message_bytes(key, value, kept) <= limit:
            return key, value, kept, True
    return key, value, [], True


def close_topics(source: str, topics: Collection[str]) -> list[str]:
    """Those of ``topics`` whose names are close to ``source`` (closest first, at most
    three), ``source`` itself aside: the topics a mistyped ``--from`` may have meant."""
    return difflib.get_close_matches(source, [t for t in topics if t != source], n=3)


def likely_meant(source: str, close: Sequence[str], ends: Mapping[str, int]) -> str | None:
    """The topic ``source`` was likely meant to be, if it is a mistyped name a broker made:
    nothing ever written to it (its ``ends`` 0) while one of ``close`` (closest first) has
    data; else None. An empty topic with no such neighbour is left alone: producers that
    have not written yet, or a topic made for them in advance."""
    if ends.get(source, 0) > 0:
        return None
    return next((topic for topic in close if ends.get(topic, 0) > 0), None)


def _header_bytes(headers: Headers) -> int:
    return sum(len(name) + len(value) for name, value in headers)


def targets_for(sources: Sequence[str], suffix: str = DEFAULT_SUFFIX) -> dict[str, str]:
    """Source topic -> the topic its events go to, keyed by record: ``SOURCE`` + ``suffix``.

    Refuses what would loop (a target that is also a source) or lose nothing but mean
    nothing (no source, an empty suffix)."""
    if not sources:
        raise ConfigurationError("rekey needs at least one --from TOPIC")
    if not suffix:
        raise ConfigurationError("--suffix must not be empty: the target would be the source")
    copies = sorted(s for s in dict.fromkeys(sources) if s.endswith(suffix))
    if copies:
        raise ConfigurationError(
            f"{', '.join(copies)} look like re-keyed copies (they end in {suffix!r}): give "
            "the producers' topics to --from"
        )
    mapping = {source: source + suffix for source in dict.fromkeys(sources)}
    looping = sorted(set(mapping.values()) & set(mapping))
    if looping:
        raise ConfigurationError(
            f"{', '.join(looping)} would be read and written by rekey alike; give the "
            "producers' topics to --from, not their re-keyed copies"
        )
    return mapping


@dataclass
class RekeyStats:
    """What a run did, for its progress lines and for tests."""

    forwarded: int = 0
    rejected: int = 0
    batches: int = 0
    committed: int = 0  # events of the batches whose offsets the group took
    commits_lost: int = 0
    data_dropped: int = 0
    outages: int = 0  # sessions the broker ended, waited out


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """The partitions the group gives (said) and takes away: their lag gauges go (another
    member reports them now; kept, a partition this member lost showed its last lag for
    good). Those given get theirs from the next fetch on (:meth:`Rekeyer._observe_lag`),
    which sets the gauges of :attr:`Rekeyer.owned` alone: from the revocation to the next
    assignment the consumer still lists the partitions taken away."""

    def __init__(self, rekeyer: Rekeyer) -> None:
        self._rekeyer = rekeyer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._rekeyer.owned.revoked(revoked, self._rekeyer.metrics)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        rekeyer = self._rekeyer
        rekeyer.owned.assigned(assigned)
        rekeyer._assigned = True  # even nothing: the join is over (see Rekeyer._session)
        # Which partitions this member copies: two processes in one group could not tell.
        if assigned:
            log.info(
                "rekey assigned %s",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned)),
            )
            return
        counts = known_partition_counts(rekeyer._consumer, sorted(rekeyer.targets))
        log.info("rekey %s", standby_said("this rekey", rekeyer.group_id, counts, doing="copying"))


class Rekeyer:
    """The command's loop: read a batch, send each event where :func:`route` says, wait for
    every ack, commit the batch's offsets; until ``stop`` is set."""

    def __init__(
        self,
        config: Config,
        connection: Brokers,
        targets: Mapping[str, str],
        *,
        group_id: str = DEFAULT_GROUP,
        clock: Callable[[], int] | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.connection = as_connection(connection)
        self.targets = dict(targets)
        self.group_id = group_id
        self.stats = RekeyStats()
        self.ready = anyio.Event()
        # Set once a fetch returned: the group join (held until every member joined, up to
        # the rebalance timeout) is over, and a signal before it stops the command at once.
        self.reading = anyio.Event()
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._consumer_options = dict(consumer_options or {})
        self._producer_options = dict(producer_options or {})
        self._categories = frozenset(config.categories)
        self._rejections_said: set[str] = set()
        # Set by the command when it serves /metrics and the health endpoints.
        self.health: Health | None = None
        self.metrics: RekeyMetrics | None = None
        # Set by the command: the watch of the process' own pauses (a stall is no outage).
        self.stalls: Stalls | None = None
        # The outage the sessions are in, if any (run's; said to end at a fetch's answer).
        self._outage = SessionOutage(None, _REDONE, retry_s=RETRY_S, logger=log)
        self._limit = 0  # the largest message to publish; known once the producer is
        # The partitions of the group's current assignment, between its listener's calls
        # (none while the group rebalances): those with a lag gauge.
        self.owned = OwnedPartitions()
        # The session's group consumer: its partition counts are said at each join.
        self._consumer: AIOKafkaConsumer | None = None
        # Whether the session's group has given it an assignment (none: still joining).
        self._assigned = False

    def _refuse_service_topics(self) -> None:
        """A ``--from`` that is one of the service's own topics (``expiry.dlq``: rekey's
        dead letters would be read back and written again, for ever)."""
        named = sorted(set(self.config.topics.owned().values()) & set(self.targets))
        if named:
            raise ConfigurationError(
                f"--from {', '.join(named)}: the service's own topic, not the producers'"
            )

    async def run(self, stop: anyio.Event) -> None:
        """Until ``stop``. A broker that cannot be reached at the start is an error (the
        command's one line, status 3); one lost afterwards is waited out: the clients are
        made again every :data:`RETRY_S` seconds and what was not committed is copied
        again, as the service rides out an outage (:mod:`stream_expiry.outage`)."""
        self._refuse_service_topics()
        limits = await self._ensure_targets()
        self._say_plan()
        await self._say_missing_sources()
        outage = self._outage
        while True:
            try:
                with broker_errors("copying to the re-keyed topics"):
                    await self._session(stop, limits)
                return
            except BrokerError as exc:
                if not self.ready.is_set():
                    raise
                if self.health is not None and curable(exc) and not stop.is_set():
                    self.health.reconnecting()
                outage.stalls = self.stalls  # the command's watch, perhaps given since
                again = await outage.wait_out(exc, stop)
                self.stats.outages = outage.outages
                if again:
                    continue
                if outage.stopped_in(exc, stop):
                    return
                raise

    async def _session(self, stop: anyio.Event, limits: Mapping[str, int]) -> None:
        # No linger: a batch is sent whole and its acks awaited before the commit.
        options = {
            "linger_ms": 0,
            "max_batch_size": batch_bytes(limits.values()),
            **self._producer_options,
        }
        async with (
            producer(self.connection, **options) as prod,
            consumer(
                self.connection,
                group_id=self.group_id,
                client_id="stream-expiry-rekey",
                **self._group_options(),
            ) as cons,
        ):
            # A committed offset past a partition's end is no concern here: the group's
            # offsets go with a deleted topic (Kafka and the test broker alike), and the
            # consumer starts a topic made again from its beginning.
            self.owned.clear()  # a session after an outage: its group gives them anew
            self._consumer, self._assigned = cons, False
            cons.subscribe(list(self.targets), listener=_Assignment(self))
            self._limit = oversize.output_limit(prod, min(limits.values(), default=None))
            self.ready.set()
            health = self.health
            if health is not None:
                health.joining()  # ready once the group answers (partitions, or none)
            said_at = time.monotonic()
            while not stop.is_set():
                batch = await cons.getmany(timeout_ms=200, max_records=_BATCH_RECORDS)
                self.reading.set()
                self._outage.answered()
                if batch:
                    await self._forward(prod, cons, batch)
                await self._observe_lag(cons)
                if health is not None:
                    health.beat()
                    # Ready once the group answered the join, with nothing too: a member
                    # given nothing (more members than partitions) is a standby; it said
                    # "rebalancing" for good (/readyz 503), and an orchestrator held back
                    # or restarted a healthy instance.
                    if self._assigned:
                        health.running()
                    else:  # its first assignment not here yet ("rebalancing" said so, as if revoked)
                        health.joining()
                if time.monotonic() - said_at >= PROGRESS_EVERY_S:
                    said_at = time.monotonic()
                    self._say_progress()
        self._say_progress()

    def _group_options(self) -> dict[str, Any]:
        """The service's session (``[service] session_timeout``): a rekey killed, even
        while it joins, holds its partitions, and the join of the one restarted in its
        place, until the session runs out; aiokafka's assignor (roundrobin), each join saying
        the sources' partition counts (:func:`~stream_expiry.kafka.counting_partitions`:
        partitions added to a source were never assigned on the test broker); the caller's
        options win."""
        return {
            **member_liveness(self.config.session_timeout_ms),
            "partition_assignment_strategy": (
                counting_partitions(RoundRobinPartitionAssignor, lambda: self._consumer),
            ),
            **self._consumer_options,
        }

    def _say_plan(self) -> None:
        """Each source and its target, and what the config's ``[topics] inputs`` still
        needs: the service must read the targets, not the producers' topics, and keep those
        in ``[topics] retired`` (taken out of the inputs alone, the records stamped from
        them are tombstoned by no instance)."""
        inputs = set(self.config.topics.inputs)
        for source, target in self.targets.items():
            log.info("rekeying %s -> %s (group %s)", source, target, self.group_id)
            if source in inputs:
                # Replaced alone, the records stamped from it were left to no instance.
                log.warning(
                    "%s is one of the service's [topics] inputs, so the service reads it as "
                    "its producers key it: list %s there instead, and move %s to [topics] "
                    "retired, so that the records already stamped from it are still "
                    "tombstoned (README: Changing the input topics)",
                    source,
                    target,
                    source,
                )
            elif target not in inputs and self.config.path is not None:
                log.warning(
                    "%s is not among [topics] inputs of %s: the service does not read it "
                    "until it is",
                    target,
                    self.config.path,
                )

    async def _say_missing_sources(self) -> None:
        """A ``--from`` topic that does not exist: a typo, or producers that have not
        written yet. The group would wait on it without a word, or (a broker that makes
        the topics a consumer asks for) read an empty topic of that name, so it is said.
        Such a broker has made the topic by the next start: then a ``--from`` that nothing
        was ever written to is said with the topic of a close name that has data
        (:func:`likely_meant`), on every start."""
        have = await topic_names(self.connection)
        # The topic meant, among those a producer may write (not a copy, nor our own).
        others = sorted(t for t in have if t not in self._own_topics())
        for source in (s for s in self.targets if s not in have):
            log.warning(
                "%s does not exist: rekey copies it once producers write there (check "
                "the name if they write elsewhere%s)",
                source,
                suggestion(source, others),
            )
        close = {s: close_topics(s, others) for s in self.targets if s in have}
        close = {source: near for source, near in close.items() if near}
        if not close:
            return
        ends = await topic_ends(self.connection, {*close, *(t for n in close.values() for t in n)})
        for source, near in close.items():
            meant = likely_meant(source, near, ends)
            if meant is not None:
                log.warning(
                    "%s exists but nothing was ever written to it, while %r, a topic of a "
                    "close name, has data: check the --from name (a broker that makes the "
                    "topics clients ask for, as Kafka's auto.create.topics.enable does, may "
                    "have made it when a mistyped --from first asked for it; delete it once "
                    "the name is right%s)",
                    source,
                    meant,
                    f"; did you mean {meant!r}?",
                )

    def _own_topics(self) -> set[str]:
        """The copies rekey writes, and the service's topics other than its inputs."""
        return set(self.targets.values()) | set(self.config.topics.owned().values())

    async def _ensure_targets(self) -> dict[str, int]:
        """The targets as the service makes an input topic (its partitions, its retention,
        its message size), and the dead-letter topic; topics that exist are left as they
        are. Returns each one's ``max.message.bytes`` as the broker says it."""
        settings = self.config.topic_settings
        dlq = self.config.topics.dlq
        configs = {target: role_configs("data", settings) for target in self.targets.values()}
        await ensure_topics(
            self.connection,
            [*configs, dlq],
            configs=configs | {dlq: role_configs("data", settings)},
            partitions=settings.partitions,
            replication=settings.replication_factor,
        )
        return await message_limits(self.connection, [*configs, dlq])

    async def _forward(
        self, prod: Any, cons: Any, batch: Mapping[TopicPartition, list[Any]]
    ) -> None:
        now = self._clock()
        dlq = self.config.topics.dlq
        skew = self.config.max_clock_skew_ms
        out = OutputBuffer(prod)
        offsets: dict[TopicPartition, int] = {}
        stats = self.stats
        for tp, records in batch.items():
            target = self.targets[tp.topic]
            for rec in records:
                routed = route(
                    rec,
                    target=target,
                    dlq=dlq,
                    categories=self._categories,
                    now_ms=now,
                    max_skew_ms=skew,
                )
                if routed.rejected:
                    stats.rejected += 1
                    self._say_rejected(rec, routed.headers)
                else:
                    stats.forwarded += 1
                key, value, headers = self._fit(rec, routed)
                await out.add(routed.topic, key, value, headers=headers)
            offsets[tp] = records[-1].offset + 1
        for sent in await out.flush():
            await sent
        stats.batches += 1
        for tp in await self._commit(cons, offsets):
            stats.committed += len(batch[tp])

    async def _observe_lag(self, cons: Any) -> None:
        """The lag gauge of every partition the group gives this member, after each fetch:
        its end as the fetch answered it minus the consumer's position (the committed
        offset until a batch is read from it). Set only after a batch copied from a
        partition, one never written to (or waiting behind others' batches) had no gauge,
        and a dashboard could not tell it from one nobody owns. Its first value comes with
        the first fetch answer after the assignment: a partition's end is known no sooner
        without ListOffsets, which some brokers answer wrongly (docs: the test broker's
        ``end_offsets``). A revoked partition's gauge goes in :class:`_Assignment`, and
        none is set here for a partition no longer assigned (its lag is its new owner's;
        aiokafka asserts a partition is assigned before it tells its end). Assigned means
        :attr:`owned`: ``cons.assignment()`` still lists the partitions revoked until the
        group gives the new assignment, and the loop runs meanwhile (a second or more),
        which set again the gauges the revocation had dropped, for good."""
        metrics = self.metrics
        if metrics is None:
            return
        for tp in self.owned:
            if tp not in self.owned or tp not in cons.assignment():  # taken meanwhile
                continue
            high = stable_end(cons, tp)
            if high is None:  # not fetched since it was assigned
                continue
            try:
                position = await cons.position(tp)
            except IllegalStateError:  # revoked while its position was awaited
                continue
            if tp in self.owned:  # not revoked while its position was awaited
                metrics.set_lag(tp.topic, tp.partition, high - position)

    def _fit(self, rec: Any, routed: Routed) -> tuple[bytes | None, bytes | None, Headers]:
        """``routed``'s message within the limit, with what had to go said."""
        key, value, headers, changed = fit(routed, self._limit)
        if changed and routed.rejected:
            oversize.say_cut(rec, self._limit, key, value)
        elif changed and value is not routed.value:
            self.stats.data_dropped += 1
            log.warning(
                "%s[%d]@%d is over the limit of %d bytes once keyed by record: copied "
                "without its data (the service's stamp would drop it too), its expiry kept",
                rec.topic,
                rec.partition,
                rec.offset,
                self._limit,
            )
        return key, value, headers

    async def _commit(
        self, cons: Any, offsets: dict[TopicPartition, int]
    ) -> Collection[TopicPartition]:
        """The batch's offsets, once all of it is acknowledged; returns the partitions
        committed. A rebalance in between makes the group refuse them: the partition's
        new owner sends those events again, which the service's rules make harmless. One
        that completed in between gave some of the batch's partitions to another member:
        theirs are left to it (aiokafka refuses a commit naming a partition not assigned,
        with an error that is no commit failure: rekey ended on it), the rest committed."""
        assigned = cons.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        try:
            if mine:
                await cons.commit(mine)
        except _REBALANCED as exc:
            why, mine = type(exc).__name__, {}
        else:
            if len(mine) == len(offsets):
                return mine.keys()
            why = f"{len(offsets) - len(mine)} of its partitions given to another member"
        self.stats.commits_lost += 1
        log.warning(
            "the group rebalanced before this batch's offsets were committed (%s): those "
            "events are sent again by the partitions' next owner, which changes nothing "
            "downstream",
            why,
        )
        return mine.keys()

    def _say_rejected(self, rec: Any, headers: list[tuple[str, bytes]]) -> None:
        """The first dead letter of each code, with its reason; the rest are counted in the
        progress line (a producer that sends one bad event usually sends many)."""
        said = dict(headers)
        code = said[H_ERROR].decode()
        if code in self._rejections_said:
            return
        self._rejections_said.add(code)
        log.warning(
            "dead-lettered %s[%d]@%d to %s (%s: %s); further %s events are counted, not said",
            rec.topic,
            rec.partition,
            rec.offset,
            self.config.topics.dlq,
            code,
            said[H_DETAIL].decode(),
            code,
        )

    def _say_progress(self) -> None:
        stats = self.stats
        log.info(
            "rekey: %d events forwarded, %d dead-lettered, %d batches",
            stats.forwarded,
            stats.rejected,
            stats.batches,
        )


async def serve_rekey(
    rekeyer: Rekeyer,
    metrics_port: int | None,
    metrics_host: str,
    *,
    stalls: Stalls | None = None,
) -> int:
    """The command: ``rekeyer`` until SIGINT or SIGTERM, with ``/metrics``, ``/healthz`` and
    ``/readyz`` on ``metrics_port`` when given (ready once the group gave it partitions and
    while the broker answers, as for ``run`` and ``sink``).

    Status 0 for a clean stop, and for one before its first fetch returned (joining the
    group: nothing read, nothing to commit, so it stops at once); 130 for a stop forced by
    a second signal or the grace running out, as the README's table says.

    ``stalls``: the watch of the process' pauses (a new one by default; a test's clocks),
    said in one WARNING, and asked by the broker probe before it says "Kafka unreachable"."""
    from stream_expiry.endpoints import open_listener, serve_http, watch_process
    from stream_expiry.health import Health
    from stream_expiry.logs import filtered
    from stream_expiry.metrics import RekeyMetrics
    from stream_expiry.runner import STALL_AFTER_S
    from stream_expiry.stalls import StallNote, Stalls
    from stream_expiry.stopping import stop_on_signals

    stop = anyio.Event()
    finished = False
    stalls = rekeyer.stalls = stalls or Stalls()
    listener = None if metrics_port is None else await open_listener(metrics_port, metrics_host)
    with filtered(StallNote(stalls)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(stop_on_signals, stop, tg.cancel_scope, rekeyer.reading, log=log))
            if listener is not None:
                health = rekeyer.health = Health(stall_after_s=STALL_AFTER_S, stalls=stalls)
                metrics = rekeyer.metrics = RekeyMetrics()
                metrics.watch_stats(rekeyer.stats)
                metrics.watch_health(health)
                metrics.watch_stalls(stalls)
                health.starting()
                tg.start_soon(serve_http, listener, metrics.exposition, health)
            watch_process(tg, stalls, health=rekeyer.health, conn=rekeyer.connection)
            try:
                await rekeyer.run(stop)
                finished = True
            finally:
                close_clients_by(None)  # its clients are closed: the next run's own
                if rekeyer.health is not None:
                    rekeyer.health.stopped()
                tg.cancel_scope.cancel()
    if finished:
        return exits.OK
    if not rekeyer.reading.is_set():
        log.info("stopped while starting (joining the group): nothing copied, nothing to commit")
        return exits.OK
    log.warning(
        "forced stop: what was copied since the last committed offsets is copied again on "
        "restart (nothing is lost; the service's rules make a repeated event change nothing)"
    )
    return exits.INTERRUPTED

"""The control topics the service follows beside its inputs: policy updates
(``expiry.policies``) and legal holds (``expiry.holds``).

Both are compacted and small. At start each is read whole before any input event is taken,
so the first record decided already sees every policy and every hold. Afterwards, before
input records are decided, both are read to their end unless they were since those records
were sent (by their Kafka timestamps, give or take ``CLOCK_MARGIN_MS``): a policy update or
a hold whose send was acknowledged before an event was sent applies to that event. Polling
alone lost that race (a trial: 14 of 30 records created right after a policy update got
the old TTL, and 6 of 15 erasures sent right after a hold deleted the held record). Input
read from a backlog (older than the last read to the end) costs no extra request; records
as they come cost one Fetch round trip per batch (on a connection of its own: see
:mod:`stream_expiry.fetch`). The firing reads the holds alone to their end ahead of what
falls due (:meth:`ControlTopics.holds_read_since`). A message that cannot be applied goes to
the dead-letter topic with its reason, like a bad input event, and the service goes on.
Since both topics are read whole at every start, the instance remembers (a file in its
state directory) which messages it dead-lettered: a restart says them again in the log, and
does not put them on the dead-letter topic again (a trial found each bad policy update there
once per restart of each instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from typing import TYPE_CHECKING, Any, Final

import orjson

from stream_expiry import model, oversize
from stream_expiry.codec import dead_letter_headers
from stream_expiry.errors import ConfigurationError, quoted, suggestion
from stream_expiry.fetch import read_to_now
from stream_expiry.holds import (
    apply_hold_message,
    in_doubt_refusal,
    misspelt_fields,
    named_hold_id,
    rejected_fate,
)
from stream_expiry.kafka import read_to_end, topic_ends, topic_names
from stream_expiry.logs import counted
from stream_expiry.outbox import all_acked
from stream_expiry.timeutil import format_ts

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from stream_expiry.config import Topics
    from stream_expiry.holds import Hold, HoldBook
    from stream_expiry.kafka_settings import Brokers
    from stream_expiry.policy import PolicyBook, PolicyUpdate
    from stream_expiry.stats import ServiceStats

__all__ = [
    "ControlTopics",
    "DeadLettered",
    "UnsaidDrops",
    "refuse_a_lost_holds_topic",
    "refuse_holds_in_doubt",
]

log = logging.getLogger("stream_expiry.service")

# Updates that took values away from their scope, read by a catch-up and not said yet
# (:meth:`ControlTopics._say_dropped`), by where and what each is (:func:`_dropped_name`), in
# the order read. Owned by whoever owns the policy book, since it outlives a session's
# ControlTopics: the service makes one of these per session.
UnsaidDrops = dict[tuple[object, ...], tuple[Any, "PolicyUpdate"]]

# How far the clocks of the producers and the service's may disagree: input records sent up
# to this long before the control topics were last read to their end still cause a read.
CLOCK_MARGIN_MS = 1_000
DEAD_LETTERED_FILE = "control-dead-letters.json"
_REMEMBERED = 1000  # the latest dead-lettered control messages kept in the file


class DeadLettered:
    """The control messages this instance has put on the dead-letter topic, each as
    ``topic/partition/offset/crc32`` (the checksum of key and value, so a topic made
    again, whose offsets start over, is not taken for the old one), in a file of the state
    directory; None keeps them in memory only."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._seen: dict[str, None] = {}  # insertion-ordered: the oldest go first
        if path is not None:
            with (
                contextlib.suppress(FileNotFoundError, ValueError, TypeError),
                open(path, "rb") as f,
            ):
                self._seen = dict.fromkeys(str(k) for k in orjson.loads(f.read()))

    @staticmethod
    def _name(rec: Any) -> str:
        crc = zlib.crc32(rec.value or b"", zlib.crc32(rec.key or b""))
        return f"{rec.topic}/{rec.partition}/{rec.offset}/{crc}"

    def __contains__(self, rec: Any) -> bool:
        return self._name(rec) in self._seen

    def add(self, rec: Any) -> None:
        self._seen[self._name(rec)] = None
        while len(self._seen) > _REMEMBERED:
            del self._seen[next(iter(self._seen))]
        if self._path is None:
            return
        tmp = f"{self._path}.tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(list(self._seen)))
        os.replace(tmp, self._path)


async def refuse_a_lost_holds_topic(
    brokers: Brokers,
    holds: str,
    stamped: str,
    *,
    audit: str | None = None,
    lost: str = "the service would delete every record a hold keeps",
    check: str = "[topics] holds (and STREAM_EXPIRY_TOPICS_HOLDS)",
) -> None:
    """Raise :class:`ConfigurationError` when the holds topic ``holds`` does not exist
    while the changelog ``stamped`` has messages: this deployment ran before, and every
    start of the service makes its holds topic, so the name is not the one it ran with
    (a typo in ``[topics] holds`` or ``STREAM_EXPIRY_TOPICS_HOLDS``), or the topic was
    deleted. Made empty and read, it said "no hold", and the stores let go of every
    record a hold kept: a trial's typo deleted them all within seconds of the start,
    without a word under ``[archive] required`` (``lost``: what it would do; ``check``:
    the settings that name the topic). Called before the topics are made; a first start,
    or a cluster rebuilt without its changelog, has nothing to lose and goes on.

    ``audit`` (the service's audit trail; the service and a sink with its sweep on give
    it): also when ``holds`` exists but has never had a message while ``audit`` has. Only
    holds write the audit trail (placed, released, a deletion deferred), so this
    deployment's holds are on another topic: a mistyped name that an earlier sink or a
    person made, which the start read as "every hold released" (a trial). Checked before
    the group is joined, every member refuses alike; a released hold leaves its null, so
    a topic whose holds all went still has had messages."""
    names = await topic_names(brokers)
    if holds not in names:
        written = (await topic_ends(brokers, [stamped]))[stamped] if stamped in names else 0
        if written:
            raise ConfigurationError(
                f"the legal holds topic {holds!r} does not exist, but the changelog "
                f"{stamped!r} has {written:,} message{'' if written == 1 else 's'}: this "
                f"deployment ran with another holds topic, and started on an empty one "
                f"{lost}. Check {check}; if the holds topic was lost, place the holds again "
                "with `stream-expiry hold place` (which makes the topic) before starting; if "
                "it was renamed on purpose and never held a hold, create it empty and "
                "compacted (cleanup.policy=compact) with your Kafka tooling"
            )
        return
    if audit is None or audit not in names:
        return
    ends = await topic_ends(brokers, [holds, audit])  # messages ever written: the ends
    entries = ends[audit]
    if entries and not ends[holds]:
        raise ConfigurationError(
            f"the legal holds topic {holds!r} has never had a message, but the audit trail "
            f"{audit!r} has {entries:,} entr{'y' if entries == 1 else 'ies'} (holds placed or "
            "released, deletions they deferred): this deployment placed its holds on "
            f"another topic, and started on this one {lost}. Check {check}; if the holds "
            "topic was lost, place the holds again with `stream-expiry hold place` before "
            "starting (if no hold is to stay in force, place one and release it: the "
            "topic then has its messages)"
        )


def refuse_holds_in_doubt(
    holds: HoldBook,
    topic: str,
    lost: str = "the service would delete the records each was meant to keep",
    *,
    started: str = "Started",
    then: str = "start",
) -> None:
    """Raise :class:`ConfigurationError` when, the holds topic ``topic`` read whole into
    ``holds``, a hold id's latest message on a partition cannot be read
    (:meth:`HoldBook.in_doubt`). Read as "no hold", the id's records were tombstoned: once
    compaction removed its placement before the message (or at once for a new id), a
    start had nothing but a dead-letter line to say so. Fail closed, as on a holds topic
    that is missing (:func:`refuse_a_lost_holds_topic`): a person places the hold meant or
    releases the id, and starts again. ``lost``: what the start would do otherwise;
    ``started`` and ``then``: the command refused, as done and as done again (``archive
    purge`` refuses as a start does: it erases archived lines a hold keeps)."""
    doubts = holds.in_doubt()
    if doubts:
        raise ConfigurationError(in_doubt_refusal(topic, doubts, lost, started=started, then=then))


def _shown_key(key: bytes) -> str:
    """A control message's key for a log line: quoted, and cut past 80 characters with
    its length (a producer's 3 MB key made each of the two lines 3 MB)."""
    text = key.decode(errors="replace")
    return repr(text) if len(text) <= 80 else f"{text[:77]!r}... ({len(key):,} bytes)"


class ControlTopics:
    """Keeps the policy book and the hold book in step with their topics."""

    def __init__(
        self,
        topics: Topics,
        book: PolicyBook,
        holds: HoldBook,
        stats: ServiceStats,
        *,
        policies: AIOKafkaConsumer,
        holds_reader: AIOKafkaConsumer,
        prod: AIOKafkaProducer,
        dead_lettered: DeadLettered | None = None,
        topic_limit: int | None = None,
        unsaid_drops: UnsaidDrops | None = None,
    ) -> None:
        self._dead_lettered = dead_lettered or DeadLettered(None)
        self._topic_limit = topic_limit  # the dead-letter topic's max.message.bytes
        self._topics = topics
        self._book = book
        self._holds = holds
        self._stats = stats
        self._policies = policies
        self._holds_reader = holds_reader
        self._prod = prod
        # Wall-clock ms just before the ends were asked for, the last time both topics
        # were read to them: everything sent before then has been applied.
        self._complete_at = -(2**63)
        # The same for the holds alone, which the firing also reads to their end before it
        # fires what fell due (holds_read_since); one read of the holds at a time.
        self._holds_complete_at = -(2**63)
        self._holds_lock = asyncio.Lock()
        self.reads_to_end = 0
        # While the start reads both topics whole, each policy applied and hold placed is
        # said at debug, and their counts at info once read: a platform with 100,000
        # policies and 10,000 holds logged 110,000 lines at every start. Warnings (a bad
        # message, an ignored value) are said whatever.
        self._each_at = logging.INFO
        # Releases that left their hold active, said once the read that brought them is
        # applied (read_all: the whole catch-up), not at the null: `hold release` nulls
        # every partition that places a hold, and the others' nulls may come later in the
        # same read (a review: the start warned of a hold released everywhere).
        self._released: dict[str, Any] = {}  # hold id -> its newest null read
        self._placed_at: dict[str, int] = {}  # hold id -> its newest placement's timestamp
        # Updates that took values away from their scope, read in the catch-up: said once
        # it is applied, and only for what the scope still lacks (_say_dropped). Kept in
        # the order read, by where and what each is (_dropped_name), also through a
        # catch-up that failed: the book keeps what it applied, and read again by the next
        # start, such an update takes nothing away from a book that has it already (it
        # was never said in that process). By content, not by offset alone: a policies
        # topic made again numbers its messages from 0 again. ``unsaid_drops``: the book
        # owner's, kept through the sessions (the service makes a ControlTopics each).
        self._dropped: UnsaidDrops = {} if unsaid_drops is None else unsaid_drops
        self._catching_up = False

    async def read_all(self) -> None:
        """Both topics from their beginning to their end (at the start of a session)."""
        started = time.time_ns() // 1_000_000
        applied = self._stats.policy_updates
        self._each_at = logging.DEBUG
        self._catching_up = True
        try:
            async for batch in read_to_end(self._policies, self._topics.policies, then_follow=True):
                await self._apply_policies(batch)
            async with self._holds_lock:
                async for batch in read_to_end(
                    self._holds_reader, self._topics.holds, then_follow=True
                ):
                    await self._apply_holds(batch)
        finally:
            self._each_at = logging.INFO
            self._catching_up = False
        self._say_released()
        self._say_dropped()
        self._complete_at = self._holds_complete_at = started
        if self._stats.policy_updates > applied:
            log.info(
                "%s applied from %s (each one at debug level)",
                counted(self._stats.policy_updates - applied, "policy update"),
                self._topics.policies,
            )
        if len(self._holds):
            log.info("%s active (each one at debug level)", counted(len(self._holds), "legal hold"))

    async def poll(self, sent_until_ms: int | None = None) -> None:
        """Whatever arrived since the last look, without waiting; and when input records
        sent until ``sent_until_ms`` (their newest Kafka timestamp) are to be decided,
        everything sent before them: both topics are read to their end first, unless they
        were since (:data:`CLOCK_MARGIN_MS` given to the clocks)."""
        if sent_until_ms is not None and sent_until_ms + CLOCK_MARGIN_MS >= self._complete_at:
            started = time.time_ns() // 1_000_000
            # Both at once, one round trip, not two; a failure is raised as it is (a task
            # group would wrap it), and the session that gets it stops.
            await asyncio.gather(
                read_to_now(self._policies, self._apply_policies),
                self._read_holds(started),
            )
            self._complete_at = started
            self.reads_to_end += 1
            return
        await self._apply_policies(await self._policies.getmany(timeout_ms=0))
        async with self._holds_lock:  # not beside a read to the end: it seeks
            await self._apply_holds(await self._holds_reader.getmany(timeout_ms=0))

    async def holds_read_since(self, at_ms: int) -> None:
        """The holds read to their end, unless they were since ``at_ms`` (the firing's,
        a tick before what falls due: a hold acknowledged by then keeps its records)."""
        if self._holds_complete_at < at_ms:
            await self._read_holds(time.time_ns() // 1_000_000)

    async def _read_holds(self, started: int) -> None:
        """The holds to their end, as of ``started`` (the wall clock before asking)."""
        async with self._holds_lock:
            if self._holds_complete_at >= started:
                return  # read meanwhile, from a later start
            await read_to_now(self._holds_reader, self._apply_holds)
            self._holds_complete_at = started

    async def _apply_policies(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        for records in batch.values():
            for rec in records:
                result = self._book.apply_update(rec.key, rec.value, rec.timestamp)
                if isinstance(result, model.Rejection):
                    await self._reject(rec, result, "policy update")
                else:
                    self._stats.policy_updates += 1
                    log.log(self._each_at, "policy update applied: %s", result.describe())
                    if not self._catching_up:
                        _warn_back_dated(rec, result.key, result.effective_from)
                    for note in result.notes:
                        log.warning(
                            "policy update %s at %s[%d]@%d: %s",
                            result.key, rec.topic, rec.partition, rec.offset, note,
                        )  # fmt: skip
                    if result.dropped and self._catching_up:
                        self._note_dropped(rec, result)  # said once all is read
                    elif result.dropped:
                        _warn_dropped(rec, result.key, result.dropped)
                    await self._report_ignored(rec, result)

    def _note_dropped(self, rec: Any, update: PolicyUpdate) -> None:
        """Keep ``update`` (read at ``rec``) for :meth:`_say_dropped`, as the latest read:
        read again by a start after a failed one, it moves to the end, and is kept once."""
        name = _dropped_name(rec, update)
        self._dropped.pop(name, None)
        self._dropped[name] = (rec, update)

    def _say_dropped(self) -> None:
        """Once a start's catch-up is applied, warn of the categories an update took away
        from its scope that the scope still has no value for, each by the last update that
        took it away (it may have been sent while no instance ran). The others, given back
        by a later version, are said at debug and counted at info: records created while
        the older version was in force still have no value from that scope, but nothing
        is to be sent now (a review: every start warned of an update a later one had
        mended)."""
        dropped = list(self._dropped.values())
        self._dropped.clear()  # the owner's: kept through the sessions
        last = {(u.key, c): i for i, (_, u) in enumerate(dropped) for c in u.dropped}
        mended = 0
        for i, (rec, update) in enumerate(dropped):
            still = self._book.still_dropped(update)
            missing = tuple(c for c in still if last[update.key, c] == i)
            if missing:
                _warn_dropped(rec, update.key, missing)
            given_back = [c for c in update.dropped if c not in still]
            if given_back:
                mended += 1
                log.debug(
                    "policy update %s at %s[%d]@%d took %s away from its scope from %s; a "
                    "later version of the scope gives a value again",
                    update.key, rec.topic, rec.partition, rec.offset, ", ".join(given_back),
                    format_ts(update.effective_from),
                )  # fmt: skip
        if mended:
            log.info(
                "%s took categories away from their scope that a later version gives a "
                "value again: records of those categories created in between have no value "
                "from that scope (each one at debug level; `stream-expiry explain --at TS` "
                "says what such a record gets)",
                counted(mended, "policy update"),
            )

    async def _report_ignored(self, rec: Any, update: PolicyUpdate) -> None:
        """An update applied without its values that are not durations: a warning for each
        (where the message is, its scope, the category), and one copy of the message on the
        dead-letter topic saying which fields were ignored, so a person or a consumer of the
        dead letters learns of it (the rest of the update applied: it is no rejection)."""
        why = update.ignored_rejection()
        if why is None:
            return
        s = update.scope
        where = ", ".join(
            f"{name}={value!r}" for name, value in (("org", s.org), ("bot", s.bot), ("env", s.env))
            if value is not None
        )  # fmt: skip
        for ignored in update.ignored:
            log.warning(
                "policy update %s (scope %s%s) at %s[%d]@%d: category %s ignored, the "
                "other values apply: %s",
                update.key, s.kind, f", {where}" if where else "", rec.topic, rec.partition,
                rec.offset, ignored.category, ignored.detail,
            )  # fmt: skip
        count = len(update.ignored)
        await self._dead_letter(
            rec, why, f"policy update {update.key} applied without {count} ignored value(s)"
        )

    async def _apply_holds(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        for tp, records in batch.items():
            for rec in records:
                hold = apply_hold_message(self._holds, rec.key, rec.value, tp.partition, rec.offset)
                if isinstance(hold, model.Rejection):
                    await self._reject(rec, hold, "legal hold")
                    self._say_kept(rec)
                    continue
                if rec.value is None:
                    self._note_release(rec)
                if hold is None:
                    continue
                if rec.value is None:
                    log.log(self._each_at, "legal hold %s released", hold.hold_id)
                else:
                    last = self._placed_at.get(hold.hold_id)
                    if last is None or rec.timestamp > last:
                        self._placed_at[hold.hold_id] = rec.timestamp
                    log.log(
                        self._each_at,
                        "legal hold %s placed on %s: %s",
                        hold.hold_id,
                        hold.scope(),
                        hold.reason,
                    )
                    for field, meant in misspelt_fields(rec.value):
                        log.warning(
                            "legal hold %s at %s[%d]@%d has a field %r, which a hold does "
                            "not have: ignored, so the hold covers %s; did you mean %r? (send it "
                            "again with that field to narrow it)",
                            hold.hold_id, rec.topic, rec.partition, rec.offset, field,
                            hold.scope(), meant,
                        )  # fmt: skip
                    self._say_unknown_category(hold, rec)
                    named = named_hold_id(rec.value)
                    if named is not None and named != hold.hold_id:
                        log.warning(
                            "legal hold at %s[%d]@%d names hold_id %r in its value but is "
                            "keyed %r: it is hold %r (a release is a null under the key)",
                            rec.topic, rec.partition, rec.offset, named, hold.hold_id,
                            hold.hold_id,
                        )  # fmt: skip
        if not self._catching_up:
            self._say_released()

    def _say_kept(self, rec: Any) -> None:
        """After a rejected hold message: the hold its id names, if active, stays as it
        was, said with the message's place (a repeated ``org`` read as the last one would
        have moved the hold to another org; rejected, only the dead-letter line said so, and
        not that the earlier scope still held); with none active, that nothing is held for
        it. Either way the id is in doubt, and the next start refuses until it is placed
        again or released (:func:`refuse_holds_in_doubt`), which is said too. A message
        that names no id (no key, no ``hold_id`` in its value) changes no hold and no
        later message can replace it: said, and no start refuses for it."""
        where = f"{rec.topic}[{rec.partition}]@{rec.offset}"
        log.warning("%s, rejected: %s", where, rejected_fate(self._holds, rec.key, rec.value))

    def _say_unknown_category(self, hold: Hold, rec: Any) -> None:
        """Warn of a hold on a category the service does not have: no record has it, so
        the hold keeps nothing. `hold place` refuses one; a tool writing to the topic
        itself got an info line alone, and the records it meant (``conversations`` for
        ``conversation``) were deleted at their expiry (a trial). Placed as written all
        the same: a legal hold is never changed by guess."""
        categories = self._book.categories
        if hold.category is None or hold.category in categories:
            return
        log.warning(
            "legal hold %s at %s[%d]@%d names category %s, which is not a configured "
            "category (%s): it keeps nothing%s (place it again with the category meant, "
            "then release this one)",
            hold.hold_id, rec.topic, rec.partition, rec.offset, quoted(hold.category, 80),
            ", ".join(categories), suggestion(hold.category, categories),
        )  # fmt: skip

    def _note_release(self, rec: Any) -> None:
        """Keep the newest null of its hold id read in this read."""
        if not rec.key:
            return
        hold_id = rec.key.decode(errors="replace")
        newest = self._released.get(hold_id)
        if newest is None or rec.timestamp >= newest.timestamp:
            self._released[hold_id] = rec

    def _say_released(self) -> None:
        """Say each hold whose newest message read since the last time is a release, yet
        is still active: placed on another partition, where no null came. Judged once the
        whole read is applied, whatever order its partitions came in (a review: the first
        null warned before the other partition's was read; a trial's start warned of
        nothing when one partition's null came before the other's placement), and not
        when a placement is newer than the release (placed again on purpose)."""
        released, self._released = self._released, {}
        placed, self._placed_at = self._placed_at, {}
        for hold_id, rec in released.items():
            if self._holds.get(hold_id) is None:
                continue  # released everywhere
            if placed.get(hold_id, rec.timestamp) > rec.timestamp:
                continue  # placed again since the release
            self._say_placed_elsewhere(hold_id, rec)

    def _say_placed_elsewhere(self, hold_id: str, rec: Any) -> None:
        """A release that leaves its hold active: placed on another partition too (by a
        producer with another partitioner), where no null has come."""
        elsewhere = ", ".join(str(p) for p in sorted(self._holds.partitions_of(hold_id)))
        log.warning(
            "legal hold %s released at %s[%d]@%d stays active: it is placed on partition %s "
            "too (written with another partitioner than Kafka's default); release it with "
            "`stream-expiry hold release %s`, which nulls it on every partition",
            hold_id, rec.topic, rec.partition, rec.offset, elsewhere,
            hold_id,
        )  # fmt: skip

    async def _reject(self, rec: Any, why: model.Rejection, what: str) -> None:
        """Dead-letter ``rec``, once per instance. Both log lines, the first and a
        restart's repeat, name the message (key, ``topic[partition]@offset``): a person
        reading either must find the message to fix or replace."""
        await self._dead_letter(rec, why, f"{what} rejected: {why.code} ({why.detail})")

    async def _dead_letter(self, rec: Any, why: model.Rejection, what: str) -> None:
        """Put ``rec`` on the dead-letter topic with ``why``, unless this instance did
        already (then only the log line says it again)."""
        key = "null" if rec.key is None else _shown_key(rec.key)
        said = f"{what}; key {key}, {rec.topic}[{rec.partition}]@{rec.offset}"
        if rec in self._dead_lettered:
            log.warning("%s; on the dead-letter topic already", said)
            return
        self._stats.dead_letters += 1
        self._stats.dead_letter_codes[why.code] += 1
        log.warning("%s; put on the dead-letter topic", said)
        # Cut to the producer's limit if need be: refused, it stopped every start, the
        # control topics being read whole each time (stream_expiry.oversize).
        limit = oversize.output_limit(self._prod, self._topic_limit)
        letter_key, letter, headers, cut = oversize.fit_dead_letter(
            rec.key, rec.value, dead_letter_headers(rec, why), limit
        )
        if cut:
            self._stats.dead_letters_truncated += 1
            oversize.say_cut(rec, limit, letter_key, letter)
        ack = await self._prod.send(self._topics.dlq, key=letter_key, value=letter, headers=headers)
        await all_acked([ack])
        self._dead_lettered.add(rec)


def _dropped_name(rec: Any, update: PolicyUpdate) -> tuple[object, ...]:
    """What tells the updates that took values away apart: where the message is, its
    bytes' checksum and what it took away (the same message read again by a start after a
    failed one is one; another at the same offset of a topic made again is another)."""
    crc = zlib.crc32(rec.value or b"", zlib.crc32(rec.key or b""))
    return rec.topic, rec.partition, rec.offset, crc, update.dropped


# An update whose effective_from is further than this before its Kafka timestamp is
# back-dated: records created in between may be stamped already.
BACK_DATED_AFTER_MS: Final = 60_000


def _ago(ms: int) -> str:
    """``ms`` rounded for a person: minutes, hours, or days."""
    minutes = round(ms / 60_000)
    if minutes < 120:
        return f"{minutes} min"
    hours = round(ms / 3_600_000)
    return f"{hours} h" if hours < 48 else f"{round(ms / 86_400_000)} days"


def _warn_back_dated(rec: Any, key: str, effective_from: int) -> None:
    """An update read while the service runs whose ``effective_from`` is well before it
    was sent governs records created from then on, but those already stamped keep the
    TTL they were given (a stamp is made at creation; only ``replay`` moves it). Nothing
    said so: a record created after the date kept the older TTL, which `explain --at`
    contradicted, and an update that lengthens retention let such records go early (a
    trial). At a start, which reads every update, older ones are history, not news."""
    if rec.timestamp is None or rec.timestamp - effective_from <= BACK_DATED_AFTER_MS:
        return
    before = rec.timestamp - effective_from
    since = format_ts(effective_from)
    log.warning(
        "policy update %s at %s[%d]@%d applies from %s, %s before it was sent: records "
        "created since then that the service had stamped already keep the TTL they were "
        "given (a TTL is fixed when a record is stamped); `stream-expiry replay --since %s` "
        "re-derives them under it: stop the instances first, or roll them after it, as a "
        "running instance fires them at their old expiries until it restarts (README: "
        "After replay)",
        key, rec.topic, rec.partition, rec.offset, since, _ago(before), since,
    )  # fmt: skip


def _warn_dropped(rec: Any, key: str, categories: tuple[str, ...]) -> None:
    """An update at ``rec`` left its scope with no value for ``categories``, which the
    scope had a value for: an update replaces the scope's whole map."""
    log.warning(
        "policy update %s at %s[%d]@%d replaces the scope's whole ttl map: %s had a value "
        "there and now %s none from this scope; send every category the scope should keep "
        "in one update (0 for one it should give no value: then this is not said)",
        key, rec.topic, rec.partition, rec.offset, ", ".join(categories),
        "has" if len(categories) == 1 else "have",
    )  # fmt: skip

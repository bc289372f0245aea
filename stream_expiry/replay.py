"""``stream-expiry replay``: re-derive every expiration under the configured policy.

By default from the changelog, ``expiry.stamped``: each stamp carries what re-derivation
needs (creation time, last activity, identity), so the input topics need not keep their
history. Each stamp is re-derived and compared as the topic streams, and the verdict is
kept per record in a temporary RocksDB (the latest message of a record wins, as compaction
would have it; an unchanged record costs one empty value), then counted in key order; memory
stays bounded whatever the topic's size. ``--from-inputs`` instead feeds the input topics from
their beginning through the same partition processors the service runs (each over a
temporary store), which reproduces the live run's stamps exactly.

Records already deleted (the latest value on ``expiry.stamped`` is a null) are neither
counted nor resurrected. Unless ``--dry-run``, every changed stamp is published on
``expiry.stamped``, on its record's partition with its source headers, so a service that
(re)starts, or takes over the partition, restores it from there: the records now due are
tombstoned at once, the others at their new times. A stamp that names the requests of
erasures a legal hold deferred (``expiry-deferred-requests``: an erased life kept beside
the next) is published with that header as it was, since it keeps the same held lives;
a restore reads the record's latest stamp alone, and without it the release's tombstones
named no request. (A stamp with an erasure of its own is not published at all: the erasure
ends the record at the release, whatever its expiry.) A stamp whose life was due when its
event arrived (``expiry-due-at-ingest``: a late event) keeps that header when the stamp
published keeps its expiry (only to remove data under a ``[redact]`` rule): restored from
it, the late tombstone still says ``late_event``, not ``catch_up``. One that moves the
expiry drops it: the life it named is no longer the record's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from stream_expiry import codec, model, native, oversize
from stream_expiry.changelog import Current, read_current, read_latest
from stream_expiry.errors import BrokerError, ConfigurationError
from stream_expiry.instances import describe_group
from stream_expiry.kafka import (
    batch_bytes,
    committed_offsets,
    consumer,
    message_limits,
    missing_topics,
    partitions_of,
    producer,
    read_to_end,
    stable_ends,
    topic_partitions,
)
from stream_expiry.logs import counted, record_ref
from stream_expiry.outbox import all_acked
from stream_expiry.policy import PolicyBook, apply_updates
from stream_expiry.redact import Redactor
from stream_expiry.replay_mend import mend_superseded
from stream_expiry.state import PartitionProcessor, PartitionStore, RocksKV
from stream_expiry.state.kv import scratch_directory
from stream_expiry.timeutil import format_ts, parse_ts, wall_clock_ms
from stream_expiry.workers import give_back_freed_memory

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from stream_expiry.changelog import Progress
    from stream_expiry.config import Config
    from stream_expiry.kafka_settings import Brokers
    from stream_expiry.policy import Resolution
    from stream_expiry.state import KeyValue

log = logging.getLogger("stream_expiry.replay")

__all__ = ["ReplayReport", "Share", "replay", "replay_share", "run_replay"]

H_REPLAY = "expiry-replay"


@dataclass
class Change:
    """One record whose expiry moved: for the sample a person reads."""

    key: str
    old_expires_at: int | None
    new_expires_at: int | None
    ttl_source: str | None
    kind: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "old_expires_at": _opt_ts(self.old_expires_at),
            "new_expires_at": _opt_ts(self.new_expires_at),
            "ttl_source": self.ttl_source,
        }

    def line(self) -> str:
        """The sample's text line: an expiry that is not there reads ``never`` (no stamp
        expires nothing either), not ``None``, and so does its missing source."""
        old = "never" if self.old_expires_at is None else format_ts(self.old_expires_at)
        if self.new_expires_at is None:
            new = "never"
        else:
            new = f"{format_ts(self.new_expires_at)} ({self.ttl_source})"
        return f"{self.kind:<8} {self.key}: {old} -> {new}"


def _opt_ts(ms: int | None) -> str | None:
    return None if ms is None else format_ts(ms)


@dataclass
class ReplayReport:
    """The contract's counts, plus a sample of changes (and, on request, every new state)."""

    events: int = 0
    records: int = 0
    unchanged: int = 0
    earlier: int = 0
    later: int = 0
    due_now: int = 0
    never: int = 0
    # ``--from-inputs``: records the input topics hold that have no stamp (and no null)
    # on ``expiry.stamped``: deleted and compacted away, or not read by the service yet.
    # Left alone, outside the contract's counts.
    unstamped: int = 0
    # Records a running instance wrote (a null, a newer stamp) after replay read them and
    # before its stamp landed: that message is published again, the latest once more
    # (:mod:`stream_expiry.replay_mend`). Outside the contract's counts.
    superseded: int = 0
    # Stamps whose expiry the policy leaves as it is, from whose data the replay's
    # ``[redact]`` rules remove something: published again without it (a rule added
    # since they were written), and counted ``unchanged``. Outside the contract's counts.
    redacted: int = 0
    sample: list[Change] = field(default_factory=list)
    states: dict[str, model.Stamp] = field(default_factory=dict)  # only with keep_states
    # Peak RSS in bytes of each worker process that took part (none: this process alone).
    worker_rss: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "events": self.events,
            "records": self.records,
            "unchanged": self.unchanged,
            "earlier": self.earlier,
            "later": self.later,
            "due_now": self.due_now,
            "never": self.never,
        }


class ProgressBar:
    """Progress with rate and ETA on ``out`` (stderr): a bar redrawn in place on a
    terminal; elsewhere (a pod's log, CI, a pipe) a plain line every
    :data:`LINE_EVERY_S`, so a long replay is never silent."""

    LINE_EVERY_S = 10.0

    def __init__(self, what: str, total: int, out: TextIO | None) -> None:
        self.what, self.total, self.out = what, total, out
        self.start = self.last = time.monotonic()
        self.bar = out is not None and out.isatty()

    def __call__(self, done: int, final: bool = False) -> None:
        if self.out is None:
            return
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.bar else self.LINE_EVERY_S):
            return
        if final and not self.bar:
            return  # the summary follows
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        if not self.bar:
            share = f" ({100 * done // self.total} %)" if self.total else ""
            self.out.write(
                f"replay: {done:,} of {self.total:,} {self.what}{share}, {rate:,.0f}/s, "
                f"about {eta:,.0f} s left\n"
            )
            self.out.flush()
            return
        width = 30
        filled = min(width, int(width * done / self.total)) if self.total else width
        self.out.write(
            f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {done:,}/{self.total:,} "
            f"{self.what} {rate:,.0f}/s ETA {eta:,.0f}s   " + ("\n" if final else "")
        )
        self.out.flush()


# -- re-derivation ------------------------------------------------------------------------


class _Rederive:
    """Each stamp's expiry under the policy now, from its message, with no more objects per
    record than the verdict needs (replay reads the whole changelog).

    The policy depends on a record's scope (org, bot, env, category), not on its id: the
    answer for a scope (the key without its id) is kept with the creation times it holds
    for, and serves every record of that scope created within them; the scope's identity
    is decoded only to find an answer, and a record's own only when its expiry changed.
    Kept per scope: the key's prefix and a tuple of four (~200 bytes), no identity, and
    nothing in the book's own cache (which replay would fill with a second copy).
    """

    SCOPES = 100_000  # distinct scopes kept (then forgotten all at once: bounded memory)

    def __init__(self, book: PolicyBook, sliding: frozenset[str]) -> None:
        self.book = book
        self.sliding = sliding
        # prefix -> (lo, hi, the answer for creation times in [lo, hi), sliding or not)
        self._scopes: dict[bytes, tuple[int, int, Resolution, bool]] = {}

    def _answer(self, key: bytes, created: int) -> tuple[Resolution, bool]:
        """The policy's answer for a record of ``key`` created at ``created``, and whether
        its category slides; raises ValueError if ``key`` is not a record key."""
        cut = key.rfind(b"/")
        if cut < 0 or key.find(b"%", cut) >= 0:  # (no copy of the id to look in)
            scope = model.decode_key(key.decode())  # the id too is checked, the slow way
            return self.book.resolve_span(scope, created)[0], scope.category in self.sliding
        prefix = key[:cut]
        known = self._scopes.get(prefix)
        if known is not None and known[0] <= created < known[1]:
            return known[2], known[3]
        scope = model.decode_key((prefix + b"/_").decode())
        res, lo, hi = self.book.resolve_span(scope, created)
        slides = scope.category in self.sliding
        if len(self._scopes) >= self.SCOPES:
            self._scopes.clear()
        self._scopes[prefix] = (lo, hi, res, slides)
        return res, slides

    def expiry(
        self, key: bytes, body: Any, created: int
    ) -> tuple[int | None, int | None, str | None]:
        """(the new expires_at, ttl_ms, ttl_source)."""
        res, slides = self._answer(key, created)
        ttl = res.ttl_ms
        if ttl is None:
            return None, None, None
        return _ends(ttl, slides, body, created), ttl, res.source

    def expires_at(self, key: bytes, body: Any, created: int) -> int | None:
        """The new expires_at alone: :meth:`expiry` for the verdict on every message,
        which needs no tuple of three."""
        res, slides = self._answer(key, created)
        ttl = res.ttl_ms
        return None if ttl is None else _ends(ttl, slides, body, created)

    def expires_after(self, key: bytes, active: int | None, created: int) -> int | None:
        """:meth:`expires_at` of a stamp read without its body: ``active`` is its
        ``last_activity_at`` (None: absent or null)."""
        res, slides = self._answer(key, created)
        ttl = res.ttl_ms
        return None if ttl is None else _ends_from(ttl, slides, active, created)


def _ends(ttl: int, slides: bool, body: Any, created: int) -> int:
    """When a life of ``ttl`` ends, from its creation, or from its last activity (the
    stamp's ``last_activity_at``, read only in a sliding category) in a sliding category."""
    last = body.get("last_activity_at") if slides else None
    return _ends_from(ttl, slides, None if last is None else codec.parse_own_ts(last), created)


def _ends_from(ttl: int, slides: bool, active: int | None, created: int) -> int:
    base = created
    if slides and active is not None:
        base = max(created, active or created)
    return base + ttl


def redacts(redactor: Redactor | None, body: Any) -> bool:
    """Whether ``redactor`` removes something from the data of the stamp ``body``."""
    if redactor is None or body is None:
        return False
    return bool(redactor.redact(body.get("category") or "", body.get("data"))[1])


def _classify(old: int | None, new: int | None, has_stamp: bool, now: int) -> str | None:
    if has_stamp and new == old:
        return None
    if new is None:
        return "never"
    if new <= now:
        return "due_now"
    if not has_stamp or old is None or new < old:
        return "earlier"  # a finite expiry is earlier than never (or than no stamp at all)
    return "later"


@dataclass
class _Verdicts:
    """Where each re-derived record goes: the report's counts and sample, the kept states
    and, unless a dry run, a new stamp. Both sources of replay end here."""

    report: ReplayReport
    publisher: _Publisher | None  # None: a dry run
    now: int
    since_ms: int | None
    dry_run: bool
    sample_size: int
    keep_states: bool
    redactor: Redactor | None = None  # the replay's rules (None: none)

    def wanted(self, created_at: int | None) -> bool:
        return self.since_ms is None or (created_at or 0) >= self.since_ms

    async def record(
        self,
        new: model.Stamp,
        old: int | None,
        *,
        has_stamp: bool,
        partition: int,
        source: tuple[str, int] | None,
        body: Any,
        deferred: bytes | None = None,
        due_at_ingest: int | None = None,
    ) -> None:
        """``old``: the current expiry; ``body``: the current stamp's message (or None);
        ``deferred``: its ``expiry-deferred-requests``, carried to the stamp published;
        ``due_at_ingest``: its ``expiry-due-at-ingest``, carried when the expiry stays
        (:func:`_carried_headers`)."""
        report, key = self.report, new.identity.key
        kind = _classify(old, new.expires_at, has_stamp, self.now)
        report.records += 1
        if kind is None:
            report.unchanged += 1
            if redacts(self.redactor, body):
                # A rule added since the stamp was written: its expiry stands, its data
                # is published again without what the rule removes.
                report.redacted += 1
                if not self.dry_run and self.publisher is not None:
                    await self.publisher.add(partition, source, new, body, deferred, due_at_ingest)
        else:
            setattr(report, kind, getattr(report, kind) + 1)
            if len(report.sample) < self.sample_size:
                report.sample.append(Change(key, old, new.expires_at, new.ttl_source, kind))
        if self.keep_states:
            report.states[key] = new
        if kind is not None and not self.dry_run and self.publisher is not None:
            await self.publisher.add(partition, source, new, body, deferred, due_at_ingest)


def _carried_headers(
    state: model.Stamp, deferred: bytes | None, due_at_ingest: int | None
) -> codec.Headers:
    """The headers of the stamp replaced that the stamp ``state`` published in its place
    keeps. ``deferred`` (``expiry-deferred-requests``): always, as ``state`` keeps the held
    lives whose erasures it names. ``due_at_ingest`` (``expiry-due-at-ingest``, the
    expiry the replaced stamp's life had when its event arrived, already due): only when
    ``state`` keeps that expiry (a stamp published again only to redact its data), as a
    restore reads it (``state.restore``: the header's expiry is the stamp's); a moved
    expiry is another life's end, which was not due on arrival."""
    headers: codec.Headers = []
    if deferred is not None:
        headers.append((codec.H_DEFERRED_REQUESTS, deferred))
    if due_at_ingest is not None and due_at_ingest == state.expires_at:
        headers.append((codec.H_DUE_AT_INGEST, b"%d" % due_at_ingest))
    return headers


class _Publisher:
    """Changed stamps to ``expiry.stamped``, in batches, on their record's partition.

    The data a stamp carries is redacted again under the replay's own ``[redact]``: the
    current stamp was redacted under the rules in force when it was written, and a rule
    added since (the usual reason to replay with a new config is a compliance change)
    must not be undone by publishing the field again, newer than the stamp compaction
    would otherwise remove.
    """

    def __init__(
        self,
        prod: Any,
        topic: str,
        redactor: Redactor | None = None,
        *,
        topic_limit: int | None = None,
        published: KeyValue | None = None,
    ) -> None:
        self._prod, self._topic = prod, topic
        self._redactor = redactor if redactor else None  # an empty one removes nothing
        # A stamp over the producer's limit (or the topic's max.message.bytes, when
        # smaller) goes without its data, as the service's do: ``send`` refused it, and the
        # replay stopped there (stream_expiry.oversize).
        self._limit = oversize.output_limit(prod, topic_limit)
        self._acks: list[Any] = []
        # This run's mark on its messages: the mending after the publish tells them from
        # an instance's (and from another replay's).
        self._mark = (H_REPLAY, uuid.uuid4().hex.encode())
        self._partitions: set[int] = set()  # written to
        # The keys published, on disk (a replay may publish millions), for the mending; a
        # publisher without it does not mend.
        self._published = published
        self._keys: list[bytes] = []  # published, not yet in ``_published``

    @classmethod
    @contextlib.asynccontextmanager
    async def on(
        cls,
        bootstrap: Brokers,
        topic: str,
        redactor: Redactor | None,
        published: KeyValue | None = None,
    ) -> AsyncIterator[_Publisher]:
        """A publisher to ``topic`` with a producer of its own, held to the topic's
        ``max.message.bytes`` as the broker says: each stamp, and each record batch of
        them (:func:`~stream_expiry.kafka.batch_bytes`)."""
        limits = await message_limits(bootstrap, [topic])
        async with producer(bootstrap, max_batch_size=batch_bytes(limits.values())) as prod:
            yield cls(prod, topic, redactor, topic_limit=limits.get(topic), published=published)

    async def add(
        self,
        partition: int,
        source: tuple[str, int] | None,
        state: model.Stamp,
        body: Any,
        deferred: bytes | None = None,
        due_at_ingest: int | None = None,
    ) -> None:
        """``body``: the record's current stamp (its data redacted under the rules of its
        time, and saying what was removed), or None; ``deferred``: that stamp's
        ``expiry-deferred-requests``, or None. ``state`` keeps the stamp's held lives, so
        the requests of their erasures are still the record's: the header goes on as it
        was (:data:`codec.H_DEFERRED_REQUESTS`). ``due_at_ingest``: that stamp's
        ``expiry-due-at-ingest``, or None; on again if ``state`` keeps its expiry
        (:func:`_carried_headers`)."""
        data = None if body is None else body.get("data")
        redacted: tuple[str, ...] = () if body is None else tuple(body.get("redacted") or ())
        if self._redactor is not None and data is not None:
            data, removed = self._redactor.redact(state.identity.category, data)
            redacted = tuple(dict.fromkeys((*redacted, *removed)))
        headers = [self._mark]
        if deferred is not None or due_at_ingest is not None:
            headers = [*_carried_headers(state, deferred, due_at_ingest), *headers]
        if source is not None:
            headers = [*codec.source_headers(*source), *headers]
        key = state.identity.key.encode()
        before = None if body is None or data is not None else body.get("data_dropped")
        before = before if isinstance(before, str) else None
        value, dropped = oversize.stamp_within(
            self._limit, state, data, redacted, key, headers, dropped_before=before
        )
        if dropped:
            log.warning(
                "the stamp of a record (%s) for %s[%d] is over the producer's limit of %d "
                "bytes with its data: published without it (data null, data_dropped %r)",
                state.identity.category,
                self._topic,
                partition,
                self._limit,
                oversize.DATA_DROPPED,
                extra={"record": record_ref(state.identity.key)},
            )
        self._partitions.add(partition)
        self._keys.append(key)
        self._acks.append(
            await self._prod.send(
                self._topic, key=key, value=value, partition=partition, headers=headers
            )
        )
        if len(self._acks) >= 10_000:
            await self.flush()

    async def flush(self) -> None:
        await all_acked(self._acks)
        self._acks = []
        if self._published is not None and self._keys:
            self._published.apply(dict.fromkeys(self._keys, b""), ())
        self._keys = []

    async def finish(self, bootstrap: Brokers, read_ends: Mapping[int, int]) -> int:
        """Wait for every ack, then mend what a running instance wrote after replay's read
        (``read_ends``: partition -> where it stopped); returns how many records."""
        await self.flush()
        ends = {p: end for p, end in read_ends.items() if p in self._partitions}
        if not ends or self._published is None:
            return 0
        return await mend_superseded(
            bootstrap, self._prod, self._topic, ends, self._mark, self._published
        )


async def replay(
    config: Config,
    bootstrap: Brokers,
    *,
    environ: Mapping[str, str],
    since_ms: int | None = None,
    dry_run: bool = False,
    from_inputs: bool = False,
    sample_size: int = 10,
    keep_states: bool = False,
    clock: Callable[[], int] = wall_clock_ms,
    progress: TextIO | None = None,
    workers: int | None = None,
) -> ReplayReport:
    """Re-derive, compare and (unless ``dry_run``) apply; returns the report.

    From ``expiry.stamped``, the partitions are shared among ``workers`` processes
    (:mod:`stream_expiry.replay_workers`; None: one per CPU for a large topic, else this
    process alone); the report is the same whatever their number.
    """
    topics = config.topics
    if await missing_topics(bootstrap, [topics.stamped]):
        # Where the name came from: a variable's, not --config's, was told to give --config.
        raise ConfigurationError(
            topics.lacked(
                "stamped",
                config.path,
                so=", so there is nothing to re-derive",
                otherwise=", or start the service once first (it creates its topics)",
            )
        )
    share = Share(
        config=config,
        bootstrap=bootstrap,
        environ=dict(environ),
        updates=await policy_updates(bootstrap, topics.policies),
        now=clock(),
        since_ms=since_ms,
        dry_run=dry_run,
        sample_size=sample_size,
        keep_states=keep_states,
    )
    # Said once, here (the workers build their own books): what the service warns of.
    for warning in apply_updates(PolicyBook(config, environ), share.updates, topics.policies):
        log.warning("%s", warning)
    if not from_inputs:
        # Imported here: replay_workers builds on this module's Share and replay_share.
        from stream_expiry.replay_workers import replay_stamps

        return await replay_stamps(share, workers=workers, progress=progress)
    report = ReplayReport()
    book = share.book()
    with scratch_directory("stream-expiry-replay-") as work:
        kv = RocksKV(os.path.join(work, "current"), durable=False)
        try:
            bar = ProgressBar("stamps", 0, progress) if progress is not None else None
            read_ends: dict[int, int] = {}
            current, _read = await read_current(bootstrap, topics.stamped, kv, bar, ends=read_ends)
            with _published_keys(work) as published:
                async with _Publisher.on(
                    bootstrap, topics.stamped, Redactor.from_config(config.redact), published
                ) as publisher:
                    verdicts = share.verdicts(report, publisher)
                    await _from_inputs(
                        config, bootstrap, book, current, work, verdicts, progress=progress
                    )
                    report.superseded = await publisher.finish(bootstrap, read_ends)
        finally:
            kv.close()
    return report


@contextlib.contextmanager
def _published_keys(work: str) -> Iterator[RocksKV]:
    """The keys a replay publishes, on disk in its temporary directory, for the mending."""
    published = RocksKV(os.path.join(work, "published"), durable=False)
    try:
        yield published
    finally:
        published.close()


async def policy_updates(
    bootstrap: Brokers, topic: str
) -> tuple[tuple[bytes | None, bytes | None, int], ...]:
    """Every policy update on ``topic``, in order: what a :class:`PolicyBook` replays."""
    updates: list[tuple[bytes | None, bytes | None, int]] = []
    async with consumer(bootstrap) as cons:
        async for batch in read_to_end(cons, topic):
            for records in batch.values():
                updates.extend((rec.key, rec.value, rec.timestamp) for rec in records)
    return tuple(updates)


@dataclass(frozen=True)
class Share:
    """A replay from ``expiry.stamped`` over some of its partitions (None: all): all a
    process needs to run it, and nothing that cannot be sent to a worker process."""

    config: Config
    bootstrap: Brokers
    environ: dict[str, str]
    updates: tuple[tuple[bytes | None, bytes | None, int], ...]
    now: int
    since_ms: int | None
    dry_run: bool
    sample_size: int
    keep_states: bool
    partitions: tuple[int, ...] | None = None
    scratch: str | None = None  # where its temporary store goes (None: the system's temp)

    def book(self) -> PolicyBook:
        """The policy book: the config and every update, applied in their order."""
        book = PolicyBook(self.config, self.environ)
        for key, value, timestamp in self.updates:
            book.apply_update(key, value, timestamp)
        return book

    def verdicts(self, report: ReplayReport, publisher: _Publisher | None) -> _Verdicts:
        return _Verdicts(
            report,
            publisher,
            self.now,
            self.since_ms,
            self.dry_run,
            self.sample_size,
            self.keep_states,
            self.redactor(),
        )

    def redactor(self) -> Redactor | None:
        """The replay's own ``[redact]`` rules (None: none)."""
        return Redactor.from_config(self.config.redact) or None


async def replay_share(share: Share, progress: Progress | None = None) -> ReplayReport:
    """The replay of ``share``'s partitions of ``expiry.stamped``, in this process."""
    book = share.book()
    stamped = share.config.topics.stamped
    report = ReplayReport()
    with scratch_directory("stream-expiry-replay-", within=share.scratch) as work:
        kv = RocksKV(os.path.join(work, "current"), durable=False)
        try:
            verdict = _Verdict(
                _Rederive(book, share.config.sliding),
                since_ms=share.since_ms,
                keep_states=share.keep_states,
                redactor=share.redactor(),
            )
            read_ends: dict[int, int] = {}
            report.events = await read_latest(
                share.bootstrap,
                stamped,
                kv,
                verdict,
                progress,
                partitions=share.partitions,
                ends=read_ends,
            )
            if share.dry_run:
                await _from_stamps(share.config, book, kv, share.verdicts(report, None))
                return report
            with _published_keys(work) as published:
                async with _Publisher.on(
                    share.bootstrap, stamped, Redactor.from_config(share.config.redact), published
                ) as publisher:
                    verdicts = share.verdicts(report, publisher)
                    await _from_stamps(share.config, book, kv, verdicts)
                    report.superseded = await publisher.finish(share.bootstrap, read_ends)
        finally:
            kv.close()
    return report


class _Verdict:
    """What replay keeps of each message of ``expiry.stamped`` while it streams the topic:
    nothing for a null or a record not replayed (the key's latest message decides, so an
    older stamp of it must not count), one empty value for a stamp the policy leaves
    unchanged (nearly all), the message itself for a changed one, which is re-derived
    again at the end to be counted, sampled and published. Re-deriving as the topic
    streams keeps the temporary store to a byte per record instead of a copy of the topic.
    """

    def __init__(
        self,
        rederive: _Rederive,
        *,
        since_ms: int | None,
        keep_states: bool,
        redactor: Redactor | None = None,
    ) -> None:
        self.rederive = rederive
        self.since_ms = since_ms
        self.keep_states = keep_states
        self.redactor = redactor
        # The stamp's fields read from its bytes in C (no dict of its every field, data
        # too: 235k -> 265k records/s in bench.e2e_replay at 1 M, round 55), unless the
        # data must be looked at (a redactor) or the codec is not built.
        self._scan = _replay_fields if redactor is None else None

    def __call__(
        self, partition: int, _offset: int, headers: Any, key: bytes, value: bytes | None
    ) -> bytes | None:
        if value is None:
            return None  # deleted: not counted, not resurrected
        scanned = None if self._scan is None else self._scan(value)
        body = None
        created: int | None
        try:
            if scanned is not None:
                # Read in C: a creation time, no erasure waiting (_native.replay_fields).
                created, old, active = scanned
            else:
                body = orjson.loads(value)
                # By index, not unpacked: ``*_`` made a list for every message (with the
                # tuple of ``expiry``, 0.44 us of the verdict's 3.6: docs/BENCHMARKS.md,
                # round 54).
                fields = codec.stamp_body_fields(body)
                created, old = fields[0], fields[1]
                if created is None:
                    return None  # without a creation time: not a stamp of ours
                if fields[4] is not None:  # erase_requested_at
                    # An erasure a legal hold deferred ends the record at the release,
                    # whatever its expiry: not counted, not stamped again (as replay from
                    # the inputs, whose processors know no holds, sees it: erased).
                    return None
            if self.since_ms is not None and created < self.since_ms:
                return None
            if body is None:
                expires = self.rederive.expires_after(key, active, created)
            else:
                expires = self.rederive.expires_at(key, body, created)
        except ValueError:
            return None  # not a stamp of ours
        if (
            expires == old
            and not self.keep_states
            and (self.redactor is None or not redacts(self.redactor, body))
        ):
            return UNCHANGED
        return Current.pack(partition, headers, value)


_replay_fields: Callable[[bytes], tuple[int, int | None, int | None] | None] | None = (
    None if native.compiled is None else native.compiled.replay_fields
)

UNCHANGED = b""  # the value replay keeps for a record whose expiry the policy leaves as is


async def _from_stamps(config: Config, book: PolicyBook, kv: RocksKV, verdicts: _Verdicts) -> None:
    """Count what :class:`_Verdict` kept, in key order; re-derive the changed records."""
    rederive = _Rederive(book, config.sliding)
    report = verdicts.report
    for key, raw in kv.scan_once(b"", b"\xff" * 8):
        if raw == UNCHANGED:
            report.records += 1
            report.unchanged += 1
            continue
        partition, source, value, deferred, due_at_ingest = Current.unpack(raw)
        if value is None:
            continue
        try:
            body = orjson.loads(value)
            created, old, _ttl, _source, _erase, floor, lives, first = codec.stamp_body_fields(body)
            if created is None or not verdicts.wanted(created):
                continue
            expires, ttl_ms, ttl_source = rederive.expiry(key, body, created)
            identity = model.decode_key(key.decode())
        except ValueError:
            continue  # not a stamp of ours
        new = model.Stamp(
            identity,
            created,
            expires,
            ttl_ms,
            ttl_source,
            previous_deleted_at=floor,
            held_lives=lives,  # ended: a new policy does not move them
            first_created_at=first,
        )
        await verdicts.record(
            new,
            old,
            has_stamp=True,
            partition=partition,
            source=source,
            body=body,
            deferred=deferred,
            due_at_ingest=due_at_ingest,
        )


async def _from_inputs(
    config: Config,
    bootstrap: Brokers,
    book: PolicyBook,
    current: Current,
    work: str,
    verdicts: _Verdicts,
    *,
    progress: TextIO | None,
) -> None:
    """The service's own processors, fed every input event from the beginning: of the
    input topics to their end, of the retired topics to where the service stopped
    reading them (:func:`_input_ends`)."""
    topics = config.topics
    report = verdicts.report
    now = verdicts.now
    async with consumer(bootstrap) as cons:
        stamped_partitions = len(await partitions_of(cons, topics.stamped))
        ends = await _input_ends(config, bootstrap, cons)
        bar = ProgressBar("events", sum(ends.values()), progress)
        for tp, end in ends.items():
            store = PartitionStore(RocksKV(os.path.join(work, f"{tp.topic}-{tp.partition}")))
            proc = PartitionProcessor.from_config(
                tp.topic, tp.partition, store, config, book, now_ms=now, horizon_ms=0
            )
            try:
                async for records in _read_partition(cons, tp, end):
                    effects = proc.process(_read_in_time(records, config, now), now)
                    proc.settle(effects, now)
                    report.events += len(records)
                    bar(report.events)
                # Creates dated ahead of the clock, after their running life's expiry,
                # wait for it (PartitionProcessor.unpark), and stay parked: replay derives
                # each record as it is at its clock, its running life. Decided as if time
                # had come to that expiry, the next life was derived,
                # and an applied replay stamped it over the running one, which was then
                # never tombstoned (a review); the service, its offset left before the
                # create, decides it at the expiry.
                partition = codec.output_partition(tp.partition, stamped_partitions)
                for state in store.items():
                    await _compare_input_state(
                        state, current, verdicts, (tp.topic, tp.partition), partition
                    )
            finally:
                store.close()
        bar(report.events, final=True)


def _read_in_time(records: list[Any], config: Config, now: int) -> list[Any]:
    """``records`` without the events the service rejected as ``future_timestamp``.

    The service checks an event's ``ts`` against its clock when it reads the event; the
    processor checks it against the ``now`` it is given, which for replay is replay's own
    clock, minutes or months later: an event dead-lettered then would pass now, and come
    back as a record. The record's Kafka timestamp is the best stand-in for the time the
    service read it (capped at ``now``: a producer may set a timestamp in the future, and
    the service reads nothing later than now). Only events the processor would accept at
    ``now`` can differ, so the rest are left for it to reject (replay ignores dead
    letters).
    """
    skew, categories = config.max_clock_skew_ms, frozenset(config.categories)
    kept = [
        rec
        for rec in records
        if rec.timestamp is None
        or rec.timestamp < 0
        or rec.timestamp >= now
        or not _future_at(rec.value, rec.timestamp, categories, skew)
    ]
    return kept if len(kept) < len(records) else records


def _future_at(value: bytes | None, read_at: int, categories: frozenset[str], skew: int) -> bool:
    """Whether the service, reading ``value`` at ``read_at``, dead-letters it as too far
    in the future."""
    verdict = model.parse_event(value, categories=categories, now_ms=read_at, max_skew_ms=skew)
    return isinstance(verdict, model.Rejection) and verdict.code == "future_timestamp"


async def _input_ends(
    config: Config, bootstrap: Brokers, cons: AIOKafkaConsumer
) -> dict[TopicPartition, int]:
    """Each partition of the input and retired topics, with the offset replay reads it to.

    An input to its present end. A retired topic (``[topics] retired``) too, since the
    records it stamped are alive and the instances fire them (left out, they were never
    re-derived), but only to the service group's committed offset: the service stopped
    reading it there, and what producers sent after is ignored, a touch that would extend
    a life among it (nothing of a partition where the group committed nothing: the service
    read nothing there, and stamped nothing from it). A retired topic
    the cluster does not have is said and left out: its records are re-derived from
    ``expiry.stamped`` (replay without ``--from-inputs``)."""
    topics = config.topics
    ends: dict[TopicPartition, int] = {}
    for topic in await missing_topics(bootstrap, topics.retired):
        log.warning(
            "retired topic %s does not exist on the cluster: its records are not re-derived "
            "from its events (replay without --from-inputs re-derives them from %s)",
            topic,
            topics.stamped,
        )
    for topic in (*topics.inputs, *topics.retired):
        tps = await topic_partitions(cons, [topic])
        if not tps:
            continue
        cons.assign(tps)
        ends.update(await stable_ends(cons, tps))
        if topic in topics.retired:
            ends.update(await _read_when_retired(config, bootstrap, tps, ends))
    return ends


async def _read_when_retired(
    config: Config,
    bootstrap: Brokers,
    tps: list[TopicPartition],
    ends: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """The service group's committed offsets of a retired topic's partitions ``tps``, at
    most their end (0 where it committed none)."""
    async with consumer(bootstrap, group_id=config.group_id) as group:
        committed = await committed_offsets(group, tps)
    return {tp: min(offset or 0, ends[tp]) for tp, offset in committed.items()}


async def _read_partition(
    cons: AIOKafkaConsumer, tp: TopicPartition, end: int
) -> AsyncIterator[list[Any]]:
    """One input partition from its beginning up to ``end``."""
    cons.assign([tp])
    await cons.seek_to_beginning(tp)
    while await cons.position(tp) < end:
        batch = await cons.getmany(tp, timeout_ms=1000, max_records=5000)
        records = [r for r in batch.get(tp, []) if r.offset < end]
        if records:
            yield records


async def _compare_input_state(
    state: model.Stamp,
    current: Current,
    verdicts: _Verdicts,
    source: tuple[str, int],
    partition: int,
) -> None:
    if not verdicts.wanted(state.created_at):
        return
    ended = not state.live
    if ended and (state.erase_at is not None or state.expires_at is None):
        return  # erased: the stores delete it when the service reads the request
    raw = current.get(state.identity.key.encode())
    if raw is None:
        # Every record the service accepted has a stamp there, then a null once deleted.
        # With neither, the record was deleted and compaction has since removed its null
        # (the input topics keep events longer than expiry.stamped keeps nulls), or the
        # service has not read its events yet (it stamps them itself). A stamp from here
        # would bring a deleted record back into the stores: left alone, counted apart.
        if not ended:
            verdicts.report.unstamped += 1
        return
    _p, _src, value, deferred, due_at_ingest = Current.unpack(raw)
    if value is None:
        return  # deleted on expiry.stamped: not resurrected
    body = orjson.loads(value)
    old = codec.parse_own_ts(body.get("expires_at"))
    if ended:
        # The processor runs every event at replay's clock, so a life the policy ends
        # between two events (a touch after the new expiry) is tombstoned there, while
        # the record is still live on expiry.stamped: that life is due now, and is
        # stamped so (a restarted service tombstones it at once), unless the current
        # stamp is of a life the inputs do not show ending (created after it ended).
        created, _, _, _, _, floor, lives, _ = codec.stamp_body_fields(body)
        assert state.deleted_at is not None
        if created is None or created > state.deleted_at:
            return
        # The tombstone kept the life's times, not what came before it: the stamp's.
        state = state._replace(deleted_at=None, previous_deleted_at=floor, held_lives=lives)
    elif "held_lives" in body and not state.held_lives:
        # Replay's processors know no holds, so a life a hold kept (an erasure deferred,
        # then a new life) is not in their state: keep the stamp's, as replay from the
        # stamps does, or the release would find no held life to tombstone (a trial).
        state = state._replace(held_lives=codec.stamp_body_fields(body)[6])
    await verdicts.record(
        state,
        old,
        has_stamp=True,
        partition=partition,
        source=source,
        body=body,
        deferred=deferred,  # of the held lives kept from the stamp
        due_at_ingest=due_at_ingest,
    )


async def _say_instances_running(config: Config, bootstrap: Brokers) -> None:
    """After an applied replay that changed stamps, say on stderr whether the service's
    group has members: a running instance reads none of replay's stamps until it restarts,
    fires at the old expiries meanwhile (a record the new policy keeps longer is deleted
    then) and undoes the replay for each record it reads an event of. The only hint was
    "a service picks the new stamps up when it (re)starts", in the text output alone: a
    replay run by mistake beside a running service (a trial) said nothing of it."""
    try:
        group = await describe_group(bootstrap, config.group_id)
    except BrokerError:
        return  # replay itself is done; whether instances run is `status`'s to say
    if group.error or not group.members:
        return
    sys.stderr.write(
        f"replay: the service's group '{config.group_id}' has "
        f"{counted(len(group.members), 'member')} (instances running): until restarted, each "
        "fires at the old expiries and undoes the replay for the records it reads events "
        "of; restart (roll) them now, then check with `replay --dry-run` (README: After "
        "replay)\n"
    )


async def run_replay(config: Config, bootstrap: Brokers, args: argparse.Namespace) -> int:
    give_back_freed_memory()  # this process does nothing else: memory before a few % of speed
    since = (
        None
        if args.since is None
        else parse_ts(int(args.since) if args.since.isdigit() else args.since)
    )
    report = await replay(
        config,
        bootstrap,
        environ=os.environ,
        since_ms=since,
        dry_run=args.dry_run,
        from_inputs=getattr(args, "from_inputs", False),
        sample_size=args.sample,
        progress=sys.stderr,  # a bar on a terminal, else a line every 10 s
        workers=getattr(args, "workers", None),
    )
    if report.unstamped:  # on stderr: the JSON on stdout is the contract's
        sys.stderr.write(
            f"replay: left alone {report.unstamped:,} records of the input topics with no "
            "stamp on expiry.stamped (deleted, their null since compacted away, or not read "
            "by the service yet): replay stamps no record the service has not\n"
        )
    if report.redacted:
        sys.stderr.write(
            f"replay: {report.redacted:,} stamps hold data the [redact] rules remove (their "
            "expiry stands): "
            + ("a replay without --dry-run publishes them again without it\n" if args.dry_run
               else "published again without it, and counted unchanged\n")
        )  # fmt: skip
    if report.superseded:
        sys.stderr.write(
            f"replay: {report.superseded:,} records were written by a running instance "
            "after replay read them (deleted, or moved by an event): they keep the "
            "instance's message, published again after replay's stamp\n"
        )
    if not args.dry_run and report.records - report.unchanged:
        await _say_instances_running(config, bootstrap)
    if args.json:
        sys.stdout.write(orjson.dumps(report.counts()).decode() + "\n")
        return 0
    counts = report.counts()
    # From the changelog, what was read is every message of it, the nulls that ended
    # records too: "38,000 stamps read" of 20,000 records stamped read as a count gone
    # wrong (a trial). The JSON's "events" is the contract's and counts the same.
    from_inputs = getattr(args, "from_inputs", False)
    read = "events read" if from_inputs else "changelog messages read: stamps and nulls"
    print(
        ("dry run: nothing changed" if args.dry_run else "applied")
        + f" ({counts['events']:,} {read})"
    )
    for name in ("records", "unchanged", "earlier", "later", "due_now", "never"):
        print(f"  {name:<10} {counts[name]:>10,}")
    if report.sample:
        print("sample of changed records:")
        for change in report.sample:
            print(f"  {change.line()}")
    if not args.dry_run and report.records - report.unchanged:
        # An instruction, not a remark: a running instance does not read these stamps, and
        # fires the changed records at their old expiries (the due_now ones too, late
        # for as long as it runs: a trial) until it restarts or takes a partition over.
        print(
            "roll the instances now (restart each; README: After replay): a running "
            "instance picks the new stamps up only when it (re)starts or takes a partition "
            "over, and until then fires these records at their old expiries"
        )
    return 0

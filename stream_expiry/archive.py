"""Archive before purge: every stamp on ``expiry.stamped`` kept in gzip JSON-lines files.

``stream-expiry archive --dir DIR`` is a consumer group (default ``stream-expiry-archive``)
on ``expiry.stamped``. Rules it keeps (CONTRACT "Archive before purge"):

* Layout: ``DIR/<org>/<YYYY-MM-DD>.jsonl.gz`` by the stamp's ``created_at`` (UTC), one JSON
  line per stamp: ``{"key", "partition", "offset", "stamp"}`` where ``stamp`` is the value as
  it was on the topic. ``<org>`` is the org percent-encoded so that any org is one safe file
  name (:func:`org_dirname`). The nulls of explicit deletes (erasure requests) are erasure
  markers, ``{"key", "partition", "offset", "erased_at"}``, in
  ``DIR/<org>/erasures.jsonl.gz``. The null of an expiry (header ``expiry-reason: ttl``)
  erases nothing: keeping what expired is what the archive is for. A null without that
  header (written before it existed) is taken for an erasure, the side of privacy.
* Durable before committed: a batch is appended as one new gzip member per file (concatenated
  members are a valid gzip file), each file is fsynced, a new file's directory too, and only
  then are the batch's offsets committed. A crash between the two re-delivers the batch, so a
  line may appear twice: readers take, per key, the line with the highest offset.
* Erasure: an explicit delete reaches ``expiry.stamped`` as a null, so it reaches the archive
  as a marker; ``stream-expiry archive purge --dir DIR`` (:func:`purge`) rewrites the files
  without the lines that a marker erases (same key, lower offset on the same partition).
  An erasure a legal hold deferred, of a life the record has since followed with another,
  has no null (it would compact the new life away): the archive also reads
  ``expiry.tombstones`` and keeps every ``explicit`` tombstone as a *life marker*,
  ``{"key", "until", "expires_at", "topic", "partition", "offset", "erased_at"}``, where
  ``until`` is where the erasure ended the life (its ``expiry-deleted-at`` header) and
  ``expires_at`` the expiry that life had (the tombstone's, null when it had none); it
  erases the lines of that key whose stamp was created at or before ``until`` (or has no
  creation time), whatever their offset: the next life, created after the request, is kept.
* Markers are bounded (CONTRACT, "State, restore ...": what is kept about deleted records
  lives only as long as a re-delivered event could bring data back). A marker is needed
  only because data of an erased life can reach the archive after a purge, and only so:

  (a) its old stamps read again from ``expiry.stamped`` (the archive group reset, a batch
  re-delivered after a crash). A null follows the stamps it supersedes on their
  partition, so reading them again reads it again, and the marker comes back with it; a
  life marker is on another topic, read in no set order with the stamps, and the stamps it
  erases are compacted away at most ``segment`` + ``max_compaction_lag`` after they were
  superseded, which was at or before the erasure;
  (b) a create of that life re-delivered after the service pruned its own deletion
  marker (``marker_grace`` after the later of the erasure and the life's expiry, see
  :mod:`stream_expiry.state.store`): the service stamps it and tombstones it at once as
  already due (reason ``ttl``, which tells the archive to keep the data), and only the
  life marker (created at or before ``until``) erases it; the null's offset cannot.
  Before the service's marker goes, the service ignores such a create: nothing reaches the
  archive.

  So ``archive purge`` (:class:`MarkerTerms`) drops all the markers of a key once now is
  past the latest *end* among them (the later of ``erased_at``, ``until`` and
  ``expires_at``) plus the longer of ``marker_grace`` and that compaction bound, plus
  ``[archive] marker_margin`` (the archive's lag and the time to the next purge: what
  reached ``expiry.stamped`` before the bound must be archived and purged before the
  marker goes). A purge applies every marker before it drops any, so what a marker erases
  is gone even from the run that drops it. A marker without ``expires_at`` (a null; a life
  marker written before the field existed) ends at its erasure, as the service's does for
  a life with no expiry: for a life that would have expired after its erasure, such a
  marker goes before the service's own would (a create re-delivered in the margin after
  the service's marker went is then archived and kept).
* One writer at a time per directory: the archive and ``purge`` take an exclusive lock on
  ``DIR/.lock`` (``flock``) around every batch and every rewrite.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson
from aiokafka.errors import CommitFailedError, KafkaError

from stream_expiry import exits
from stream_expiry.codec import deleted_at_of, reason_of
from stream_expiry.config import Config
from stream_expiry.errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    StoreError,
)
from stream_expiry.health import Health
from stream_expiry.kafka import (
    committed_offsets,
    consumer,
    ensure_config_topics,
    topic_partitions,
)
from stream_expiry.kafka_settings import as_connection, member_liveness
from stream_expiry.logs import filtered
from stream_expiry.model import decode_key
from stream_expiry.outage import OUTAGE_RETRY_S, SessionOutage
from stream_expiry.parts import add_up
from stream_expiry.stalls import StallNote, Stalls
from stream_expiry.timeutil import InvalidTimestamp, format_ts, parse_ts

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence

    from aiokafka import AIOKafkaConsumer

    from stream_expiry.holds import HoldBook
    from stream_expiry.kafka_settings import Brokers

__all__ = [
    "DEFAULT_GROUP",
    "ERASURES",
    "ArchiveWriter",
    "Entry",
    "LifeErasure",
    "MarkerTerms",
    "PurgeResult",
    "archived_offsets",
    "check_directory",
    "org_dirname",
    "purge",
    "read_lines",
    "run_archive",
    "serve_archive",
]

log = logging.getLogger("stream_expiry.archive")

DEFAULT_GROUP: Final = "stream-expiry-archive"
ERASURES: Final = "erasures.jsonl.gz"
UNKNOWN_ORG: Final = "_unknown"  # a key that is not a record key of ours
UNDATED: Final = "undated"  # a stamp without a readable created_at
STOP_TIMEOUT_S: Final = 10.0  # to leave the consumer group on the way out
# Probes in a row (5 s apart) that must find the broker unreachable before the session is
# closed: one probe whose answer was late (3 s: a busy broker or machine) or whose
# connection failed once closed it, left the group (a rebalance for the other members) and
# archived the uncommitted batch again, with the broker fine, while ``run`` only answered
# ``/readyz`` 503 until the next probe. Two add one probe's interval to an outage's notice.
LOST_AFTER_PROBES: Final = 2
_MAX_NAME: Final = 200  # bytes; file systems allow 255
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_EXPLICIT: Final = b'"reason":"explicit"'


def org_dirname(org: str) -> str:
    """A file name for ``org``: every byte but ASCII letters, digits, ``_`` and ``-`` as
    ``%XX`` (so ``.``, ``..`` and ``/`` can never name another directory), injective; a name
    that would exceed 200 bytes is cut and ends with a hash of the whole org."""
    name = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), org)
    if len(name) > _MAX_NAME:
        digest = hashlib.blake2b(org.encode(), digest_size=16).hexdigest()
        name = f"{name[: _MAX_NAME - 34]}~{digest}"
    return name or "%"


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of ``expiry.stamped`` as the archive sees it."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp_ms: int
    reason: str | None = None  # the expiry-reason header (a null's)
    tombstones_topic: str | None = None  # set for a message of expiry.tombstones
    deleted_at: int | None = None  # the expiry-deleted-at header (a tombstone's)

    @property
    def expired(self) -> bool:
        """A null that an expiry wrote: no erasure, nothing to write."""
        return self.value is None and self.reason == "ttl"

    def erasure(self) -> LifeErasure | None:
        """What an ``explicit`` tombstone erases; None for any other message (a ``ttl``
        tombstone, a stamp, a null) or an explicit one that says neither where the life
        ended nor when it was created."""
        value = self.value
        # orjson writes compact JSON: most tombstones (ttl) are skipped without parsing.
        if self.tombstones_topic is None or value is None or _EXPLICIT not in value:
            return None
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(body, dict) or body.get("reason") != "explicit":
            return None
        expires = _ts_or_none(body.get("expires_at"))
        if self.deleted_at is not None:
            return LifeErasure(self.deleted_at, expires)
        created = _ts_or_none(body.get("created_at"))
        return None if created is None else LifeErasure(created, expires)


@dataclass(frozen=True, slots=True)
class LifeErasure:
    """What an ``explicit`` tombstone says of the life it ends: ``until``, where the erasure
    ended it (its ``expiry-deleted-at`` header; without it, as written before it existed,
    the life's ``created_at``), so the life's lines are those created at or before it; and
    ``expires_at``, the expiry the life had (None: none, or the tombstone names no life),
    which bounds how long its marker is needed (module docstring)."""

    until: int
    expires_at: int | None


def _ts_or_none(value: object) -> int | None:
    """A timestamp of a message's body; None when absent or unreadable."""
    try:
        return None if value is None else parse_ts(value)
    except InvalidTimestamp:
        return None


def _org_of(key: str) -> str:
    try:
        return decode_key(key).org
    except ValueError:
        return UNKNOWN_ORG


def _place_life_marker(entry: Entry, erased: LifeErasure) -> tuple[str, bytes]:
    """(file path relative to DIR, JSON line) of an ``explicit`` tombstone's life marker.
    ``expires_at`` is new beside the older fields: a version before it reads the line as
    it did and ignores the field."""
    key = (entry.key or b"").decode("utf-8", "replace")
    expires = erased.expires_at
    marker = {
        "key": key,
        "until": format_ts(erased.until),
        "expires_at": None if expires is None else format_ts(expires),
        "topic": entry.tombstones_topic,
        "partition": entry.partition,
        "offset": entry.offset,
        "erased_at": format_ts(entry.timestamp_ms),
    }
    return f"{org_dirname(_org_of(key))}/{ERASURES}", orjson.dumps(marker) + b"\n"


def _place(entry: Entry) -> tuple[str, bytes]:
    """(file path relative to DIR, JSON line) of one message of ``expiry.stamped`` (not an
    :attr:`Entry.expired`)."""
    key = (entry.key or b"").decode("utf-8", "replace")
    org = _org_of(key)
    head: dict[str, Any] = {"key": key, "partition": entry.partition, "offset": entry.offset}
    if entry.value is None:
        head["erased_at"] = format_ts(entry.timestamp_ms)
        return f"{org_dirname(org)}/{ERASURES}", orjson.dumps(head) + b"\n"
    day = UNDATED
    try:
        stamp = orjson.loads(entry.value)
        created = stamp.get("created_at") if isinstance(stamp, dict) else None
        if isinstance(created, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", created[:10]):
            day = created[:10]
    except orjson.JSONDecodeError:
        stamp = entry.value.decode("utf-8", "replace")  # kept as text: nothing is dropped
    head["stamp"] = stamp
    try:
        line = orjson.dumps(head)
    except TypeError:  # nested deeper than orjson writes (254 levels): kept as text
        head["stamp"] = entry.value.decode("utf-8", "replace")
        line = orjson.dumps(head)
    return f"{org_dirname(org)}/{day}.jsonl.gz", line + b"\n"


# The archive holds the records' data: its directories and files are the owner's only
# (0700, 0600), not the 0755 and 0644 the usual umask gives, readable by every user of the
# machine. Files and directories made by earlier versions keep their permissions.
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600


def _open_private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CREAT, _FILE_MODE)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Exclusive lock on DIR/.lock: the archive's batches and ``purge`` never interleave."""
    fd = _open_private(os.path.join(directory, ".lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@dataclass
class ArchiveWriter:
    """Appends batches of entries durably under ``directory`` (blocking file IO)."""

    directory: str
    lines: int = 0
    erasures: int = 0  # markers: the nulls of explicit deletes and the life markers
    expiries: int = 0  # nulls of expiries: read, and nothing written
    tombstones: int = 0  # messages of expiry.tombstones read (most of them write nothing)
    batches: int = 0
    files: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        try:
            os.makedirs(self.directory, mode=_DIR_MODE, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the archive directory {self.directory!r}: {exc}"
            raise StoreError(msg) from exc

    def write(self, entries: Sequence[Entry]) -> None:
        """Append every entry and fsync; when this returns, the batch survives a crash."""
        grouped: dict[str, list[bytes]] = {}
        for e in entries:
            if e.tombstones_topic is not None:
                self.tombstones += 1
                erased = e.erasure()
                if erased is None:
                    continue
                rel, line = _place_life_marker(e, erased)
                self.erasures += 1
            elif e.expired:
                self.expiries += 1
                continue
            else:
                rel, line = _place(e)
                if e.value is None:
                    self.erasures += 1
                else:
                    self.lines += 1
            grouped.setdefault(rel, []).append(line)
        try:
            with _locked(self.directory):
                for rel, lines in grouped.items():
                    self._append(rel, b"".join(lines))
        except OSError as exc:
            raise StoreError(f"cannot write the archive in {self.directory!r}: {exc}") from exc
        self.batches += 1

    def _append(self, rel: str, data: bytes) -> None:
        path = os.path.join(self.directory, rel)
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=_DIR_MODE, exist_ok=True)
            _fsync_dir(self.directory)  # the org directory's entry is durable
        new = not os.path.exists(path)
        with open(_open_private(path, os.O_WRONLY | os.O_APPEND), "ab") as f:
            f.write(gzip.compress(data, compresslevel=6, mtime=0))  # one more gzip member
            f.flush()
            os.fsync(f.fileno())
        if new:
            _fsync_dir(parent)  # the file's entry is durable
        self.files.add(rel)


async def run_archive(
    bootstrap_servers: Brokers,
    directory: str,
    *,
    topic: str = "expiry.stamped",
    tombstones: str = "expiry.tombstones",
    group_id: str = DEFAULT_GROUP,
    stop: anyio.Event | None = None,
    max_records: int = 5000,
    after_write: Callable[[], Awaitable[None]] | None = None,
    session_ms: int = Config.session_timeout_ms,
    stalls: Stalls | None = None,
    health: Health | None = None,
    retry_s: float = OUTAGE_RETRY_S,
    **consumer_options: Any,
) -> ArchiveWriter:
    """Archive ``topic`` (the stamps) and the erasures on ``tombstones`` until ``stop`` is
    set (or forever): write a batch, fsync, then commit.

    A broker that cannot be reached at the start is an error (status 3); one lost once a
    session has started is waited out (:mod:`stream_expiry.outage`): the session is closed
    and started again every ``retry_s`` seconds, and what was not committed is read and
    written again (a line twice, as after a crash: readers take the highest offset).
    Before, an outage went by without a word (the client waits for the broker on its own,
    a commit too) and a Kafka error that reached it ended it, while with ``[archive]
    required`` the service's purges waited on it. ``stalls``: a failure just after the
    process did not run is the stall's, no outage. ``health``: what the broker probe finds
    (:func:`~stream_expiry.endpoints.watch_connection`, run by the caller); the broker
    found unreachable by :data:`LOST_AFTER_PROBES` probes in a row ends the session as a
    Kafka failure does.

    ``after_write`` runs between the durable write and the commit (tests use it to die there).
    ``session_ms``: the group's session (``[service] session_timeout``, see
    :func:`_group_options`); ``consumer_options`` beat it.
    """
    writer = ArchiveWriter(directory)
    stop = stop or anyio.Event()
    session = _Session(
        bootstrap_servers,
        (topic, tombstones),
        group_id,
        _group_options(session_ms, consumer_options),
        SessionOutage(stalls, _REDONE, retry_s=retry_s, logger=log),
        health,
    )
    log.info(
        "archiving %s, and the erasures on %s, into %s (group %s)",
        topic,
        tombstones,
        directory,
        group_id,
    )
    while True:
        try:
            await session.run(writer, stop, max_records, after_write)
            return writer
        except BrokerError as exc:
            if session.started and await session.outage.wait_out(exc, stop):
                continue
            if session.started and session.outage.stopped_in(exc, stop):
                return writer
            raise


_REDONE: Final = "what was not committed is archived again"


@dataclass
class _Session:
    """One consumer of the archive's group at a time, made again after a broker outage.
    ``started``: a consumer has been made once (a failure before is the start's)."""

    brokers: Brokers
    topics: tuple[str, str]  # the stamps', the tombstones'
    group_id: str
    options: dict[str, Any]
    outage: SessionOutage
    health: Health | None  # the broker probe's findings (None: not probed)
    started: bool = False

    async def run(
        self,
        writer: ArchiveWriter,
        stop: anyio.Event,
        max_records: int,
        after_write: Callable[[], Awaitable[None]] | None,
    ) -> None:
        """Until ``stop``: read a batch, write it durably, then commit its offsets. Raises
        :class:`BrokerUnavailableError` when the broker probe finds the broker gone
        (:data:`LOST_AFTER_PROBES` probes in a row): the
        client's own retries hide an outage (a fetch returns nothing, a commit waits for
        the broker's return), and a cut of minutes went by without a word."""
        topic, tombstones = self.topics
        stack = contextlib.AsyncExitStack()
        lost: list[str] = []
        try:
            cons = await stack.enter_async_context(
                consumer(self.brokers, topic, tombstones, group_id=self.group_id, **self.options)
            )
            self.started = True
            self.outage.answered()  # the consumer's bootstrap had the broker's metadata
            async with anyio.create_task_group() as tg:
                health = self.health
                if health is not None:
                    health.broker_reachable()  # as the consumer found it

                    async def watch() -> None:
                        lost.append(await health.broker_lost(LOST_AFTER_PROBES))
                        tg.cancel_scope.cancel()

                    tg.start_soon(watch)
                while not stop.is_set():
                    try:
                        batch = await cons.getmany(timeout_ms=200, max_records=max_records)
                    except KafkaError as exc:
                        msg = f"cannot read {topic} for the archive: {exc!r}"
                        raise BrokerError(msg) from exc
                    if batch:
                        await _archive_batch(cons, writer, batch, tombstones, after_write)
                tg.cancel_scope.cancel()
        finally:
            # Even when cancelled, leave the group (shielded, bounded): a member that
            # vanishes without leaving holds its partitions until the session times out.
            with anyio.move_on_after(STOP_TIMEOUT_S, shield=True):
                await stack.aclose()
        if lost:
            raise BrokerUnavailableError(f"Kafka unreachable: {lost[0]}")


async def _archive_batch(
    cons: AIOKafkaConsumer,
    writer: ArchiveWriter,
    batch: Mapping[Any, list[Any]],
    tombstones: str,
    after_write: Callable[[], Awaitable[None]] | None,
) -> None:
    """Write ``batch`` durably, then commit its offsets. A commit the broker fails leaves
    the batch to be read and written again by the next session."""
    entries = [
        Entry(
            r.key,
            r.value,
            tp.partition,
            r.offset,
            r.timestamp,
            reason_of(r.headers),
            tombstones if tp.topic == tombstones else None,
            deleted_at_of(r.headers),
        )
        for tp, records in batch.items()
        for r in records
    ]
    await anyio.to_thread.run_sync(writer.write, entries)
    if after_write is not None:
        await after_write()
    offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
    await _commit_mine(cons, offsets)


async def _commit_mine(cons: AIOKafkaConsumer, offsets: Mapping[Any, int]) -> None:
    """Commit the offsets of the partitions the archive still has; those a rebalance took
    while the batch was written are left to their new owner, which reads them again from
    the last commit and archives them again (a line twice, as after a crash: readers take
    the highest offset). aiokafka refuses a commit that names a partition not assigned
    (``IllegalStateError``, no retrying cures it): the archive stopped with status 3 at an
    instance joining or leaving its group, a group's normal life (as the sinks do,
    :meth:`~stream_expiry.sinks.framework.Sink._finish`)."""
    assigned = cons.assignment()
    mine = {tp: o for tp, o in offsets.items() if tp in assigned}
    if len(mine) < len(offsets):
        log.info(
            "the archive's group rebalanced while a batch was written: %s left to their "
            "new owner, which archives those messages again (a line may repeat)",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(set(offsets) - set(mine))),
        )
    if not mine:
        return
    try:
        await cons.commit(mine)
    except CommitFailedError as exc:  # a rebalance took the partitions: re-delivered
        log.warning("archive commit failed after a rebalance (lines may repeat): %s", exc)
    except KafkaError as exc:
        raise BrokerError(f"cannot commit the archive's offsets: {exc!r}") from exc


def _group_options(session_ms: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The session and heartbeat of the service's group (``[service] session_timeout``),
    and ``overrides`` (a caller's consumer options) over them: an archive killed without
    leaving its group (SIGKILL, an OOM kill) holds its partitions, and the join of the
    archive restarted in its place, until its session runs out (aiokafka's default of
    10 s held a successor ~20 s on the test broker). The rebalance timeout stays
    aiokafka's, the session: a revocation waits for nothing here (a batch written and
    not committed is read again by its partitions' next owner)."""
    return {**member_liveness(session_ms), **overrides}


async def ensure_read_topics(brokers: Brokers, config: Config) -> None:
    """Create the stamped and tombstones topics of ``config`` where missing, as the service
    makes them (compacted, with its retention settings), and say so: the service writes
    them, so one missing is a typo in ``[topics]`` or an archive started before the service.
    Subscribed to unmade, they were created by the broker's auto-creation without a word
    and with its defaults (a trial): an ``expiry.stamped`` made so is not compacted, keeps
    stamps only for the broker's retention, and the service never alters a topic that
    exists."""
    t = config.topics
    created = await ensure_config_topics(brokers, config, (t.stamped, t.tombstones))
    for topic in created:
        log.warning(
            "created topic %s, which did not exist: the service writes it; check the name "
            "([topics] of --config) if the service runs already",
            topic,
        )


async def serve_archive(
    bootstrap_servers: Brokers,
    directory: str,
    *,
    topic: str,
    tombstones: str,
    group_id: str,
    session_ms: int,
    prepare: Callable[[], Awaitable[None]] | None = None,
    stalls: Stalls | None = None,
) -> int:
    """``stream-expiry archive``: archive until SIGINT or SIGTERM, then stop after the batch
    in hand is written and committed (a second signal stops at once: nothing is lost, the
    uncommitted batch is re-delivered). ``prepare`` runs first, under the same signals
    (:func:`ensure_read_topics`: run before them, a signal while it connected ended the
    command without a word). ``session_ms``: the group's session, the config's
    ``[service] session_timeout``.

    ``stalls``: the watch of the process' own pauses (a new one by default; a test's
    clocks), as ``run``, the sinks and ``rekey`` have it: a pause (SIGSTOP, a frozen VM) is
    said in one WARNING, and the Kafka client's errors just after it say they are the
    pause's. The archive serves no metrics, so the line is all there is; without it a
    paused archive, and the service's purges waiting on it, went unexplained, and the
    client's RequestTimedOutError on resume read as the broker's failure."""
    from stream_expiry.endpoints import watch_process  # the HTTP side is not the archive's

    stalls = stalls or Stalls()
    health = Health(stalls=stalls)
    stop = anyio.Event()
    writer: ArchiveWriter | None = None  # none when a second signal stops it while it starts
    with filtered(StallNote(stalls)):
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        if stop.is_set():
                            tg.cancel_scope.cancel()
                        stop.set()

            tg.start_soon(on_signals)
            watch_process(tg, stalls, health=health, conn=as_connection(bootstrap_servers))
            if prepare is not None:
                await prepare()
            writer = await run_archive(
                bootstrap_servers,
                directory,
                topic=topic,
                tombstones=tombstones,
                group_id=group_id,
                stop=stop,
                session_ms=session_ms,
                stalls=stalls,
                health=health,
            )
            tg.cancel_scope.cancel()
    if writer is None:
        log.info("archive stopped while it started (a second signal): nothing was written")
        return exits.INTERRUPTED
    log.info(
        "archive stopped: %d stamps and %d erasure markers in %d batches "
        "(%d expiries and %d tombstones read)",
        writer.lines,
        writer.erasures,
        writer.batches,
        writer.expiries,
        writer.tombstones,
    )
    return 0


async def archived_offsets(
    bootstrap_servers: Brokers, group_id: str = DEFAULT_GROUP, topic: str = "expiry.stamped"
) -> dict[int, int]:
    """The archive group's committed offset per partition of ``topic``: every stamp below it
    is durably archived. A partition never committed is absent (nothing archived there).

    For the service's ``[archive] required`` gating: a record whose latest stamp sits at
    offset ``o`` of partition ``p`` is archived once ``archived_offsets(...)[p] > o``.
    """
    try:
        async with consumer(bootstrap_servers, group_id=group_id) as cons:
            committed = await committed_offsets(cons, await topic_partitions(cons, [topic]))
    except KafkaError as exc:
        raise BrokerError(
            f"cannot read the committed offsets of group {group_id!r} at {bootstrap_servers}: "
            f"{exc!r}"
        ) from exc
    return {tp.partition: offset for tp, offset in committed.items() if offset is not None}


# -- reading and purging ---------------------------------------------------------------------


def read_lines(path: str) -> list[dict[str, Any]]:
    """Every line of one archive file (all its gzip members), parsed."""
    with gzip.open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


@dataclass
class PurgeResult:
    files_rewritten: int
    lines_removed: int
    lines_kept: int  # left in the rewritten files, not in those the purge did not touch
    markers_dropped: int = 0  # past their time (:class:`MarkerTerms`)
    markers_kept: int = 0
    lines_held: int = 0  # erased lines kept because a legal hold matches their record


@dataclass(frozen=True, slots=True)
class MarkerTerms:
    """How long ``archive purge`` keeps erasure markers after their end (module docstring):
    the longer of ``grace_ms`` (the service's ``marker_grace``: a re-delivered create
    reaches the archive only after the service's own marker is gone) and ``compaction_ms``
    (``expiry.stamped``'s ``segment`` + ``max_compaction_lag``: an erased stamp can be read
    again until then), plus ``margin_ms`` (``[archive] marker_margin``: the archive's lag
    and the time to the next purge)."""

    grace_ms: int
    compaction_ms: int
    margin_ms: int

    @classmethod
    def of(cls, config: Config) -> MarkerTerms:
        """The terms of a configuration (the service's, for ``marker_grace`` to match)."""
        topics = config.topic_settings
        return cls(
            grace_ms=config.marker_grace_ms,
            compaction_ms=topics.segment_ms + topics.max_compaction_lag_ms,
            margin_ms=config.archive.marker_margin_ms,
        )

    def drop_at(self, end_ms: int) -> int:
        """When the markers of a key whose latest end is ``end_ms`` may go."""
        return end_ms + max(self.grace_ms, self.compaction_ms) + self.margin_ms


@dataclass
class _Markers:
    """One org's erasure markers: per key, the latest null's place on ``expiry.stamped``,
    the latest end (epoch ms) of the lives erased by a tombstone (life markers), and the
    latest end of any marker (when they may all go: :class:`MarkerTerms`)."""

    nulls: dict[str, tuple[int, int]] = field(default_factory=dict)
    until: dict[str, int] = field(default_factory=dict)
    ends: dict[str, int] = field(default_factory=dict)
    unbounded: set[str] = field(default_factory=set)  # a marker without a readable time
    lines: list[dict[str, Any]] = field(default_factory=list)

    def add(self, marker: dict[str, Any]) -> None:
        self.lines.append(marker)
        key = marker["key"]
        self._add_end(key, marker)
        if "until" in marker:
            with contextlib.suppress(InvalidTimestamp):
                until = parse_ts(marker["until"])
                self.until[key] = max(until, self.until.get(key, until))
            return
        old = self.nulls.get(key)
        if old is None or marker["offset"] > old[1]:
            self.nulls[key] = (marker["partition"], marker["offset"])

    def _add_end(self, key: str, marker: dict[str, Any]) -> None:
        """The marker's end: the later of its erasure, where it ended the life and that
        life's expiry. One whose erasure time cannot be read has no end: its key's markers
        are kept (a hand-edited file; the archive always writes it)."""
        erased = _ts_or_none(marker.get("erased_at"))
        if erased is None:
            self.unbounded.add(key)
            return
        times = (erased, _ts_or_none(marker.get("until")), _ts_or_none(marker.get("expires_at")))
        end = max(t for t in times if t is not None)
        self.ends[key] = max(end, self.ends.get(key, end))

    def due(self, terms: MarkerTerms, now_ms: int) -> set[str]:
        """The keys whose markers may all go now."""
        return {
            key
            for key, end in self.ends.items()
            if key not in self.unbounded and now_ms > terms.drop_at(end)
        }

    def erase(self, line: dict[str, Any]) -> bool:
        key = line.get("key", "")
        until = self.until.get(key)
        if until is not None:
            created = _created_at(line)
            if created is None or created <= until:
                return True
        mark = self.nulls.get(key)
        if mark is None:
            return False
        partition, offset = mark
        # A later life of the record (a create after the delete) sits at a higher offset of
        # the same partition and is kept; another partition (the topic was repartitioned)
        # can't be ordered, and the erasure wins.
        return bool(line.get("partition") != partition or line.get("offset", -1) < offset)


def _created_at(line: dict[str, Any]) -> int | None:
    stamp = line.get("stamp")
    return _ts_or_none(stamp.get("created_at") if isinstance(stamp, dict) else None)


def _rewrite(path: str, keep: Iterable[dict[str, Any]]) -> None:
    tmp = f"{path}.purge-tmp"
    # The rewritten file keeps the permissions of the one it replaces.
    mode = os.stat(path).st_mode & 0o777
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a crashed purge's, made with other permissions
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        f.write(gzip.compress(b"".join(orjson.dumps(x) + b"\n" for x in keep), mtime=0))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def check_directory(directory: str, *, existing: bool) -> None:
    """Refuse a ``--dir`` that cannot be the archive before anything else is done (``existing``:
    it must be there already, as for ``purge``). A regular file given as ``--dir`` was said
    to be "no archive directory" by ``purge``, only after the legal holds were read from
    Kafka, and "cannot create the archive directory ...: File exists" (status 4, after the
    topics were made) by ``run`` (a trial)."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        kind = "a file" if os.path.isfile(directory) else "not a directory"
        make = "" if existing else " (created if missing)"
        raise ConfigurationError(
            f"--dir {directory!r} is {kind}, not a directory: give --dir the archive's "
            f"directory{make}"
        )
    if existing and not os.path.isdir(directory):
        raise ConfigurationError(f"no archive directory {directory!r}; check --dir")


def purge(
    directory: str,
    terms: MarkerTerms | None = None,
    *,
    now_ms: int | None = None,
    holds: HoldBook | None = None,
) -> PurgeResult:
    """Rewrite every archive file of ``directory`` without the lines its erasure markers
    erase, then drop the markers past their time (``terms``: by default the default
    configuration's; ``now_ms``: by default the wall clock). Atomic per file (a temporary
    file, fsync, rename); the other markers are kept, so a later run also removes stamps
    re-delivered after this one.

    ``holds``: the active legal holds. An erased line of a record one of them matches is
    kept, and so are its record's markers, for a purge after the release: an erasure
    asked before a hold was placed reached the archive's purge after it, and removed what
    the hold keeps, perhaps its last copy (a trial). The service defers an erasure asked
    while a hold matches; this is the same rule, applied where the erasure lands late."""
    check_directory(directory, existing=True)
    terms = terms or MarkerTerms.of(Config())
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    orgs: list[PurgeResult] = []
    try:
        with _locked(directory):
            for org in sorted(os.listdir(directory)):
                org_path = os.path.join(directory, org)
                if os.path.isfile(os.path.join(org_path, ERASURES)):
                    orgs.append(_purge_org(org_path, terms, now, holds))
    except (OSError, gzip.BadGzipFile, orjson.JSONDecodeError, KeyError) as exc:
        raise StoreError(f"cannot purge the archive in {directory!r}: {exc}") from exc
    return add_up(orgs, PurgeResult(0, 0, 0))


def _purge_org(
    org_path: str, terms: MarkerTerms, now_ms: int, holds: HoldBook | None
) -> PurgeResult:
    """Purge one org's files with its markers, then drop those past their time."""
    markers = _Markers()
    for m in read_lines(os.path.join(org_path, ERASURES)):
        markers.add(m)
    rewritten = removed = kept = lines_held = 0
    held: set[str] = set()  # keys of erased lines a hold keeps
    for name in sorted(os.listdir(org_path)):
        if name == ERASURES or not name.endswith(".jsonl.gz"):
            continue
        path = os.path.join(org_path, name)
        lines = read_lines(path)
        keep = []
        for line in lines:
            if not markers.erase(line):
                keep.append(line)
            elif holds is not None and _held(line, holds):
                keep.append(line)
                held.add(line["key"])
                lines_held += 1
        if len(keep) < len(lines):
            # Counted in the files purged only: the summary says what is left in them. The
            # org's other files in the count read as "3 lines kept" of a purged file that
            # held 2 (a trial).
            kept += len(keep)
            removed += len(lines) - len(keep)
            _rewrite(path, keep)
            rewritten += 1
    dropped = _drop_markers(org_path, markers, terms, now_ms, held)
    return PurgeResult(rewritten, removed, kept, dropped, len(markers.lines) - dropped, lines_held)


def _held(line: dict[str, Any], holds: HoldBook) -> bool:
    """Whether an active hold matches the record of an archive line."""
    try:
        identity = decode_key(line["key"])
    except (KeyError, TypeError, ValueError):
        return False  # not a record's line: nothing a hold could name
    return bool(holds.holding(identity))


def _drop_markers(
    org_path: str, markers: _Markers, terms: MarkerTerms, now_ms: int, held: set[str]
) -> int:
    """Rewrite the org's markers without those past their time, only once the lines they
    erase are gone (a crash in between leaves them all for the next run; a hold keeps
    them, ``held``: their lines wait for its release); returns how many went. A file
    left with none is removed."""
    due = markers.due(terms, now_ms) - held
    if not due:
        return 0
    keep = [m for m in markers.lines if m["key"] not in due]
    path = os.path.join(org_path, ERASURES)
    if keep:
        _rewrite(path, keep)
    else:
        os.unlink(path)
        _fsync_dir(org_path)
    return len(markers.lines) - len(keep)

"""``stream-expiry sink sqlite|postgres``: run a downstream store from the command line.

The CLI calls :func:`add_sink_parser` on its sub-parsers; each sub-command sets ``func`` to
:func:`run_command`, which runs the sink until SIGINT or SIGTERM, lets the batch in flight
commit, and returns the exit status every command uses (:mod:`stream_expiry.exits`: 0 after
a clean stop, 2 on unusable options, 3 when Kafka is unreachable, 4 on a store error).
With ``--metrics-port`` it serves ``/metrics``, ``/healthz`` and ``/readyz`` like ``run``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from functools import partial
from typing import TYPE_CHECKING, Final

import anyio

from stream_expiry import exits
from stream_expiry.cliargs import (
    BOOTSTRAP_ENV,
    WholeWords,
    add_log_options,
    add_metrics_options,
    bootstrap_from,
    metrics_host,
    metrics_port,
)
from stream_expiry.collection import tune_gc
from stream_expiry.config import load_config
from stream_expiry.durations import InvalidDuration, parse_duration, without_hint
from stream_expiry.endpoints import open_listener, serve_http, watch_process
from stream_expiry.errors import (
    BrokerError,
    ConfigurationError,
    StoreError,
    StreamExpiryError,
    suggestion,
)
from stream_expiry.health import Health
from stream_expiry.instances import sink_group
from stream_expiry.kafka import close_clients_by
from stream_expiry.kafka_settings import security_from_environment
from stream_expiry.key_template import KeyTemplate
from stream_expiry.logs import counted, filtered, say_failure
from stream_expiry.metrics import SinkMetrics
from stream_expiry.sinks.dsn import has_password
from stream_expiry.sinks.framework import (
    DEFAULT_AUDIT,
    DEFAULT_HOLDS,
    DEFAULT_RECEIPTS,
    DEFAULT_STAMPED,
    DEFAULT_TOMBSTONES,
    BatchReport,
    Outage,
    Sink,
    SinkConfig,
)
from stream_expiry.sinks.postgres import DEFAULT_DSN, DEFAULT_PARALLEL, PostgresStore
from stream_expiry.sinks.sqlite import SQLiteStore, missing_directory, sqlite_file_in
from stream_expiry.stalls import StallNote, Stalls
from stream_expiry.stopping import STOP_GRACE_S, stop_on_signals

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from stream_expiry.config import Topics
    from stream_expiry.sinks.store import Store

__all__ = ["add_sink_parser", "build_sink", "run_command"]

log = logging.getLogger("stream_expiry.sinks.command")

PROGRESS_EVERY_S: Final = 10.0
SLOW_BATCH_S: Final = 30.0  # a store transaction this long is warned of (_Progress)


def _category_topic(text: str) -> tuple[str, str]:
    category, sep, topic = text.partition("=")
    if not sep or not category or not topic:
        raise argparse.ArgumentTypeError(f"expected CATEGORY=TOPIC, got {text!r}")
    return category, topic


def _topic_template(text: str) -> tuple[str, KeyTemplate]:
    topic, sep, template = text.partition("=")
    if not sep or not topic or not template:
        raise argparse.ArgumentTypeError(f"expected TOPIC=TEMPLATE, got {text!r}")
    try:
        return topic, KeyTemplate(template)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    """A sweep interval: positive and finite (``nan`` and ``inf`` are numbers to ``float``)."""
    value = _number_of_seconds(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _grace_seconds(text: str) -> float:
    """A sweep grace or a marker grace: 0 or more, finite. A negative grace would sweep
    rows before they expire (early deletion from a typo), and ``nan`` or ``inf`` would fail
    later with a traceback instead of here with a line that names the option."""
    return _not_negative(_number_of_seconds(text), text)


def _not_negative(seconds: float, text: str) -> float:
    """``seconds`` if 0 or more and finite, else the option's error naming ``text``."""
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text!r}")
    return seconds


def _number_of_seconds(text: str) -> float:
    """Seconds, as a bare number (the config file's bare numbers are minutes: these
    options always said SECONDS), or a duration with a unit (``30s``, ``5m``, ``7d``):
    ``--marker-grace 7d`` was taken and ``--sweep-grace 1m`` refused (a trial)."""
    try:
        return float(text)
    except ValueError:
        try:
            return parse_duration(text) / 1000
        except InvalidDuration as exc:
            raise argparse.ArgumentTypeError(
                f"{without_hint(exc)}; expected seconds as a number, or a number with a unit "
                's, m, h, d, w, mo, y (e.g. "90s", "7d")'
            ) from None


def _common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    kafka = p.add_argument_group("Kafka")
    kafka.add_argument(
        "--config",
        metavar="FILE",
        help="the service's config file: its bootstrap_servers, [topics] and [kafka] (TLS, "
        "SASL; also from STREAM_EXPIRY_KAFKA_* variables) are the defaults, its [service] "
        "session_timeout is the group's session (else STREAM_EXPIRY_SERVICE_SESSION_TIMEOUT, "
        "else 6 s), and its [archive] required makes the sweep wait for the archive",
    )
    kafka.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help=f"Kafka brokers (default: the config file's, else ${BOOTSTRAP_ENV})",
    )
    kafka.add_argument(
        "--group-id",
        help="consumer group; run every instance of one store with the same group "
        "(default: stream-expiry-sink-NAME)",
    )
    kafka.add_argument(
        "--stamped-topic", help=f"default: the config file's, else {DEFAULT_STAMPED}"
    )
    kafka.add_argument(
        "--tombstones-topic", help=f"default: the config file's, else {DEFAULT_TOMBSTONES}"
    )
    kafka.add_argument(
        "--holds-topic",
        help="the legal holds the sweep spares (read only when --sweep-interval is set; "
        f"default: the config file's, else {DEFAULT_HOLDS})",
    )
    kafka.add_argument(
        "--audit-topic",
        help="the service's audit trail, which only holds write: a sweep's start stops on a "
        "holds topic that has never had a message while it has entries (read only when "
        f"--sweep-interval is set; default: the config file's, else {DEFAULT_AUDIT})",
    )
    kafka.add_argument(
        "--receipts-topic",
        help="where deletion receipts are published; an empty value keeps them in the "
        f"store only (default: the config file's, else {DEFAULT_RECEIPTS})",
    )
    kafka.add_argument(
        "--compacted",
        metavar="CATEGORY=TOPIC",
        type=_category_topic,
        action="append",
        default=[],
        help="also delete records of CATEGORY from the compacted topic TOPIC, by producing "
        "a null value under the record's key there, to the partition Kafka's default "
        "partitioner picks (repeatable; adds to the config file's [sink.compacted])",
    )
    kafka.add_argument(
        "--compacted-key",
        metavar="TOPIC=TEMPLATE",
        type=_topic_template,
        action="append",
        default=[],
        help="the key TOPIC gives a record, e.g. '{org}:{bot}:{record_id}' (placeholders "
        "{org} {bot} {env} {category} {record_id} {key}); default: our record key "
        "(repeatable)",
    )
    kafka.add_argument(
        "--batch-size",
        type=int,
        default=5000,
        help="messages per store transaction at most; fewer when fewer are waiting "
        "(default: %(default)s)",
    )
    store = p.add_argument_group("store")
    store.add_argument(
        "--name",
        help="the store's name in its receipts (default: the store type)",
    )
    store.add_argument(
        "--table-prefix",
        default="expiry_",
        help="prefix of the six tables the sink creates (records, held_lives, deletions, "
        "receipts, receipts_outbox, pruned; default: %(default)s)",
    )
    store.add_argument(
        "--sweep-interval",
        metavar="SECONDS",
        type=_seconds,
        help="turn on the safety-net sweep: every SECONDS (or a duration: 30s, 5m), delete rows past their expiry "
        "whose tombstone never came, with a receipt of reason 'sweep', except rows a legal "
        "hold keeps (default: off)",
    )
    store.add_argument(
        "--sweep-grace",
        metavar="SECONDS",
        type=_grace_seconds,
        default=60.0,
        help="how long past expires_at the sweep waits for the real tombstone: seconds, or a "
        "duration such as 2m (default: %(default)s)",
    )
    store.add_argument(
        "--marker-grace",
        metavar="SECONDS",
        type=_grace_seconds,
        help="how long the store remembers a deleted record (its deletion marker, so that a "
        "late stamp of it is not written back) after the later of its deletion and the "
        "expiry the deleted life had, counted from what the sink has read; seconds, or a "
        "duration such as 7d (default: the config file's [service] marker_grace, as the "
        "service keeps its own markers, else 7 days)",
    )
    store.add_argument(
        "--archive-required",
        action="store_true",
        help="the sweep deletes only rows whose stamp the archive has written, as the "
        "service purges with [archive] required (on whenever --config, or "
        "STREAM_EXPIRY_ARCHIVE_REQUIRED, says required = true; the archive's group is "
        "[archive] group_id)",
    )
    ops = p.add_argument_group("operations")
    add_metrics_options(ops)
    add_log_options(p)
    return p


def add_sink_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sink`` with the sub-commands ``sqlite`` and ``postgres``."""
    sink = subparsers.add_parser(
        "sink",
        help="run a downstream store that applies stamps and tombstones",
        description="Consume expiry.stamped and expiry.tombstones into a store, delete what "
        "the tombstones name (idempotently, in whatever order they arrive), and keep a "
        "deletion receipt for each deletion. Stops cleanly on SIGINT or SIGTERM.",
    )
    stores = sink.add_subparsers(dest="sink_store", metavar="STORE", required=True)
    common = _common_options()
    sqlite = stores.add_parser(
        "sqlite",
        parents=[common],
        help="a SQLite file (WAL mode)",
        description="Run the sink into a SQLite database file, created if missing (its "
        "directory must exist). Give it the service's config, so that its topics, Kafka "
        "security and marker grace are the service's. Example: stream-expiry sink sqlite "
        "--config expiry.toml --path /var/lib/expiry-sink/sink.db --sweep-interval 5m",
        formatter_class=WholeWords,
    )
    sqlite.add_argument("--path", required=True, metavar="FILE", help="the SQLite database file")
    sqlite.set_defaults(func=run_command)
    pg = stores.add_parser(
        "postgres",
        parents=[common],
        help="a PostgreSQL database",
        description="Run the sink into PostgreSQL; the schema and tables are created if "
        "missing. Give it the service's config, so that its topics, Kafka security and "
        "marker grace are the service's, and the password in PGPASSWORD, not in the DSN "
        "(ps shows a command line). Example: stream-expiry sink postgres --config "
        "expiry.toml --dsn postgresql://expiry@db:5432/expiry --schema expiry",
        formatter_class=WholeWords,
    )
    pg.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
        help="libpq connection URI, or key=value pairs ('host=db dbname=app user=sink'; "
        "the keys asyncpg takes: host, port, dbname, user, password, sslmode and the other "
        "ssl* keys, passfile, service, target_session_attrs, application_name); "
        "default: %(default)s",
    )
    pg.add_argument(
        "--schema", default="public", help="schema of the tables (default: %(default)s)"
    )
    pg.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        metavar="N",
        help="transactions each batch is split into, by record, run at once on N "
        "connections: one's statements execute while the sink prepares another's "
        "(default: %(default)s; 1 for one transaction per batch)",
    )
    pg.set_defaults(func=run_command)


def build_sink(
    args: argparse.Namespace, *, on_batch: Callable[[BatchReport], object] | None = None
) -> Sink:
    """The store and sink the parsed options describe; raises ConfigurationError if unusable."""
    if args.sink_store == "sqlite":
        _check_sqlite_path(args.path)
    # All defaults without --config; the STREAM_EXPIRY_* variables beat the file.
    service_config = load_config(args.config, environ=os.environ)
    topics = service_config.topics
    bootstrap = bootstrap_from(args, service_config)
    if args.batch_size < 1:
        raise ConfigurationError(f"--batch-size must be at least 1, got {args.batch_size}")
    compacted: dict[str, str] = {}
    templates: dict[str, KeyTemplate] = {}
    for entry in service_config.sink.compacted:
        compacted.update(dict.fromkeys(entry.categories, entry.topic))
        if entry.key is not None:
            templates[entry.topic] = entry.key
    for category, topic in args.compacted:
        if category not in service_config.categories:
            raise ConfigurationError(
                f"--compacted {category}={topic}: {category!r} is not a configured category "
                f"({', '.join(service_config.categories)}), so nothing would ever be deleted "
                f"from {topic}{suggestion(category, service_config.categories)}"
            )
        compacted[category] = topic
    templates.update(dict(args.compacted_key))
    unused = sorted(set(templates) - set(compacted.values()))
    if unused:
        raise ConfigurationError(
            f"--compacted-key names topic(s) {', '.join(unused)} that no --compacted "
            "CATEGORY=TOPIC (or [sink.compacted]) deletes from"
        )
    store: Store
    if args.sink_store == "sqlite":
        store = SQLiteStore(args.path, name=args.name or "sqlite", table_prefix=args.table_prefix)
    else:
        if has_password(args.dsn):
            log.warning(
                "the --dsn holds a password, which every user of this machine can read on "
                "the command line (ps); give it in PGPASSWORD (or a passfile) instead"
            )
        store = PostgresStore(
            args.dsn,
            name=args.name or "postgres",
            schema=args.schema,
            table_prefix=args.table_prefix,
            parallel=args.parallel,
        )
    stamped = args.stamped_topic or topics.stamped
    tombstones = args.tombstones_topic or topics.tombstones
    receipts = topics.receipts if args.receipts_topic is None else args.receipts_topic or None
    holds = args.holds_topic or topics.holds
    audit = args.audit_topic or topics.audit
    check_sink_topics(topics, stamped, tombstones, receipts, holds, audit, compacted)
    config = SinkConfig(
        bootstrap_servers=bootstrap,
        group_id=args.group_id or sink_group(store.name),
        stamped_topic=stamped,
        tombstones_topic=tombstones,
        receipts_topic=receipts,
        compacted=compacted,
        key_templates=templates,
        sweep_interval_s=args.sweep_interval,
        sweep_grace_s=args.sweep_grace,
        # The service's grace unless told otherwise: its markers and the store's go alike.
        marker_grace_s=(
            service_config.marker_grace_ms / 1000
            if args.marker_grace is None
            else args.marker_grace
        ),
        holds_topic=holds,
        audit_topic=audit,
        # What the service waits for, the sweep waits for: see SinkConfig.archive_group.
        archive_group=(
            service_config.archive.group_id
            if service_config.archive.required or args.archive_required
            else None
        ),
        batch_size=args.batch_size,
        sliding=service_config.sliding,
        # The service's group session: a sink killed holds its successor until it ends.
        session_timeout_ms=service_config.session_timeout_ms,
        security=security_from_environment(service_config.kafka, os.environ),
        topic_settings=service_config.topic_settings,
    )
    return Sink(store, config, on_batch=on_batch)


def _check_sqlite_path(path: str) -> None:
    """Refuse a directory as ``--path``, or a file in a directory that is missing, before
    Kafka is asked anything: SQLite said only "unable to open database file" of either, and
    the sink stopped with status 4, a store that failed, for what the user gave wrong (two
    trials)."""
    if os.path.isdir(path):
        raise ConfigurationError(
            f"--path {path} is a directory, not a SQLite database file: give --path a file, "
            f"e.g. {sqlite_file_in(path)} (created if missing)"
        )
    missing = missing_directory(path)
    if missing is not None:
        raise ConfigurationError(
            f"--path {path}: {missing}; the database file is created if missing, its "
            "directory is not"
        )


def check_sink_topics(
    topics: Topics,
    stamped: str,
    tombstones: str,
    receipts: str | None,
    holds: str,
    audit: str,
    compacted: Mapping[str, str],
) -> None:
    """Refuse a sink whose topics mix roles: one topic for two of the sink's own roles, or
    one of its topics that the service's config (``--config``, else the defaults) gives
    another role. ``--receipts-topic expiry.tombstones`` had the sink publish its receipts
    among the tombstones, which every other sink and consumer then read as malformed
    tombstones; ``--stamped-topic expiry.tombstones`` read the tombstones twice and no
    stamp; ``--stamped-topic errors`` warned once per input event: all without an error
    (a trial). The config refuses the same mix in its own ``[topics]``.

    A user's compacted topic may be one of the service's input topics (deleting the raw
    events of a record by compaction is a choice), and several categories may share one.
    """
    mine: list[tuple[str, str, str | None]] = [  # (topic, the sink's role, the service's)
        (stamped, "stamped topic (--stamped-topic)", "stamped"),
        (tombstones, "tombstones topic (--tombstones-topic)", "tombstones"),
        (holds, "holds topic (--holds-topic)", "holds"),
        (audit, "audit trail (--audit-topic)", "audit"),
    ]
    if receipts is not None:
        mine.append((receipts, "receipts topic (--receipts-topic)", "receipts"))
    for topic, categories in _by_topic(compacted).items():
        mine.append((topic, f"compacted topic of {categories} (--compacted)", None))
    services = topics.owned().items()
    for i, (topic, role, own) in enumerate(mine):
        for name, other in services:
            if other == topic and name != own:
                raise ConfigurationError(
                    f"the sink's {role} {topic!r} is the service's {name} topic ([topics] "
                    f"{name} of --config, or its default): give the sink the service's "
                    "topics, each in its role"
                )
        if own is not None and topic in topics.inputs:
            raise ConfigurationError(
                f"the sink's {role} {topic!r} is one of the service's input topics "
                "([topics] inputs of --config, or their default): give the sink the "
                "service's topics, each in its role"
            )
        for other, other_role, _ in mine[:i]:
            if other == topic:
                raise ConfigurationError(
                    f"the sink's {role} {topic!r} is also its {other_role}: give each its own topic"
                )


def _by_topic(compacted: Mapping[str, str]) -> dict[str, str]:
    """A user's compacted topic -> the categories deleted from it, as words."""
    grouped: dict[str, list[str]] = {}
    for category, topic in compacted.items():
        grouped.setdefault(topic, []).append(category)
    return {topic: ", ".join(categories) for topic, categories in grouped.items()}


class _Progress:
    """An info line at most every ten seconds while batches flow, so a person sees it work.

    It is said once a batch's store transaction committed, before that batch's receipts
    are published (the sink's order of writes): the receipts not yet published then are
    said as being published. The line said "receipts 7 (6 published)" after the last batch
    while nothing was left to publish a moment later (a user trial). ``publishes``: whether
    the sink has a receipts or a compacted topic; without one, receipts stay in the store."""

    def __init__(
        self,
        sink_metrics: SinkMetrics,
        counters: dict[str, int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = sink_metrics
        self.counters = counters
        self.publishes = True
        self._clock = clock
        self._last = clock()
        self._unsaid = False  # batches since the last line
        # The sink's transaction in flight, as :attr:`Sink.applying` says (its start on
        # ``clock``, its messages), and the start of the one warned of as slow.
        self.applying: Callable[[], tuple[float, int] | None] = lambda: None
        self._slow: float | None = None

    def __call__(self, report: BatchReport) -> None:
        self._metrics.on_batch(report)
        self._unsaid = True
        self.tick()

    def tick(self) -> None:
        """The line, if batches came since the last one and ten seconds have passed. Said
        on a batch alone, the last batches of a burst went unsaid until the next batch:
        a sink's log read "deleted 0" for minutes after it had deleted an erasure's rows
        (a trial); :func:`_say_progress` asks it every second, idle or not."""
        now = self._clock()
        self._watch_slow(now)
        if self._unsaid and now - self._last >= PROGRESS_EVERY_S:
            self._last, self._unsaid = now, False
            c = self.counters
            receipts, published = c["receipts_total"], c["published_total"]
            fate = (
                f"{published} published, {receipts - published} being published"
                if self.publishes
                else "kept in the store only"
            )
            log.info(
                "messages %d, written %d, deleted %d, swept %d, receipts %d (%s)",
                c["messages_total"], c["written_total"], c["deleted_total"],
                c["swept_total"], receipts, fate,
            )  # fmt: skip

    def _watch_slow(self, now: float) -> None:
        """A batch the store has been applying for :data:`SLOW_BATCH_S`, said once, and
        its end: nothing else is said while a sink waits on a lock."""
        applying = self.applying()
        if self._slow is not None and (applying is None or applying[0] != self._slow):
            log.info("the store finished the slow batch after %.0f s", now - self._slow)
            self._slow = None
        if applying is not None and self._slow is None and now - applying[0] >= SLOW_BATCH_S:
            self._slow, messages = applying
            log.warning(
                "the store has been applying one batch (%s) for %.0f s: another session "
                "may hold a lock on the sink's tables (PostgreSQL: pg_locks, "
                "pg_stat_activity), or the server is overloaded; the sink waits for it, "
                "and a stop meanwhile is forced after %.0f s (nothing is lost)",
                counted(messages, "message"),
                now - applying[0],
                STOP_GRACE_S,
            )


async def _say_progress(progress: _Progress) -> None:
    """:meth:`_Progress.tick` every second, so the last batches of a burst are said."""
    while True:
        await anyio.sleep(1.0)
        progress.tick()


STORE_PING_EVERY_S: Final = 5.0  # as often as the broker is asked (watch_connection)
# What to do about a store that does not answer: said by the warning and by /readyz's
# "store" reason alike (an SRE trial: the probe's body said why, not what to do).
STORE_UNREACHABLE_ADVICE: Final = (
    "the sink waits and loses nothing: check that the store's server is up and reachable from here"
)


async def watch_store(
    health: Health,
    store: Store,
    *,
    every_s: float = STORE_PING_EVERY_S,
    stalls: Stalls | None = None,
    outage: Outage | None = None,
) -> None:
    """Ask the store whether it answers every ``every_s``, for ``/readyz``: the sink's own
    loop finds an outage only when it next writes, and an idle sink never does. A store
    that takes longer than ``every_s`` to answer counts as not answering: a server behind
    a dropped network answers nothing, not an error. With ``stalls``, a ping that timed
    out while the process itself did not run (its answer waited in the socket while its
    deadline passed, as the broker probe's did) is asked again at once instead. ``outage``:
    the sink's (:attr:`Sink.store_outage`), so that the store's return is said once, by
    the probe or the sink's loop, whichever gets an answer first."""
    outage = outage or Outage()
    while True:
        started = stalls.now() if stalls is not None else 0.0
        reason: str | None = None
        try:
            with anyio.fail_after(every_s):
                await store.ping()
        except StoreError as exc:  # unavailable, or refusing (a password rotated): unready
            reason = str(exc)
        except TimeoutError:
            if stalls is not None and stalls.overlaps(started):
                log.info("the store ping timed out while the process did not run: asking again")
                continue
            reason = f"store {store.name!r} did not answer within {every_s:g} s"
        # Said once each way, as the broker probe says "Kafka unreachable": an idle sink
        # writes nothing, so its loop never said why /readyz was 503 (a trial).
        if reason is not None:
            reason = f"{reason}; {STORE_UNREACHABLE_ADVICE}"
            # A new outage also when the loop said the last one's end, which this probe
            # missed: the second outage of a flapping store went unsaid.
            if health.store_error is None or outage.since is None:
                log.warning("store unreachable (/readyz answers 503 until it answers): %s", reason)
            health.store_unreachable(reason)
            outage.failed()
        else:
            outage.answered()
            health.store_reachable()
        await anyio.sleep(every_s)


def failure_cause(exc: StreamExpiryError) -> str:
    """The ``cause`` label of ``stream_expiry_sink_failures_total``: a setting the store
    refused (a DSN's TLS file that does not load, say) is no store failure, and an alert on
    ``cause="store"`` sent someone to a database that was up (a review)."""
    if isinstance(exc, BrokerError):
        return "broker"
    if isinstance(exc, ConfigurationError):
        return "config"
    return "store"


async def _serve(
    sink: Sink,
    metrics: SinkMetrics,
    metrics_port: int | None,
    metrics_host: str,
    *,
    stalls: Stalls | None = None,
    progress: _Progress | None = None,
) -> StreamExpiryError | int:
    """Run until a signal; the exit status, or a failure, returned, not raised, so no
    exception group wraps it. ``stalls``: the watch of the process' pauses (a new one by
    default; a test's clocks); ``progress``: the progress line, said also between batches.

    A signal lets the batch being applied finish and commit; one the store or the broker
    keeps from finishing (a table another session locked) is cancelled after
    :data:`~stream_expiry.stopping.STOP_GRACE_S`, as ``run`` does: its transaction is rolled
    back and its messages are read again at the next start (status 130)."""
    stop, ready = anyio.Event(), anyio.Event()
    error: StreamExpiryError | None = None
    finished = False
    health = Health(watches_store=True)
    stalls = stalls or Stalls()  # a process paused is not a broker outage: it says so
    metrics.watch_counters(sink.metrics)
    metrics.watch_health(health)
    metrics.watch_stalls(stalls)
    listener = None if metrics_port is None else await open_listener(metrics_port, metrics_host)

    def on_ready() -> None:
        health.running()
        ready.set()

    health.starting()
    with filtered(StallNote(stalls)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(stop_on_signals, stop, tg.cancel_scope, ready, log=log))
            if listener is not None:
                tg.start_soon(serve_http, listener, metrics.exposition, health)
            watch_process(tg, stalls, health=health, conn=sink.config.connection)
            if progress is not None:
                tg.start_soon(_say_progress, progress)
            try:
                failure: StreamExpiryError | None = None
                async with sink.store, anyio.create_task_group() as store_tasks:
                    # Ready once the store is open and the group gave the sink its
                    # partitions, and while the store answers: asked only while it is open
                    # (a review: a ping after the close stopped the sink).
                    store_tasks.start_soon(
                        partial(
                            watch_store, health, sink.store, stalls=stalls, outage=sink.store_outage
                        )
                    )
                    sink.observe(on_joining=health.joining, on_ready=on_ready, lag=metrics)
                    try:
                        await sink.run(stop)
                        finished = True
                    except StreamExpiryError as exc:  # raised below as it is, not in a group
                        failure = exc
                    store_tasks.cancel_scope.cancel()
                if failure is not None:
                    raise failure
            except StreamExpiryError as exc:
                error = exc
                metrics.failed(failure_cause(exc))
            finally:
                health.stopped()
                close_clients_by(None)  # the next run in this process (tests) has its own
                tg.cancel_scope.cancel()
    if error is not None:
        return error
    if finished or not ready.is_set():  # stopped while starting: nothing applied yet
        return exits.OK
    log.warning(
        "forced stop: the batch being applied was rolled back, and what was read since the "
        "last committed offsets is read again on restart (nothing is lost)"
    )
    return exits.INTERRUPTED


def run_command(args: argparse.Namespace) -> int:
    """Run the sink the options describe until SIGINT/SIGTERM; return the exit status."""
    metrics = SinkMetrics(args.name or args.sink_store)
    progress = _Progress(metrics, {})
    try:
        sink = build_sink(args, on_batch=progress)
        progress.counters = sink.metrics
        progress.publishes = sink.publishes
        progress.applying = lambda: sink.applying
        # aiokafka, asyncpg: asyncio only
        http_port = metrics_port(args.metrics_port, os.environ)
        # As the service does: a sink allocates tens of thousands of short-lived objects
        # per batch, and the default thresholds made full collections ~10 % of its time
        # (bench.bench_sinks, 5,000-message batches).
        tune_gc()
        http_host = metrics_host(args.metrics_host, os.environ)
        outcome = anyio.run(
            partial(_serve, progress=progress),
            sink,
            metrics,
            http_port,
            http_host,
            backend="asyncio",
        )
    except ConfigurationError as exc:
        outcome = exc
    if isinstance(outcome, StreamExpiryError):
        say_failure(f"stream-expiry sink: {outcome}")
        return exits.status_of(outcome)
    m = sink.metrics
    print(
        f"stream-expiry sink: stopped after {m['messages_total']} messages, "
        f"{m['deleted_total']} deleted, {m['swept_total']} swept, {m['receipts_total']} receipts",
        file=sys.stderr,
    )
    return outcome

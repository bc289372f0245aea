"""``stream-expiry policy set | clear | list``: policy updates on ``expiry.policies``.

Operators wrote their own producer to change a retention at run time, worked out the
message key (the scope id, percent-encoded) themselves, and learnt of a wrong key or a
misspelt category only from a warning in the service's log, while the bad update, on a
compacted topic, replaced the good one (a user trial). This command builds the update as
the contract says, checks it with the service's own parser (:func:`parse_update`) before
anything is written, so that what the service would reject or ignore is refused here with
the service's reason, and keys it with :func:`scope_key`.

An update replaces its scope's whole ``ttl`` map: a category it leaves out loses the
scope's value, the config file's included. ``set`` reads the topic first, as the service
does (:meth:`PolicyBook.dropped_by`), and refuses an update that would take values away
unless it is told what is meant: ``--keep-others`` sends those values again unchanged,
``--drop-others`` takes them away.

An update goes to the partition Kafka's default partitioner (murmur2) picks for its key,
as ``hold place`` does, so that what another producer (a management UI) sends for the same
scope lands beside it: compaction and the order of a key's messages hold within one
partition only. A clear nulls the key there and on every partition where the key has a
message.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from stream_expiry import exits
from stream_expiry.cliargs import case_note, ts_ms
from stream_expiry.control import BACK_DATED_AFTER_MS
from stream_expiry.durations import InvalidDuration, format_duration, is_negative, parse_duration
from stream_expiry.errors import ConfigurationError
from stream_expiry.kafka import consumer, ensure_config_topics, partitions_of, producer, read_to_end
from stream_expiry.logs import printable, say_failure, say_warning
from stream_expiry.model import Rejection
from stream_expiry.murmur2 import partition_for
from stream_expiry.outbox import all_acked
from stream_expiry.policy import PolicyBook, PolicyUpdate, Scope, parse_scope_key
from stream_expiry.policy.updates import parse_update, scope_key
from stream_expiry.timeutil import format_ts, parse_ts, wall_clock_ms

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from stream_expiry.config import Config
    from stream_expiry.kafka_settings import Brokers
    from stream_expiry.policy.sources import Candidate

__all__ = [
    "Built",
    "Message",
    "TopicView",
    "build_update",
    "kept_values",
    "listed",
    "policy_lines",
    "read_policies",
    "run_policy",
    "stamped_note",
    "ttl_pair",
]


def ttl_pair(text: str) -> tuple[str, str]:
    """``--ttl CATEGORY=DURATION`` as ``(category, duration)``; the duration is checked
    with the rest of the update, by the service's parser."""
    import argparse

    category, sep, duration = text.partition("=")
    if not sep or not category.strip() or not duration.strip():
        raise argparse.ArgumentTypeError(
            f"expected CATEGORY=DURATION (conversation=30d, session=0 for no value from this "
            f"scope), got {text!r}"
        )
    return category.strip(), duration.strip()


# A number without a unit: minutes to the service, as in the config file and the platform's
# variables, but on a command line a slip for days (or hours) as likely.
_BARE_NUMBER = re.compile(r"^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*$")


def _unit_or_zero(category: str, duration: str) -> None:
    """Refuse (status 2) a ``--ttl`` the service would take without a word, and likely not as
    meant: below zero (taken as 0, no value from the scope) or a number alone other than 0
    (minutes: ``conversation=14`` kept conversations 14 minutes, not days). A trial
    published both with status 0; the values came back as 14m and 0 only in the output."""
    if is_negative(duration):
        raise ConfigurationError(
            f"--ttl {category}={duration} is below zero, which the service takes as 0, no "
            f"value from this scope: write {category}=0 if that is meant; nothing was "
            "published"
        )
    if _BARE_NUMBER.match(duration) is None:
        return
    try:
        ms = parse_duration(duration)
    except InvalidDuration:
        return  # said by the service's parser, with the rest of the update
    if ms != 0:
        number = duration.strip().lstrip("+")
        raise ConfigurationError(
            f"--ttl {category}={duration}: a number alone is minutes ({format_duration(ms)} "
            f"here): write {number}m if minutes are meant, {number}d for days; nothing was "
            "published"
        )


@dataclass(frozen=True)
class Built:
    """An update checked as the service checks it: its key, its value and what it is."""

    key: bytes
    value: bytes
    update: PolicyUpdate


def _scope_flags(kind: str, org: str | None, bot: str | None, env: str | None) -> Scope:
    """The scope the flags name, refused (status 2) as :func:`scope_key` refuses it, in
    the flags' words. A bot scope's ``--env`` defaults to ``live``, as the contract has an
    update's (and an input event's)."""
    if kind == "bot" and env is None:
        env = "live"
    try:
        return parse_scope_key(scope_key(kind, org, bot, env))
    except ValueError as exc:
        said = str(exc)
        said = said.replace("takes no org, bot or env", "takes no --org, --bot or --env")
        for name in ("org", "bot", "env"):
            said = said.replace(f"takes no {name}", f"takes no --{name}")
            said = said.replace(f"needs {name},", f"needs --{name},")
        raise ConfigurationError(f"--scope {kind}: {said}") from None


def _value(scope: Scope, ttl: dict[str, str], effective_from: int | None) -> dict[str, Any]:
    """The contract's update, with only the fields its scope has."""
    value: dict[str, Any] = {"scope": scope.kind}
    for name in ("org", "bot", "env"):
        part = getattr(scope, name)
        if part is not None:
            value[name] = part
    value["ttl"] = ttl
    if effective_from is not None:
        value["effective_from"] = format_ts(effective_from)
    return value


def build_update(
    config: Config,
    *,
    scope: str,
    org: str | None = None,
    bot: str | None = None,
    env: str | None = None,
    ttl: Sequence[tuple[str, str]],
    effective_from: int | None = None,
    now_ms: int,
) -> Built:
    """The update the arguments describe, checked by the service's parser: one it would
    reject whole, or apply without a value (not a duration), or apply with a warning (a
    ``"1M"``, minutes), is refused (:class:`ConfigurationError`, status 2) with its reason
    before anything is written; nothing is lost by asking again."""
    where = _scope_flags(scope, org, bot, env)
    given: dict[str, str] = {}
    for category, duration in ttl:
        if category in given:
            # The service rejects a key given twice in one object whole.
            raise ConfigurationError(
                f"--ttl {category}= is given twice ({given[category]!r}, {duration!r}): "
                "give each category once"
            )
        given[category] = duration
        _unit_or_zero(category, duration)
    value = orjson.dumps(_value(where, given, effective_from))
    key = where.key.encode()
    update = parse_update(key, value, now_ms, config.categories)
    if isinstance(update, Rejection):
        categories = ", ".join([*config.categories, *(["max"] if scope == "cap" else [])])
        known = f" (this scope takes: {categories})" if "category" in update.detail else ""
        raise ConfigurationError(
            f"the service would reject this update ({update.code}): {update.detail}{known}; "
            "nothing was published"
        )
    if update.ignored:
        raise ConfigurationError(
            "; ".join(f"--ttl {i.category}={given[i.category]}" for i in update.ignored)
            + ": the service would ignore it ("
            + "; ".join(i.detail for i in update.ignored)
            + "); nothing was published"
        )
    if update.notes:
        raise ConfigurationError("; ".join(update.notes) + "; nothing was published")
    return Built(key, value, update)


def kept_values(book: PolicyBook, update: PolicyUpdate) -> dict[str, str]:
    """For ``--keep-others``: the values of the categories ``update`` would take away
    (:meth:`PolicyBook.dropped_by`), as the scope's newest version has them."""
    newest = book.newest_of(update.scope)
    kept: dict[str, str] = {}
    for category in book.dropped_by(update):
        ms = newest[category].ttl_ms
        assert ms is not None  # dropped_by names positive values only
        kept[category] = format_duration(ms)
    return kept


@dataclass
class Message:
    """One message of the policies topic, as a reader keeps it."""

    key: bytes | None
    value: bytes | None
    timestamp: int
    partition: int
    offset: int


@dataclass
class TopicView:
    """The policies topic read whole: the book the service would build from it (with the
    config file), and per key the latest message and what the service made of it."""

    book: PolicyBook
    latest: dict[bytes | tuple[int, int], tuple[Message, PolicyUpdate | Rejection]] = field(
        default_factory=dict
    )
    # Per key, the value of its latest message on each partition it has messages on.
    partitions: dict[bytes, dict[int, bytes | None]] = field(default_factory=dict)
    count: int = 0


async def read_policies(config: Config, brokers: Brokers, *, must_exist: bool) -> TopicView:
    """Read ``[topics] policies`` to its end, applying each message to a policy book as the
    service does. ``must_exist``: a topic the cluster does not have is an error (``list``:
    under a mistyped name every scope would read as having no update)."""
    view = TopicView(PolicyBook(config, os.environ))
    topic = config.topics.policies
    async with consumer(brokers) as cons:
        if not await partitions_of(cons, topic):
            if must_exist:
                raise ConfigurationError(
                    config.topics.lacked("policies", config.path, so=", so no update is read")
                )
            return view
        async for batch in read_to_end(cons, topic):
            for tp, records in batch.items():
                for rec in records:
                    msg = Message(rec.key, rec.value, rec.timestamp, tp.partition, rec.offset)
                    got = view.book.apply_update(rec.key, rec.value, rec.timestamp)
                    slot: bytes | tuple[int, int] = (
                        rec.key if rec.key is not None else (tp.partition, rec.offset)
                    )
                    view.latest.pop(slot, None)  # in the order read
                    view.latest[slot] = (msg, got)
                    if rec.key is not None:
                        view.partitions.setdefault(rec.key, {})[tp.partition] = rec.value
                    view.count += 1
    return view


def _seconds(c: Candidate) -> int | None:
    return None if c.ttl_ms is None else c.ttl_ms // 1000


def _shown(c: Candidate) -> str:
    if not c.valid:
        return "invalid (ignored)"
    return "0 (no value)" if c.ttl_ms is None else format_duration(c.ttl_ms)


_KEPT_MEANWHILE = (
    "running services keep what the scope had before; once the topic is compacted this "
    "message is all that is left of the scope, and a start gives it the config file's values"
)


def _fate(entry: dict[str, Any]) -> str:
    """What an ignored latest message means for its scope, and what to do."""
    if entry["key"] is None or entry["ignored"]["detail"].startswith("the message key"):
        return (
            "it changes no scope: publish the update meant under its scope's key "
            "(stream-expiry policy set)"
        )
    return (
        f"{_KEPT_MEANWHILE}; publish the scope again (stream-expiry policy set) or clear it "
        "(stream-expiry policy clear)"
    )


def listed(view: TopicView, topic: str) -> list[dict[str, Any]]:
    """``policy list --json``: per key (and per message without a key) its latest message:
    the scope, the ttl map as sent and in seconds, from when, where, and, for one the
    service ignores, why."""
    out: list[dict[str, Any]] = []
    for slot, (msg, got) in view.latest.items():
        key = None if msg.key is None else msg.key.decode(errors="replace")
        entry: dict[str, Any] = {
            "key": key,
            "topic": topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "scope": None,
            "org": None,
            "bot": None,
            "env": None,
            "ttl": None,
            "ttl_seconds": None,
            "effective_from": None,
            "cleared": False,
            "ignored": None,
            "ignored_values": [],
            "notes": [],
            "partitions": [msg.partition],
            "partitions_differ": False,
        }
        if isinstance(slot, bytes):
            latest_of = view.partitions.get(slot, {msg.partition: msg.value})
            entry["partitions"] = sorted(latest_of)
            entry["partitions_differ"] = len(set(latest_of.values())) > 1
        if isinstance(got, Rejection):
            entry["ignored"] = {"error": got.code, "detail": got.detail}
        else:
            s = got.scope
            entry |= {"scope": s.kind, "org": s.org, "bot": s.bot, "env": s.env}
            entry["effective_from"] = format_ts(got.effective_from)
            if got.ttl is None:
                entry["cleared"] = True
            else:
                raw = orjson.loads(msg.value or b"{}").get("ttl")
                entry["ttl"] = raw
                entry["ttl_seconds"] = {c: _seconds(v) for c, v in sorted(got.ttl.items())}
                entry["ignored_values"] = [
                    {"category": i.category, "detail": i.detail} for i in got.ignored
                ]
                entry["notes"] = list(got.notes)
        out.append(entry)
    out.sort(key=lambda e: (e["key"] is None, e["key"] or "", e["partition"], e["offset"]))
    return out


def _line(entry: dict[str, Any], now_ms: int | None = None) -> str:
    """One listed key for a person (:func:`listed`'s entry)."""
    where = f"{entry['topic']}[{entry['partition']}]@{entry['offset']}"
    key = "(no key)" if entry["key"] is None else entry["key"]
    if entry["ignored"] is not None:
        why = entry["ignored"]
        return (
            f"{key}  IGNORED by the service: {why['error']} ({why['detail']}); "
            f"{_fate(entry)}  at {where}"
        )
    since = f"from {entry['effective_from']}"
    if now_ms is not None and parse_ts(entry["effective_from"]) > now_ms:
        # Listed as the key's latest, it read as what the scope has now (a trial).
        since += " (not in force yet)"
    if entry["cleared"]:
        return f"{key}  cleared (the config file's values) {since}  at {where}"
    if not entry["ttl_seconds"]:
        values = "empty (no value from this scope for any category, the config file's included)"
    else:
        invalid = {i["category"] for i in entry["ignored_values"]}
        values = ", ".join(
            f"{c}={_shown_seconds(s, c in invalid)}" for c, s in entry["ttl_seconds"].items()
        )
    said = f"{key}  {values}  {since}  at {where}"
    for ignored in entry["ignored_values"]:
        said += (
            f"; ignored by the service, which keeps the scope's earlier value for "
            f"{ignored['category']}: {ignored['detail']}"
        )
    for note in entry["notes"]:
        said += f"; note: {note}"
    if entry["partitions_differ"]:
        parts = ", ".join(str(p) for p in entry["partitions"])
        said += (
            f"; WARNING: the latest messages of this key on partitions {parts} differ: the "
            "services apply them in the order they read them, and compaction keeps one on "
            "each (stream-expiry policy set writes the update to every one of them)"
        )
    return said


def _shown_seconds(seconds: int | None, invalid: bool) -> str:
    if invalid:
        return "invalid (ignored)"
    return "0 (no value)" if seconds is None else format_duration(seconds * 1000)


def policy_lines(
    entries: list[dict[str, Any]], topic: str, *, now_ms: int | None = None
) -> list[str]:
    """``policy list``'s text: a line per key (:func:`listed`), and how many of them the
    service ignores; with ``now_ms``, an update dated after it is said not in force yet."""
    if not entries:
        return [f"no policy updates on {printable(topic)}: the config file's values apply"]
    lines = [printable(_line(entry, now_ms)) for entry in entries]
    ignored = sum(1 for e in entries if e["ignored"] is not None)
    if ignored:
        lines.append(
            f"{ignored} of {len(entries)} keys' latest message is ignored by the service "
            "(IGNORED above)"
        )
    return lines


def _clear_command(scope: Scope) -> str:
    """The ``policy clear`` that takes ``scope``'s update away, flags quoted for a shell."""
    flags = ["--scope", scope.kind]
    for name in ("org", "bot", "env"):
        part = getattr(scope, name)
        if part is not None:
            flags += [f"--{name}", part]
    return "stream-expiry policy clear " + shlex.join(flags)


def _check_names(book: PolicyBook, scope: Scope) -> None:
    """Warn of an ``--org`` (``--bot``) that no scope names and that is close to one that
    does, case aside, as ``hold place`` does: an update for a misspelt org changes the
    retention of no record, and stays on the topic until cleared: the warning says how."""
    if scope.org is None:
        return
    meant = book.org_meant(scope.org)
    if meant is not None:
        say_warning(
            printable(
                f"no org or bot setting (config file, policy update) names org "
                f"{scope.org!r}: did you mean {meant!r}?{case_note('org', scope.org, meant)} "
                f"The update is published for {scope.org!r} only: if {meant!r} was meant, "
                f"clear it ({_clear_command(scope)}) and set {meant!r}"
            )
        )
    if scope.bot is not None:
        of = meant or scope.org
        bot_meant = book.bot_meant(of, scope.bot)
        if bot_meant is not None:
            say_warning(
                printable(
                    f"no bot setting of org {of!r} names bot {scope.bot!r}: did you mean "
                    f"{bot_meant!r}?{case_note('bot', scope.bot, bot_meant)} The update is "
                    f"published for {scope.bot!r} only: if {bot_meant!r} was meant, clear it "
                    f"({_clear_command(scope)}) and set {bot_meant!r}"
                )
            )


def stamped_note(effective_from: int, now: int) -> str:
    """What a new version of a scope does to records already stamped: nothing (a TTL is
    fixed at the stamp, the contract's "stamp at creation"); a back-dated one governs
    records already stamped only once ``replay`` re-derives them, as the service warns."""
    since = format_ts(effective_from)
    if effective_from > now:
        return f"records created before {since} keep the scope's values in force before it"
    if now - effective_from <= BACK_DATED_AFTER_MS:
        return (
            "records created before then keep the expiry they were given (a TTL is fixed "
            "when a record is stamped, at its creation)"
        )
    return (
        f"records created since {since} that the service stamped already keep the expiry "
        "they were given (a TTL is fixed when a record is stamped): `stream-expiry replay "
        f"--since {since}` re-derives them under it"
    )


def _say_replaced_ahead(
    config: Config, replaced: PolicyUpdate | Rejection, effective: int, now: int
) -> None:
    """Warn that an update dated ahead replaces, on the compacted topic, the scope's update
    in force now: running services keep applying that one to the records created until
    ``effective``, but compaction leaves this one alone, and a start (or ``replay``) then
    gives those records the config file's values. A trial read "records created before
    2030-01-01 keep the scope's values in force before it" and took it as lasting."""
    if isinstance(replaced, Rejection) or replaced.ttl is None or replaced.effective_from > now:
        return  # a null, or an update not in force yet: the config file's values apply now
    values = ", ".join(f"{c}={_shown(v)}" for c, v in sorted(replaced.ttl.items()))
    base = PolicyBook(config, os.environ).newest_of(replaced.scope)
    config_values = ", ".join(f"{c}={_shown(v)}" for c, v in sorted(base.items()))
    say_warning(
        printable(
            f"scope {replaced.key} has an update in force now ({values or 'an empty map'}, "
            f"from {format_ts(replaced.effective_from)}), which this one replaces on the "
            "compacted topic: running services go on applying it to records created before "
            f"{format_ts(effective)}, but once the topic is compacted it is gone, and a "
            "service that starts, and `replay`, give those records the config file's values "
            f"({config_values or 'none for this scope: the other scopes decide'}); to keep "
            "them, publish this update when it is due rather than ahead"
        )
    )


async def _ensure(config: Config, brokers: Brokers) -> None:
    """Create the policies topic where missing, as the service would, and say so: a name
    mistyped, or a ``--config`` left out, publishes where no service reads."""
    topic = config.topics.policies
    if topic in await ensure_config_topics(brokers, config, (topic,)):
        say_warning(
            f"created the policies topic {printable(topic)!r}, which did not exist: the "
            "services read the policies topic of their own config ([topics] policies, "
            "$STREAM_EXPIRY_TOPICS_POLICIES); give this command the same --config, or check "
            "that they read this one"
        )


async def _send(
    brokers: Brokers, topic: str, messages: list[tuple[bytes, bytes | None, int | None]], now: int
) -> list[Any]:
    """Send ``(key, value, partition)`` messages stamped ``now`` (None partition: the
    key's, murmur2; a key's partition given twice is sent to once) and wait for every ack;
    their record metadata."""
    async with producer(brokers) as prod:
        count = len(await prod.partitions_for(topic))
        sent: set[tuple[bytes, int]] = set()
        acks = []
        for key, value, partition in messages:
            where = partition_for(key, count) if partition is None else partition
            if (key, where) not in sent:
                sent.add((key, where))
                acks.append(
                    await prod.send(topic, key=key, value=value, partition=where, timestamp_ms=now)
                )
        await all_acked(acks)
        return [ack.result() for ack in acks]


def _published_at(meta: Any, now: int) -> int:
    """The message's Kafka timestamp (an update's default ``effective_from``): ours, unless
    the topic stamps log-append time."""
    ts = getattr(meta, "timestamp", -1)
    return now if ts is None or ts < 0 else int(ts)


async def _run_set(config: Config, brokers: Brokers, args: argparse.Namespace) -> int:
    topic = config.topics.policies
    now = wall_clock_ms()
    fields = {"scope": args.scope, "org": args.org, "bot": args.bot, "env": args.env}
    effective = ts_ms(args.effective_from)
    built = build_update(config, **fields, ttl=args.ttl, effective_from=effective, now_ms=now)
    if config.path is None:
        # The check of what the update takes away knows the config file's values only from
        # the file: without it, an update dropped them with status 0 and no word (a trial).
        say_warning(
            printable(
                f"no --config given: the update is checked against the built-in settings, "
                f"so the values the services' config file gives scope {built.update.key} "
                "(which an update replaces, and which set refuses to take away unless told) "
                "and the categories it names are not known here; pass the services' config "
                "file (--config FILE)"
            )
        )
    view = await read_policies(config, brokers, must_exist=False)
    _check_names(view.book, built.update.scope)
    dropped = view.book.dropped_by(built.update)
    kept: dict[str, str] = {}
    if dropped and args.keep_others:
        kept = kept_values(view.book, built.update)
        built = build_update(
            config,
            **fields,
            ttl=[*args.ttl, *kept.items()],
            effective_from=effective,
            now_ms=now,
        )
        dropped = ()
    elif dropped and not args.drop_others:
        newest = view.book.newest_of(built.update.scope)
        had = ", ".join(f"{c}={_shown(newest[c])}" for c in dropped)
        raise ConfigurationError(
            f"an update replaces its scope's whole ttl map, and scope {built.update.key} has a "
            f"value for {had}, which this one leaves out (those records would get no value "
            "from this scope, the config file's included): give them with --ttl, or "
            "--keep-others to send them again unchanged, or --drop-others if taking them away "
            "is meant; nothing was published"
        )
    replaced = view.latest.get(built.key)
    if effective is not None and effective > now and replaced is not None:
        _say_replaced_ahead(config, replaced[1], effective, now)
    await _ensure(config, brokers)
    # The key's partition (murmur2), and every other one where the key has messages (sent
    # by another producer's partitioner): services read a key's partitions in no set
    # order, and compaction keeps its latest message on each, so the one left behind
    # would win now and then, and after a restart.
    elsewhere = sorted(view.partitions.get(built.key, {}))
    meta, *copies = await _send(
        brokers,
        topic,
        [(built.key, built.value, None), *((built.key, built.value, p) for p in elsewhere)],
        now,
    )
    update = built.update
    effective_from = effective if effective is not None else _published_at(meta, now)
    said = {
        "key": update.key,
        "topic": topic,
        "partition": meta.partition,
        "offset": meta.offset,
        "value": orjson.loads(built.value),
        "effective_from": format_ts(effective_from),
        "partitions": [meta.partition, *(m.partition for m in copies)],
        "kept": sorted(kept),
        "dropped": list(dropped),
    }
    if args.json:
        sys.stdout.write(orjson.dumps(said).decode() + "\n")
    else:
        values = ", ".join(f"{c}={_shown(v)}" for c, v in sorted((update.ttl or {}).items()))
        print(
            printable(f"published {update.key} on {topic}[{meta.partition}]@{meta.offset}: ")
            + printable(values or "an empty map (no value from this scope for any category)")
        )
        if copies:
            print(
                "also on partition(s) "
                + ", ".join(str(m.partition) for m in copies)
                + ", where the key has earlier messages, so that no partition keeps an older one"
            )
        if replaced is not None and isinstance(replaced[1], Rejection):
            old = replaced[0]
            print(
                printable(
                    f"it replaces the latest message of the key, at {topic}[{old.partition}]"
                    f"@{old.offset}, which the service ignores ({replaced[1].code})"
                )
            )
        if kept:
            again = ", ".join(f"{c}={v}" for c, v in sorted(kept.items()))
            print(f"sent again unchanged (--keep-others), the scope's values: {again}")
        if dropped:
            print(
                f"taken away (--drop-others): {', '.join(dropped)} no longer "
                f"{'gets' if len(dropped) == 1 else 'get'} a value from this scope"
            )
        print(f"in force for records created from {format_ts(effective_from)} on")
        print(stamped_note(effective_from, now))
    return exits.OK


async def _run_clear(config: Config, brokers: Brokers, args: argparse.Namespace) -> int:
    topic = config.topics.policies
    scope = _scope_flags(args.scope, args.org, args.bot, args.env)
    key = scope.key.encode()
    view = await read_policies(config, brokers, must_exist=False)
    latest = view.latest.get(key)
    if latest is None or (not isinstance(latest[1], Rejection) and latest[1].ttl is None):
        keys = [
            k.decode(errors="replace")
            for k, (_, got) in view.latest.items()
            if isinstance(k, bytes)
            and k != key
            and isinstance(got, PolicyUpdate)
            and got.ttl is not None
        ]
        close = difflib.get_close_matches(scope.key, keys, n=1)
        near = f" (did you mean {printable(repr(close[0]))}?)" if close and not latest else ""
        state = "is cleared already" if latest is not None else "has no update"
        say_failure(
            f"stream-expiry policy: scope {printable(scope.key)} {state} on "
            f"{printable(topic)}{near}: nothing to clear; see `stream-expiry policy list`"
        )
        return exits.FAILED
    now = wall_clock_ms()
    where = sorted(view.partitions.get(key, {}))
    # The key's partition first (None: murmur2), then every other one a message of it is
    # on: compaction keeps a key's latest message on each partition.
    metas = await _send(brokers, topic, [(key, None, None), *((key, None, p) for p in where)], now)
    at = _published_at(metas[0], now)
    if args.json:
        said = {
            "key": scope.key,
            "topic": topic,
            "partitions": sorted({m.partition for m in metas}),
            "effective_from": format_ts(at),
        }
        sys.stdout.write(orjson.dumps(said).decode() + "\n")
    else:
        print(
            printable(
                f"cleared {scope.key} on {topic}[{metas[0].partition}]@{metas[0].offset}: the "
                f"scope has the config file's values again for records created from "
                f"{format_ts(at)} on"
            )
        )
        print(stamped_note(at, now))
    return exits.OK


async def run_policy(config: Config, brokers: Brokers, args: argparse.Namespace) -> int:
    if args.policy_command == "set":
        return await _run_set(config, brokers, args)
    if args.policy_command == "clear":
        return await _run_clear(config, brokers, args)
    topic = config.topics.policies
    view = await read_policies(config, brokers, must_exist=True)
    entries = listed(view, topic)
    if args.json:
        sys.stdout.write(orjson.dumps(entries).decode() + "\n")
    else:
        print("\n".join(policy_lines(entries, topic, now_ms=wall_clock_ms())))
    return exits.OK

"""``stream-expiry hold place | release | list``: legal holds on ``expiry.holds``.

Placing and releasing are records on the compacted holds topic, which every instance of
the service follows; this command also writes each one to ``expiry.audit``, so the evidence
says who kept what, from when, and why.

A hold goes to the partition Kafka's default partitioner (murmur2, as the Java client and
every common producer) picks for its id, so that a release any other producer writes lands
beside it: compaction removes a hold only with a null on its own partition, and readers
order a key's messages only within one. This command used CRC-32, as stream-expiry's
output topics do: a hold it placed and another tool released sat on two partitions (three
in four ids on 4 partitions), the service kept the records or let them go by the order it
read the partitions in (a trial: 0 of 50 deleted after the release, 2 runs in 3), and
compaction would have brought the hold back. A release nulls the id on that partition and
on every other partition where the hold is (placed by an earlier version).
"""

from __future__ import annotations

import difflib
import getpass
import os
import re
import sys
import uuid
from contextlib import aclosing
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from stream_expiry import exits
from stream_expiry.cliargs import case_note, check_category
from stream_expiry.codec import encode_hold_audit
from stream_expiry.errors import ConfigurationError, quoted
from stream_expiry.holds import (
    Hold,
    HoldBook,
    InDoubt,
    apply_hold_message,
    encode_hold,
    parse_hold,
    rejected_fate,
)
from stream_expiry.kafka import consumer, ensure_config_topics, partitions_of, producer, read_to_end
from stream_expiry.logs import printable, say_failure, say_warning
from stream_expiry.model import MAX_ID_CHARS, Rejection
from stream_expiry.murmur2 import partition_for
from stream_expiry.outbox import all_acked
from stream_expiry.policy import PolicyBook
from stream_expiry.service import wall_clock_ms
from stream_expiry.timeutil import InvalidTimestamp, format_ts, parse_ts

if TYPE_CHECKING:
    import argparse

    from stream_expiry.config import Config
    from stream_expiry.kafka_settings import Brokers

__all__ = ["doubt_as_dict", "doubt_line", "placed_by", "read_holds", "run_hold"]


async def read_holds(
    config: Config, brokers: Brokers, *, must_exist: bool = False, otherwise: str = ""
) -> HoldBook:
    """The active holds, as the compacted topic has them now. ``must_exist``: a holds
    topic the cluster does not have is an error, not "no holds" (``archive purge``, which
    would purge what a hold keeps, given a config that names another topic; ``hold
    list``); ``otherwise`` ends its message with the command's way round it."""
    book, _ = await _read_keyed(config, brokers, must_exist=must_exist, otherwise=otherwise)
    return book


async def _read_keyed(
    config: Config, brokers: Brokers, *, must_exist: bool = False, otherwise: str = ""
) -> tuple[HoldBook, dict[str, set[bytes]]]:
    """:func:`read_holds`, and per hold id every message key read as it. A key that is
    not UTF-8 is read as its id with U+FFFD for the bad bytes (as the service reads it),
    so the id's UTF-8 is another key: ``hold release`` nulls the keys themselves, or
    compaction kept the hold and a later start found it again."""
    book = HoldBook()
    keys: dict[str, set[bytes]] = {}
    topic = config.topics.holds
    async with consumer(brokers) as cons:
        if must_exist and not await partitions_of(cons, topic):
            # Where the name came from: a mistyped $STREAM_EXPIRY_TOPICS_HOLDS beside a right
            # --config was told to give the --config it had been given (a user trial).
            raise ConfigurationError(
                config.topics.lacked(
                    "holds",
                    config.path,
                    so=", so the legal holds cannot be read",
                    otherwise=otherwise,
                )
            )
        # Rejected messages still the latest of their id on their partition: said once read.
        rejected: dict[tuple[bytes | None, int, int], tuple[Any, Rejection]] = {}
        async for batch in read_to_end(cons, topic):
            for tp, records in batch.items():
                for rec in records:
                    if rec.key:
                        keys.setdefault(rec.key.decode(errors="replace"), set()).add(rec.key)
                    got = apply_hold_message(book, rec.key, rec.value, tp.partition, rec.offset)
                    slot = (rec.key, tp.partition, -1 if rec.key else rec.offset)
                    if isinstance(got, Rejection):
                        rejected[slot] = (rec, got)
                    else:
                        rejected.pop(slot, None)
    for rec, why in rejected.values():
        _say_ignored(book, rec, why)
    return book, keys


def _say_ignored(book: HoldBook, rec: Any, why: Rejection) -> None:
    """Warn of a hold message that is the latest of its id and is ignored, as the service
    ignores it: ``hold list``, ``status`` and ``history`` showed the hold placed before (or
    none) without a word, while the message a producer meant to change it with (a
    repeated ``org``, say) changed nothing. Its id is in doubt: services refuse to start
    until it is placed again or released, which is said too."""
    key = "null" if rec.key is None else printable(quoted(rec.key.decode(errors="replace"), 80))
    after = printable(rejected_fate(book, rec.key, rec.value))
    say_warning(
        f"the legal hold message at {printable(rec.topic)}[{rec.partition}]@{rec.offset} (key "
        f"{key}) is ignored, as the service ignores it: {why.code} ({printable(why.detail)}); "
        + after
    )


def doubt_as_dict(topic: str, doubt: InDoubt) -> dict[str, Any]:
    """Where a hold id's unreadable latest message is and why (``hold list --json``,
    ``status --json``)."""
    return {
        "topic": topic,
        "partition": doubt.partition,
        "offset": doubt.offset,
        "error": doubt.why.code,
        "detail": doubt.why.detail,
    }


def doubt_line(hold_id: str, doubt: dict[str, Any], kept: str) -> str:
    """A hold id in doubt (``doubt``: :func:`doubt_as_dict`) for a person, as ``hold list``
    and ``status`` say it: where its unreadable message is and why, ``kept`` (what holds
    meanwhile), and what settles it."""
    return (
        f"{hold_id}  in doubt: its latest message at {doubt['topic']}[{doubt['partition']}]"
        f"@{doubt['offset']} cannot be read: {doubt['error']} ({doubt['detail']}); {kept}"
        "a start refuses until it is placed again (hold place --id ID ...) or released "
        "(hold release ID)"
    )


def _key_of(hold_id: str, keys: dict[str, set[bytes]]) -> bytes:
    """The message key of ``hold_id`` to show: one that is not the id's UTF-8 if there is
    one (a key that is not UTF-8), else the id's UTF-8 (also for a hold placed without a
    key, by the ``hold_id`` of its value)."""
    plain = hold_id.encode()
    return min(keys.get(hold_id, set()) - {plain}, default=plain)


def _untypable(hold_id: str, key: bytes) -> bool:
    """Whether ``hold release ID`` cannot take ``hold_id`` as ``hold list`` prints it:
    its key is not the id's UTF-8 (not UTF-8 itself), it is printed escaped (control
    characters), or it is too long for an ID. ``hold list`` then shows its key as hex,
    which ``hold release --key-hex`` takes."""
    return key != hold_id.encode() or printable(hold_id) != hold_id or len(hold_id) > MAX_ID_CHARS


async def placed_by(config: Config, brokers: Brokers, book: HoldBook) -> dict[tuple[str, str], str]:
    """Who placed each active hold, by (hold id, ``placed_at`` as listed), as its
    ``hold_placed`` entry on ``expiry.audit`` says (``hold place --by``, else the account
    that ran it).

    The hold's own message has the contract's fields, which do not include who placed it
    (docs/CONTRACT.md, "Legal holds"), so the audit trail is where it is. An entry is the
    hold's when it names the same id and was written at its ``placed_at`` (``hold place``
    writes both from one clock reading): an earlier placement of the id, released since,
    is not taken for it. A hold with no ``placed_at``, or whose entry is missing (a tool
    that wrote the holds topic alone), names nobody, or a trail that does not exist: not
    in the answer, and ``hold list`` and ``status`` (which both show it) say unknown. Only
    entries keyed by an active hold's id are parsed (not the deletions holds deferred,
    keyed by record), and the reading stops once every hold's entry is found: the trail is
    read up to the newest hold's placement, whole only when an entry is missing (expired
    after ``evidence_retention``, 400 days by default)."""
    wanted = {(h.hold_id, format_ts(h.placed_at)) for h in book if h.placed_at is not None}
    ids = {hold_id.encode() for hold_id, _ in wanted}
    found: dict[tuple[str, str], str] = {}
    topic = config.topics.audit
    if not wanted:
        return found
    async with consumer(brokers) as cons:
        if not await partitions_of(cons, topic):
            return found
        async with aclosing(read_to_end(cons, topic)) as batches:
            async for batch in batches:
                for records in batch.values():
                    for rec in records:
                        if rec.key in ids and rec.value is not None:
                            _note_placer(rec.key.decode(), rec.value, wanted, found)
                if len(found) == len(wanted):
                    break
    return found


def _note_placer(
    hold_id: str, value: bytes, wanted: set[tuple[str, str]], found: dict[tuple[str, str], str]
) -> None:
    """Note in ``found`` who placed ``hold_id`` when ``value`` is the ``hold_placed`` entry
    of a placement in ``wanted`` that names someone; any other entry, or one that cannot be
    read, changes nothing (the hold is listed as placed by someone unknown)."""
    try:
        entry = orjson.loads(value)
        if type(entry) is not dict or entry.get("type") != "hold_placed":
            return
        at, by = format_ts(parse_ts(entry["at"])), entry.get("by")
    except (orjson.JSONDecodeError, KeyError, TypeError, InvalidTimestamp):
        return
    if isinstance(by, str) and (hold_id, at) in wanted:
        found[hold_id, at] = by


def _listed(
    book: HoldBook,
    topic: str,
    keys: dict[str, set[bytes]],
    placers: dict[tuple[str, str], str] | None = None,
) -> list[dict[str, Any]]:
    """``hold list --json``: every active hold, and every id in doubt (its latest message
    cannot be read) with no active hold, by id; each with ``in_doubt``, where the messages
    that cannot be read are (empty for a hold placed as its latest message says),
    ``key_hex``, its message key as hex (what ``hold release --key-hex`` takes), and
    ``by``, who placed it (:func:`placed_by`; null when unknown)."""
    doubts: dict[str, list[dict[str, Any]]] = {}
    for doubt in book.in_doubt():
        doubts.setdefault(doubt.hold_id, []).append(doubt_as_dict(topic, doubt))
    listed = [h.as_dict() for h in book]
    unplaced = sorted(set(doubts) - {h["hold_id"] for h in listed})
    empty = dict.fromkeys(("org", "bot", "env", "category", "record_id", "reason", "placed_at"))
    listed += [{"hold_id": hold_id, **empty} for hold_id in unplaced]
    listed.sort(key=lambda h: h["hold_id"])
    return [
        h
        | {
            "in_doubt": doubts.get(h["hold_id"], []),
            "key_hex": _key_of(h["hold_id"], keys).hex(),
            "by": (placers or {}).get((h["hold_id"], h["placed_at"])),
        }
        for h in listed
    ]


def _print_listed(listed: list[dict[str, Any]]) -> None:
    """``hold list``'s text: a line per active hold, and per id in doubt a line that says
    so, where and why, and what to do (left out, such an id looked as if it held nothing
    while the services refused to start for it)."""
    if not listed:
        print("no active legal holds")
    for h in listed:
        key = bytes.fromhex(h["key_hex"])
        # An id that `hold release ID` cannot take as printed here: its key, as hex.
        hexed = (
            f"  key {h['key_hex']} (hold release --key-hex {h['key_hex']})"
            if _untypable(h["hold_id"], key)
            else ""
        )
        if h["org"] is not None:
            said = (
                f"{h['hold_id']}  {_scope(h)}  placed {h['placed_at'] or '-'} by "
                f"{h['by'] or '(unknown)'}  reason: {h['reason']}"
            )
            print(printable(said) + hexed)
        kept = (
            "the services keep the hold placed before while they run, and "
            if h["org"]
            else "no hold in force, and "
        )
        for d in h["in_doubt"]:
            print(printable(doubt_line(h["hold_id"], d, kept)) + hexed)


def _scope(hold: dict[str, Any]) -> str:
    names = ("org", "bot", "env", "category", "record_id")
    return " ".join(f"{n}={hold[n]}" for n in names if hold[n] is not None)


async def _ensure(config: Config, brokers: Brokers) -> None:
    """Create the holds and audit topics where missing. A holds topic created here is
    said (stderr): a service reads its own config's, so a name mistyped, or a ``--config``
    left out where the services rename it, placed a hold that nothing read, and the
    command said only the hold's id (a trial)."""
    t = config.topics
    created = await ensure_config_topics(brokers, config, (t.holds, t.audit))
    if t.holds in created:
        print(
            f"stream-expiry hold: created the holds topic {printable(t.holds)!r}, which did "
            "not exist: the services read the holds topic of their own config ([topics] "
            "holds, $STREAM_EXPIRY_TOPICS_HOLDS); give this command the same --config, or "
            "check that they read this one",
            file=sys.stderr,
        )


_FLAGS = {"hold_id": "--id", "record_id": "--record-id"}


def _refuse_replacing(book: HoldBook, hold_id: str | None) -> None:
    """``hold place --id``: refuse an id whose hold is active (placing it again would
    replace it), unless the id is in doubt (its latest message cannot be read): then a
    placement is what settles it, as a start that refuses for it asks, and the earlier
    placement it replaces is said on stderr."""
    existing = None if hold_id is None else book.get(hold_id)
    if existing is None or hold_id is None:
        return
    if not book.doubts_of(hold_id):
        raise ConfigurationError(
            f"hold {hold_id!r} is active ({existing.scope()}, reason: "
            f"{existing.reason}); placing it again would replace it: release it "
            f"first (stream-expiry hold release {hold_id}) or choose another --id"
        )
    say_warning(
        f"hold {printable(repr(hold_id))} was in doubt (its latest message cannot be read); "
        f"this placement replaces the one before it ({printable(existing.scope())}, reason: "
        f"{printable(existing.reason)})"
    )


def _checked_hold(config: Config, args: argparse.Namespace, now_ms: int) -> Hold:
    """The hold the arguments describe, checked as the service checks the holds it reads: a
    hold it would refuse (and the audit trail would still call placed) is refused here,
    before anything is written. So is a category the configuration does not have: such a
    hold would keep nothing."""
    hold = Hold(
        args.id or f"hold-{uuid.uuid4().hex[:12]}",
        args.org,
        args.bot,
        args.env,
        args.category,
        args.record_id,
        args.reason,
        now_ms,
    )
    checked = parse_hold(hold.hold_id.encode(), encode_hold(hold))
    if isinstance(checked, Rejection):
        raise ConfigurationError(
            re.sub(r"field '(\w+)'", lambda m: _FLAGS.get(m[1], f"--{m[1]}"), checked.detail)
        )
    if not args.reason.strip():
        # The service takes a blank reason; the audit trail would keep a placement that
        # says nothing of why the records are kept (``hold release --reason`` refuses one).
        raise ConfigurationError(
            "--reason must say why the hold is placed (a case number, say), not be blank"
        )
    if args.category is not None:
        check_category(args.category, config.categories, ": a hold on it would keep nothing")
    book = PolicyBook(config, os.environ)
    meant = book.org_meant(args.org)
    if meant is not None:
        # Placed all the same (records of an org no setting names are held as any): but a
        # typo here keeps nothing, and "0 matched" in status was the only sign (a trial).
        say_warning(
            f"no org or bot setting of the config file names org {printable(repr(args.org))}: "
            f"did you mean {printable(repr(meant))}?{case_note('org', args.org, meant)} The "
            f"hold keeps the records of {printable(repr(args.org))} only; release it if that "
            "is not what you meant"
        )
    if args.bot is not None:
        _say_a_bot_meant(book, meant or args.org, args.bot)
    return hold


def _say_a_bot_meant(book: PolicyBook, org: str, bot: str) -> None:
    """Warn of a ``--bot`` that no bot setting of ``org`` names and that is close to one
    that does (``B1`` for ``b1``): a hold on it keeps nothing, and was placed without a
    word where a misspelt ``--org`` was said (a trial). Placed all the same: a bot no
    setting names may be meant. The note that bot ids are case-sensitive comes only where
    case is the difference, as for ``--org``: ``suport`` for ``support`` was told it too."""
    bot_meant = book.bot_meant(org, bot)
    if bot_meant is None:
        return
    shown = printable(repr(bot))
    say_warning(
        f"no bot setting of the config file for org {printable(repr(org))} names bot "
        f"{shown}: did you mean {printable(repr(bot_meant))}?"
        f"{case_note('bot', bot, bot_meant)} The hold keeps the records of bot {shown} only; "
        "release it if that is not what you meant"
    )


async def _say_an_org_in_another_case(
    config: Config, brokers: Brokers, holds: HoldBook, org: str
) -> None:
    """Warn of an ``--org`` that the policy updates, or the active holds, name only in
    another case (``Beta`` where they say ``beta``), when the config file's settings did
    not already say it (:func:`_checked_hold`): org ids are case-sensitive, and a hold
    placed under the wrong case keeps nothing, silently (a trial: ``hold place --org
    Beta`` of ``beta``'s records said nothing). Both are compacted topics this command
    reads whole cheaply; the records themselves are not read (a scan of
    ``expiry.stamped``, as ``status`` makes), so an org that only records name is not
    found here: ``status`` shows how many records each hold matches."""
    from stream_expiry.policy import apply_updates
    from stream_expiry.replay import policy_updates

    book = PolicyBook(config, os.environ)
    if book.org_meant(org) is not None:
        return  # said already, from the config file
    topic = config.topics.policies
    apply_updates(book, await policy_updates(brokers, topic), topic)  # its warnings: explain's
    meant = book.org_meant(org)
    if meant is not None:
        say_warning(
            f"no org or bot setting (config file, policy update) names org "
            f"{printable(repr(org))}: did you mean {printable(repr(meant))}?"
            f"{case_note('org', org, meant)} The hold keeps the records of "
            f"{printable(repr(org))} only; release it if that is not what you meant"
        )
        return
    if org in book.named_orgs or any(h.org == org for h in holds):
        return
    folded = org.casefold()
    other = min(
        (h for h in holds if h.org.casefold() == folded), key=lambda h: h.hold_id, default=None
    )
    if other is not None:
        say_warning(
            f"no setting and no active hold names org {printable(repr(org))}, but the "
            f"active hold {printable(repr(other.hold_id))} is on org "
            f"{printable(repr(other.org))}: did you mean {printable(repr(other.org))}?"
            f"{case_note('org', org, other.org)} The hold keeps the records of "
            f"{printable(repr(org))} only; release it if that is not what you meant"
        )


def _by(args: argparse.Namespace) -> str | None:
    """Who places or releases a hold, for the audit entry: ``--by``, else the account
    running the command (what an auditor can trace), else nobody named."""
    if args.by is not None:
        return str(args.by)
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid, no $USER (a bare container)
        return None


async def run_hold(config: Config, brokers: Brokers, args: argparse.Namespace) -> int:
    t = config.topics
    if args.hold_command == "list":
        # A holds topic the cluster does not have is an error, not "no active legal holds":
        # under a mistyped name an officer read the holds as none (a trial).
        book, keys = await _read_keyed(config, brokers, must_exist=True)
        listed = _listed(book, t.holds, keys, await placed_by(config, brokers, book))
        if args.json:
            sys.stdout.write(orjson.dumps(listed).decode() + "\n")
        else:
            _print_listed(listed)
        return exits.OK
    now = wall_clock_ms()
    # Checked before the cluster is asked anything: a refused hold changes nothing there.
    hold = _checked_hold(config, args, now) if args.hold_command == "place" else None
    await _ensure(config, brokers)
    async with producer(brokers) as prod:
        home = partial(partition_for, partitions=len(await prod.partitions_for(t.holds)))
        if hold is not None:
            # Read with or without --id: the active holds' orgs tell an org given in
            # another case (below), and the topic is compacted and small.
            book = await read_holds(config, brokers)
            _refuse_replacing(book, args.id)
            await _say_an_org_in_another_case(config, brokers, book, args.org)
            key = hold.hold_id.encode()
            acks = [
                await prod.send(t.holds, key=key, value=encode_hold(hold), partition=home(key)),
                await prod.send(
                    t.audit,
                    key=key,
                    value=encode_hold_audit("hold_placed", hold.as_dict(), now, by=_by(args)),
                ),
            ]
            await all_acked(acks)
            # Placed first: the id is held throughout. Then a null where its latest
            # message could not be read on another partition (a producer's partitioner),
            # which the placement does not follow there: the id is no longer in doubt.
            elsewhere = {d.partition for d in book.doubts_of(hold.hold_id)} - {home(key)}
            await all_acked(
                [
                    await prod.send(t.holds, key=key, value=None, partition=partition)
                    for partition in sorted(elsewhere)
                ]
            )
            print(printable(hold.hold_id))
            return exits.OK
        # An id, or a key as hex (read as its id, as the service reads a key).
        # An ID typed as the bytes themselves ($'case-\xff' in bash) comes as the
        # surrogates Python reads such arguments as, and goes out as those bytes again.
        given: bytes = (
            args.key_hex
            if args.key_hex is not None
            else args.hold_id.encode(errors="surrogateescape")
        )
        hold_id = given.decode(errors="replace")
        named = printable(repr(hold_id))
        if args.key_hex is not None:
            named += f" (key {given.hex()})"
        book, keys = await _read_keyed(config, brokers)
        existing = book.get(hold_id)
        doubts = book.doubts_of(hold_id)
        if existing is None and not doubts:
            # A near miss is named: a mistyped id, told only "no active hold", left the
            # records held while the person releasing it believed it done with a retry.
            close = difflib.get_close_matches(hold_id, [h.hold_id for h in book], n=1)
            near = f" (did you mean {printable(repr(close[0]))}?)" if close else ""
            say_failure(
                f"stream-expiry hold: no active hold {named}{near}; see `stream-expiry hold list`"
            )
            return exits.FAILED
        # Under every key read as the id, not only its UTF-8: a key that is not UTF-8 is
        # another key, whose hold compaction kept however many nulls the UTF-8 got.
        seen = keys.get(hold_id, set())
        nulled_keys = sorted(seen | {given} if args.key_hex is not None or not seen else seen)
        # Every null acknowledged before the audit says released: one refused would leave
        # the hold placed on its partition while the evidence said it was gone (a review).
        # Also where the id's latest message cannot be read: it is in doubt no longer.
        where = {*book.partitions_of(hold_id), *(d.partition for d in doubts)}
        await all_acked(
            [
                await prod.send(t.holds, key=key, value=None, partition=partition)
                for key in nulled_keys
                for partition in sorted({home(key), *where})
            ]
        )
        released = encode_hold_audit(
            "hold_released",
            {"hold_id": hold_id} if existing is None else existing.as_dict(),
            now,
            release_reason=args.release_reason,
            by=_by(args),
        )
        await all_acked([await prod.send(t.audit, key=hold_id.encode(), value=released)])
        print(f"released {printable(hold_id)}")
        return exits.OK

"""``stream-expiry deletions``: what the stores deleted in a period, when and why, for an audit.

A compliance officer asks "what did we delete for acme in November, under which rule, and
was any of it late?". ``history`` answers for one record; this answers for many, from the
receipts every store publishes on ``expiry.receipts`` (one per deletion, never the
payload), read whole: the topic keeps them 400 days by default, and reading it costs
about 13 s of CPU per million receipts (measured: 200,000 in 2.6 s of CPU and 100 MB in
all, where keeping every receipt for the export took 4.2 s and 400 MB; counting alone,
bench/bench_deletions.py). Receipts are published at least once, so each ``receipt_id`` counts
once.

For each store: its deletions by rule (``ttl``, ``explicit``, ``sweep``) and by category,
how long after its due time each row went (the expiry for ``ttl`` and ``sweep``, the
tombstone's time for an erasure), how long after its request each erasure went (the
receipt's ``requested_at``: a legal hold that deferred it a week shows as a week, where
the tombstone's time showed ~0 s), the late ones by the cause the service gave, and the
tombstones that found nothing to delete (``rows_deleted`` 0: the store never held the
record). ``--receipts`` prints the receipts themselves, one JSON object a line, for an
export.

``--rejected`` answers the other half of "was every erasure request honoured?": an
``op: delete`` event the service dead-lettered (a bad timestamp, an unknown category) is
carried out nowhere, so no receipt names it, and an officer who read the receipts found
no trace of it. It lists them from ``expiry.dlq`` (read whole: the contract's headers say
why), with the record as far as the event can be read, never its data. The report of the
receipts says how many such requests there were in its period and scope, and points to
``--rejected``: without it, an officer who did not know the option read a report of
receipts as every request honoured. Counting them reads ``expiry.dlq`` whole too, as
``--rejected`` does, so that the count is the number it lists: that topic keeps dead letters
for ``[topics] retention`` (7 days by default) against the receipts' 400, so it adds a
fraction of the read of the receipts.
"""

from __future__ import annotations

import difflib
import logging
import math
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from stream_expiry import codec
from stream_expiry.cliargs import case_note
from stream_expiry.errors import ConfigurationError
from stream_expiry.event_fields import misspelt_fields
from stream_expiry.history import dead_letter_event, same_as
from stream_expiry.kafka import consumer, missing_topics, read_to_end
from stream_expiry.logs import counted, printable
from stream_expiry.model import DEFAULT_BOT
from stream_expiry.timeutil import InvalidTimestamp, format_ts, parse_ts

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from stream_expiry.config import Config
    from stream_expiry.kafka_settings import Brokers

__all__ = [
    "Deletions",
    "Filter",
    "Rejected",
    "deletions",
    "exported",
    "rejected",
    "rejected_count",
    "run_deletions",
    "text_lines",
]

log = logging.getLogger("stream_expiry.deletions")

#: The record's parts a report may be narrowed to, as the receipt names them.
PARTS: Final = ("org", "bot", "env", "category")


@dataclass(frozen=True)
class Filter:
    """Which receipts count: those naming these parts (None: any), deleted in
    ``[since, until)`` (epoch ms; None: unbounded)."""

    parts: Mapping[str, str]
    since: int | None = None
    until: int | None = None

    def admits(self, receipt: Mapping[str, Any], deleted_at: int) -> bool:
        if any(receipt.get(name) != value for name, value in self.parts.items()):
            return False
        return self.within(deleted_at)

    def within(self, at: int) -> bool:
        """Whether ``at`` (epoch ms) is in the period."""
        if self.since is not None and at < self.since:
            return False
        return self.until is None or at < self.until

    def as_dict(self) -> dict[str, Any]:
        """The period and the parts, as a report's JSON begins (the receipts' and the
        rejected requests' alike)."""
        return {
            "since": None if self.since is None else format_ts(self.since),
            "until": None if self.until is None else format_ts(self.until),
            **{name: self.parts.get(name) for name in PARTS},
        }


@dataclass
class Waits:
    """How long rows waited to be deleted (ms, 0 when before the time waited from): 8 bytes a
    row (a tuple with its key was ~150, 150 MB a million rows); the longest keeps its key,
    the smallest key among rows that waited as long: the first read of them named it, and
    the order partitions are read in varies, so two runs over the same receipts named
    ``s-bob`` and ``c-bob`` (a trial)."""

    ms: array[int] = field(default_factory=lambda: array("q"))
    longest: tuple[int, str] | None = None

    def add(self, wait: int, key: str) -> None:
        self.ms.append(wait)
        if self.longest is None or (-wait, key) < (-self.longest[0], self.longest[1]):
            self.longest = (wait, key)

    def summary(self) -> dict[str, Any] | None:
        """p50, p99 and max (with its key) in seconds; None when none waited."""
        longest = self.longest
        if not self.ms or longest is None:
            return None
        ordered = sorted(self.ms)
        return {
            "p50": _nearest_rank(ordered, 0.50) / 1000,
            "p99": _nearest_rank(ordered, 0.99) / 1000,
            "max": longest[0] / 1000,
            "max_key": longest[1],
        }


@dataclass
class StoreDeletions:
    """One store's receipts in the period."""

    by_reason: Counter[str] = field(default_factory=Counter)
    by_category: Counter[str] = field(default_factory=Counter)
    found_nothing: int = 0  # receipts with rows_deleted 0
    late_causes: Counter[str] = field(default_factory=Counter)
    # Of each row deleted, how long after its due time; of each row an erasure deleted,
    # how long after its request; and the erasures whose receipt says no request time (an
    # older version's tombstone or store): left out of those times, counted.
    after_due: Waits = field(default_factory=Waits)
    after_request: Waits = field(default_factory=Waits)
    request_unknown: int = 0

    @property
    def deleted(self) -> int:
        return sum(self.by_reason.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "deleted": self.deleted,
            "by_reason": dict(sorted(self.by_reason.items())),
            "by_category": dict(sorted(self.by_category.items())),
            "found_nothing": self.found_nothing,
            "late_causes": dict(sorted(self.late_causes.items())),
            "after_due_s": self.after_due.summary(),
            "after_request_s": self.after_request.summary(),
            "request_unknown": self.request_unknown,
        }


def _nearest_rank(ordered: list[int], q: float) -> int:
    """The ``q`` quantile of ``ordered`` (sorted, not empty) by the nearest-rank method:
    always a value that occurred."""
    return ordered[max(0, math.ceil(len(ordered) * q) - 1)]


@dataclass
class Deletions:
    """The report: by store, and how many receipts were read to make it."""

    filter: Filter
    stores: dict[str, StoreDeletions] = field(default_factory=dict)
    receipts: int = 0  # distinct receipts that passed the filter
    copies: int = 0  # publications of a receipt already counted (at-least-once)
    unreadable: int = 0  # messages that are no receipt (not JSON, fields missing)
    # Of the parts the filter names (--org ...), the values every receipt read names, of
    # any period: a part's value no receipt names is a typo (``Acme``), not a clean record.
    named: dict[str, set[str]] = field(default_factory=dict)
    # The erasure requests of the period and scope the service dead-lettered (what
    # ``--rejected`` lists); None when not counted (no dlq topic, an export).
    rejected_requests: int | None = None

    def never_named(self) -> dict[str, dict[str, str | None]]:
        """Each part of the filter whose value no receipt on the topic names, whatever its
        time, with the value closest to it that one names (None: none close). Alone, an
        ``--org Acme`` read "no store deleted anything in that period": an audit's clean
        answer for an org whose records carry ``acme``."""
        out: dict[str, dict[str, str | None]] = {}
        for name, value in self.filter.parts.items():
            seen = self.named.get(name, set())
            if value not in seen:
                close = difflib.get_close_matches(value, sorted(seen), n=1)
                folded = [v for v in sorted(seen) if v.casefold() == value.casefold()]
                meant = folded or close
                out[name] = {"given": value, "closest": meant[0] if meant else None}
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.filter.as_dict(),
            "receipts": self.receipts,
            "copies": self.copies,
            "unreadable": self.unreadable,
            "never_named": self.never_named(),
            "stores": {name: s.as_dict() for name, s in sorted(self.stores.items())},
            "rejected_requests": self.rejected_requests,
        }

    def add(
        self,
        receipt: dict[str, Any],
        headers: Iterable[tuple[str, bytes]],
        deleted_at: int | None = None,
    ) -> None:
        """Count one receipt (first publication of its id) that passed the filter;
        ``deleted_at``: its time as already parsed (None: parsed here)."""
        name = str(receipt.get("store"))
        store = self.stores.get(name)
        if store is None:  # not setdefault: it made three Counters a receipt, 1/4 of the time
            store = self.stores[name] = StoreDeletions()
        self.receipts += 1
        if receipt.get("rows_deleted") != 1:
            store.found_nothing += 1
            return
        reason = str(receipt.get("reason"))
        store.by_reason[reason] += 1
        store.by_category[str(receipt.get("category"))] += 1
        cause = codec.late_cause_of(list(headers))
        if cause is not None:
            store.late_causes[cause] += 1
        due = _due_at(receipt)
        requested = _time_or_none(receipt.get("requested_at")) if reason == "explicit" else None
        if reason == "explicit" and requested is None:
            store.request_unknown += 1
        if due is None and requested is None:
            return
        if deleted_at is None:
            deleted_at = parse_ts(receipt["deleted_at"])
        key = str(receipt.get("key"))
        if due is not None:
            store.after_due.add(max(0, deleted_at - due), key)
        if requested is not None:
            store.after_request.add(max(0, deleted_at - requested), key)


def _time_or_none(said: Any) -> int | None:
    """A receipt's optional time in ms; None when absent or unreadable."""
    if not isinstance(said, str):
        return None
    try:
        return parse_ts(said)
    except InvalidTimestamp:
        return None


def _due_at(receipt: Mapping[str, Any]) -> int | None:
    """When the row was due to go: its expiry (``ttl``, ``sweep``), else the tombstone's
    time (an erasure: the service decided it then; its late cause says when that was late
    after the request). None when the receipt does not say."""
    said = receipt.get("emitted_at") if receipt.get("reason") == "explicit" else None
    said = said or receipt.get("expires_at")
    try:
        return None if said is None else parse_ts(said)
    except InvalidTimestamp:
        return None


def exported(receipt: dict[str, Any], headers: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """A receipt as ``--receipts`` prints it: its value, and what its message's headers say,
    as the stores' receipts tables have it: ``request`` and ``request_event_id``, the
    erasure request it carried out, and ``late_cause`` (null when the header is absent);
    and ``requested_at`` always (null in a receipt an older store wrote without it).
    The value alone left an export of erasures without the requests they answered, which
    an audit matches them to, and without why the late ones were late."""
    request, event_id = codec.request_of(headers)
    return receipt | {
        "requested_at": receipt.get("requested_at"),
        "request": request,
        "request_event_id": event_id,
        "late_cause": codec.late_cause_of(headers),
    }


def _receipt(value: bytes | None) -> tuple[dict[str, Any], int] | None:
    """The receipt and its ``deleted_at`` (ms), or None when the message is none."""
    if value is None:
        return None
    try:
        body = orjson.loads(value)
        if not isinstance(body, dict) or not isinstance(body.get("receipt_id"), str):
            return None
        return body, parse_ts(body["deleted_at"])
    except (orjson.JSONDecodeError, KeyError, InvalidTimestamp):
        return None


async def deletions(
    config: Config,
    brokers: Brokers,
    wanted: Filter,
    export: Callable[[dict[str, Any]], None] | None = None,
) -> Deletions:
    """Read ``expiry.receipts`` whole and count what ``wanted`` admits, handing each
    receipt counted to ``export`` (:func:`exported`) as it is read: kept in a list until
    the end, every run held them all (2 GB a million receipts), an export or not."""
    topic = config.topics.receipts
    if await missing_topics(brokers, [topic]):
        # Read as empty, it answered "nothing deleted": an audit told a clean period by a
        # config that named another deployment's topics (as history and replay refuse).
        raise ConfigurationError(
            config.topics.lacked(
                "receipts",
                config.path,
                otherwise=", or run a store (stream-expiry sink) first",
            )
        )
    report = Deletions(wanted)
    seen: set[str] = set()
    async with consumer(brokers) as cons:
        async for batch in read_to_end(cons, topic):
            for records in batch.values():
                for rec in records:
                    found = _receipt(rec.value)
                    if found is None:
                        report.unreadable += 1
                        continue
                    receipt, deleted_at = found
                    for name in wanted.parts:
                        report.named.setdefault(name, set()).add(str(receipt.get(name)))
                    if not wanted.admits(receipt, deleted_at):
                        continue
                    if receipt["receipt_id"] in seen:
                        report.copies += 1
                        continue
                    seen.add(receipt["receipt_id"])
                    headers = list(rec.headers or ())
                    report.add(receipt, headers, deleted_at)
                    if export is not None:
                        export(exported(receipt, headers))
    if report.unreadable:
        log.warning(
            "%s on %s are not receipts (not JSON, or no receipt_id or deleted_at): left out",
            counted(report.unreadable, "message"),
            topic,
        )
    return report


def _many(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with thousands separators, and its noun: the counts by rule and category
    had them and the totals above them did not (``200000 receipts``, ``ttl 100,000``)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def _wait(seconds: float) -> str:
    """A wait in seconds, and from an hour up in hours or days beside it: a hold's week read
    ``604,801.000 s``, and an auditor had to divide to see the week (a trial: a day-old
    event's deletion, ``101,759.057 s``)."""
    said = f"{seconds:,.3f} s"
    if seconds >= 86_400:
        return f"{said} ({seconds / 86_400:,.1f} d)"
    if seconds >= 3_600:
        return f"{said} ({seconds / 3_600:.1f} h)"
    return said


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counter.items()) or "-"


def _never_named_lines(never: Mapping[str, Mapping[str, str | None]]) -> list[str]:
    """A line for each part of the filter no receipt names (:meth:`Deletions.never_named`):
    a typo in ``--org`` read as a clean period. The note that ids are case-sensitive comes
    only where case is the difference (``Acme`` for ``acme``), as the other commands say
    it: after ``sessions`` for ``session``, or a value close to none, it sent the reader
    looking for a case slip that was not there."""
    lines = []
    for name, said in never.items():
        given, closest = said["given"] or "", said["closest"]
        meant = ""
        if closest is not None:
            meant = f": did you mean {closest!r}?{case_note(name, given, closest)}"
        lines.append(printable(f"  no receipt of any time names {name} {given!r}{meant}"))
    return lines


def _heading(d: dict[str, Any]) -> tuple[str, str, str]:
    """The scope, the period and the copies counted once, as a report's first line says
    them (the receipts' and the rejected requests' alike)."""
    scope = ", ".join(f"{name} {d[name]}" for name in PARTS if d.get(name) is not None)
    period = f"{d['since'] or 'the beginning'} to {d['until'] or 'now'}"
    copies = f", {_many(d['copies'], 'copy', 'copies')} of them counted once" if d["copies"] else ""
    return scope, period, copies


def text_lines(d: dict[str, Any]) -> list[str]:
    """The report for a person, from :meth:`Deletions.as_dict`."""
    scope, period, copies = _heading(d)
    lines = [
        printable(
            f"deletions{' of ' + scope if scope else ''}, {period} (by deleted_at): "
            f"{_many(d['receipts'], 'receipt')}{copies}"
        )
    ]
    lines += _never_named_lines(d.get("never_named") or {})
    if not d["stores"]:
        lines.append("  no store deleted anything in that period")
    for name, s in d["stores"].items():
        lines.append(printable(f"  store {name}: {_many(s['deleted'], 'row')} deleted"))
        if s["deleted"]:
            lines.append(printable(f"    by rule: {_counts(s['by_reason'])}"))
            lines.append(printable(f"    by category: {_counts(s['by_category'])}"))
        waits = s["after_due_s"]
        if waits is not None:
            lines.append(
                printable(
                    f"    after its due time: p50 {_wait(waits['p50'])}, p99 "
                    f"{_wait(waits['p99'])}, max {_wait(waits['max'])}: {waits['max_key']}"
                )
            )
            if s["by_reason"].get("explicit"):
                # Read as the requests' wait, an erasure a hold deferred a week was "0.1 s".
                lines.append(
                    "      (an erasure from its tombstone's time, not its request's: see below)"
                )
        asked = s.get("after_request_s")
        if asked is not None:
            lines.append(
                printable(
                    f"    erasures, request to deletion: p50 {_wait(asked['p50'])}, p99 "
                    f"{_wait(asked['p99'])}, max {_wait(asked['max'])}: {asked['max_key']}"
                )
            )
        if s.get("request_unknown"):
            lines.append(
                f"    {_many(s['request_unknown'], 'erasure')} whose receipt says no request "
                "time (sent or stored by an older version): not in those times"
            )
        if s["late_causes"]:
            lines.append(
                printable(f"    late, by the service's cause: {_counts(s['late_causes'])}")
            )
        if s["found_nothing"]:
            lines.append(
                f"    {_many(s['found_nothing'], 'tombstone')} of records it never held "
                "(rows_deleted 0)"
            )
    refused = d.get("rejected_requests")
    if refused:
        lines.append(
            f"  {_many(refused, 'erasure request')} of that period "
            f"{'was' if refused == 1 else 'were'} rejected (dead-lettered, never carried out): "
            "see stream-expiry deletions --rejected"
        )
    return lines


# -- --rejected: the erasure requests the service dead-lettered --------------------------------

#: The fields that name the record an input event is about, as ``--rejected`` shows them.
_NAMING: Final = ("org", "bot", "env", "category", "record_id")


@dataclass
class Rejected:
    """The erasure requests on ``expiry.dlq`` dead-lettered in the period (by the dead
    letter's time) that ``filter`` admits, oldest first; and of the period's dead letters,
    how many were read and how many are no JSON object (their op cannot be read)."""

    filter: Filter
    requests: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: int = 0
    copies: int = 0  # letters of a request already listed (dead-lettered again)
    unreadable: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.filter.as_dict(),
            "dead_letters": self.dead_letters,
            "copies": self.copies,
            "unreadable": self.unreadable,
            "rejected": self.requests,
        }


def _read_as(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The op and the record an event names, as far as it can be read (bot and env left
    out: their defaults, as the service reads them), a field given under a misspelt name
    (``recordId``, ``operation``: maybe why it was rejected) read as the field; and those
    misspelt names with their values."""
    wanted = ("op", *_NAMING)
    read = {name: body.get(name) for name in wanted}
    named_as: dict[str, Any] = {}
    for name, meant in misspelt_fields(body):
        if meant in wanted and read[meant] is None:
            read[meant] = named_as[name] = body[name]
    read["bot"] = DEFAULT_BOT if read["bot"] is None else read["bot"]
    read["env"] = "live" if read["env"] is None else read["env"]
    return read, named_as


def _asks_erasure(op: Any) -> bool:
    """An op that asks an erasure: ``delete``, also in another case (``DELETE``, rejected
    as ``unknown_op``: its producer asked an erasure all the same)."""
    return isinstance(op, str) and op.strip().lower() == "delete"


def _admitted(wanted: Filter, request: Mapping[str, Any]) -> bool:
    """Whether ``wanted``'s parts admit a rejected request. A category rejected as
    unknown counts as the one it stands for but for case or a plural ``s``
    (``Conversations`` for ``conversation``), as ``history`` reads it: the request is that
    category's records' and names none of its own."""
    category = wanted.parts.get("category")
    said = request.get("category")
    if (
        category is not None
        and request.get("error") == "unknown_category"
        and isinstance(said, str)
        and said.lower().removesuffix("s") == category.lower().removesuffix("s")
    ):
        request = {**request, "category": category}
    return all(request.get(name) == value for name, value in wanted.parts.items())


def _body(value: bytes | None) -> dict[str, Any] | None:
    try:
        body = None if value is None else orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return body if type(body) is dict else None


async def rejected(config: Config, brokers: Brokers, wanted: Filter) -> Rejected:
    """Read ``expiry.dlq`` whole and list the erasure requests in it that ``wanted``
    admits: each with why it was rejected (the contract's headers), what it asked and
    where it was produced (:func:`history.dead_letter_event`), the record as far as it can
    be read, and the dead letter's key; one entry per request however many times it was
    dead-lettered (``copies``)."""
    topic = config.topics.dlq
    if await missing_topics(brokers, [topic]):
        # Read as empty, it answered "no erasure request rejected": a clean audit.
        raise ConfigurationError(
            config.topics.lacked(
                "dlq", config.path, so=", so the rejected erasure requests cannot be read"
            )
        )
    report = Rejected(wanted)
    first: dict[object, dict[str, Any]] = {}
    async with consumer(brokers) as cons:
        async for batch in read_to_end(cons, topic):
            for records in batch.values():
                for rec in records:
                    if not wanted.within(rec.timestamp):
                        continue
                    report.dead_letters += 1
                    body = _body(rec.value)
                    if body is None:
                        report.unreadable += 1
                        continue
                    read, named_as = _read_as(body)
                    if not _asks_erasure(read["op"]):
                        continue
                    found = dead_letter_event(rec, topic)
                    request = {k: v for k, v in found.items() if k != "kind"} | read
                    request["key"] = None if rec.key is None else rec.key.decode(errors="replace")
                    if named_as:
                        request["named_as"] = named_as
                    if not _admitted(wanted, request):
                        continue
                    same = same_as(found)
                    if same in first:
                        first[same]["copies"] += 1
                        report.copies += 1
                        continue
                    request["copies"] = 1
                    if same is not None:
                        first[same] = request
                    report.requests.append(request)
    report.requests.sort(key=lambda r: (r["at"], r["partition"], r["offset"]))
    return report


async def rejected_count(config: Config, brokers: Brokers, wanted: Filter) -> int | None:
    """How many erasure requests :func:`rejected` lists for ``wanted``, for the report of
    the receipts; None, said on stderr, when the dlq topic does not exist: the report of
    the receipts answered without it before, and does not stop for it now."""
    if await missing_topics(brokers, [config.topics.dlq]):
        log.warning(
            "the dlq topic %r does not exist: the erasure requests rejected are not counted",
            config.topics.dlq,
        )
        return None
    return len((await rejected(config, brokers, wanted)).requests)


def rejected_lines(d: dict[str, Any]) -> list[str]:
    """``--rejected`` for a person, from :meth:`Rejected.as_dict`: a line per request."""
    scope, period, copies = _heading(d)
    lines = [
        printable(
            f"rejected erasure requests{' of ' + scope if scope else ''}, {period} (by the "
            f"time dead-lettered): {len(d['rejected']):,} of "
            f"{_many(d['dead_letters'], 'dead letter')}{copies}: never carried out"
        )
    ]
    if not d["rejected"]:
        lines.append("  none: no erasure request was dead-lettered in that period")
    for r in d["rejected"]:
        named = " ".join(
            f"{name}={'(missing)' if r[name] is None else r[name]}" for name in _NAMING
        )
        misspelt = ", ".join(f"{name} {value!r}" for name, value in r.get("named_as", {}).items())
        said = [f"ts {r['ts']!r}"]
        said += [f"event_id {r['event_id']!r}"] if r.get("event_id") is not None else []
        said += [f"at {r['source']}"] if r.get("source") else []
        lines.append(
            printable(
                f"  {r['at']}  {r['error']} ({r['detail']}): {named}"
                + (f" (given as {misspelt})" if misspelt else "")
                + f"; {', '.join(said)}"
                + (f" (dead-lettered {r['copies']} times, one request)" if r["copies"] > 1 else "")
            )
        )
    if d["unreadable"]:
        n = d["unreadable"]
        lines.append(
            f"  {_many(n, 'dead letter')} of that period {'is' if n == 1 else 'are'} not a "
            "JSON object (not JSON, or cut to fit the topic): whether "
            f"{'it' if n == 1 else 'they'} asked an erasure cannot be read"
        )
    return lines


def filter_from(args: argparse.Namespace) -> Filter:
    """The report's filter from the command line (times already checked by argparse)."""
    parts = {name: getattr(args, name) for name in PARTS if getattr(args, name) is not None}
    since = None if args.since is None else parse_ts(args.since)
    until = None if args.until is None else parse_ts(args.until)
    if since is not None and until is not None and until <= since:
        raise ConfigurationError(f"--until {args.until} is not after --since {args.since}")
    return Filter(parts, since, until)


async def run_deletions(config: Config, brokers: Brokers, args: argparse.Namespace) -> int:
    if args.rejected:
        if args.receipts:
            raise ConfigurationError(
                "--rejected lists the erasure requests rejected, --receipts exports the "
                "receipts of deletions: give one of them"
            )
        found = (await rejected(config, brokers, filter_from(args))).as_dict()
        if args.json:
            sys.stdout.write(orjson.dumps(found).decode() + "\n")
        else:
            print("\n".join(rejected_lines(found)))
        return 0
    if args.receipts:
        out = sys.stdout.buffer

        def write(receipt: dict[str, Any]) -> None:
            out.write(orjson.dumps(receipt) + b"\n")

        report = await deletions(config, brokers, filter_from(args), write)
        out.flush()
        for line in _never_named_lines(report.never_named()):  # the export says nothing
            log.warning("%s", line.strip())
        return 0
    wanted = filter_from(args)
    report = await deletions(config, brokers, wanted)
    report.rejected_requests = await rejected_count(config, brokers, wanted)
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict()).decode() + "\n")
        return 0
    for line in text_lines(report.as_dict()):
        print(line)
    return 0

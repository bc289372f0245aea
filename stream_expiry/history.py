"""``stream-expiry history``: what happened to one record, from Kafka alone, for an audit.

An auditor asks "what happened to record X?": when was it stamped and with which TTL, was
an erasure asked, did a legal hold defer its deletion, when was it tombstoned and why, and
did every store delete it (their receipts). The answers are on five topics, all keyed by
the record key: ``expiry.stamped`` (stamps, and the null that ends a life, with its reason),
``expiry.tombstones``, ``expiry.receipts`` and ``expiry.audit``, and the active holds on
``expiry.holds``; and the record's input events that were rejected, on ``expiry.dlq`` (an
erasure request with a bad timestamp was never carried out: an auditor must see it); and
its input events past the service group's committed offsets, which the service has not
read yet (an erasure request waiting there is carried out nowhere yet). This command reads
them and prints the record's messages in time order.

Receipts are published at least once: one published again (same ``receipt_id``) is shown
once, with how many copies there were; so is a deferral the service wrote again (after a
restart or a restore). It never prints a payload: of a stamp it shows the
expiry fields and the paths ``[redact]`` removed, not ``data`` (the stores and the archive
hold that, for those allowed to see it).
Each topic is read whole (the receipts and the audit trail are kept 400 days by default):
seconds per million messages, meant for an audit, not for a dashboard.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from stream_expiry import codec
from stream_expiry.archive import archived_offsets
from stream_expiry.cliargs import check_category, check_ids
from stream_expiry.durations import format_duration
from stream_expiry.errors import ConfigurationError
from stream_expiry.event_fields import misspelt_fields
from stream_expiry.hold_command import read_holds
from stream_expiry.kafka import (
    committed_offsets,
    consumer,
    missing_topics,
    read_to_end,
    topic_partitions,
)
from stream_expiry.logs import printable, record_ref
from stream_expiry.model import DEFAULT_BOT, Identity, decode_key
from stream_expiry.replay import H_REPLAY
from stream_expiry.timeutil import MAX_TS_MS, MIN_TS_MS, format_ts, parse_ts, wall_clock_ms

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

    from stream_expiry.config import Config
    from stream_expiry.kafka_settings import Brokers
    from stream_expiry.model import Stamp

__all__ = ["History", "dead_letter_event", "history", "run_history", "same_as", "text_lines"]

log = logging.getLogger("stream_expiry.history")

# Of a stamp, what tells its life and expiry: never ``data``.
_STAMP_FIELDS = (
    "created_at",
    "expires_at",
    "ttl_seconds",
    "ttl_source",
    "last_activity_at",
    "erase_requested_at",
    "previous_deleted_at",
    "first_created_at",
    "held_lives",
    "redacted",
)
_IDENTITY = ("org", "bot", "env", "category", "record_id", "key")


@dataclass
class History:
    """One record's messages on the evidence topics, oldest first, and the holds on it."""

    key: str
    events: list[dict[str, Any]] = field(default_factory=list)
    holds: list[dict[str, Any]] = field(default_factory=list)
    # The same org, category and record id under another bot or env, on expiry.stamped:
    # ``{"bot": ..., "env": ..., "erased": bool}`` each, sorted (``erased``: an erasure
    # ended a life under that key, see :class:`_SameId`). An auditor who left out --bot read
    # "nothing on the evidence topics" for a record that was there under its bot (a trial).
    elsewhere: list[dict[str, Any]] = field(default_factory=list)
    # The record's life that no null has ended, as of when history was asked (None: none);
    # see :func:`open_life`.
    open_life: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "log_ref": record_ref(self.key),
            "events": self.events,
            "active_holds": self.holds,
            "same_id_elsewhere": self.elsewhere,
            "open_life": self.open_life,
        }


def open_life(events: list[dict[str, Any]], now_ms: int) -> dict[str, Any] | None:
    """The record's life that no null on the changelog has ended, from its latest stamp:
    ``created_at``, ``due_at`` (the earlier of its deferred erasure and its expiry; null:
    neither, it never expires), ``erasure`` (whether an erasure of it is asked: an
    erasure waits for no archive), ``as_of`` (``now_ms``) and ``overdue``; None when its last life is deleted
    or it has none. A record past its expiry that a hold or the archive kept, or that a
    stopped service had not deleted yet, read as one whose deletion was simply not listed:
    `history` said nothing of it (a trial: a record waiting for the archive)."""
    latest: dict[str, Any] | None = None
    for e in events:
        if e["kind"] == "stamp":
            latest = e
        elif e["kind"] == "deleted" and latest is not None:
            ends_by, created = e.get("ends_lives_created_by"), latest.get("created_at")
            if ends_by is None or created is None or parse_ts(created) <= parse_ts(ends_by):
                latest = None
    if latest is None:
        return None
    erasure, expires = latest.get("erase_requested_at"), latest.get("expires_at")
    # The earlier: a life a hold kept past its expiry and then asked to be erased is due
    # since its expiry (said since the request, a hold's delay read shorter: a trial).
    due = min((t for t in (erasure, expires) if t), key=parse_ts, default=None)
    return {
        "created_at": latest.get("created_at"),
        "due_at": due,
        "erasure": bool(erasure),
        "as_of": format_ts(now_ms),
        "overdue": due is not None and parse_ts(due) <= now_ms,
    }


def _event(rec: Any, topic: str, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "at": format_ts(rec.timestamp),
        "topic": topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "kind": kind,
        **fields,
    }


def _body(value: bytes) -> dict[str, Any] | None:
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return body if type(body) is dict else None


def _describe(config: Config, topic: str, rec: Any) -> dict[str, Any]:
    """One message as an event: its fields without the record's identity and never data."""
    t = config.topics
    headers = [(name, value) for name, value in rec.headers or ()]
    if topic == t.stamped and rec.value is None:
        deleted_at = codec.deleted_at_of(headers)
        return _event(
            rec,
            topic,
            "deleted",
            {
                "reason": codec.reason_of(headers),
                # The header's bound, not a time of deletion: the null ends the lives
                # created at or before it (an expiry's: its life's end, a millisecond
                # before expires_at, so a session touched at its expiry lives on). Shown
                # as "deleted_at", an auditor read every ttl deletion as early (a trial).
                "ends_lives_created_by": None if deleted_at is None else format_ts(deleted_at),
            }
            | _request_of(headers)
            | _requested_at_of(headers)
            | _late_cause_of(headers)
            | _replay_of(headers),
        )
    body = None if rec.value is None else _body(rec.value)
    if body is None:
        return _event(rec, topic, "unreadable", {})
    if topic == t.stamped:
        shown = {k: body[k] for k in _STAMP_FIELDS if k in body}
        stamp = _stamp_of(rec)
        fields = _ended_life_apart(shown, stamp) | _due_at_ingest(headers, stamp)
        return _event(rec, topic, "stamp", fields | _replay_of(headers))
    kind = {t.tombstones: "tombstone", t.receipts: "receipt"}.get(topic)
    if kind is None:  # the audit trail: its type says what it is
        kind = str(body.get("type", "audit"))
    rest = {k: v for k, v in body.items() if k not in _IDENTITY and k not in ("type", "data")}
    if kind in ("tombstone", "receipt"):
        rest |= _request_of(headers) | _late_cause_of(headers)
        if kind == "tombstone":  # a receipt's body says its own requested_at
            rest |= _requested_at_of(headers)
    elif kind == "deletion_deferred":
        rest |= _request_of(headers)  # an erasure's, as its release's tombstone names it
    return _event(rec, topic, kind, rest)


def _request_of(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """``{"request": ..., "request_event_id": ...}`` as far as ``headers`` say them, read
    as the stores read them (:func:`codec.request_of`): the text of a tombstone's request
    is then its receipts' to the letter (U+FFFD for bytes that are not UTF-8 and for
    U+0000), and an auditor matches the two by it."""
    request, event_id = codec.request_of(headers)
    if request is None:
        return {}
    return {"request": request} | ({} if event_id is None else {"request_event_id": event_id})


def _requested_at_of(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """``{"requested_at": ...}`` when an erasure's tombstone or null says when the erasure
    was requested (:data:`codec.H_ERASURE_REQUESTED_AT`, as the stores read it), else
    ``{}``. An erasure read after its life's expiry had ended that life (a backlog, a
    takeover) names no life: its request's time was said nowhere in `history`, and its
    tombstone read as "a record never seen, or an ended life" with nothing to tell which."""
    at = codec.erasure_requested_at_of(headers)
    if at is None or not MIN_TS_MS <= at <= MAX_TS_MS:
        return {}
    return {"requested_at": format_ts(at)}


def _late_cause_of(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """``{"late_cause": ...}`` when ``headers`` say why a deletion was late (as the stores
    read it, :func:`codec.late_cause_of`), else ``{}``."""
    cause = codec.late_cause_of(headers)
    return {} if cause is None else {"late_cause": cause}


# An erasure's tombstone (its null, its receipts, its deferral) that names no request:
# sent or deferred by a version before the service named them, or kept by a hold and its
# request lost (README, "Consuming expiry.tombstones": "Named by none still").
_UNNAMED_REQUEST = (
    "; the erasure request unknown (not named: an earlier version sent or deferred it, "
    "or a hold deferred it and its request was not kept)"
)


def _by_request(e: dict[str, Any]) -> str:
    """The erasure request a deletion carried out, as its headers name it: the answer to
    "which request deleted this?" (the event id the producer gave it, and where it was
    produced). An erasure that names none says so, rather than saying nothing: its
    request is unknown (a compliance officer read the silence as "no request")."""
    if not e.get("request"):
        return _UNNAMED_REQUEST if e.get("reason") == "explicit" else ""
    event_id = e.get("request_event_id")
    named = f"event_id {event_id!r} " if event_id else ""
    return f"; the erasure request {named}at {e['request']}"


# Why a deletion came more than a minute after the expiry (``codec.H_LATE_CAUSE``).
_LATE_CAUSE_TEXT = {
    "catch_up": "the service fired it late: it was down, behind or restored",
    "late_event": "the event that made it due came after its expiry",
    "hold": "a legal hold kept it until its release",
    "archive": "it waited for the archive ([archive] required)",
}
# And an erasure's, more than a minute after its request (never for the archive).
_LATE_ERASURE_TEXT = {
    "catch_up": "the service read the request late: it was down, behind or restored",
    "late_event": "the request reached the bus more than a minute after its time",
    "hold": "a legal hold deferred it until its release",
}


def _late(e: dict[str, Any]) -> str:
    """Why a late deletion was late, as its headers say (nothing for one on time). A
    cause this version does not know (a newer version's, or another producer's) is quoted
    and said to be one: shown bare, it reads as one of the service's."""
    cause = e.get("late_cause")
    if not cause:
        return ""
    texts = _LATE_ERASURE_TEXT if e.get("reason") == "explicit" else _LATE_CAUSE_TEXT
    why = texts.get(str(cause))
    if why is None:
        return (
            f"; late ({str(cause)!r}: a cause this version does not know, shown up to "
            f"{codec.LATE_CAUSE_MAX} bytes)"
        )
    return f"; late ({cause}: {why})"


def _ended_life_apart(fields: dict[str, Any], stamp: Stamp | None) -> dict[str, Any]:
    """A stamp's fields with the life an erasure naming no life keeps given apart, as
    ``ended_life``: the deferral of an erasure dated before the creation of the record's
    last life, which had ended (its tombstone gone out) before the hold. The hold keeps
    nothing of it, and the release sends no tombstone for it; listed among
    ``held_lives``, it read as a life the hold kept and whose deletion was still to
    come. The other entries, erasures read while it waited, stay there.

    ``stamp`` is the message as the service reads it (None: it cannot), and
    :attr:`Stamp.ended_life`, the processor's own test, decides. The same shape checked
    again here on the JSON had drifted from it: an erasure at epoch 0 given as a number
    was no erasure to it, and an erasure or a life's time that is no time (a stamp the
    service cannot read) was one."""
    lives = fields.get("held_lives")
    if stamp is None or stamp.ended_life is None or not isinstance(lives, list) or not lives:
        return fields
    rest = {k: v for k, v in fields.items() if k != "held_lives"}
    rest["ended_life"] = lives[0]
    if len(lives) > 1:
        rest["held_lives"] = lives[1:]
    return rest


def _stamp_of(rec: Any) -> Stamp | None:
    """``rec``'s stamp as the service reads it (:func:`codec.decode_stamp`), or None when
    it is not one the service can read."""
    try:
        return codec.decode_stamp(rec.key, rec.value)
    except ValueError:
        return None


def _due_at_ingest(headers: list[tuple[str, bytes]], stamp: Stamp | None) -> dict[str, str]:
    """``{"due_at_ingest": expiry}`` for a stamp whose life was already due when the event
    that set it was read (``codec.H_DUE_AT_INGEST``), else nothing. Read as a restore reads
    it (``state.restore._apply_stamps``): the header counts only when it equals the stamp's
    ``expires_at``. Left out, an auditor read a ``late_event`` tombstone with nothing on
    its stamp to say the life was due on arrival."""
    due = codec.due_at_ingest_of(headers)
    if due is None or stamp is None or stamp.expires_at != due:
        return {}
    return {"due_at_ingest": format_ts(due)}


def _replay_of(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    """``{"replay": run id}`` for a message ``stream-expiry replay`` published (a stamp it
    re-derived, or a newer message of an instance it published again after its own), else
    nothing. Without it, an auditor saw a record's expiry move, or its TTL's source change,
    with nothing to say that an operator's replay under another policy did it (a trial)."""
    for name, value in headers:
        if name == H_REPLAY:
            return {"replay": value.decode(errors="replace")}
    return {}


def _hold_on(rec: Any, identity: Identity) -> bool:
    """Whether an audit entry keyed by a hold id places or releases a hold that matches
    the record (every field the hold gives equals the record's)."""
    body = None if rec.value is None else _body(rec.value)
    if body is None or body.get("type") not in ("hold_placed", "hold_released"):
        return False
    mine = dict(zip(("org", "bot", "env", "category", "record_id"), identity.parts(), strict=True))
    return body.get("org") == identity.org and all(
        body.get(name) in (None, value) for name, value in mine.items()
    )


def _one_per_receipt(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Receipts are published at least once (a sink that crashed after publishing a batch
    publishes it again, the same receipt with the same ``receipt_id``): one event per
    receipt, the first publication, with ``copies`` saying how many there were.

    So are deferrals: the service writes a deferral again when it makes it again, after a
    restart or a restore from the changelog (a lost disk), and the entries with the same
    ``reason``, ``expires_at``, ``erase_requested_at`` and holds are one deferral (the
    README's rule). Listed each time, an auditor read one held deletion as deferred twice
    (a trial: a SIGKILL and a lost state directory). An entry naming other holds (one of
    them released, another still keeping the record) stays an event of its own.

    So are dead letters (rekey sends a batch again after a crash or a rebalance): the
    letters of one input event (where it was produced, and what it asked) are one event."""
    first: dict[object, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for e in events:
        same = same_as(e)
        if same is None:
            out.append(e)
        elif same in first:
            first[same]["copies"] += 1
        else:
            first[same] = e | {"copies": 1}
            out.append(first[same])
    return out


def same_as(e: dict[str, Any]) -> object:
    """What makes two events one (a receipt's id, a deferral's what and why), or None."""
    if e["kind"] == "receipt":
        return e.get("receipt_id")
    if e["kind"] == "dead_letter":
        if e.get("source") is None:
            return None
        # What it asked too: a topic made again reuses its offsets for other events.
        said = (e.get("op"), str(e.get("ts")), e.get("event_id"), e.get("error"))
        return ("dead_letter", e["source"], *said)
    if e["kind"] == "deletion_deferred":
        holds = e.get("hold_ids")
        return (
            "deferral",
            e.get("reason"),
            e.get("expires_at"),
            e.get("erase_requested_at"),
            tuple(sorted(map(str, holds))) if isinstance(holds, list) else None,
        )
    return None


class _SameId:
    """The keys on ``expiry.stamped`` of ``identity``'s org, category and record id under
    another bot or env, or under its org spelt in another case: where a record is when
    history was asked about the wrong bot (or ``--org Omega`` for ``omega``: ids are
    case-sensitive, and a trial's wrong case said only "nothing on the evidence topics");
    and whether an erasure ended a life there (an explicit null), as an erasure request
    that named the wrong bot or env does: the record asked about lives on, and its own
    history said only "another record" beside it (a trial)."""

    def __init__(self, identity: Identity) -> None:
        self._identity = identity
        self._key = identity.key.encode()
        parts = identity.key.split("/")
        # Cheap tests on the raw key before it is decoded: the quoted org, in any case,
        # and the quoted record id.
        self._head = (parts[0] + "/").encode().lower()
        self._tail = ("/" + parts[4]).encode()
        self._seen: set[tuple[str, str, str]] = set()
        self._erased: set[tuple[str, str, str]] = set()

    def look(self, records: list[Any]) -> None:
        me = self._identity
        org = me.org.casefold()
        for rec in records:
            raw = rec.key
            if raw is None or raw == self._key or not raw.endswith(self._tail):
                continue
            if raw[: len(self._head)].lower() != self._head:
                continue
            try:
                other = decode_key(raw.decode())
            except (UnicodeDecodeError, ValueError):
                continue
            if (other.org.casefold(), other.category, other.record_id) == (
                org,
                me.category,
                me.record_id,
            ):
                where = (other.org, other.bot, other.env)
                self._seen.add(where)
                if rec.value is None and codec.reason_of(list(rec.headers or ())) == "explicit":
                    self._erased.add(where)

    def found(self) -> list[dict[str, Any]]:
        return [
            {"org": org, "bot": bot, "env": env, "erased": (org, bot, env) in self._erased}
            for org, bot, env in sorted(self._seen)
        ]


def _names(rec: Any, identity: Identity) -> bool:
    """Whether a dead letter's value names the record (bot and env missing or null: their
    defaults, as the service reads them; a null was taken for a bot named None)."""
    body = None if rec.value is None else _body(rec.value)
    return body is not None and _parts_given(body) == identity.parts()


def _parts_given(fields: Mapping[str, Any]) -> tuple[Any, ...]:
    """The identity an event's ``fields`` give, as the service reads them (bot and env
    missing or null: their defaults), to compare with :meth:`Identity.parts`."""
    bot, env = fields.get("bot"), fields.get("env")
    return (
        fields.get("org"),
        DEFAULT_BOT if bot is None else bot,
        "live" if env is None else env,
        fields.get("category"),
        fields.get("record_id"),
    )


_IDENTITY_FIELDS: Final = ("org", "bot", "env", "category", "record_id")


def _named_as(rec: Any, identity: Identity) -> dict[str, str] | None:
    """The fields by which a rejected event names the record under another name or
    spelling, ``{"recordId": "c9"}`` or ``{"category": "Conversation"}``, or None.

    An erasure request sent with ``recordId`` for ``record_id``, or with an unknown
    category (``Conversation``, ``conversations``), is dead-lettered and so carried out
    nowhere; `history` of the record showed nothing of it, and an auditor took the
    record for one never asked to be erased (a trial). Such an event is the record's
    when its fields, read with a misspelt name as the field it stands for (as the
    service's dead-letter detail says it), give the record, its category aside when
    it was rejected for that category and is the record's without case or a plural
    ``s``: an unknown category names no record of its own."""
    body = None if rec.value is None else _body(rec.value)
    if body is None:
        return None
    values = dict(body)
    said: dict[str, str] = {}
    for name, meant in misspelt_fields(body):
        if meant in _IDENTITY_FIELDS and isinstance(body[name], str):
            values[meant] = body[name]
            said[name] = body[name]
    category = values.get("category")
    if (
        isinstance(category, str)
        and category != identity.category
        and _error_of(rec) == "unknown_category"
        and category.lower().removesuffix("s") == identity.category.lower().removesuffix("s")
    ):
        values["category"] = identity.category
        said["category"] = category
    if _error_of(rec) == "invalid_field":
        _ill_typed_as(values, identity, said)
    if not said:
        return None
    return said if _parts_given(values) == identity.parts() else None


def _ill_typed_as(values: dict[str, Any], identity: Identity, said: dict[str, str]) -> None:
    """Read, in ``values`` (a rejected event's fields), an identity field the service
    refused (``invalid_field``) as the record's part it stands for: a number whose JSON
    text is that part (``"record_id": 123``), an ``env`` that is the record's but for
    case (``"Live"``). Erasure requests so sent were carried out nowhere, and `history`
    of the record showed neither (a trial). Each one read is added to ``said``."""
    for name, want in zip(_IDENTITY_FIELDS, identity.parts(), strict=True):
        value = values.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            text = means = orjson.dumps(value).decode()
        elif name == "env" and isinstance(value, str):
            text, means = value, value.lower()
        else:
            continue
        if means == want and value != want:
            values[name] = want
            said[name] = text


def _error_of(rec: Any) -> str | None:
    for name, value in rec.headers or ():
        if name == codec.H_ERROR:
            return str(value.decode(errors="replace"))
    return None


def dead_letter_event(rec: Any, topic: str) -> dict[str, Any]:
    """A rejected input event: why, and what it asked (its op and time), never its data;
    its ``event_id`` and where it was produced (``source``, ``topic[partition]@offset``),
    so that a rejected erasure request is found by the id its tombstone would have named."""
    headers = {name: value.decode(errors="replace") for name, value in rec.headers or ()}
    body = _body(rec.value) or {}
    found = {
        "op": body.get("op", "create"),
        "ts": body.get("ts"),
        "error": headers.get(codec.H_ERROR),
        "detail": headers.get(codec.H_DETAIL),
    }
    event_id = body.get("event_id")
    if event_id is not None:
        # As the request headers carry it: whole up to 512 characters. One of another
        # type (maybe why it was rejected) as its JSON text.
        said = event_id if isinstance(event_id, str) else orjson.dumps(event_id).decode()
        cut = codec.REQUEST_EVENT_ID_MAX
        found["event_id"] = said if len(said) <= cut else said[: cut - 3] + "..."
    source = headers.get(codec.H_REKEYED_FROM)
    if source is None and codec.H_TOPIC in headers:
        source = (
            f"{headers[codec.H_TOPIC]}[{headers.get(codec.H_PARTITION)}]"
            f"@{headers.get(codec.H_OFFSET)}"
        )
    if source is not None:
        found["source"] = source
    return _event(rec, topic, "dead_letter", found)


async def _unread_input(
    brokers: Brokers, group_id: str, topics: list[str], identity: Identity
) -> list[dict[str, Any]]:
    """The record's input events that the service has not read yet: those past its
    group's committed offset on each input partition (every event of a partition where it
    committed none). An erasure request waiting there was carried out nowhere, and
    `history` showed nothing of it, nor why (a compliance trial): it is not late in the
    service's eyes until read. Only what they ask is shown (op, time, event id, where),
    never their data; an event is the record's when its fields name it (as a dead
    letter's), whatever its key."""
    async with consumer(brokers, group_id=group_id) as cons:
        committed = await committed_offsets(cons, await topic_partitions(cons, topics))
    found: list[dict[str, Any]] = []
    for topic in topics:
        start = {
            tp.partition: offset
            for tp, offset in committed.items()
            if tp.topic == topic and offset is not None
        }
        async with consumer(brokers) as cons:
            async for batch in read_to_end(cons, topic, start=start):
                for records in batch.values():
                    found.extend(
                        _unread(rec, topic, start.get(rec.partition))
                        for rec in records
                        if _names(rec, identity)
                    )
    return found


def _unread(rec: Any, topic: str, committed: int | None) -> dict[str, Any]:
    """An input event not read by the service yet: what it asks, and where it waits."""
    body = _body(rec.value) or {}
    said: dict[str, Any] = {
        "op": body.get("op", "create"),
        "ts": body.get("ts"),
        "source": f"{topic}[{rec.partition}]@{rec.offset}",
        "group_offset": committed,
    }
    if body.get("event_id") is not None:
        said["event_id"] = body["event_id"]
    return _event(rec, topic, "unread_input", said)


async def history(config: Config, brokers: Brokers, identity: Identity) -> History:
    """Every message of ``identity``'s key on the evidence topics, and the holds on it."""
    key = identity.key.encode()
    t = config.topics
    evidence = [t.stamped, t.tombstones, t.receipts, t.audit, t.dlq, t.holds]
    missing = await missing_topics(brokers, [*evidence, *t.inputs])
    if t.stamped in missing:
        # Read as empty, it answered "nothing on the evidence topics for this key": an
        # audit told a record was clean by a config that named another deployment's topics.
        raise ConfigurationError(
            t.lacked(
                "stamped", config.path, so=", so this cluster holds no evidence of that config's"
            )
        )
    for topic in missing:
        # Where the name came from, as the refusal above: "is it the service's [topics] of
        # --config?" also to a run given it, whose STREAM_EXPIRY_TOPICS_* was the cause.
        source, fix = t.origin(t.key_of(topic), config.path)
        log.warning(
            "%s (%s) does not exist on the cluster: nothing of it is in this history (if "
            "that is not the services' name: %s)",
            topic,
            source,
            fix,
        )
    found = History(identity.key)
    near = _SameId(identity)
    for topic in (t.stamped, t.tombstones, t.receipts, t.audit):
        async with consumer(brokers) as cons:
            async for batch in read_to_end(cons, topic):
                for records in batch.values():
                    found.events.extend(
                        _describe(config, topic, rec)
                        for rec in records
                        if rec.key == key or (topic == t.audit and _hold_on(rec, identity))
                    )
                    if topic == t.stamped:
                        near.look(records)
    found.elsewhere = near.found()
    # Dead letters keep the producer's key, which need not be the record key: an event is
    # the record's when the fields it gives name it (an erasure request rejected, say).
    async with consumer(brokers) as cons:
        async for batch in read_to_end(cons, t.dlq):
            for records in batch.values():
                for rec in records:
                    if _names(rec, identity):
                        found.events.append(dead_letter_event(rec, t.dlq))
                    elif (named_as := _named_as(rec, identity)) is not None:
                        found.events.append(dead_letter_event(rec, t.dlq) | {"named_as": named_as})
    inputs = [topic for topic in t.inputs if topic not in missing]
    found.events += await _unread_input(brokers, config.group_id, inputs, identity)
    found.events = _in_order(found.events)
    found.events = _one_per_receipt(found.events)
    _mark_rows_replaced(found.events)
    _mark_erasures_of_deleted_lives(found.events)
    _mark_holds_that_kept_nothing(found.events)
    holds = await read_holds(config, brokers)
    found.holds = [h.as_dict() for h in sorted(holds.holding(identity), key=lambda h: h.hold_id)]
    found.open_life = open_life(found.events, wall_clock_ms())
    if found.open_life is not None:
        found.open_life["archive"] = await _archive_of(config, brokers, found)
    return found


async def _archive_of(config: Config, brokers: Brokers, found: History) -> dict[str, Any] | None:
    """Whether the archive has the open life's latest stamp, when that is what may keep an
    overdue record (``[archive] required``, no active hold, no erasure asked, which waits for
    no archive): ``{"group": ..., "written": bool}``, from the archive group's committed
    offset on the stamp's partition as the service reads it; else None. "The archive has not
    written its latest stamp yet, or the service is stopped or behind" (a trial) left an
    auditor asking "why is it still there?" to find which in ``status``, whose count of
    records waiting for the archive names none."""
    life = found.open_life
    if not (config.archive.required and life and life["overdue"]) or life["erasure"]:
        return None
    if found.holds:
        return None
    stamp = next(e for e in reversed(found.events) if e["kind"] == "stamp")
    group = config.archive.group_id
    committed = await archived_offsets(brokers, group, config.topics.stamped)
    return {"group": group, "written": stamp["offset"] < committed.get(stamp["partition"], 0)}


def _in_order(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kafka timestamps order the topics against each other; within a partition, the log
    order (``events`` come in it). A message may carry an earlier timestamp than the one
    before it (a late create and its erasure, read together: the stamp timestamped when it
    was made, the null when the erasure asked), and sorted by timestamp alone the record
    was listed as created again after its deletion (a trial). So each event sorts at the
    latest timestamp of its partition up to it, which keeps the log order there."""
    latest: dict[tuple[str, int], str] = {}
    keyed = []
    for e in events:
        where = (e["topic"], e["partition"])
        at = max(e["at"], latest.get(where, e["at"]))
        latest[where] = at
        keyed.append((at, e))
    keyed.sort(key=lambda pair: pair[0])  # stable: equal keys keep the log order
    return [e for _, e in keyed]


_HOLD_EVENTS: Final = ("hold_placed", "hold_released")


def _mark_erasures_of_deleted_lives(events: list[dict[str, Any]]) -> None:
    """Mark (``already_deleted_by``: the bound of the nulls before it) an erasure's null,
    and its tombstone when that names no life, when an earlier null had already ended
    every life the erasure reaches: an erasure read after the life's expiry had ended it
    (a backlog, a takeover), whose tombstone names no life and whose null ends the lives
    created up to the request; or a null sent again. Shown as they were, that null said
    the lives "are deleted" as if it had deleted them, after the expiry's null that had,
    and its tombstone "a record never seen, or an ended life", not which. A null reaches
    the lives created at or before its bound, in the changelog's order (one partition);
    a tombstone is its null's, by request and request time (without both said, an
    earlier version's, or its null compacted away, it is not marked)."""
    deleted: int | None = None  # the latest bound of the nulls so far
    erasures: dict[tuple[Any, Any], Any] = {}  # (request, requested_at) -> its null's mark
    for e in events:
        if e["kind"] != "deleted":
            continue
        bound = e.get("ends_lives_created_by")
        if e.get("reason") == "explicit":
            if bound and deleted is not None and parse_ts(bound) <= deleted:
                e["already_deleted_by"] = format_ts(deleted)
            erasures.setdefault(
                (e.get("request"), e.get("requested_at")), e.get("already_deleted_by")
            )
        deleted = _later(deleted, bound)
    for e in events:
        if (
            e["kind"] == "tombstone"
            and e.get("reason") == "explicit"
            and not e.get("created_at")
            and e.get("requested_at")
        ):
            mark = erasures.get((e.get("request"), e["requested_at"]))
            if mark:
                e["already_deleted_by"] = mark


def _later(bound: int | None, at: Any) -> int | None:
    """The later of ``bound`` and the time ``at`` (RFC 3339; None: none)."""
    if not at:
        return bound
    ms = parse_ts(at)
    return ms if bound is None else max(bound, ms)


def _mark_rows_replaced(events: list[dict[str, Any]]) -> None:
    """Mark (``replaced_by_next_life``: the next life's ``created_at``, and ``held``,
    whether a legal hold deferred the life's deletion) each receipt of a
    life whose row a store lost to the record's next life before the life's tombstone
    came: a store of an earlier version kept one row per record and no held lives aside
    (as stores keep them now, rule 8 of :mod:`~stream_expiry.sinks._logic`), so the stamp
    of a life begun while a legal hold kept the one before replaced that one's row (and a
    store now still does so for a life the stamp does not name held), and its receipt,
    written at the release, says ``deleted_at`` the time of that write, inside the hold.
    Shown as a plain receipt, it read as a deletion while the hold was active (a trial).
    A store deletes on a tombstone or a null, each written once the tombstone is
    decided, so a receipt dated before its tombstone's ``emitted_at`` is such a
    replacement; the next life is the first stamp of a later creation written before that
    tombstone was decided."""
    for e in events:
        if e["kind"] != "receipt" or e.get("rows_deleted") != 1:
            continue
        created, deleted, emitted = e.get("created_at"), e.get("deleted_at"), e.get("emitted_at")
        if not (created and deleted and emitted) or parse_ts(deleted) >= parse_ts(emitted):
            continue
        for later in events:
            life = later.get("created_at") if later["kind"] == "stamp" else None
            # Stamped before the tombstone was decided (both the service's clock): a life
            # begun after an ordinary deletion is stamped after it, however the sink's
            # clock is set.
            if life and parse_ts(life) > parse_ts(created) and later["at"] < emitted:
                held = any(
                    d["kind"] == "deletion_deferred" and d.get("expires_at") == e.get("expires_at")
                    for d in events
                )
                e["replaced_by_next_life"] = {"created_at": life, "held": held}
                break


def _mark_holds_that_kept_nothing(events: list[dict[str, Any]]) -> None:
    """Mark (``kept_a_life``: False) the placement and release of each hold that matched
    the record's key while no life of it ran: placed after its deletion, or before its
    first stamp, and released before a life began. The audit trail lists every hold whose
    scope matches the key, an org's too, and an auditor read such a hold as one that had
    covered the record (a trial: holds placed after the record's deletion). A life runs
    from a stamp until a null on the changelog; a hold still active counts to the end.

    Such a hold placed after an erasure of the record is also marked ``erased_before``:
    ``archive purge`` keeps an erased record's archive lines while a hold matches it, so
    that hold kept what an archive still had, and "kept nothing" was wrong there (a
    trial). Which lines an archive had is not on Kafka; the erasure is."""
    alive = erased = False
    placed: dict[str, tuple[dict[str, Any], bool]] = {}  # hold id -> placement, kept
    for e in events:
        kind = e["kind"]
        if kind in ("stamp", "deletion_deferred"):
            alive = True
            placed = {h: (ev, True) for h, (ev, _) in placed.items()}
        elif kind == "deleted":
            alive = False
            erased = erased or e.get("reason") == "explicit"
        elif kind == "tombstone":
            erased = erased or e.get("reason") == "explicit"  # a life marker in an archive
        elif kind == "hold_placed":
            placed[str(e.get("hold_id"))] = (e, alive)
        elif kind == "hold_released":
            placement, kept = placed.pop(str(e.get("hold_id")), (None, alive))
            _mark_kept(placement, e, kept=kept or alive, erased=erased)
    for placement, kept in placed.values():
        _mark_kept(placement, kept=kept, erased=erased)


def _mark_kept(*events: dict[str, Any] | None, kept: bool, erased: bool) -> None:
    """A hold's placement and release: whether a life ran while it held, and when none
    did, whether the record was erased by then (its archive lines kept by the purge)."""
    for ev in events:
        if ev is not None:
            ev["kept_a_life"] = kept
            if not kept:
                ev["erased_before"] = erased


def _ttl_text(seconds: object) -> str:
    """A stamp's TTL as the config and ``explain`` write it, then in seconds (``30d,
    2592000 s,`` before ``from default``): an auditor read ``ttl 2592000 s from default``
    (a trial) and had to work out that it was the 30 days the policy says; ``90 s`` alone
    when seconds are its unit."""
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= 0:
        return f"{seconds} s"
    short = format_duration(seconds * 1000)
    return f"{seconds} s" if short == f"{seconds}s" else f"{short}, {seconds} s,"


def _summary(e: dict[str, Any]) -> str:
    kind = e["kind"]
    if kind == "stamp":
        if e.get("created_at") is None:
            text = "no life (a record never seen, or one whose life had ended)"
        elif e.get("expires_at") is None:
            text = f"created {e['created_at']}, never expires"
        else:
            text = (
                f"created {e['created_at']}, expires {e['expires_at']}"
                f" (ttl {_ttl_text(e.get('ttl_seconds'))} from {e.get('ttl_source')})"
            )
        if e.get("erase_requested_at"):
            text += f", erasure asked at {e['erase_requested_at']} (deferred)"
        ended = e.get("ended_life")
        if isinstance(ended, dict):
            text += (
                f", dated before the creation ({ended.get('created_at')}) of the life that"
                f" expired {ended.get('expires_at') or '-'}, tombstoned before the hold"
            )
        if e.get("redacted"):
            text += f", redacted {', '.join(e['redacted'])}"
        if e.get("due_at_ingest"):
            text += ", due on arrival: its life's expiry had passed when the event was read"
        return text + _by_replay(e) + _held_lives(e.get("held_lives"))
    if kind == "deleted":
        return (
            f"null on the changelog (reason {e['reason'] or '-'}): the lives created at or "
            f"before {e['ends_lives_created_by'] or '-'} are deleted"
            + _already_deleted(e)
            + _asked_at(e)
            + _by_request(e)
            + _late(e)
            + _by_replay(e)
        )
    if kind == "tombstone":
        return (
            f"reason {e.get('reason')}, emitted {e.get('emitted_at')}, expires_at "
            f"{e.get('expires_at') or '-'}, created_at {e.get('created_at') or '-'}"
            + (
                ""
                if e.get("created_at")
                else _already_deleted(e) or " (a record never seen, or an ended life)"
            )
            + _asked_at(e)
            + _by_request(e)
            + _late(e)
        )
    if kind == "receipt":
        copies = e.get("copies", 1)
        return (
            f"store {e.get('store')}: reason {e.get('reason')}, rows deleted "
            f"{e.get('rows_deleted')}"
            # Which life: a record's lives each get a receipt from every store (a trial).
            + (f" of the life created {e['created_at']}" if e.get("created_at") else "")
            + f", deleted {e.get('deleted_at')}"
            + _by_request(e)
            + _late(e)
            + _replaced(e)
            + (f" (published {copies} times, one receipt)" if copies > 1 else "")
        )
    if kind == "dead_letter":
        op = str(e.get("op"))
        article = "an" if op[:1].lower() in ("a", "e", "i", "o", "u") else "a"
        said = [f"event_id {e['event_id']!r}"] if e.get("event_id") is not None else []
        said += [f"at {e['source']}"] if e.get("source") else []
        where = "; " + " ".join(said) if said else ""
        copies = e.get("copies", 1)
        named_as = e.get("named_as") or {}
        as_said = ", ".join(f"{name} {value!r}" for name, value in named_as.items())
        return (
            f"{article} {op} event (ts {e.get('ts')}{where}) rejected: {e.get('error')}"
            f" ({e.get('detail')})"
            + (f" (dead-lettered {copies} times, one event)" if copies > 1 else "")
            + (f"; it names this record as {as_said}" if as_said else "")
        )
    if kind == "unread_input":
        op = str(e.get("op"))
        what = "an erasure request" if op == "delete" else f"a {op} event"
        event_id = f", event_id {e['event_id']!r}" if e.get("event_id") is not None else ""
        offset = e.get("group_offset")
        where = "none" if offset is None else f"{offset:,}"
        return (
            f"{what} (ts {e.get('ts')}{event_id}) at {e.get('source')}, not read by the "
            f"service yet (its group's committed offset there: {where}): nothing it asks is "
            "done until the service reads it; `stream-expiry status` shows the lag"
        )
    if kind in _HOLD_EVENTS:
        if kind == "hold_placed":
            text = f"hold {e.get('hold_id')}: {e.get('reason')}"
        else:  # a release's entry repeats the placement's reason
            text = f"hold {e.get('hold_id')} (placed for: {e.get('reason')})"
            if e.get("release_reason"):
                text += f", released because: {e['release_reason']}"
        if e.get("by"):
            text += f", by {e['by']}"
        if e.get("kept_a_life") is False:
            text += " (its scope matches this key, but no life of the record ran while it held"
            if e.get("erased_before"):
                text += (
                    ": it kept no life in the service; the record was erased before, and "
                    "`archive purge` keeps an erased record's archive lines while a hold "
                    "matches it, so an archive that still had them kept them"
                )
            text += ")"
        return text
    if kind == "deletion_deferred":
        copies = e.get("copies", 1)
        return (
            f"{e.get('reason')} deletion deferred by {', '.join(e.get('hold_ids') or [])}"
            f" (expires_at {e.get('expires_at') or '-'})"
            + _by_request(e)
            + (f" (written {copies} times, one deferral)" if copies > 1 else "")
        )
    return ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("at", "topic", "kind"))


def _replaced(e: dict[str, Any]) -> str:
    """A receipt's row replaced by the record's next life (:func:`_mark_rows_replaced`)."""
    replaced = e.get("replaced_by_next_life")
    if not isinstance(replaced, dict):
        return ""
    text = (
        f"; its row was replaced at {e.get('deleted_at')} by the record's next life "
        f"(created {replaced.get('created_at')}): a store keeps one row per record"
    )
    if replaced.get("held"):
        return text + (
            "; the hold kept this life in the service until its release, and this receipt "
            "is written at it"
        )
    return text + "; this life's tombstone came after"


def _held_lives(lives: Any) -> str:
    """The earlier lives a stamp says a legal hold keeps (``held_lives``), oldest first: a
    record erased or expired under a hold and come back runs its next life beside them.
    Left out, the text showed the new life alone, and a held life, its data and its
    erasure read as gone (a trial)."""
    if not isinstance(lives, list) or not lives:
        return ""
    said = []
    for life in lives:
        if not isinstance(life, dict):
            continue
        if life.get("created_at") is None:
            said.append(f"an erasure asked at {life.get('erase_requested_at') or '-'}")
            continue
        text = f"created {life['created_at']}, expires {life.get('expires_at') or '-'}"
        if life.get("erase_requested_at"):
            text += f", erasure asked at {life['erase_requested_at']}"
        said.append(text)
    if not said:
        return ""
    noun = "life" if len(said) == 1 else "lives"
    return f"; a legal hold keeps its earlier {noun}: " + "; ".join(said)


def _asked_at(e: dict[str, Any]) -> str:
    """When the erasure a tombstone or null carries out was requested, as it says."""
    return f", erasure asked at {e['requested_at']}" if e.get("requested_at") else ""


def _already_deleted(e: dict[str, Any]) -> str:
    """What :func:`_mark_erasures_of_deleted_lives` found of an erasure: every life it
    reaches had been deleted by an earlier null."""
    if not e.get("already_deleted_by"):
        return ""
    return (
        f" (every life it erases was deleted before it: a null above ended the lives "
        f"created at or before {e['already_deleted_by']})"
    )


def _by_replay(e: dict[str, Any]) -> str:
    return f", published by replay {e['replay']}" if e.get("replay") else ""


def text_lines(d: dict[str, Any]) -> list[str]:
    """``history`` for a person, from :meth:`History.as_dict`: one line per message. Every
    line goes through :func:`printable`: ids, hold reasons, a rejected event's fields and a
    receipt's store are whatever a producer wrote, and an audit must not let them drive the
    terminal or forge a line of evidence."""
    lines = [f"record {d['key']} (in log lines: record={d['log_ref']})"]
    if all(e["kind"] in _HOLD_EVENTS for e in d["events"]):
        lines.append(
            "  nothing on the evidence topics for this key"
            + (" but holds whose scope matches it" if d["events"] else "")
            + " (check --org, --bot, --env, --category and --record-id)"
        )
    elsewhere = d.get("same_id_elsewhere") or ()
    asked = decode_key(d["key"]).org if elsewhere else None
    for other in elsewhere:
        erased = (
            ", erased there on request (an erasure under another bot or env does not "
            "erase this one: check the ids the request gave)"
            if other.get("erased")
            else ""
        )
        where = f"--bot {other['bot']!r} --env {other['env']!r}"
        said = "this org, category and record id are"
        if other.get("org", asked) != asked:  # the org in another case
            where = f"--org {other['org']!r} {where}"
            said = (
                "this category and record id are, with the org in another case (ids are "
                "case-sensitive),"
            )
        lines.append(
            printable(f"  {said} also on the changelog under {where}: another record{erased}")
        )
    for e in d["events"]:
        lines.append(f"  {e['at']}  {e['kind']:<17} {_summary(e)}")
    holds = d["active_holds"]
    life = d.get("open_life")
    if life is not None:
        lines.append("  " + _open_life_text(life, bool(holds)))
    lines.append(
        "  active legal holds on it: "
        + (", ".join(f"{h['hold_id']} ({h['reason']})" for h in holds) if holds else "none")
    )
    return [printable(line) for line in lines]


def _open_life_text(life: dict[str, Any], held: bool) -> str:
    """What :func:`open_life` says, for a person: not deleted, and when it is due or
    how long it has been overdue, with what may keep it."""
    what = "its erasure" if life.get("created_at") is None else "its life"
    if life.get("due_at") is None:
        return f"not deleted: {what} never expires (as of {life['as_of']})"
    if not life.get("overdue"):
        return f"not deleted: due {life['due_at']} (as of {life['as_of']})"
    if held:
        why = "a legal hold keeps it (below)"
    elif life.get("erasure"):
        # An erasure is not delayed for the archive (the contract): only a service down.
        why = (
            "no active hold keeps it, and an erasure waits for no archive: the service is "
            "stopped or behind; `stream-expiry status` says which (overdue, lag)"
        )
    elif "archive" not in life:  # the JSON of an earlier version
        why = (
            "no active hold keeps it: the archive has not written its latest stamp yet "
            "([archive] required), or the service is stopped or behind; `stream-expiry "
            "status` says which (overdue, waiting for the archive, lag)"
        )
    elif life["archive"] is not None and not life["archive"]["written"]:
        why = (
            f"no active hold keeps it: it waits for the archive (group "
            f"{life['archive']['group']!r}), which has not written its latest stamp yet "
            "([archive] required): check that `stream-expiry archive` runs"
        )
    else:
        archive = "no archive is required" if life["archive"] is None else "the archive has it"
        why = (
            f"no active hold keeps it and {archive}: the service is stopped or behind; "
            "`stream-expiry status` says which (overdue, lag)"
        )
    return f"not deleted, due since {life['due_at']} (as of {life['as_of']}): {why}"


def checked_identity(config: Config, args: argparse.Namespace) -> Identity:
    """The record the arguments name, refused as the service would refuse it: an id it
    never accepts, or a category the configuration does not have, can have no evidence, and
    answering "nothing on the evidence topics" would tell an auditor a typo was clean."""
    check_ids({"--org": args.org, "--bot": args.bot, "--record-id": args.record_id})
    check_category(args.category, config.categories)
    return Identity(args.org, args.bot, args.env, args.category, args.record_id)


async def run_history(config: Config, brokers: Brokers, args: argparse.Namespace) -> int:
    identity = checked_identity(config, args)
    found = await history(config, brokers, identity)
    if args.json:
        sys.stdout.write(orjson.dumps(found.as_dict()).decode() + "\n")
        return 0
    for line in text_lines(found.as_dict()):
        print(line)
    return 0

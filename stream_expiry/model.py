"""Messages at the edge: input events, record keys, stamps and tombstones.

Rules this module keeps (see ../shared/CONTRACT.md):

* A record key identifies (org, bot, env, category, record_id) injectively: each part is
  percent-encoded (every byte but unreserved ASCII letters, digits and ``-._~``) and the parts
  are joined by ``/``. No part can contain a raw ``/``, so two identities never share a key,
  and a key decodes back to exactly its identity.
* Parsing never raises on bad input: it returns a :class:`Rejection` whose ``code`` is one of
  the contract's dead-letter codes, so the caller can route it to ``expiry.dlq`` and go on.
* Every time is epoch milliseconds (``int``); text appears only in encoded messages.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple
from urllib.parse import quote, unquote

import orjson

from stream_expiry import native
from stream_expiry.errors import misspelt, not_json, quoted
from stream_expiry.event_fields import misspelt_fields
from stream_expiry.timeutil import MIN_TS_MS, InvalidTimestamp, format_ts, parse_ts

# The compiled codec (None where it was not built): parse_event, encode_stamp and
# encode_tombstone ask it first, and take the input themselves where it answers None.
_native = native.compiled

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DEFAULT_BOT",
    "DEFAULT_CATEGORIES",
    "ENVS",
    "OPS",
    "SECONDS_LIKE_BEFORE_MS",
    "HeldLife",
    "Identity",
    "InputEvent",
    "Op",
    "ReadAt",
    "Reason",
    "Rejection",
    "Stamp",
    "decode_key",
    "deletion_from_tombstone",
    "encode_stamp",
    "encode_tombstone",
    "identity_of_key",
    "last_activity",
    "parse_event",
]

Op = Literal["create", "touch", "delete"]
Reason = Literal["ttl", "explicit"]
OPS: Final = ("create", "touch", "delete")
ENVS: Final = ("live", "draft")

#: An event time below this (1973-03-03T09:46:40Z as epoch milliseconds) is most likely
#: epoch *seconds*: every date up to the year 5138 in seconds is below it. The contract
#: reads it as milliseconds (January 1970: due at once), so it is accepted, with a warning.
SECONDS_LIKE_BEFORE_MS: Final = 100_000_000_000

DEFAULT_BOT: Final = "_"
DEFAULT_CATEGORIES: Final = (
    "conversation",
    "session",
    "error",
    "contact_profile",
    "analytics",
    "step_event",
    "step",
    "training_expression",
)
MAX_ID_CHARS: Final = 512
MAX_DATA_DEPTH: Final = 200
"""How deep an event's ``data`` may nest (``[]`` is 1). orjson reads 1,024 levels but writes
only 254, so deeper data was accepted and then stopped the service when its stamp was
written (and again after every restart: one producer's message halted deletion for the
partition). A stamp nests ``data`` one level down, an archive line two; the rest is margin."""
_ORJSON_WRITES: Final = 254  # levels of nesting orjson.dumps writes (the tests check it)


_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.~/-]*")


def _quote(part: str) -> str:
    # Most ids are plain: skip urllib's byte-by-byte quoting for them (it dominated ingest).
    return part if _PLAIN.fullmatch(part) else quote(part, safe="")


class Identity:
    """Who a record is: the five parts that make its key.

    Immutable by convention. A plain slotted class rather than a frozen dataclass: one is
    built per event, and a frozen dataclass's ``__init__`` was a third of parsing. Equality
    and hashing go through ``key``, which is injective.
    """

    __slots__ = ("bot", "category", "env", "key", "org", "record_id")

    def __init__(self, org: str, bot: str, env: str, category: str, record_id: str) -> None:
        self.org = org
        self.bot = bot
        self.env = env
        self.category = category
        self.record_id = record_id
        raw = f"{org}/{bot}/{env}/{category}/{record_id}"
        # One match over the joined parts instead of five: with exactly four '/', every
        # part is plain and the key is the parts as they are (the common case).
        if raw.count("/") == 4 and _PLAIN_KEY.fullmatch(raw):
            self.key = raw
        else:
            self.key = "/".join(
                [_quote(org), _quote(bot), _quote(env), _quote(category), _quote(record_id)]
            )

    def parts(self) -> tuple[str, str, str, str, str]:
        return (self.org, self.bot, self.env, self.category, self.record_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and self.key == other.key

    def __lt__(self, other: Identity) -> bool:
        return self.parts() < other.parts()

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return (
            f"Identity(org={self.org!r}, bot={self.bot!r}, env={self.env!r}, "
            f"category={self.category!r}, record_id={self.record_id!r})"
        )


def decode_key(key: str) -> Identity:
    """Inverse of :attr:`Identity.key`; raises ``ValueError`` on a key of another shape."""
    parts = key.split("/")
    if len(parts) != 5:
        raise ValueError(f"a record key has 5 parts separated by '/', got {len(parts)}")
    if _PLAIN_KEY.fullmatch(key):
        # Nothing to unquote or quote again: the key is already the identity's key. Restore,
        # replay and the store's timer scans decode a key per record; this skips ten regex
        # and unquote calls each.
        ident = Identity.__new__(Identity)
        ident.org, ident.bot, ident.env, ident.category, ident.record_id = parts
        ident.key = key
        return ident
    org, bot, env, category, record_id = (unquote(p, errors="strict") for p in parts)
    return Identity(org, bot, env, category, record_id)


def identity_of_key(key: str) -> Identity:
    """:func:`decode_key` for a key this package made (:attr:`Identity.key`: the timing
    wheel's and the state store's), which is canonical: without a ``%`` nothing in it was
    quoted, so its parts are the identity's as they are, with no pattern to check (263 ns
    a key against 703). Firing a timer and loading the horizon decode a key each. It
    repeats :func:`decode_key`'s plain branch rather than sharing helpers with it: measured,
    two shared helpers made ``decode_key`` (a call per message in the sinks) 483 -> 601 ns."""
    if "%" in key:
        return decode_key(key)
    parts = key.split("/")
    if len(parts) != 5:
        raise ValueError(f"a record key has 5 parts separated by '/', got {len(parts)}")
    ident = Identity.__new__(Identity)
    ident.org, ident.bot, ident.env, ident.category, ident.record_id = parts
    ident.key = key
    return ident


class InputEvent(NamedTuple):
    """A valid input event, as the engine sees it."""

    identity: Identity
    op: Op
    ts: int
    event_id: str | None = None
    data: Any = None
    # Names of the event that are not fields and most likely stand for an optional one it
    # does not have, with that field (``event_fields``): the shell says so; the event goes
    # on as the contract says, without them.
    misspelt: tuple[tuple[str, str], ...] = ()
    # ``ts`` as sent when it was an RFC 3339 string dated before 1973 (an unset date, most
    # likely, not epoch seconds): the shell quotes it in its warning, which read every such
    # event's JSON again to find it. None otherwise; only the slow path sets it.
    early_ts_text: str | None = None


# The longest ``Rejection.detail``: it goes into a log line and a dead letter's header, and
# may quote the message's own fields, of any size (a 64 KiB TTL value gave a 64 KiB line).
DETAIL_MAX = 1_000


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input message cannot be accepted; ``code`` is the contract's dead-letter code,
    ``detail`` at most :data:`DETAIL_MAX` characters (cut, ending ``...``)."""

    code: str
    detail: str

    def __post_init__(self) -> None:
        if len(self.detail) > DETAIL_MAX:
            object.__setattr__(self, "detail", self.detail[: DETAIL_MAX - 3] + "...")


#: JSON Schema's names of the types a JSON reader gives (schemas/ uses them): a dead
#: letter's detail is read by a producer's team, whatever language it writes JSON from, so
#: it says "integer" and "null", not Python's "int" and "NoneType".
_JSON_TYPES: Final[dict[type, str]] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def json_type(value: object) -> str:
    """The JSON Schema name of a parsed JSON value's type, for a dead letter's detail."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _text(
    obj: dict[str, Any], name: str, *, required: bool, default: str | None = None
) -> str | Rejection:
    if name not in obj or obj[name] is None:
        if required:
            return Rejection("missing_field", f"field {name!r} is required")
        assert default is not None
        return default
    value = obj[name]
    if not isinstance(value, str):
        return Rejection(
            "invalid_field", f"field {name!r} must be a string, got {json_type(value)}"
        )
    if not 1 <= len(value) <= MAX_ID_CHARS:
        return Rejection(
            "invalid_field", f"field {name!r} must be 1 to {MAX_ID_CHARS} characters long"
        )
    return value


def parse_event(
    value: bytes | None,
    *,
    categories: frozenset[str] | tuple[str, ...],
    now_ms: int,
    max_skew_ms: int,
) -> InputEvent | Rejection:
    """Validate one input message's value; never raises on bad input.

    A fast path accepts the common well-formed event with a handful of type checks; anything
    it is not sure of goes through :func:`_validate`, which finds the precise reason.
    """
    if value is None:
        # A producer used to compacted topics may send a Kafka tombstone to erase: say
        # what this service takes instead, or the erasure it meant is silently not done.
        return Rejection(
            "invalid_json",
            "the message has no value (null); a null is no erasure request on an input "
            'topic: to erase a record, send an event with "op": "delete"',
        )
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", not_json(value, exc))
    if type(obj) is not dict:
        return Rejection("not_an_object", f"the value is a JSON {json_type(obj)}, not an object")
    if _native is not None and (
        event := _native.event(obj, value, categories, now_ms + max_skew_ms)
    ):
        return event  # the common event, read in C (stream_expiry.native)
    if _NINETEEN_DIGITS in value.translate(_DIGITS_AS_ZERO):  # rare, and cheap to rule out
        beyond = _beyond_64_bits(value)
        if beyond is not None:
            return beyond
    get = obj.get
    category, record_id, org, ts = get("category"), get("record_id"), get("org"), get("ts")
    bot, env, op = get("bot", DEFAULT_BOT), get("env", _LIVE), get("op", _CREATE)
    if (
        type(ts) is int
        and MIN_TS_MS <= ts <= now_ms + max_skew_ms
        and type(category) is str
        and category in categories
        and type(env) is str
        and type(op) is str
        and env in ENVS
        and op in OPS
        and type(org) is str
        and type(record_id) is str
        and type(bot) is str
        and 0 < len(org) <= MAX_ID_CHARS
        and 0 < len(record_id) <= MAX_ID_CHARS
        and 0 < len(bot) <= MAX_ID_CHARS
        and type(event_id := get("event_id")) in (str, int, type(None))
    ):
        data = get("data")
        result: InputEvent | Rejection = InputEvent(
            Identity(org, bot, env, category, record_id),
            op,  # type: ignore[arg-type]  # checked against OPS above
            ts,
            None if event_id is None else str(event_id),
            data,
        )
        # Names besides the fields it gives? The four required ones, and each optional one
        # whose value is not the default object ``get`` handed back: a count, where a check
        # of every name cost 1.6k instructions an event (a set built from the dict). An
        # optional field given as null or as its default's own object is counted out, which
        # only sends that event through the check of its names.
        extra = len(obj) > 4 + (bot is not DEFAULT_BOT) + (env is not _LIVE) + (
            op is not _CREATE
        ) + (event_id is not None) + (data is not None)
    else:
        result = _validate(obj, categories=categories, now_ms=now_ms, max_skew_ms=max_skew_ms)
        extra = True
    if type(result) is InputEvent:
        if _too_deep(value, result.data):
            return Rejection(
                "invalid_field", f"field 'data' nests deeper than {MAX_DATA_DEPTH} levels"
            )
        if extra and (said := misspelt_fields(obj)):
            return result._replace(misspelt=said)
    elif type(result) is Rejection and result.code == "missing_field":
        return _naming_the_misspelt(result, obj)
    return result


# The defaults ``parse_event`` hands to ``get``: the same objects back mean "not given".
_LIVE: Final = "live"
_CREATE: Final = "create"


def _naming_the_misspelt(missing: Rejection, obj: dict[str, Any]) -> Rejection:
    """A missing field's rejection, naming the event's name that most likely stands for it
    (``recordId`` for ``record_id``): the producer sees its own spelling in the detail."""
    for name, field in misspelt_fields(obj):
        if f"'{field}'" in missing.detail:
            return Rejection(missing.code, f"{missing.detail}; the event has {name!r}: is that it?")
    return missing


# orjson reads an integer outside [-2**63, 2**64) as a float, silently: a 30-digit number in
# ``data`` would be stamped, stored and archived rounded. Every such integer has 19 digits in
# a row, which a C translation and a substring search rule out for nearly every message
# (0.3 us for 240 bytes, a regular expression 2.6).
_DIGITS_AS_ZERO: Final = bytes(48 if 48 <= b <= 57 else 120 for b in range(256))
_NINETEEN_DIGITS: Final = b"0" * 19
_INT_RANGE: Final = range(-(2**63), 2**64)


def _beyond_64_bits(value: bytes) -> Rejection | None:
    """A rejection naming the first integer of the message that orjson cannot hold (read
    again exactly, by the standard library: only messages with 19 digits in a row get here),
    or None. ``ts`` out of range is a bad timestamp; elsewhere the producer must send the
    number as a string, or lose its digits."""
    try:
        path = _big_integer_at(json.loads(value), ())
    except (ValueError, RecursionError):  # nested too deep: rejected for that below
        return None
    if path is None:
        return None
    if path == ("ts",):
        return Rejection("bad_timestamp", "field 'ts' is out of range (an integer beyond 64 bits)")
    field, *inner = path
    # The keys inside ``data`` are the producer's, and may be personal data (an e-mail
    # address as a key, in a trial): the reason goes to the log, which carries none. Only
    # how deep the number lies is said; the event itself is on expiry.dlq.
    where = f"{len(inner)} level(s) down" if inner else "itself"
    return Rejection(
        "invalid_field",
        f"field {field!r} holds an integer beyond 64 bits ({where}), which would be kept as "
        "a rounded float; send it as a string",
    )


def _big_integer_at(node: Any, path: tuple[str, ...]) -> tuple[str, ...] | None:
    """The path (keys, list items by index) of the first integer outside orjson's range."""
    if type(node) is int:
        return None if node in _INT_RANGE else path
    items = node.items() if type(node) is dict else enumerate(node) if type(node) is list else ()
    for key, child in items:
        found = _big_integer_at(child, (*path, str(key)))
        if found is not None:
            return found
    return None


def _too_deep(value: bytes, data: Any) -> bool:
    """Whether ``data`` nests deeper than :data:`MAX_DATA_DEPTH`. Counting the brackets of
    the message clears almost every event; the others are written once by orjson inside
    enough lists to reach its own limit exactly at ``MAX_DATA_DEPTH`` (at C speed: a walk in
    Python took 0.9 ms for a 29 KB transcript, three times its parse)."""
    if value.count(b"[") + value.count(b"{") <= MAX_DATA_DEPTH:
        return False
    wrapped = data
    for _ in range(_ORJSON_WRITES - MAX_DATA_DEPTH):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except TypeError:  # orjson.JSONEncodeError: too deep (parsed JSON holds nothing else)
        return True
    return False


@functools.lru_cache(maxsize=256)
def _unknown_category(category: str, categories: frozenset[str] | tuple[str, ...]) -> str:
    """A dead letter's detail for a category not configured, with the one most likely
    meant: a producer's ``eror``, ``Conversation`` or ``conversations`` (the topic's name)
    was "category 'conversations' is not configured", and the producer's team had to find
    the configured names elsewhere. Cached: a producer with a typo sends it in every event."""
    close = misspelt([category], sorted(categories))
    hint = f"; did you mean {close[0][1]!r}?" if close else ""
    return f"category {quoted(category, 60)} is not configured{hint}"


def _validate(
    obj: dict[str, Any],
    *,
    categories: frozenset[str] | tuple[str, ...],
    now_ms: int,
    max_skew_ms: int,
) -> InputEvent | Rejection:
    fields: list[str | Rejection] = [
        _text(obj, "category", required=True),
        _text(obj, "record_id", required=True),
        _text(obj, "org", required=True),
        _text(obj, "bot", required=False, default=DEFAULT_BOT),
        _text(obj, "env", required=False, default="live"),
        _text(obj, "op", required=False, default="create"),
    ]
    if "ts" not in obj or obj["ts"] is None:
        fields.append(Rejection("missing_field", "field 'ts' is required"))
    for f in fields:
        if isinstance(f, Rejection) and f.code == "missing_field":
            return f
    for f in fields:
        if isinstance(f, Rejection):
            return f
    category, record_id, org, bot, env, op = (str(f) for f in fields)
    if env not in ENVS:
        return Rejection("invalid_field", f"field 'env' must be 'live' or 'draft', got {env!r}")
    if category not in categories:
        return Rejection("unknown_category", _unknown_category(category, categories))
    if op not in OPS:
        return Rejection("unknown_op", f"op {op!r} is not one of create, touch, delete")
    raw_ts = obj["ts"]
    if not isinstance(raw_ts, (int, str)) or isinstance(raw_ts, bool):
        return Rejection(
            "invalid_field",
            f"field 'ts' must be a string or an integer, got {json_type(raw_ts)}",
        )
    try:
        ts = parse_ts(raw_ts)
    except InvalidTimestamp as exc:
        return Rejection("bad_timestamp", str(exc))
    if ts > now_ms + max_skew_ms:
        return Rejection(
            "future_timestamp",
            f"ts {format_ts(ts)} is more than {max_skew_ms // 1000} s ahead of the service clock {format_ts(now_ms)}",
        )
    event_id = obj.get("event_id")
    if (event_id is not None and not isinstance(event_id, (str, int))) or isinstance(
        event_id, bool
    ):
        return Rejection("invalid_field", "field 'event_id' must be a string or an integer")
    return InputEvent(
        Identity(org, bot, env, category, record_id),
        op,  # type: ignore[arg-type]  # checked against OPS above
        ts,
        None if event_id is None else str(event_id),
        obj.get("data"),
        early_ts_text=raw_ts if type(raw_ts) is str and ts < SECONDS_LIKE_BEFORE_MS else None,
    )


# A life of a record that a legal hold kept past its end (its expiry, or an erasure asked
# meanwhile) when the record began a new life: ``(created_at, expires_at, ttl_ms,
# ttl_source, erase_at)``. Its tombstone goes out at the release of the hold, before the
# new life's; what the tombstone says is all that is kept of it.
HeldLife = tuple[int | None, int | None, int | None, str | None, int | None]

# Where an event was read: its offset on the input partition, and when it reached the
# broker (``codec.produced_at``; None: the record does not say). The time tells an offset
# read again from one the partition had before it was made again (offsets restart at 0,
# the events are newer).
ReadAt = tuple[int, int | None]


class Stamp(NamedTuple):
    """A record's expiry as fixed at creation (and slid by touches): the engine's record state.

    ``expires_at`` and ``ttl_ms`` are ``None`` when the record never expires.
    ``created_at`` is ``None`` only for a record deleted before it was ever seen.
    ``deleted_at`` is set once the record is tombstoned: events with ``ts <= deleted_at``
    are ignored afterwards, a later ``create`` (or a ``touch`` of a sliding record) starts a
    new life. A named tuple: the engine makes one or two per event.
    """

    identity: Identity
    created_at: int | None
    expires_at: int | None
    ttl_ms: int | None
    ttl_source: str | None
    deleted_at: int | None = None
    # An erasure requested at this time while a legal hold kept the record: carried out
    # (reason ``explicit``) once no hold matches any more. On a deletion marker: the
    # erasure that reached the stores (None: the life ended by its expiry, and an erasure
    # request read late still goes out, once).
    erase_at: int | None = None
    # A legal hold keeps the record past its expiry or its erasure request: it is frozen
    # (events change nothing) until the release of its last matching hold.
    held: bool = False
    # Where the record's latest stamp sits on its partition of ``expiry.stamped``, once the
    # broker acknowledged it: ``[archive] required`` purges only what the archive has read.
    stamp_offset: int | None = None
    # The deletion that ended the record's previous life (None: none known). A create at or
    # before it is a redelivery of that life, stale like any event the deletion ended; only
    # a create after it can move this life's creation back.
    previous_deleted_at: int | None = None
    # Earlier lives a legal hold keeps, oldest first (nearly always empty): the record
    # began a new life after each had ended, and each waits for its tombstone until the
    # release, while the new life is stamped and expires as any other.
    held_lives: tuple[HeldLife, ...] = ()
    # The creation this life's first stamp said, once a create read late has moved the
    # life's creation back (None: it never moved, ``created_at`` is it): the latest
    # creation any stamp of the life said. A create moves the life back only if the life
    # still ends after it (the engine's ``_backdate``), so the life's ``ttl`` tombstone ends
    # every stamp written for it in the stores (its window: created before its expiry).
    first_created_at: int | None = None

    @property
    def live(self) -> bool:
        return self.deleted_at is None

    @property
    def due_at(self) -> int | None:
        """When the record's tombstone is due: its erasure request, else its expiry."""
        return self.erase_at if self.erase_at is not None else self.expires_at

    @property
    def ended_life(self) -> HeldLife | None:
        """The record's last life, ended (its tombstone gone out) before a legal hold
        deferred this erasure, which is dated before that life's creation: the erasure
        names no life (the engine's ``_erase_ended``), and the release sends it so, then
        gives the record back that life's end. None for any other state.

        Its shape is an erasure a hold defers that names no life (no ``created_at``) and
        keeps that life first, with a creation time: a shape no other state has (a held
        life is kept by a life of the record's, with a creation time), and that a
        changelog written before it existed never holds. So no other kind of changelog
        record is needed, and the stores, the archive and ``replay`` take its stamp, as any
        such deferral's, for one naming no life. The lives after it are the erasures
        :attr:`later_erasures` lists."""
        lives = self.held_lives
        if (
            self.created_at is None
            and self.deleted_at is None
            and self.erase_at is not None
            and lives
            and lives[0][0] is not None
        ):
            return lives[0]
        return None

    @property
    def later_erasures(self) -> tuple[int, ...]:
        """With an :attr:`ended_life`: the other erasures dated before that life's
        creation, read while this one waited, in the order read (each kept after the
        ended life as a life of its own, ``(None, None, None, None, erase_at)``). Without
        the hold each goes out at once, naming no life and ending at its own time, so the
        release sends each so, its request's receipt its own; kept as one request, a
        second was dropped. Empty for any other state."""
        if self.ended_life is None:
            return ()
        return tuple(life[4] for life in self.held_lives[1:] if life[4] is not None)

    @property
    def erased_until(self) -> int | None:
        """Where an erasure request ends this life: the request's time, or the life's
        creation when that is later (a create stamped ahead of the request), as the engine
        bounds a delete; None when no erasure was requested. What a new life's tombstone of
        a held erasure says, so that the stores and the archive erase this life only."""
        erase, created = self.erase_at, self.created_at
        if erase is None:
            return None
        return erase if created is None or created <= erase else created

    def with_offset(self, offset: int | None) -> Stamp:
        """This state with its stamp's offset on ``expiry.stamped``. The settle gives every
        state it writes one: ``_replace`` (keywords, ``_make``) took 1.3 us a call, this
        0.6 us. It relies on ``stamp_offset`` being the ninth of twelve fields."""
        return Stamp(*self[:8], offset, self[9], self[10], self[11])

    def as_held_life(self) -> HeldLife:
        """This life, as a record's new life keeps it while a hold defers its tombstone."""
        return (self.created_at, self.expires_at, self.ttl_ms, self.ttl_source, self.erase_at)

    def held_life(self, life: HeldLife) -> Stamp:
        """One of this record's held lives as a state of its own, to tombstone it."""
        created, expires, ttl, source, erase = life
        return Stamp(self.identity, created, expires, ttl, source, None, erase)


if _native is not None:  # the classes it builds and reads, now that they exist
    _native.bind(Identity, InputEvent, Stamp, orjson.dumps)


def _opt_ts(ms: int | None) -> str | None:
    return None if ms is None else format_ts(ms)


def encode_stamp(
    stamp: Stamp, data: Any = None, redacted: Sequence[str] = (), *, data_dropped: str | None = None
) -> bytes:
    """Value on ``expiry.stamped``: the record with its expiry (``expires_at`` null: never).

    ``data`` must already be redacted (:meth:`stream_expiry.redact.Redactor.redact`);
    ``redacted`` lists the paths that removed something. The field is written only when
    non-empty, so stamps of users without ``[redact]`` keep their shape. ``data_dropped``
    says why a stamp carries no data although its event had some
    (:mod:`stream_expiry.oversize`); written only when given, likewise.
    """
    if (
        _native is not None
        and not redacted
        and data_dropped is None
        and (written := _native.stamp(stamp, data)) is not None
    ):
        return written  # the common stamp, written in C (stream_expiry.native)
    i = stamp.identity
    created = _opt_ts(stamp.created_at)
    active = last_activity(stamp)
    body = {
        "org": i.org,
        "bot": i.bot,
        "env": i.env,
        "category": i.category,
        "record_id": i.record_id,
        "created_at": created,
        "expires_at": _opt_ts(stamp.expires_at),
        "ttl_seconds": None if stamp.ttl_ms is None else stamp.ttl_ms // 1000,
        "ttl_source": stamp.ttl_source,
        # Most stamps are a creation's: its time is formatted once, not twice.
        "last_activity_at": created if active == stamp.created_at else _opt_ts(active),
        "data": data,
    }
    if stamp.erase_at is not None:
        body["erase_requested_at"] = format_ts(stamp.erase_at)
    if stamp.previous_deleted_at is not None:
        body["previous_deleted_at"] = format_ts(stamp.previous_deleted_at)
    if stamp.held_lives:
        body["held_lives"] = [_held_life_body(life) for life in stamp.held_lives]
    if stamp.first_created_at is not None:
        body["first_created_at"] = format_ts(stamp.first_created_at)
    if redacted:
        body["redacted"] = list(redacted)
    if data_dropped is not None:
        body["data_dropped"] = data_dropped
    return orjson.dumps(body)


def _held_life_body(life: HeldLife) -> dict[str, Any]:
    created, expires, ttl, source, erase = life
    return {
        "created_at": _opt_ts(created),
        "expires_at": _opt_ts(expires),
        "ttl_seconds": None if ttl is None else ttl // 1000,
        "ttl_source": source,
        "erase_requested_at": _opt_ts(erase),
    }


def last_activity(stamp: Stamp) -> int | None:
    """The latest activity that set the expiry: the creation, or the touch that slid it.

    Re-deriving a sliding record's expiry under another ttl needs it (``replay`` from the
    changelog): ``expires_at = max(created_at, last_activity) + ttl``.
    """
    if stamp.expires_at is None or stamp.ttl_ms is None or stamp.created_at is None:
        return stamp.created_at
    return max(stamp.created_at, stamp.expires_at - stamp.ttl_ms)


# The last ``emitted_at`` a tombstone was encoded with, and its text: the tombstones of a
# firing share one. A tuple, replaced whole, so its two halves always go together.
_emitted: tuple[int, str] = (0, format_ts(0))


def encode_tombstone(stamp: Stamp, *, reason: Reason, emitted_at: int) -> bytes:
    """Value on ``expiry.tombstones``: the contract's tombstone event.

    ``emitted_at``'s text is formatted once for the run of tombstones that share it (every
    tombstone of a firing does): a ``format_ts`` call is ~2,100 instructions, of the ~16,500
    an encoding takes (round 46, callgrind)."""
    global _emitted  # one module-level memo, for the hot path
    if _native is not None and (written := _native.tombstone(stamp, reason, emitted_at)):
        return written  # written in C (stream_expiry.native)
    i = stamp.identity
    created, expires, ttl = stamp.created_at, stamp.expires_at, stamp.ttl_ms
    last = _emitted
    if last[0] == emitted_at:
        emitted = last[1]
    else:
        emitted = format_ts(emitted_at)
        _emitted = (emitted_at, emitted)
    return orjson.dumps(
        {  # one literal: this runs once per tombstone
            "org": i.org,
            "bot": i.bot,
            "env": i.env,
            "category": i.category,
            "record_id": i.record_id,
            "created_at": None if created is None else format_ts(created),
            "expires_at": None if expires is None else format_ts(expires),
            "emitted_at": emitted,
            "reason": reason,
            "ttl_seconds": None if ttl is None else ttl // 1000,
            "ttl_source": stamp.ttl_source,
        }
    )


def deletion_from_tombstone(value: bytes | None, prior: Stamp | None) -> Stamp | None:
    """The record state a tombstone event (from ``expiry.tombstones``) implies, or None when
    ``prior`` already knows better or the event is unreadable.

    Used to rebuild state from the topics: after it, events at or before the deletion are
    stale, so a record already deleted is never stamped again. A ``ttl`` tombstone covers
    its life up to ``expires_at``; an ``explicit`` one carries no delete time, so it covers
    up to ``emitted_at``, a bound, not the time, or up to its ``created_at`` when that is
    later (a delete older than a create stamped ahead of the service's clock). A marker
    ``prior`` already holds for the same life (the null on ``expiry.stamped`` carries the
    exact time) therefore stands: pushed to ``emitted_at``, it would take a create after
    the delete, and before the tombstone went out, for the deleted life's and ignore a
    new life. A marker restored from a null (which says only the deletion's time) takes the
    life's creation from the ``ttl`` tombstone that ended it.
    """
    if value is None:
        return None
    try:
        body = orjson.loads(value)
        ident = Identity(body["org"], body["bot"], body["env"], body["category"], body["record_id"])
        created = None if body.get("created_at") is None else parse_ts(body["created_at"])
        expires = None if body.get("expires_at") is None else parse_ts(body["expires_at"])
        if body["reason"] == "ttl" and expires is not None:
            deleted_at = expires - 1
        else:  # an erasure ends its life at its creation at the earliest (the engine's rule)
            emitted = parse_ts(body["emitted_at"])
            deleted_at = emitted if created is None or created <= emitted else created
        ttl_s = body.get("ttl_seconds")
        ttl_ms = None if ttl_s is None else ttl_s * 1000
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return None
    erase_at = None if body["reason"] == "ttl" else deleted_at  # an erasure went out
    if prior is not None:
        if prior.deleted_at is not None:
            if (
                prior.deleted_at == deleted_at
                and prior.created_at is None
                and body["reason"] == "ttl"
                and created is not None
            ):
                # The marker its null restored, of the life this tombstone ended: it keeps
                # that life's creation, as the original's marker does, so an erasure dated
                # before it, read again, erases the lives before, not this one.
                return prior._replace(
                    created_at=created,
                    expires_at=expires,
                    ttl_ms=ttl_ms,
                    ttl_source=body.get("ttl_source"),
                )
            if (
                body["reason"] == "ttl"
                and created is not None
                and prior.created_at is None
                and prior.erase_at == prior.deleted_at
                and created <= prior.deleted_at < deleted_at
            ):
                # The marker an erasure's null restored (its time: the request's), the
                # erasure dated within this life and read after its expiry ended it (the
                # engine's ``_erase_ended``): this life's end, with the erasure kept, as
                # the original's marker has them. Events up to that end stay stale, but a
                # create after the erasure starts the next life (the engine's
                # ``_erased_at``); taken for this life's end alone, the marker forgot the
                # erasure, and such a create was dropped after a restore.
                erase_at = prior.erase_at
            elif prior.deleted_at >= deleted_at:
                return None
            elif body["reason"] != "ttl" and (created is None or created <= prior.deleted_at):
                return None  # the same life's deletion, whose time the marker has exactly
        if prior.live and prior.created_at is not None and prior.created_at > deleted_at:
            return None  # the index holds a newer life
    return Stamp(ident, created, expires, ttl_ms, body.get("ttl_source"), deleted_at, erase_at)

"""Legal holds: what the law says to keep is not deleted, whatever its retention.

A hold (topic ``expiry.holds``, keyed by ``hold_id``, a null value releases it) names an
org and optionally a bot, env, category and record id; it matches a record when every field
it gives equals the record's (../shared/CONTRACT.md, "Legal holds"). Pure: parsing and
matching only; the partition processor decides what a match means for a record.

Rules kept here:

* No cap on the number of holds. Matching costs one dict lookup when the record's org has
  no hold (the common case), and otherwise one lookup per *shape* of that org's holds
  (which of bot, env, category, record_id they give: 16 shapes at most), never a scan of
  its holds: a trial with 10,000 record-level holds in one org took 38 s to ingest 20,000
  of its events, and 26 s to release the 10,000, when each match scanned them all.
* A malformed hold is rejected with a reason (the service dead-letters it) and changes
  nothing: the hold its key named before stays as it was, never released nor narrowed by a
  message that cannot be read; a release of an unknown hold changes nothing.
* A key given twice in one object (two ``org``, two ``record_id``) makes a hold malformed:
  JSON readers keep the last value without a word, so the hold would cover a scope other
  than the one written first, and which one was meant is unknown
  (:mod:`stream_expiry.repeated_keys`).
* The message key is the hold's id; a ``hold_id`` in the value counts only for a message
  without a key (:func:`named_hold_id` lets the service warn about one that differs).
* A hold id whose latest message on a partition cannot be read is *in doubt*
  (:class:`InDoubt`): the topic is compacted, so once the placement before it is removed
  nothing says what that id holds, and read as "no hold" its records were deleted. The
  book keeps each one until a later message for the id on that partition (a hold or a
  null) settles it; a start refuses while one is left (:func:`in_doubt_refusal`). A
  message without a key is the id its value names (as :func:`parse_hold` takes it); one
  naming none cannot be settled by any message, and is no hold id's (warned of only).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from stream_expiry.errors import misspelt, not_json, quoted
from stream_expiry.model import ENVS, MAX_ID_CHARS, Rejection
from stream_expiry.repeated_keys import repeated_key
from stream_expiry.timeutil import InvalidTimestamp, format_ts, parse_ts

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stream_expiry.model import Identity

__all__ = [
    "Hold",
    "HoldBook",
    "HoldIndex",
    "InDoubt",
    "apply_hold_message",
    "doubted_id",
    "encode_hold",
    "in_doubt_refusal",
    "kept_despite",
    "misspelt_fields",
    "named_hold_id",
    "none_under",
    "parse_hold",
    "rejected_fate",
]

# The longest key ``hold release --key-hex`` can take: its hex is one argument of a command
# line, which Linux caps at 128 KiB (MAX_ARG_STRLEN).
MAX_HEX_KEY_BYTES: Final = 60_000

_FIELDS = ("org", "bot", "env", "category", "record_id")
# Which of bot, env, category and record_id a hold gives; its match key has None elsewhere.
_Shape = tuple[bool, bool, bool, bool]
_MatchKey = tuple[str, str | None, str | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class Hold:
    """One legal hold; ``None`` fields match anything."""

    hold_id: str
    org: str
    bot: str | None
    env: str | None
    category: str | None
    record_id: str | None
    reason: str
    placed_at: int | None

    def matches(self, identity: Identity) -> bool:
        return (
            self.org == identity.org
            and (self.bot is None or self.bot == identity.bot)
            and (self.env is None or self.env == identity.env)
            and (self.category is None or self.category == identity.category)
            and (self.record_id is None or self.record_id == identity.record_id)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "hold_id": self.hold_id,
            "org": self.org,
            "bot": self.bot,
            "env": self.env,
            "category": self.category,
            "record_id": self.record_id,
            "reason": self.reason,
            "placed_at": None if self.placed_at is None else format_ts(self.placed_at),
        }

    def scope(self) -> str:
        """``org=acme bot=b1`` — the fields it gives, for a person."""
        return " ".join(f"{f}={getattr(self, f)}" for f in _FIELDS if getattr(self, f) is not None)

    def shape(self) -> _Shape:
        return (
            self.bot is not None,
            self.env is not None,
            self.category is not None,
            self.record_id is not None,
        )

    def match_key(self) -> _MatchKey:
        """The one key every record it matches has in its own shape (:func:`_key_in`)."""
        return (self.org, self.bot, self.env, self.category, self.record_id)


@dataclass(frozen=True, slots=True)
class InDoubt:
    """A hold id whose latest message on ``partition`` (at ``offset``) cannot be read."""

    hold_id: str
    partition: int
    offset: int
    why: Rejection

    def where(self, topic: str) -> str:
        return f"{topic}[{self.partition}]@{self.offset}"

    def described(self, topic: str) -> str:
        """``'case-1' at expiry.holds[0]@7: invalid_json (...)``, for a person."""
        said = f"{quoted(self.hold_id, 80)} at {self.where(topic)}: {self.why.code} ({self.why.detail})"
        if len(self.hold_id) > MAX_ID_CHARS:
            # `hold release ID` cannot name it, and no valid message can be keyed so.
            # Its hex must fit in one argument of a command line (Linux: 128 KiB).
            how = (
                "release it by its key, `stream-expiry hold release --key-hex HEX`, HEX as "
                "`hold list` shows it"
                if len(self.hold_id.encode(errors="replace")) <= MAX_HEX_KEY_BYTES
                else "write a null under that key with your Kafka tooling (its hex is too long "
                "for `hold release --key-hex`)"
            )
            said += f" (a key of {len(self.hold_id):,} characters, which no hold id can be: {how})"
        return said


def _key_in(shape: _Shape, identity: Identity) -> _MatchKey:
    """``identity``'s fields that ``shape`` gives, None elsewhere: a hold of that shape
    matches the record exactly when its :meth:`Hold.match_key` is this."""
    bot, env, category, record_id = shape
    return (
        identity.org,
        identity.bot if bot else None,
        identity.env if env else None,
        identity.category if category else None,
        identity.record_id if record_id else None,
    )


class HoldIndex:
    """Holds found by the records they match, in the order they were added.

    Per org, the shapes its holds have (with how many of each); per match key, the holds
    with that key. A record's holds are then one lookup per shape of its org's holds.
    """

    __slots__ = ("_by_key", "_order", "_seq", "_shapes")

    def __init__(self) -> None:
        self._shapes: dict[str, dict[_Shape, int]] = {}
        self._by_key: dict[_MatchKey, dict[int, Hold]] = {}
        self._order: dict[int, _Shape] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._order)

    def add(self, hold: Hold) -> int:
        """Index ``hold``; returns the handle that :meth:`remove` takes."""
        self._seq += 1
        shape = hold.shape()
        shapes = self._shapes.setdefault(hold.org, {})
        shapes[shape] = shapes.get(shape, 0) + 1
        self._by_key.setdefault(hold.match_key(), {})[self._seq] = hold
        self._order[self._seq] = shape
        return self._seq

    def remove(self, handle: int, hold: Hold) -> None:
        shape = self._order.pop(handle)
        key = hold.match_key()
        same = self._by_key[key]
        del same[handle]
        if not same:
            del self._by_key[key]
        shapes = self._shapes[hold.org]
        shapes[shape] -= 1
        if not shapes[shape]:
            del shapes[shape]
            if not shapes:
                del self._shapes[hold.org]

    def matching(self, identity: Identity) -> list[Hold]:
        """Every hold that matches the record, in the order they were added."""
        shapes = self._shapes.get(identity.org)
        if not shapes:
            return []
        found: list[tuple[int, Hold]] = []
        for shape in shapes:
            same = self._by_key.get(_key_in(shape, identity))
            if same:
                found += same.items()
        if len(found) > 1:
            found.sort()
        return [hold for _, hold in found]

    def any_matches(self, identity: Identity) -> bool:
        shapes = self._shapes.get(identity.org)
        if not shapes:
            return False
        by_key = self._by_key
        return any(_key_in(shape, identity) in by_key for shape in shapes)


def encode_hold(hold: Hold) -> bytes:
    return orjson.dumps(hold.as_dict())


def _text(body: dict[str, Any], name: str, *, required: bool) -> str | Rejection | None:
    value = body.get(name)
    if value is None:
        if required:
            return Rejection("missing_field", f"field {name!r} is required")
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        return Rejection(
            "invalid_field", f"field {name!r} must be a string of 1 to {MAX_ID_CHARS} characters"
        )
    return value


def named_hold_id(value: bytes) -> Any:
    """The ``hold_id`` a hold message's value names, if any (None for a malformed value)."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return body.get("hold_id") if type(body) is dict else None


_HOLD_FIELDS = ("hold_id", *_FIELDS, "reason", "placed_at")


def misspelt_fields(value: bytes) -> list[tuple[str, str]]:
    """``(field, the field it is close to)`` for each field of a hold's value that a hold
    does not have but whose name is close to one it has (``record-id``, ``recordId``,
    ``catgory``). Ignored like any extra field, such a hold kept far more than it meant (a
    ``record-id`` hold held its whole org) without a word; the service warns of each."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return []
    if type(body) is not dict:
        return []
    return misspelt(body, _HOLD_FIELDS)


def _naming_the_misspelt(why: Rejection, name: str, body: dict[str, Any]) -> Rejection:
    """A required field's rejection naming the hold's own field that most likely stands
    for it (``Org`` for ``org``), as an event's does: "field 'org' is required" alone did
    not show that a hold is not in force for a spelling (a trial)."""
    if why.code != "missing_field":
        return why
    for said, meant in misspelt(body, _HOLD_FIELDS):
        if meant == name:
            return Rejection(why.code, f"{why.detail}; the hold has {said!r}: is that it?")
    return why


def parse_hold(key: bytes | None, value: bytes) -> Hold | Rejection:
    """A hold message's value; never raises on bad input."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", not_json(value, exc))
    if type(body) is not dict:
        return Rejection("not_an_object", "a hold is a JSON object")
    if (repeated := repeated_key(value)) is not None:
        return Rejection("invalid_field", repeated.detail())
    fields: dict[str, str | None] = {}
    wanted = [("hold_id", False), ("org", True), ("reason", True)]
    for name, required in [*wanted, *((f, False) for f in _FIELDS[1:])]:
        got = _text(body, name, required=required)
        if isinstance(got, Rejection):
            return _naming_the_misspelt(got, name, body)
        fields[name] = got
    # The key is the hold's id whenever there is one: the null that releases a hold goes
    # under its key, and compaction keeps each key's latest value. A hold taken under the
    # value's hold_id instead could be released in memory (a null under that id) while
    # its own key kept it on the topic, and it came back at every start once compaction
    # had removed that null; dead-lettering it would let go of a legal hold.
    keyed = key.decode(errors="replace") if key else None
    hold_id = keyed or fields["hold_id"]
    if not hold_id:
        return Rejection("missing_field", "a hold needs a hold_id (in the value or the key)")
    if len(hold_id) > MAX_ID_CHARS:
        return Rejection(
            "invalid_field", f"a hold_id (the message key) is 1 to {MAX_ID_CHARS} characters"
        )
    if fields["env"] is not None and fields["env"] not in ENVS:
        return Rejection("invalid_field", "field 'env' must be 'live' or 'draft'")
    placed_at = None
    if body.get("placed_at") is not None:
        try:
            placed_at = parse_ts(body["placed_at"])
        except InvalidTimestamp as exc:
            return Rejection("bad_timestamp", str(exc))
    org, reason = fields["org"], fields["reason"]
    assert org is not None
    assert reason is not None
    return Hold(
        hold_id,
        org,
        fields["bot"],
        fields["env"],
        fields["category"],
        fields["record_id"],
        reason,
        placed_at,
    )


class HoldBook:
    """The active holds, as the compacted ``expiry.holds`` topic says (latest per id).

    A hold is active while the latest message for its id on any partition is the hold: a
    release on one partition leaves it placed on another, and two partitions placing it
    with two scopes keep both. Only a producer partitioning by another hash puts one id on
    two partitions (``stream-expiry hold`` used CRC-32 before it used Kafka's default
    partitioner). Taken in the order read, the answer then depended on which partition a
    reader took first (a trial: the service kept the records while `hold list` showed no
    hold; a review: two scopes, the one read last won); compaction, which removes a value
    only with a null on its own partition, would bring such a hold back anyway. Kept, the
    records stay as long as a hold says so somewhere, and every reader says the same.
    """

    # How many releases (and replacements) are remembered for :meth:`let_go_since`: holds
    # change a few times a day, and a scan behind by more than this only misses audit
    # entries, never a tombstone.
    LET_GO_KEPT = 10_000

    def __init__(self) -> None:
        # hold id -> partition -> (index handle, the hold its latest message there places)
        self._holds: dict[str, dict[int, tuple[int, Hold]]] = {}
        self._split = 0  # ids placed on more than one partition
        self._index = HoldIndex()
        self.generation = 0  # bumped by every release: held records may be free now
        self._let_go: list[tuple[int, Hold]] = []  # (generation it made, the hold let go)
        # (hold id, partition) -> its latest message there, which cannot be read.
        self._doubts: dict[tuple[str, int], InDoubt] = {}

    def __len__(self) -> int:
        return len(self._holds)

    def __iter__(self) -> Iterator[Hold]:
        """Every active hold, an id placed on two partitions with two scopes twice."""
        return (hold for placed in self._holds.values() for _, hold in placed.values())

    def get(self, hold_id: str) -> Hold | None:
        """The hold ``hold_id`` names (the lowest partition's, when several place it)."""
        placed = self._holds.get(hold_id)
        return None if not placed else placed[min(placed)][1]

    def place(self, hold: Hold, partition: int = 0) -> Hold | None:
        """Add or replace a hold (read on ``partition``); returns the one it replaced
        there."""
        # Last in the book's order, as the latest placed (``hold list`` and the tests).
        placed = self._holds[hold.hold_id] = self._holds.pop(hold.hold_id, {})
        old = self._drop(placed, partition)  # a narrowed hold may free records
        placed[partition] = (self._index.add(hold), hold)
        if len(placed) == 2 and old is None:
            self._split += 1
        return old

    def release(self, hold_id: str, partition: int = 0) -> Hold | None:
        """Release a hold by a null read on ``partition``; returns the hold, or None when
        none was active or it is still placed on another partition (:meth:`partitions_of`)."""
        placed = self._holds.get(hold_id)
        if placed is None:
            return None
        old = self._drop(placed, partition)
        if old is None or placed:
            if old is not None and len(placed) == 1:
                self._split -= 1
            return None
        del self._holds[hold_id]
        return old

    def doubt(self, doubt: InDoubt) -> None:
        """Note that ``doubt.hold_id``'s latest message on its partition cannot be read
        (the hold before it, if any, stays as it was)."""
        self._doubts[doubt.hold_id, doubt.partition] = doubt

    def settle(self, hold_id: str, partition: int) -> None:
        """A message for ``hold_id`` on ``partition`` was read (a hold or a null): what
        the id holds there is known again."""
        self._doubts.pop((hold_id, partition), None)

    def in_doubt(self) -> list[InDoubt]:
        """Every hold id whose latest message on a partition cannot be read, by id."""
        return sorted(self._doubts.values(), key=lambda d: (d.hold_id, d.partition))

    def doubts_of(self, hold_id: str) -> list[InDoubt]:
        """Those of :meth:`in_doubt` for ``hold_id``."""
        return [d for d in self.in_doubt() if d.hold_id == hold_id]

    def partitions_of(self, hold_id: str) -> frozenset[int]:
        """The partitions whose latest message for ``hold_id`` places it."""
        return frozenset(self._holds.get(hold_id, ()))

    def _drop(self, placed: dict[int, tuple[int, Hold]], partition: int) -> Hold | None:
        found = placed.pop(partition, None)
        if found is None:
            return None
        handle, old = found
        self._index.remove(handle, old)
        self.generation += 1
        self._remember(old)
        return old

    def _remember(self, hold: Hold) -> None:
        self._let_go.append((self.generation, hold))
        if len(self._let_go) > self.LET_GO_KEPT:
            del self._let_go[: len(self._let_go) - self.LET_GO_KEPT]

    def let_go_since(self, generation: int) -> list[Hold]:
        """The holds released or replaced after ``generation`` (as they were): a record
        one of them kept that another hold still keeps has a new deferral to record."""
        # Generations only grow along the list: a search, not a scan of 10,000 per call.
        start = bisect_right(self._let_go, generation, key=lambda entry: entry[0])
        return [hold for _, hold in self._let_go[start:]]

    def holding(self, identity: Identity) -> list[Hold]:
        """Every active hold that matches the record, in the order they were placed, one
        per id."""
        found = self._index.matching(identity)
        if self._split and len(found) > 1:
            first: dict[str, Hold] = {}
            for hold in found:
                first.setdefault(hold.hold_id, hold)
            found = list(first.values())
        return found

    def is_held(self, identity: Identity) -> bool:
        return self._index.any_matches(identity)


def kept_despite(hold: Hold) -> str:
    """What a person is told of ``hold`` when a message under its id that would replace it
    is rejected: it stays as it was (a message that cannot be read never releases or
    narrows a legal hold), and how to make that last, since the topic is compacted: once
    the earlier placement is compacted away, nothing says what the id holds, so the next
    start refuses until the id is placed again or released (:func:`in_doubt_refusal`)."""
    return (
        f"the legal hold {quoted(hold.hold_id, 80)} it would replace stays in force as "
        f"placed before ({hold.scope()}) while this process runs; {_settle_it(hold.hold_id)}"
    )


def none_under(hold_id: str) -> str:
    """What a person is told of a rejected message under an id with no hold in force: the
    hold it meant is unknown, nothing is held for it, and the next start refuses."""
    return (
        f"no legal hold is in force under {quoted(hold_id, 80)}, and what it was meant to "
        f"hold is unknown; {_settle_it(hold_id)}"
    )


def rejected_fate(book: HoldBook, key: bytes | None, value: bytes) -> str:
    """What a person is told, once a hold message (``key``, ``value``) is rejected, of the
    hold its id names (:func:`kept_despite`, :func:`none_under`); or, for one naming no id
    (no key, no ``hold_id`` in its value), that it changes no hold, no start refuses for
    it, and the hold it meant is not in force. One sentence for the service, the sinks'
    sweep and the commands, which each say it with where the message is."""
    hold_id = doubted_id(key, value)
    if hold_id is None:
        return (
            "it names no hold id (no key, no hold_id in its value), so it changes no hold "
            "and no start refuses for it; a hold it was meant to place is not in force: "
            "place it with `stream-expiry hold place`"
        )
    kept = book.get(hold_id)
    return none_under(hold_id) if kept is None else kept_despite(kept)


def _settle_it(hold_id: str) -> str:
    shown = quoted(hold_id, 80)
    return (
        f"the next start of the service (or of a sink's sweep) refuses until {shown} is "
        "placed again, valid, with the scope meant (`stream-expiry hold place --id ID ...`) "
        "or released (`stream-expiry hold release ID`)"
    )


def in_doubt_refusal(
    topic: str, doubts: list[InDoubt], lost: str, *, started: str = "Started", then: str = "start"
) -> str:
    """Why a start stops on hold ids in doubt (:class:`InDoubt`), each with where its
    message is and why it cannot be read, and what to do; ``lost``: what the start would
    do otherwise; ``started`` and ``then``: the command refused, as done and as done
    again (``archive purge`` refuses too: "Purged", "purge again"). Fail closed, as on a holds topic that is missing: read as "no hold", such
    an id let its records be deleted once compaction removed the placement before it (or
    at once, for an id never placed before), with only a dead-letter line to say so."""
    ids = len({d.hold_id for d in doubts})
    listed = "; ".join(d.described(topic) for d in doubts)
    return (
        f"the latest message of {ids} legal hold id{'' if ids == 1 else 's'} on {topic!r} "
        f"cannot be read, so what {'it holds' if ids == 1 else 'they hold'} is unknown: "
        f"{listed}. {started}, {lost} (compaction removes the placement before such a "
        "message, and a new id has none). For each, place the hold meant again, valid: "
        "`stream-expiry hold place --id ID --org ORG [--bot B] [--env E] [--category C] "
        "[--record-id R] --reason TEXT`, or if no hold was meant release it: "
        f"`stream-expiry hold release ID`; then {then}"
    )


def doubted_id(key: bytes | None, value: bytes) -> str | None:
    """The hold id a message that cannot be read is for: its key, else the ``hold_id``
    its value names (as :func:`parse_hold` takes a message without a key); None when it
    names none, which no later message can settle."""
    if key:
        return key.decode(errors="replace")
    named = named_hold_id(value)
    return named if isinstance(named, str) and named else None


def apply_hold_message(
    book: HoldBook,
    key: bytes | None,
    value: bytes | None,
    partition: int = 0,
    offset: int = -1,
) -> Hold | Rejection | None:
    """Apply one message of ``expiry.holds`` (read on ``partition`` at ``offset``) to
    ``book``, as the compacted topic means it.

    A value places (or replaces) the hold it carries, which is returned; a null releases
    the hold its key names, which is returned (None when no such hold was active, or it is
    still placed on another partition: :class:`HoldBook`). A malformed value changes
    nothing and comes back as its :class:`Rejection`; the id it is for is then in doubt on
    that partition (:meth:`HoldBook.in_doubt`) until a later message for it there is read.
    The service, the sinks' sweep and the commands follow the topic through this one
    function, so they never disagree on what is held.
    """
    if value is None:
        released = key.decode(errors="replace") if key else ""
        book.settle(released, partition)
        return book.release(released, partition)
    hold = parse_hold(key, value)
    if isinstance(hold, Rejection):
        doubted = doubted_id(key, value)
        if doubted is not None:
            book.doubt(InDoubt(doubted, partition, offset, hold))
        return hold
    book.settle(hold.hold_id, partition)
    book.place(hold, partition)
    return hold

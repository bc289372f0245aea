"""What a sink reads and writes: decoded changes, stored rows, deletion markers, receipts.

Rules this module keeps:

* Decoding never trusts a message: anything that is not the contract's stamp or tombstone
  raises :class:`InvalidMessage` (an :class:`~stream_expiry.errors.InputError`), which the
  sink counts and logs before going on. A sink cannot dead-letter, as the service does,
  because it does not own the topics it reads; the count makes the gap visible instead.
* The identity comes from the message *value* (the five fields), not from the key: the value
  is what the service wrote explicitly, the key is derived from it. A null value (a Kafka
  tombstone on ``expiry.stamped``) has nothing but its key, so there the key decides.
* Every time is epoch milliseconds; text appears only in encoded receipts.
* A receipt never carries the record's payload: it is evidence of a deletion, and evidence
  that kept the deleted data would defeat its purpose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson

from stream_expiry.codec import (
    H_ERASURE_READ_AT,
    H_LATE_CAUSE,
    H_REQUEST,
    H_REQUEST_EVENT_ID,
    deleted_at_of,
    erasure_requested_at_of,
    first_created_at_of,
    late_cause_of,
    reason_of,
    request_of,
)
from stream_expiry.errors import InputError, not_json
from stream_expiry.model import Identity, decode_key, json_type
from stream_expiry.timeutil import InvalidTimestamp, format_ts, parse_ts

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

_T = TypeVar("_T")

__all__ = [
    "REASONS",
    "Change",
    "InvalidMessage",
    "Marker",
    "NullChange",
    "Pending",
    "Receipt",
    "Row",
    "StampChange",
    "SweepChange",
    "TombstoneChange",
    "decode_pending",
    "decode_stamped",
    "decode_tombstone",
    "encode_pending",
    "encode_receipt",
    "erased_life_before",
    "receipt_headers",
]

#: The rule that deleted a record: the tombstone event's own reason, or the store's
#: safety-net sweep. A null value on ``expiry.stamped`` deletes a row too, but it names no
#: rule: its receipt waits for the tombstone event (see :class:`Pending`).
REASONS: Final = ("ttl", "explicit", "sweep")
_TOMBSTONE_REASONS: Final = frozenset({"ttl", "explicit"})
_IDENTITY_FIELDS: Final = ("org", "bot", "env", "category", "record_id")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
# The range of the stores' integer columns (SQLite INTEGER, PostgreSQL bigint).
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _slot_init(cls: type[_T]) -> type[_T]:
    """Give a frozen, slotted dataclass an ``__init__`` that stores each field through its
    slot's descriptor, instead of the generated one's ``object.__setattr__`` per field.

    The same signature (names, order, defaults) and the same instance, still frozen: a
    slot's descriptor is what ``object.__setattr__`` ends at, reached without looking the
    attribute up by name. A sink builds four of these per deletion (the tombstone, the
    taken row, the marker, the receipt), and the generated ``__init__`` was the largest
    single item of its profile (6-11 % of its CPU; 0.85-1.1 us a tombstone or a receipt,
    0.45-0.6 us with this one). Called with keywords it costs about twice what it does
    with positions (a tombstone's fourteen fields: 2.0 against 1.0 us, CPython 3.11
    matching each keyword to its parameter), so the per-message paths (the decoders, the
    planner's receipts) pass the fields in their order.
    """
    names, params, sets = [], [], []
    env: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: only plain fields are supported")
        names.append(f.name)
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            env[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        env[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        sets.append(f"    _set_{f.name}(self, {f.name})")
    source = f"def __init__(self, {', '.join(params)}) -> None:\n" + "\n".join(sets) + "\n"
    exec(source, env)  # the text is built above from the class's own field names
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


class InvalidMessage(InputError):
    """Raised when a message on ``expiry.stamped`` or ``expiry.tombstones`` is malformed.

    The sink counts it in ``metrics["invalid_total"]``, logs it with its topic, partition
    and offset (the first of a topic; the others as a count, see
    :mod:`~stream_expiry.sinks._malformed`) and commits past it; fix the producer that
    wrote it, or the sink's topic options if the topic is not the service's.
    """


@dataclass(frozen=True, slots=True)
class StampChange:
    """A record with its expiry, to be written (``data`` is JSON text, None for JSON null)."""

    identity: Identity
    created_at: int | None
    expires_at: int | None
    ttl_seconds: int | None
    ttl_source: str | None
    data: str | None
    partition: int | None = None
    offset: int | None = None
    # The ``created_at`` of each earlier life the stamp says a legal hold keeps
    # (``held_lives``; nearly always none): a row of such a life that this stamp replaces
    # keeps its data aside, in the store's held lives, until that life's tombstone.
    held: tuple[int, ...] = ()
    # The end of the record's previous life when this life began after a deletion (the
    # stamp's ``previous_deleted_at``; None: none, or a version that did not say it): a
    # ``ttl`` tombstone of a life created at or before it does not end this life (see
    # :attr:`TombstoneChange.window`).
    previous_deleted_at: int | None = None


@dataclass(frozen=True, slots=True)
class TombstoneChange:
    """A tombstone event: delete this identity's life, and remember that it was deleted."""

    identity: Identity
    created_at: int | None
    expires_at: int | None
    emitted_at: int
    reason: str
    ttl_seconds: int | None
    ttl_source: str | None
    deleted_at: int | None = None
    # The Kafka timestamp of the event (epoch ms: the service's emission time, or the
    # broker's append time on a topic that keeps those; None: unknown): a tombstone that
    # finds nothing to delete, dated at or before the bound the store's pruning used for
    # the topic and partition it was read from, was read before and its receipt written
    # (see ``_Planner.tombstone``).
    timestamp: int | None = None
    # Where it was read from (None: unknown, and then never taken for a re-read): the
    # pruning's bound holds for the partitions its read-complete time covered only.
    topic: str | None = None
    partition: int | None = None
    # The erasure request it carries out, as its headers name it (``expiry-request``,
    # ``expiry-request-event-id``; None: not an erasure's, or not said): its receipts say it.
    request: str | None = None
    request_event_id: str | None = None
    # Why it came more than a minute after its expiry, or an erasure's after its request
    # (``expiry-late-cause``; None: on time, or not said): its receipts say it too.
    late_cause: str | None = None
    # When the erasure it carries out was requested (``expiry-erasure-requested-at``, epoch
    # ms; None: not an erasure's, or an older version's): its receipts say it.
    requested_at: int | None = None
    # An erasure's that says where its request was read (``expiry-erasure-read-at``): a
    # version that writes it writes ``previous_deleted_at`` on every stamp of a life begun
    # after a deletion, so its :attr:`window` may take in a stamp without one.
    erasure_read: bool = False
    # With it, of a life a create read late moved back: the latest creation any stamp of
    # the life said (``expiry-first-created-at``, epoch ms; None: it never moved, or not
    # said), the end of the erasure's :attr:`window`.
    first_created_at: int | None = None

    @property
    def bound(self) -> int:
        """Exclusive upper bound on the ``created_at`` of the lives this tombstone ends.

        An ``explicit`` delete at time d ends everything created at or before d. The
        contract's event body does not carry d; the service's ``expiry-deleted-at`` header
        does (``deleted_at``: the engine's "events at or before this are ignored"), which
        makes the bound exact. Without it (events of earlier versions) ``emitted_at`` (d or
        later) stands in, and a new life created between d and ``emitted_at`` (a delete
        that waited in a backlog) is taken for the old one.

        A ``ttl`` tombstone with the header and a ``created_at`` ends every life created at
        or before its ``created_at`` (this bound), and more: the lives its :attr:`window`
        takes in. Bounded by the expiry alone (its header says a millisecond before it),
        it ended a life begun before that expiry: an erasure dated within the tombstone's
        life and a create dated after the erasure, both read after the expiry fired, end
        the life at the erasure and start the next one at the create (the engine's
        ``_erased_at``), as read in time; the tombstone deleted that next life's row when
        it came after the row, and kept its stamp out when it came first. A ``ttl``
        tombstone without the header (an earlier version's, which never started a life
        before an ended life's expiry, or a held life's, tombstoned at the release while
        the record lives on: its next life began at or after that expiry) keeps the expiry
        as its bound, and has no window.
        """
        return self.reach[0]

    @property
    def window(self) -> tuple[int, int] | None:
        """The lives a tombstone with the header and a ``created_at`` ends besides those
        :attr:`bound` takes: ``(before, floor)``, a life created before ``before`` (a
        ``ttl`` one's expiry, its header plus one; an erasure's :attr:`first_created_at`
        plus one) whose ``previous_deleted_at`` is unknown or before ``floor`` (its
        ``created_at``). None for every other tombstone (an erasure without
        ``expiry-erasure-read-at`` among them, and one of a life that never moved back:
        every stamp of it is created at its ``created_at``, which the bound takes).

        Its own life's stamps include those written before a create moved its creation
        back (the engine's ``_backdate``: ``created_at`` later than the tombstone's, before
        its expiry), and they carry its ``previous_deleted_at``, before its creation. A
        life begun after it ended (the engine's floor, ``previous_deleted_at``: that end,
        at or after its creation, whether an expiry or an erasure read late) is the next,
        even when created before this expiry (``_erased_at``). Bounded by ``created_at``
        alone, the tombstone left such a stamp's row for the life's null, which then
        deleted it when the tombstone had come first: a receipt of nothing, and a deletion
        left waiting for a tombstone that had come (with the sweep, a second receipt).
        An erasure's bound, its time, left such a stamp's row alike when the erasure was
        dated between the two creates, and, of a life that never expires (moved back
        all the same: no expiry keeps its first stamp's creation from any time after its
        own), whenever the erasure was dated. Its window ends just after the latest
        creation its life's stamps said (:func:`erased_life_before`), not at its expiry
        nor never: a record erased, its marker in the service pruned a grace after the
        erased life's expiry, then created again by a create dated after the erasure and
        before that expiry, read late, is stamped saying no ``previous_deleted_at``; it
        is live in the service, and it was kept out of a store that still had this
        tombstone's marker (its own pruning comes after the service's), or its row
        deleted by this tombstone read after it. Only for an erasure that says where its
        request was read (``expiry-erasure-read-at``): a version before it may have
        written a next life's stamps without ``previous_deleted_at``.
        """
        return self.reach[1]

    @property
    def reach(self) -> tuple[int, tuple[int, int] | None]:
        """:attr:`bound` and :attr:`window` at once: what a store asks of each tombstone,
        twice (its ``take``, then the plan), one property call each time."""
        created, deleted = self.created_at, self.deleted_at
        if deleted is not None:
            if created is not None:
                if self.reason == "ttl":
                    return created + 1, (deleted + 1, created)
                if self.erasure_read:
                    # An erasure of a life: its stamps from before a create moved its
                    # creation back, maybe created after the erasure's time (the bound).
                    before = erased_life_before(self.first_created_at)
                    if before is not None:
                        end = deleted + 1
                        return (end if end > created else created + 1), (before, created)
            end = deleted + 1
        elif self.reason == "ttl" and self.expires_at is not None:
            end = self.expires_at
        else:
            end = self.emitted_at + 1
        return (end if created is None else max(end, created + 1)), None


def erased_life_before(first_created_at: int | None) -> int | None:
    """Before when every stamp of a life an erasure ends was created (the ``before`` of the
    erasure's window, and of its null's), beyond its creation: just after its first
    stamp's creation (``expiry-first-created-at``) when a create read late moved the life
    back; None else (every stamp of the life says its creation, which the bound takes).

    Not the life's expiry: each stamp of a life says a creation some event of it had,
    the first stamp's the latest (the engine moves a life back only to earlier creates,
    and keeps that first one, ``first_created_at``). An expiry reached past them, to
    stamps of a later life created after the erasure and before that expiry: a record
    created again once the service had forgotten the erasure (its marker pruned a grace
    after that expiry, before the store's) says no ``previous_deleted_at``, and the store
    kept it out. Nor the erasure's request time, which a life's first stamp may be
    created after (created at 50, moved back to 0, erased at 0). The outbox writes the
    header beside ``expiry-erasure-read-at`` whenever the life moved back (round 47 on):
    without it, a life moved back by a version that did not keep its first creation
    leaves that first stamp to its null, as an erasure without
    ``expiry-erasure-read-at`` does."""
    return None if first_created_at is None else first_created_at + 1


@dataclass(frozen=True, slots=True)
class NullChange:
    """A null value on ``expiry.stamped``: the latest state of the key is "deleted".

    It carries no time of the record, only its position in the topic: it deletes the row
    only if the row was written from an earlier position, so re-reading the topic (after a
    crash, or from offset 0) never lets an old null delete a newer life. Its Kafka
    timestamp tells an erasure's null read again after its marker was forgotten.
    """

    identity: Identity
    partition: int | None = None
    offset: int | None = None
    # The null's ``expiry-reason`` (``ttl`` or ``explicit``; None: not given, as by
    # versions before it): the rule its deletion follows, should its tombstone never come.
    reason: str | None = None
    # The Kafka timestamp of the null (epoch ms: the service's emission time, or the
    # broker's append time on a topic that keeps those; None: unknown): a null dated at
    # or before the bound the store's pruning used for its topic and partition was read
    # before (see ``_Planner.null``).
    timestamp: int | None = None
    # The topic it was read from (None: unknown, and then never taken for a re-read).
    topic: str | None = None
    # The erasure request it carries out, as its headers name it (see TombstoneChange).
    request: str | None = None
    request_event_id: str | None = None
    # Why the deletion was late, as its headers say (see TombstoneChange).
    late_cause: str | None = None
    # When the erasure it carries out was requested (see TombstoneChange).
    requested_at: int | None = None
    # An erasure's null saying where its request was read (see TombstoneChange): the
    # deleted row's window may then take in stamps without ``previous_deleted_at``.
    erasure_read: bool = False
    # With it, the latest creation the erased life's stamps said, once a create read late
    # moved it back (``expiry-first-created-at``; see TombstoneChange).
    first_created_at: int | None = None


@dataclass(frozen=True, slots=True)
class SweepChange:
    """The safety net: delete the row if it expired at or before ``cutoff``.

    ``archived`` (``[archive] required``): the archive group's committed offset per
    partition of ``expiry.stamped``; the row goes only if the stamp it was written from
    lies below it (see :func:`~stream_expiry.sinks._logic.archived`). None: no archive is
    waited for. ``archived_by_cutoff``: the offsets the archive had committed by
    ``cutoff`` (None: the same as ``archived``); a row archived since is spared too,
    silently: the service tombstones it once the archive has it, and had less than the
    grace to.
    """

    identity: Identity
    cutoff: int
    archived: Mapping[int, int] | None = None
    archived_by_cutoff: Mapping[int, int] | None = None


Change = StampChange | TombstoneChange | NullChange | SweepChange


@dataclass(frozen=True, slots=True)
class Row:
    """A record as a store holds it; ``data`` is the JSON text of the payload.

    ``src_partition`` and ``src_offset``: where on ``expiry.stamped`` the row was last
    written from (None when not known), as quix-streams keeps the changelog offset with the
    data: a message at or before that position is already applied.

    ``previous_deleted_at``: its stamp's (see :attr:`TombstoneChange.window`); in a row
    written before the store kept it, :data:`~stream_expiry.sinks._logic.UNKNOWN_PREVIOUS`,
    which no window takes in.
    """

    identity: Identity
    created_at: int | None
    expires_at: int | None
    ttl_seconds: int | None
    ttl_source: str | None
    data: str | None
    updated_at: int
    src_partition: int | None = None
    src_offset: int | None = None
    previous_deleted_at: int | None = None

    def applied(self, partition: int | None, offset: int | None) -> bool:
        """Whether the message at (partition, offset) of ``expiry.stamped`` is already in."""
        return (
            offset is not None
            and self.src_offset is not None
            and partition == self.src_partition
            and offset <= self.src_offset
        )

    def same_content(self, other: Row) -> bool:
        """Equal but for bookkeeping (time, position): re-applying a stamp writes nothing."""
        return (
            self.identity == other.identity
            and self.created_at == other.created_at
            and self.expires_at == other.expires_at
            and self.ttl_seconds == other.ttl_seconds
            and self.ttl_source == other.ttl_source
            and self.data == other.data
            and self.previous_deleted_at == other.previous_deleted_at
        )


@dataclass(frozen=True, slots=True)
class Pending:
    """A row a null value on ``expiry.stamped`` deleted before its tombstone event came.

    The null says *that* the record is gone, not *why*: the receipt waits for the tombstone
    event, which names the rule (``ttl`` or ``explicit``) and when the service emitted it.
    The fields are the deleted row's; ``deleted_at`` is when the store deleted it, which is
    what the receipt will say. If the tombstone event never comes, the sweep (when on)
    writes the receipt after its grace, with the null's reason (``reason``: ``ttl`` or
    ``explicit``, the rule that deleted the row), else ``sweep``: it said ``sweep`` for
    erasures whose null carried ``explicit`` (a trial).

    ``superseded``: not a null but the stamp of the record's next life replaced the row (a
    life a legal hold kept, whose tombstone comes at the release, however late; or a null
    compacted away before the sink read it). Its tombstone still gets its receipt, whatever
    became of the next life meanwhile; the sweep never takes it, since the release may come
    after any grace.
    """

    created_at: int | None
    expires_at: int | None
    ttl_seconds: int | None
    ttl_source: str | None
    deleted_at: int
    superseded: bool = False
    reason: str | None = None
    # An erasure's null that found no row, for a record the store knew nothing of: its
    # tombstone event's receipt says ``rows_deleted`` 0 (see ``_Planner.null``).
    rowless: bool = False
    # The erasure request the null named, for the sweep's receipt should its tombstone
    # event never come (the tombstone's own, when it comes, is the one its receipt says).
    request: str | None = None
    request_event_id: str | None = None
    # Why the null's deletion was late (``expiry-late-cause``), for the receipt: the
    # tombstone's own, when it comes and says one, is the one its receipt says.
    late_cause: str | None = None
    # A life a legal hold keeps, its row replaced by the record's next life: its data was
    # kept aside, in the store's held lives (``superseded`` too), and its tombstone deletes
    # it there; its receipt says when that was. False: the data went with the row (a stamp
    # that named no held life, or a store of an earlier version), and the receipt says when.
    kept: bool = False
    # When the erasure the null carried out was requested, for the receipt (the
    # tombstone's own, when it comes and names the request, is the one its receipt says).
    requested_at: int | None = None


@dataclass(frozen=True, slots=True)
class Marker:
    """The memory of a deletion, kept after the row is gone.

    ``deleted_before``: a stamp whose ``created_at`` is below it belongs to a deleted life and
    is not written (this is how a tombstone that overtakes its record still wins).
    ``last_life``: the newest ``created_at`` deleted so far; a tombstone naming a life at or
    before it is already done, so it leaves no second receipt, unless one of ``pending``
    is its deletion. ``pending``: deletions by a null value, or by the next life's stamp,
    still waiting for their tombstone event (usually none). ``settled_at``: the latest of
    the deleted lives' expiries and of the times this store deleted them; the marker may
    be forgotten a grace after it once nothing is pending (see
    :func:`~stream_expiry.sinks._logic.prunable`). None: written by a version that did
    not keep it, and never forgotten until a change of the marker sets it.
    ``ttl_before`` and ``ttl_floor``: the :attr:`TombstoneChange.window` of the tombstones
    applied, and the like window of the rows nulls deleted (the latest expiry and
    creation of their lives; None: none had one; named for the ``ttl`` tombstones that
    first kept one): a stamp created before ``ttl_before`` whose ``previous_deleted_at``
    is unknown or before ``ttl_floor`` belongs to a deleted life too.
    """

    identity: Identity
    deleted_before: int
    last_life: int | None
    deleted_at: int
    pending: tuple[Pending, ...] = ()
    settled_at: int | None = None
    ttl_before: int | None = None
    ttl_floor: int | None = None

    @property
    def pending_since(self) -> int | None:
        """When the oldest pending deletion the sweep may take happened (its index), None
        if none."""
        if not self.pending:  # nearly always: no generator for it
            return None
        return min((p.deleted_at for p in self.pending if not p.superseded), default=None)


def encode_pending(pending: tuple[Pending, ...]) -> str | None:
    """The stores keep pending deletions as JSON text (NULL when none)."""
    if not pending:
        return None
    return orjson.dumps(
        [
            [p.created_at, p.expires_at, p.ttl_seconds, p.ttl_source, p.deleted_at]
            # What earlier versions wrote, unless superseded, with a reason, rowless,
            # naming a request or late, or kept aside.
            + (
                [p.superseded, p.reason, p.rowless, p.request, p.request_event_id, p.late_cause]
                if p.late_cause is not None or p.kept or p.requested_at is not None
                else [p.superseded, p.reason, p.rowless, p.request, p.request_event_id]
                if p.request is not None
                else [p.superseded, p.reason, True]
                if p.rowless
                else [p.superseded, p.reason]
                if p.reason
                else [True]
                if p.superseded
                else []
            )
            + ([p.kept, p.requested_at] if p.requested_at is not None else [True] if p.kept else [])
            for p in pending
        ]
    ).decode("utf-8")


def decode_pending(text: str | None) -> tuple[Pending, ...]:
    """Inverse of :func:`encode_pending`; the text was written by a store, so it is trusted."""
    if not text:
        return ()
    return tuple(Pending(*item) for item in orjson.loads(text))


@dataclass(frozen=True, slots=True)
class Receipt:
    """Append-only evidence of one deletion: what, when, by which rule; never the payload.

    ``rows_deleted`` is 1 when the store held the row, 0 when a tombstone reached a store
    that never had it (an erasure request still leaves evidence that it arrived).

    ``request`` and ``request_event_id``: the erasure request the deletion carried out, as
    the tombstone event (or the null) that deleted the record named it; published as the
    receipt message's headers ``expiry-request`` and ``expiry-request-event-id``, not in
    its value (the contract's schema has no such field). None for every other deletion.

    ``late_cause``: why the deletion came more than a minute after the record's expiry (an
    erasure's, after its request), as the tombstone event (else its null) said it
    (``expiry-late-cause``, published as that header); None for a deletion on time, and
    for the store's own (``sweep``).

    ``requested_at``: when the erasure the deletion carried out was requested, as the
    tombstone event (else its null) said it (``expiry-erasure-requested-at``); None for
    every other deletion, and for an erasure whose tombstone an older version sent.
    """

    receipt_id: str
    store: str
    identity: Identity
    reason: str
    rows_deleted: int
    created_at: int | None
    expires_at: int | None
    ttl_seconds: int | None
    ttl_source: str | None
    emitted_at: int | None
    deleted_at: int
    request: str | None = None
    request_event_id: str | None = None
    late_cause: str | None = None
    requested_at: int | None = None


# Built by the thousand per batch: see _slot_init.
for _cls in (StampChange, TombstoneChange, NullChange, SweepChange, Row, Pending, Marker, Receipt):
    _slot_init(_cls)
del _cls


def encode_receipt(r: Receipt) -> bytes:
    """Value on ``expiry.receipts`` (see schemas/receipt.schema.json); keyed by record key.

    Returned as a copy of orjson's output: a sink keeps a batch's receipts (thousands)
    until it sends them, and orjson's own buffers, kept, cost the allocator far more than
    the copy does (measured, orjson 3.13: 2.4 us a receipt kept as orjson returned it,
    0.44 us copied, 0.2 us dropped at once). The optional times are formatted inline,
    not by a helper: a call each, three a receipt.
    """
    i = r.identity
    created, expires, emitted, requested = r.created_at, r.expires_at, r.emitted_at, r.requested_at
    value = orjson.dumps(
        {
            "receipt_id": r.receipt_id,
            "store": r.store,
            "key": i.key,
            "org": i.org,
            "bot": i.bot,
            "env": i.env,
            "category": i.category,
            "record_id": i.record_id,
            "reason": r.reason,
            "rows_deleted": r.rows_deleted,
            "created_at": None if created is None else format_ts(created),
            "expires_at": None if expires is None else format_ts(expires),
            "ttl_seconds": r.ttl_seconds,
            "ttl_source": r.ttl_source,
            "emitted_at": None if emitted is None else format_ts(emitted),
            "deleted_at": format_ts(r.deleted_at),
            "requested_at": None if requested is None else format_ts(requested),
        }
    )
    return memoryview(value).tobytes()


def receipt_headers(r: Receipt) -> list[tuple[str, bytes]]:
    """The headers of a receipt message: the erasure request it carried out, if any (a
    list: aiokafka's record batch builder takes no other sequence), and why it was late."""
    headers = []
    if r.request is not None:
        headers.append((H_REQUEST, r.request.encode("utf-8")))
        if r.request_event_id is not None:
            headers.append((H_REQUEST_EVENT_ID, r.request_event_id.encode("utf-8")))
    if r.late_cause is not None:
        headers.append((H_LATE_CAUSE, r.late_cause.encode("utf-8")))
    return headers


def _load_object(value: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(not_json(value, exc)) from None
    if not isinstance(obj, dict):
        raise InvalidMessage(f"the value is a JSON {json_type(obj)}, not an object")
    return obj


def _identity(obj: dict[str, Any]) -> Identity:
    org, bot, env = obj.get("org"), obj.get("bot"), obj.get("env")
    category, record_id = obj.get("category"), obj.get("record_id")
    # One test per part on the common path (orjson gives exact str); the loop below only
    # runs to say which field is wrong.
    if (
        type(org) is str and org and type(bot) is str and bot and type(env) is str and env
        and type(category) is str and category and type(record_id) is str and record_id
    ):  # fmt: skip
        return Identity(org, bot, env, category, record_id)
    for name in _IDENTITY_FIELDS:
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidMessage(f"field {name!r} must be a non-empty string")
    return Identity(*(obj[name] for name in _IDENTITY_FIELDS))


#: Epoch seconds of "YYYY-MM-DDTHH:MM:SS" texts already parsed. A stream's times crowd into
#: few seconds (a tombstone's expires_at and emitted_at, a batch's created_at), so a lookup
#: replaces most parses; cleared when full, so it stays small.
_SECONDS: dict[str, int] = {}
_SECONDS_MAX: Final = 100_000
_SECOND: Final = timedelta(seconds=1)
#: The milliseconds of a time the service wrote, by their three digits: one lookup where
#: ``isdigit``, ``isascii`` and ``int`` were three calls, three or four times a message.
_MILLIS: Final = {f"{ms:03d}": ms for ms in range(1000)}


def _seconds(head: str) -> int | None:
    """Epoch seconds of a naive "YYYY-MM-DDTHH:MM:SS" (UTC), None if it is not one."""
    if head[4] != "-" or head[10] != "T" or head[13] != ":":
        return None
    try:
        dt = datetime.fromisoformat(head)
    except ValueError:
        return None
    if dt.tzinfo is not None:
        return None
    seconds = (dt.replace(tzinfo=UTC) - _EPOCH) // _SECOND
    if len(_SECONDS) >= _SECONDS_MAX:
        _SECONDS.clear()
    _SECONDS[head] = seconds
    return seconds


def _time(obj: dict[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if type(value) is str and len(value) == 24 and value[23] == "Z" and value[19] == ".":
        # The one form the service writes (format_ts): the whole second from a cache (or
        # datetime's C parser), the milliseconds as digits; a sink decodes three or four
        # times per message, and the general RFC 3339 parser is ~20x slower.
        millis = _MILLIS.get(value[20:23])  # three ASCII digits, or None
        if millis is not None:
            head = value[:19]
            seconds = _SECONDS.get(head)
            if seconds is None:
                seconds = _seconds(head)
            if seconds is not None:
                return seconds * 1000 + millis
    try:
        return parse_ts(value)
    except InvalidTimestamp as exc:
        raise InvalidMessage(f"field {name!r}: {exc}") from None


def _opt_int(obj: dict[str, Any], name: str) -> int | None:
    """An integer field that every store keeps in a 64-bit column (SQLite ``INTEGER``,
    PostgreSQL ``bigint``). One beyond that range was decoded, then refused by the store:
    SQLite raised OverflowError (a traceback, status 1) and PostgreSQL "out of range for
    type bigint" (status 4), each again at every start, as the sink reads the message
    again; so it is invalid here, counted and skipped, as a field that is no integer is."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidMessage(f"field {name!r} must be an integer or null")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidMessage(f"field {name!r} is {value}, beyond a 64-bit integer")
    return value


def _opt_str(obj: dict[str, Any], name: str) -> str | None:
    """A text field, U+0000 kept as U+FFFD, as the headers' text is
    (:func:`~stream_expiry.codec.header_text`): PostgreSQL text cannot hold U+0000, and
    one stamp or tombstone that said it stopped a PostgreSQL sink at every start ("\\u0000
    cannot be converted to text", status 4) while SQLite kept it. One form in every store;
    the record is still written, and its deletion still done."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidMessage(f"field {name!r} must be a string or null")
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _key_identity(key: bytes | None) -> Identity:
    if key is None:
        raise InvalidMessage("a null value without a key names no record")
    try:
        return decode_key(key.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidMessage(f"the key is not a record key: {exc}") from None


def decode_stamped(
    key: bytes | None,
    value: bytes | None,
    partition: int | None = None,
    offset: int | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    timestamp: int | None = None,
    topic: str | None = None,
) -> StampChange | NullChange:
    """Decode one message of ``expiry.stamped`` (a null value deletes the key's record).

    ``timestamp``: the message's Kafka timestamp (a negative one, Kafka's "none", is
    unknown); only a null keeps it, and the ``topic`` it was read from. Every argument may
    be given by position, as the sink does: keywords cost a call more, once a message."""
    if value is None:
        reason = reason_of(headers)
        known = reason if reason in ("ttl", "explicit") else None
        at = timestamp if timestamp is not None and timestamp >= 0 else None
        request, event_id = request_of(headers) if known == "explicit" else (None, None)
        late = late_cause_of(headers) if known is not None else None
        requested = erasure_requested_at_of(headers) if known == "explicit" else None
        read = known == "explicit" and _says(headers, H_ERASURE_READ_AT)
        return NullChange(
            _key_identity(key), partition, offset, known, at, topic, request, event_id, late,
            requested, read, first_created_at_of(headers) if read else None,
        )  # fmt: skip
    obj = _load_object(value)
    data = obj.get("data")
    # Nearly always absent: a lookup, not a call of _time, for the common stamp.
    floor = None if obj.get("previous_deleted_at") is None else _time(obj, "previous_deleted_at")
    # Positional, in the fields' order: keywords cost the generated __init__ about twice
    # as much (see _slot_init).
    return StampChange(
        _identity(obj),
        _time(obj, "created_at"),
        _time(obj, "expires_at"),
        _opt_int(obj, "ttl_seconds"),
        _opt_str(obj, "ttl_source"),
        None if data is None else orjson.dumps(data).decode("utf-8"),
        partition,
        offset,
        # Only under a legal hold: a test for the key, not a lookup (a call) per stamp.
        _held_lives(obj["held_lives"]) if "held_lives" in obj else (),
        floor,
    )


def _says(headers: Sequence[tuple[str, bytes]], header: str) -> bool:
    """Whether ``headers`` carry ``header`` (an erasure's: nearly never asked)."""
    return any(name == header for name, _ in headers)


def _held_lives(lives: Any) -> tuple[int, ...]:
    """The ``created_at`` of each life a stamp's ``held_lives`` names (an erasure that
    names no life has none: it has no row to keep)."""
    if lives is None:
        return ()
    if not isinstance(lives, list) or not all(isinstance(life, dict) for life in lives):
        raise InvalidMessage("field 'held_lives' must be a list of objects")
    return tuple(c for life in lives if (c := _time(life, "created_at")) is not None)


def decode_tombstone(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] = (),
    timestamp: int | None = None,
    topic: str | None = None,
    partition: int | None = None,
) -> TombstoneChange:
    """Decode one tombstone event of ``expiry.tombstones``; its ``expiry-deleted-at`` header
    (the service's, since round 19) makes :attr:`TombstoneChange.bound` exact (an
    erasure's time; for a ``ttl`` one, the :attr:`TombstoneChange.window` of its life).

    ``timestamp``: the message's Kafka timestamp (a negative one, Kafka's "none", is
    unknown); ``topic`` and ``partition``: where it was read from. Every argument may be
    given by position, as the sink does: keywords cost a call more, once a message."""
    del key  # the value names the identity; see the module rules
    if value is None:
        raise InvalidMessage("a tombstone event must have a value")
    obj = _load_object(value)
    reason = obj.get("reason")
    # A string first: a list or an object is not hashable, and its TypeError stopped the
    # sink (at every start: the message is read again).
    if type(reason) is not str or reason not in _TOMBSTONE_REASONS:
        raise InvalidMessage(f"field 'reason' must be 'ttl' or 'explicit', got {reason!r}")
    emitted_at = _time(obj, "emitted_at")
    if emitted_at is None:
        raise InvalidMessage("field 'emitted_at' is required")
    request, event_id, requested = (
        (*request_of(headers), erasure_requested_at_of(headers))
        if reason == "explicit"
        else (None, None, None)
    )
    late = late_cause_of(headers) if headers else None
    read = reason == "explicit" and _says(headers, H_ERASURE_READ_AT)
    # Positional, in the fields' order, as the stamp's above.
    return TombstoneChange(
        _identity(obj),
        _time(obj, "created_at"),
        _time(obj, "expires_at"),
        emitted_at,
        reason,
        _opt_int(obj, "ttl_seconds"),
        _opt_str(obj, "ttl_source"),
        _time(obj, "deleted_at") if "deleted_at" in obj else deleted_at_of(headers),
        timestamp if timestamp is not None and timestamp >= 0 else None,
        topic,
        partition,
        request,
        event_id,
        late,
        requested,
        read,
        first_created_at_of(headers) if read else None,
    )

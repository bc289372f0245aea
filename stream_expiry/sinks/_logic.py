"""The sink's decisions, as a pure function: changes + current state -> writes + receipts.

Every store (memory, SQLite, PostgreSQL) loads the state of a batch's identities inside its
transaction, calls :func:`plan` and writes the result, so all stores decide exactly alike
and the rules are tested once, without a database (quix-streams keeps a batch in memory and
flushes it the same way).

Rules kept here (why: tombstones are at-least-once, and ``expiry.stamped`` and
``expiry.tombstones`` are separate topics, so a sink sees them in any relative order):

1. **Idempotent.** Applying a change twice changes nothing the second time and writes no
   second receipt.
2. **A tombstone wins whatever the order.** It deletes the row only if the row belongs to a
   life it ends (``created_at < bound``, or within its window (a ``ttl`` tombstone's, an
   erasure's of a life moved back):
   :func:`ended_by`), and leaves a :class:`Marker`; a stamp of a deleted life arriving later
   is not written. A stamp of a newer life is written.
3. **The latest stamp wins** (``expiry.stamped`` is ordered per key), except that a null
   ``data`` (a touch re-stamp) keeps the data already held for the same life. A message of
   ``expiry.stamped`` at or before the position the row was written from is already
   applied and is skipped: a re-read never lets an old null delete a newer life.
4. **One receipt per deletion, naming the rule.** A deletion that removes a row leaves a
   receipt with ``rows_deleted=1`` and the reason of the tombstone event (``ttl`` or
   ``explicit``), or ``sweep`` for the store's own safety net. A null value on
   ``expiry.stamped`` deletes the row at once but names no rule: the deletion is kept
   pending in the marker, and the tombstone event of that life, whenever it comes, writes
   the receipt (with the time the row was really deleted). A tombstone for a row the store
   never held leaves a receipt with ``rows_deleted=0``, unless an earlier deletion already
   covers that life: an erasure request that reaches a store is always on record, a
   duplicate never is. A tombstone that names no life (the service knew no live one: an
   erasure dated after the record's expiry, or read after it) is covered by any deletion
   of a life the store held, or whose tombstone event it read first: that deletion's
   receipt is the record's, and a second one, ``rows_deleted=0``, said an erasure found
   something to do where it found nothing. So such an erasure is named on no receipt,
   also where compaction left the store only its null (the life's ``ttl`` tombstone event
   claims that null's deletion, ``rows_deleted=0``): the contract's receipt is one per
   deletion, naming the rule that deleted the record, and the expiry did (the README).
   An erasure's receipt names the request it carried out as the tombstone event's
   headers name it (else its null's, kept pending with it): a receipt is matched to its
   request by id, not by times. A late deletion's receipt says why likewise
   (``expiry-late-cause``).
5. **The sweep never takes what the archive lacks.** With ``[archive] required`` the
   service holds back a ``ttl`` tombstone until the archive has the record's latest stamp;
   the sweep, which stands in for a tombstone that did not come, keeps the same rule: a row
   goes only once the archive group has committed past the stamp it was written from
   (:func:`archived`), else it stays for the real tombstone (counted in
   ``Plan.kept_for_archive``).
6. **A deletion the record outlives sends no null downstream.** A row left after a
   deletion is always a later life (a tombstone deletes every row of the lives it ends,
   and a stamp of a deleted life is not written). A user's compacted topic keyed by record
   holds that life's value under the record's key, where a null would erase the living
   record; so such identities are listed in ``Plan.living`` and the sink sends no null
   for them (their receipts are written and published as usual).
7. **A marker lives only as long as it can still matter** (the contract's "what is kept
   about deleted records is bounded", as the service's state store keeps it). A
   :class:`Marker` does three things: it keeps a stamp of a deleted life from being
   written (``deleted_before``), it keeps a re-delivered tombstone from leaving a second
   receipt (``last_life``), and it holds deletions waiting for their rule (``pending``).
   A marker with anything pending is never forgotten: its receipt has not been written
   (a held life's may wait for a release that comes after any grace). Otherwise it is
   forgotten a grace (``stream-expiry sink --marker-grace``, by default the service's
   ``[service] marker_grace``, 7 days) after ``settled_at``: the latest of the deleted
   lives' expiries and of the times this store deleted them (:func:`prunable`). The grace
   is counted from the sink's read-complete time, not its clock, so a sink that was
   stopped, or lags on one topic, has applied every stamp and tombstone the service
   wrote before the deletion plus the grace before it forgets (a stamp of a deleted life
   is always written before that life's tombstone). What is left to come after that is
   a re-delivery (the sink's group rewound, or the service's own marker pruned: it keeps
   its markers by the same rule), and then, as in the service:

   * a stamp of a life that had an expiry is already a grace past it: written again, it
     is due at once; the service follows every stamp it writes of a due life with its
     tombstone, and the sweep (when on) deletes it whatever wrote it, each with a receipt;
   * a stamp of a life that never expires, a grace after its erasure, is taken as live,
     exactly as the service takes a re-delivered create of it a grace after the erasure:
     keeping such markers forever would keep every erased user's ids forever, and the
     store would then refuse a record the service holds as live;
   * an erasure's null read again (a rewound group: the compacted topic keeps it) finds
     no row and no marker, as a null of an erasure of a record the store never held
     does when first read. The first must wait for its tombstone event (rule 4); the
     second waited already, and its receipt is written. The null's Kafka timestamp
     tells them apart: a marker is forgotten only once settled at or before the
     pruning's bound (``pruned_before``: the read-complete time less the grace, the
     highest the store's pruning has used, kept with the markers), and it settled no
     earlier than the store read that null; and every message written before the
     read-complete time was read before it. So a null dated at or before the bound was
     read before, and whatever it started has settled: it waits for nothing (else its
     deletion waited forever for a tombstone read long ago, and the sweep wrote a
     second receipt). One dated after it is read for the first time, or re-read while
     its marker is still kept;
   * a tombstone event re-delivered after the grace (a rewound group, the topic read
     again) finds no row and no marker, as an erasure of a record the store never held
     does when first read, and that one leaves a receipt with ``rows_deleted`` 0: an
     erasure request that reaches a store is on record. The re-read one was on record
     already (its first reading deleted, claimed a pending deletion, was covered, or
     wrote that receipt, and left a marker that covers it, forgotten since), and a
     second receipt told a compliance officer of two deletions. Its Kafka timestamp
     tells them apart by the same argument: a tombstone that finds nothing to delete,
     claims no pending deletion and is not covered, dated at or before the bound, was
     read before; it writes no receipt (its marker is written again, as the first
     reading wrote it, so that a stamp of the life it ended, read again after it, stays
     out). One dated after it, or of unknown time, or in a store that never pruned,
     leaves its receipt. Only a receipt of nothing is left out: a tombstone read again
     that deletes a row a re-read stamp wrote again, or claims a deletion a re-read null
     left pending, still writes its receipt, as before.

   For both, the bound kept is an hour below the pruning's (``REREAD_MARGIN_MS`` of
   :mod:`~stream_expiry.sinks.store`): the service dates its nulls and tombstone events
   when it decides them and writes them at once, but one in flight while the read-complete
   time is taken (with ``--marker-grace 0``, say) could be dated before a bound that did
   not see it, and its first reading would leave no receipt. Clocks set apart by more than
   the grace and that hour, or a message written that much later than it is dated, would
   still defeat this. A clock ahead only delays the rule, for a message re-read within
   that time of its marker's pruning, which then does what a first one does.

   The argument holds for the partitions the read-complete time covered, and only for
   them: what was written to another topic before it was never read by then. So the
   bound is kept per topic and partition (:data:`Source`), raised at each pruning for
   those the read-complete time covered, and a message of a partition no pruning covered
   (a sink pointed at a tombstones topic it never read before, or at a copy of one whose
   messages keep their first dates) is a first reading however old its date: under one
   bound for the whole store, such a topic's erasures were taken for re-reads and left
   no receipt.
8. **A life a legal hold keeps keeps its data.** The service keeps such a life past its
   expiry or its erasure, and when the record is created or touched again its next life
   starts beside it: that life's stamp names the held ones (``held_lives``,
   :attr:`StampChange.held`). A store keeps one row per record, so the next life's row
   replaces the held life's; the replaced row, data and all, then goes to the store's held
   lives (:attr:`Plan.held`, one row per record and ``created_at``: what a compliance
   officer reads while the hold is in force), and its deletion waits in the marker as a
   ``kept`` pending deletion. The held life's tombstone, at the release, deletes it there
   (:attr:`Plan.released`) and writes its receipt, ``deleted_at`` the time it did; the
   next life's row stays. A replaced row that no stamp names held (a life whose null was
   compacted away before the sink read it, or a stamp of an earlier version) is replaced
   as before, and its receipt waits for its tombstone all the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from stream_expiry.parts import add_up
from stream_expiry.sinks._messages import (
    Change,
    Marker,
    NullChange,
    Pending,
    Receipt,
    Row,
    StampChange,
    SweepChange,
    TombstoneChange,
    erased_life_before,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from stream_expiry.model import Identity

__all__ = [
    "NEVER_CREATED",
    "UNKNOWN_PREVIOUS",
    "Plan",
    "Reach",
    "Slot",
    "Source",
    "Window",
    "archived",
    "ended_by",
    "life",
    "plan",
    "prunable",
    "within",
]

#: Stands for an unknown ``created_at``: such a row belongs to every deleted life. It is the
#: smallest BIGINT, so the stores keep it as a plain integer.
NEVER_CREATED = -(2**63) + 1

#: The ``previous_deleted_at`` of a row written before the store kept it (the SQL stores'
#: column default, the largest BIGINT): unknown, so no ``ttl`` tombstone's window takes the
#: row in (:func:`ended_by`), only its bound, as before. Such a row may be a next life's, begun
#: before the tombstone's expiry.
UNKNOWN_PREVIOUS = 2**63 - 1

#: A topic and a partition a message was read from: the pruning's bound for telling a
#: re-read message is kept per source (rule 7).
Source = tuple[str, int]

#: A tombstone's window (:attr:`TombstoneChange.window`: a ``ttl`` one's, or an erasure's
#: of a life moved back), or a null's (the row it deleted); None for others.
Window = tuple[int, int] | None

#: What a tombstone ends: its bound and its window (:func:`ended_by`), as a store's
#: ``take`` gets them.
Reach = tuple[int, Window]


@dataclass(slots=True)
class Slot:
    """What a store holds for one identity: the row, and the memory of its deletions."""

    row: Row | None = None
    marker: Marker | None = None


@dataclass(slots=True)
class Plan:
    """The writes one transaction makes, and what they amount to (for metrics)."""

    upserts: list[Row] = field(default_factory=list)
    deletes: list[Identity] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    written: int = 0
    """Stamps that changed a row."""
    stale: int = 0
    """Stamps not written because their life was already deleted."""
    deleted: int = 0
    """Rows deleted by tombstones and null values (sweeps: ``swept``)."""
    swept: int = 0
    """Receipts of the sweep: rows past their expiry, and null deletions whose tombstone
    event did not come within the grace (their null giving no reason)."""
    unsettled: int = 0
    """Receipts the sweep wrote, with their null's reason, of null deletions whose
    tombstone event did not come within the grace."""
    kept_for_archive: int = 0
    """Rows past the sweep's cutoff that it kept because the archive has not written the
    stamp they were written from (``[archive] required``)."""
    found_nothing_at: list[tuple[Source, int]] = field(default_factory=list)
    """Where the messages that found nothing were read from, with their Kafka timestamps,
    planned without the pruning's bounds: tombstone events that deleted nothing and wrote
    a receipt with ``rows_deleted`` 0, and erasures' nulls that found no row and no marker
    and left a deletion waiting. One dated at or before its source's bound was read
    before (rule 7), so a store that did not pass ``pruned_before`` to :func:`plan` reads
    them and plans again (it seldom has to). Messages of unknown source or time are not
    listed: no bound applies to them."""
    held: list[Row] = field(default_factory=list)
    """Rows of earlier lives a legal hold keeps, which the record's next life replaced:
    kept aside, data and all, in the store's held lives (one row per record and
    ``created_at``) until that life's tombstone (rule 8)."""
    released: list[tuple[Identity, int]] = field(default_factory=list)
    """Held lives whose tombstone came, by record and ``created_at``: deleted from the
    store's held lives, each with its receipt (rule 8)."""
    living: list[Identity] = field(default_factory=list)
    """Identities with a receipt in this plan whose record still has a row afterwards: a
    later life than the one deleted (a held life's next one, or a record created again
    after an erasure). A user's compacted topic keyed by record holds that life's value
    under the same key, so the sink sends it no null for these deletions (rule 6)."""


def merge_plans(plans: Iterable[Plan]) -> Plan:
    """One plan of several transactions' (a batch applied in parts): the writes of each,
    in the given order, and what they amount to."""
    return add_up(plans, Plan())


def life(created_at: int | None) -> int:
    """A row's life for comparisons: its ``created_at``, or before every life when unknown."""
    return NEVER_CREATED if created_at is None else created_at


def ended_by(
    created_at: int | None, previous_deleted_at: int | None, bound: int, window: Window
) -> bool:
    """Whether a tombstone of ``bound`` and ``window`` (:attr:`TombstoneChange.bound`,
    :attr:`TombstoneChange.window`) ends the life of a row or stamp created at
    ``created_at`` that began after the deletion at ``previous_deleted_at``: created
    before the bound, or before the window's expiry with no deletion known before it,
    or one before the window's creation (the tombstone's life, or an earlier one; a life
    begun after that life ended is the next, whenever it was created)."""
    return life(created_at) < bound or (
        window is not None and within(created_at, previous_deleted_at, *window)
    )


def within(
    created_at: int | None, previous_deleted_at: int | None, before: int, floor: int
) -> bool:
    """Whether a life created at ``created_at``, begun after ``previous_deleted_at``, is
    within a ``ttl`` tombstone's window ``(before, floor)`` (:func:`ended_by`)."""
    return life(created_at) < before and (
        previous_deleted_at is None or previous_deleted_at < floor
    )


def archived(row: Row, offsets: Mapping[int, int] | None) -> bool:
    """Whether the archive holds the stamp ``row`` was written from: the archive group's
    committed offset on the row's partition of ``expiry.stamped`` is above the row's
    offset, as :class:`~stream_expiry.archive_gate.ArchiveGate` judges the service's
    records. ``offsets`` None: no archive is required, so every row counts as archived. A
    row whose position is unknown (written by a version that did not keep it) cannot be
    shown to be archived, and is not.

    The row's position is that of the last stamp that changed it; a later stamp with the
    same content leaves it, and its content is archived with the earlier one.
    """
    if offsets is None:
        return True
    if row.src_partition is None or row.src_offset is None:
        return False
    return row.src_offset < offsets.get(row.src_partition, 0)


def prunable(marker: Marker, settled_before: int) -> bool:
    """Whether ``marker`` may be forgotten (rule 7): nothing pending, and settled at or
    before ``settled_before`` (the read-complete time less the grace). Every store's
    pruning selects exactly these markers; a marker that does not know when it settled
    (written by an earlier version) is kept."""
    settled = marker.settled_at
    return not marker.pending and settled is not None and settled <= settled_before


def _max_opt(*values: int | None) -> int | None:
    """The largest of the values given, None when none is. Twice or three times a
    deletion: the list and ``max`` only for more than two values."""
    if len(values) == 2:
        a, b = values
        return b if a is None else a if b is None or a >= b else b
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _max2(a: int | None, b: int | None) -> int | None:
    """:func:`_max_opt` of two values, with no tuple of arguments: a deletion takes three
    or four of these."""
    return b if a is None else a if b is None or a >= b else b


def _matches(p: Pending, t: TombstoneChange, bound: int) -> bool:
    """Whether tombstone ``t`` is the one a pending deletion waits for.

    It must end that life (``created_at < bound``) and, when it names a life, name exactly
    that one: the tombstone of a later life must not lend its rule to an earlier one.
    """
    if life(p.created_at) >= bound:
        return False
    return t.created_at is None or p.created_at is None or p.created_at == t.created_at


class _Planner:
    def __init__(
        self,
        store: str,
        now_ms: int,
        new_id: Callable[[], str],
        pruned_before: Mapping[Source, int] | None,
    ) -> None:
        self.store, self.now, self.new_id = store, now_ms, new_id
        self.pruned_before = pruned_before
        self.out = Plan()

    def read_before(self, topic: str | None, partition: int | None, at: int | None) -> bool:
        """Whether a message that found nothing, read from ``topic`` and ``partition`` and
        dated ``at``, was read before (rule 7): dated at or before the bound the store's
        pruning used for that partition. A partition no read-complete time covered when
        the store pruned (a topic the sink never read before: another ``--tombstones-topic``,
        a copy of the topic) has no bound: every message of it is a first reading, however
        old, as is one whose source or time is unknown. Without the bounds (None), the
        message is listed in :attr:`Plan.found_nothing_at` for the store to read them."""
        if at is None or topic is None or partition is None:
            return False
        bounds = self.pruned_before
        if bounds is None:
            self.out.found_nothing_at.append(((topic, partition), at))
            return False
        bound = bounds.get((topic, partition))
        return bound is not None and at <= bound

    def receipt(
        self,
        ident: Identity,
        reason: str,
        rows: int,
        src: Row | Pending | TombstoneChange,
        emitted_at: int | None,
        deleted_at: int,
        by: TombstoneChange | Pending | None = None,
        late: str | None = None,
    ) -> None:
        """Write a receipt; ``by``: the tombstone event or the null (its pending deletion)
        that deleted the record, whose erasure request (and its time) the receipt names, if
        it names one;
        ``late``: why that deletion was late (``expiry-late-cause``), if it was."""
        request, event_id, requested = (
            (None, None, None) if by is None else (by.request, by.request_event_id, by.requested_at)
        )
        # Positional, in the fields' order: one a deletion, and keywords cost the
        # receipt's __init__ about twice as much (see _messages._slot_init).
        self.out.receipts.append(
            Receipt(
                self.new_id(), self.store, ident, reason, rows, src.created_at,
                src.expires_at, src.ttl_seconds, src.ttl_source, emitted_at, deleted_at,
                request, event_id, late, requested,
            )
        )  # fmt: skip

    def remember(
        self,
        slot: Slot,
        ident: Identity,
        before: int,
        lived: int | None,
        pending: tuple[Pending, ...] | None = None,
        ended: int | None = None,
        window: Window = None,
    ) -> None:
        """Raise the slot's marker to cover ``before``, ``lived`` and ``window``; never
        lower it.

        ``pending`` replaces the marker's pending deletions when given. ``ended``: the
        latest expiry of the lives this deletion ended (None: none known, or they never
        expire); ``settled_at`` rises to it, and to now when anything else changed
        (rule 7). ``window``: a ``ttl`` tombstone's; the marker keeps the latest expiry
        and creation of those it applied, which take in the lives each takes in, and
        otherwise only stamps of lives begun after the earlier one's life ended and
        before the later one's began (their ``previous_deleted_at`` between the two
        creations): lives that ended before the later one's tombstone came, or that
        life's own.
        """
        m = slot.marker
        new_before = before if m is None else max(m.deleted_before, before)
        new_last = lived if m is None else _max2(m.last_life, lived)
        new_pending = (() if m is None else m.pending) if pending is None else pending
        if m is None:
            ttl_before, ttl_floor = (None, None) if window is None else window
            changed = True
        else:
            ttl_before, ttl_floor = m.ttl_before, m.ttl_floor
            if window is not None:
                ttl_before = _max2(ttl_before, window[0])
                ttl_floor = _max2(ttl_floor, window[1])
            changed = (new_before, new_last, new_pending, ttl_before, ttl_floor) != (
                m.deleted_before, m.last_life, m.pending, m.ttl_before, m.ttl_floor,
            )  # fmt: skip
        # A marker of an earlier version knows only when it last changed (the stores'
        # upgrade starts its settled_at there).
        known = None if m is None else (m.deleted_at if m.settled_at is None else m.settled_at)
        settled = _max2(known, ended)
        if changed:  # now too: two values at a time, no list (a deletion calls this)
            now = self.now
            settled = now if settled is None or settled < now else settled
            slot.marker = Marker(
                ident, new_before, new_last, now, new_pending, settled, ttl_before, ttl_floor
            )
        elif m is not None and settled != m.settled_at:
            slot.marker = replace(m, settled_at=settled)

    def stamp(self, slot: Slot, c: StampChange) -> None:
        if c.created_at is None and c.data is None:
            # It names no life and holds nothing: the service's record of an erasure a
            # legal hold defers, of a record it never saw live. The release's tombstone
            # leaves the receipt (rows_deleted 0). Written, it was a row of nulls whose
            # deletion the receipt counted as one.
            return
        m = slot.marker
        if m is not None and (
            life(c.created_at) < m.deleted_before
            or (
                m.ttl_before is not None
                and m.ttl_floor is not None
                and within(c.created_at, c.previous_deleted_at, m.ttl_before, m.ttl_floor)
            )
        ):
            self.out.stale += 1
            return
        old = slot.row
        if old is not None and old.applied(c.partition, c.offset):
            return
        data = c.data
        if data is None and old is not None and life(c.created_at) <= life(old.created_at):
            data = old.data  # a touch re-stamp (or an earlier re-delivered create): same life
        new = Row(
            c.identity, c.created_at, c.expires_at, c.ttl_seconds, c.ttl_source, data, self.now,
            c.partition, c.offset, c.previous_deleted_at,
        )  # fmt: skip
        if old is None or not old.same_content(new):
            if old is not None and life(c.created_at) > life(old.created_at):
                self._superseded(slot, old, c.held)
            slot.row = new
            self.out.written += 1

    def _superseded(self, slot: Slot, old: Row, held: tuple[int, ...]) -> None:
        """The next life's stamp replaces a row no deletion ended: normally that life's null
        comes first, so this is a life a legal hold kept (its tombstone comes at the release)
        or one whose null was compacted away. Its tombstone gets the receipt; nothing else
        about the marker changes. A life the stamp names among those a hold keeps (``held``)
        keeps its data aside until then (rule 8); another's data goes with the row, and its
        receipt says when."""
        kept = bool(held) and old.created_at in held
        gone = Pending(
            old.created_at, old.expires_at, old.ttl_seconds, old.ttl_source, self.now, True,
            kept=kept,
        )  # fmt: skip
        if kept:
            self.out.held.append(old)
        m = slot.marker
        before = NEVER_CREATED if m is None else m.deleted_before
        waiting = () if m is None else m.pending
        self.remember(slot, old.identity, before, None, (*waiting, gone), old.expires_at)

    def tombstone(self, slot: Slot, t: TombstoneChange) -> None:
        """Delete the life the tombstone ends, and write the receipt of every deletion of it.

        The deletion may have happened already, by a null value that came first: its
        receipt was waiting for this rule. Fields come from the tombstone (what the service
        decided), or from the deleted row when the tombstone knows nothing of the life.
        """
        bound, window = t.reach
        row = slot.row
        # ended_by, its common case (no window, or within the bound) without a call more
        deleted = row is not None and (
            life(row.created_at) < bound
            or (window is not None and within(row.created_at, row.previous_deleted_at, *window))
        )
        m = slot.marker
        covered = m is not None and (
            m.deleted_before >= bound
            or (m.last_life is not None and (t.created_at is None or t.created_at <= m.last_life))
        )
        pending = () if m is None else m.pending
        claimed = [p for p in pending if _matches(p, t, bound)] if pending else []
        lived = t.created_at
        if deleted:
            assert row is not None
            slot.row = None
            self.out.deleted += 1
            if lived is None or (t.deleted_at is None and t.reason == "explicit"):
                # A row created after ``lived`` is a later life only under a header-less
                # erasure's bound (its ``emitted_at``): the marker names that life. Under
                # every other bound or window it is a stamp of the tombstone's own life
                # from before a create moved its creation back (engine._backdate; a
                # header-less ttl tombstone's next life begins at or after its expiry):
                # the life is the tombstone's, whatever the order read (a held life's
                # tombstone named the row's when read after that stamp, the life's when
                # read after the life's own).
                lived = _max2(lived, row.created_at)
            src: Row | Pending | TombstoneChange = t if t.created_at is not None else row
            self.receipt(t.identity, t.reason, 1, src, t.emitted_at, self.now, t, t.late_cause)
        # An erasure's null that found no row (``rowless``) and a row this tombstone deleted
        # are one deletion: the stamp of a life the erasure ends came after the null (on
        # another partition of expiry.stamped, a producer's events of one record keyed
        # apart), and the one tombstone left two receipts, rows_deleted 1 and 0 (a trial).
        rowful = deleted or any(not p.rowless for p in claimed)
        for p in claimed:
            if p.rowless and rowful:
                continue
            src = t if t.created_at is not None else p
            # The erasure's null names the request when its tombstone event does not.
            by: TombstoneChange | Pending = p if t.request is None and t.reason == "explicit" else t
            if by is p and p.requested_at is None and t.requested_at is not None:
                # The tombstone alone says when (a release of an erasure an earlier
                # version deferred: its request unknown, its time the state's own).
                by = replace(p, requested_at=t.requested_at)
            late = t.late_cause if t.late_cause is not None else p.late_cause  # likewise
            deleted_at = p.deleted_at
            if p.kept:  # a held life's data, kept aside: it goes now (rule 8)
                deleted_at = self.now
                self._release(t.identity, p.created_at)
            self.receipt(
                t.identity, t.reason, 1 - p.rowless, src, t.emitted_at, deleted_at, by, late
            )
        rest = tuple(p for p in pending if p not in claimed) if claimed else None
        ended = t.expires_at
        if deleted:
            assert row is not None
            ended = _max2(ended, row.expires_at)
        for p in claimed:
            ended = _max2(ended, p.expires_at)
        self.remember(slot, t.identity, bound, lived, rest, ended, window)
        if not deleted and not claimed and not covered:
            # An erasure request for a row this store never held: still on record. Unless
            # it is dated at or before the bound of the store's pruning for its partition:
            # then it was read before, and its receipt written then; its marker was
            # forgotten since (rule 7). The marker is written again all the same, as the
            # first reading wrote it: a stamp of the life it ended, read again after it,
            # stays out.
            if self.read_before(t.topic, t.partition, t.timestamp):
                return
            self.receipt(t.identity, t.reason, 0, t, t.emitted_at, self.now, t, t.late_cause)

    def _release(self, ident: Identity, created_at: int | None) -> None:
        """Delete a held life's row from the store's held lives; one kept aside in this
        same plan is not written at all."""
        assert created_at is not None  # only a row with a creation time is kept aside
        held = self.out.held
        for n, row in enumerate(held):
            if row.identity == ident and row.created_at == created_at:
                del held[n]
                break
        self.out.released.append((ident, created_at))

    def null(self, slot: Slot, c: NullChange) -> None:
        """Delete the row; its receipt waits for the tombstone event, which names the rule.

        An erasure's null for a record the store knows nothing of (no row, no marker: an
        erasure of a record the service never saw) waits for its tombstone event too, as
        a deletion of no row: read first, and the record's next life deleted before that
        tombstone event came, the erasure was taken as covered by that later deletion and
        left no receipt, where read in the other order it had one (a property test).
        Unless it is dated at or before the bound of the store's pruning for its
        partition: then it was read before, its deletion settled and its marker was
        forgotten (rule 7)."""
        row = slot.row
        if row is None and slot.marker is None and c.reason == "explicit":
            if self.read_before(c.topic, c.partition, c.timestamp):
                return
            nothing = Pending(
                None, None, None, None, self.now, reason=c.reason, rowless=True,
                request=c.request, request_event_id=c.request_event_id,
                requested_at=c.requested_at,
            )  # fmt: skip
            self.remember(slot, c.identity, NEVER_CREATED, None, (nothing,))
            return
        # Nothing held, or held from a later position: a null leaves nothing to do.
        if row is None or row.applied(c.partition, c.offset):
            return
        slot.row = None
        self.out.deleted += 1
        waiting = Pending(
            row.created_at, row.expires_at, row.ttl_seconds, row.ttl_source, self.now,
            reason=c.reason, request=c.request, request_event_id=c.request_event_id,
            late_cause=c.late_cause, requested_at=c.requested_at,
        )  # fmt: skip
        held = () if slot.marker is None else slot.marker.pending
        created, expires = row.created_at, row.expires_at
        # The life's window, as its tombstone's: its stamps from before a create moved its
        # creation back (created before its expiry, begun before it), read again after this
        # null (a rewound group), stay out; written, the null read again deleted the row
        # once more and left a second deletion waiting for a tombstone that had come. For
        # an expiry's null (up to its expiry), or an erasure's that says where it was read
        # (a version that writes every next life's previous_deleted_at; see
        # TombstoneChange.window: its stamps created up to its first stamp's creation,
        # when the null says one; none else, not up to its expiry: a record created again
        # after the service forgot the erasure is a later life).
        window: Window = None
        if created is not None:
            if c.erasure_read:
                before = erased_life_before(c.first_created_at)
                window = None if before is None else (before, created)
            elif expires is not None and c.reason == "ttl":
                window = (expires, created)
        self.remember(
            slot, c.identity, life(created) + 1, created, (*held, waiting), expires, window
        )

    def sweep(self, slot: Slot, c: SweepChange) -> None:
        """The safety net: rows past their expiry get their receipt with reason ``sweep``,
        and so do null deletions whose tombstone event has not come within the grace, with
        their null's reason where it gave one (``unsettled``: their tombstones went
        astray, a mistyped topic, a sink down longer than the topic keeps them)."""
        m = slot.marker
        late = (
            [p for p in m.pending if not p.superseded and p.deleted_at <= c.cutoff]
            if m is not None
            else []
        )
        for p in late:
            self.receipt(
                c.identity, p.reason or "sweep", 1 - p.rowless, p, None, p.deleted_at, p,
                p.late_cause,
            )  # fmt: skip
            if p.reason is None:
                self.out.swept += 1
            else:
                self.out.unsettled += 1
        if late:
            assert m is not None
            # A rowless deletion's receipt is written: its tombstone event, should it still
            # come, names no life and is covered (as a row's late tombstone is by its life).
            last = (
                _max_opt(m.last_life, NEVER_CREATED)
                if any(p.rowless for p in late)
                else m.last_life
            )
            self.remember(
                slot, c.identity, m.deleted_before, last,
                tuple(p for p in m.pending if p not in late),
                _max_opt(*(p.expires_at for p in late)),
            )  # fmt: skip
        row = slot.row
        if (
            row is not None
            and row.expires_at is not None
            and row.expires_at <= c.cutoff
            # Written a grace before the cutoff too: a record already due when the service
            # read it (after an outage) is stamped and tombstoned then, late, and its
            # tombstone may queue behind a burst of others; judged by its expiry alone, the
            # row was swept as soon as its stamp was applied (a trial).
            and row.updated_at <= c.cutoff
        ):
            if not archived(row, c.archived):
                self.out.kept_for_archive += 1
                return
            if c.archived_by_cutoff is not None and not archived(row, c.archived_by_cutoff):
                return  # archived within the grace: its ttl tombstone is on its way
            slot.row = None
            self.remember(
                slot, c.identity, life(row.created_at) + 1, row.created_at, None, row.expires_at
            )
            self.receipt(c.identity, "sweep", 1, row, None, self.now)
            self.out.swept += 1


def plan(
    changes: Iterable[Change],
    state: Mapping[Identity, Slot],
    *,
    store: str,
    now_ms: int,
    new_id: Callable[[], str],
    pruned_before: Mapping[Source, int] | None = None,
) -> Plan:
    """Apply ``changes`` in order to ``state`` (not modified) and return the net writes.

    ``state`` holds the current slot of every identity the store has anything for; a
    missing identity is empty. Writes are net: a row deleted and written again in one batch
    is one upsert, and a row whose content did not change is not written at all.

    ``pruned_before``: the highest settling bound the store's pruning has used for each
    topic and partition its read-complete time covered (None: the store did not read
    them; empty: it never pruned); an erasure's null, or a tombstone event that finds
    nothing to delete, dated at or before the bound of the partition it was read from
    was read before (rule 7).
    """
    p = _Planner(store, now_ms, new_id, pruned_before)
    work: dict[Identity, Slot] = {}
    # Each identity's working slot beside the one it started from, in the order first seen.
    started: list[tuple[Identity, Slot, Slot | None]] = []
    for c in changes:
        ident = c.identity
        slot = work.get(ident)
        if slot is None:
            held = state.get(ident)
            slot = work[ident] = Slot() if held is None else Slot(held.row, held.marker)
            started.append((ident, slot, held))
        if isinstance(c, StampChange):
            p.stamp(slot, c)
        elif isinstance(c, TombstoneChange):
            p.tombstone(slot, c)
        elif isinstance(c, NullChange):
            p.null(slot, c)
        else:
            p.sweep(slot, c)
    out = p.out
    deleted: set[Identity] | None = None  # the receipts' identities, once a row is left
    for ident, slot, held in started:
        row, marker = slot.row, slot.marker
        before_row, before_marker = (None, None) if held is None else (held.row, held.marker)
        if row is None:
            if before_row is not None:
                out.deletes.append(ident)
        else:
            if deleted is None:
                deleted = {r.identity for r in out.receipts}
            if ident in deleted:
                out.living.append(ident)
            if row is not before_row:
                out.upserts.append(row)
        if marker is not before_marker and marker is not None:
            out.markers.append(marker)
    return out

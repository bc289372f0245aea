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
   life it ends (``created_at < bound``), and leaves a :class:`Marker`; a stamp of a deleted
   life arriving later is not written. A stamp of a newer life is written.
3. **The latest stamp wins** (``expiry.stamped`` is ordered per key), except that a null
   ``data`` (a touch re-stamp) keeps the data already held for the same life. A message of
   ``expiry.stamped`` at or before the position the row was written from is already
   applied and is skipped: a re-read never lets an old null delete a newer life.
4. **One receipt per deletion.** A deletion that removes a row leaves a receipt with
   ``rows_deleted=1``. A tombstone for a row the store never held leaves one with
   ``rows_deleted=0``, unless an earlier deletion already covers that life: an erasure
   request that reaches a store is always on record, a duplicate never is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stream_expiry.sinks._messages import (
    Change,
    Marker,
    NullChange,
    Receipt,
    Row,
    StampChange,
    SweepChange,
    TombstoneChange,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from stream_expiry.model import Identity

__all__ = ["NEVER_CREATED", "Plan", "Slot", "life", "plan"]

#: Stands for an unknown ``created_at``: such a row belongs to every deleted life. It is the
#: smallest BIGINT, so the stores keep it as a plain integer.
NEVER_CREATED = -(2**63) + 1


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


def life(created_at: int | None) -> int:
    """A row's life for comparisons: its ``created_at``, or before every life when unknown."""
    return NEVER_CREATED if created_at is None else created_at


def _max_opt(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


class _Planner:
    def __init__(self, store: str, now_ms: int, new_id: Callable[[], str]) -> None:
        self.store, self.now, self.new_id = store, now_ms, new_id
        self.out = Plan()

    def receipt(
        self, ident: Identity, reason: str, rows: int, row: Row | None, t: TombstoneChange | None
    ) -> None:
        """Fields from the tombstone (the rule that deleted), else from the deleted row."""
        src: Row | TombstoneChange | None = t if t is not None else row
        self.out.receipts.append(
            Receipt(
                receipt_id=self.new_id(),
                store=self.store,
                identity=ident,
                reason=reason,
                rows_deleted=rows,
                created_at=None if src is None else src.created_at,
                expires_at=None if src is None else src.expires_at,
                ttl_seconds=None if src is None else src.ttl_seconds,
                ttl_source=None if src is None else src.ttl_source,
                emitted_at=None if t is None else t.emitted_at,
                deleted_at=self.now,
            )
        )

    def remember(self, slot: Slot, ident: Identity, before: int, lived: int | None) -> None:
        """Raise the slot's marker to cover ``before`` and ``lived``; never lower it."""
        m = slot.marker
        new_before = before if m is None else max(m.deleted_before, before)
        new_last = lived if m is None else _max_opt(m.last_life, lived)
        if m is None or (new_before, new_last) != (m.deleted_before, m.last_life):
            slot.marker = Marker(ident, new_before, new_last, self.now)

    def stamp(self, slot: Slot, c: StampChange) -> None:
        m = slot.marker
        if m is not None and life(c.created_at) < m.deleted_before:
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
            c.partition, c.offset,
        )  # fmt: skip
        if old is None or not old.same_content(new):
            slot.row = new
            self.out.written += 1

    def tombstone(self, slot: Slot, t: TombstoneChange) -> None:
        bound = t.bound
        row = slot.row
        deleted = row is not None and life(row.created_at) < bound
        m = slot.marker
        covered = m is not None and (
            m.deleted_before >= bound
            or (
                t.created_at is not None and m.last_life is not None and t.created_at <= m.last_life
            )
        )
        lived = t.created_at
        if deleted:
            assert row is not None
            slot.row = None
            self.out.deleted += 1
            lived = _max_opt(lived, row.created_at)
        self.remember(slot, t.identity, bound, lived)
        if deleted or not covered:
            self.receipt(t.identity, t.reason, int(deleted), row if deleted else None, t)

    def drop_row(self, slot: Slot, ident: Identity, reason: str) -> None:
        """Delete the row (null value or sweep): it ends the row's own life only."""
        row = slot.row
        assert row is not None
        slot.row = None
        self.remember(slot, ident, life(row.created_at) + 1, row.created_at)
        self.receipt(ident, reason, 1, row, None)

    def null(self, slot: Slot, c: NullChange) -> None:
        row = slot.row
        # Nothing held, or held from a later position: a null leaves no evidence of its own.
        if row is not None and not row.applied(c.partition, c.offset):
            self.drop_row(slot, c.identity, "stamped_null")
            self.out.deleted += 1

    def sweep(self, slot: Slot, c: SweepChange) -> None:
        row = slot.row
        if row is not None and row.expires_at is not None and row.expires_at <= c.cutoff:
            self.drop_row(slot, c.identity, "sweep")
            self.out.swept += 1


def plan(
    changes: Iterable[Change],
    state: Mapping[Identity, Slot],
    *,
    store: str,
    now_ms: int,
    new_id: Callable[[], str],
) -> Plan:
    """Apply ``changes`` in order to ``state`` (not modified) and return the net writes.

    ``state`` holds the current slot of every identity the store has anything for; a
    missing identity is empty. Writes are net: a row deleted and written again in one batch
    is one upsert, and a row whose content did not change is not written at all.
    """
    p = _Planner(store, now_ms, new_id)
    work: dict[Identity, Slot] = {}
    for c in changes:
        slot = work.get(c.identity)
        if slot is None:
            held = state.get(c.identity)
            slot = work[c.identity] = Slot() if held is None else Slot(held.row, held.marker)
        if isinstance(c, StampChange):
            p.stamp(slot, c)
        elif isinstance(c, TombstoneChange):
            p.tombstone(slot, c)
        elif isinstance(c, NullChange):
            p.null(slot, c)
        else:
            p.sweep(slot, c)
    out = p.out
    for ident, slot in work.items():
        before = state.get(ident) or Slot()
        if slot.row is None:
            if before.row is not None:
                out.deletes.append(ident)
        elif slot.row is not before.row:
            out.upserts.append(slot.row)
        if slot.marker is not before.marker and slot.marker is not None:
            out.markers.append(slot.marker)
    return out

"""The one store interface every downstream store implements, and an in-memory store.

A store only has to provide a transaction with four primitives (load the slots of some
identities, list rows due for the sweep, write a :class:`~stream_expiry.sinks._logic.Plan`,
forget the deletion markers of a page that :func:`~stream_expiry.sinks._logic.prunable`
lets go) and a few reads. :meth:`Store.apply` and :meth:`Store.sweep` are written once, here, on top
of them: load, decide with the pure :func:`~stream_expiry.sinks._logic.plan`, write, in one
transaction. That is why the memory, SQLite and PostgreSQL stores cannot drift apart, and
why one test suite runs over all of them.

Receipts are an outbox: a store writes each one, and its entry in the store's list of
receipts not yet published, in the same transaction as the deletion; the sink marks them
published (the entries go, the receipts stay as they were written) once Kafka has
acknowledged them. A crash in between publishes them again after restart (at-least-once;
consumers de-duplicate by ``receipt_id``), so a deletion's evidence is never lost.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
import re
import threading
import time
from typing import TYPE_CHECKING, Final, Self

import anyio

from stream_expiry.errors import ConfigurationError, StoreError, leaves
from stream_expiry.sinks._logic import (
    Plan,
    Reach,
    Slot,
    Source,
    Window,
    ended_by,
    life,
    merge_plans,
    plan,
    prunable,
)
from stream_expiry.sinks._messages import (
    Change,
    Marker,
    Receipt,
    Row,
    StampChange,
    SweepChange,
    TombstoneChange,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence
    from types import TracebackType

    from stream_expiry.model import Identity

__all__ = [
    "MemoryStore",
    "PrunePage",
    "PrunePosition",
    "Store",
    "StoreTransaction",
    "StoreUnavailableError",
    "SweepPage",
    "SweepPosition",
    "check_identifier",
]


class StoreUnavailableError(StoreError):
    """The store's connection was lost, or its server does not answer (stopped, starting,
    restarting): retrying may succeed, as with a broker outage. The sink waits and applies
    again what was not applied; other store errors (a bad schema, a permission refused)
    stop it."""


#: Where a sweep's page ended: the last row it looked at, as the sweep orders rows (its
#: ``expires_at``, then its identity's five parts).
SweepPosition = tuple[int, tuple[str, str, str, str, str]]


@dataclasses.dataclass(frozen=True, slots=True)
class SweepPage:
    """What one call of :meth:`Store.sweep` did, and where the next should start."""

    plan: Plan
    #: The position to pass as ``after`` next time; None once the page reached the last
    #: due row (the next sweep starts from the first again).
    next_from: SweepPosition | None
    #: Whether rows or pending deletions were left for a next page at once.
    more: bool


#: Where a pruning page ended: the last marker it looked at, by its identity's five parts
#: (the deletions table's primary key, compared by code point).
PrunePosition = tuple[str, str, str, str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class PrunePage:
    """What one call of :meth:`Store.prune` did, and where the next should start."""

    #: Markers of the page that went.
    forgotten: int
    #: The position to pass as ``after`` next time; None once the page reached the last
    #: marker (the next page starts from the first again).
    next_from: PrunePosition | None


# Changes a batch must hold per transaction before it is split: below this, a second
# transaction's own round trips cost more than the overlap gains.
_MIN_SHARE: Final = 100
#: How far below the pruning's bound the bound for telling a re-read message lies
#: (:meth:`Store.prune`). A message dated shortly before the pruning's bound may not have
#: been read when its read-complete time was taken (sent late by a service that dated it
#: first, a broker's clock behind the sink's): with a small grace (``--marker-grace 0``)
#: such a tombstone's first reading was taken for a re-read and left no receipt. Taking a
#: re-read within this hour for a first one costs a second receipt, as before the rule;
#: the other way round cost an erasure its only one.
REREAD_MARGIN_MS: Final = 3_600_000
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


def check_identifier(value: str, what: str) -> str:
    """Table names cannot be SQL parameters: accept only plain identifiers, never quote-able text."""
    if not _IDENTIFIER.match(value):
        raise ConfigurationError(
            f"{what} {value!r} must be letters, digits and '_' (not starting with a digit), "
            "at most 41 characters"
        )
    return value


# Random bytes for receipt ids, read from the OS 40 KiB at a time: one os.urandom call per
# receipt (a system call) was a tenth of a deletion's Python time in the sink. Per thread,
# so two threads never take the same bytes; dropped in a forked child, which must not hand
# out its parent's bytes again.
_RANDOM_CHUNK: Final = 10 * 4096
_random = threading.local()
os.register_at_fork(after_in_child=_random.__dict__.clear)


def _random_hex80() -> str:
    """80 random bits from the OS, in hex; each bit handed out once per process."""
    r = _random
    try:
        at = r.at
        pool: bytes = r.pool
    except AttributeError:
        at, pool = _RANDOM_CHUNK, b""
    if at >= len(pool):
        pool, at = os.urandom(_RANDOM_CHUNK), 0
        r.pool = pool
    r.at = at + 10
    return pool[at : at + 10].hex()


def _new_receipt_id() -> str:
    """48 bits of epoch milliseconds then 80 random bits, in hex (the layout of a UUIDv7).

    Time first: the stores' unique index on ``receipt_id`` then grows at its end, as the
    receipts do, instead of taking every insert at a random place of a large B-tree (what
    a uuid4 costs once the table is bigger than the cache). Still unique without
    coordination: two receipts of one millisecond differ in 80 random bits.
    """
    return f"{time.time_ns() // 1_000_000:012x}{_random_hex80()}"


class StoreTransaction(abc.ABC):
    """The primitives a store provides inside one database transaction."""

    @abc.abstractmethod
    async def load(
        self, identities: Sequence[Identity], *, data: bool = True
    ) -> dict[Identity, Slot]:
        """The row and marker of each identity that has either (others are left out).

        ``data=False``: rows come without their ``data`` (None), which only a stamp needs
        (to keep the data of a touch re-stamp, and to compare contents); a batch without
        stamps then does not read the payloads it is about to delete.
        """

    async def take(self, ends: Mapping[Identity, Reach]) -> dict[Identity, Slot]:
        """Delete now the row of each identity whose life its tombstone's bound and window
        end (:func:`~stream_expiry.sinks._logic.ended_by`), and return each identity's
        slot as it was before.

        Called for the identities whose batch holds exactly one tombstone and nothing
        else: :func:`~stream_expiry.sinks._logic.plan` then deletes exactly these rows, so
        a store may delete them while it reads them (PostgreSQL: ``DELETE ... RETURNING``,
        one statement where a locking read and a delete were two). Rows come without
        ``data``. This default reads, then deletes what the tombstone ends.
        """
        slots = await self.load(list(ends), data=False)
        gone = []
        for i, s in slots.items():
            row = s.row
            if row is None:
                continue
            bound, window = ends[i]
            if life(row.created_at) < bound or (window is not None and _taken(row, bound, window)):
                gone.append(i)
        if gone:
            await self.write(Plan(deletes=gone))
        return slots

    @abc.abstractmethod
    async def due(
        self, cutoff_ms: int, limit: int, after: SweepPosition | None = None
    ) -> tuple[list[tuple[int, Identity]], list[Identity]]:
        """What the sweep looks at: up to ``limit`` rows that expired at or before
        ``cutoff_ms``, as ``(expires_at, identity)`` in the sweep's order (expiry, then the
        identity's parts compared by code point), starting after ``after``; and up to
        ``limit`` identities with a pending deletion made at or before it
        (:attr:`Marker.pending_since`), oldest first."""

    @abc.abstractmethod
    async def write(self, p: Plan) -> None:
        """Write the plan's upserts, deletes, markers and receipts (receipts unpublished),
        and its held lives: those kept aside (:attr:`Plan.held`), then those released."""

    @abc.abstractmethod
    async def prune(
        self, settled_before: int, limit: int, after: PrunePosition | None = None
    ) -> PrunePage:
        """Look at the next ``limit`` markers in the primary key's order, from just after
        ``after`` (the first when None), and delete those of them that
        :func:`~stream_expiry.sinks._logic.prunable` lets go. Read along the primary key,
        a page costs ``limit`` rows whatever the table holds, and no index of its own
        slows down each deletion's marker write (a partial index on ``settled_at`` cost
        every deletion 15-20 %)."""

    @abc.abstractmethod
    async def pruned_before(self) -> dict[Source, int]:
        """The highest settling bound :meth:`prune` was called with for each topic and
        partition (none: never), as :meth:`note_pruned` keeps them: see rule 7 of
        :mod:`~stream_expiry.sinks._logic`."""

    @abc.abstractmethod
    async def note_pruned(self, settled_before: int, sources: Sequence[Source]) -> None:
        """Raise the bound :meth:`pruned_before` returns for each of ``sources`` to
        ``settled_before`` (never lower it), in the transaction of the pruning that used
        it."""

    @abc.abstractmethod
    async def mark_published(self, receipt_ids: Sequence[str], now_ms: int) -> None:
        """Take these receipts off the list of those not yet published."""


class Store(abc.ABC):
    """A downstream store that applies stamps and tombstones and keeps deletion receipts.

    Use it as an async context manager (or call :meth:`open` and :meth:`close`); ``open``
    creates the schema if needed and may be called again. ``name`` is written into every
    receipt, so give each store of a platform its own.
    """

    name: str

    #: Whether the database works outside this process's GIL (PostgreSQL: another process),
    #: so that the sink decodes the next batch and publishes the last one while a
    #: transaction runs. A store whose driver takes the GIL back for every row (SQLite
    #: through aiosqlite: one handover per ``executemany`` row) would only lose to Python
    #: running beside it, and gets its steps one after the other instead.
    overlaps: bool = True

    #: Transactions one batch is split into, run at once (see :meth:`apply`). PostgreSQL
    #: runs each on its own connection and server process, so one's statements execute
    #: while this process plans another's; SQLite has one writer, and keeps 1.
    parallel: int = 1

    def __init__(self, name: str, *, new_id: Callable[[], str] = _new_receipt_id) -> None:
        self.name = name
        self._new_id = new_id

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema; calling it on an open store does nothing."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect; calling it on a closed store does nothing."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[StoreTransaction]:
        """One database transaction: committed on normal exit, rolled back on an exception.

        Database errors leave it as :class:`~stream_expiry.errors.StoreError`.
        """

    async def idle(self) -> None:  # noqa: B027 - a hook: most stores have nothing to do
        """The sink found nothing to read: a moment to clear what deletions left behind
        (the SQLite store's write-ahead log)."""

    async def ping(self) -> None:  # noqa: B027 - a hook: an embedded store is always there
        """Ask the store's server whether it answers: raises :class:`StoreUnavailableError`
        while it does not (the sink calls it before it says an outage is over)."""

    def holds(self, identity: Identity) -> bool:
        """Whether this store can represent the identity at all (PostgreSQL: no U+0000)."""
        del identity
        return True

    async def apply(
        self,
        changes: Sequence[Change],
        *,
        now_ms: int,
        published: Sequence[str] = (),
        living: bool = False,
    ) -> Plan:
        """Apply a batch of changes and return what was written: in one transaction, or in
        :attr:`parallel` transactions at once, each over its share of the identities.

        ``published``: receipts Kafka has acknowledged since the last transaction, marked
        published in the (first) transaction of this batch.

        ``living``: make :attr:`Plan.living` complete (a sink with compacted topics needs
        it); without it, records whose tombstone took no row may be left out of it.

        Split, each identity's changes stay together and in order, and no two transactions
        touch one row, so they never wait for each other. A batch one of whose
        transactions fails may have others committed: the sink stops without committing
        its offsets and reads the whole batch again when it starts, which changes nothing
        where it was applied (the store is idempotent), and the committed part's receipts
        wait in the outbox like any after a crash.
        """
        lanes = self.parallel
        if lanes <= 1 or len(changes) < 2 * _MIN_SHARE:
            return await self._apply_one(changes, now_ms=now_ms, published=published, living=living)
        shares: list[list[Change]] = [[] for _ in range(lanes)]
        for c in changes:
            shares[hash(c.identity) % lanes].append(c)
        plans: dict[int, Plan] = {}

        async def one(n: int, share: list[Change], marks: Sequence[str]) -> None:
            plans[n] = await self._apply_one(share, now_ms=now_ms, published=marks, living=living)

        try:
            async with anyio.create_task_group() as tg:
                for n, share in enumerate(shares):
                    if share or (n == 0 and published):
                        tg.start_soon(one, n, share, published if n == 0 else ())
        except BaseExceptionGroup as group:
            # The sink handles a store's errors one at a time: the first part's to fail
            # stands for the batch (the others were cancelled, or failed alike).
            raise leaves(group)[0] from None
        return merge_plans(plans[n] for n in sorted(plans))

    async def _apply_one(
        self, changes: Sequence[Change], *, now_ms: int, published: Sequence[str], living: bool
    ) -> Plan:
        """:meth:`apply` in one transaction."""
        # Identities whose batch holds one tombstone and nothing else (the common case of
        # a deletion) are read and deleted in one step; the others are read whole.
        ends: dict[Identity, Reach] = {}
        others: dict[Identity, None] = {}
        stamped = False
        for c in changes:
            ident = c.identity
            if type(c) is StampChange:
                stamped = True
            if others and ident in others:  # (an empty dict still hashes the identity)
                continue
            if type(c) is TombstoneChange and ident not in ends:
                ends[ident] = c.reach
            else:
                others[ident] = None
                ends.pop(ident, None)
        async with self.transaction() as tx:
            state = await tx.take(ends) if ends else {}
            if others:
                state.update(await tx.load(list(others), data=stamped))
            # A message that found nothing (an erasure's null, a tombstone event) asks for
            # the pruning's bound after planning, and the batch is planned again only when
            # the bound tells one was read before (see _logic.plan).
            out = plan(changes, state, store=self.name, now_ms=now_ms, new_id=self._new_id)
            if out.found_nothing_at:
                bounds = await tx.pruned_before()
                if any(
                    (bound := bounds.get(source)) is not None and at <= bound
                    for source, at in out.found_nothing_at
                ):
                    out = plan(
                        changes, state, store=self.name, now_ms=now_ms, new_id=self._new_id,
                        pruned_before=bounds,
                    )  # fmt: skip
            if ends:
                # take() deleted these rows already; plan must have decided the same.
                planned = set(out.deletes)
                gone = {
                    i
                    for i, (bound, window) in ends.items()
                    if (slot := state.get(i)) is not None
                    and (row := slot.row) is not None
                    and (
                        life(row.created_at) < bound
                        or (window is not None and _taken(row, bound, window))
                    )
                }
                # Without others, every planned deletion is of a taken identity.
                if gone != (planned & ends.keys() if others else planned):
                    raise AssertionError("take() and plan() disagree on a deletion")
                left = (
                    [] if len(gone) == len(planned) else [i for i in out.deletes if i not in gone]
                )
                out_written = dataclasses.replace(out, deletes=left)
                await tx.write(out_written)
                if living:
                    out.living += await _outlived(tx, ends, state, out)
            else:
                await tx.write(out)
            if published:
                await tx.mark_published(published, now_ms)
        return out

    async def sweep(
        self,
        *,
        cutoff_ms: int,
        now_ms: int,
        limit: int = 10_000,
        spare: Callable[[Identity], bool] | None = None,
        after: SweepPosition | None = None,
        archived: Mapping[int, int] | None = None,
        archived_by_cutoff: Mapping[int, int] | None = None,
    ) -> SweepPage:
        """Look at up to ``limit`` rows that expired at or before ``cutoff_ms``, from just
        after ``after``, and delete those ``spare`` does not keep (reason sweep).

        These are rows whose tombstone never came; each leaves a receipt, so the gap shows.
        A row under a legal hold has no tombstone coming, on purpose: ``spare`` keeps it
        (the sink passes its hold book's). Pages go on from where the last stopped
        (:attr:`SweepPage.next_from`), so rows kept in any number never stop the sweep from
        reaching the rows behind them. Deletions by a null value still waiting for their
        tombstone event since ``cutoff_ms`` or earlier get their receipt too (reason sweep:
        the rule is unknown).

        ``archived`` (``[archive] required``): the archive group's committed offset per
        partition of ``expiry.stamped``; a row whose stamp lies at or beyond it is kept
        (:func:`~stream_expiry.sinks._logic.archived`), and the pages go on past it.
        ``archived_by_cutoff``: the offsets it had committed by ``cutoff_ms``; a row
        archived since is spared, not counted as kept for the archive.
        """
        async with self.transaction() as tx:
            rows, late = await tx.due(cutoff_ms, limit, after)
            looked = [i for _, i in rows if spare is None or not spare(i)]
            idents = list(dict.fromkeys([*looked, *late]))
            state = await tx.load(idents[:limit], data=False) if idents else {}
            changes = [
                SweepChange(i, cutoff_ms, archived, archived_by_cutoff) for i in idents[:limit]
            ]
            out = plan(changes, state, store=self.name, now_ms=now_ms, new_id=self._new_id)
            await tx.write(out)
        next_from = (rows[-1][0], rows[-1][1].parts()) if len(rows) >= limit else None
        return SweepPage(out, next_from, more=next_from is not None or len(idents) > limit)

    async def prune(
        self,
        *,
        settled_before_ms: int,
        limit: int = 10_000,
        after: PrunePosition | None = None,
        sources: Sequence[Source] = (),
    ) -> PrunePage:
        """Look at the next ``limit`` deletion markers, from just after ``after``, and
        forget those settled at or before ``settled_before_ms`` with nothing pending
        (rule 7 of :mod:`~stream_expiry.sinks._logic`), in one transaction.

        A rolling scan: the caller passes each page's :attr:`PrunePage.next_from` to the
        next, so every marker is looked at once per (markers / ``limit``) pages, and a
        page costs the same at a thousand markers or a hundred million.

        ``sources``: the topics and partitions the read-complete time behind
        ``settled_before_ms`` covered (every message of them written before it is
        applied). For each, the store keeps the highest ``settled_before_ms`` used, less
        :data:`REREAD_MARGIN_MS`, in the same transaction: an erasure's null, or a
        tombstone event that finds nothing to delete, read from there and dated at or
        before it is known to have been read before (rule 7 of
        :mod:`~stream_expiry.sinks._logic`). Of other partitions nothing is known.
        """
        async with self.transaction() as tx:
            page = await tx.prune(settled_before_ms, limit, after)
            if sources:
                once = list(dict.fromkeys(sources))
                await tx.note_pruned(settled_before_ms - REREAD_MARGIN_MS, once)
            return page

    @abc.abstractmethod
    async def pending_receipts(self, limit: int = 1000) -> list[Receipt]:
        """Receipts not yet marked published, oldest first (the outbox)."""

    async def mark_published(self, receipt_ids: Sequence[str], *, now_ms: int) -> None:
        """Record that these receipts reached Kafka; the only change a receipt ever sees."""
        if receipt_ids:
            async with self.transaction() as tx:
                await tx.mark_published(receipt_ids, now_ms)

    @abc.abstractmethod
    async def get(self, identity: Identity) -> Row | None:
        """The row held for an identity, if any."""

    @abc.abstractmethod
    async def held_lives(self, identity: Identity) -> list[Row]:
        """The rows of earlier lives of a record that a legal hold keeps, oldest first:
        each kept aside when the record's next life replaced it, until that life's
        tombstone (rule 8 of :mod:`~stream_expiry.sinks._logic`)."""

    @abc.abstractmethod
    async def marker(self, identity: Identity) -> Marker | None:
        """The deletion memory held for an identity, if any."""

    @abc.abstractmethod
    async def receipts(self) -> list[Receipt]:
        """Every receipt, oldest first (for audits and tests; not for large stores)."""

    @abc.abstractmethod
    async def count(self) -> int:
        """How many rows the store holds."""

    @abc.abstractmethod
    async def count_markers(self) -> int:
        """How many deletion markers the store holds (what it remembers of deleted lives)."""

    @abc.abstractmethod
    async def is_empty(self) -> bool:
        """Whether the store holds nothing at all: no row, no marker, no receipt (a store
        just created; cheap whatever its size)."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _taken(row: Row, bound: int, window: Window) -> bool:
    """Whether a tombstone of ``bound`` and ``window`` ends ``row``'s life."""
    return ended_by(row.created_at, row.previous_deleted_at, bound, window)


async def _outlived(
    tx: StoreTransaction, ends: Mapping[Identity, Reach], state: Mapping[Identity, Slot], out: Plan
) -> list[Identity]:
    """Of the identities :meth:`StoreTransaction.take` handled, those with a receipt whose
    record still has a row: ``take`` returns only the rows it deleted (PostgreSQL), so a
    row of a later life, which a tombstone leaves, was not in the state ``plan`` saw.
    Asked only for receipts no taken row explains (a pending deletion's, or one for a row
    the store never held)."""
    taken = {i for i, slot in state.items() if slot.row is not None}
    asked = [i for i in dict.fromkeys(r.identity for r in out.receipts) if i in ends]
    asked = [i for i in asked if i not in taken]
    if not asked:
        return []
    rows = await tx.load(asked, data=False)
    return [i for i in asked if (slot := rows.get(i)) is not None and slot.row is not None]


def _raise(bounds: dict[Source, int], bound: int, sources: Sequence[Source]) -> None:
    """Raise each source's bound to ``bound``; never lower one."""
    for source in sources:
        held = bounds.get(source)
        bounds[source] = bound if held is None else max(held, bound)


class _MemoryTx(StoreTransaction):
    def __init__(self, store: MemoryStore) -> None:
        self._s = store
        # Staged writes: applied to the store only on commit, as a database would.
        self._plans: list[Plan] = []
        self._published: list[tuple[str, int]] = []
        self._forgotten: list[Identity] = []
        self._pruned: dict[Source, int] = {}

    async def load(
        self, identities: Sequence[Identity], *, data: bool = True
    ) -> dict[Identity, Slot]:
        del data  # the rows are in memory already: nothing to save
        rows, markers = self._s.rows, self._s.markers
        return {
            i: Slot(rows.get(i), markers.get(i)) for i in identities if i in rows or i in markers
        }

    async def due(
        self, cutoff_ms: int, limit: int, after: SweepPosition | None = None
    ) -> tuple[list[tuple[int, Identity]], list[Identity]]:
        due = sorted(
            (r.expires_at, r.identity.parts(), r.identity)
            for r in self._s.rows.values()
            if r.expires_at is not None and r.expires_at <= cutoff_ms
        )
        found = [(e, i) for e, parts, i in due if after is None or (e, parts) > after]
        late = sorted(
            (since, m.identity)
            for m in self._s.markers.values()
            if (since := m.pending_since) is not None and since <= cutoff_ms
        )
        return found[:limit], [i for _, i in late[:limit]]

    async def write(self, p: Plan) -> None:
        self._plans.append(p)

    async def prune(
        self, settled_before: int, limit: int, after: PrunePosition | None = None
    ) -> PrunePage:
        page = sorted(
            (m for m in self._s.markers.values() if after is None or m.identity.parts() > after),
            key=lambda m: m.identity.parts(),
        )[:limit]
        gone = [m.identity for m in page if prunable(m, settled_before)]
        self._forgotten.extend(gone)
        return PrunePage(len(gone), page[-1].identity.parts() if len(page) >= limit else None)

    async def pruned_before(self) -> dict[Source, int]:
        return dict(self._s.pruned_before)

    async def note_pruned(self, settled_before: int, sources: Sequence[Source]) -> None:
        _raise(self._pruned, settled_before, sources)

    async def mark_published(self, receipt_ids: Sequence[str], now_ms: int) -> None:
        self._published.extend((rid, now_ms) for rid in receipt_ids)

    def commit(self) -> None:
        s = self._s
        for source, bound in self._pruned.items():
            _raise(s.pruned_before, bound, (source,))
        for rid, now_ms in self._published:
            s.published.setdefault(rid, now_ms)
        for p in self._plans:
            for ident in p.deletes:
                del s.rows[ident]
            for row in p.upserts:
                s.rows[row.identity] = row
            for m in p.markers:
                s.markers[m.identity] = m
            for row in p.held:
                assert row.created_at is not None
                s.held[row.identity, row.created_at] = row
            for kept in p.released:
                s.held.pop(kept, None)
            s.outbox.extend(p.receipts)
        for ident in self._forgotten:
            del s.markers[ident]


class MemoryStore(Store):
    """A store in a few dicts: for tests and the demo. Receipts live as long as the object."""

    def __init__(
        self, name: str = "memory", *, new_id: Callable[[], str] = _new_receipt_id
    ) -> None:
        super().__init__(name, new_id=new_id)
        self.rows: dict[Identity, Row] = {}
        self.markers: dict[Identity, Marker] = {}
        # Rows of lives a legal hold keeps, by record and created_at (Plan.held).
        self.held: dict[tuple[Identity, int], Row] = {}
        self.outbox: list[Receipt] = []
        self.published: dict[str, int] = {}
        self.pruned_before: dict[Source, int] = {}  # see StoreTransaction.pruned_before

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[StoreTransaction]:
        tx = _MemoryTx(self)
        yield tx
        tx.commit()

    def transaction(self) -> contextlib.AbstractAsyncContextManager[StoreTransaction]:
        return self._transaction()

    async def pending_receipts(self, limit: int = 1000) -> list[Receipt]:
        return [r for r in self.outbox if r.receipt_id not in self.published][:limit]

    async def get(self, identity: Identity) -> Row | None:
        return self.rows.get(identity)

    async def marker(self, identity: Identity) -> Marker | None:
        return self.markers.get(identity)

    async def held_lives(self, identity: Identity) -> list[Row]:
        return [self.held[k] for k in sorted(k for k in self.held if k[0] == identity)]

    async def receipts(self) -> list[Receipt]:
        return list(self.outbox)

    async def count(self) -> int:
        return len(self.rows)

    async def count_markers(self) -> int:
        return len(self.markers)

    async def is_empty(self) -> bool:
        return not (self.rows or self.markers or self.outbox)

"""A downstream store in SQLite (aiosqlite), in WAL mode.

Why these settings: WAL lets readers (an audit, the demo) query the tables while the sink
writes. ``synchronous=FULL`` is the default because the sink commits its Kafka offsets right
after the SQLite commit: with ``NORMAL`` a power cut could undo a committed deletion whose
offset Kafka already holds, and the tombstone would never come again. ``NORMAL`` is faster
and still safe against a crash of the process; choose it knowingly.

Every value is a bound parameter. The only text put into SQL is the table prefix, which
:func:`~stream_expiry.sinks.store.check_identifier` limits to letters, digits and ``_``.
SQLite text may hold any character, U+0000 included, so every identity is representable.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

import aiosqlite
import anyio

from stream_expiry.errors import StoreError
from stream_expiry.model import Identity
from stream_expiry.sinks._logic import UNKNOWN_PREVIOUS, Plan, Slot, Source
from stream_expiry.sinks._messages import (
    Marker,
    Receipt,
    Row,
    decode_pending,
    encode_pending,
)
from stream_expiry.sinks.store import (
    PrunePage,
    Store,
    StoreTransaction,
    _new_receipt_id,
    check_identifier,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from stream_expiry.sinks.store import PrunePosition, SweepPosition

__all__ = ["SQLiteStore", "missing_directory", "sqlite_file_in", "sqlite_file_of"]

_KEY: Final = "org, bot, env, category, record_id"
# Ties in the sweep's order are broken by the identity (BINARY: Python's string order).
_BY_KEY: Final = _KEY
_KEY_MATCH: Final = "org = ? AND bot = ? AND env = ? AND category = ? AND record_id = ?"
_CHUNK: Final = 400  # identities per lookup: 5 parameters each, far below SQLite's limit
_ROW_COLS: Final = (
    f"{_KEY}, created_at, expires_at, ttl_seconds, ttl_source, data, updated_at, "
    "src_partition, src_offset, previous_deleted_at"
)
# The same columns with NULL for data: a batch without stamps does not read payloads.
_ROW_COLS_NO_DATA: Final = _ROW_COLS.replace(" data,", " NULL,")
# After INSERT INTO records or held_lives: a row's columns and a parameter for each.
_ROW_VALUES: Final = f"({_ROW_COLS}) VALUES ({', '.join(['?'] * len(_ROW_COLS.split(', ')))})"
# What an upsert of a row sets, but the key and created_at: records add created_at; in
# held_lives it is part of the key (one row per life).
_SET_ROW_BUT_CREATED: Final = (
    "expires_at = excluded.expires_at, ttl_seconds = excluded.ttl_seconds, "
    "ttl_source = excluded.ttl_source, data = excluded.data, "
    "updated_at = excluded.updated_at, src_partition = excluded.src_partition, "
    "src_offset = excluded.src_offset, previous_deleted_at = excluded.previous_deleted_at"
)
_MARKER_COLS: Final = (
    f"{_KEY}, deleted_before, last_life, deleted_at, pending, pending_since, settled_at, "
    "ttl_before, ttl_floor"
)
_RECEIPT_COLS: Final = (
    f"receipt_id, store, {_KEY}, reason, rows_deleted, created_at, expires_at, ttl_seconds, "
    "ttl_source, emitted_at, deleted_at, request, request_event_id, late_cause, requested_at"
)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS {p}records (
    org TEXT NOT NULL, bot TEXT NOT NULL, env TEXT NOT NULL, category TEXT NOT NULL,
    record_id TEXT NOT NULL,
    created_at INTEGER, expires_at INTEGER, ttl_seconds INTEGER, ttl_source TEXT,
    data TEXT, updated_at INTEGER NOT NULL, src_partition INTEGER, src_offset INTEGER,
    previous_deleted_at INTEGER DEFAULT {unknown},
    PRIMARY KEY (org, bot, env, category, record_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {p}records_by_expiry ON {p}records (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {p}held_lives (
    org TEXT NOT NULL, bot TEXT NOT NULL, env TEXT NOT NULL, category TEXT NOT NULL,
    record_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, expires_at INTEGER, ttl_seconds INTEGER, ttl_source TEXT,
    data TEXT, updated_at INTEGER NOT NULL, src_partition INTEGER, src_offset INTEGER,
    previous_deleted_at INTEGER DEFAULT {unknown},
    PRIMARY KEY (org, bot, env, category, record_id, created_at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {p}deletions (
    org TEXT NOT NULL, bot TEXT NOT NULL, env TEXT NOT NULL, category TEXT NOT NULL,
    record_id TEXT NOT NULL,
    deleted_before INTEGER NOT NULL, last_life INTEGER, deleted_at INTEGER NOT NULL,
    pending TEXT, pending_since INTEGER, settled_at INTEGER,
    ttl_before INTEGER, ttl_floor INTEGER,
    PRIMARY KEY (org, bot, env, category, record_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {p}deletions_pending ON {p}deletions (pending_since)
    WHERE pending_since IS NOT NULL;
CREATE TABLE IF NOT EXISTS {p}receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    receipt_id TEXT NOT NULL UNIQUE, store TEXT NOT NULL,
    org TEXT NOT NULL, bot TEXT NOT NULL, env TEXT NOT NULL, category TEXT NOT NULL,
    record_id TEXT NOT NULL,
    reason TEXT NOT NULL, rows_deleted INTEGER NOT NULL,
    created_at INTEGER, expires_at INTEGER, ttl_seconds INTEGER, ttl_source TEXT,
    emitted_at INTEGER, deleted_at INTEGER NOT NULL,
    request TEXT, request_event_id TEXT, late_cause TEXT, requested_at INTEGER
);
CREATE TABLE IF NOT EXISTS {p}receipts_outbox (seq INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS {p}pruned (
    src_topic TEXT NOT NULL, src_partition INTEGER NOT NULL, settled_before INTEGER NOT NULL,
    PRIMARY KEY (src_topic, src_partition)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS {p}receipts_to_outbox AFTER INSERT ON {p}receipts
BEGIN INSERT INTO {p}receipts_outbox (seq) VALUES (new.seq); END;
CREATE TRIGGER IF NOT EXISTS {p}receipts_no_delete BEFORE DELETE ON {p}receipts
BEGIN SELECT RAISE(ABORT, 'receipts are append-only'); END;
CREATE TRIGGER IF NOT EXISTS {p}receipts_no_update BEFORE UPDATE ON {p}receipts
BEGIN SELECT RAISE(ABORT, 'receipts are append-only'); END;
"""


# Columns added since the first release, for stores created by it: (table, column, type).
_ADDED: Final = (
    ("deletions", "pending", "TEXT"),
    ("deletions", "pending_since", "INTEGER"),
    ("deletions", "settled_at", "INTEGER"),
    # The erasure request a receipt names (NULL in the receipts written before).
    ("receipts", "request", "TEXT"),
    ("receipts", "request_event_id", "TEXT"),
    # Why the deletion was late (NULL: on time, and in the receipts written before).
    ("receipts", "late_cause", "TEXT"),
    # When the erasure a receipt carried out was requested (NULL: not an erasure, an older
    # version's tombstone, and the receipts written before).
    ("receipts", "requested_at", "INTEGER"),
    # Where the row's life began (rows written before: unknown, so no ttl tombstone's
    # window takes them in), and the markers' ttl window (NULL: none, as before).
    ("records", "previous_deleted_at", f"INTEGER DEFAULT {UNKNOWN_PREVIOUS}"),
    ("deletions", "ttl_before", "INTEGER"),
    ("deletions", "ttl_floor", "INTEGER"),
)


def _row(r: Sequence[Any], ident: Identity | None = None) -> Row:
    return Row(ident or Identity(*r[:5]), *r[5:14])


def _marker(r: Sequence[Any], ident: Identity | None = None) -> Marker:
    return Marker(
        ident or Identity(*r[:5]), r[5], r[6], r[7], decode_pending(r[8]), r[10], r[11], r[12]
    )


def _receipt(r: Sequence[Any]) -> Receipt:
    return Receipt(r[0], r[1], Identity(*r[2:7]), *r[7:])


def _rows_params(rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    """Each row's parameters in ``_ROW_COLS``' order, for records and held_lives alike: one
    call a batch, not one a row (the records' upsert is on every batch's path)."""
    return [
        (*r.identity.parts(), r.created_at, r.expires_at, r.ttl_seconds, r.ttl_source, r.data,
         r.updated_at, r.src_partition, r.src_offset, r.previous_deleted_at)
        for r in rows
    ]  # fmt: skip


def _receipt_params(r: Receipt) -> tuple[Any, ...]:
    return (
        r.receipt_id, r.store, *r.identity.parts(), r.reason, r.rows_deleted, r.created_at,
        r.expires_at, r.ttl_seconds, r.ttl_source, r.emitted_at, r.deleted_at, r.request,
        r.request_event_id, r.late_cause, r.requested_at,
    )  # fmt: skip


class _SQLiteTx(StoreTransaction):
    def __init__(self, conn: aiosqlite.Connection, prefix: str) -> None:
        self._c, self._p = conn, prefix

    async def _lookup(
        self, table: str, cols: str, parts: Sequence[tuple[str, str, str, str, str]]
    ) -> list[Any]:
        """Rows of ``table`` for these identities (their parts): one query per chunk, not
        one per key."""
        found: list[Any] = []
        for start in range(0, len(parts), _CHUNK):
            chunk = parts[start : start + _CHUNK]
            values = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
            params = [part for key in chunk for part in key]
            sql = (
                f"WITH k({_KEY}) AS (VALUES {values}) "
                f"SELECT {cols} FROM {self._p}{table} JOIN k USING ({_KEY})"
            )
            async with self._c.execute(sql, params) as cur:
                found.extend(await cur.fetchall())
        return found

    async def load(
        self, identities: Sequence[Identity], *, data: bool = True
    ) -> dict[Identity, Slot]:
        slots: dict[Identity, Slot] = {}
        parts = [i.parts() for i in identities]  # once, for both lookups
        asked = dict(zip(parts, identities, strict=True))  # reuse them: no key to build again
        cols = _ROW_COLS if data else _ROW_COLS_NO_DATA
        for r in await self._lookup("records", cols, parts):
            row = _row(r, asked.get(tuple(r[:5])))
            slots[row.identity] = Slot(row)
        for r in await self._lookup("deletions", _MARKER_COLS, parts):
            m = _marker(r, asked.get(tuple(r[:5])))
            slots.setdefault(m.identity, Slot()).marker = m
        return slots

    async def due(
        self, cutoff_ms: int, limit: int, after: SweepPosition | None = None
    ) -> tuple[list[tuple[int, Identity]], list[Identity]]:
        # Text compares as bytes here (BINARY), and UTF-8's byte order is code point order.
        resume = "" if after is None else f"AND (expires_at, {_KEY}) > (?, ?, ?, ?, ?, ?) "
        sql = (
            f"SELECT expires_at, {_KEY} FROM {self._p}records WHERE expires_at IS NOT NULL "
            f"AND expires_at <= ? {resume}ORDER BY expires_at, {_BY_KEY} LIMIT ?"
        )
        params = (cutoff_ms, limit) if after is None else (cutoff_ms, after[0], *after[1], limit)
        async with self._c.execute(sql, params) as cur:
            found = [(r[0], Identity(*r[1:])) for r in await cur.fetchall()]
        sql = (
            f"SELECT {_KEY} FROM {self._p}deletions WHERE pending_since IS NOT NULL "
            f"AND pending_since <= ? ORDER BY pending_since, {_BY_KEY} LIMIT ?"
        )
        async with self._c.execute(sql, (cutoff_ms, limit)) as cur:
            late = [Identity(*r) for r in await cur.fetchall()]
        return found, late

    async def write(self, p: Plan) -> None:
        c, t = self._c, self._p
        if p.deletes:
            await c.executemany(
                f"DELETE FROM {t}records WHERE {_KEY_MATCH}", [i.parts() for i in p.deletes]
            )
        if p.upserts:
            await c.executemany(
                f"INSERT INTO {t}records {_ROW_VALUES} "
                f"ON CONFLICT ({_KEY}) DO UPDATE SET created_at = excluded.created_at, "
                f"{_SET_ROW_BUT_CREATED}",
                _rows_params(p.upserts),
            )
        if p.markers:
            await c.executemany(
                f"INSERT INTO {t}deletions ({_MARKER_COLS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT ({_KEY}) DO UPDATE SET deleted_before = excluded.deleted_before, "
                "last_life = excluded.last_life, deleted_at = excluded.deleted_at, "
                "pending = excluded.pending, pending_since = excluded.pending_since, "
                "settled_at = excluded.settled_at, ttl_before = excluded.ttl_before, "
                "ttl_floor = excluded.ttl_floor",
                [
                    (
                        *m.identity.parts(),
                        m.deleted_before,
                        m.last_life,
                        m.deleted_at,
                        encode_pending(m.pending),
                        m.pending_since,
                        m.settled_at,
                        m.ttl_before,
                        m.ttl_floor,
                    )
                    for m in p.markers
                ],
            )
        if p.held or p.released:
            await self._write_held(p)
        if p.receipts:
            await c.executemany(
                f"INSERT INTO {t}receipts ({_RECEIPT_COLS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_receipt_params(r) for r in p.receipts],
            )

    async def _write_held(self, p: Plan) -> None:
        """Keep aside the rows of lives a legal hold keeps, then delete those released
        (rule 8 of :mod:`~stream_expiry.sinks._logic`): rare, so apart from :meth:`write`."""
        c, t = self._c, self._p
        if p.held:
            await c.executemany(
                f"INSERT INTO {t}held_lives {_ROW_VALUES} "
                f"ON CONFLICT ({_KEY}, created_at) DO UPDATE SET {_SET_ROW_BUT_CREATED}",
                _rows_params(p.held),
            )
        if p.released:
            await c.executemany(
                f"DELETE FROM {t}held_lives WHERE {_KEY_MATCH} AND created_at = ?",
                [(*i.parts(), created) for i, created in p.released],
            )

    async def prune(
        self, settled_before: int, limit: int, after: PrunePosition | None = None
    ) -> PrunePage:
        start = () if after is None else after
        sql = prune_end_sql(self._p, after=after is not None)
        async with self._c.execute(sql, (*start, limit - 1)) as cur:
            last = await cur.fetchone()
        end: PrunePosition | None = None if last is None else (*last,)
        sql = prune_sql(self._p, after=after is not None, upto=end is not None)
        async with self._c.execute(sql, (*start, *(end or ()), settled_before)) as cur:
            return PrunePage(max(0, cur.rowcount), end)

    async def pruned_before(self) -> dict[Source, int]:
        sql = f"SELECT src_topic, src_partition, settled_before FROM {self._p}pruned"
        async with self._c.execute(sql) as cur:
            return {(str(t), int(n)): int(b) for t, n, b in await cur.fetchall()}

    async def note_pruned(self, settled_before: int, sources: Sequence[Source]) -> None:
        await self._c.executemany(
            f"INSERT INTO {self._p}pruned (src_topic, src_partition, settled_before) "
            "VALUES (?, ?, ?) ON CONFLICT (src_topic, src_partition) DO UPDATE "
            "SET settled_before = max(settled_before, excluded.settled_before)",
            [(topic, partition, settled_before) for topic, partition in sources],
        )

    async def mark_published(self, receipt_ids: Sequence[str], now_ms: int) -> None:
        del now_ms  # the receipts are not rewritten: their entries leave the outbox
        t = self._p
        await self._c.executemany(
            f"DELETE FROM {t}receipts_outbox "
            f"WHERE seq = (SELECT seq FROM {t}receipts WHERE receipt_id = ?)",
            [(rid,) for rid in receipt_ids],
        )


_AFTER: Final = f"({_KEY}) > (?, ?, ?, ?, ?)"
_UPTO: Final = f"({_KEY}) <= (?, ?, ?, ?, ?)"


def prune_end_sql(prefix: str, *, after: bool) -> str:
    """The statement that finds the last marker of a page (parameters: the identity the
    page starts after, unless it is the first; the page size less one), read in the
    primary key's order from the key itself: no sort, no full scan. No row: the page
    runs to the end of the table."""
    where = f"WHERE {_AFTER} " if after else ""
    return f"SELECT {_KEY} FROM {prefix}deletions {where}ORDER BY {_KEY} LIMIT 1 OFFSET ?"


def prune_sql(prefix: str, *, after: bool, upto: bool) -> str:
    """The statement that forgets the prunable markers of a page (parameters: the
    identity the page starts after, unless it is the first; its last, unless it runs to
    the end; the settling bound): a range of the primary key, each row of it checked
    against :func:`~stream_expiry.sinks._logic.prunable`."""
    bounds = [*([_AFTER] if after else []), *([_UPTO] if upto else [])]
    where = " AND ".join([*bounds, "pending IS NULL AND settled_at <= ?"])
    return f"DELETE FROM {prefix}deletions WHERE {where}"


def _settle_old_markers(table: str) -> str:
    """The statement that gives the markers of an earlier version a ``settled_at``: the
    time they last changed. They did not keep the expiry of the lives they deleted, so an
    erasure of a life whose expiry was still to come is forgotten a grace after the
    erasure, not after that expiry; a stamp of it could come back only if re-delivered
    that late (the group rewound), and then, as in the service, it lives to its expiry.
    Kept forever instead, every such marker (millions, for a large platform) stays."""
    return f"UPDATE {table} SET settled_at = deleted_at WHERE settled_at IS NULL"


async def _to_wal(conn: aiosqlite.Connection, tries: int = 100) -> None:
    """Put the database in WAL mode. SQLite answers "database is locked" at once, without
    its busy handler, when another connection opens the same new file at that moment (a
    reader beside the sink, a second instance): the sink stopped with status 4 (seen in
    CI; 2 in 200 such openings, measured). So the change is tried again, 20 ms apart, for
    up to 2 s; the mode is the file's, set once by whichever connection gets there."""
    for attempt in range(tries):
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == tries - 1:
                raise
            await anyio.sleep(0.02)


def sqlite_file_in(directory: str) -> str:
    """A database file to suggest where a directory was given for one."""
    return os.path.join(directory, "sink.db")


def sqlite_file_of(path: str) -> str | None:
    """The file ``path`` names: itself, or a ``file:`` URI's path (this SQLite reads one
    even unasked); None for an in-memory database, which has no file."""
    if path.startswith("file:"):
        target, _, query = path[len("file:") :].partition("?")
        if target.startswith("//"):  # file://host/path: the host is empty or localhost
            target = "/" + target[2:].partition("/")[2]
        if "mode=memory" in query:
            return None
        path = urllib.parse.unquote(target)
    if path in ("", ":memory:"):
        return None
    return path


def missing_directory(path: str) -> str | None:
    """Why the database file ``path`` names cannot be made, if its directory is missing (or
    is a file): SQLite creates the file, not its directory, and says only "unable to open
    database file". None when the directory is there, or there is no file."""
    file = sqlite_file_of(path)
    if file is None:
        return None
    parent = os.path.dirname(os.path.abspath(file))
    if os.path.isdir(parent):
        return None
    if os.path.exists(parent):
        return f"{parent} is a file, not a directory"
    return f"the directory {parent} does not exist (create it first)"


def _create_private(path: str) -> None:
    """Create a missing database file readable and writable by its owner only (0600): it
    holds the records' personal data, and SQLite would make it 0644 under the usual umask,
    readable by every user of the machine. SQLite gives its ``-wal`` and ``-shm`` files the
    database file's permissions. An existing file keeps the permissions it has. A
    ``file:`` URI names its file too: its path, not an in-memory database's."""
    file = sqlite_file_of(path)
    if file is None:
        return
    with contextlib.suppress(FileExistsError):
        os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class SQLiteStore(Store):
    """Records, deletion markers and receipts in one SQLite file.

    Its statements run in aiosqlite's thread, which needs the GIL back after every row of
    an ``executemany``; beside a busy Python thread each handover waits for the
    interpreter's switch interval (measured: 67k inserted rows/s alone, 308 beside a busy
    thread). So the sink does not overlap its own work with this store's (``overlaps``):
    through Kafka the rate is the same either way (``bench.bench_sinks``, 300k records,
    two runs each: 14.5-14.9k against 13.5-15.3k end to end), since the overlap bought
    nothing but that contention.

    Receipts are written once and never changed (triggers refuse an update or a delete);
    a trigger lists each new one in ``receipts_outbox``, and marking it published deletes
    that entry. Earlier versions set a ``published_at`` column instead, which wrote every
    receipt twice; such a store is brought over when it opens.

    ``path``: the database file (created if missing). ``table_prefix``: prepended to the
    table names ``records``, ``held_lives``, ``deletions``, ``receipts``,
    ``receipts_outbox`` and ``pruned``, so several stores can share a file. ``synchronous``: ``FULL`` (default,
    see the module notes) or ``NORMAL``.
    """

    overlaps = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "sqlite",
        table_prefix: str = "expiry_",
        synchronous: str = "FULL",
        new_id: Callable[[], str] = _new_receipt_id,
    ) -> None:
        super().__init__(name, new_id=new_id)
        self.path = path
        self.prefix = check_identifier(table_prefix, "the table prefix") if table_prefix else ""
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise StoreError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self._sync = synchronous.upper()
        self._conn: aiosqlite.Connection | None = None
        self._unflushed = False  # transactions committed since the last checkpoint
        # One connection: a reader must not slip its statements into the sink's transaction.
        self._lock = anyio.Lock()

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            _create_private(os.fspath(self.path))
            conn = await aiosqlite.connect(os.fspath(self.path), isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite database {self.path}: {self._why(exc)}") from exc
        try:
            await conn.execute("PRAGMA busy_timeout=10000")
            await _to_wal(conn)
            await conn.execute(f"PRAGMA synchronous={self._sync}")
            # A deleted row's bytes are overwritten, not left in free pages for anyone who
            # reads the file: deleting personal data is what this store is for.
            await conn.execute("PRAGMA secure_delete=ON")
            # 64 MiB of page cache instead of 2: a batch touches a few thousand random
            # places of the records, deletions and receipts B-trees.
            await conn.execute("PRAGMA cache_size=-65536")
            await self._upgrade(conn)
            await conn.executescript(_SCHEMA.format(p=self.prefix, unknown=UNKNOWN_PREVIOUS))
        except sqlite3.Error as exc:
            await conn.close()
            raise StoreError(f"cannot create the sink schema in {self.path}: {exc}") from exc
        except BaseException:
            # Cancelled (a stop while a lock another process holds keeps the open waiting):
            # closed all the same, as close() does. aiosqlite's thread is no daemon: left
            # waiting for requests, it kept the process from ending after its stop. The
            # close waits for the statement under way, at most its busy timeout (10 s).
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        self._conn = conn

    def _why(self, exc: BaseException) -> str:
        """SQLite says "unable to open database file" whatever the cause; the commonest ones,
        a directory that does not exist (SQLite creates the file, not its directory) and a
        directory given for the file, are said as such."""
        path = os.fspath(self.path)
        if os.path.isdir(path):
            return (
                f"it is a directory, not a database file (give a file, e.g. {sqlite_file_in(path)})"
            )
        return missing_directory(path) or str(exc)

    async def _upgrade(self, conn: aiosqlite.Connection) -> None:
        """Bring a store made by an earlier version up to date, in one transaction: add
        each missing column (SQLite has no ADD COLUMN IF NOT EXISTS), and move receipts
        marked unpublished by a ``published_at`` of NULL into the outbox table (see
        :class:`SQLiteStore`); ``published_at`` keeps the values it had. Markers of a
        version that did not keep ``settled_at`` start it at their last change
        (``deleted_at``; see :func:`_settle_old_markers`). A ``pruned`` table of one bound
        for the whole store goes: the bound holds only for the partitions its pruning's
        read-complete time covered, which it did not say (rule 7 of
        :mod:`~stream_expiry.sinks._logic`); the next pruning keeps a bound per partition
        again, and until then a message re-read gets a second receipt, as before the rule,
        rather than a first reading none."""
        p = self.prefix
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for table, column, kind in _ADDED:
                name = f"{p}{table}"
                async with conn.execute(f"PRAGMA table_info({name})") as cur:
                    have = {r[1] for r in await cur.fetchall()}
                if have and column not in have:
                    await conn.execute(f"ALTER TABLE {name} ADD COLUMN {column} {kind}")
                    if column == "settled_at":
                        await conn.execute(_settle_old_markers(name))
            async with conn.execute(f"PRAGMA table_info({p}pruned)") as cur:
                if "id" in {r[1] for r in await cur.fetchall()}:
                    await conn.execute(f"DROP TABLE {p}pruned")
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?"
            async with conn.execute(sql, (f"{p}receipts_unpublished",)) as cur:
                before_outbox = await cur.fetchone() is not None
            if before_outbox:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {p}receipts_outbox (seq INTEGER PRIMARY KEY)"
                )
                await conn.execute(
                    f"INSERT OR IGNORE INTO {p}receipts_outbox "
                    f"SELECT seq FROM {p}receipts WHERE published_at IS NULL"
                )
                await conn.execute(f"DROP INDEX {p}receipts_unpublished")
                # Its trigger let published_at change; the schema's forbids every update.
                await conn.execute(f"DROP TRIGGER IF EXISTS {p}receipts_no_update")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")

    async def close(self) -> None:
        """Close the connection, also when the caller is being cancelled (a sink's task
        group torn down): cancelled half-way, the close was left queued on aiosqlite's
        thread, which then answered an event loop already closed (a RuntimeError in that
        thread, seen as a failure of whichever test ran next)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with anyio.CancelScope(shield=True):
                await conn.close()

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError(f"the SQLite store {self.name!r} is not open; call open() first")
        return self._conn

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[StoreTransaction]:
        async with self._lock, self._tx_unlocked() as tx:
            yield tx

    @contextlib.asynccontextmanager
    async def _tx_unlocked(self) -> AsyncIterator[StoreTransaction]:
        conn = self._connection()
        try:
            await conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot begin a transaction on {self.path}: {exc}") from exc
        try:
            yield _SQLiteTx(conn, self.prefix)
        except BaseException as exc:
            # Shielded: a cancelled sink must still leave the connection outside a transaction.
            with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"SQLite store {self.name!r} failed: {exc}") from exc
            raise
        try:
            await conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise StoreError(f"SQLite store {self.name!r} could not commit: {exc}") from exc
        self._unflushed = True

    async def idle(self) -> None:
        """Empty the write-ahead log once the sink is idle: the log keeps the pages a
        deletion changed, the deleted data with them, until a checkpoint and until the log
        is written over, which an idle store never does (a trial found the payload of
        every row it had deleted still in ``-wal``). ``TRUNCATE`` copies the pages back and
        cuts the file to zero bytes."""
        if not self._unflushed or self._conn is None:
            return
        async with self._lock:
            try:
                await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.name!r} could not checkpoint: {exc}") from exc
        self._unflushed = False

    def transaction(self) -> contextlib.AbstractAsyncContextManager[StoreTransaction]:
        return self._tx()

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            async with self._lock, self._connection().execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.name!r} failed: {exc}") from exc

    async def pending_receipts(self, limit: int = 1000) -> list[Receipt]:
        p = self.prefix
        sql = (
            f"SELECT {_RECEIPT_COLS} FROM {p}receipts_outbox JOIN {p}receipts USING (seq) "
            "ORDER BY seq LIMIT ?"
        )
        return [_receipt(r) for r in await self._fetch(sql, (limit,))]

    async def get(self, identity: Identity) -> Row | None:
        sql = f"SELECT {_ROW_COLS} FROM {self.prefix}records WHERE {_KEY_MATCH}"
        rows = await self._fetch(sql, identity.parts())
        return _row(rows[0]) if rows else None

    async def held_lives(self, identity: Identity) -> list[Row]:
        sql = (
            f"SELECT {_ROW_COLS} FROM {self.prefix}held_lives WHERE {_KEY_MATCH} "
            "ORDER BY created_at"
        )
        return [_row(r) for r in await self._fetch(sql, identity.parts())]

    async def marker(self, identity: Identity) -> Marker | None:
        sql = f"SELECT {_MARKER_COLS} FROM {self.prefix}deletions WHERE {_KEY_MATCH}"
        rows = await self._fetch(sql, identity.parts())
        return _marker(rows[0]) if rows else None

    async def receipts(self) -> list[Receipt]:
        sql = f"SELECT {_RECEIPT_COLS} FROM {self.prefix}receipts ORDER BY seq"
        return [_receipt(r) for r in await self._fetch(sql)]

    async def count(self) -> int:
        rows = await self._fetch(f"SELECT count(*) FROM {self.prefix}records")
        return int(rows[0][0])

    async def count_markers(self) -> int:
        rows = await self._fetch(f"SELECT count(*) FROM {self.prefix}deletions")
        return int(rows[0][0])

    async def is_empty(self) -> bool:
        p = self.prefix
        rows = await self._fetch(
            f"SELECT EXISTS (SELECT 1 FROM {p}records) OR EXISTS (SELECT 1 FROM {p}deletions) "
            f"OR EXISTS (SELECT 1 FROM {p}receipts)"
        )
        return not rows[0][0]

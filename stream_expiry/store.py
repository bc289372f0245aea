"""The durable expiry index: every record's state and the input offsets, in SQLite.

Why SQLite and not memory: retention is months or years and tens of millions of records can
be pending; the engine keeps only the next horizon in its wheel, and everything else lives
here, indexed by ``(slot, expires_at)`` so that each horizon slice is one range scan
(quix-streams' ``(expires_at, key)`` index).

The order of writes that makes a crash harmless (../shared/DESIGN.md): a batch's states and
the next input offsets of its partitions are written in ONE transaction, after the batch's
outputs were acknowledged by Kafka and before its offsets are committed to Kafka. On start
the consumer is positioned from the offsets stored here, not from Kafka's: what is in the
index and where reading resumes can never disagree. WAL mode lets readers (``replay``,
``status``) look while the service writes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import aiosqlite
import anyio

from stream_expiry.errors import StoreError
from stream_expiry.model import Stamp, decode_key

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from types import TracebackType

__all__ = ["Index", "Slot"]

Slot = tuple[str, int]  # (input topic, partition)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key         TEXT PRIMARY KEY,
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    created_at  INTEGER,
    expires_at  INTEGER,
    ttl_ms      INTEGER,
    ttl_source  TEXT,
    deleted_at  INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_due ON records (topic, partition, expires_at)
    WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('generation', 0);
CREATE TABLE IF NOT EXISTS offsets (
    topic      TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    next       INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
"""

_COLUMNS = "key, created_at, expires_at, ttl_ms, ttl_source, deleted_at"
_CHUNK = 500  # well under SQLite's variable limit


def _row_to_stamp(row: Sequence[object]) -> Stamp:
    key, created_at, expires_at, ttl_ms, ttl_source, deleted_at = row
    return Stamp(
        decode_key(str(key)),
        created_at,  # type: ignore[arg-type]
        expires_at,  # type: ignore[arg-type]
        ttl_ms,  # type: ignore[arg-type]
        ttl_source,  # type: ignore[arg-type]
        deleted_at,  # type: ignore[arg-type]
    )


class Index:
    """One SQLite file in the state directory; open with ``async with Index.open(dir)``."""

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection, path: str) -> None:
        self._db = db
        # Reads go through a second connection (its own thread): with WAL they see every
        # committed write and never queue behind a long write transaction of the first.
        self._reader = reader
        self.path = path
        self._write_lock = anyio.Lock()  # one transaction at a time on the writing connection

    @classmethod
    async def open(cls, state_dir: str) -> Index:
        try:
            os.makedirs(state_dir, exist_ok=True)
            path = os.path.join(state_dir, "index.sqlite")
            db = await aiosqlite.connect(path, timeout=30.0)  # replay may write beside us
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoint
            # Checkpoint every ~40 MB of WAL instead of 4 MB: marking fired records deleted
            # (small scattered writes) spent most of its time in checkpoints.
            await db.execute("PRAGMA wal_autocheckpoint=10000")
            await db.execute("PRAGMA cache_size=-16000")  # 16 MB page cache, memory stays flat
            await db.executescript(_SCHEMA)
            await db.commit()
            reader = await aiosqlite.connect(path, timeout=30.0)
            await reader.execute("PRAGMA query_only=1")
            await reader.execute("PRAGMA cache_size=-16000")
        except (OSError, aiosqlite.Error) as exc:
            raise StoreError(f"cannot open the state index in {state_dir!r}: {exc}") from exc
        return cls(db, reader, path)

    async def close(self) -> None:
        await self._reader.close()
        await self._db.close()

    async def __aenter__(self) -> Index:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- reads ----------------------------------------------------------------------------

    async def get_many(self, keys: Iterable[str]) -> dict[str, Stamp]:
        """The stored states of ``keys`` (missing keys are absent from the result)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Stamp] = {}
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            async with self._reader.execute(
                f"SELECT {_COLUMNS} FROM records WHERE key IN ({marks})", chunk
            ) as cur:
                for row in await cur.fetchall():
                    found[str(row[0])] = _row_to_stamp(row)
        return found

    async def offsets(self) -> dict[Slot, int]:
        """The next input offset to read, per (topic, partition), as last committed here."""
        async with self._reader.execute("SELECT topic, partition, next FROM offsets") as cur:
            return {(str(t), int(p)): int(n) for t, p, n in await cur.fetchall()}

    async def pending(
        self, slots: Iterable[Slot], *, before: int, since: int | None = None
    ) -> list[tuple[Stamp, Slot]]:
        """Live records of ``slots`` with ``since <= expires_at < before``, in expiry order."""
        out: list[tuple[Stamp, Slot]] = []
        lower = -(2**62) if since is None else since
        for topic, partition in slots:
            async with self._reader.execute(
                f"SELECT {_COLUMNS} FROM records WHERE topic = ? AND partition = ? "
                "AND deleted_at IS NULL AND expires_at IS NOT NULL "
                "AND expires_at >= ? AND expires_at < ? ORDER BY expires_at",
                (topic, partition, lower, before),
            ) as cur:
                async for row in cur:
                    out.append((_row_to_stamp(row), (topic, partition)))
        return out

    async def generation(self) -> int:
        """Bumped by every write from outside the service (an applied ``replay``): when it
        changes, the service reloads its timers from the index."""
        async with self._reader.execute("SELECT value FROM meta WHERE name = 'generation'") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def counts(self) -> dict[str, int]:
        """Records by state, for progress lines and ``status``."""
        async with self._reader.execute(
            "SELECT "
            "SUM(deleted_at IS NULL AND expires_at IS NOT NULL), "
            "SUM(deleted_at IS NULL AND expires_at IS NULL), "
            "SUM(deleted_at IS NOT NULL) FROM records"
        ) as cur:
            row = await cur.fetchone()
        pending, never, deleted = row if row else (0, 0, 0)
        return {
            "pending": int(pending or 0),
            "never": int(never or 0),
            "deleted": int(deleted or 0),
        }

    # -- writes ---------------------------------------------------------------------------

    async def write(
        self,
        states: Iterable[tuple[Stamp, Slot]],
        offsets: Mapping[Slot, int] | None = None,
        *,
        bump_generation: bool = False,
    ) -> None:
        """Upsert ``states`` and advance ``offsets`` in one transaction (all or nothing).

        ``bump_generation`` tells a running service that the states were changed behind its
        back (by ``replay``), so that it reloads its timers.
        """
        rows = [
            (
                s.identity.key,
                slot[0],
                slot[1],
                s.created_at,
                s.expires_at,
                s.ttl_ms,
                s.ttl_source,
                s.deleted_at,
            )
            for s, slot in states
        ]
        async with self._write_lock:
            await self._transaction(rows, offsets, bump_generation)

    async def _transaction(
        self,
        rows: Sequence[tuple[object, ...]],
        offsets: Mapping[Slot, int] | None,
        bump_generation: bool,
    ) -> None:
        try:
            await self._db.execute("BEGIN")
            if rows:
                await self._db.executemany(
                    "INSERT INTO records (key, topic, partition, created_at, expires_at, ttl_ms, "
                    "ttl_source, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET topic = excluded.topic, "
                    "partition = excluded.partition, created_at = excluded.created_at, "
                    "expires_at = excluded.expires_at, ttl_ms = excluded.ttl_ms, "
                    "ttl_source = excluded.ttl_source, deleted_at = excluded.deleted_at",
                    rows,
                )
            if offsets:
                await self._db.executemany(
                    "INSERT INTO offsets (topic, partition, next) VALUES (?, ?, ?) "
                    "ON CONFLICT(topic, partition) DO UPDATE SET next = "
                    "MAX(offsets.next, excluded.next)",
                    [(t, p, n) for (t, p), n in offsets.items()],
                )
            if bump_generation:
                await self._db.execute(
                    "UPDATE meta SET value = value + 1 WHERE name = 'generation'"
                )
            await self._db.commit()
        except aiosqlite.Error as exc:
            await self._db.rollback()
            raise StoreError(f"cannot write to the state index {self.path}: {exc}") from exc

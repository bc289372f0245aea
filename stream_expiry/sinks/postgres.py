"""A downstream store in PostgreSQL (asyncpg).

Why it is shaped like this:

* Each batch is one transaction of a fixed number of round trips, whatever its size: each
  statement's rows travel as ONE ``jsonb`` parameter (an array of arrays, written by
  orjson) and are read with ``jsonb_array_elements``, for the lookup (``FOR UPDATE``) and
  for every write. A lock holds only rows that exist: two sink instances never apply one
  record at once because a partition moves to another instance only once the transaction
  in flight has ended (the sink's rebalance listener, ``framework._HandOver``). Measured
  against a ``text[]``/``bigint[]`` parameter per column (``unnest``), the server's work is the same
  and the sink's falls from 2.85 to 0.25 us a receipt: asyncpg encodes an array element by
  element, with an ``isinstance`` check against an ABC each. Values are always
  parameters; the only text put into SQL is the schema name and the table prefix, which
  :func:`~stream_expiry.sinks.store.check_identifier` limits to letters, digits and
  ``_``, and which are quoted as identifiers besides.
* The key columns and ``receipt_id`` are ``COLLATE "C"``: every index probe and insert
  compares them, and under a database locale (even ``C.UTF-8``, which PostgreSQL 15 does
  not treat as ``C``) each comparison goes through ``strcoll``; measured, writing stamps
  ran at half the rate. Equality is unchanged, and the sweep sorts by bytes anyway.
  Tables created before keep their collation (no rewrite is attempted).
* Times are ``bigint`` epoch milliseconds, exactly as in the SQLite store, so one test suite
  and one set of queries serve both.
* PostgreSQL ``text`` cannot hold U+0000, and an index row no more than 2,704 bytes.
  :meth:`PostgresStore.holds` says which identities these rule out (a NUL, or more than
  :data:`MAX_KEY_BYTES` of UTF-8 in all), and the sink counts such messages
  (``metrics["unrepresentable_total"]``) instead of failing the batch: a record that cannot
  be stored here cannot need deleting here either.
* Receipts are append-only, enforced by triggers on ``UPDATE``, ``DELETE`` and ``TRUNCATE``: a row is
  written once and never rewritten. Those not yet published are listed (by ``seq``) in
  the ``receipts_outbox`` table, written in the same statement as the receipts; marking
  them published deletes their entries there. Earlier versions set a ``published_at``
  column instead: an update that wrote every receipt twice, with new entries in both of
  its indexes and a dead row for the vacuum (measured on 100k receipts: 11.5 us of the
  server's CPU per receipt, written and marked, against 7.6 us with the outbox table).
  Such a store is brought over when it opens: its unpublished receipts go into the
  outbox and the partial index that listed them is dropped; ``published_at`` keeps the
  values it had.
* A batch may be split by record into ``parallel`` transactions at once, each on its own
  connection (:meth:`Store.apply`): no two touch one row, so none waits for another's
  locks, and the server executes one while the sink plans another. Measured through
  Kafka on 500k records (bench_sinks ``--parallel 1,2,1,2``): 16.7k and 15.7k records/s
  end to end with one transaction per batch, 19.3k and 18.4k with two.
* Rows and markers the transaction's own lookups found missing are written with a plain
  ``INSERT``, the others with ``INSERT ... ON CONFLICT DO UPDATE``, whose speculative
  insertion cost the server a third more a new row (:class:`_PostgresTx`; a row another
  transaction inserted in between makes the batch apply again, with upserts).
* asyncpg is imported when the store opens, so the package works without the
  ``postgres`` extra until a PostgreSQL store is actually used.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio
import orjson

from stream_expiry.errors import ConfigurationError, StoreError
from stream_expiry.model import Identity
from stream_expiry.sinks._logic import NEVER_CREATED, UNKNOWN_PREVIOUS, Plan, Reach, Slot, Source
from stream_expiry.sinks._messages import (
    Marker,
    Receipt,
    Row,
    decode_pending,
    encode_pending,
)
from stream_expiry.sinks.dsn import (
    UnknownKey,
    UnreadableFile,
    as_uri,
    check_files,
    hide_secrets,
    is_local,
    meant_key,
    query_keys,
    redact,
)
from stream_expiry.sinks.store import (
    PrunePage,
    Store,
    StoreTransaction,
    StoreUnavailableError,
    _new_receipt_id,
    check_identifier,
)

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Iterable,
        Iterator,
        Mapping,
        Sequence,
    )

    import asyncpg

    from stream_expiry.sinks._messages import Change
    from stream_expiry.sinks.store import PrunePosition, SweepPage, SweepPosition

__all__ = ["DEFAULT_DSN", "DEFAULT_PARALLEL", "PostgresStore"]

DEFAULT_DSN: Final = "postgresql://127.0.0.1:5432/test"
# Transactions per batch, at once (Store.apply): measured with bench_sinks, see
# docs/BENCHMARKS.md.
DEFAULT_PARALLEL: Final = 2
MAX_KEY_BYTES: Final = 2600
"""The most UTF-8 bytes an identity's five parts may total here. A B-tree index row holds
at most 2,704 bytes (an 8 KiB page's third), headers and padding included, and the primary
keys of ``records`` and ``deletions`` are the identity: a larger one (ids of 512 characters,
which events may carry, in a 3- or 4-byte script) failed every batch it was in, for good
(program_limit_exceeded), and stopped the sink at each start. PostgreSQL compresses some
such rows, depending on their content: the rule is on the bytes, so it does not depend on
what a producer wrote."""
_KEY: Final = "org, bot, env, category, record_id"
# Ties in the sweep's order are broken by the identity, byte-wise, as Python orders strings.
_BY_KEY: Final = ", ".join(f'{k} COLLATE "C"' for k in _KEY.split(", "))


def _from_json(*types: str, names: Sequence[str] = ()) -> str:
    """``SELECT`` the columns of a batch sent as one jsonb array of arrays (``$1``): the
    i-th element of each row, cast to ``types[i]``, named ``names[i]`` where given."""
    cols = []
    for i, kind in enumerate(types):
        col = f"k->>{i}" if kind == "text" else f"(k->>{i})::{kind}"
        cols.append(f"{col} AS {names[i]}" if i < len(names) else col)
    return f"SELECT {', '.join(cols)} FROM jsonb_array_elements($1::jsonb) AS k"


def _json(rows: Iterable[Sequence[Any]]) -> str:
    """A batch's rows as the one jsonb parameter of :func:`_from_json`."""
    return orjson.dumps(list(rows)).decode("utf-8")


_KEY_NAMES: Final = tuple(_KEY.split(", "))
_KEY_TYPES: Final = ("text",) * 5
# The batch's identities, as a table to join with USING (the key's five columns).
_KEYS: Final = f"({_from_json(*_KEY_TYPES, names=_KEY_NAMES)})"
_ROW_COLS: Final = (
    f"{_KEY}, created_at, expires_at, ttl_seconds, ttl_source, data, updated_at, "
    "src_partition, src_offset, previous_deleted_at"
)
# The same columns with NULL for data: a batch without stamps does not read payloads.
_ROW_COLS_NO_DATA: Final = _ROW_COLS.replace(" data,", " NULL::text,")
# What take() returns of a deleted row: the row's columns but its data.
_TAKEN_COLS: Final = ", ".join(
    f"r.{c}" if c != "data" else "NULL::text" for c in _ROW_COLS.split(", ")
)
_MARKER_COLS: Final = (
    f"{_KEY}, deleted_before, last_life, deleted_at, pending, pending_since, settled_at, "
    "ttl_before, ttl_floor"
)
_ROWS_FROM_JSON: Final = _from_json(
    *_KEY_TYPES,
    "bigint",
    "bigint",
    "bigint",
    "text",
    "text",
    "bigint",
    "integer",
    "bigint",
    "bigint",
)
_MARKERS_FROM_JSON: Final = _from_json(
    *_KEY_TYPES, "bigint", "bigint", "bigint", "text", "bigint", "bigint", "bigint", "bigint"
)
_RECEIPTS_FROM_JSON: Final = _from_json(
    "text", "text", *_KEY_TYPES, "text", "integer", "bigint", "bigint", "bigint", "text",
    "bigint", "bigint", "text", "text", "text", "bigint",
)  # fmt: skip
_RECEIPT_COLS: Final = (
    f"receipt_id, store, {_KEY}, reason, rows_deleted, created_at, expires_at, ttl_seconds, "
    "ttl_source, emitted_at, deleted_at, request, request_event_id, late_cause, requested_at"
)
# Every statement planned for the tables as they are now. asyncpg prepares each statement,
# and after five runs PostgreSQL may keep a generic plan for good; made while the tables
# were empty, that plan joins a batch's keys by hashing a full scan of the table, and kept
# as the table grows it cost 130 us of the server's CPU per record at 300k rows (batches
# of 1,000), against 11.5 us for the index lookups a fresh plan chooses.
_SESSION_SETTINGS: Final = {"plan_cache_mode": "force_custom_plan"}
_HOW_TO_START: Final = "is the server running and listening there?"


def _lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection is gone or the server does not answer now (it
    stopped, restarts, or a backend was terminated), which waiting may cure; not an error
    about what was asked (a bad schema, a permission refused, a statement cancelled)."""
    import asyncpg

    return (
        isinstance(
            exc,
            OSError  # refused, reset, unreachable
            | TimeoutError  # no answer to a connect
            | asyncpg.PostgresConnectionError  # SQLSTATE class 08, a connection closed mid-way
            | asyncpg.AdminShutdownError  # 57P01: terminated (pg_terminate_backend, a shutdown)
            | asyncpg.CrashShutdownError  # 57P02
            | asyncpg.CannotConnectNowError  # 57P03: starting up or shutting down
            | asyncpg.TooManyConnectionsError,  # 53300: a restarting server's clients pile up
        )
        or (isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc))
        # A pooled connection the server closed mid-way, taken again: "cannot switch to
        # state 15; another operation (2) is in progress" (a backend terminated while a
        # transaction ran; 9 in 20 in a loop of asyncpg alone). Its connection is dropped.
        # Any other internal error of asyncpg stops the sink (status 4).
        or (isinstance(exc, asyncpg.InternalClientError) and "another operation" in str(exc))
    )


def _connect_failure(dsn: str, exc: BaseException) -> StoreError | ConfigurationError:
    """What to do about a failed connection, by what failed: starting the server is the
    advice only when nothing answered on this machine; a server that answered and refused
    said why."""
    import asyncpg

    shown = redact(dsn)
    why = hide_secrets(str(exc), dsn)  # a parser's message may quote a piece of a password
    if isinstance(exc, UnknownKey | UnreadableFile):  # the words say what to do: no forms
        return ConfigurationError(f"the PostgreSQL DSN {shown} cannot be used: {why}")
    setting = _unknown_setting(dsn, exc)
    if setting is not None:
        meant = meant_key(setting)
        return ConfigurationError(
            f"the PostgreSQL DSN {shown} cannot be used: the key {setting!r} is neither one "
            "the PostgreSQL client (asyncpg) takes nor a setting the server knows (it said: "
            f"{why}); "
            + (f"did you mean {meant!r}?" if meant is not None else "correct it or remove it")
        )
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError):
        return ConfigurationError(
            f"the PostgreSQL DSN {shown} cannot be used ({why}); give a libpq URI, "
            "postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE, or key=value pairs, "
            "host=HOST port=PORT dbname=DATABASE user=USER"
        )
    if isinstance(exc, asyncpg.PostgresError):  # the server answered: it refused
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            hint = "create it (createdb), or name another database in the DSN"
        elif isinstance(
            exc, asyncpg.InvalidAuthorizationSpecificationError | asyncpg.InvalidPasswordError
        ):
            hint = "check the user and password in the DSN, and the server's pg_hba.conf"
        else:
            hint = "see its message"
        return StoreError(f"PostgreSQL at {shown} refused the connection: {why}; {hint}")
    hint = _HOW_TO_START if is_local(dsn) else "check the host, port and that the server is up"
    return StoreError(
        f"PostgreSQL is not reachable at {shown}: {hide_secrets(repr(exc), dsn)}; {hint}"
    )


_UNKNOWN_SETTING: Final = re.compile(r'unrecognized configuration parameter "(.*)"')


def _unknown_setting(dsn: str, exc: BaseException) -> str | None:
    """The key of the DSN's query the server refused as a setting it does not know
    (asyncpg passes the keys it does not take on as settings), or None: a setting the sink
    asks for itself (``plan_cache_mode``) is not the user's to correct in the DSN."""
    import asyncpg

    if not isinstance(exc, asyncpg.UndefinedObjectError):
        return None
    found = _UNKNOWN_SETTING.search(str(exc))
    if found is None:
        return None
    # Setting names are not case-sensitive: the server may say one as it folds it.
    keys = {key.lower(): key for key in query_keys(dsn)}
    return keys.get(found.group(1).lower())


_SCHEMA: Final = """
SELECT pg_advisory_xact_lock(hashtext('stream_expiry.sinks.' || {lock_name}));
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {records} (
    org text COLLATE "C" NOT NULL, bot text COLLATE "C" NOT NULL,
    env text COLLATE "C" NOT NULL, category text COLLATE "C" NOT NULL,
    record_id text COLLATE "C" NOT NULL,
    created_at bigint, expires_at bigint, ttl_seconds bigint, ttl_source text,
    data text, updated_at bigint NOT NULL, src_partition integer, src_offset bigint,
    previous_deleted_at bigint DEFAULT {unknown_previous},
    PRIMARY KEY (org, bot, env, category, record_id)
);
DO $previous$
BEGIN
    -- Where a row's life began: unknown in the rows written before (the default, which
    -- no ttl tombstone's window takes in; see _logic.UNKNOWN_PREVIOUS). Looked up first,
    -- as below: an ALTER TABLE locks the table even when it adds nothing.
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{records}'::regclass
                   AND attname = 'previous_deleted_at' AND NOT attisdropped) THEN
        ALTER TABLE {records} ADD COLUMN previous_deleted_at bigint
            DEFAULT {unknown_previous};
    END IF;
END
$previous$;
CREATE INDEX IF NOT EXISTS {idx_expiry} ON {records} (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {held_lives} (
    org text COLLATE "C" NOT NULL, bot text COLLATE "C" NOT NULL,
    env text COLLATE "C" NOT NULL, category text COLLATE "C" NOT NULL,
    record_id text COLLATE "C" NOT NULL,
    created_at bigint NOT NULL, expires_at bigint, ttl_seconds bigint, ttl_source text,
    data text, updated_at bigint NOT NULL, src_partition integer, src_offset bigint,
    previous_deleted_at bigint DEFAULT {unknown_previous},
    PRIMARY KEY (org, bot, env, category, record_id, created_at)
);
CREATE TABLE IF NOT EXISTS {deletions} (
    org text COLLATE "C" NOT NULL, bot text COLLATE "C" NOT NULL,
    env text COLLATE "C" NOT NULL, category text COLLATE "C" NOT NULL,
    record_id text COLLATE "C" NOT NULL,
    deleted_before bigint NOT NULL, last_life bigint, deleted_at bigint NOT NULL,
    pending text, pending_since bigint, settled_at bigint,
    ttl_before bigint, ttl_floor bigint,
    PRIMARY KEY (org, bot, env, category, record_id)
);
ALTER TABLE {deletions} ADD COLUMN IF NOT EXISTS pending text,
    ADD COLUMN IF NOT EXISTS pending_since bigint;
CREATE INDEX IF NOT EXISTS {idx_pending} ON {deletions} (pending_since)
    WHERE pending_since IS NOT NULL;
DO $settle$
BEGIN
    -- Markers of a version that did not keep settled_at start it at their last change
    -- (see sqlite.py's _settle_old_markers), once: as the column is added.
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{deletions}'::regclass
                   AND attname = 'settled_at' AND NOT attisdropped) THEN
        ALTER TABLE {deletions} ADD COLUMN settled_at bigint;
        UPDATE {deletions} SET settled_at = deleted_at;
    END IF;
    -- A marker's ttl window (NULL: none, as in the markers written before).
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{deletions}'::regclass
                   AND attname = 'ttl_floor' AND NOT attisdropped) THEN
        ALTER TABLE {deletions} ADD COLUMN IF NOT EXISTS ttl_before bigint,
            ADD COLUMN IF NOT EXISTS ttl_floor bigint;
    END IF;
END
$settle$;
CREATE TABLE IF NOT EXISTS {receipts} (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    receipt_id text COLLATE "C" NOT NULL UNIQUE, store text NOT NULL,
    org text NOT NULL, bot text NOT NULL, env text NOT NULL, category text NOT NULL,
    record_id text NOT NULL,
    reason text NOT NULL, rows_deleted integer NOT NULL,
    created_at bigint, expires_at bigint, ttl_seconds bigint, ttl_source text,
    emitted_at bigint, deleted_at bigint NOT NULL,
    request text, request_event_id text, late_cause text, requested_at bigint
);
DO $request$
BEGIN
    -- The erasure request a receipt names (NULL in the receipts written before). Looked
    -- up first: an ALTER TABLE locks the table, readers and all, even when it adds nothing.
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{receipts}'::regclass
                   AND attname = 'request_event_id' AND NOT attisdropped) THEN
        ALTER TABLE {receipts} ADD COLUMN IF NOT EXISTS request text,
            ADD COLUMN IF NOT EXISTS request_event_id text;
    END IF;
    -- Why the deletion was late (NULL: on time, and in the receipts written before).
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{receipts}'::regclass
                   AND attname = 'late_cause' AND NOT attisdropped) THEN
        ALTER TABLE {receipts} ADD COLUMN IF NOT EXISTS late_cause text;
    END IF;
    -- When the erasure a receipt carried out was requested (NULL: not an erasure, an
    -- older version's tombstone, and the receipts written before).
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{receipts}'::regclass
                   AND attname = 'requested_at' AND NOT attisdropped) THEN
        ALTER TABLE {receipts} ADD COLUMN IF NOT EXISTS requested_at bigint;
    END IF;
END
$request$;
CREATE TABLE IF NOT EXISTS {outbox} (seq bigint PRIMARY KEY);
DO $pruned$
BEGIN
    -- One bound for the whole store (before it was kept per topic and partition): it
    -- goes, and the next pruning keeps a bound per partition (see sqlite.py's _upgrade).
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('{pruned}')
               AND attname = 'id' AND NOT attisdropped) THEN
        DROP TABLE {pruned};
    END IF;
END
$pruned$;
CREATE TABLE IF NOT EXISTS {pruned} (
    src_topic text COLLATE "C" NOT NULL, src_partition integer NOT NULL,
    settled_before bigint NOT NULL,
    PRIMARY KEY (src_topic, src_partition)
);
DO $migrate$
BEGIN
    -- A store made before the outbox table: its unpublished receipts move into it.
    IF to_regclass('{s}.{idx_unpublished}') IS NOT NULL THEN
        INSERT INTO {outbox} SELECT seq FROM {receipts} WHERE published_at IS NULL
            ON CONFLICT DO NOTHING;
        DROP INDEX {s}.{idx_unpublished};
    END IF;
END
$migrate$;
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'receipts are append-only';
END
$fn$;
CREATE OR REPLACE TRIGGER {trigger}
    BEFORE UPDATE OR DELETE ON {receipts}
    FOR EACH ROW EXECUTE FUNCTION {fn}();
CREATE OR REPLACE TRIGGER {trigger_truncate}
    BEFORE TRUNCATE ON {receipts}
    FOR EACH STATEMENT EXECUTE FUNCTION {fn}();
"""


def prune_sql(n: _Names, *, after: bool) -> str:
    """The statement that looks at a page of markers and forgets those
    :func:`~stream_expiry.sinks._logic.prunable` lets go ($1: the settling bound, $2: the
    page size, $3 to $7: the identity the page starts after, unless it is the first);
    it returns how many went, how many it looked at, and the page's last identity.

    The page is the next ``$2`` rows in the primary key's order, read from the key (the
    ``LIMIT`` keeps it there: a range of the key alone, PostgreSQL judged by its first
    column only and read the whole table), and chosen once (``MATERIALIZED``): as a
    subquery of the ``DELETE`` a page was scanned again for each row, found the rows the
    statement had deleted locked, skipped them, and took the next ones (a page of 1
    deleted 2). Its prunable markers are then found by their place in the table
    (``ctid``), not by a join on the key (PostgreSQL, expecting few, joined them by
    scanning the whole table), and locked, passing over those another transaction holds
    (a batch about to change them, a second sink instance pruning): none waits for the
    other. Locked, each is checked again as it is then: one that got a pending deletion
    meanwhile, or moved, stays, and is looked at again on the next round."""
    start = f"WHERE ({_KEY}) > ($3, $4, $5, $6, $7) " if after else ""
    d = n.deletions
    return (
        f"WITH page AS MATERIALIZED (SELECT ctid AS at, {_KEY}, "
        f"pending IS NULL AND settled_at <= $1 AS gone FROM {d} {start}"
        f"ORDER BY {_KEY} LIMIT $2), "
        f"doomed AS MATERIALIZED (SELECT ctid FROM {d} "
        "WHERE ctid = ANY(ARRAY(SELECT at FROM page WHERE gone)) "
        "AND pending IS NULL AND settled_at <= $1 FOR UPDATE SKIP LOCKED), "
        f"forgotten AS (DELETE FROM {d} WHERE ctid = ANY(ARRAY(SELECT ctid FROM doomed)) "
        "RETURNING 1) "
        "SELECT (SELECT count(*) FROM forgotten), (SELECT count(*) FROM page), l.* "
        f"FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT {_KEY} FROM page "
        "ORDER BY org DESC, bot DESC, env DESC, category DESC, record_id DESC LIMIT 1) "
        "AS l ON true"
    )


def _keys(idents: Iterable[Identity]) -> str:
    return _json(i.parts() for i in idents)


def _row(r: Any, ident: Identity | None = None) -> Row:
    return Row(ident or Identity(*r[:5]), *r[5:14])


def _rows_params(rows: Iterable[Row]) -> Iterator[tuple[Any, ...]]:
    """Each row's parameters in ``_ROW_COLS``' order, for records and held_lives alike: a
    generator over the batch (no call a row: the records' upsert is on every batch's path),
    which :func:`_json` sends as one parameter."""
    return (
        (*r.identity.parts(), r.created_at, r.expires_at, r.ttl_seconds, r.ttl_source, r.data,
         r.updated_at, r.src_partition, r.src_offset, r.previous_deleted_at)
        for r in rows
    )  # fmt: skip


def _marker(r: Any, ident: Identity | None = None) -> Marker:
    return Marker(
        ident or Identity(*r[:5]), r[5], r[6], r[7], decode_pending(r[8]), r[10], r[11], r[12]
    )


def _receipt(r: Any) -> Receipt:
    return Receipt(r[0], r[1], Identity(*r[2:7]), *r[7:])


@dataclass(frozen=True, slots=True)
class _Names:
    """Quoted, schema-qualified names; built only from checked identifiers."""

    schema: str
    prefix: str

    def _q(self, name: str) -> str:
        return f'"{self.schema}"."{self.prefix}{name}"'

    @property
    def records(self) -> str:
        return self._q("records")

    @property
    def held_lives(self) -> str:
        return self._q("held_lives")

    @property
    def deletions(self) -> str:
        return self._q("deletions")

    @property
    def receipts(self) -> str:
        return self._q("receipts")

    @property
    def outbox(self) -> str:
        return self._q("receipts_outbox")

    @property
    def pruned(self) -> str:
        return self._q("pruned")

    def ddl(self) -> dict[str, str]:
        p = self.prefix
        return {
            "lock_name": f"'{self.schema}.{p}'",  # checked identifiers hold no quote
            "s": f'"{self.schema}"',
            "records": self.records,
            "held_lives": self.held_lives,
            "deletions": self.deletions,
            "receipts": self.receipts,
            "outbox": self.outbox,
            "pruned": self.pruned,
            "idx_expiry": f'"{p}records_by_expiry"',
            "idx_unpublished": f'"{p}receipts_unpublished"',
            "idx_pending": f'"{p}deletions_pending"',
            "fn": self._q("receipts_append_only"),
            "trigger": f'"{p}receipts_append_only"',
            "trigger_truncate": f'"{p}receipts_no_truncate"',
            "unknown_previous": str(UNKNOWN_PREVIOUS),
        }


_INSERT_ROWS: Final = f"INSERT INTO {{t}} ({_ROW_COLS}) {_ROWS_FROM_JSON}"
# What an upsert of a row sets, but the key and created_at: records add created_at; in
# held_lives it is part of the key (one row per life).
_SET_ROW_BUT_CREATED: Final = (
    "expires_at = excluded.expires_at, ttl_seconds = excluded.ttl_seconds, "
    "ttl_source = excluded.ttl_source, data = excluded.data, "
    "updated_at = excluded.updated_at, src_partition = excluded.src_partition, "
    "src_offset = excluded.src_offset, previous_deleted_at = excluded.previous_deleted_at"
)
_UPSERT_ROWS: Final = (
    f"{_INSERT_ROWS} ON CONFLICT ({_KEY}) DO UPDATE SET created_at = excluded.created_at, "
    f"{_SET_ROW_BUT_CREATED}"
)
_INSERT_MARKERS: Final = f"INSERT INTO {{t}} ({_MARKER_COLS}) {_MARKERS_FROM_JSON}"
_UPSERT_MARKERS: Final = (
    f"{_INSERT_MARKERS} ON CONFLICT ({_KEY}) DO UPDATE SET "
    "deleted_before = excluded.deleted_before, last_life = excluded.last_life, "
    "deleted_at = excluded.deleted_at, pending = excluded.pending, "
    "pending_since = excluded.pending_since, settled_at = excluded.settled_at, "
    "ttl_before = excluded.ttl_before, ttl_floor = excluded.ttl_floor"
)


class _Raced(StoreUnavailableError):
    """A plain insert met a row another transaction inserted after this one looked for it
    (see :class:`_PostgresTx`): the batch is applied again, with upserts only."""


# Set while a batch is applied again after a plain insert met another's row (_Raced).
_UPSERTS_ONLY: Final = contextvars.ContextVar("_UPSERTS_ONLY", default=False)

_Result = TypeVar("_Result")


async def _again_if_raced(attempt: Callable[[], Awaitable[_Result]]) -> _Result:
    """Run ``attempt`` (one transaction); if a plain insert of it met a row another
    transaction inserted meanwhile (:class:`_Raced`, nothing committed), run it again with
    upserts only, in this task (a contextvar: not the other lanes')."""
    try:
        return await attempt()
    except _Raced:
        token = _UPSERTS_ONLY.set(True)
        try:
            return await attempt()
        finally:
            _UPSERTS_ONLY.reset(token)


_Written = TypeVar("_Written", Row, Marker)


def _split(items: list[_Written], absent: set[str]) -> tuple[list[_Written], list[_Written]]:
    """``items`` as those whose identity's key is in ``absent`` (inserted plainly) and the
    rest (upserted), each in its order; no second list is built when all fall on one side."""
    if not absent:
        return [], items
    new = [x for x in items if x.identity.key in absent]
    if len(new) == len(items):
        return items, []
    return new, ([x for x in items if x.identity.key not in absent] if new else items)


class _PostgresTx(StoreTransaction):
    """One transaction's statements.

    ``plain``: write the rows and markers this transaction found missing (its own
    lookups said so) with a plain ``INSERT``, not ``INSERT ... ON CONFLICT DO UPDATE``.
    PostgreSQL's upsert inserts speculatively (a probe of the key's index first, then the
    insertion, then its confirmation), which costs a third more of the server's CPU a new
    row: 5.4 against 7.7 us a marker (docs/BENCHMARKS.md, "Round 45"). Nothing locks a
    row that is not there, so another transaction may insert one meanwhile (a second
    instance of the store applying the same record from another topic's partition): the
    insert then fails with a unique violation, raised as :class:`_Raced`, and
    :meth:`PostgresStore._apply_one` applies the batch again with upserts only, as it
    was before (nothing of the failed attempt was committed).
    """

    def __init__(self, conn: asyncpg.Connection, names: _Names, *, plain: bool = True) -> None:
        self._c, self._n = conn, names
        self._plain = plain
        # Keys of the identities whose row (marker) this transaction looked for and did
        # not find: by key, a str, whose hash is C's (Identity.__hash__ is a Python call).
        self._no_row: set[str] = set()
        self._no_marker: set[str] = set()

    async def _markers(
        self,
        asked: Mapping[tuple[str, str, str, str, str], Identity],
        keys: str,
        slots: dict[Identity, Slot],
    ) -> None:
        """Add the markers of the ``asked`` identities (by their parts; ``keys``: the same,
        as :func:`_keys` sends them) to ``slots`` (locked, like the rows)."""
        q = (
            f"SELECT {_MARKER_COLS} FROM {self._n.deletions} AS t JOIN {_KEYS} AS k "
            f"USING ({_KEY}) FOR UPDATE OF t"
        )
        found: set[str] = set()
        for r in await self._c.fetch(q, keys):
            m = _marker(r, asked.get(tuple(r[:5])))
            slots.setdefault(m.identity, Slot()).marker = m
            found.add(m.identity.key)
        if self._plain:
            self._no_marker.update([k for i in asked.values() if (k := i.key) not in found])

    async def load(
        self, identities: Sequence[Identity], *, data: bool = True
    ) -> dict[Identity, Slot]:
        parts = [i.parts() for i in identities]
        keys = _json(parts)
        slots: dict[Identity, Slot] = {}
        q = (
            f"SELECT {_ROW_COLS if data else _ROW_COLS_NO_DATA} FROM {self._n.records} AS t "
            f"JOIN {_KEYS} AS k USING ({_KEY}) FOR UPDATE OF t"
        )
        asked = dict(zip(parts, identities, strict=True))  # reuse them: no key to build again
        got: set[str] = set()
        for r in await self._c.fetch(q, keys):
            row = _row(r, asked.get(tuple(r[:5])))
            slots[row.identity] = Slot(row)
            got.add(row.identity.key)
        if self._plain:
            self._no_row.update([k for i in identities if (k := i.key) not in got])
        await self._markers(asked, keys, slots)
        return slots

    async def take(self, ends: Mapping[Identity, Reach]) -> dict[Identity, Slot]:
        """One ``DELETE ... RETURNING`` instead of a locking read and a delete: the row is
        locked, read and deleted in one pass. The markers are read after it, so a second
        sink instance deleting the same row waits for this one and then sees its marker.
        A tombstone without a window sends NULL for it: the window's test is then NULL,
        and the bound's alone decides (:func:`~stream_expiry.sinks._logic.ended_by`)."""
        identities = list(ends)
        parts = [i.parts() for i in identities]  # once: the statements' keys and the lookup
        bounded = _from_json(
            *_KEY_TYPES, "bigint", "bigint", "bigint", names=(*_KEY_NAMES, "bound", "b", "f")
        )
        created = f"COALESCE(r.created_at, {NEVER_CREATED})"
        q = (
            f"DELETE FROM {self._n.records} AS r USING ({bounded}) AS k "
            "WHERE (r.org, r.bot, r.env, r.category, r.record_id) "
            "= (k.org, k.bot, k.env, k.category, k.record_id) "
            f"AND ({created} < k.bound OR ({created} < k.b "
            f"AND COALESCE(r.previous_deleted_at, {NEVER_CREATED}) < k.f)) "
            f"RETURNING {_TAKEN_COLS}"
        )
        slots: dict[Identity, Slot] = {}
        asked = dict(zip(parts, identities, strict=True))
        bounds = _json(
            [
                (*k, b, None, None) if w is None else (*k, b, *w)
                for k, (b, w) in zip(parts, ends.values(), strict=True)
            ]
        )
        for r in await self._c.fetch(q, bounds):
            row = _row(r, asked.get(tuple(r[:5])))
            slots[row.identity] = Slot(row)
        # The same parameter: the lookup reads the key's five columns of each row, not
        # its bound (one batch's keys written to JSON once, not twice).
        await self._markers(asked, bounds, slots)
        return slots

    async def due(
        self, cutoff_ms: int, limit: int, after: SweepPosition | None = None
    ) -> tuple[list[tuple[int, Identity]], list[Identity]]:
        resume = "" if after is None else f"AND (expires_at, {_BY_KEY}) > ($3, $4, $5, $6, $7, $8) "
        rows = await self._c.fetch(
            f"SELECT expires_at, {_KEY} FROM {self._n.records} WHERE expires_at IS NOT NULL "
            f"AND expires_at <= $1 {resume}ORDER BY expires_at, {_BY_KEY} LIMIT $2",
            cutoff_ms,
            limit,
            *(() if after is None else (after[0], *after[1])),
        )
        late = await self._c.fetch(
            f"SELECT {_KEY} FROM {self._n.deletions} WHERE pending_since IS NOT NULL "
            f"AND pending_since <= $1 ORDER BY pending_since, {_BY_KEY} LIMIT $2",
            cutoff_ms,
            limit,
        )
        return [(r[0], Identity(*r[1:])) for r in rows], [Identity(*r) for r in late]

    async def write(self, p: Plan) -> None:
        c, n = self._c, self._n
        if p.deletes:
            await c.execute(
                f"DELETE FROM {n.records} AS r USING {_KEYS} AS k "
                "WHERE (r.org, r.bot, r.env, r.category, r.record_id) "
                "= (k.org, k.bot, k.env, k.category, k.record_id)",
                _keys(p.deletes),
            )
        if p.upserts:
            await self._write_split(
                p.upserts, self._no_row, n.records, _INSERT_ROWS, _UPSERT_ROWS, _rows_params
            )
        if p.markers:
            await self._write_split(
                p.markers, self._no_marker, n.deletions, _INSERT_MARKERS, _UPSERT_MARKERS,
                lambda markers: ((*m.identity.parts(), m.deleted_before, m.last_life,
                                  m.deleted_at, encode_pending(m.pending), m.pending_since,
                                  m.settled_at, m.ttl_before, m.ttl_floor) for m in markers),
            )  # fmt: skip
        if p.held or p.released:
            await self._write_held(p)
        if p.receipts:
            await c.execute(
                f"WITH r AS (INSERT INTO {n.receipts} ({_RECEIPT_COLS}) {_RECEIPTS_FROM_JSON} "
                f"RETURNING seq) INSERT INTO {n.outbox} SELECT seq FROM r",
                _json(
                    (r.receipt_id, r.store, *r.identity.parts(), r.reason, r.rows_deleted,
                     r.created_at, r.expires_at, r.ttl_seconds, r.ttl_source, r.emitted_at,
                     r.deleted_at, r.request, r.request_event_id, r.late_cause,
                     r.requested_at)
                    for r in p.receipts
                ),
            )  # fmt: skip

    async def _write_held(self, p: Plan) -> None:
        """Keep aside the rows of lives a legal hold keeps, then delete those released
        (rule 8 of :mod:`~stream_expiry.sinks._logic`), each in one statement: rare, so
        apart from :meth:`write`."""
        c, t = self._c, self._n.held_lives
        if p.held:
            await c.execute(
                f"{_INSERT_ROWS.format(t=t)} ON CONFLICT ({_KEY}, created_at) "
                f"DO UPDATE SET {_SET_ROW_BUT_CREATED}",
                _json(_rows_params(p.held)),
            )
        if p.released:
            kept = _from_json(*_KEY_TYPES, "bigint", names=(*_KEY_NAMES, "created_at"))
            await c.execute(
                f"DELETE FROM {t} AS h USING ({kept}) AS k "
                "WHERE (h.org, h.bot, h.env, h.category, h.record_id, h.created_at) "
                "= (k.org, k.bot, k.env, k.category, k.record_id, k.created_at)",
                _json((*i.parts(), created) for i, created in p.released),
            )

    async def _write_split(
        self,
        items: list[_Written],
        absent: set[str],
        table: str,
        insert: str,
        upsert: str,
        columns: Callable[[list[_Written]], Iterable[tuple[Any, ...]]],
    ) -> None:
        """Write ``items`` to ``table``: those this transaction found missing (``absent``)
        with the plain ``insert``, the rest with the ``upsert`` (:class:`_PostgresTx`).
        ``columns``: each item's row of parameters, a generator over a list (no call a
        row)."""
        new, old = _split(items, absent)
        for written, sql, plain in ((new, insert, True), (old, upsert, False)):
            if written:
                rows = _json(columns(written))
                await self._insert(sql.format(t=table), rows, plain=plain)

    async def _insert(self, sql: str, rows: str, *, plain: bool) -> None:
        """Run one of :meth:`write`'s inserts; a plain one that meets a row another
        transaction inserted meanwhile raises :class:`_Raced`."""
        if not plain:
            await self._c.execute(sql, rows)
            return
        import asyncpg

        try:
            await self._c.execute(sql, rows)
        except asyncpg.UniqueViolationError as exc:
            raise _Raced(f"another transaction inserted the same record at once: {exc}") from exc

    async def prune(
        self, settled_before: int, limit: int, after: PrunePosition | None = None
    ) -> PrunePage:
        sql = prune_sql(self._n, after=after is not None)
        r = await self._c.fetchrow(sql, settled_before, limit, *(after or ()))
        assert r is not None  # counts: always one row
        end: PrunePosition = (r[2], r[3], r[4], r[5], r[6])
        return PrunePage(int(r[0]), end if r[1] >= limit else None)

    async def pruned_before(self) -> dict[Source, int]:
        # Read after the batch's markers were loaded (and locked): a marker pruned before
        # that is gone with its bound committed, which this statement's snapshot sees.
        rows = await self._c.fetch(
            f"SELECT src_topic, src_partition, settled_before FROM {self._n.pruned}"
        )
        return {(str(r[0]), int(r[1])): int(r[2]) for r in rows}

    async def note_pruned(self, settled_before: int, sources: Sequence[Source]) -> None:
        t = self._n.pruned
        await self._c.execute(
            f"INSERT INTO {t} AS t (src_topic, src_partition, settled_before) "
            "SELECT topic, part, $3 FROM unnest($1::text[], $2::integer[]) AS s(topic, part) "
            "ON CONFLICT (src_topic, src_partition) "
            "DO UPDATE SET settled_before = GREATEST(t.settled_before, excluded.settled_before)",
            [topic for topic, _ in sources],
            [partition for _, partition in sources],
            settled_before,
        )

    async def mark_published(self, receipt_ids: Sequence[str], now_ms: int) -> None:
        del now_ms  # the receipts are not rewritten: their entries leave the outbox
        n = self._n
        await self._c.execute(
            f"DELETE FROM {n.outbox} AS o USING {n.receipts} AS r WHERE o.seq = r.seq "
            "AND r.receipt_id = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))",
            _json(receipt_ids),
        )


class PostgresStore(Store):
    """Records, deletion markers and receipts in PostgreSQL.

    ``dsn``: a libpq connection URI or key/value string. ``schema``: created if missing. ``table_prefix``:
    prepended to the table names ``records``, ``held_lives``, ``deletions``, ``receipts``,
    ``receipts_outbox`` and ``pruned``.
    ``parallel``: transactions a batch is split into (:meth:`Store.apply`), each on its
    own connection; the pool holds them and one more, for readers.
    """

    def __init__(
        self,
        dsn: str = DEFAULT_DSN,
        *,
        name: str = "postgres",
        schema: str = "public",
        table_prefix: str = "expiry_",
        connect_timeout_s: float = 10.0,
        pool_size: int = 4,
        parallel: int = DEFAULT_PARALLEL,
        new_id: Callable[[], str] = _new_receipt_id,
    ) -> None:
        super().__init__(name, new_id=new_id)
        if parallel < 1:
            raise ConfigurationError(f"parallel transactions must be at least 1, got {parallel}")
        self.parallel = parallel
        self.dsn = dsn
        self.schema = check_identifier(schema, "the schema name")
        self.prefix = check_identifier(table_prefix, "the table prefix") if table_prefix else ""
        self._n = _Names(self.schema, self.prefix)
        self._timeout = connect_timeout_s
        self._pool_size = max(1, pool_size, parallel + 1)
        self._pool: asyncpg.Pool | None = None

    def _failure(self, exc: BaseException, what: str) -> StoreError:
        """The store error for ``exc``: :class:`StoreUnavailableError` (retried) when the
        connection is lost, else :class:`StoreError` (the sink stops with its message)."""
        kind = StoreUnavailableError if _lost_connection(exc) else StoreError
        return kind(f"PostgreSQL store {self.name!r} {what}: {exc}")

    def _server_settings(self) -> dict[str, str]:
        """The session settings, and an ``application_name`` that tells the sink's
        connections apart in ``pg_stat_activity`` (unless the DSN gives one)."""
        settings = dict(_SESSION_SETTINGS)
        try:
            query = parse_qs(urlsplit(as_uri(self.dsn)).query)
        except ValueError:
            query = {}  # the connect says what is wrong with the DSN
        if "application_name" not in query:
            settings["application_name"] = f"stream-expiry sink {self.name}"[:63]
        return settings

    def holds(self, identity: Identity) -> bool:
        i = identity
        if (
            "\x00" in i.org or "\x00" in i.bot or "\x00" in i.env or "\x00" in i.category
            or "\x00" in i.record_id
        ):  # fmt: skip
            return False
        # At most 4 bytes a character: most identities are cleared without encoding them,
        # most by their key's length alone (never shorter than the parts and their four
        # separators: quoting only lengthens a part).
        if 4 * len(i.key) <= MAX_KEY_BYTES:
            return True
        parts = i.parts()
        return 4 * sum(map(len, parts)) <= MAX_KEY_BYTES or (
            sum(len(p.encode()) for p in parts) <= MAX_KEY_BYTES
        )

    def _errors(self) -> tuple[type[BaseException], ...]:
        import asyncpg

        # TimeoutError: a connect that got no answer (asyncpg's own connect timeout).
        return (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
            TimeoutError,
        )

    async def open(self) -> None:
        """Connect a small pool: the sink's transactions and readers (audits, the demo)
        each get their own connection, as asyncpg runs one operation per connection."""
        if self._pool is not None:
            return
        try:
            import asyncpg
        except ImportError:
            raise StoreError(
                "the PostgreSQL store needs asyncpg: pip install 'stream-expiry[postgres]'"
            ) from None
        unreachable: tuple[type[BaseException], ...] = (*self._errors(), TimeoutError, ValueError)
        try:
            # No connection floor (min_size 0): connections are made when a transaction
            # needs one and kept while they work. With a floor, asyncpg reconnects in the
            # background whenever one is lost, and while the server is away it logged a
            # traceback a second ("Failed to restore the pool connection floor").
            uri = as_uri(self.dsn)
            check_files(uri)  # a path's typo is a setting to correct, not an outage
            pool = await asyncpg.create_pool(
                uri,
                min_size=0,
                max_size=self._pool_size,
                timeout=self._timeout,
                server_settings=self._server_settings(),
            )
        except unreachable as exc:
            raise _connect_failure(self.dsn, exc) from exc
        try:  # the first connection: an unreachable server or a refusal is said here
            conn = await pool.acquire()
        except unreachable as exc:
            await pool.close()
            raise _connect_failure(self.dsn, exc) from exc
        script = _SCHEMA.format(**self._n.ddl())
        try:
            async with conn.transaction():
                await conn.execute(script)
        except self._errors() as exc:
            await pool.release(conn)
            await pool.close()
            raise StoreError(f"cannot create the sink schema {self.schema!r}: {exc}") from exc
        except BaseException:
            # Cancelled (a stop while the script waits on a lock another session holds):
            # the connections go at once. Left to the loop's end, the one cut mid-script
            # logged asyncio's "Future exception was never retrieved" at ERROR.
            pool.terminate()
            raise
        await pool.release(conn)
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(*self._errors()):
                await pool.close()

    def _the_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"the PostgreSQL store {self.name!r} is not open; call open() first")
        return self._pool

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[StoreTransaction]:
        errors = self._errors()
        pool = self._the_pool()
        try:
            conn = await pool.acquire()
        except errors as exc:
            raise self._failure(exc, "has no connection") from exc
        lost = False
        try:
            tx = conn.transaction()
            try:
                await tx.start()
            except errors as exc:
                raise self._failure(exc, "cannot begin") from exc
            try:
                yield _PostgresTx(conn, self._n, plain=not _UPSERTS_ONLY.get())
            except BaseException as exc:
                with anyio.CancelScope(shield=True), contextlib.suppress(*errors):
                    await tx.rollback()
                if isinstance(exc, errors):
                    raise self._failure(exc, "failed") from exc
                raise
            try:
                await tx.commit()
            except errors as exc:
                # A lost connection leaves the commit's outcome unknown: the batch is
                # applied again, which changes nothing where it was applied.
                raise self._failure(exc, "could not commit") from exc
        except _Raced:
            raise  # the connection is fine: the insert failed, the server answered
        except StoreUnavailableError:
            lost = True
            raise
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(*errors):
                if lost:
                    # Not given back to the pool as it is: a connection lost mid-way may
                    # fail the next transaction too, in a state asyncpg cannot leave. (One
                    # the server closed is back in the pool already, and says so.)
                    conn.terminate()
                await pool.release(conn)

    def transaction(self) -> contextlib.AbstractAsyncContextManager[StoreTransaction]:
        return self._tx()

    async def _apply_one(
        self, changes: Sequence[Change], *, now_ms: int, published: Sequence[str], living: bool
    ) -> Plan:
        """:meth:`Store.apply`'s transaction, applied again with upserts only if a plain
        insert met a row another transaction wrote meanwhile (:class:`_PostgresTx`)."""
        apply = super()._apply_one
        return await _again_if_raced(
            lambda: apply(changes, now_ms=now_ms, published=published, living=living)
        )

    async def sweep(self, **page: Any) -> SweepPage:
        """:meth:`Store.sweep`, done again with upserts only after a race (as
        :meth:`_apply_one`)."""
        sweep = super().sweep
        return await _again_if_raced(lambda: sweep(**page))

    async def _fetch(self, sql: str, *params: Any) -> list[Any]:
        try:
            return list(await self._the_pool().fetch(sql, *params))
        except self._errors() as exc:
            raise self._failure(exc, "failed") from exc

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def pending_receipts(self, limit: int = 1000) -> list[Receipt]:
        sql = (
            f"SELECT {_RECEIPT_COLS} FROM {self._n.outbox} JOIN {self._n.receipts} "
            "USING (seq) ORDER BY seq LIMIT $1"
        )
        return [_receipt(r) for r in await self._fetch(sql, limit)]

    async def _one(self, cols: str, table: str, identity: Identity) -> Any:
        rows = await self._fetch(
            f"SELECT {cols} FROM {table} WHERE ({_KEY}) = ($1, $2, $3, $4, $5)", *identity.parts()
        )
        return rows[0] if rows else None

    async def get(self, identity: Identity) -> Row | None:
        if not self.holds(identity):
            return None
        r = await self._one(_ROW_COLS, self._n.records, identity)
        return None if r is None else _row(r)

    async def held_lives(self, identity: Identity) -> list[Row]:
        if not self.holds(identity):
            return []
        rows = await self._fetch(
            f"SELECT {_ROW_COLS} FROM {self._n.held_lives} "
            f"WHERE ({_KEY}) = ($1, $2, $3, $4, $5) ORDER BY created_at",
            *identity.parts(),
        )
        return [_row(r) for r in rows]

    async def marker(self, identity: Identity) -> Marker | None:
        if not self.holds(identity):
            return None
        r = await self._one(_MARKER_COLS, self._n.deletions, identity)
        return None if r is None else _marker(r)

    async def receipts(self) -> list[Receipt]:
        sql = f"SELECT {_RECEIPT_COLS} FROM {self._n.receipts} ORDER BY seq"
        return [_receipt(r) for r in await self._fetch(sql)]

    async def count(self) -> int:
        rows = await self._fetch(f"SELECT count(*) FROM {self._n.records}")
        return int(rows[0][0])

    async def count_markers(self) -> int:
        rows = await self._fetch(f"SELECT count(*) FROM {self._n.deletions}")
        return int(rows[0][0])

    async def is_empty(self) -> bool:
        n = self._n
        rows = await self._fetch(
            f"SELECT EXISTS (SELECT 1 FROM {n.records}) OR EXISTS (SELECT 1 FROM {n.deletions}) "
            f"OR EXISTS (SELECT 1 FROM {n.receipts})"
        )
        return not rows[0][0]

    async def drop_schema(self) -> None:
        """Drop the whole schema (tests use one schema each); refuses ``public``."""
        if self.schema == "public":
            raise StoreError("refusing to drop the public schema")
        await self._fetch(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

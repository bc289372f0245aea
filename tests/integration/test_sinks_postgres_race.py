"""The PostgreSQL store's plain inserts meet a row another transaction wrote meanwhile.

The store inserts the rows and markers its own lookup found missing with a plain
``INSERT`` (cheaper for the server than an upsert); nothing locks a row that is not there,
so another transaction (a second instance of the store) may insert the same identity's
row or marker between the lookup and the insert. The batch must then end exactly as if
the other transaction had committed first: applied again, with upserts, not failed.

Each test holds the other transaction open with its row inserted, starts the batch, waits
until the batch's insert waits on that row's lock (``pg_stat_activity``), commits the
other, and compares what the store holds with a second store where the same row was
committed before the same batch ran.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from stream_expiry.sinks._messages import Change, decode_stamped, decode_tombstone
from stream_expiry.sinks.postgres import PostgresStore
from tests.integration.sink_helpers import (
    MINUTE,
    PG_DSN,
    T0,
    ident,
    open_store,
    stamp,
    stamped_msg,
    tombstone_msg,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

X = ident("raced")
OTHER_MARKER = (
    "INSERT INTO {s}.expiry_deletions (org, bot, env, category, record_id, deleted_before, "
    "last_life, deleted_at, settled_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
)
OTHER_ROW = (
    "INSERT INTO {s}.expiry_records (org, bot, env, category, record_id, created_at, "
    "expires_at, ttl_seconds, ttl_source, data, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, 600, 'org', '\"theirs\"', $8)"
)


def _tombstone() -> Change:
    return decode_tombstone(*tombstone_msg(stamp(X)))


def _stamp() -> Change:
    return decode_stamped(*stamped_msg(stamp(X, created_at=T0 + MINUTE), {"text": "ours"}))


async def _state(store: PostgresStore) -> tuple[Any, ...]:
    """What the store holds of X, receipt ids and times left out (they are new each run)."""
    row, marker = await store.get(X), await store.marker(X)
    receipts = [(r.identity, r.reason, r.rows_deleted) for r in await store.receipts()]
    return (
        None if row is None else (row.created_at, row.expires_at, row.data),
        None if marker is None else (marker.deleted_before, marker.last_life, marker.pending),
        receipts,
    )


async def _raced(
    store: PostgresStore,
    other_sql: str,
    other_args: tuple[Any, ...],
    run: Callable[[], Coroutine[Any, Any, object]],
) -> None:
    """Run ``run`` (a batch, a sweep) while another transaction holds X's row (marker)
    inserted, and commit that one once the batch waits for it."""
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(other_sql.format(s=f'"{store.schema}"'), *X.parts(), *other_args)
        me = f"stream-expiry sink {store.name}"

        async def waits() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                    "AND wait_event_type = 'Lock'",
                    me,
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await wait_until(waits, what="the batch's insert to wait for the other's row")
            await tx.commit()
    finally:
        await conn.close()


async def _sequential(
    store: PostgresStore,
    other_sql: str,
    other_args: tuple[Any, ...],
    run: Callable[[], Coroutine[Any, Any, object]],
) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(other_sql.format(s=f'"{store.schema}"'), *X.parts(), *other_args)
    finally:
        await conn.close()
    await run()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("other_sql", "other_args", "change"),
    [
        # Another instance deleted X (its marker) while this one applies X's tombstone.
        (OTHER_MARKER, (T0 + 5 * MINUTE, T0, T0 + 11 * MINUTE), _tombstone),
        # Another instance wrote X's row (an earlier life) while this one writes a stamp.
        (OTHER_ROW, (T0, T0 + 10 * MINUTE, T0 + MINUTE), _stamp),
    ],
    ids=["marker", "row"],
)
async def test_a_plain_insert_that_meets_another_transactions_row_applies_again(
    tmp_path: Path,
    other_sql: str,
    other_args: tuple[Any, ...],
    change: Callable[[], Change],
) -> None:
    name = f"race{uuid.uuid4().hex[:8]}"
    async with (
        open_store("postgres", tmp_path, name=name) as raced,
        open_store("postgres", tmp_path, name=name + "s") as sequential,
    ):
        assert isinstance(raced, PostgresStore)
        assert isinstance(sequential, PostgresStore)
        with anyio.fail_after(60):
            await _raced(raced, other_sql, other_args, _applying(raced, change()))
        await _sequential(sequential, other_sql, other_args, _applying(sequential, change()))
        assert await _state(raced) == await _state(sequential)
        assert (await _state(raced))[1 if change is _tombstone else 0] is not None


def _applying(store: PostgresStore, change: Change) -> Callable[[], Coroutine[Any, Any, object]]:
    return lambda: store.apply([change], now_ms=T0 + 20 * MINUTE)


@pytest.mark.asyncio
async def test_a_sweep_whose_marker_meets_another_transactions_does_it_again(
    tmp_path: Path,
) -> None:
    """The sweep deletes X's expired row and inserts its marker plainly (its lookup found
    none) while another instance's marker for X waits uncommitted."""
    name = f"race{uuid.uuid4().hex[:8]}"
    async with (
        open_store("postgres", tmp_path, name=name) as raced,
        open_store("postgres", tmp_path, name=name + "s") as sequential,
    ):
        assert isinstance(raced, PostgresStore)
        assert isinstance(sequential, PostgresStore)
        marker_args = (T0 + 5 * MINUTE, T0, T0 + 11 * MINUTE)
        for store in (raced, sequential):
            await store.apply([decode_stamped(*stamped_msg(stamp(X)))], now_ms=T0)

        def sweeping(store: PostgresStore) -> Callable[[], Coroutine[Any, Any, object]]:
            return lambda: store.sweep(cutoff_ms=T0 + 20 * MINUTE, now_ms=T0 + 20 * MINUTE)

        with anyio.fail_after(60):
            await _raced(raced, OTHER_MARKER, marker_args, sweeping(raced))
        await _sequential(sequential, OTHER_MARKER, marker_args, sweeping(sequential))
        assert await _state(raced) == await _state(sequential)
        assert (await _state(raced))[1] is not None

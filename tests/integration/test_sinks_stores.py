"""One suite over every store (memory, SQLite, PostgreSQL), as quix-streams runs its
SUPPORTED_STORES: the store layer alone, no Kafka. The memory store is the reference the
SQL stores are compared with; the decisions themselves are unit-tested in
tests/unit/test_sinks_logic.py.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import pytest_asyncio

from stream_expiry.codec import (
    H_DELETED_AT,
    H_ERASURE_READ_AT,
    H_ERASURE_REQUESTED_AT,
    H_FIRST_CREATED_AT,
)
from stream_expiry.errors import StoreError
from stream_expiry.logs import configure_logging
from stream_expiry.model import Identity, Stamp
from stream_expiry.sinks._logic import UNKNOWN_PREVIOUS, Plan, plan
from stream_expiry.sinks._messages import (
    Change,
    NullChange,
    TombstoneChange,
    decode_stamped,
    decode_tombstone,
    encode_receipt,
)
from stream_expiry.sinks.postgres import MAX_KEY_BYTES, PostgresStore
from stream_expiry.sinks.postgres import prune_sql as postgres_prune_sql
from stream_expiry.sinks.sqlite import SQLiteStore
from stream_expiry.sinks.sqlite import prune_end_sql as sqlite_prune_end_sql
from stream_expiry.sinks.sqlite import prune_sql as sqlite_prune_sql
from stream_expiry.sinks.store import REREAD_MARGIN_MS, MemoryStore, Store, SweepPosition
from stream_expiry.timeutil import format_ts
from tests.integration.sink_helpers import (
    MINUTE,
    SQL_KINDS,
    T0,
    ident,
    open_store,
    stamp,
    stamped_msg,
    store_params,
    tombstone_msg,
)
from tests.unit.test_engine import BASE as HELD_AT
from tests.unit.test_held_erasure_read_at import A as HELD
from tests.unit.test_held_erasure_read_at import _messages as held_erasure_messages

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path


pytestmark = pytest.mark.integration

HOSTILE = [
    "it's",
    'say "hi"',
    "a/b\\c",
    "100%",
    "%2F",
    "x' OR '1'='1",
    "ünïcødé ✓ 会话",
    "emoji \U0001f600",
    "tab\tnew\nline",
    "r" * 512,
    "é" * 512,
]


@pytest_asyncio.fixture
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(request.param, tmp_path) as s:
        yield s


def put(s: Stamp, data: Any = None, offset: int | None = None) -> Change:
    key, value = stamped_msg(s, data)
    return decode_stamped(key, value, partition=0, offset=offset)


# The topics the suite's messages are read from (partition 0 of each), which the pruning's
# read-complete time covers unless a test says otherwise.
TOMBS, STAMPED = "expiry.tombstones", "expiry.stamped"
READ_OVER = ((TOMBS, 0), (STAMPED, 0))


def kill(
    s: Stamp, reason: str = "ttl", emitted_at: int | None = None, topic: str = TOMBS
) -> Change:
    key, value = tombstone_msg(s, reason=reason, emitted_at=emitted_at)
    return decode_tombstone(key, value, topic=topic, partition=0)


async def prune_round(
    store: Store,
    *,
    settled_before_ms: int,
    limit: int = 10,
    read_over: Sequence[tuple[str, int]] = READ_OVER,
) -> int:
    """One round of the rolling scan, from the first marker to the last, in pages of
    ``limit``: how many markers it forgot. ``read_over``: the topics and partitions the
    read-complete time behind ``settled_before_ms`` covered."""
    gone, after = 0, None
    while True:
        page = await store.prune(
            settled_before_ms=settled_before_ms, limit=limit, after=after, sources=read_over
        )
        gone += page.forgotten
        if (after := page.next_from) is None:
            return gone


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_write_then_tombstone_deletes_with_one_receipt(store: Store) -> None:
    s = stamp(ident("r1"))
    out = await store.apply([put(s, {"text": "hello"})], now_ms=T0 + 1)
    assert out.written == 1
    row = await store.get(s.identity)
    assert row is not None
    assert (row.created_at, row.expires_at, row.data) == (T0, T0 + 10 * MINUTE, '{"text":"hello"}')
    out = await store.apply([kill(s)], now_ms=T0 + 2)
    assert out.deleted == 1
    assert await store.get(s.identity) is None
    [r] = await store.receipts()
    assert (r.store, r.identity, r.reason, r.rows_deleted, r.deleted_at) == (
        store.name, s.identity, "ttl", 1, T0 + 2,
    )  # fmt: skip
    assert (r.created_at, r.expires_at, r.ttl_seconds, r.ttl_source) == (
        T0,
        T0 + 10 * MINUTE,
        600,
        "org",
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_debug_log_holds_no_record_data_nor_ids(store: Store) -> None:
    """A log outlives every erasure: at DEBUG, aiosqlite printed each statement with its
    parameters, the data and ids of the records written and erased."""
    out = io.StringIO()
    configure_logging("DEBUG", "text", stream=out)
    try:
        s = stamp(ident("user-7f3a-private-id"))
        assert (await store.apply([put(s, {"email": "jane@private.example"})], now_ms=T0)).written
        assert (await store.apply([kill(s, "explicit")], now_ms=T0 + 1)).deleted == 1
    finally:
        configure_logging("WARNING", "text")
    log = out.getvalue()
    assert "private" not in log


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_duplicate_tombstones_leave_one_receipt(store: Store) -> None:
    s = stamp(ident("dup"))
    await store.apply([put(s)], now_ms=T0)
    await store.apply([kill(s), kill(s)], now_ms=T0 + 1)
    out = await store.apply([kill(s)], now_ms=T0 + 2)
    assert (out.deleted, out.receipts) == (0, [])
    assert [r.rows_deleted for r in await store.receipts()] == [1]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_store_is_empty_until_it_holds_something(store: Store) -> None:
    """What the sink asks before it warns of a group that committed offsets while its
    store holds nothing (:meth:`Store.is_empty`). A mutant of the memory store's answer
    (``not`` dropped: empty once it held something) passed the suite."""
    assert await store.is_empty()
    await store.apply([put(stamp(ident("held")), {"v": 1}, offset=0)], now_ms=T0)
    assert not await store.is_empty()


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_row_written_again_moves_to_its_new_position(store: Store) -> None:
    """A row written again by a later stamp keeps that stamp's position on
    ``expiry.stamped`` (rule 3: a message at or before it is already applied; the sweep's
    archive check reads it too): an earlier message read again is skipped, not written
    over the newer data. A mutant of SQLite's upsert that left ``src_offset`` as the first
    stamp wrote it passed the suite; there the re-read message at offset 7 wrote its older
    data over offset 9's."""
    s = stamp(ident("moved"))
    await store.apply([put(s, {"v": 1}, offset=5)], now_ms=T0)
    await store.apply([put(s, {"v": 3}, offset=9)], now_ms=T0 + 1)
    newest = await store.get(s.identity)
    assert newest is not None
    assert (newest.src_partition, newest.src_offset) == (0, 9)
    await store.apply([put(s, {"v": 2}, offset=7)], now_ms=T0 + 2)
    assert await store.get(s.identity) == newest


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_an_erasure_dated_after_the_expiry_leaves_one_receipt(store: Store) -> None:
    """What the service sends for a delete dated after the record's expiry: the ttl
    tombstone (its life's last instant in ``expiry-deleted-at``), then an explicit one
    naming no life, dated by the request. The row went at the expiry: the store's only
    receipt is the expiry's."""
    s = stamp(ident("late-erasure"))
    await store.apply([put(s, {"text": "hello"}, offset=0)], now_ms=T0 + 1)
    expiry = kill(s)
    assert isinstance(expiry, TombstoneChange)
    await store.apply([replace(expiry, deleted_at=T0 + 10 * MINUTE - 1)], now_ms=T0 + 10 * MINUTE)
    erased_at = T0 + 20 * MINUTE
    unseen = Stamp(s.identity, None, None, None, None)
    erasure = kill(unseen, "explicit", emitted_at=erased_at)
    assert isinstance(erasure, TombstoneChange)
    out = await store.apply([replace(erasure, deleted_at=erased_at)], now_ms=erased_at + 1)
    assert (out.deleted, out.receipts) == (0, [])
    assert [(r.reason, r.rows_deleted) for r in await store.receipts()] == [("ttl", 1)]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_tombstone_before_its_record_wins_and_a_new_life_is_kept(store: Store) -> None:
    old = stamp(ident("early"))
    await store.apply([kill(old)], now_ms=T0)
    out = await store.apply([put(old, {"late": 1})], now_ms=T0 + 1)
    assert out.stale == 1
    assert await store.get(old.identity) is None
    marker = await store.marker(old.identity)
    assert marker is not None
    assert marker.deleted_before == T0 + 10 * MINUTE
    new = stamp(old.identity, created_at=T0 + 10 * MINUTE)
    await store.apply([put(new, {"life": 2})], now_ms=T0 + 2)
    row = await store.get(old.identity)
    assert row is not None
    assert row.data == '{"life":2}'
    assert [(r.reason, r.rows_deleted) for r in await store.receipts()] == [("ttl", 0)]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_hostile_ids_round_trip_and_delete_exactly_themselves(store: Store) -> None:
    ids = [ident(h, org=o) for h in HOSTILE for o in ("acme", HOSTILE[0])]
    stamps = [stamp(i) for i in ids]
    await store.apply([put(s, {"id": s.identity.record_id}) for s in stamps], now_ms=T0)
    for s in stamps:
        row = await store.get(s.identity)
        assert row is not None, s.identity
        assert row.identity == s.identity
    doomed = stamps[::2]
    await store.apply([kill(s) for s in doomed], now_ms=T0 + 1)
    for s in stamps:
        assert (await store.get(s.identity) is None) == (s in doomed), s.identity
    assert await store.count() == len(stamps) - len(doomed)
    assert sorted(r.identity for r in await store.receipts()) == sorted(s.identity for s in doomed)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_same_record_id_in_two_orgs_only_one_is_deleted(store: Store) -> None:
    mine, theirs = stamp(ident("shared", org="acme")), stamp(ident("shared", org="globex"))
    await store.apply([put(mine), put(theirs)], now_ms=T0)
    await store.apply([kill(mine)], now_ms=T0 + 1)
    assert await store.get(mine.identity) is None
    assert await store.get(theirs.identity) is not None


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_null_value_deletes_but_not_a_newer_life_when_re_read(store: Store) -> None:
    i = ident("nul")
    old, new = stamp(i), stamp(i, created_at=T0 + 10 * MINUTE)
    topic = [put(old, {"v": 1}, offset=0), NullChange(i, 0, 1), put(new, {"v": 2}, offset=2)]
    await store.apply(topic, now_ms=T0)
    await store.apply(topic[1:], now_ms=T0 + 1)  # re-read after a crash before the commit
    row = await store.get(i)
    assert row is not None
    assert row.data == '{"v":2}'
    assert await store.receipts() == []  # the null names no rule: the receipt waits
    marker = await store.marker(i)
    assert marker is not None
    assert [(p.created_at, p.expires_at) for p in marker.pending] == [(T0, T0 + 10 * MINUTE)]
    await store.apply([kill(old, reason="explicit", emitted_at=T0 + 1)], now_ms=T0 + 5)
    assert [
        (r.reason, r.created_at, r.rows_deleted, r.deleted_at) for r in await store.receipts()
    ] == [("explicit", T0, 1, T0)]
    assert await store.get(i) is not None  # the newer life survives the old life's tombstone


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_held_life_replaced_by_the_next_is_receipted_at_the_release(store: Store) -> None:
    """A life erased under a legal hold, then the record's next life (its stamp replaces the
    row), deleted in turn, its null read first: the held life's tombstone at the release
    still gets its receipt, and the sweep never writes one for it."""
    i = ident("held")
    held, following = stamp(i), stamp(i, created_at=T0 + 2 * MINUTE)
    await store.apply([put(held, {"v": 1}, offset=0)], now_ms=T0)
    await store.apply([put(following, {"v": 2}, offset=1)], now_ms=T0 + 200)
    await store.apply([NullChange(i, 0, 2)], now_ms=T0 + 300)
    # A sweep whose grace the replacement is past, the null not: nothing for the sweep.
    page = await store.sweep(cutoff_ms=T0 + 250, now_ms=T0 + 1000 * MINUTE)
    assert page.plan.receipts == []
    tombstone = kill(held, "explicit", emitted_at=T0 + 30 * MINUTE)
    assert isinstance(tombstone, TombstoneChange)
    release = replace(tombstone, deleted_at=T0 + MINUTE)  # where the erasure ended the life
    await store.apply([release, release], now_ms=T0 + 31 * MINUTE)
    await store.apply([kill(following)], now_ms=T0 + 32 * MINUTE)
    got = [(r.reason, r.created_at, r.rows_deleted, r.deleted_at) for r in await store.receipts()]
    assert got == [
        ("explicit", T0, 1, T0 + 200),  # its data went when the next life replaced it
        ("ttl", T0 + 2 * MINUTE, 1, T0 + 300),
    ]
    assert await store.get(i) is None


def held_by(s: Stamp, *lives: Stamp) -> Stamp:
    """``s`` as the service stamps a record's next life while a legal hold keeps ``lives``
    (``held_lives`` on ``expiry.stamped``)."""
    kept = tuple((x.created_at, x.expires_at, x.ttl_ms, x.ttl_source, None) for x in lives)
    return s._replace(held_lives=kept)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_held_lifes_data_is_kept_aside_until_its_release(store: Store) -> None:
    """A life a legal hold keeps, then the record's next life, whose stamp names it held:
    the held life's row, data and all, is in the store's held lives while the hold is in
    force (it was replaced and gone); its tombstone at the release deletes it there with
    its receipt, the next life's row left; that life's own tombstone deletes it in turn."""
    i = ident("held")
    first, second = stamp(i), stamp(i, created_at=T0 + 20 * MINUTE)
    third = stamp(i, created_at=T0 + 40 * MINUTE)
    await store.apply([put(first, {"v": 1}, offset=0)], now_ms=T0)
    await store.apply([put(held_by(second, first), {"v": 2}, offset=1)], now_ms=T0 + 100)
    await store.apply([put(held_by(third, first, second), {"v": 3}, offset=2)], now_ms=T0 + 200)
    kept = [(r.created_at, r.expires_at, r.data, r.src_offset) for r in await store.held_lives(i)]
    assert kept == [
        (T0, T0 + 10 * MINUTE, '{"v":1}', 0),
        (T0 + 20 * MINUTE, T0 + 30 * MINUTE, '{"v":2}', 1),
    ]
    row = await store.get(i)
    assert row is not None
    assert (row.created_at, row.data) == (T0 + 40 * MINUTE, '{"v":3}')
    assert await store.receipts() == []
    # A sweep long past every expiry: a hold may outlast any grace, the sweep takes none.
    page = await store.sweep(cutoff_ms=T0 + 1000 * MINUTE, now_ms=T0 + 1000 * MINUTE,
                             spare=lambda _: True)  # fmt: skip
    assert page.plan.receipts == []
    assert len(await store.held_lives(i)) == 2
    released = [kill(first, emitted_at=T0 + 60 * MINUTE), kill(second, emitted_at=T0 + 60 * MINUTE)]
    p = await store.apply([*released, *released], now_ms=T0 + 300, living=True)
    assert p.living == [i]
    assert await store.held_lives(i) == []
    row = await store.get(i)
    assert row is not None
    assert row.created_at == T0 + 40 * MINUTE
    await store.apply(released, now_ms=T0 + 350)  # read again: nothing more
    await store.apply([kill(third)], now_ms=T0 + 400)
    got = [(r.reason, r.created_at, r.rows_deleted, r.deleted_at) for r in await store.receipts()]
    assert got == [
        ("ttl", T0, 1, T0 + 300),
        ("ttl", T0 + 20 * MINUTE, 1, T0 + 300),
        ("ttl", T0 + 40 * MINUTE, 1, T0 + 400),
    ]
    assert await store.get(i) is None


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_held_life_kept_aside_and_released_in_one_batch_is_never_written(
    store: Store,
) -> None:
    """The next life's stamp and the held life's tombstone in one batch (a sink catching
    up after the release): the held life's row is released in the same plan that kept it
    aside, so it is never written, and its receipt is written once."""
    i = ident("held-once")
    first, second = stamp(i), stamp(i, created_at=T0 + 20 * MINUTE)
    await store.apply([put(first, {"v": 1}, offset=0)], now_ms=T0)
    p = await store.apply(
        [put(held_by(second, first), {"v": 2}, offset=1), kill(first)], now_ms=T0 + 100
    )
    assert (p.held, [r.created_at for r in p.receipts]) == ([], [T0])
    assert await store.held_lives(i) == []
    assert [r.rows_deleted for r in await store.receipts()] == [1]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_store_made_before_held_lives_were_kept_gets_their_table(store: Store) -> None:
    """A store of an earlier version has no held lives table: it is made when the sink
    opens it, and a held life replaced by the next from then on is kept aside. A life
    replaced before (its pending deletion not kept) gets its receipt at its release as it
    did, dated when it was replaced."""
    i, j = ident("old-held"), ident("new-held")
    old = [stamp(i), stamp(i, created_at=T0 + 20 * MINUTE)]
    await store.apply([put(old[0], {"v": 1}, offset=0)], now_ms=T0)
    await store.apply([put(old[1], {"v": 2}, offset=1)], now_ms=T0 + 100)  # no held_lives
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    sqlite = isinstance(store, SQLiteStore)
    table = f"{store.prefix}held_lives" if sqlite else store._n.held_lives  # type: ignore[attr-defined]
    await conn.execute(f"DROP TABLE {table}")
    if sqlite:
        await conn.commit()
    await store.close()
    await store.open()
    new = [stamp(j), stamp(j, created_at=T0 + 20 * MINUTE)]
    await store.apply([put(new[0], {"v": 1}, offset=2)], now_ms=T0 + 200)
    await store.apply([put(held_by(new[1], new[0]), {"v": 2}, offset=3)], now_ms=T0 + 300)
    assert [r.data for r in await store.held_lives(j)] == ['{"v":1}']
    await store.close()
    await store.open()  # once: a second opening changes nothing
    assert [r.data for r in await store.held_lives(j)] == ['{"v":1}']
    await store.apply([kill(old[0]), kill(new[0])], now_ms=T0 + 400)
    got = [(r.identity, r.rows_deleted, r.deleted_at) for r in await store.receipts()]
    assert got == [(i, 1, T0 + 100), (j, 1, T0 + 400)]
    assert await store.held_lives(j) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
@pytest.mark.parametrize("order", ["null-first", "tombstone-first", "same-batch-null-first",
                                   "same-batch-tombstone-first"])  # fmt: skip
@pytest.mark.parametrize("reason", ["ttl", "explicit"])
async def test_receipt_names_the_rule_whatever_the_arrival_order(
    store: Store, order: str, reason: str
) -> None:
    """The null on expiry.stamped and the tombstone event, in either order, in one batch or
    two, re-delivered: one receipt, with the tombstone event's rule and times."""
    i = ident("ordered")
    s = stamp(i)
    emitted = T0 + (3 * MINUTE if reason == "explicit" else 10 * MINUTE)
    t = kill(s, reason=reason, emitted_at=emitted)
    null = NullChange(i, 0, 1)
    await store.apply([put(s, {"secret": "payload"}, offset=0)], now_ms=T0)
    pair = [null, t] if order.endswith("null-first") else [t, null]
    if order.startswith("same-batch"):
        await store.apply(pair, now_ms=T0 + 100)
    else:
        await store.apply(pair[:1], now_ms=T0 + 100)
        assert await store.get(i) is None  # whichever came first deleted the row
        await store.apply(pair[1:], now_ms=T0 + 200)
    await store.apply(pair, now_ms=T0 + 300)  # re-delivered: nothing new
    assert await store.get(i) is None
    [r] = await store.receipts()
    assert (r.reason, r.rows_deleted, r.identity) == (reason, 1, i)
    assert (r.created_at, r.expires_at, r.emitted_at) == (T0, T0 + 10 * MINUTE, emitted)
    assert (r.ttl_seconds, r.ttl_source) == (600, "org")
    assert r.deleted_at == T0 + 100  # when the row was really deleted
    marker = await store.marker(i)
    assert marker is not None
    assert marker.pending == ()
    assert [x.receipt_id for x in await store.pending_receipts()] == [r.receipt_id]


# What the service puts on an erasure's tombstone event and its null (codec.request_headers).
REQUEST = "conversations[2]@1041"
NAMED = [("expiry-request", REQUEST.encode()), ("expiry-request-event-id", b"gdpr-7")]


def erase(s: Stamp, headers: Sequence[tuple[str, bytes]] = NAMED) -> TombstoneChange:
    """An erasure's tombstone event, read with the headers that name its request."""
    key, value = tombstone_msg(s, reason="explicit", emitted_at=T0 + MINUTE)
    return decode_tombstone(key, value, headers, T0 + MINUTE, topic=TOMBS, partition=0)


def erased(i: Identity, offset: int, headers: Sequence[tuple[str, bytes]] = NAMED) -> Change:
    """An erasure's null on expiry.stamped, with its reason and its request."""
    named = [("expiry-reason", b"explicit"), *headers]
    return decode_stamped(
        i.key.encode(), None, partition=0, offset=offset, headers=named, timestamp=T0 + MINUTE,
        topic=STAMPED,
    )  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
@pytest.mark.parametrize(
    "case", ["tombstone-first", "null-first", "null-only-swept", "never-seen",
             "never-seen-null-first", "never-seen-null-only-swept", "said-by-the-null-only"],
)  # fmt: skip
async def test_an_erasures_receipt_names_its_request_however_it_was_deleted(
    store: Store, case: str
) -> None:
    """The tombstone event and the null of an erasure name the request it carries out
    (headers expiry-request, expiry-request-event-id); the receipt keeps it, in the
    store's receipts table until it is published, whichever of the two deleted the row,
    also when the sweep writes it for a null whose tombstone never came and for a
    record the store never held. An expiry's receipt names none."""
    i, expired = ident("erased"), stamp(ident("expired"))
    s = Stamp(i, None, None, None, None) if case.startswith("never-seen") else stamp(i)
    if not case.startswith("never-seen"):
        await store.apply([put(s, offset=0)], now_ms=T0)
    await store.apply([put(expired, offset=1), kill(expired)], now_ms=T0 + 1)
    tomb = erase(s, () if case == "said-by-the-null-only" else NAMED)
    if case in ("tombstone-first", "never-seen"):
        await store.apply([tomb], now_ms=T0 + MINUTE)
        await store.apply([erased(i, 2)], now_ms=T0 + MINUTE + 1)
    else:
        await store.apply([erased(i, 2)], now_ms=T0 + MINUTE)
        if case.endswith("swept"):
            page = await store.sweep(cutoff_ms=T0 + 2 * MINUTE, now_ms=T0 + 2 * MINUTE)
            assert [r.reason for r in page.plan.receipts] == ["explicit"]
        else:
            await store.apply([tomb], now_ms=T0 + MINUTE + 1)
    rows = 0 if case.startswith("never-seen") else 1
    said = {r.identity: r for r in await store.pending_receipts()}
    assert set(said) == {i, expired.identity}
    r = said[i]
    assert (r.reason, r.rows_deleted) == ("explicit", rows)
    assert (r.request, r.request_event_id) == (REQUEST, "gdpr-7")
    e = said[expired.identity]
    assert (e.reason, e.request, e.request_event_id) == ("ttl", None, None)
    assert {x.receipt_id: x for x in await store.receipts()} == {
        x.receipt_id: x for x in said.values()
    }


# An erasure requested a week before its tombstone (a legal hold deferred it).
ASKED = T0 - 7 * 24 * 60 * MINUTE
WHEN = [*NAMED, (H_ERASURE_REQUESTED_AT, b"%d" % ASKED)]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
@pytest.mark.parametrize(
    "case", ["tombstone-first", "null-first", "null-only-swept", "never-seen",
             "said-by-the-null-only", "time-said-by-the-tombstone-only"],
)  # fmt: skip
async def test_an_erasures_receipt_says_when_it_was_requested_however_it_was_deleted(
    store: Store, case: str
) -> None:
    """The tombstone event and the null of an erasure say when it was requested (header
    expiry-erasure-requested-at); the receipt keeps it (``requested_at``), in the store's
    receipts table and in its value on expiry.receipts, whichever of the two deleted the
    row, also when the sweep writes it and for a record the store never held. An
    expiry's receipt, and an erasure whose tombstone an older version sent, say none."""
    i, expired, old = ident("erased"), stamp(ident("expired")), stamp(ident("old"))
    s = Stamp(i, None, None, None, None) if case == "never-seen" else stamp(i)
    if case != "never-seen":
        await store.apply([put(s, offset=0)], now_ms=T0)
    await store.apply(
        [put(expired, offset=1), kill(expired), put(old, offset=3), erase(old)], now_ms=T0 + 1
    )
    tomb = erase(s, () if case == "said-by-the-null-only" else WHEN)
    null = erased(i, 2, WHEN)
    if case == "time-said-by-the-tombstone-only":  # the request unknown to the tombstone
        tomb = erase(s, [(H_ERASURE_REQUESTED_AT, b"%d" % ASKED)])
        null = erased(i, 2, NAMED)
    if case in ("tombstone-first", "never-seen"):
        await store.apply([tomb], now_ms=T0 + MINUTE)
        await store.apply([null], now_ms=T0 + MINUTE + 1)
    else:
        await store.apply([null], now_ms=T0 + MINUTE)
        if case.endswith("swept"):
            page = await store.sweep(cutoff_ms=T0 + 2 * MINUTE, now_ms=T0 + 2 * MINUTE)
            assert [r.reason for r in page.plan.receipts] == ["explicit"]
        else:
            await store.apply([tomb], now_ms=T0 + MINUTE + 1)
    await store.close()
    await store.open()  # kept by the store, not only by the plan
    said = {r.identity: r for r in await store.pending_receipts()}
    assert set(said) == {i, expired.identity, old.identity}
    r = said[i]
    assert (r.reason, r.rows_deleted, r.requested_at) == (
        "explicit", 0 if case == "never-seen" else 1, ASKED,
    )  # fmt: skip
    assert orjson.loads(encode_receipt(r))["requested_at"] == format_ts(ASKED)
    assert (said[expired.identity].reason, said[expired.identity].requested_at) == ("ttl", None)
    assert said[old.identity].requested_at is None
    assert orjson.loads(encode_receipt(said[old.identity]))["requested_at"] is None


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_store_made_before_receipts_said_when_an_erasure_was_requested_is_brought_up_to_date(
    store: Store,
) -> None:
    """Reopening a store whose receipts table lacks ``requested_at`` adds it: the receipts
    already there say none, and an erasure's receipt says its request's time from then on."""
    old = stamp(ident("old"))
    await store.apply([put(old, offset=0), erase(old, WHEN)], now_ms=T0)
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    sqlite = isinstance(store, SQLiteStore)
    receipts = f"{store.prefix}receipts" if sqlite else store._n.receipts  # type: ignore[attr-defined]
    await conn.execute(f"ALTER TABLE {receipts} DROP COLUMN requested_at")
    if sqlite:
        await conn.commit()
    await store.close()
    await store.open()
    new = stamp(ident("new"))
    await store.apply([put(new, offset=1), erase(new, WHEN)], now_ms=T0 + 1)
    await store.close()
    await store.open()  # once: a second opening changes nothing
    said = [(r.identity, r.requested_at) for r in await store.pending_receipts()]
    assert said == [(old.identity, None), (new.identity, ASKED)]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_request_without_an_event_id_and_odd_bytes_are_kept_as_text(store: Store) -> None:
    """A request with no event_id names where it was produced only; an event id that is
    not UTF-8 or holds U+0000 (which PostgreSQL text cannot hold) is kept as text with
    U+FFFD in their place, the same in every store."""
    plain, odd = stamp(ident("plain")), stamp(ident("odd"))
    await store.apply([put(plain, offset=0), put(odd, offset=1)], now_ms=T0)
    weird = [("expiry-request", REQUEST.encode()), ("expiry-request-event-id", b"a\x00b\xffc")]
    out = await store.apply(
        [erase(plain, [("expiry-request", REQUEST.encode())]), erase(odd, weird)], now_ms=T0 + 1
    )
    assert [(r.request, r.request_event_id) for r in out.receipts] == [
        (REQUEST, None), (REQUEST, "a\ufffdb\ufffdc"),
    ]  # fmt: skip
    assert [(r.request, r.request_event_id) for r in await store.pending_receipts()] == [
        (REQUEST, None), (REQUEST, "a\ufffdb\ufffdc"),
    ]  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_the_largest_ttl_the_decoder_takes_is_held_by_every_store(store: Store) -> None:
    """The decoders refuse a ``ttl_seconds`` beyond a 64-bit integer (one such message
    stopped a sink at every start: tests/unit/test_sinks_codec.py); the largest they take
    is one every store holds, in its row and in its receipt."""
    s = stamp(ident("long"))
    largest = 2**63 - 1
    key, value = stamped_msg(s)
    change = decode_stamped(key, orjson.dumps({**orjson.loads(value), "ttl_seconds": largest}))
    await store.apply([change], now_ms=T0)
    row = await store.get(s.identity)
    assert row is not None
    assert row.ttl_seconds == largest
    key, value = tombstone_msg(s)
    await store.apply(
        [decode_tombstone(key, orjson.dumps({**orjson.loads(value), "ttl_seconds": largest}))],
        now_ms=T0 + 1,
    )
    assert [r.ttl_seconds for r in await store.receipts()] == [largest]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_ttl_source_holding_u0000_is_kept_as_text_in_every_store(store: Store) -> None:
    """PostgreSQL text cannot hold U+0000: one stamp whose ``ttl_source`` said it stopped a
    PostgreSQL sink at every start ("\\u0000 cannot be converted to text", status 4),
    while SQLite kept it. Every store keeps U+FFFD in its place, as it does in a request's
    event id, and the record is written and deleted as any other."""
    s = stamp(ident("odd-source"))
    key, value = stamped_msg(s, {"note": "a\x00b"})  # in data, JSON escapes it: no harm
    odd = {**orjson.loads(value), "ttl_source": "o\x00rg"}
    await store.apply([decode_stamped(key, orjson.dumps(odd), partition=0, offset=0)], now_ms=T0)
    row = await store.get(s.identity)
    assert row is not None
    assert (row.ttl_source, row.data) == ("o\ufffdrg", '{"note":"a\\u0000b"}')
    key, value = tombstone_msg(s)
    odd = {**orjson.loads(value), "ttl_source": "o\x00rg"}
    out = await store.apply([decode_tombstone(key, orjson.dumps(odd))], now_ms=T0 + 1)
    assert out.deleted == 1
    assert [r.ttl_source for r in await store.receipts()] == ["o\ufffdrg"]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_time_headers_beyond_any_time_are_read_as_not_said_in_every_store(
    store: Store,
) -> None:
    """An erasure whose ``expiry-deleted-at`` and ``expiry-erasure-requested-at`` say a
    number beyond any time (another producer's): read as an integer, it stopped every SQL
    store at every start (SQLite: OverflowError; PostgreSQL: "Integer exceeds 64-bit
    range", a traceback). Read as not said, the erasure deletes its row as an earlier
    version's did, by its ``emitted_at``, and its receipt says no request time."""
    s = stamp(ident("odd-headers"))
    await store.apply([put(s, offset=0)], now_ms=T0)
    beyond = str(10**20).encode()
    headers = [*NAMED, (H_DELETED_AT, beyond), (H_ERASURE_REQUESTED_AT, beyond)]
    out = await store.apply([erase(s, headers)], now_ms=T0 + 1)
    assert out.deleted == 1
    assert [(r.reason, r.rows_deleted, r.request, r.requested_at) for r in out.receipts] == [
        ("explicit", 1, REQUEST, None)
    ]


# What the service puts on a ttl tombstone event and its null emitted more than a minute
# after the expiry (codec.H_LATE_CAUSE).
LATE = [("expiry-late-cause", b"catch_up")]


def expire_late(s: Stamp, headers: Sequence[tuple[str, bytes]] = LATE) -> TombstoneChange:
    """A ttl tombstone event emitted two hours after its expiry, saying why."""
    assert s.expires_at is not None
    at = s.expires_at + 120 * MINUTE
    key, value = tombstone_msg(s, reason="ttl", emitted_at=at)
    return decode_tombstone(key, value, headers, at, topic=TOMBS, partition=0)


def expired_late(i: Identity, offset: int, headers: Sequence[tuple[str, bytes]] = LATE) -> Change:
    """Its null on expiry.stamped, with its reason and its cause."""
    named = [("expiry-reason", b"ttl"), *headers]
    return decode_stamped(
        i.key.encode(), None, partition=0, offset=offset, headers=named,
        timestamp=T0 + 130 * MINUTE, topic=STAMPED,
    )  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
@pytest.mark.parametrize(
    "case", ["tombstone-first", "null-first", "null-only-swept", "said-by-the-null-only",
             "never-held"],
)  # fmt: skip
async def test_a_late_deletions_receipt_says_why_it_was_late_however_it_was_deleted(
    store: Store, case: str
) -> None:
    """A ttl tombstone event and its null emitted late say why (expiry-late-cause); the
    receipt keeps it, in the store's receipts table until it is published, whichever of
    the two deleted the row (the tombstone's, else the null's), also when the sweep writes
    it for a null whose tombstone never came, and for a record the store never held. An
    on-time expiry's receipt and an erasure's say none."""
    i, on_time, gone = stamp(ident("late")), stamp(ident("on-time")), stamp(ident("erased"))
    if case != "never-held":
        await store.apply([put(i, offset=0)], now_ms=T0)
    await store.apply(
        [put(on_time, offset=1), kill(on_time), put(gone, offset=2), erase(gone)], now_ms=T0 + 1
    )
    tomb = expire_late(i, () if case == "said-by-the-null-only" else LATE)
    now = T0 + 130 * MINUTE
    if case in ("tombstone-first", "never-held"):
        await store.apply([tomb], now_ms=now)
        await store.apply([expired_late(i.identity, 3)], now_ms=now + 1)
    else:
        await store.apply([expired_late(i.identity, 3)], now_ms=now)
        if case.endswith("swept"):
            page = await store.sweep(cutoff_ms=now + MINUTE, now_ms=now + MINUTE)
            assert [r.reason for r in page.plan.receipts] == ["ttl"]
        else:
            await store.apply([tomb], now_ms=now + 1)
    said = {r.identity: r for r in await store.pending_receipts()}
    assert set(said) == {i.identity, on_time.identity, gone.identity}
    r = said[i.identity]
    assert (r.reason, r.rows_deleted) == ("ttl", 0 if case == "never-held" else 1)
    assert r.late_cause == "catch_up"
    assert said[on_time.identity].late_cause is None
    assert said[gone.identity].late_cause is None
    assert {x.receipt_id: x for x in await store.receipts()} == {
        x.receipt_id: x for x in said.values()
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_sweep_gives_a_null_deletion_its_receipt_when_the_tombstone_never_comes(
    store: Store,
) -> None:
    waiting, answered = stamp(ident("waiting")), stamp(ident("answered"))
    far = T0 + 1000 * MINUTE  # neither row is past its expiry at the cutoffs below
    await store.apply([put(waiting, offset=0), put(answered, offset=1)], now_ms=T0)
    await store.apply(
        [NullChange(waiting.identity, 0, 2), NullChange(answered.identity, 0, 3)], now_ms=T0 + 1
    )
    assert (await store.sweep(cutoff_ms=T0, now_ms=far, limit=10)).plan.receipts == []
    await store.apply([kill(answered)], now_ms=T0 + 2)
    out = (await store.sweep(cutoff_ms=T0 + 1, now_ms=far, limit=10)).plan
    assert [(r.identity, r.reason, r.deleted_at) for r in out.receipts] == [
        (waiting.identity, "sweep", T0 + 1)
    ]
    assert (await store.apply([kill(waiting)], now_ms=far)).receipts == []
    reasons = sorted((r.identity.record_id, r.reason) for r in await store.receipts())
    assert reasons == [("answered", "ttl"), ("waiting", "sweep")]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_sweep_deletes_only_expired_rows_with_a_bounded_budget(store: Store) -> None:
    due = [stamp(ident(f"due{n}"), ttl_ms=MINUTE * (n + 1)) for n in range(5)]
    keep = [stamp(ident("later"), ttl_ms=60 * MINUTE), stamp(ident("never"), ttl_ms=None)]
    await store.apply([put(s) for s in due + keep], now_ms=T0)
    cutoff = T0 + 5 * MINUTE
    first = await store.sweep(cutoff_ms=cutoff, now_ms=cutoff, limit=3)
    second = await store.sweep(cutoff_ms=cutoff, now_ms=cutoff, limit=3, after=first.next_from)
    assert (first.plan.swept, second.plan.swept) == (3, 2)
    assert (first.more, second.more, second.next_from) == (True, False, None)
    assert await store.count() == 2
    receipts = await store.receipts()
    assert [r.reason for r in receipts] == ["sweep"] * 5
    assert [r.expires_at for r in receipts] == [s.expires_at for s in due]  # oldest first
    out = await store.apply([kill(due[0])], now_ms=cutoff + 1)  # the late tombstone
    assert out.receipts == []


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_the_sweep_spares_rows_and_pages_past_them_in_the_stores_own_order(
    store: Store,
) -> None:
    """Rows a legal hold keeps are never swept, and however many of them come first, page
    after page reaches every other row once: the position where a page ends is compared
    in SQL exactly as the rows are ordered (equal expiries, hostile ids in every script)."""
    ids = [ident(h, org=org) for h in HOSTILE for org in ("a", "b")]
    rows = [stamp(i, ttl_ms=MINUTE * (1 + n % 2)) for n, i in enumerate(ids)]
    await store.apply([put(s, offset=n) for n, s in enumerate(rows)], now_ms=T0)
    held = {i for n, i in enumerate(ids) if n % 3 != 2}
    cutoff = T0 + 2 * MINUTE
    swept: list[Identity] = []
    ends: list[SweepPosition] = []
    after = None
    for _ in range(len(ids) + 1):  # a row a page, and the page that finds no more
        page = await store.sweep(
            cutoff_ms=cutoff, now_ms=cutoff, limit=1, spare=held.__contains__, after=after
        )
        swept += [r.identity for r in page.plan.receipts]
        after = page.next_from
        if not page.more:
            break
        assert after is not None
        ends.append(after)
    assert after is None  # the last page reached the end: the next sweep starts over
    assert ends == sorted(set(ends))  # each page past the last: each row looked at once
    assert len(ends) == len(ids)
    assert sorted(swept) == sorted(set(ids) - held)
    assert len(swept) == len(set(swept))
    assert all([await store.get(i) is not None for i in held])
    assert await store.count() == len(held)
    again = await store.sweep(cutoff_ms=cutoff, now_ms=cutoff, limit=100, spare=held.__contains__)
    assert (again.plan.swept, again.more) == (0, False)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_markers_are_forgotten_a_grace_after_they_settle_never_while_pending(
    store: Store,
) -> None:
    """A marker settles at the later of its deletion and the deleted life's expiry (an
    erasure ends a life early); pruning looks at a page of markers at a time along the
    primary key, takes those of it settled by the bound, and never one whose deletion
    still waits for its tombstone event."""
    done = stamp(ident("done"))  # expires at T0 + 10 min, deleted later
    erased = stamp(ident("erased"), ttl_ms=60 * MINUTE)  # erased before its expiry
    waiting = stamp(ident("waiting"))  # deleted by a null; its tombstone has not come
    late = stamp(ident("late"))  # deleted after the others
    at = T0 + 20 * MINUTE
    await store.apply(
        [put(s, offset=n) for n, s in enumerate([done, erased, waiting, late])], now_ms=T0
    )
    await store.apply(
        [kill(done), kill(erased, "explicit", emitted_at=at), NullChange(waiting.identity, 0, 9)],
        now_ms=at,
    )
    await store.apply([kill(late)], now_ms=at + 1)
    assert await store.count_markers() == 4
    assert await prune_round(store, settled_before_ms=at - 1) == 0
    # Pages of one, in the key's order: done, erased, late, waiting, then the end.
    pages, after = [], None
    for _ in range(5):
        page = await store.prune(settled_before_ms=at + 1, limit=1, after=after)
        pages.append((page.forgotten, page.next_from and page.next_from[-1]))
        after = page.next_from
    assert pages == [(1, "done"), (0, "erased"), (1, "late"), (0, "waiting"), (0, None)]
    assert [await store.marker(s.identity) is None for s in (done, erased, waiting, late)] == [
        True, False, False, True,
    ]  # fmt: skip
    assert await prune_round(store, settled_before_ms=T0 + 60 * MINUTE - 1) == 0
    assert await prune_round(store, settled_before_ms=T0 + 60 * MINUTE) == 1
    assert await prune_round(store, settled_before_ms=2**62) == 0  # waiting stays
    marker = await store.marker(waiting.identity)
    assert marker is not None
    assert marker.pending
    # Its tombstone, however late, still finds the deletion and writes its receipt.
    out = await store.apply([kill(waiting, "explicit", emitted_at=at)], now_ms=at + 2)
    assert [(r.reason, r.rows_deleted, r.deleted_at) for r in out.receipts] == [("explicit", 1, at)]
    assert await prune_round(store, settled_before_ms=at + 2) == 1
    assert await store.count_markers() == 0
    assert len(await store.receipts()) == 4  # receipts are evidence: never pruned


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_an_erasures_null_read_again_after_its_marker_is_forgotten_waits_for_nothing(
    store: Store,
) -> None:
    """An erasure of a record the store never held: its null, dated by the service, then
    its tombstone event (one receipt, rows_deleted 0); the marker forgotten; the store
    reopened and ``expiry.stamped`` read again (a rewound group). The store keeps the
    pruning's bound with its markers: the null is dated before it, was read before, and
    waits for nothing (it kept a marker forever, and the sweep wrote a second receipt).
    A null dated after the bound is a first reading: it waits for its tombstone event."""
    gone, fresh = ident("erased-unseen"), ident("erased-later")
    null = NullChange(gone, 0, 1, "explicit", T0, STAMPED)
    unseen = Stamp(gone, None, None, None, None)
    await store.apply([null], now_ms=T0 + 1)
    await store.apply([kill(unseen, "explicit", emitted_at=T0)], now_ms=T0 + 2)
    # Pruned an hour (REREAD_MARGIN_MS) past T0 + 2: the bound kept for re-reads is T0 + 2.
    assert await prune_round(store, settled_before_ms=T0 + 2 + REREAD_MARGIN_MS) == 1
    assert await prune_round(store, settled_before_ms=T0 - MINUTE) == 0  # never lowers it
    await store.close()
    await store.open()
    out = await store.apply([null], now_ms=T0 + 3)
    assert (out.markers, out.receipts, out.deleted) == ([], [], 0)
    assert await store.marker(gone) is None
    page = await store.sweep(cutoff_ms=T0 + 60 * MINUTE, now_ms=T0 + 60 * MINUTE)
    assert page.plan.receipts == []
    assert [(r.identity, r.reason, r.rows_deleted) for r in await store.receipts()] == [
        (gone, "explicit", 0)
    ]
    await store.apply([NullChange(fresh, 0, 2, "explicit", T0 + 3, STAMPED)], now_ms=T0 + 4)
    marker = await store.marker(fresh)
    assert marker is not None
    assert [(p.rowless, p.reason) for p in marker.pending] == [(True, "explicit")]
    page = await store.sweep(cutoff_ms=T0 + 60 * MINUTE, now_ms=T0 + 60 * MINUTE)
    assert [(r.identity, r.reason, r.rows_deleted) for r in page.plan.receipts] == [
        (fresh, "explicit", 0)
    ]


def dated(change: Change, at: int | None) -> TombstoneChange:
    """A tombstone event with the Kafka timestamp it was read with."""
    assert isinstance(change, TombstoneChange)
    return replace(change, timestamp=at)


@pytest.mark.asyncio
@pytest.mark.parametrize("parallel", [1, 3], ids=["one", "parallel"])
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_tombstone_read_again_after_its_marker_is_forgotten_leaves_no_second_receipt(
    store: Store, parallel: int
) -> None:
    """Erasures of records the store never held, and a ttl tombstone of a row it held,
    each dated by the service: one receipt each (rows_deleted 0, and 1); the markers
    forgotten; the store reopened and ``expiry.tombstones`` read again (a rewound group).
    The store keeps the pruning's bound: the tombstones are dated before it, were read
    before, and leave no second receipt, whether a batch holds them alone (``take``) or
    with other changes of their records, in one transaction or split into several. An
    erasure dated after the bound, or with no timestamp, is read for the first time: on
    record. Enough erasures that a batch of them is split (PostgreSQL: connections)."""
    store.parallel = parallel
    unseen = [Stamp(ident(f"erased-{n}"), None, None, None, None) for n in range(240)]
    erasures = [dated(kill(s, "explicit", emitted_at=T0), T0) for s in unseen]
    held = stamp(ident("held"))
    assert held.expires_at is not None
    expiry = dated(kill(held), held.expires_at)
    await store.apply([put(held, offset=1)], now_ms=T0)
    out = await store.apply([*erasures, expiry], now_ms=held.expires_at)
    assert sorted(r.rows_deleted for r in out.receipts) == [0] * 240 + [1]
    # Pruned an hour (REREAD_MARGIN_MS) past the expiry: the bound kept for re-reads is it.
    bound = held.expires_at + REREAD_MARGIN_MS
    assert await prune_round(store, settled_before_ms=bound, limit=100) == 241
    await store.close()
    await store.open()
    # Read again: each alone in the batch (taken), then, the markers this wrote forgotten
    # too, each twice in a batch (read whole, not taken).
    out = await store.apply([*erasures, expiry], now_ms=held.expires_at + 1)
    assert (out.receipts, out.deleted) == ([], 0)
    assert await store.marker(unseen[0].identity) is not None  # as the first reading left it
    assert await prune_round(store, settled_before_ms=bound + 1, limit=100) == 241
    out = await store.apply([*erasures, *erasures, expiry, expiry], now_ms=held.expires_at + 2)
    assert (out.receipts, out.deleted) == ([], 0)
    assert len(await store.receipts()) == 241
    # First readings: dated after the bound, or with no timestamp.
    fresh = [Stamp(ident(f"fresh-{n}"), None, None, None, None) for n in range(2)]
    later = [
        dated(kill(fresh[0], "explicit", emitted_at=T0), held.expires_at + 2),
        dated(kill(fresh[1], "explicit", emitted_at=T0), None),
    ]
    out = await store.apply([*later, *erasures], now_ms=held.expires_at + 3)
    assert sorted((r.identity.record_id, r.rows_deleted) for r in out.receipts) == [
        ("fresh-0", 0), ("fresh-1", 0),
    ]  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_topic_the_pruning_never_covered_is_read_for_the_first_time(
    store: Store,
) -> None:
    """The store pruned while its sink read ``expiry.tombstones`` and ``expiry.stamped``
    (partition 0 of each); then its sink is pointed at other topics (a copy of the
    service's tombstones, say, whose messages keep the dates they were written at), or
    reads a partition its pruning's read-complete time did not cover. Their erasures,
    dated long before the bound, were never read by this store: each tombstone is on
    record (rows_deleted 0) and each null waits for its tombstone event. Under one bound
    for the whole store they were taken for re-reads: no receipt, and no deletion
    waiting. The same erasure from the topic the pruning covered is a re-read, as before.
    Once a pruning covers the new topic, its messages read again are re-reads too; the
    bounds are kept across a reopening."""
    mirror, mirror_stamped = f"{TOMBS}.mirror", f"{STAMPED}.mirror"
    bound = T0 + 60 * MINUTE  # kept for re-reads: an hour below the pruning's own
    assert await prune_round(store, settled_before_ms=bound + REREAD_MARGIN_MS) == 0
    await store.close()
    await store.open()
    unseen = [Stamp(ident(f"copied-{n}"), None, None, None, None) for n in range(3)]
    copied = [dated(kill(s, "explicit", emitted_at=T0, topic=mirror), T0) for s in unseen[:2]]
    other_partition = replace(dated(kill(unseen[2], "explicit", emitted_at=T0), T0), partition=1)
    reread = dated(kill(Stamp(ident("read-before"), None, None, None, None), "explicit"), T0)
    nulled = ident("copied-null")
    null = NullChange(nulled, 0, 1, "explicit", T0, mirror_stamped)
    out = await store.apply([*copied, other_partition, reread, null], now_ms=bound + 1)
    assert sorted((r.identity.record_id, r.reason, r.rows_deleted) for r in out.receipts) == [
        ("copied-0", "explicit", 0), ("copied-1", "explicit", 0), ("copied-2", "explicit", 0),
    ]  # fmt: skip
    marker = await store.marker(nulled)
    assert marker is not None
    assert [(p.rowless, p.reason) for p in marker.pending] == [(True, "explicit")]
    # A pruning whose read-complete time covers the new topics: the markers go, and their
    # messages read again are re-reads.
    await store.apply([dated(kill(Stamp(nulled, None, None, None, None), "explicit",
                                  emitted_at=T0, topic=mirror), T0)], now_ms=bound + 2)  # fmt: skip
    again = bound + 3 + REREAD_MARGIN_MS
    over = [(mirror, 0), (mirror_stamped, 0), (TOMBS, 1)]
    assert await prune_round(store, settled_before_ms=again, read_over=over) == 5
    await store.close()
    await store.open()
    out = await store.apply([*copied, other_partition, null], now_ms=again + 1)
    assert (out.receipts, out.deleted) == ([], 0)
    marker = await store.marker(nulled)
    assert marker is None or marker.pending == ()
    assert len(await store.receipts()) == 4


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_an_erasure_read_again_leaves_the_records_next_life_and_no_second_receipt(
    store: Store,
) -> None:
    """A record erased (its null, then its tombstone event with the service's
    ``expiry-deleted-at``), created again (a new life's row), its marker forgotten; then
    both topics are read again (a rewound group), the whole of ``expiry.stamped`` (the old
    stamp and null not yet compacted away) or the tombstone alone. The erasure ends the
    lives created at or before its time, never the next one: the new life's row stays as
    it was, and the old deletion keeps its one receipt."""
    first, erased_at = stamp(ident("again")), T0 + MINUTE
    nxt = stamp(first.identity, created_at=T0 + 2 * MINUTE)
    null = NullChange(first.identity, 0, 2, "explicit", erased_at, STAMPED)
    # Emitted after the next life's creation (the erasure waited in a backlog): only its
    # deletion time tells that life from the erased one.
    emitted = T0 + 3 * MINUTE
    erasure = replace(
        dated(kill(first, "explicit", emitted_at=emitted), emitted), deleted_at=erased_at
    )
    topic: list[Change] = [put(first, {"v": 1}, offset=1), null, put(nxt, {"v": 2}, offset=3)]
    await store.apply(topic[:2], now_ms=erased_at)
    await store.apply([erasure], now_ms=erased_at + 1)
    await store.apply(topic[2:], now_ms=erased_at + 2)
    assert first.expires_at is not None
    settled = first.expires_at + REREAD_MARGIN_MS  # the erased life would have expired
    assert await prune_round(store, settled_before_ms=settled) == 1
    rereads: list[list[list[Change]]] = [
        [[erasure]], [topic, [erasure]], [[*topic, erasure]], [[erasure, *topic]],
    ]  # fmt: skip
    for batches in rereads:
        for batch in batches:
            out = await store.apply(batch, now_ms=settled + 1)
            assert (out.receipts, out.deleted) == ([], 0)
        row = await store.get(nxt.identity)
        assert row is not None
        assert (row.created_at, row.data) == (nxt.created_at, '{"v":2}')
    assert [(r.reason, r.rows_deleted, r.created_at) for r in await store.receipts()] == [
        ("explicit", 1, first.created_at)
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_store_with_one_pruning_bound_drops_it_when_opened(store: Store) -> None:
    """Earlier versions kept one bound for the whole store (``pruned``: one row, ``id``
    1), which did not say which topics its read-complete time covered. Reopened, the store
    drops it: a tombstone dated before it is read for the first time (on record), until
    a pruning keeps a bound per partition again."""
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    if store.__class__.__name__ == "SQLiteStore":
        pruned = f"{store.prefix}pruned"  # type: ignore[attr-defined]
    else:
        pruned = store._n.pruned  # type: ignore[attr-defined]
    await conn.execute(f"DROP TABLE {pruned}")
    await conn.execute(
        f"CREATE TABLE {pruned} (id integer PRIMARY KEY CHECK (id = 1), "
        "settled_before bigint NOT NULL)"
    )
    await conn.execute(f"INSERT INTO {pruned} (id, settled_before) VALUES (1, {T0 + MINUTE})")
    if store.__class__.__name__ == "SQLiteStore":
        await conn.commit()
    await store.close()
    await store.open()
    erasure = dated(kill(Stamp(ident("erased"), None, None, None, None), "explicit"), T0)
    out = await store.apply([erasure], now_ms=T0 + 2 * MINUTE)
    assert [(r.reason, r.rows_deleted) for r in out.receipts] == [("explicit", 0)]
    assert await prune_round(store, settled_before_ms=T0 + 2 * MINUTE + REREAD_MARGIN_MS) == 1
    out = await store.apply([erasure], now_ms=T0 + 3 * MINUTE)
    assert out.receipts == []


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_late_stamp_of_a_forgotten_life_is_due_at_once_or_lives_as_the_service_has_it(
    store: Store,
) -> None:
    """Within the grace a late stamp of a deleted life is not written. After it, a life
    that had an expiry is a grace past it: written again, the sweep deletes it a grace
    after its writing, when the service's tombstone (which follows each stamp of a due
    life) has not come by then. A life
    that never expires is taken as live, as the service takes a re-delivered create a
    grace after its erasure: the store holds what the service holds."""
    grace = 7 * 24 * 60 * MINUTE
    expiring = stamp(ident("expiring"))
    forever = stamp(ident("forever", category="contact_profile"), ttl_ms=None)
    await store.apply([put(expiring, offset=0), put(forever, offset=1)], now_ms=T0)
    await store.apply([kill(expiring), kill(forever, "explicit", emitted_at=T0 + 1)], now_ms=T0 + 2)
    within = await store.apply([put(expiring, offset=2), put(forever, offset=3)], now_ms=T0 + grace)
    assert (within.stale, within.written) == (2, 0)
    settled = T0 + 10 * MINUTE  # the expiring life's expiry, later than both deletions
    now = settled + grace  # what the sink has read
    assert await prune_round(store, settled_before_ms=T0 + 1) == 0  # both deleted at T0 + 2
    assert await prune_round(store, settled_before_ms=now - grace) == 2
    after = await store.apply([put(expiring, offset=4), put(forever, offset=5)], now_ms=now)
    assert (after.stale, after.written) == (0, 2)
    written_now = await store.sweep(cutoff_ms=now - MINUTE, now_ms=now, limit=10)
    assert written_now.plan.receipts == []  # written within the sweep's grace: not yet
    page = await store.sweep(cutoff_ms=now, now_ms=now + MINUTE, limit=10)
    assert [(r.identity, r.reason) for r in page.plan.receipts] == [(expiring.identity, "sweep")]
    assert await store.get(expiring.identity) is None
    assert await store.get(forever.identity) is not None


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_the_deletions_table_falls_back_to_what_live_records_need(store: Store) -> None:
    """Many creates and deletions, in every order, then pruning with a short grace: of a
    marker per record (three deleted lives each), what is left is the markers settled
    within the grace and those still waiting for their tombstone event; rows and receipts
    are untouched."""
    rng = random.Random(20260301)
    ids = [ident(f"n{n}", org=rng.choice(["a", "b"])) for n in range(300)]
    offset = 0
    for lives in range(4):
        created = T0 + lives * 30 * MINUTE
        lifes = [stamp(i, created_at=created, ttl_ms=rng.randint(1, 20) * MINUTE) for i in ids]
        await store.apply([put(s, offset=offset + n) for n, s in enumerate(lifes)], now_ms=created)
        offset += len(lifes)
        if lives == 3:
            break  # the last lives live on, for now
        batch: list[Change] = []
        for s in lifes:
            roll = rng.random()
            if roll < 0.4:
                batch.append(kill(s))
            elif roll < 0.8:
                batch += [
                    NullChange(s.identity, 0, offset),
                    kill(s, "explicit", emitted_at=created),
                ]
                offset += 1
            else:  # the tombstone first, its null after it
                batch += [kill(s), NullChange(s.identity, 0, offset)]
                offset += 1
        await store.apply(batch, now_ms=created + 25 * MINUTE)  # settled by then
    assert await store.count_markers() == len(ids)
    # Later, some of the last lives are erased, and some deleted by a null alone.
    shuffled = rng.sample(ids, len(ids))
    recent, waiting = shuffled[:30], shuffled[30:60]
    later = T0 + 150 * MINUTE
    last = stamp(ids[0], created_at=T0 + 90 * MINUTE)  # any: an erasure names no life here
    erasures = [kill(last._replace(identity=i), "explicit", emitted_at=later) for i in recent]
    nulls = [NullChange(i, 0, offset + n) for n, i in enumerate(waiting)]
    await store.apply([*erasures, *nulls], now_ms=later)
    receipts = len(await store.receipts())
    grace = 60 * MINUTE
    read_to = T0 + 200 * MINUTE  # what the sink has read: the history is a grace behind
    gone = await prune_round(store, settled_before_ms=read_to - grace, limit=64)
    assert gone == len(ids) - len(recent) - len(waiting)
    assert await store.count_markers() == len(recent) + len(waiting)
    assert all([await store.marker(i) is not None for i in recent + waiting])
    assert await store.count() == len(ids) - len(recent) - len(waiting)
    assert len(await store.receipts()) == receipts


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_receipts_are_an_outbox_until_published(store: Store) -> None:
    stamps = [stamp(ident(f"o{n}")) for n in range(3)]
    await store.apply([put(s) for s in stamps] + [kill(s) for s in stamps], now_ms=T0)
    pending = await store.pending_receipts()
    assert len(pending) == 3
    await store.mark_published([pending[0].receipt_id], now_ms=T0 + 1)
    assert [r.receipt_id for r in await store.pending_receipts()] == [
        r.receipt_id for r in pending[1:]
    ]
    await store.mark_published([r.receipt_id for r in pending], now_ms=T0 + 2)
    assert await store.pending_receipts() == []
    assert len(await store.receipts()) == 3  # published, still kept


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_receipts_are_append_only_in_the_database(store: Store) -> None:
    s = stamp(ident("evidence"))
    await store.apply([put(s), kill(s)], now_ms=T0)
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    table = "receipts"
    if store.__class__.__name__ == "SQLiteStore":
        name = f"{store.prefix}{table}"  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(f"UPDATE {name} SET reason = 'sweep'")
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(f"DELETE FROM {name}")
    else:
        name = store._n.receipts  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(f"UPDATE {name} SET reason = 'sweep'")
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(f"DELETE FROM {name}")
        with pytest.raises(Exception, match="append-only"):
            await conn.execute(f"TRUNCATE {name} CASCADE")  # no row trigger sees it
    assert [r.reason for r in await store.receipts()] == ["ttl"]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_failed_batch_leaves_nothing_behind(store: Store) -> None:
    gone, kept = stamp(ident("gone")), stamp(ident("kept"))
    await store.apply([put(gone), put(kept), kill(gone)], now_ms=T0)
    [existing] = await store.receipts()
    clash = replace(existing, identity=kept.identity)  # same receipt_id: UNIQUE fails
    with pytest.raises(StoreError):  # noqa: PT012  (the transaction is what is tested)
        async with store.transaction() as tx:
            await tx.write(Plan(deletes=[kept.identity]))
            await tx.write(Plan(receipts=[clash]))
    assert await store.get(kept.identity) is not None  # the delete was rolled back
    assert len(await store.receipts()) == 1
    await store.apply([kill(kept)], now_ms=T0 + 1)  # and the store still works
    assert await store.get(kept.identity) is None


class PlainMemoryStore(MemoryStore):
    """The reference without the shortcut: every identity's row and marker loaded whole,
    then planned, then written (what :meth:`Store.apply` did before ``take``)."""

    async def apply(
        self,
        changes: Sequence[Change],
        *,
        now_ms: int,
        published: Sequence[str] = (),
        living: bool = False,
    ) -> Plan:
        del living  # plan() sees every row here, so its Plan.living is complete
        idents = list(dict.fromkeys(c.identity for c in changes))
        async with self.transaction() as tx:
            state = await tx.load(idents) if idents else {}
            out = plan(changes, state, store=self.name, now_ms=now_ms, new_id=self._new_id)
            await tx.write(out)
            if published:
                await tx.mark_published(published, now_ms)
        return out


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_lone_tombstone_deletes_only_the_life_it_ends(store: Store) -> None:
    """A batch's lone tombstones are read and deleted in one step (``take``): a newer life
    stays with its data, a row of unknown life goes, each as the plain path decides."""
    reference = PlainMemoryStore(name=store.name)
    newer, unknown, old, absent = ident("newer"), ident("unknown"), ident("old"), ident("none")
    ended = stamp(newer)  # the life the tombstone ends (created at T0, expired T0 + 10 min)
    writes = [
        put(stamp(newer, created_at=T0 + 20 * MINUTE), {"keep": 1}, offset=1),
        put(stamp(unknown)._replace(created_at=None), {"n": 2}, offset=2),
        put(stamp(old), {"n": 3}, offset=3),
    ]
    kills = [
        kill(ended),
        kill(stamp(unknown)._replace(created_at=None)),
        kill(stamp(old)),
        kill(stamp(absent)),
    ]
    for s in (store, reference):
        await s.apply(writes, now_ms=T0)
    a = await store.apply(kills, now_ms=T0 + 30 * MINUTE)
    b = await reference.apply(kills, now_ms=T0 + 30 * MINUTE)
    assert (a.deleted, a.written, a.stale) == (b.deleted, b.written, b.stale) == (2, 0, 0)
    got = sorted((r.identity.record_id, r.rows_deleted, r.created_at) for r in a.receipts)
    assert got == sorted((r.identity.record_id, r.rows_deleted, r.created_at) for r in b.receipts)
    assert got == [("newer", 0, T0), ("none", 0, T0), ("old", 1, T0), ("unknown", 1, None)]
    for i in (newer, unknown, old, absent):
        assert await store.get(i) == await reference.get(i), i
        assert await store.marker(i) == await reference.marker(i), i
    kept = await store.get(newer)
    assert kept is not None
    assert kept.data == '{"keep":1}'  # read without its data, never written back


def expired(s: Stamp) -> Change:
    """The ``ttl`` tombstone of ``s`` as the service sends it: its ``expiry-deleted-at`` a
    millisecond before the expiry."""
    key, value = tombstone_msg(s)
    assert s.expires_at is not None
    headers = [(H_DELETED_AT, b"%d" % (s.expires_at - 1))]
    return decode_tombstone(key, value, headers, topic=TOMBS, partition=0)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
async def test_a_ttl_tombstone_ends_its_lifes_stamps_from_before_a_move_never_the_next_life(
    store: Store,
) -> None:
    """A ``ttl`` tombstone read alone (``take``: PostgreSQL's ``DELETE ... RETURNING``)
    deletes its life's row written from a stamp before a create moved the life's creation
    back (created after the tombstone's ``created_at``, before its expiry), and leaves the
    next life begun after an erasure read late (created before that expiry, its
    ``previous_deleted_at`` at or after the ended life's creation). Read before the
    stamps, its marker keeps the moved life's out and lets the next life's in. As the
    plain path decides; the rows and markers read back as written."""
    reference = PlainMemoryStore(name=store.name)
    moved, nxt, first = ident("moved"), ident("next"), ident("tombstone-first")
    after_erasure = T0 + MINUTE  # an erasure within the first life, read after its expiry

    def next_life(i: Identity) -> Stamp:
        return stamp(i, created_at=T0 + 2 * MINUTE)._replace(previous_deleted_at=after_erasure)

    writes = [put(stamp(moved, created_at=T0 + MINUTE), {"n": 1}, offset=1)]
    writes.append(put(next_life(nxt), {"keep": 1}, offset=2))
    later = [
        put(stamp(first, created_at=T0 + MINUTE), {"n": 3}, offset=3),
        put(stamp(first), {"n": 4}, offset=4),
        put(next_life(first), {"keep": 2}, offset=5),
    ]
    kills = [expired(stamp(i)) for i in (moved, nxt, first)]
    plans = []
    for s in (store, reference):
        await s.apply(writes, now_ms=T0)
        plans.append(await s.apply(kills, now_ms=T0 + 11 * MINUTE))
        plans.append(await s.apply(later, now_ms=T0 + 12 * MINUTE))
    for a, b in ((plans[0], plans[2]), (plans[1], plans[3])):
        assert (a.deleted, a.written, a.stale) == (b.deleted, b.written, b.stale)
    assert (plans[0].deleted, plans[1].written, plans[1].stale) == (1, 1, 2)
    got = sorted((r.identity.record_id, r.rows_deleted, r.created_at) for r in plans[0].receipts)
    assert got == [("moved", 1, T0), ("next", 0, T0), ("tombstone-first", 0, T0)]
    for i in (moved, nxt, first):
        assert await store.get(i) == await reference.get(i), i
        assert await store.marker(i) == await reference.marker(i), i
    for i in (nxt, first):
        row = await store.get(i)
        assert row is not None
        assert (row.created_at, row.previous_deleted_at) == (T0 + 2 * MINUTE, after_erasure)
    marker = await store.marker(first)
    assert marker is not None
    assert (marker.ttl_before, marker.ttl_floor) == (T0 + 10 * MINUTE, T0)


def erasure_headers(d: int, first: int | None = None) -> list[tuple[str, bytes]]:
    """What the service says on an erasure's tombstone event and its null, requested and
    ending at ``d``: its time (``expiry-deleted-at``), when it was requested
    (``expiry-erasure-requested-at``), where its request was read
    (``expiry-erasure-read-at``) and, of a life a create read late moved back, the
    creation its first stamp said (``expiry-first-created-at``, ``first``)."""
    headers = [(H_DELETED_AT, b"%d" % d), (H_ERASURE_REQUESTED_AT, b"%d" % d)]
    headers.append((H_ERASURE_READ_AT, b"1041"))
    return headers if first is None else [*headers, (H_FIRST_CREATED_AT, b"%d" % first)]


def erased_at(s: Stamp, d: int, first: int | None = None) -> Change:
    """The erasure's tombstone of ``s`` at ``d`` as the service sends it
    (:func:`erasure_headers`)."""
    key, value = tombstone_msg(s, reason="explicit", emitted_at=d + 1)
    return decode_tombstone(key, value, erasure_headers(d, first), topic=TOMBS, partition=0)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
@pytest.mark.parametrize("order", ["tombstone-between", "tombstone-first", "null-then-rewind"])
async def test_an_erasure_ends_its_lifes_stamps_from_before_a_move_read_in_any_order(
    store: Store, order: str
) -> None:
    """A life created at T0 (ttl 10 min) whose create was read after one dated T0 + 1 min
    (engine._backdate: that one's stamp first), erased at T0 + 30 s, before that first
    stamp's creation. Its tombstone's bound (the erasure's time) does not reach that
    stamp: read between the two stamps it left the row of T0 + 1 min to the null (a
    receipt of nothing, a deletion left waiting), read first it let that stamp in; and
    with the null read first, the first stamp read again (a rewound group) came back, and
    the null read again left a second deletion waiting. Now the tombstone's window (up to
    that first stamp's creation, its ``expiry-first-created-at``; its own creation) and
    the null's keep the life's stamps out; the next life, begun after the erasure
    (``previous_deleted_at`` its time), is written. As the plain path decides, on every
    store."""
    reference = PlainMemoryStore(name=store.name)
    i = ident("moved-erased")
    d = T0 + 30_000
    life = stamp(i)
    first = put(stamp(i, created_at=T0 + MINUTE), {"n": 9}, offset=1)
    own = put(life, {"n": 0}, offset=2)
    null = decode_stamped(
        i.key.encode(), None, partition=0, offset=3,
        headers=[("expiry-reason", b"explicit"), *erasure_headers(d, T0 + MINUTE)], topic=STAMPED,
    )  # fmt: skip
    nxt = put(
        stamp(i, created_at=T0 + 2 * MINUTE)._replace(previous_deleted_at=d), {"keep": 1}, offset=4
    )
    t = erased_at(life, d, T0 + MINUTE)
    batches: list[list[Change]] = {
        "tombstone-between": [[first], [t], [own, null], [first, own, null], [nxt]],
        "tombstone-first": [[t], [first, own, null], [nxt], [first, own, null, nxt]],
        "null-then-rewind": [[first, own, null], [first, own, null], [t], [nxt], [first]],
    }[order]
    for s in (store, reference):
        for n, b in enumerate(batches):
            await s.apply(b, now_ms=T0 + 3 * MINUTE + n)
    got = [(r.reason, r.rows_deleted, r.created_at) for r in await store.receipts()]
    # Read first, the tombstone found no row: none of the life's was ever written.
    assert got == [("explicit", 0 if order == "tombstone-first" else 1, T0)]
    assert [(r.reason, r.rows_deleted, r.created_at) for r in await reference.receipts()] == got
    row = await store.get(i)
    assert row is not None
    assert (row.created_at, row.data) == (T0 + 2 * MINUTE, '{"keep":1}')
    assert row == await reference.get(i)
    marker = await store.marker(i)
    assert marker is not None
    assert marker.pending == ()
    assert (marker.last_life, marker.ttl_before, marker.ttl_floor) == (T0, T0 + MINUTE + 1, T0)
    assert marker == await reference.marker(i)


@pytest.fixture(scope="module")
def held_erasure() -> tuple[list[Change], list[Change]]:
    """:func:`held_erasure_messages`, made once (by the processor and the outbox, outside
    the tests' event loop)."""
    stamped, tombstones = held_erasure_messages()
    return list(stamped), list(tombstones)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
@pytest.mark.parametrize("stamps_before", [0, 1, 4], ids=["first", "between", "last"])
async def test_a_moved_back_life_erased_under_a_hold_leaves_nothing_in_any_store(
    store: Store, stamps_before: int, held_erasure: tuple[list[Change], list[Change]]
) -> None:
    """The service's own messages for a life moved back (created 5 s, a create of 1 s read
    late), erased at 3 s under a legal hold and released
    (tests/unit/test_held_erasure_read_at.py), one a batch, the release's tombstone read
    after ``stamps_before`` of the four on ``expiry.stamped``. The release says where the
    erasure was read now, so its window keeps the stamp of 5 s out: no row is left and
    nothing waits. Without it, read first or between the two creates' stamps, the null
    deleted that stamp's row and its deletion waited for a tombstone that had come."""
    stamped, (tombstone,) = held_erasure
    order: list[Change] = [*stamped[:stamps_before], tombstone, *stamped[stamps_before:]]
    reference = PlainMemoryStore(name=store.name)
    for s in (store, reference):
        for n, change in enumerate(order):
            await s.apply([change], now_ms=HELD_AT + 22_000 + n)
    assert await store.get(HELD) is None
    got = [(r.reason, r.created_at) for r in await store.receipts()]
    assert got == [("explicit", HELD_AT + 1_000)]
    marker = await store.marker(HELD)
    assert marker is not None
    assert marker.pending == ()
    assert marker == await reference.marker(HELD)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
@pytest.mark.parametrize("order", ["tombstone-first", "null-first", "tombstone-last"])
@pytest.mark.parametrize("moved", [False, True], ids=["created-once", "moved-back"])
async def test_a_record_created_again_after_the_services_marker_went_is_written(
    store: Store, order: str, moved: bool
) -> None:
    """A life with a TTL longer than the markers' grace (30 days; 7 by default), erased a
    minute after its creation (``expiry-erasure-read-at``, requested at ``d``), or the same
    life moved back by a create read late from its first stamp at ``d`` + 1 min. The
    service forgets its marker a grace after the erased life's expiry; a create of the
    record dated before that expiry (10 days after the erasure) read after it starts a new
    life, its stamp saying no ``previous_deleted_at``. This store, its own marker not yet
    pruned (it prunes after the service: its grace counts from when it deleted and how far
    it has read), must write that life: it is live in the service. The erasure's window
    reached to the erased life's expiry and took the new stamp for a late one of the
    erased life: not written (``stale``), and, read after it, the tombstone deleted its
    row; the record's data was missing from the store for the rest of that life. The
    window ends after the erased life's stamps, at the creation its first stamp said:
    the moved-back life's first stamp still goes with it."""
    i = ident("again-unremembered")
    ttl = 30 * 24 * 60 * MINUTE
    d = T0 + MINUTE
    life = stamp(i, ttl_ms=ttl)
    first = T0 + 2 * MINUTE if moved else None
    stamps = [put(life, {"v": 1}, offset=2)]
    if first is not None:
        stamps.insert(0, put(stamp(i, created_at=first, ttl_ms=ttl), {"v": 0}, offset=1))
    null = decode_stamped(
        i.key.encode(), None, partition=0, offset=3,
        headers=[("expiry-reason", b"explicit"), *erasure_headers(d, first)], topic=STAMPED,
    )  # fmt: skip
    t = erased_at(life, d, first)
    assert isinstance(t, TombstoneChange)
    assert t.requested_at == d
    created = d + 10 * 24 * 60 * MINUTE
    assert life.expires_at is not None
    assert created < life.expires_at
    again = put(stamp(i, created_at=created, ttl_ms=ttl), {"v": 2}, offset=4)
    orders: dict[str, list[list[Change]]] = {
        "tombstone-first": [[*stamps], [t], [null], [again]],
        "null-first": [[*stamps, null], [t], [again]],
        "tombstone-last": [[*stamps, null], [again], [t]],
    }
    plans = [await store.apply(b, now_ms=created + n) for n, b in enumerate(orders[order])]
    assert (sum(p.written for p in plans), sum(p.stale for p in plans)) == (len(stamps) + 1, 0)
    row = await store.get(i)
    assert row is not None
    assert (row.created_at, row.previous_deleted_at, row.data) == (created, None, '{"v":2}')
    got = [(r.reason, r.rows_deleted, r.created_at) for r in await store.receipts()]
    assert got == [("explicit", 1, T0)]
    # The erased life's own stamps, read again (a rewound group), stay out.
    out = await store.apply(stamps, now_ms=created + 10)
    assert (out.written, out.stale) == (0, len(stamps))
    row = await store.get(i)
    assert row is not None
    assert row.created_at == created


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
@pytest.mark.parametrize("order", ["tombstone-between", "tombstone-after"])
async def test_a_held_lifes_tombstone_names_its_life_not_its_stamp_from_before_a_move(
    store: Store, order: str
) -> None:
    """A held life's ``ttl`` tombstone (no header: its bound is the expiry) deleting the
    row of the life's stamp from before a create moved its creation back named that
    stamp's creation as the marker's ``last_life`` (read after the life's own stamp: the
    life's): the marker depended on the order read. The row's ``previous_deleted_at``
    (none, or before the tombstone's ``created_at``) says it is the tombstone's life."""
    reference = PlainMemoryStore(name=store.name)
    i = ident("moved-held")
    life = stamp(i)
    first = put(stamp(i, created_at=T0 + MINUTE), {"n": 9}, offset=1)
    own = put(life, {"n": 0}, offset=2)
    key, value = tombstone_msg(life)
    t = decode_tombstone(key, value, [], topic=TOMBS, partition=0)
    batches: list[list[Change]] = (
        [[first], [t], [own]] if order == "tombstone-between" else [[first, own], [t]]
    )
    for s in (store, reference):
        for n, b in enumerate(batches):
            await s.apply(b, now_ms=T0 + 11 * MINUTE + n)
    assert await store.get(i) is None
    got = [(r.reason, r.rows_deleted, r.created_at) for r in await store.receipts()]
    assert got == [("ttl", 1, T0)]
    marker = await store.marker(i)
    assert marker is not None
    assert (marker.deleted_before, marker.last_life) == (T0 + 10 * MINUTE, T0)
    assert marker == await reference.marker(i)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["postgres"]), indirect=True)
async def test_postgres_keys_compare_bytewise(store: Store) -> None:
    """The indexed text columns use the "C" collation: compared with memcmp, not the
    database's locale (which halved the rate of writing stamps), and in the byte order
    the sweep sorts by."""
    assert isinstance(store, PostgresStore)
    rows = await store._fetch(
        "SELECT table_name, column_name, collation_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND column_name = ANY($2::text[])",
        store.schema,
        ["org", "bot", "env", "category", "record_id", "receipt_id"],
    )
    collations = {(r[0].removeprefix(store.prefix), r[1]): r[2] for r in rows}
    keyed = {
        (t, c): "C"
        for t in ("records", "held_lives", "deletions")
        for c in ("org", "bot", "env", "category", "record_id")
    }
    assert {k: v for k, v in collations.items() if k[0] != "receipts"} == keyed
    assert collations[("receipts", "receipt_id")] == "C"


async def _random_batches_match_the_reference(
    store: Store, ids: list[Identity], rng: random.Random, *, steps: int, sizes: tuple[int, int]
) -> None:
    """Random stamps, tombstones, nulls (and, every 7th batch, sweeps) in random batches of
    ``sizes``: each batch's counts and the end state as the plain path's (no ``take``,
    every row loaded with its data)."""
    reference = PlainMemoryStore(name=store.name)
    offset = 0
    for step in range(steps):
        batch: list[Change] = []
        for _ in range(rng.randint(*sizes)):
            i = rng.choice(ids)
            s = stamp(
                i, created_at=T0 + rng.randint(0, 20) * MINUTE, ttl_ms=rng.randint(1, 30) * MINUTE
            )
            roll = rng.random()
            if roll < 0.15:  # a next life, naming one a hold keeps: mostly the row's
                row = reference.rows.get(i)
                held = row.created_at if row is not None else None
                earlier = stamp(i, created_at=T0 - MINUTE if held is None else held)
                batch.append(put(held_by(s, earlier), {"n": step}, offset=offset))
                offset += 1
            elif roll < 0.5:
                batch.append(put(s, rng.choice([None, {"n": step}]), offset=offset))
                offset += 1
            elif roll < 0.8:
                batch.append(kill(s, reason=rng.choice(["ttl", "explicit"])))
            else:
                batch.append(NullChange(i, 0, offset))
                offset += 1
        now = T0 + step * MINUTE
        a = await store.apply(batch, now_ms=now)
        b = await reference.apply(batch, now_ms=now)
        assert (a.written, a.deleted, a.stale, len(a.receipts)) == (
            b.written, b.deleted, b.stale, len(b.receipts),
        ), step  # fmt: skip
        if step % 7 == 6:
            x = await store.sweep(cutoff_ms=now, now_ms=now, limit=5)
            y = await reference.sweep(cutoff_ms=now, now_ms=now, limit=5)
            assert [r.identity for r in x.plan.receipts] == [r.identity for r in y.plan.receipts]
            assert x.next_from == y.next_from
        if step % 5 == 4:  # forget what settled a few minutes ago, as the memory store does
            bound = now - 3 * MINUTE
            assert await prune_round(store, settled_before_ms=bound, limit=7) == (
                await prune_round(reference, settled_before_ms=bound, limit=7)
            ), step
    for i in ids:
        assert await store.get(i) == await reference.get(i), i
        assert await store.marker(i) == await reference.marker(i), i
        assert await store.held_lives(i) == await reference.held_lives(i), i
    assert await store.count() == await reference.count()
    assert await store.count_markers() == await reference.count_markers()
    assert len(await store.receipts()) == len(await reference.receipts())


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_random_batches_match_the_memory_reference(store: Store) -> None:
    rng = random.Random(20260101)
    ids = [ident(f"k{n}", org=rng.choice(["a", "b", "a'b"])) for n in range(40)]
    await _random_batches_match_the_reference(store, ids, rng, steps=30, sizes=(1, 60))


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["memory", "postgres"]), indirect=True)
async def test_batches_split_into_parallel_transactions_match_the_reference(
    store: Store,
) -> None:
    """Large random batches, each split into three transactions at once (on PostgreSQL,
    three connections): the end state of one transaction per batch, and no transaction
    waits for another's locks (no deadlock)."""
    store.parallel = 3
    rng = random.Random(20261201)
    ids = [ident(f"p{n}", org=rng.choice(["a", "b"])) for n in range(400)]
    await _random_batches_match_the_reference(store, ids, rng, steps=8, sizes=(300, 900))


@pytest.mark.asyncio
@pytest.mark.postgres
async def test_postgres_cannot_hold_nul_and_says_so(tmp_path: Path) -> None:
    async with open_store("postgres", tmp_path) as store:
        assert not store.holds(Identity("o", "_", "live", "conversation", "a\x00b"))
        assert store.holds(ident("fine"))
    async with open_store("sqlite", tmp_path) as lite:
        nul = ident("a\x00b")
        assert lite.holds(nul)
        # Deleted, marked and published like any other, and never confused with "a".
        await lite.apply([put(stamp(nul)), put(stamp(ident("a")))], now_ms=T0)
        row = await lite.get(nul)
        assert row is not None
        assert row.identity == nul
        assert await lite.get(ident("a")) is not None  # not the same record as "a\x00b"
        out = await lite.apply([kill(stamp(nul))], now_ms=T0 + 1)
        assert (out.deleted, [r.identity for r in out.receipts]) == (1, [nul])
        assert await lite.get(nul) is None
        assert await lite.get(ident("a")) is not None
        marker = await lite.marker(nul)
        assert marker is not None
        assert marker.identity == nul
        await lite.apply([], now_ms=T0 + 2, published=[out.receipts[0].receipt_id])
        assert await lite.pending_receipts() == []


def _incompressible(chars: int, seed: int) -> str:
    """Random CJK characters (3 bytes of UTF-8 each), which PostgreSQL cannot compress."""
    rnd = random.Random(seed)
    return "".join(chr(rnd.randint(0x4E00, 0x9FFF)) for _ in range(chars))


@pytest.mark.asyncio
@pytest.mark.postgres
async def test_postgres_skips_identities_too_large_for_its_index(tmp_path: Path) -> None:
    """Ids of 512 characters (what events may carry) in a 3-byte script made an index row
    over PostgreSQL's 2,704 bytes: every batch with one failed, and the sink stopped at
    each start on the same message. Up to MAX_KEY_BYTES it is stored and deleted."""
    record_id = _incompressible(512, 1)  # 1,536 bytes
    # With "_", "live" and "conversation" (17 bytes), exactly MAX_KEY_BYTES in all.
    org = _incompressible((MAX_KEY_BYTES - 17 - 1536) // 3, 2)
    fits = ident(record_id, org=org)
    assert sum(len(p.encode()) for p in fits.parts()) == MAX_KEY_BYTES
    too_large = ident(record_id, org=org + "x")
    async with open_store("postgres", tmp_path) as store:
        assert store.holds(fits)
        assert not store.holds(too_large)
        assert not store.holds(ident(_incompressible(512, 3), org=_incompressible(512, 4)))
        await store.apply([put(stamp(fits))], now_ms=T0)
        out = await store.apply([kill(stamp(fits))], now_ms=T0 + 1)
        assert (out.deleted, [r.identity for r in out.receipts]) == (1, [fits])
    async with open_store("sqlite", tmp_path) as lite:
        assert lite.holds(too_large)  # SQLite's keys have no such bound


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_store_made_before_pending_deletions_is_brought_up_to_date(store: Store) -> None:
    """Reopening a store whose deletions table lacks the pending columns adds them."""
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    if store.__class__.__name__ == "SQLiteStore":
        p = store.prefix  # type: ignore[attr-defined]
        await conn.execute(f"DROP INDEX {p}deletions_pending")
        await conn.execute(f"ALTER TABLE {p}deletions DROP COLUMN pending")
        await conn.execute(f"ALTER TABLE {p}deletions DROP COLUMN pending_since")
        await conn.execute(f"ALTER TABLE {p}deletions DROP COLUMN settled_at")
    else:
        table = store._n.deletions  # type: ignore[attr-defined]
        await conn.execute(
            f"ALTER TABLE {table} DROP COLUMN pending, DROP COLUMN pending_since, "
            "DROP COLUMN settled_at"
        )
    await store.close()
    await store.open()
    s = stamp(ident("old-store"))
    await store.apply([put(s, offset=0), NullChange(s.identity, 0, 1)], now_ms=T0)
    await store.apply([kill(s, reason="explicit", emitted_at=T0 + 1)], now_ms=T0 + 2)
    assert [(r.reason, r.rows_deleted, r.deleted_at) for r in await store.receipts()] == [
        ("explicit", 1, T0)
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_store_made_before_receipts_named_requests_is_brought_up_to_date(
    store: Store,
) -> None:
    """Reopening a store whose receipts table lacks the request columns adds them: the
    receipts already there name none, unpublished ones still publish, and an erasure's
    receipt names its request from then on."""
    old = stamp(ident("old"))
    await store.apply([put(old, offset=0), kill(old)], now_ms=T0)
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    sqlite = isinstance(store, SQLiteStore)
    receipts = f"{store.prefix}receipts" if sqlite else store._n.receipts  # type: ignore[attr-defined]
    for column in ("request", "request_event_id"):
        await conn.execute(f"ALTER TABLE {receipts} DROP COLUMN {column}")
    if sqlite:
        await conn.commit()
    await store.close()
    await store.open()
    new = stamp(ident("new"))
    await store.apply([put(new, offset=1), erase(new)], now_ms=T0 + 1)
    await store.close()
    await store.open()  # once: a second opening changes nothing
    said = [(r.identity, r.request, r.request_event_id) for r in await store.pending_receipts()]
    assert said == [(old.identity, None, None), (new.identity, REQUEST, "gdpr-7")]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_store_made_before_receipts_said_why_a_deletion_was_late_is_brought_up_to_date(
    store: Store,
) -> None:
    """Reopening a store whose receipts table lacks ``late_cause`` adds it: the receipts
    already there say none, and a late deletion's receipt says why from then on."""
    old = stamp(ident("old"))
    await store.apply([put(old, offset=0), kill(old)], now_ms=T0)
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    sqlite = isinstance(store, SQLiteStore)
    receipts = f"{store.prefix}receipts" if sqlite else store._n.receipts  # type: ignore[attr-defined]
    await conn.execute(f"ALTER TABLE {receipts} DROP COLUMN late_cause")
    if sqlite:
        await conn.commit()
    await store.close()
    await store.open()
    new = stamp(ident("new"))
    await store.apply([put(new, offset=1), expire_late(new)], now_ms=T0 + 1)
    await store.close()
    await store.open()  # once: a second opening changes nothing
    said = [(r.identity, r.late_cause) for r in await store.pending_receipts()]
    assert said == [(old.identity, None), (new.identity, "catch_up")]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_store_made_before_rows_said_where_their_life_began_is_brought_up_to_date(
    store: Store,
) -> None:
    """Reopening a store whose rows lack ``previous_deleted_at`` (and markers their ``ttl``
    window) adds them: a row written before says it does not know (``UNKNOWN_PREVIOUS``),
    so a ``ttl`` tombstone takes it only by its ``created_at`` bound, as before (it may be a
    next life begun before that tombstone's expiry); a marker's window is kept from then
    on, and the row's stamp read again tells where its life began."""
    old = stamp(ident("old"), created_at=T0 + MINUTE)._replace(previous_deleted_at=T0 + 1)
    await store.apply([put(old, {"n": 1}, offset=0)], now_ms=T0)
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    if isinstance(store, SQLiteStore):
        p = store.prefix
        await conn.execute(f"ALTER TABLE {p}records DROP COLUMN previous_deleted_at")
        for column in ("ttl_before", "ttl_floor"):
            await conn.execute(f"ALTER TABLE {p}deletions DROP COLUMN {column}")
        await conn.commit()
    else:
        n = store._n  # type: ignore[attr-defined]
        await conn.execute(f"ALTER TABLE {n.records} DROP COLUMN previous_deleted_at")
        await conn.execute(
            f"ALTER TABLE {n.deletions} DROP COLUMN ttl_before, DROP COLUMN ttl_floor"
        )
    await store.close()
    await store.open()
    await store.close()
    await store.open()  # once: a second opening changes nothing
    row = await store.get(old.identity)
    assert row is not None
    assert row.previous_deleted_at == UNKNOWN_PREVIOUS
    out = await store.apply([expired(stamp(old.identity))], now_ms=T0 + 11 * MINUTE)
    assert (out.deleted, [r.rows_deleted for r in out.receipts]) == (0, [0])
    marker = await store.marker(old.identity)
    assert marker is not None
    assert (marker.ttl_before, marker.ttl_floor) == (T0 + 10 * MINUTE, T0)
    await store.apply([put(old, {"n": 1}, offset=1)], now_ms=T0 + 12 * MINUTE)
    row = await store.get(old.identity)
    assert row is not None
    assert row.previous_deleted_at == T0 + 1


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_store_made_before_markers_settled_is_brought_up_to_date(store: Store) -> None:
    """Markers of a version that did not keep ``settled_at`` get their last change as
    their settling when the store opens, so history already there is forgotten too."""
    old = [stamp(ident(f"old{n}")) for n in range(3)]
    await store.apply([put(s, offset=n) for n, s in enumerate(old)], now_ms=T0)
    await store.apply([kill(s) for s in old], now_ms=T0 + 1)
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    if isinstance(store, SQLiteStore):
        await conn.execute(f"ALTER TABLE {store.prefix}deletions DROP COLUMN settled_at")
    else:
        n = store._n  # type: ignore[attr-defined]
        await conn.execute(f"ALTER TABLE {n.deletions} DROP COLUMN settled_at")
    await store.close()
    await store.open()
    marker = await store.marker(old[0].identity)
    assert marker is not None
    assert marker.settled_at == marker.deleted_at == T0 + 1
    await store.close()
    await store.open()  # once: a second opening changes nothing
    assert await prune_round(store, settled_before_ms=T0) == 0
    assert await prune_round(store, settled_before_ms=T0 + 1) == 3
    assert await store.count_markers() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_pruning_page_is_read_along_the_primary_key_not_the_whole_table(
    store: Store,
) -> None:
    """A page of markers is a range of the primary key after the last page's end: its
    cost does not grow with the history kept, and no index of its own slows down every
    deletion's marker write. Every statement of a page (SQLite: its end, then its
    deletion; PostgreSQL: one) reads the key in its order, never the whole table, for
    the first, a middle and the last page."""
    many = [stamp(ident(f"m{n}")) for n in range(2000)]
    await store.apply([kill(s) for s in many], now_ms=T0)
    keys = sorted(s.identity.parts() for s in many)
    start, end = keys[100], keys[199]  # a page of 100 of the 2,000
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    if isinstance(store, SQLiteStore):
        p = store.prefix
        await conn.execute(f"ANALYZE {p}deletions")
        statements = [
            (sqlite_prune_end_sql(p, after=True), (*start, 99)),
            (sqlite_prune_sql(p, after=True, upto=True), (*start, *end, T0)),
            (sqlite_prune_sql(p, after=False, upto=True), (*end, T0)),
            (sqlite_prune_sql(p, after=True, upto=False), (*keys[-100], T0)),
        ]
        plans = []
        for sql, args in statements:
            async with conn.execute(f"EXPLAIN QUERY PLAN {sql}", args) as cur:
                plans.append(" ".join(str(r[-1]) for r in await cur.fetchall()))
        assert all(f"SEARCH {p}deletions USING PRIMARY KEY" in t for t in plans), plans
        # The first page reads the key from its start, in order, as far as the page goes.
        async with conn.execute(
            f"EXPLAIN QUERY PLAN {sqlite_prune_end_sql(p, after=False)}", (99,)
        ) as cur:
            plans.append(" ".join(str(r[-1]) for r in await cur.fetchall()))
        assert not any("TEMP B-TREE" in t for t in plans), plans
    else:
        n = store._n  # type: ignore[attr-defined]
        await conn.execute(f"ANALYZE {n.deletions}")
        for after in (True, False):
            async with conn.acquire() as c, c.transaction():
                sql = f"EXPLAIN {postgres_prune_sql(n, after=after)}"
                rows = await c.fetch(sql, T0, 100, *(start if after else ()))
            plan_text = "\n".join(r[0] for r in rows)
            # The page: read in the key's order, from the key, as far as it goes; its
            # prunable markers by their place in the table.
            page, _, rest = plan_text.partition("CTE page")[2].partition("CTE doomed")
            assert f"Index Scan using {n.prefix}deletions_pkey" in page, plan_text
            assert "Sort" not in page, plan_text
            assert "Seq Scan" not in plan_text, plan_text
            assert rest.count("Tid Scan") == 2, plan_text


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_store_that_marked_receipts_in_place_moves_them_to_the_outbox(
    store: Store,
) -> None:
    """Earlier versions set ``published_at`` on the receipt itself and listed the
    unpublished ones in a partial index. Reopened, such a store lists exactly those in its
    outbox, drops the index, and from then on refuses any update of a receipt."""
    stamps = [stamp(ident(f"old{n}")) for n in range(3)]
    await store.apply([put(s) for s in stamps] + [kill(s) for s in stamps], now_ms=T0)
    first = (await store.pending_receipts())[0]
    conn: Any = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    if store.__class__.__name__ == "SQLiteStore":
        p = store.prefix  # type: ignore[attr-defined]
        receipts, outbox, index = f"{p}receipts", f"{p}receipts_outbox", f"{p}receipts_unpublished"
        await conn.execute(f"DROP TRIGGER {p}receipts_no_update")
        await conn.execute(f"DROP TRIGGER {p}receipts_to_outbox")
        await conn.commit()
    else:
        n = store._n  # type: ignore[attr-defined]
        receipts, outbox = n.receipts, n.outbox
        index = f'"{n.schema}"."{n.prefix}receipts_unpublished"'
        await conn.execute(f"ALTER TABLE {receipts} DISABLE TRIGGER USER")
    # The old layout: the mark on the row, an index of the unmarked, no outbox table.
    await conn.execute(f"ALTER TABLE {receipts} ADD COLUMN published_at bigint")
    await conn.execute(
        f"UPDATE {receipts} SET published_at = 1 WHERE receipt_id = '{first.receipt_id}'"
    )
    await conn.execute(f"DROP TABLE {outbox}")
    await conn.execute(
        f"CREATE INDEX {index.rpartition('.')[2]} ON {receipts} (seq) WHERE published_at IS NULL"
    )
    if store.__class__.__name__ != "SQLiteStore":
        await conn.execute(f"ALTER TABLE {receipts} ENABLE TRIGGER USER")
    await store.close()
    await store.open()
    conn = getattr(store, "_conn", None) or store._pool  # type: ignore[attr-defined]
    pending = await store.pending_receipts()
    assert [r.identity for r in pending] == [s.identity for s in stamps[1:]]
    await store.mark_published([pending[0].receipt_id], now_ms=T0 + 1)
    assert [r.receipt_id for r in await store.pending_receipts()] == [pending[1].receipt_id]
    with pytest.raises(Exception, match="append-only"):
        await conn.execute(f"UPDATE {receipts} SET published_at = 2")
    more = stamp(ident("new"))
    await store.apply([put(more), kill(more)], now_ms=T0 + 2)  # listed by the new way
    assert [r.identity for r in await store.pending_receipts()] == [
        stamps[2].identity, more.identity,
    ]  # fmt: skip
    assert len(await store.receipts()) == 4
    await store.mark_published(
        [r.receipt_id for r in await store.pending_receipts()], now_ms=T0 + 3
    )
    await store.close()
    await store.open()
    assert await store.pending_receipts() == []  # opening it again brings none back


@pytest.mark.asyncio
@pytest.mark.postgres
async def test_postgres_plans_each_statement_for_the_tables_as_they_are(tmp_path: Path) -> None:
    """A generic plan made while the tables were empty hashes a full scan of them; kept
    as they grow, it made a batch's lookups cost ten times the index's. Every session of
    the store's pool re-plans instead."""
    async with open_store("postgres", tmp_path) as store:
        pool: Any = store._pool  # type: ignore[attr-defined]
        async with pool.acquire() as a, pool.acquire() as b:
            assert await a.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
            assert await b.fetchval("SHOW plan_cache_mode") == "force_custom_plan"


@pytest.mark.asyncio
async def test_sqlite_leaves_no_deleted_payload_in_its_files_once_idle(tmp_path: Path) -> None:
    """A deleted row's bytes are overwritten in the database file (``secure_delete``), and
    the write-ahead log, which kept them in the pages the deletion changed, is emptied when
    the sink goes idle: a trial found every deleted payload still in ``-wal``."""
    secret = "do-not-keep-" + "x" * 40
    async with open_store("sqlite", tmp_path) as store:
        assert isinstance(store, SQLiteStore)
        records = [stamp(ident(f"r{i}")) for i in range(50)]
        await store.apply(
            [put(s, {"secret": f"{secret}{i}"}) for i, s in enumerate(records)], now_ms=T0 + 1
        )
        await store.apply([kill(s) for s in records], now_ms=T0 + 2)
        await store.idle()
        files = _files_of(tmp_path, os.path.basename(store.path))
        assert {"", "-wal"} <= set(files)
        assert not any(secret.encode() in data for data in files.values())
        assert len(await store.receipts()) == 50


@pytest.mark.asyncio
async def test_sqlite_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """The database holds the records' data: under the usual umask (022) SQLite made it,
    and its -wal and -shm, 0644, readable by every user of the machine."""
    old = os.umask(0o022)
    try:
        async with open_store("sqlite", tmp_path) as store:
            assert isinstance(store, SQLiteStore)
            await store.apply([put(stamp(ident("r1")), {"email": "a@b.c"})], now_ms=T0 + 1)
            modes = _modes_of(tmp_path, os.path.basename(store.path))
    finally:
        os.umask(old)
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}


@pytest.mark.asyncio
async def test_a_sqlite_uri_path_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """``--path file:...`` is a URI to this SQLite (a build that reads URIs without being
    asked): the file was left to SQLite, 0644 under the usual umask (a mutation pass)."""
    old = os.umask(0o022)
    try:
        store = SQLiteStore(f"file:{tmp_path / 'u.db'}?cache=private")
        await store.open()
        try:
            await store.apply([put(stamp(ident("r1")), {"email": "a@b.c"})], now_ms=T0 + 1)
            modes = _modes_of(tmp_path, "u.db")
        finally:
            await store.close()
    finally:
        os.umask(old)
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}


def _modes_of(directory: Path, db: str) -> dict[str, int]:
    """The permissions of a SQLite database's files, by suffix ("", "-wal", "-shm")."""
    return {
        p.name[len(db) :]: p.stat().st_mode & 0o777
        for p in directory.iterdir()
        if p.name.startswith(db)
    }


def _files_of(directory: Path, db: str) -> dict[str, bytes]:
    """The bytes of a SQLite database's files, by suffix ("", "-wal", "-shm")."""
    return {p.name[len(db) :]: p.read_bytes() for p in directory.iterdir() if p.name.startswith(db)}


@pytest.mark.asyncio
async def test_sqlite_names_a_missing_directory(tmp_path: Path) -> None:
    """SQLite itself says only "unable to open database file"."""
    path = tmp_path / "nodir" / "x.db"
    with pytest.raises(StoreError) as failed:
        await SQLiteStore(path).open()
    assert str(failed.value) == (
        f"cannot open SQLite database {path}: the directory {tmp_path / 'nodir'} does not "
        "exist (create it first)"
    )
    a_directory = tmp_path / "dir.db"
    a_directory.mkdir()  # where the file should be: SQLite said "unable to open database file"
    with pytest.raises(StoreError) as failed:
        await SQLiteStore(a_directory).open()
    assert str(failed.value) == (
        f"cannot open SQLite database {a_directory}: it is a directory, not a database file "
        f"(give a file, e.g. {a_directory / 'sink.db'})"
    )


@pytest.mark.asyncio
async def test_a_sqlite_store_opens_while_another_connection_holds_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process has the new file open in a write transaction (a reader or a second
    instance opening it at the same moment): SQLite refused the change to WAL at once,
    "database is locked", without waiting, and the sink stopped with status 4 (CI, where a
    test reads the sink's file beside it). The store waits for the lock, then opens: the
    other connection lets go when the store, refused, first waits to try again."""
    import sqlite3

    import anyio

    path = tmp_path / "shared.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE theirs (a)")
    real_sleep = anyio.sleep
    waits: list[float] = []

    async def let_go_then_sleep(seconds: float) -> None:
        if not waits:
            other.execute("COMMIT")
        waits.append(seconds)
        await real_sleep(seconds)

    monkeypatch.setattr(anyio, "sleep", let_go_then_sleep)
    store = SQLiteStore(path)
    try:
        await store.open()
        assert await store.is_empty()
        assert len(waits) == 1  # refused once, while the other held the file
    finally:
        await store.close()
        other.close()


@pytest.mark.asyncio
async def test_the_change_to_wal_is_given_up_with_the_error_while_the_file_stays_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tried again while another connection holds the new file, the change to WAL is given
    up after its last try with SQLite's error ("database is locked": the sink stops with
    it, said), never left as it is: a store opened in the rollback journal's mode would go
    on, its readers blocking its writer, with nobody told."""
    import sqlite3

    import aiosqlite
    import anyio

    from stream_expiry.sinks.sqlite import _to_wal

    path = tmp_path / "held.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE theirs (a)")
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(anyio, "sleep", no_sleep)
    conn = await aiosqlite.connect(path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await _to_wal(conn, tries=3)
        assert len(waits) == 2  # between the tries, none after the last
    finally:
        await conn.close()
        other.close()

"""Tenant isolation in every store (memory, SQLite, PostgreSQL): deleting one record leaves
every near-twin, an identity that differs from it in one part only, and hostile ids (quotes,
``%``, ``/``, NUL where the store can hold it, 512 characters, non-Latin scripts, look-alikes
that a LIKE, a case-folding collation, Unicode normalisation or a key encoding would merge)
are stored and deleted exactly as themselves.

Each test deletes by every path a store has (tombstone event, null value on expiry.stamped,
sweep), since each path runs its own SQL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
import pytest
import pytest_asyncio

from stream_expiry.model import Identity
from stream_expiry.sinks._messages import Change, NullChange, decode_stamped, decode_tombstone
from tests.integration.sink_helpers import (
    MINUTE,
    T0,
    open_store,
    stamp,
    stamped_msg,
    store_params,
    tombstone_msg,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from stream_expiry.model import Stamp
    from stream_expiry.sinks.store import Store

pytestmark = pytest.mark.integration

BASE = Identity("acme", "bot1", "live", "conversation", "r-1")
PARTS = ("org", "bot", "env", "category", "record_id")


# Values that differ from a part by a little: case, a space, a prefix or suffix, a LIKE
# wildcard, an encoding of a character the key escapes.
def _variants(value: str) -> list[str]:
    return [
        value.upper(),
        value + " ",
        " " + value,
        value[:-1],
        value + "x",
        value[:-1] + "_",
        value[:-1] + "%",
        value + "/",
        value.replace("-", "%2D") if "-" in value else value + "%2F",
    ]


# Near-twins per part; env and category also get the other real values.
TWINS = {
    "org": _variants(BASE.org),
    "bot": [*_variants(BASE.bot), "_"],
    "env": [*_variants(BASE.env), "draft"],
    "category": [*_variants(BASE.category), "session", "error"],
    "record_id": _variants(BASE.record_id),
}

HOSTILE = [
    "it's",
    "''",
    'say "hi"',
    "a/b",
    "a%2Fb",
    "100%",
    "%",
    "_",
    "a_c",
    "abc",
    "x' OR '1'='1",
    "'; DROP TABLE records;--",
    "back\\slash",
    "tab\tnew\nline",
    "r" * 512,
    "é" * 512,
    "\U0001f600" * 512,
    "é",  # precomposed
    "e\u0301",  # decomposed: equal after NFC, different ids
    "ÉCOLE",
    "école",
    "会话-123",
    "разговор",
    "محادثة",  # right-to-left
    "\u202eevil",  # a bidi override
    "Ⅻ",
    "a\x00b",  # NUL: SQLite and memory hold it; PostgreSQL text cannot
    "a",
]


@pytest_asyncio.fixture
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(request.param, tmp_path) as s:
        yield s


def with_part(i: Identity, part: str, value: str) -> Identity:
    values = dict(zip(PARTS, i.parts(), strict=True))
    values[part] = value
    return Identity(*(values[p] for p in PARTS))


def put(s: Stamp, offset: int) -> Change:
    key, value = stamped_msg(s, {"id": s.identity.record_id})
    return decode_stamped(key, value, partition=0, offset=offset)


def kill(s: Stamp) -> Change:
    key, value = tombstone_msg(s)
    return decode_tombstone(key, value)


async def delete_by(store: Store, how: str, victims: list[Stamp], offset: int) -> None:
    """Delete ``victims`` by one path: a tombstone event, a null value, or the sweep."""
    if how == "tombstone":
        await store.apply([kill(s) for s in victims], now_ms=T0 + 1)
    elif how == "null":
        nulls: list[Change] = [NullChange(s.identity, 0, offset + n) for n, s in enumerate(victims)]
        await store.apply(nulls, now_ms=T0 + 1)
    else:
        assert how == "sweep"
        page = await store.sweep(cutoff_ms=T0 + MINUTE, now_ms=T0 + 1, limit=10_000)
        assert page.plan.swept == len(victims)


def expiring(i: Identity, victim: bool) -> Stamp:
    """Victims expire after a minute (the sweep takes them); the rest in ten."""
    return stamp(i, ttl_ms=MINUTE if victim else 10 * MINUTE)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
@pytest.mark.parametrize("how", ["tombstone", "null", "sweep"])
@pytest.mark.parametrize("part", PARTS)
async def test_deleting_a_record_leaves_every_near_twin(store: Store, part: str, how: str) -> None:
    victim = expiring(BASE, victim=True)
    twins = [expiring(with_part(BASE, part, v), victim=False) for v in TWINS[part]]
    assert len({s.identity for s in twins} | {BASE}) == len(twins) + 1
    everyone = [victim, *twins]
    await store.apply([put(s, n) for n, s in enumerate(everyone)], now_ms=T0)
    assert await store.count() == len(everyone)
    await delete_by(store, how, [victim], len(everyone))
    assert await store.get(BASE) is None
    for s in twins:
        row = await store.get(s.identity)
        assert row is not None, f"{how} of {BASE!r} also deleted its twin {s.identity!r}"
        assert row.identity == s.identity
    assert await store.count() == len(twins)
    assert [r.identity for r in await store.receipts() if r.rows_deleted] in ([BASE], [])
    for s in twins:
        assert await store.marker(s.identity) is None


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(), indirect=True)
@pytest.mark.parametrize("how", ["tombstone", "null", "sweep"])
@pytest.mark.parametrize("part", PARTS)
async def test_hostile_ids_in_every_part_are_stored_and_deleted_exactly(
    store: Store, part: str, how: str
) -> None:
    ids = [with_part(BASE, part, h) for h in HOSTILE]
    ids = [i for i in ids if store.holds(i)]
    if store.name == "postgres":
        assert len(ids) == len(HOSTILE) - 1  # only the NUL id is out of reach
    else:
        assert len(ids) == len(HOSTILE)
    victims = {i for n, i in enumerate(ids) if n % 2 == 0}
    stamps = [expiring(i, victim=i in victims) for i in ids]
    await store.apply([put(s, n) for n, s in enumerate(stamps)], now_ms=T0)
    for s in stamps:
        row = await store.get(s.identity)
        assert row is not None, s.identity
        assert row.identity == s.identity
        assert row.identity.parts() == s.identity.parts()  # not merely equal keys
        assert row.data == orjson.dumps({"id": s.identity.record_id}).decode()
    doomed = [s for s in stamps if s.identity in victims]
    await delete_by(store, how, doomed, len(stamps))
    for s in stamps:
        held = await store.get(s.identity)
        assert (held is None) == (s.identity in victims), s.identity
    assert await store.count() == len(stamps) - len(doomed)
    if how == "null":  # a null's receipt waits for the tombstone event: send it now
        assert await store.receipts() == []
        await store.apply([kill(s) for s in doomed], now_ms=T0 + 2)
    receipts = await store.receipts()
    assert sorted(r.identity.parts() for r in receipts) == sorted(i.parts() for i in victims)
    assert {r.reason for r in receipts} == {"sweep" if how == "sweep" else "ttl"}

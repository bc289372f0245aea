"""A life a legal hold keeps, in a store, after the record came back: its data must stay.

A store keeps one row per record. When a record a hold keeps is created again, the next
life's stamp names the held life (``held_lives``) and replaced that life's row, its data
with it: while the hold was in force, the data it was placed to preserve was gone from
every store (the archive alone kept it). The held life's row now moves aside, data and
all, to the store's held rows (:attr:`Plan.held`), where it stays until that life's own
tombstone at the release deletes it, with its receipt.

The messages are the service's: the partition processor of tests/unit/test_holds.py
decides, and the outbox's own ``_put_tombstones`` writes each tombstone's event, headers
and null as it sends them; the stamps are encoded as the outbox encodes them.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import anyio
import orjson
import pytest

from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.outbox import Outbox
from stream_expiry.sinks._logic import Plan, Slot, plan
from stream_expiry.sinks._messages import (
    Change,
    InvalidMessage,
    Pending,
    Row,
    StampChange,
    TombstoneChange,
    decode_pending,
    decode_stamped,
    decode_tombstone,
    encode_pending,
)
from tests.unit.fake_batches import AppendsLikeBatches
from tests.unit.test_holds import T0, TTL, Partition, _Rec, hold

if TYPE_CHECKING:
    from stream_expiry.outbox import _Batches
    from stream_expiry.state import Effects

TOMBS, STAMPED = "expiry.tombstones", "expiry.stamped"
A = Identity("acme", "b1", "live", "conversation", "c1")


class _Wire(AppendsLikeBatches):
    """What the outbox adds to its batches, in order, as (topic, key, value, headers,
    timestamp): the messages a sink reads."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]], int]] = []
        self.after_tombstones = False
        self.held_keys: list[bytes] = []

    def try_add(
        self,
        slot: tuple[str, int],
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: list[tuple[str, bytes]],
        track: Effects | None = None,
    ) -> bool:
        del track
        self.sent.append((slot[0], key, value, list(headers), timestamp_ms or 0))
        return True


class Service:
    """The partition processor under a hold, its effects turned into the sink's changes."""

    def __init__(self) -> None:
        self.p = Partition()
        self.offset = 0  # on expiry.stamped

    def _changes(self, effects: Effects) -> list[Change]:
        out: list[Change] = []
        for state, data in effects.stamps:
            stamp = encode_stamp(state, data)
            out.append(decode_stamped(state.identity.key.encode(), stamp, 0, self.offset))
            self.offset += 1
        wire = _Wire()
        put = Outbox._put_tombstones  # the outbox's own encoding (it uses nothing of self)
        tombstones = effects.tombstones
        anyio.run(
            put, cast("Outbox", None), cast("_Batches", wire), tombstones, (TOMBS, 0),
            (STAMPED, 0), [],
        )  # fmt: skip
        for topic, key, value, headers, at in wire.sent:
            if topic == TOMBS:
                assert value is not None
                out.append(decode_tombstone(key, value, headers, at, TOMBS, 0))
            else:
                out.append(decode_stamped(key, value, 0, self.offset, headers, at, STAMPED))
                self.offset += 1
        return out

    def event(self, op: str, ts: int, data: Any = None) -> list[Change]:
        p = self.p
        p.offset += 1
        body: dict[str, Any] = {
            "category": "conversation", "org": "acme", "bot": "b1", "record_id": "c1",
            "op": op, "ts": ts, "data": data,
        }  # fmt: skip
        effects = p.proc.process([_Rec(p.offset, None, orjson.dumps(body))], ts)
        p._take(effects, ts)
        return self._changes(effects)

    def tick(self, now: int) -> list[Change]:
        p = self.p
        p.proc.extend_horizon(now)
        effects = p.proc.fire_due(now)
        p._take(effects, now)
        changes = self._changes(effects)
        while p.proc.releasing:
            effects = p.proc.release_due(now, budget=100)
            p._take(effects, now)
            changes += self._changes(effects)
        return changes


class Store:
    """A store's tables, as the plan's writes leave them: rows, markers, the held rows
    (by record and ``created_at``) and receipts."""

    def __init__(self) -> None:
        self.state: dict[Identity, Slot] = {}
        self.held: dict[tuple[Identity, int], Row] = {}
        self.receipts: list[Any] = []
        self.ids = (f"r{n}" for n in itertools.count())

    def apply(self, changes: list[Change], now: int) -> Plan:
        p = plan(changes, self.state, store="s", now_ms=now, new_id=lambda: next(self.ids))
        for i in p.deletes:
            self.state[i].row = None
        for row in p.upserts:
            self.state.setdefault(row.identity, Slot()).row = row
        for m in p.markers:
            self.state.setdefault(m.identity, Slot()).marker = m
        for row in p.held:
            assert row.created_at is not None
            self.held[row.identity, row.created_at] = row
        for ident, created in p.released:
            self.held.pop((ident, created), None)
        self.receipts.extend(p.receipts)
        return p

    def row(self) -> Row | None:
        slot = self.state.get(A)
        return None if slot is None else slot.row


def _held_data(store: Store) -> dict[int, Any]:
    """The data of each held life of A a compliance officer finds in the store."""
    return {
        created: None if r.data is None else orjson.loads(r.data)
        for (ident, created), r in store.held.items()
        if ident == A
    }


@pytest.mark.parametrize("tombstone_first", [False, True])
def test_a_held_lifes_data_stays_in_the_store_until_its_release(tombstone_first: bool) -> None:
    svc, store = Service(), Store()
    created = svc.event("create", T0, {"life": 1})
    assert [type(c).__name__ for c in created] == ["StampChange"]
    store.apply(created, T0 + 1)
    svc.p.holds.place(hold())
    assert svc.tick(T0 + TTL) == []  # life 1 expires, held: no tombstone, no null
    # The record comes back: life 2, stamped with the held life it keeps.
    back = svc.event("create", T0 + 3 * TTL, {"life": 2})
    [stamp2] = back
    assert isinstance(stamp2, StampChange)
    assert stamp2.held == (T0,)  # the stamp names life 1 as held
    store.apply(back, T0 + 3 * TTL + 1)
    row = store.row()
    assert row is not None
    assert (row.created_at, orjson.loads(row.data or "null")) == (T0 + 3 * TTL, {"life": 2})
    # While the hold is in force, life 1's data is still in the store, beside life 2.
    assert _held_data(store) == {T0: {"life": 1}}
    assert store.receipts == []
    # The release: life 1's tombstone (ttl, no null: the record lives on), and life 2
    # stamped again without it; read in either order (two topics).
    svc.p.holds.release("h1")
    released = svc.tick(T0 + 3 * TTL + 500)
    assert sorted((type(c).__name__, getattr(c, "created_at", None)) for c in released) == [
        ("StampChange", T0 + 3 * TTL),
        ("TombstoneChange", T0),
    ]
    if tombstone_first:
        released.reverse()
    p = store.apply(released, T0 + 3 * TTL + 501)
    assert _held_data(store) == {}  # life 1's data went
    [r] = p.receipts
    assert (r.reason, r.created_at, r.rows_deleted, r.deleted_at) == (
        "ttl", T0, 1, T0 + 3 * TTL + 501,
    )  # fmt: skip
    assert p.living == [A]  # life 2 lives on: no null to a compacted topic
    row = store.row()
    assert row is not None
    assert (row.created_at, orjson.loads(row.data or "null")) == (T0 + 3 * TTL, {"life": 2})
    assert store.apply(released, T0 + 3 * TTL + 502).receipts == []  # a repeat is one
    # Life 2's own expiry, after the release: its tombstone and null delete its row.
    ended = svc.tick(T0 + 4 * TTL)
    p = store.apply(ended, T0 + 4 * TTL + 1)
    assert store.row() is None
    assert [(r.reason, r.created_at, r.rows_deleted) for r in p.receipts] == [
        ("ttl", T0 + 3 * TTL, 1)
    ]
    assert len(store.receipts) == 2  # one per life


def test_a_held_erasures_life_keeps_its_data_until_the_release_carries_it_out() -> None:
    """An erasure a hold defers, then the record created again: the erased life's data stays
    while the hold is in force (its erasure is not carried out yet), and goes at the
    release with its receipt (``explicit``), the next life's row left where it was, even
    when that life's own end was read first."""
    svc, store = Service(), Store()
    store.apply(svc.event("create", T0, {"life": 1}), T0 + 1)
    svc.p.holds.place(hold())
    deferred = svc.event("delete", T0 + 100)  # life 1 stamped again, its erasure deferred
    assert [(type(c).__name__, getattr(c, "created_at", None)) for c in deferred] == [
        ("StampChange", T0)
    ]
    store.apply(deferred, T0 + 101)
    back = svc.event("create", T0 + 200, {"life": 2})
    store.apply(back, T0 + 201)
    assert _held_data(store) == {T0: {"life": 1}}
    svc.p.holds.release("h1")
    released = svc.tick(T0 + 300)
    ended = svc.tick(T0 + 200 + TTL)  # the next life's own expiry
    tombstone = [c for c in released if isinstance(c, TombstoneChange)]
    assert [(t.reason, t.created_at, t.deleted_at) for t in tombstone] == [
        ("explicit", T0, T0 + 100)
    ]
    store.apply(ended, T0 + 200 + TTL + 1)  # read before the release's tombstone
    assert store.row() is None
    assert _held_data(store) == {T0: {"life": 1}}  # still kept: its tombstone has not come
    store.apply(released, T0 + 200 + TTL + 2)
    assert _held_data(store) == {}
    assert store.row() is None  # the release's stamp of life 2 came after its end: not written
    got = [(r.reason, r.created_at, r.rows_deleted, r.deleted_at) for r in store.receipts]
    assert got == [
        ("ttl", T0 + 200, 1, T0 + 200 + TTL + 1),
        ("explicit", T0, 1, T0 + 200 + TTL + 2),
    ]


def test_a_stamp_naming_no_held_life_replaces_the_row_as_before() -> None:
    """A next life whose stamp names no held life (the replaced life's null compacted away
    before the sink read it): nothing is kept aside, the data goes with the row, and the
    replaced life's tombstone still gets its receipt, dated when the row was replaced."""
    store = Store()
    first = decode_stamped(A.key.encode(), _stamp_value(T0, {"life": 1}), 0, 0)
    second = decode_stamped(A.key.encode(), _stamp_value(T0 + 2 * TTL, {"life": 2}), 0, 1)
    store.apply([first], T0 + 1)
    p = store.apply([second], T0 + 2 * TTL + 1)
    assert (p.held, store.held) == ([], {})
    marker = store.state[A].marker
    assert marker is not None
    assert [(x.created_at, x.superseded, x.kept) for x in marker.pending] == [(T0, True, False)]


def _stamp_value(created: int, data: Any) -> bytes:
    return encode_stamp(Stamp(A, created, created + TTL, TTL, "default"), data)


def test_a_kept_pending_deletion_is_stored_and_read_back() -> None:
    kept = Pending(T0, T0 + TTL, 1, "default", T0 + 5, True, kept=True)
    assert decode_pending(encode_pending((kept,))) == (kept,)
    assert decode_pending(encode_pending((replace(kept, kept=False),))) == (
        replace(kept, kept=False),
    )


def test_a_stamps_held_lives_are_read_as_the_contract_writes_them() -> None:
    """The lives a stamp names held, by ``created_at``; an erasure that names no life has
    none; a ``held_lives`` that is not the contract's makes the stamp invalid, as any
    other field does (the sink counts it and goes on)."""
    body = orjson.loads(_stamp_value(T0 + 2 * TTL, None))
    body["held_lives"] = [
        {"created_at": "2027-01-15T08:00:00.000Z", "expires_at": None, "ttl_seconds": None,
         "ttl_source": None, "erase_requested_at": None},
        {"created_at": None, "expires_at": None, "ttl_seconds": None, "ttl_source": None,
         "erase_requested_at": "2027-01-15T09:00:00.000Z"},
    ]  # fmt: skip
    c = decode_stamped(A.key.encode(), orjson.dumps(body))
    assert isinstance(c, StampChange)
    assert c.held == (1_800_000_000_000,)  # 2027-01-15T08:00:00Z
    for bad in ({"created_at": "yesterday"}, ["2027-01-15T08:00:00.000Z"], "none"):
        body["held_lives"] = bad if isinstance(bad, str) else [bad]
        with pytest.raises(InvalidMessage):
            decode_stamped(A.key.encode(), orjson.dumps(body))

"""A tombstone event read again after its marker was forgotten (a rewound group, the topic
read again) leaves no second receipt: its Kafka timestamp, at or before the bound the
store's pruning used, says it was read before (sinks/_logic.py, rule 7). A first reading
of an erasure of a record the store never held is still on record."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stream_expiry.model import Identity, Stamp, encode_tombstone
from stream_expiry.sinks._logic import plan
from stream_expiry.sinks._messages import (
    NullChange,
    SweepChange,
    TombstoneChange,
    decode_tombstone,
)
from stream_expiry.sinks.store import REREAD_MARGIN_MS, MemoryStore, _MemoryTx
from tests.unit.test_sinks_logic import MIN, STAMPED, T0, TOMBS, A, World, life, st_change, tomb

GRACE = 7 * 24 * 60 * MIN


def _erasure(at: int | None = T0) -> TombstoneChange:
    """The erasure of a record the store never held, as the sink reads it: dated by the
    service's emission time (None: a message with no timestamp)."""
    unseen = Stamp(A, None, None, None, None)
    value = encode_tombstone(unseen, reason="explicit", emitted_at=T0)
    headers = [("expiry-deleted-at", str(T0).encode())]
    return decode_tombstone(None, value, headers, timestamp=at, topic=TOMBS, partition=0)


def _dated(t: TombstoneChange, at: int) -> TombstoneChange:
    return replace(t, timestamp=at)


def _receipts(w: World) -> list[tuple[str, int]]:
    return [(r.reason, r.rows_deleted) for r in w.receipts]


def test_a_tombstone_is_decoded_with_its_kafka_timestamp() -> None:
    """Kafka's "none" (-1) is unknown."""
    for ts, kept in ((T0, T0), (0, 0), (-1, None), (None, None)):
        assert _erasure(ts).timestamp == kept


@pytest.mark.parametrize("bound", [None, T0 - 1])
def test_an_erasure_of_a_record_never_held_read_first_is_on_record(bound: int | None) -> None:
    """Dated after the pruning's bound, or in a store that never pruned: a first reading,
    which leaves its receipt with rows_deleted 0."""
    w = World()
    w.pruned_before = bound
    p = w.apply([_erasure()])
    assert [(r.reason, r.rows_deleted) for r in p.receipts] == [("explicit", 0)]
    assert w.state[A].marker is not None


def test_an_erasure_read_again_after_its_marker_is_forgotten_leaves_no_second_receipt() -> None:
    """Read, its marker forgotten a grace later, then read again (a rewound group): before,
    it wrote a second receipt with rows_deleted 0 for a deletion that had one. Its marker
    is written again, as the first reading wrote it: a stamp of the erased life read again
    after it stays out."""
    w = World()
    w.apply([_erasure()])
    first = w.state[A].marker
    assert first is not None
    assert w.prune(w.now) == 1
    p = w.apply([_erasure()])
    assert (p.receipts, p.deleted) == ([], 0)
    assert _receipts(w) == [("explicit", 0)]
    again = w.state[A].marker
    assert again is not None
    assert (again.deleted_before, again.last_life) == (first.deleted_before, first.last_life)
    assert w.apply([st_change(life(T0 - MIN), offset=1)]).stale == 1
    assert w.row() is None


def test_a_ttl_tombstone_read_again_after_its_marker_is_forgotten_leaves_no_second_receipt() -> (
    None
):
    """A row deleted by its tombstone (rows_deleted 1), the marker forgotten a grace past
    the life's expiry, the tombstone read again: nothing to delete, and no receipt."""
    w, s = World(), life()
    assert s.expires_at is not None
    t = _dated(tomb(s), s.expires_at)
    w.apply([st_change(s, offset=1)])
    w.apply([t])
    assert _receipts(w) == [("ttl", 1)]
    w.now = s.expires_at + GRACE
    assert w.prune(w.now - GRACE) == 1
    p = w.apply([t])
    assert p.receipts == []
    assert _receipts(w) == [("ttl", 1)]


def test_a_tombstone_dated_exactly_at_the_bound_was_read_before() -> None:
    """The pruning's bound is the read-complete time less the grace: every message dated
    at or before it was read before it."""
    w = World()
    w.pruned_before = T0
    assert w.apply([_erasure(T0)]).receipts == []
    w, w.pruned_before = World(), T0 - 1
    assert [r.rows_deleted for r in w.apply([_erasure(T0)]).receipts] == [0]


def test_a_tombstone_without_a_timestamp_is_on_record_whatever_was_pruned() -> None:
    """Its time unknown, it cannot be shown to have been read before."""
    w = World()
    w.pruned_before = T0 + GRACE
    assert [r.rows_deleted for r in w.apply([_erasure(None)]).receipts] == [0]


def test_a_tombstone_read_again_that_finds_work_still_writes_its_receipt() -> None:
    """Only a receipt of nothing is left out. Read again with the stamp of its life (a
    whole group rewound, the stamp not compacted away yet), the tombstone deletes the row
    the stamp wrote again; read again after a re-read null deleted it, it settles that
    deletion. Either writes its receipt, as before: otherwise the row stayed, or the
    deletion waited for a tombstone that came already."""
    s = life()
    assert s.expires_at is not None
    t = _dated(tomb(s, "explicit", T0 + MIN), T0 + MIN)
    for null_first in (False, True):
        w = World()
        w.pruned_before = T0 + 2 * MIN
        w.apply([st_change(s, offset=1)])
        if null_first:
            w.apply([NullChange(A, 0, 2, "explicit", T0 + MIN, STAMPED)])
            assert w.row() is None
        p = w.apply([t])
        assert [(r.reason, r.rows_deleted) for r in p.receipts] == [("explicit", 1)]
        assert w.row() is None
        m = w.state[A].marker
        assert m is not None
        assert m.pending == ()


def test_a_tombstone_read_again_with_its_null_leaves_nothing_to_sweep() -> None:
    """Both read again after the marker went (the compacted topic keeps the null, the
    tombstone topic its event), in either order: no receipt, and nothing for the sweep."""
    for tomb_first in (False, True):
        w = World()
        null = NullChange(A, 0, 1, "explicit", T0, STAMPED)
        w.apply([null])
        w.apply([_erasure()])
        assert w.prune(w.now) == 1
        w.apply([_erasure()] if tomb_first else [null])
        w.apply([null] if tomb_first else [_erasure()])
        w.apply([SweepChange(A, w.now + GRACE)])
        assert _receipts(w) == [("explicit", 0)]


def test_a_plan_without_the_bound_lists_the_tombstones_that_found_nothing() -> None:
    """What tells a store to read the pruning's bound: the timestamps of the tombstones
    that found nothing to delete (not of those that deleted a row, of those without a
    timestamp, nor of any when the plan had the bound)."""
    s = life()
    changes = [_erasure(T0 + 5), _other(_dated(tomb(s), T0 + 7), "other"), _erasure(None)]
    p = plan(changes, {}, store="s", now_ms=T0, new_id=lambda: "r")
    assert p.found_nothing_at == [((TOMBS, 0), T0 + 5), ((TOMBS, 0), T0 + 7)]
    bounds = {(TOMBS, 0): T0}
    p = plan(changes, {}, store="s", now_ms=T0, new_id=lambda: "r", pruned_before=bounds)
    assert p.found_nothing_at == []
    w = World()
    w.apply([st_change(s, offset=1)])
    assert w.apply([_dated(tomb(s), T0 + 9)]).found_nothing_at == []


@pytest.mark.asyncio
async def test_the_store_reads_the_bound_only_for_a_tombstone_that_found_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch of tombstones that delete rows does not read the bound; one whose tombstone
    found nothing reads it once."""
    reads: list[dict[tuple[str, int], int]] = []
    read = _MemoryTx.pruned_before

    async def counted(tx: _MemoryTx) -> dict[tuple[str, int], int]:
        reads.append(await read(tx))
        return reads[-1]

    monkeypatch.setattr(_MemoryTx, "pruned_before", counted)
    store = MemoryStore("m")
    s = life()
    assert s.expires_at is not None
    await store.apply([st_change(s, offset=1)], now_ms=T0)
    out = await store.apply([_dated(tomb(s), s.expires_at)], now_ms=s.expires_at)
    assert (out.deleted, reads) == (1, [])
    unseen = _other(_erasure(T0), "unseen")
    out = await store.apply([unseen], now_ms=s.expires_at + 1)
    assert ([r.rows_deleted for r in out.receipts], reads) == ([0], [{}])
    await store.prune(
        settled_before_ms=s.expires_at + 1 + REREAD_MARGIN_MS, limit=100, sources=[(TOMBS, 0)]
    )
    out = await store.apply([unseen], now_ms=s.expires_at + 2)
    assert (out.receipts, reads) == ([], [{}, {(TOMBS, 0): s.expires_at + 1}])
    later = _other(_erasure(s.expires_at + 2), "later")
    out = await store.apply([later], now_ms=s.expires_at + 3)
    assert [r.rows_deleted for r in out.receipts] == [0]
    assert len(reads) == 3


def _other(t: TombstoneChange, record_id: str) -> TombstoneChange:
    i = t.identity
    return replace(t, identity=Identity(i.org, i.bot, i.env, i.category, record_id))


@pytest.mark.asyncio
async def test_a_tombstone_in_flight_when_a_zero_grace_pruning_ran_is_still_on_record() -> None:
    """``--marker-grace 0``: the pruning's bound is the read-complete time itself. An
    erasure dated just before it, still on its way to the topic when that time was taken
    (the service dates a tombstone before it writes it), is read afterwards for the first
    time: it must leave its receipt, its only one. The bound kept for re-reads lies an
    hour below the pruning's (``REREAD_MARGIN_MS``); at the pruning's own bound this
    erasure was taken for a re-read and left no receipt at all."""
    store = MemoryStore("m")
    read_complete = T0 + 10 * MIN
    await store.prune(settled_before_ms=read_complete, limit=100, sources=[(TOMBS, 0)])  # grace 0
    in_flight = _other(_erasure(read_complete - MIN), "in-flight")
    out = await store.apply([in_flight], now_ms=read_complete + MIN)
    assert [(r.identity.record_id, r.rows_deleted) for r in out.receipts] == [("in-flight", 0)]
    # Dated more than the margin before, it was read before the pruning: a re-read.
    old = _other(_erasure(read_complete - REREAD_MARGIN_MS), "read-long-ago")
    out = await store.apply([old], now_ms=read_complete + 2 * MIN)
    assert out.receipts == []


def test_a_message_of_a_partition_no_pruning_covered_is_a_first_reading() -> None:
    """The pruning's bound says what was read only for the partitions its read-complete
    time covered. An erasure from another topic (a sink pointed at a copy of the
    tombstones topic, whose messages keep their dates), from another partition, or of
    unknown source, dated long before the bound, was never read by this store: on
    record, and its null waits for its tombstone. Under one bound for the store, each
    was taken for a re-read and left no receipt (or waited for nothing)."""
    old = _erasure(T0 - GRACE)
    for source in (("expiry.tombstones.copy", 0), (TOMBS, 1), (None, None)):
        w = World()
        w.pruned_before = T0
        p = w.apply([replace(old, topic=source[0], partition=source[1])])
        assert _receipts(w) == [("explicit", 0)], source
        assert p.found_nothing_at == []
    w = World()
    w.pruned_before = T0
    w.apply([NullChange(A, 0, 1, "explicit", T0 - GRACE, "expiry.stamped.copy")])
    m = w.state[A].marker
    assert m is not None
    assert [p.rowless for p in m.pending] == [True]
    w = World()
    w.pruned_before = T0
    assert w.apply([old]).receipts == []  # the partition the pruning covered: a re-read

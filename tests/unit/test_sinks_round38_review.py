"""Rowless pending deletions (an erasure's null for a record the store knows nothing of):
the orders, re-deliveries and the sweep a review found unchecked (round 38)."""

from __future__ import annotations

import pytest

from stream_expiry.model import Stamp, encode_tombstone
from stream_expiry.sinks._logic import Slot, prunable
from stream_expiry.sinks._messages import (
    Marker,
    NullChange,
    Pending,
    StampChange,
    SweepChange,
    TombstoneChange,
    decode_tombstone,
    encode_pending,
)
from tests.unit.test_sinks_logic import MIN, STAMPED, T0, A, World


def _erasure(at: int = T0) -> TombstoneChange:
    unseen = Stamp(A, None, None, None, None)
    value = encode_tombstone(unseen, reason="explicit", emitted_at=at)
    return decode_tombstone(None, value, [("expiry-deleted-at", str(at).encode())])


def test_an_erasure_of_a_record_never_seen_swept_then_its_tombstone_is_on_record_once() -> None:
    """The null read, its tombstone event late past the sweep's grace (a mistyped topic
    put right): the sweep writes the erasure's receipt, and the late tombstone, like a
    late tombstone after a null of a row the store held, writes no second one."""
    w = World()
    deleted_at = w.now + 1
    w.apply([NullChange(A, 0, 1, reason="explicit")])
    p = w.apply([SweepChange(A, deleted_at)])
    assert [(r.reason, r.rows_deleted) for r in p.receipts] == [("explicit", 0)]
    w.apply([_erasure()])
    assert [(r.reason, r.rows_deleted) for r in w.receipts] == [("explicit", 0)]


def _null(at: int = T0, reason: str | None = "explicit") -> NullChange:
    """An erasure's null as the sink reads it: dated by the service's emission time."""
    return NullChange(A, 0, 1, reason=reason, timestamp=at, topic=STAMPED)


GRACE = 7 * 24 * 60 * MIN


def test_an_erasures_null_read_again_after_its_marker_is_forgotten_waits_for_nothing() -> None:
    """Both read, the marker forgotten after the grace, then ``expiry.stamped`` read again
    (a rewound group; the compacted topic keeps the null): before round 38 the null found
    nothing to do. A rowless deletion waiting for a tombstone event that was read long ago
    kept the marker from ever being forgotten, and the sweep wrote a second receipt. The
    null is dated before the bound of the pruning that forgot its marker: read before."""
    w = World()
    w.apply([_null()])
    w.apply([_erasure()])
    assert [(r.reason, r.rows_deleted) for r in w.receipts] == [("explicit", 0)]
    m = w.state[A].marker
    assert m is not None
    assert prunable(m, w.now)
    assert w.prune(w.now) == 1  # the store prunes it, a grace after the read-complete time
    p = w.apply([_null()])  # stamped read again
    assert (p.markers, p.receipts, p.deleted) == ([], [], 0)
    assert A not in w.state
    w.apply([SweepChange(A, w.now + GRACE)])
    assert [(r.reason, r.rows_deleted) for r in w.receipts] == [("explicit", 0)]


def test_an_erasures_null_read_again_before_any_pruning_is_done_as_before() -> None:
    """Marker kept (its grace has not passed): the null read again changes nothing."""
    w = World()
    w.apply([_null()])
    w.apply([_erasure()])
    before = w.state[A].marker
    w.prune(T0 - 1)  # a pruning whose bound the marker has not reached
    p = w.apply([_null()])
    assert (p.markers, p.receipts) == ([], [])
    assert w.state[A].marker == before


@pytest.mark.parametrize("bound", [None, T0 - 1])
def test_an_erasures_null_read_first_waits_for_its_tombstone_whatever_was_pruned(
    bound: int | None,
) -> None:
    """Round 38's case: a null dated after the pruning's bound (or in a store that never
    pruned) is read for the first time, and its deletion waits for its tombstone event,
    which writes the receipt; a stamp of the record's next life and its erasure read
    ahead of that tombstone do not cover it."""
    w = World()
    if bound is not None:
        w.prune(bound)
    w.apply([_null(T0)])
    assert [p.rowless for p in _marker(w).pending] == [True]
    nxt = T0 + 5 * MIN
    w.apply([_stamp(nxt, nxt + 60 * MIN, offset=2)])
    w.apply([NullChange(A, 0, 3, reason="explicit", timestamp=nxt + MIN, topic=STAMPED)])
    w.apply([_erasure(T0)])
    w.apply([_tomb(nxt, nxt + 60 * MIN, "explicit", nxt + MIN)])
    assert sorted((r.reason, r.rows_deleted, r.created_at) for r in w.receipts) == [
        ("explicit", 0, None), ("explicit", 1, nxt),
    ]  # fmt: skip
    assert _marker(w).pending == ()


def test_an_erasures_null_read_first_whose_tombstone_never_comes_is_swept_with_its_reason() -> None:
    """A sink that lagged longer than the grace: the null is older than the clock's grace,
    but newer than the bound its store's pruning used (a sink forgets only what it has
    read a grace past), so it is read for the first time: the sweep answers for it."""
    w = World()
    w.prune(T0 - GRACE)
    w.now = T0 + 2 * GRACE  # read long after the service wrote it
    w.apply([_null(T0)])
    p = w.apply([SweepChange(A, w.now)])
    assert [(r.reason, r.rows_deleted) for r in p.receipts] == [("explicit", 0)]


@pytest.mark.parametrize("at", [None, T0])
def test_a_null_without_a_timestamp_or_after_the_bound_waits_as_a_first_one(
    at: int | None,
) -> None:
    """A null whose time is unknown cannot be shown to have been read before; nor one
    dated after the bound (a clock ahead of the sink's, read again just after the
    pruning): they wait as a first one does, the evidence kept."""
    w = World()
    w.pruned_before = T0 - 1
    w.apply([NullChange(A, 0, 1, reason="explicit", timestamp=at, topic=STAMPED)])
    assert [p.rowless for p in _marker(w).pending] == [True]


def test_a_null_dated_exactly_at_the_bound_was_read_before() -> None:
    """The pruning forgets markers settled at or before its bound, and a marker settles
    no earlier than the store read its null."""
    w = World()
    w.pruned_before = T0
    assert w.apply([_null(T0)]).markers == []
    w.pruned_before = T0 - 1
    assert w.apply([_null(T0)]).markers != []


# --- killing tests for mutants of round 38's planning that the suite let through ----------


def _marker(w: World) -> Marker:
    m = w.state[A].marker
    assert m is not None
    return m


def test_only_an_erasures_null_waits_for_its_tombstone_when_the_store_knows_nothing() -> None:
    """A null of an expiry (or one naming no rule) for a record the store never held
    deleted nothing and leaves nothing: its tombstone event says the rest."""
    w = World()
    for reason in ("ttl", None):
        p = w.apply([NullChange(A, 0, 1, reason=reason)])
        assert (p.markers, p.receipts, p.deleted) == ([], [], 0)
    assert A not in w.state


def test_an_erasures_null_for_a_record_never_held_blocks_no_stamp() -> None:
    """The rowless deletion ends no life: even a stamp of unknown creation is written."""
    w = World()
    w.apply([NullChange(A, 0, 1, reason="explicit")])
    w.apply([StampChange(A, None, None, None, None, '{"n":1}', 0, 2)])
    row = w.state[A].row
    assert row is not None
    assert row.data == '{"n":1}'


def test_the_sweeps_receipt_of_an_erasure_of_a_record_never_held_says_explicit_and_0() -> None:
    w = World()
    deleted_at = w.now + 1
    w.apply([NullChange(A, 0, 1, reason="explicit")])
    assert _marker(w).pending_since == deleted_at
    p = w.apply([SweepChange(A, deleted_at)])
    assert [(r.reason, r.rows_deleted, r.deleted_at, r.emitted_at) for r in p.receipts] == [
        ("explicit", 0, deleted_at, None)
    ]
    assert (p.swept, p.unsettled) == (0, 1)
    assert _marker(w).pending == ()


def test_an_erasures_receipt_for_a_record_never_held_says_when_its_null_was_read() -> None:
    w = World()
    deleted_at = w.now + 1
    w.apply([NullChange(A, 0, 1, reason="explicit")])
    p = w.apply([_erasure()])
    assert [(r.reason, r.rows_deleted, r.deleted_at, r.created_at) for r in p.receipts] == [
        ("explicit", 0, deleted_at, None)
    ]
    assert _marker(w).pending == ()


def _stamp(created: int, expires: int | None, offset: int = 0) -> StampChange:
    ttl = None if expires is None else (expires - created) // 1000
    return StampChange(A, created, expires, ttl, "org", '{"n":1}', 0, offset)


def _tomb(created: int | None, expires: int | None, reason: str, at: int) -> TombstoneChange:
    ttl = None if expires is None or created is None else (expires - created) // 1000
    return TombstoneChange(A, created, expires, at, reason, ttl, "org", at)


def test_an_erasure_of_a_row_never_held_settles_at_its_lifes_expiry() -> None:
    w = World()
    w.apply([_tomb(T0, T0 + 60 * MIN, "explicit", T0 + MIN)])
    assert _marker(w).settled_at == T0 + 60 * MIN


def test_an_erasure_naming_no_life_settles_at_the_expiry_of_the_row_it_deletes() -> None:
    w = World()
    w.apply([_stamp(T0, T0 + 60 * MIN)])
    w.apply([_tomb(None, None, "explicit", T0 + MIN)])
    assert w.state[A].row is None
    assert _marker(w).settled_at == T0 + 60 * MIN


def test_an_erasure_settles_at_its_tombstones_expiry_when_later_than_the_rows() -> None:
    """A touch slid the expiry and its stamp is not read yet: the tombstone knows better."""
    w = World()
    w.apply([_stamp(T0, T0 + 60 * MIN)])
    w.apply([_tomb(T0, T0 + 90 * MIN, "explicit", T0 + MIN)])
    assert _marker(w).settled_at == T0 + 90 * MIN


def test_deletions_an_earlier_version_kept_pending_settle_at_the_latest_expiry() -> None:
    """A marker of an earlier version (no settled_at) with two null deletions of lives
    that expire later: the erasure that claims both settles it at the later expiry."""
    w = World()
    pending = (
        Pending(T0 - 10 * MIN, T0 + 60 * MIN, 4200, "org", T0 - 20 * MIN),
        Pending(T0 - 5 * MIN, T0 + 30 * MIN, 2100, "org", T0 - 20 * MIN),
    )
    w.state[A] = Slot(None, Marker(A, T0 - 5 * MIN + 1, T0 - 5 * MIN, T0 - 20 * MIN, pending))
    p = w.apply([_tomb(None, None, "explicit", T0 + MIN)])
    assert len(p.receipts) == 2
    assert _marker(w).settled_at == T0 + 60 * MIN


def test_pending_deletions_are_kept_in_the_text_earlier_versions_wrote() -> None:
    """Only what a deletion needs: a plain one as an earlier version wrote it (which it
    reads back), flags only when set."""
    plain = Pending(1, 2, 60, "d", 3)
    assert encode_pending((plain,)) == '[[1,2,60,"d",3]]'
    assert encode_pending((Pending(1, 2, 60, "d", 3, True),)) == '[[1,2,60,"d",3,true]]'
    assert (
        encode_pending((Pending(1, 2, 60, "d", 3, reason="ttl"),)) == '[[1,2,60,"d",3,false,"ttl"]]'
    )
    assert (
        encode_pending((Pending(None, None, None, None, 3, reason="explicit", rowless=True),))
        == '[[null,null,null,null,3,false,"explicit",true]]'
    )

"""Tests that kill mutants of the downstream stores' decisions the suite let through
(round 49: ``stream_expiry/sinks/_logic.py``, the planner, and
``stream_expiry/sinks/_messages.py``, what it decodes and writes). Each passes on the code
and fails on the mutant named in its docstring (a one-token change: a comparison flipped, a
condition or an argument dropped, a value kept where it was to go). What they pin: the
exclusive bound and window of a tombstone (a next life created right at them stays, in the
plan and in a store's one-step ``take``); what the sweep's receipt of a null's deletion says
(the request, its time, why late) and counts; which replaced row a stamp keeps aside under
a hold, and which one a release takes back; the fields of a replaced life's receipt; the
pending deletions and receipts as the stores encode them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import orjson
import pytest

from stream_expiry.codec import (
    H_DELETED_AT,
    H_ERASURE_REQUESTED_AT,
    H_LATE_CAUSE,
    H_REASON,
    H_REQUEST,
    H_REQUEST_EVENT_ID,
)
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.sinks._logic import Slot
from stream_expiry.sinks._messages import (
    InvalidMessage,
    Marker,
    NullChange,
    Pending,
    Receipt,
    StampChange,
    SweepChange,
    TombstoneChange,
    _slot_init,
    decode_pending,
    decode_stamped,
    decode_tombstone,
    encode_pending,
    encode_receipt,
)
from stream_expiry.sinks.store import MemoryStore
from stream_expiry.timeutil import format_ts
from tests.unit.test_sinks_logic import MIN, T0, TOMBS, A, B, World, life, st_change, tomb

_ERASURE = {
    "reason": "explicit",
    "request": "req-7",
    "request_event_id": "ev-7",
    "late_cause": "hold",
    "requested_at": T0 - MIN,
}


def _ttl_tomb(s: Stamp) -> TombstoneChange:
    """``s``'s ``ttl`` tombstone as the service sends it: ``expiry-deleted-at`` a millisecond
    before the expiry, so its window takes lives created before that expiry."""
    assert s.expires_at is not None
    return replace(tomb(s), deleted_at=s.expires_at - 1)


def _stamp(s: Stamp, offset: int, previous_deleted_at: int | None = None) -> StampChange:
    return replace(st_change(s, {"n": offset}, offset), previous_deleted_at=previous_deleted_at)


# --- a tombstone's bound and window are exclusive ---------------------------------------------


def test_a_next_life_created_at_a_ttl_tombstones_expiry_is_not_in_its_window() -> None:
    """The window ``(expiry, created_at)`` takes lives created *before* the expiry: a life
    created at it, with no ``previous_deleted_at`` said, is the next one, whether its stamp
    comes after the tombstone or before it. Mutant: ``within``'s ``<`` as ``<=`` (the next
    life kept out, and its row deleted)."""
    old = life()
    assert old.expires_at is not None
    following = life(created=old.expires_at)
    w = World()
    w.apply([st_change(old, offset=0), _ttl_tomb(old)])
    p = w.apply([_stamp(following, 1)])
    assert (p.written, p.stale) == (1, 0)
    w = World()
    w.apply([st_change(old, offset=0), NullChange(A, 0, 1, "ttl"), _stamp(following, 2)])
    p = w.apply([_ttl_tomb(old)])
    assert p.deleted == 0
    row = w.row()
    assert row is not None
    assert row.created_at == following.created_at


@pytest.mark.asyncio
async def test_a_lone_tombstone_takes_no_next_life_at_its_bound_or_after_its_window() -> None:
    """A batch of one tombstone goes through the store's ``take`` (``ended_by``), which must
    decide as the plan does: a row of a next life created at the bound (begun after the
    deletion), or after the window with no ``previous_deleted_at`` (an older stamp), stays.
    Mutants: ``ended_by``'s ``<`` as ``<=``; its ``within`` asked of no creation."""
    old = life()
    assert old.expires_at is not None
    assert old.created_at is not None
    at_bound = replace(
        st_change(life(created=old.created_at + 1), {"n": 1}, 0),
        previous_deleted_at=old.created_at,
    )
    after = st_change(life(created=old.expires_at + MIN, i=B), {"n": 2}, 1)
    store = MemoryStore()
    await store.apply([at_bound, after], now_ms=T0 + 20 * MIN)
    for i, s in ((A, old), (B, old._replace(identity=B))):
        p = await store.apply([_ttl_tomb(s)], now_ms=T0 + 30 * MIN)
        assert p.deleted == 0
        assert await store.get(i) is not None


# --- the sweep's receipt of a null's deletion --------------------------------------------------


def test_the_sweeps_receipt_of_an_erasures_null_names_its_request_and_why_late() -> None:
    """An erasure's null deleted the row and its tombstone never came: the sweep's
    receipt says the request, its event, its time and why it was late, as the null did.
    Mutants: each of those dropped from the null's pending deletion, or from the sweep's
    receipt."""
    w = World()
    w.apply([st_change(life(), offset=0)])
    w.apply([NullChange(A, 0, 1, **_ERASURE)])  # type: ignore[arg-type]
    [r] = w.apply([SweepChange(A, w.now + 1)]).receipts
    assert (r.reason, r.rows_deleted, r.created_at) == ("explicit", 1, T0)
    assert (r.request, r.request_event_id, r.requested_at, r.late_cause) == (
        "req-7", "ev-7", T0 - MIN, "hold",
    )  # fmt: skip


def test_the_sweeps_receipt_of_an_erasure_of_a_record_never_held_names_its_request() -> None:
    """The same for an erasure's null that found no row and no marker (a record the store
    never held): its receipt, ``rows_deleted`` 0, names the request. Mutants: the request,
    its event or its time dropped from the rowless pending deletion."""
    w = World()
    erasure = {k: v for k, v in _ERASURE.items() if k != "late_cause"}
    w.apply([NullChange(A, 0, 1, **erasure)])  # type: ignore[arg-type]
    [r] = w.apply([SweepChange(A, w.now + 1)]).receipts
    assert (r.reason, r.rows_deleted, r.created_at) == ("explicit", 0, None)
    assert (r.request, r.request_event_id, r.requested_at) == ("req-7", "ev-7", T0 - MIN)


def test_the_sweep_counts_every_null_deletion_it_settles() -> None:
    """Two records' nulls with a reason (``unsettled``) and two without (``swept``), in one
    sweep: each counted. Mutants: ``+= 1`` as ``= 1``."""
    ids = [Identity("acme", "_", "live", "conversation", f"n{n}") for n in range(4)]
    w = World()
    w.apply([st_change(life(i=i), offset=n) for n, i in enumerate(ids)])
    reasons = ("explicit", "ttl", None, None)
    w.apply(
        [NullChange(i, 0, 10 + n, r) for n, (i, r) in enumerate(zip(ids, reasons, strict=True))]
    )
    p = w.apply([SweepChange(i, w.now + 1) for i in ids])
    assert (p.unsettled, p.swept, len(p.receipts)) == (2, 2, 4)


def test_the_sweep_settles_three_deletions_of_one_record_at_once() -> None:
    """Three lives of a record deleted by nulls whose tombstones never came: one sweep
    writes the three receipts. Mutant: ``_max_opt``'s two-value path taken for three (a
    crash: the sweep stopped on such a record)."""
    w = World()
    lives = [life(created=T0 + n * 20 * MIN) for n in range(3)]
    for n, s in enumerate(lives):
        w.apply([st_change(s, offset=2 * n), NullChange(A, 0, 2 * n + 1, "ttl")])
    p = w.apply([SweepChange(A, w.now + 1)])
    assert sorted(r.created_at or 0 for r in p.receipts) == [s.created_at for s in lives]
    marker = w.state[A].marker
    assert marker is not None
    assert marker.pending == ()
    assert marker.settled_at == lives[-1].expires_at


def test_the_sweep_settles_an_earlier_versions_marker_at_the_deleted_lifes_expiry() -> None:
    """A marker an earlier version wrote (no settling time) holding a null's deletion of a
    life that expires in a day: once the sweep writes its receipt, the marker settles at
    that expiry, not now, so it is kept a grace past it (a stamp of that life read again
    before then stays out). Mutants: the sweep's ``ended`` left out."""
    day = 24 * 60 * MIN
    gone = Pending(T0, T0 + day, 86400, "org", T0 - MIN, reason="ttl")
    w = World()
    w.state[A] = Slot(None, Marker(A, T0 + 1, T0, T0 - MIN, (gone,)))
    p = w.apply([SweepChange(A, T0)])
    assert [r.created_at for r in p.receipts] == [T0]
    [m] = p.markers
    assert (m.pending, m.settled_at) == ((), T0 + day)


# --- held lives: which row goes aside, which one a release takes back ---------------------------


def test_a_stamp_keeps_aside_only_a_replaced_life_it_names_held() -> None:
    """The next life's stamp names an earlier life held (``held_lives``), but the row it
    replaces is another life's: that row's data goes, as any replaced row's. Mutant:
    ``bool(held) and`` as ``or`` (every replaced row kept aside once any life is held)."""
    w = World()
    second, third = life(created=T0 + 2 * MIN), life(created=T0 + 4 * MIN)
    w.apply([st_change(second, {"n": 2}, 0)])
    p = w.apply([replace(st_change(third, {"n": 3}, 1), held=(T0,))])  # the first life, T0
    assert (p.written, p.held) == (1, [])


def test_a_release_takes_back_only_its_own_life_from_the_rows_kept_aside() -> None:
    """In one batch, a stamp keeps life 1 aside (named held) and the release of life 0 (kept
    aside in an earlier batch) comes: life 1's row is still kept aside, and life 0 is
    released. Mutant: the release's match on ``created_at`` as ``!=`` (life 1's data lost)."""
    w = World()
    lives = [life(created=T0 + n * 2 * MIN) for n in range(3)]
    w.apply([st_change(lives[0], {"n": 0}, 0)])
    first = w.apply([replace(st_change(lives[1], {"n": 1}, 1), held=(T0,))])
    assert [r.created_at for r in first.held] == [T0]
    release = replace(tomb(lives[0], "explicit", emitted_at=T0 + 30 * MIN), deleted_at=T0 + 1)
    held = (T0, T0 + 2 * MIN)
    p = w.apply([replace(st_change(lives[2], {"n": 2}, 2), held=held), release])
    assert [(r.identity, r.created_at, r.data) for r in p.held] == [(A, T0 + 2 * MIN, '{"n":1}')]
    assert p.released == [(A, T0)]


def test_a_release_takes_back_its_own_records_row_kept_aside_in_the_same_batch() -> None:
    """Two records' held lives, created at the same time, kept aside in one batch, and one
    record's release in it: the other record's row stays kept aside. Mutants: the release's
    match on the identity as ``or``, or as ``!=`` (the other record's data lost)."""
    w = World()
    held, following = life(), life(created=T0 + 2 * MIN)
    w.apply([st_change(held, {"a": 0}, 0), st_change(held._replace(identity=B), {"b": 0}, 1)])
    stamps = [
        replace(st_change(following._replace(identity=i), {"n": 1}, 2 + n), held=(T0,))
        for n, i in enumerate((B, A))
    ]
    release = replace(tomb(held, "explicit", emitted_at=T0 + 30 * MIN), deleted_at=T0 + 1)
    p = w.apply([*stamps, release])
    assert [(r.identity, r.data) for r in p.held] == [(B, '{"b":0}')]
    assert [r.created_at for r in p.receipts] == [T0]


def test_a_replaced_lifes_receipt_from_an_erasure_naming_no_life_keeps_its_ttl() -> None:
    """A held life's row replaced by the next life's, then an erasure naming no life (the
    service knew none) ends both: the held life's receipt takes its expiry and ttl from the
    replaced row, as it takes its creation. Mutants: each dropped from the pending deletion
    the replacement leaves."""
    w = World()
    held, following = life(), life(created=T0 + 2 * MIN, ttl=60 * MIN)
    w.apply([st_change(held, {"n": 0}, 0)])
    w.apply([replace(st_change(following, {"n": 1}, 1), held=(T0,))])
    unseen = Stamp(A, None, None, None, None)
    p = w.apply([tomb(unseen, reason="explicit", emitted_at=T0 + 5 * MIN)])
    got = sorted((r.created_at or 0, r.expires_at, r.ttl_seconds, r.ttl_source) for r in p.receipts)
    assert got == [
        (T0, T0 + 10 * MIN, 600, "org"),
        (T0 + 2 * MIN, T0 + 62 * MIN, 3600, "org"),
    ]


def test_two_held_lives_replaced_in_turn_are_both_on_record_as_deleted_rows() -> None:
    """Each replaced held life waits beside the others: both releases write a receipt of a
    deleted row. Mutants: the second replacement
    forgetting the first one's waiting deletion (its release then a receipt of nothing)."""
    w = World()
    first, second, third = life(), life(created=T0 + 2 * MIN), life(created=T0 + 4 * MIN)
    w.apply([st_change(first, {"n": 1}, 0)])
    w.apply([replace(st_change(second, {"n": 2}, 1), held=(T0,))])
    w.apply([replace(st_change(third, {"n": 3}, 2), held=(T0, T0 + 2 * MIN))])
    erased = [
        replace(tomb(s, "explicit", emitted_at=T0 + 30 * MIN), deleted_at=(s.created_at or 0) + 1)
        for s in (first, second)
    ]
    p = w.apply(erased)
    assert [(r.created_at, r.rows_deleted) for r in p.receipts] == [
        (T0, 1),
        (T0 + 2 * MIN, 1),
    ]
    assert p.released == [(A, T0), (A, T0 + 2 * MIN)]


# --- what the planner leaves in a marker --------------------------------------------------------


def test_an_erasures_null_of_a_life_that_never_moved_back_leaves_no_window() -> None:
    """An erasure's null saying where its request was read but no first creation (its life
    never moved back): every stamp of the life says its creation, which the marker's bound
    keeps out; the marker keeps no window. Mutant: a window kept with no ``before``."""
    w = World()
    w.apply([st_change(life(), offset=0)])
    p = w.apply([NullChange(A, 0, 1, "explicit", erasure_read=True)])
    [m] = p.markers
    assert (m.deleted_before, m.ttl_before, m.ttl_floor) == (T0 + 1, None, None)


# --- what the stores write ----------------------------------------------------------------------


def test_a_pending_deletion_keeps_its_requests_time_in_the_store() -> None:
    """The SQL stores keep pending deletions as JSON: the erasure's request time goes with
    it, kept aside or not (the receipt says it when the tombstone names none). Mutant: the
    time written only beside a life kept aside."""
    kept = (
        Pending(T0, T0 + MIN, 60, "default", T0 + 1, reason="explicit", requested_at=T0 - 5),
        Pending(T0, T0 + MIN, 60, "default", T0 + 2, True, kept=True, requested_at=T0 - 6),
        Pending(None, None, None, None, T0 + 3, reason="explicit", rowless=True, requested_at=7),
    )
    assert decode_pending(encode_pending(kept)) == kept


def test_the_receipt_of_an_erasure_of_a_record_never_seen_says_no_creation() -> None:
    """An erasure of a record the store never held names no life: its receipt's value
    says ``created_at`` null. Mutant: the time formatted whatever it is (a crash: the
    receipt was never published)."""
    w = World()
    [r] = w.apply([tomb(Stamp(A, None, None, None, None), "explicit", T0 + MIN)]).receipts
    assert isinstance(r, Receipt)
    value = orjson.loads(encode_receipt(r))
    assert (value["created_at"], value["expires_at"], value["rows_deleted"]) == (None, None, 0)


def test_a_stamp_whose_held_lives_is_not_a_list_says_which_field() -> None:
    """The sink logs a malformed message's reason: it names the field. Mutants: the words
    changed or dropped."""
    s = life()
    value = orjson.loads(encode_stamp(s, None))
    for bad in ("T0", [1, 2]):
        value["held_lives"] = bad
        with pytest.raises(InvalidMessage, match=r"^field 'held_lives' must be a list of objects$"):
            decode_stamped(s.identity.key.encode(), orjson.dumps(value))


def test_a_null_value_without_a_key_says_so() -> None:
    """Mutant: the words changed."""
    with pytest.raises(InvalidMessage, match=r"^a null value without a key names no record$"):
        decode_stamped(None, None)


# --- which life a tombstone's marker names ---------------------------------------------------


def test_an_erasure_naming_no_life_names_the_deleted_rows_life_in_its_marker() -> None:
    """An erasure naming no life (``expiry-deleted-at`` said) deletes the row: the marker
    names the row's life, so that life's own ``ttl`` tombstone read after it (one without
    the header, as a held life's is, bounded by its expiry) leaves no second receipt.
    Mutants: ``lived is None or`` as ``and``; the row's creation left out of ``lived``."""
    w, s = World(), life()
    w.apply([st_change(s, {"n": 1}, 0)])
    unseen = Stamp(A, None, None, None, None)
    erasure = replace(tomb(unseen, "explicit", emitted_at=T0 + 2 * MIN), deleted_at=T0 + MIN)
    assert [r.rows_deleted for r in w.apply([erasure]).receipts] == [1]
    assert w.apply([tomb(s)]).receipts == []
    assert len(w.receipts) == 1


def test_an_erasure_without_its_time_names_the_later_life_it_deleted() -> None:
    """An erasure of an earlier version (no ``expiry-deleted-at``: bounded by its emission)
    deletes the row of a life created after the one it names (the README's "taken for the
    old one"): the marker names the row's life, so its ``ttl`` tombstone, read after, is a
    repeat. Mutants: the condition's reason compared as ``!=``, or misspelled; ``lived``
    set to None."""
    w = World()
    first, second = life(), life(created=T0 + 5 * MIN)
    w.apply([st_change(second, {"n": 2}, 0)])
    assert [r.created_at for r in w.apply([tomb(first, "explicit", T0 + 6 * MIN)]).receipts] == [T0]
    assert w.apply([tomb(second)]).receipts == []


def test_an_erasure_of_a_moved_back_life_names_its_own_life_not_its_first_stamps() -> None:
    """A life created at ``c`` and first stamped at ``f`` (a create read late moved it back)
    is erased between the two; the store had only the stamp of ``f``, which the erasure's
    window deletes. The marker names the life ``c``: a next life, created after the
    erasure and before ``f``, whose ``ttl`` tombstone is read before its stamp (two topics),
    is on record. Mutant: ``deleted_at is None`` as ``is not None`` (the marker named
    ``f``, and that tombstone was taken for a repeat: no receipt at all)."""
    c, f, erased_at = T0, T0 + 2 * MIN, T0 + MIN
    first = Stamp(A, f, f + 10 * MIN, 600, "org")
    erasure = TombstoneChange(
        A, c, c + 10 * MIN, erased_at + 1, "explicit", 600, "org", deleted_at=erased_at,
        erasure_read=True, first_created_at=f,
    )  # fmt: skip
    w = World()
    w.apply([st_change(first, {"n": 1}, 0)])
    assert [(r.created_at, r.rows_deleted) for r in w.apply([erasure]).receipts] == [(c, 1)]
    following = Stamp(A, T0 + 90_000, T0 + 90_000 + 10 * MIN, 600, "org")
    following = following._replace(previous_deleted_at=erased_at)
    p = w.apply([_ttl_tomb(following)])
    assert [(r.created_at, r.rows_deleted) for r in p.receipts] == [(T0 + 90_000, 0)]
    assert w.apply([st_change(following, {"n": 2}, 1)]).stale == 1


def test_a_late_tombstones_receipt_says_why_it_was_late() -> None:
    """Mutant: the tombstone's ``expiry-late-cause`` left off the receipt of the row it
    deleted."""
    w, s = World(), life()
    w.apply([st_change(s, {"n": 1}, 0)])
    [r] = w.apply([replace(tomb(s), late_cause="catch_up")]).receipts
    assert (r.rows_deleted, r.late_cause) == (1, "catch_up")


def test_a_ttl_nulls_window_keeps_out_its_lifes_stamp_from_before_it_moved_back() -> None:
    """A life first stamped at ``f``, moved back to ``c`` by a create read late, deleted by
    its ``ttl`` null: the stamp of ``f``, read again (a rewound group), is of the deleted
    life (created before its expiry, no deletion before it) and stays out. Mutants: the
    null's window left out, or kept for no ``ttl`` null (the deleted data written back)."""
    c, f = T0, T0 + 2 * MIN
    first = Stamp(A, f, c + 10 * MIN, 600, "org")
    moved = Stamp(A, c, c + 10 * MIN, 600, "org", first_created_at=f)
    w = World()
    w.apply([st_change(first, {"n": 1}, 0), st_change(moved, {"n": 1}, 1)])
    w.apply([NullChange(A, 0, 2, "ttl")])
    p = w.apply([st_change(first, {"n": 1}, 0)])
    assert (p.written, p.stale, w.row()) == (0, 1, None)


# --- what a tombstone's receipt names: the request, its time, why late ----------------------


_REQUEST_HEADERS = [
    (H_REQUEST, b"req-7"),
    (H_REQUEST_EVENT_ID, b"ev-7"),
    (H_LATE_CAUSE, b"catch_up"),
    (H_ERASURE_REQUESTED_AT, b"%d" % (T0 - MIN)),
    (H_DELETED_AT, format_ts(T0 + MIN).encode()),
]


def _named(r: Receipt) -> tuple[str | None, str | None, int | None, str | None]:
    return r.request, r.request_event_id, r.requested_at, r.late_cause


def test_an_erasures_receipt_names_its_request_as_its_tombstones_headers_say() -> None:
    """The tombstone event, as the sink decodes it, deletes the row: its receipt says the
    request, its event, its time and why it was late. Mutants: each left off every
    receipt."""
    s = life()
    value = encode_tombstone(s, reason="explicit", emitted_at=T0 + 2 * MIN)
    t = decode_tombstone(None, value, _REQUEST_HEADERS, T0 + 2 * MIN, TOMBS, 0)
    w = World()
    w.apply([st_change(s, {"n": 1}, 0)])
    [r] = w.apply([t]).receipts
    assert (r.rows_deleted, *_named(r)) == (1, "req-7", "ev-7", T0 - MIN, "catch_up")


def test_an_erasures_receipt_of_a_record_never_held_names_its_request() -> None:
    """The same for an erasure of a record the store never held (``rows_deleted`` 0).
    Mutants: the request or the late cause left off that receipt."""
    s = life()
    value = encode_tombstone(s, reason="explicit", emitted_at=T0 + 2 * MIN)
    t = decode_tombstone(None, value, _REQUEST_HEADERS, T0 + 2 * MIN, TOMBS, 0)
    [r] = World().apply([t]).receipts
    assert (r.rows_deleted, r.created_at, *_named(r)) == (
        0, T0, "req-7", "ev-7", T0 - MIN, "catch_up",
    )  # fmt: skip


def _null_then(null: NullChange, t: TombstoneChange) -> Receipt:
    """A row deleted by ``null``, whose deletion ``t`` claims: its one receipt."""
    w, s = World(), life()
    w.apply([st_change(s, {"n": 1}, 0), null])
    [r] = w.apply([t]).receipts
    assert (r.rows_deleted, r.created_at) == (1, T0)
    return r


def _erasure(
    request: str | None = None, event_id: str | None = None, requested_at: int | None = None
) -> TombstoneChange:
    """An erasure of the life at ``T0``, naming the request it says."""
    t = replace(tomb(life(), "explicit", T0 + 2 * MIN), deleted_at=T0 + MIN, request=request)
    return replace(t, request_event_id=event_id, requested_at=requested_at)


def test_a_claimed_deletions_receipt_names_the_request_the_tombstone_names() -> None:
    """The null said no request (an earlier version's), the tombstone event names it: the
    receipt names the tombstone's, with its time and why late. Mutants: the null's request
    taken whatever the tombstone says (``or True``, ``or``, ``is not None``); its time
    taken from the tombstone into the null's when the tombstone names the request; the
    late cause taken from the null, or left off."""
    null = NullChange(A, 0, 1, "explicit")
    t = _erasure("req-T", "ev-T", T0 - MIN)
    t = replace(t, late_cause="catch_up")
    assert _named(_null_then(null, t)) == ("req-T", "ev-T", T0 - MIN, "catch_up")


def test_a_claimed_deletions_receipt_names_the_nulls_request_when_the_tombstone_does_not() -> None:
    """The tombstone event names no request (a release of an erasure an earlier version
    deferred), its null did: the receipt names the null's, with the tombstone's request
    time when the null said none, and the null's late cause when the tombstone says none.
    Mutants: the reason compared as ``!=`` or misspelled; the tombstone's time not taken,
    or taken into nothing; the late cause taken from the tombstone alone."""
    null = NullChange(A, 0, 1, "explicit", request="req-N", request_event_id="ev-N")
    null = replace(null, late_cause="hold")
    t = _erasure(requested_at=T0 - 3 * MIN)
    assert _named(_null_then(null, t)) == ("req-N", "ev-N", T0 - 3 * MIN, "hold")
    # The null says when: its own time stands.
    said = replace(null, requested_at=T0 - 5 * MIN)
    assert _named(_null_then(said, t)) == ("req-N", "ev-N", T0 - 5 * MIN, "hold")


def test_an_erasure_read_after_its_null_of_a_record_never_held_gives_the_lifes_times() -> None:
    """An erasure's null found nothing (the store never had the life's stamp); its
    tombstone event names the life: the receipt, ``rows_deleted`` 0, gives that life's
    creation and expiry, not the null's nothing. Mutant: the pending deletion's fields
    taken whatever the tombstone names."""
    w, s = World(), life()
    w.apply([NullChange(A, 0, 1, "explicit", request="req-N")])
    [r] = w.apply([_erasure()]).receipts
    assert (r.rows_deleted, r.created_at, r.expires_at, r.request) == (
        0, s.created_at, s.expires_at, "req-N",
    )  # fmt: skip


def test_a_row_deleted_after_an_erasures_null_found_nothing_is_one_receipt() -> None:
    """An erasure's null read before the life's stamp (found nothing), then a null of that
    life deleted its row: the erasure's tombstone event claims both, and they are one
    deletion, the row's. Mutant: the loop stopped at the rowless one (no receipt at all)."""
    w, s = World(), life()
    w.apply([NullChange(A, 1, 0, "explicit")])
    w.apply([st_change(s, {"n": 1}, 0), NullChange(A, 0, 1, "explicit")])
    unseen = Stamp(A, None, None, None, None)
    p = w.apply([tomb(unseen, "explicit", T0 + MIN)])
    assert [(r.rows_deleted, r.created_at) for r in p.receipts] == [(1, T0)]


# --- what a marker keeps of several deletions --------------------------------------------------


@pytest.mark.parametrize("late_first", [False, True], ids=["in_order", "earlier_one_late"])
def test_a_marker_keeps_the_later_of_two_ttl_tombstones_windows(late_first: bool) -> None:
    """Two lives ended by their expiries: the marker keeps the later window (its expiry and
    creation), whichever tombstone came last, so a stamp of the second life from before a
    create moved it back (created before its expiry, begun after the first life ended),
    read again, stays out. Mutants: either bound of the window set from the newest
    tombstone alone, or left where the first one set it, or raised to the creation."""
    first = life()
    second = life(created=T0 + 20 * MIN)
    assert first.expires_at is not None
    early = Stamp(
        A, T0 + 25 * MIN, T0 + 35 * MIN, 600, "org", previous_deleted_at=first.expires_at - 1
    )
    w = World()
    order = [second, first] if late_first else [first, second]
    w.apply([_ttl_tomb(s) for s in order])
    p = w.apply([st_change(early, {"n": 2}, 0)])
    assert (p.written, p.stale, w.row()) == (0, 1, None)


def test_a_repeated_tombstone_of_an_earlier_life_leaves_a_later_settling_alone() -> None:
    """An erasure of a life that expires in a day settles its marker at that expiry; the
    earlier life's ``ttl`` tombstone read again (at least once) changes nothing, and the
    marker is not written again with an earlier settling (it would then be forgotten a
    day early, and a stamp of the erased life read again taken as live). Mutant: the
    settling recomputed from the marker's last change instead of its settling."""
    day = 24 * 60 * MIN
    first, second = life(), life(created=T0 + 20 * MIN, ttl=day)
    w = World()
    w.apply([_ttl_tomb(first)])
    erasure = replace(tomb(second, "explicit", T0 + 30 * MIN), deleted_at=T0 + 25 * MIN)
    w.apply([erasure])
    settled = w.state[A].marker.settled_at  # type: ignore[union-attr]
    assert settled == second.expires_at
    p = w.apply([_ttl_tomb(first)])
    assert (p.receipts, p.markers) == ([], [])


def test_a_time_with_a_clock_in_the_basic_format_is_refused() -> None:
    """The decoder's fast path reads the one form the service writes; a time of the same
    length with its clock run together (``T000000.0``, which Python's ``fromisoformat``
    takes) is not RFC 3339, and the tombstone is invalid, as the general parser says.
    Mutant: the fast path's test of the clock's colon turned round (such a time read as
    midnight)."""
    body = orjson.loads(encode_tombstone(life(), reason="ttl", emitted_at=T0))
    body["emitted_at"] = "2026-01-01T000000.0.000Z"
    with pytest.raises(InvalidMessage, match="emitted_at"):
        decode_tombstone(None, orjson.dumps(body))


# --- what the decoders read and say ------------------------------------------------------------


def _null(reason: bytes | None) -> NullChange:
    headers = [
        (H_REQUEST, b"req-7"),
        (H_REQUEST_EVENT_ID, b"ev-7"),
        (H_LATE_CAUSE, b"hold"),
        (H_ERASURE_REQUESTED_AT, b"%d" % T0),
    ]
    if reason is not None:
        headers.append((H_REASON, reason))
    change = decode_stamped(A.key.encode(), None, 0, 5, headers, T0, "expiry.stamped")
    assert isinstance(change, NullChange)
    return change


def test_a_nulls_request_is_read_for_an_erasure_only() -> None:
    """An erasure's null names its request (event, time) and why late; a ``ttl`` null names
    no request (the headers are an erasure's), only why late; a null saying no reason
    names nothing. Mutants: the request read for every null, or for none, or not kept."""
    erasure, ttl, unsaid = _null(b"explicit"), _null(b"ttl"), _null(None)
    said = (erasure.request, erasure.request_event_id, erasure.requested_at, erasure.late_cause)
    assert said == ("req-7", "ev-7", T0, "hold")
    assert (ttl.request, ttl.request_event_id, ttl.requested_at, ttl.late_cause) == (
        None, None, None, "hold",
    )  # fmt: skip
    assert (unsaid.reason, unsaid.request, unsaid.late_cause) == (None, None, None)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "a tombstone event must have a value"),
        (b"[1]", "the value is a JSON array, not an object"),
        (b"emitted", "emitted_at"),
        (b"ttl_source", "field 'ttl_source' must be a string or null"),
    ],
)
def test_an_invalid_tombstone_event_says_what_is_wrong(value: bytes | None, words: str) -> None:
    """The sink logs the reason of a malformed message once per topic: it says what is
    wrong. Mutants: the words changed, or the type named wrong."""
    body = orjson.loads(encode_tombstone(life(), reason="ttl", emitted_at=T0))
    if value == b"emitted":
        del body["emitted_at"]
        value = orjson.dumps(body)
        words = "field 'emitted_at' is required"
    elif value == b"ttl_source":
        body["ttl_source"] = 5
        value = orjson.dumps(body)
    with pytest.raises(InvalidMessage) as caught:
        decode_tombstone(None, value)
    assert str(caught.value) == words


def test_the_fast_init_refuses_a_field_it_cannot_store() -> None:
    """``_slot_init`` stores each field as given; a field with a factory, or left out of
    ``__init__``, it cannot build alike, and says which. Mutants: ``or`` as ``and``; the
    words dropped."""

    @dataclass(frozen=True, slots=True)
    class Listed:
        items: list[int] = field(default_factory=list)

    with pytest.raises(TypeError, match=r"^Listed\.items: only plain fields are supported$"):
        _slot_init(Listed)


@pytest.mark.parametrize("text", ["2026-01-01T00:00:00.000X", "2026-01-01T00:00:00:000Z"])
def test_a_time_not_in_rfc_3339_is_refused(text: str) -> None:
    """A time of the service's length but another ending or separator is an invalid
    message, not a time. Mutants: the fast path's tests of the ``Z`` or of the ``.``
    turned round."""
    body = orjson.loads(encode_tombstone(life(), reason="ttl", emitted_at=T0))
    body["emitted_at"] = text
    with pytest.raises(InvalidMessage, match="emitted_at"):
        decode_tombstone(None, orjson.dumps(body))


def test_a_time_in_epoch_milliseconds_is_read_as_such() -> None:
    """The contract's times may be epoch milliseconds. Mutant: the fast path's type test
    turned round (``len`` of a number: a crash, the sink stopped at the message)."""
    body = orjson.loads(encode_tombstone(life(), reason="ttl", emitted_at=T0))
    body["emitted_at"] = T0 + 7
    assert decode_tombstone(None, orjson.dumps(body)).emitted_at == T0 + 7


@pytest.mark.parametrize("name", ["org", "bot", "env", "category", "record_id"])
def test_an_identity_part_that_is_not_a_string_is_refused(name: str) -> None:
    """Mutants: the fast path's type test of a part turned round (a number taken for it)."""
    body = orjson.loads(encode_tombstone(life(), reason="ttl", emitted_at=T0))
    body[name] = 5
    with pytest.raises(InvalidMessage, match=rf"^field '{name}' must be a non-empty string$"):
        decode_tombstone(None, orjson.dumps(body))


# --- found in a later hand-made sweep --------------------------------------------------------


def test_a_stamp_without_data_of_an_earlier_creation_keeps_the_lifes_data() -> None:
    """A stamp whose ``data`` is null for the row's life moved back (an earlier create
    re-delivered, its data not carried) is the same life: the row keeps its data.
    Mutant ``life(c.created_at) == life(old.created_at)``: only a stamp of the very same
    creation kept it, and the moved-back row lost the record's data."""
    w, s = World(), life()
    w.apply([_stamp(s, 1)])
    earlier = life(created=T0 - MIN)
    p = w.apply([st_change(earlier, None, 2)])
    row = w.row()
    assert row is not None
    assert (row.created_at, row.data, p.written) == (T0 - MIN, orjson.dumps({"n": 1}).decode(), 1)


def test_an_erasure_the_sweep_answered_for_a_record_never_held_is_covered_when_it_comes() -> None:
    """An erasure's null for a record the store knew nothing of waits for its tombstone
    (rowless); a life of unknown creation is then written and nulled; the sweep writes
    both receipts, the erasure's with ``rows_deleted`` 0. The erasure's tombstone, come at
    last, is covered: no second receipt for one request. Mutant ``all(p.rowless ...)``
    (for ``any``): with a rowful deletion among them, the marker forgot that a deletion
    naming no life was answered, and the tombstone wrote a second receipt."""
    w = World()
    w.apply([NullChange(A, 0, 1, reason="explicit")])
    w.apply([st_change(Stamp(A, None, None, None, None), {"x": 1}, 2)])
    w.apply([NullChange(A, 0, 3, reason="ttl")])
    swept = w.apply([SweepChange(A, T0 + 10**9)])
    assert [(r.reason, r.rows_deleted) for r in swept.receipts] == [("explicit", 0), ("ttl", 1)]
    erasure = tomb(Stamp(A, None, None, None, None, None, T0), "explicit")
    assert w.apply([erasure]).receipts == []


def test_a_ttl_tombstone_claiming_an_erasures_null_names_no_request() -> None:
    """A life ended by its expiry, then an erasure read late (``Engine._erase_ended``):
    compaction kept the erasure's null, not the expiry's, so the null that deleted the row
    names the request. The life's ``ttl`` tombstone writes the receipt, of an expiry: it
    names no request and no request time (the erasure's own tombstone, naming no life, is
    covered by it). Mutant ``p if t.request is None else t`` (without ``t.reason ==
    "explicit"``): the ``ttl`` receipt named the erasure's request."""
    w, s = World(), life()
    w.apply([_stamp(s, 1)])
    erased = NullChange(
        A, 0, 2, reason="explicit", request="req-7", request_event_id="ev-7", requested_at=T0
    )
    w.apply([erased])
    [r] = w.apply([_ttl_tomb(s)]).receipts
    assert (r.reason, r.rows_deleted, r.created_at) == ("ttl", 1, T0)
    assert (r.request, r.request_event_id, r.requested_at) == (None, None, None)

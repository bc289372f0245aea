"""An erasure's tombstone and null say when it was requested (``expiry-erasure-requested-at``:
the delete event's own ``ts``, the engine's ``erase_at``), and the receipt of every store says
it (``requested_at``): ``stream-expiry deletions`` timed an erasure from its tombstone, so
one a legal hold deferred for a week showed ~0 s, and no receipt said when it was asked for.

The messages are the service's: the partition processor of tests/unit/test_holds.py
decides, the outbox's own ``_put_tombstones`` writes the tombstone's event and null, and
the sink's plan (tests/unit/test_sinks_held_lives.py's harness) writes the receipts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from stream_expiry.codec import H_ERASURE_REQUESTED_AT, erasure_requested_at_of
from stream_expiry.sinks._messages import NullChange, TombstoneChange, encode_receipt
from stream_expiry.timeutil import format_ts
from tests.unit.test_holds import T0, TTL, hold
from tests.unit.test_sinks_held_lives import Service, Store

if TYPE_CHECKING:
    from stream_expiry.sinks._messages import Change

WEEK = 7 * 24 * 3600 * 1000


def _said(changes: list[Change]) -> list[tuple[str, str | None, int | None]]:
    """What each tombstone event and null says of its request's time."""
    return [
        (type(c).__name__, c.reason, c.requested_at)
        for c in changes
        if isinstance(c, TombstoneChange | NullChange)
    ]


def test_the_header_is_the_requests_time_as_decimal_text() -> None:
    assert erasure_requested_at_of([(H_ERASURE_REQUESTED_AT, b"%d" % T0)]) == T0
    assert erasure_requested_at_of([(H_ERASURE_REQUESTED_AT, b"soon")]) is None
    assert erasure_requested_at_of([]) is None  # an older version's tombstone


def test_an_on_time_erasure_says_its_requests_time_and_so_does_its_receipt() -> None:
    svc, store = Service(), Store()
    store.apply(svc.event("create", T0), T0 + 1)
    erased = svc.event("delete", T0 + 10)
    assert _said(erased) == [
        ("TombstoneChange", "explicit", T0 + 10),
        ("NullChange", "explicit", T0 + 10),
    ]
    [r] = store.apply(erased, T0 + 11).receipts
    assert (r.reason, r.rows_deleted, r.requested_at) == ("explicit", 1, T0 + 10)
    assert orjson.loads(encode_receipt(r))["requested_at"] == format_ts(T0 + 10)


def test_an_erasure_a_hold_deferred_says_when_it_was_requested_not_when_it_was_released() -> None:
    """The release sends the tombstone a week later, from the record's state alone (no
    read position): it says the request's time all the same."""
    svc, store = Service(), Store()
    store.apply(svc.event("create", T0), T0 + 1)
    svc.p.holds.place(hold())
    store.apply(svc.event("delete", T0 + 10), T0 + 11)  # deferred: a stamp, no tombstone
    svc.p.holds.release("h1")
    released = svc.tick(T0 + WEEK)
    assert _said(released) == [
        ("TombstoneChange", "explicit", T0 + 10),
        ("NullChange", "explicit", T0 + 10),
    ]
    [r] = store.apply(released, T0 + WEEK + 1).receipts
    assert (r.reason, r.requested_at, r.deleted_at) == ("explicit", T0 + 10, T0 + WEEK + 1)


def test_a_held_erased_life_beside_the_next_says_its_own_requests_time() -> None:
    """An erasure deferred, the record created again: the erased life's tombstone at the
    release (no null: the record lives on) says its request's time."""
    svc, store = Service(), Store()
    store.apply(svc.event("create", T0), T0 + 1)
    svc.p.holds.place(hold())
    store.apply(svc.event("delete", T0 + 100), T0 + 101)
    store.apply(svc.event("create", T0 + 200), T0 + 201)
    svc.p.holds.release("h1")
    released = svc.tick(T0 + 300)
    assert _said(released) == [("TombstoneChange", "explicit", T0 + 100)]
    [r] = store.apply(released, T0 + 301).receipts
    assert (r.reason, r.created_at, r.requested_at) == ("explicit", T0, T0 + 100)


def test_an_erasure_dated_before_the_previous_deletion_says_its_own_time() -> None:
    """An erasure read while the next life runs, dated before the previous life's end
    (``Engine._erase_before``): its tombstone ends the lives up to that end, and says the
    request's own time, not that end's."""
    svc, store = Service(), Store()
    store.apply(svc.event("create", T0), T0 + 1)
    store.apply(svc.tick(T0 + TTL), T0 + TTL + 1)  # life 1 expires
    store.apply(svc.event("create", T0 + 2 * TTL), T0 + 2 * TTL + 1)  # life 2
    late = svc.event("delete", T0 + 5)
    assert _said(late) == [("TombstoneChange", "explicit", T0 + 5)]


def test_an_expiry_says_none() -> None:
    svc, store = Service(), Store()
    store.apply(svc.event("create", T0), T0 + 1)
    expired = svc.tick(T0 + TTL)
    assert _said(expired) == [("TombstoneChange", "ttl", None), ("NullChange", "ttl", None)]
    [r] = store.apply(expired, T0 + TTL + 1).receipts
    assert r.requested_at is None
    assert orjson.loads(encode_receipt(r))["requested_at"] is None


def test_a_held_erased_life_says_its_own_time_when_the_next_life_is_erased_too() -> None:
    """Two erasures deferred by one hold, the record created in between: at the release the
    earlier life's tombstone (no null: it names ``current``, still a life) says its own
    request's time, not the later erasure's that ``current`` carries as ``erase_at``. (A
    ``Fired.requested`` taking the state after's ``erase_at`` whether or not a null follows
    gave both tombstones, and both receipts, the later time.)"""
    svc, store = Service(), Store()
    store.apply(svc.event("create", T0), T0 + 1)
    svc.p.holds.place(hold())
    store.apply(svc.event("delete", T0 + 100), T0 + 101)
    store.apply(svc.event("create", T0 + 200), T0 + 201)
    store.apply(svc.event("delete", T0 + 300), T0 + 301)
    svc.p.holds.release("h1")
    released = svc.tick(T0 + 400)
    assert _said(released) == [
        ("TombstoneChange", "explicit", T0 + 100),
        ("TombstoneChange", "explicit", T0 + 300),
        ("NullChange", "explicit", T0 + 300),
    ]
    receipts = store.apply(released, T0 + 401).receipts
    assert [(r.created_at, r.requested_at) for r in receipts] == [
        (T0, T0 + 100),
        (T0 + 200, T0 + 300),
    ]

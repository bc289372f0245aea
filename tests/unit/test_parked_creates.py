"""Creates parked until their record's running life expires: when they wake, what the
partition's settled offset says meanwhile, and what ``replay`` decides at its end.

Each test pins one rule of :meth:`PartitionProcessor._park` and :meth:`unpark` that the
reference models leave loose (they have no offsets and no wake heap)."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream_expiry.model import Identity
from tests.unit.test_holds import T0, TTL, Partition, _Rec, _unpark, hold


def test_a_create_after_an_erased_life_starts_the_next_life_at_once() -> None:
    """An erasure ended the running life before its expiry: a create dated after that
    expiry and read before it has no life to wait for, and starts the next one at once."""
    p = Partition()
    p.event("a", "create", T0)
    p.event("a", "delete", T0 + 100)
    created = p.event("a", "create", T0 + TTL + 5, now=T0 + 200)
    assert dict(created.verdicts) == {"recreated": 1}
    assert [s.created_at for s, _ in created.stamps] == [T0 + TTL + 5]
    assert p.proc.parked == 0


def test_an_erasure_a_hold_keeps_wakes_the_parked_create_at_once() -> None:
    """Under a hold, an erasure dated before the expiry a create waits for is kept for the
    release: that ends the running life as far as the create is concerned, which starts
    the next life in the same decision, not at the old expiry."""
    p = Partition()
    p.holds.place(hold())
    p.event("a", "create", T0)
    assert dict(p.event("a", "create", T0 + TTL, now=T0 + 100).verdicts) == {"parked": 1}
    erased = p.event("a", "delete", T0 + 200, now=T0 + 200)
    assert [(rid, reason) for rid, reason, _ in p.deferred] == [("a", "explicit")]
    assert [(s.created_at, s.held_lives[0][0]) for s, _ in erased.stamps[1:]] == [(T0 + TTL, T0)]
    assert p.proc.parked == 0
    assert _unpark(p, T0 + TTL) is None  # nothing left to wake


def test_a_create_moved_back_wakes_the_parked_create_at_the_earlier_expiry() -> None:
    """A create dated before the running life's creation moves it back, and its expiry
    with it; the record's parked events, and a create read after them dated after that
    earlier expiry, wake then, not at the expiry the first waited for."""
    p = Partition()
    p.event("a", "create", T0)  # expires at T0 + TTL
    assert dict(p.event("a", "create", T0 + TTL + 50, now=T0 + 10).verdicts) == {"parked": 1}
    moved = p.event("a", "create", T0 - 500, now=T0 + 20)  # the life now expires at T0 + 500
    assert [(s.created_at, s.expires_at) for s, _ in moved.stamps] == [(T0 - 500, T0 + 500)]
    later = p.event("a", "create", T0 + 600, now=T0 + 30)
    assert (later.stamps, p.proc.parked) == ([], 1)  # it waits with the parked create
    assert _unpark(p, T0 + 499) is None
    p.tick(T0 + 500)
    assert [(rid, reason, exp) for rid, reason, _, exp in p.tombstones] == [("a", "ttl", T0 + 500)]
    woken = _unpark(p, T0 + 500)
    assert woken is not None
    assert p.proc.parked == 0


def test_an_erasure_dated_after_a_moved_back_expiry_waits_behind_the_parked_create() -> None:
    """A create moves the running life's creation back, and its expiry with it, while a
    create of the next life waits parked for the old expiry. An erasure dated after the
    new expiry, read after both creates, is the next life's (in offset order it follows
    that life's create, which a processor reading the input again after a restore decides
    first): it waits behind the parked create and erases that life. Still waiting for the
    old expiry, it was taken for the running life's, ended that one early instead, and
    the next life, started behind it, was never erased."""
    p = Partition()
    p.event("a", "create", T0)  # expires at T0 + TTL
    assert dict(p.event("a", "create", T0 + TTL + 500, now=T0 + 100).verdicts) == {"parked": 1}
    moved = p.event("a", "create", T0 - 600, now=T0 + 200)  # the life now expires at T0 + 400
    assert [(s.created_at, s.expires_at) for s, _ in moved.stamps] == [(T0 - 600, T0 + 400)]
    erasure = p.event("a", "delete", T0 + 700, now=T0 + 300)
    assert erasure.tombstones == []  # behind the parked create, dated before it
    p.tick(T0 + 400)
    woken = _unpark(p, T0 + 400)
    assert woken is not None
    assert [(rid, reason, exp) for rid, reason, _, exp in p.tombstones] == [
        ("a", "ttl", T0 + 400),
        ("a", "explicit", T0 + TTL + 1_500),
    ]
    assert [(f.before.created_at, f.reason) for f in p.fired] == [
        (T0 - 600, "ttl"),
        (T0 + TTL + 500, "explicit"),
    ]
    state = p.proc.state_of(Identity("acme", "b1", "live", "conversation", "a").key)
    assert state is not None
    assert (state.live, state.created_at) == (False, T0 + TTL + 500)


def test_a_create_moved_back_to_an_expiry_passed_wakes_the_parked_create_at_once() -> None:
    """Moved back to an expiry the clock has passed (its timer not fired yet), the running
    life is due: a create read now would not be parked, and the engine ends the life
    before it starts the next. So the parked create is decided at once, as a restored
    processor reading it again decides it; waiting for the old expiry, it started the
    next life after a hold placed meanwhile was released, where the restored processor
    started it under the hold, keeping the due life for the release (hypothesis)."""
    p = Partition()
    p.event("a", "create", T0)  # expires at T0 + TTL
    assert dict(p.event("a", "create", T0 + TTL + 500, now=T0 + 100).verdicts) == {"parked": 1}
    moved = p.event("a", "create", T0 - 600, now=T0 + 500)  # expires at T0 + 400: passed
    assert [(s.created_at, s.expires_at) for s, _ in moved.stamps] == [
        (T0 - 600, T0 + 400),
        (T0 + TTL + 500, T0 + 2 * TTL + 500),
    ]
    assert [(rid, reason, at, exp) for rid, reason, at, exp in p.tombstones] == [
        ("a", "ttl", T0 + 500, T0 + 400)
    ]
    assert p.proc.parked == 0


def test_a_wake_time_left_by_an_earlier_parking_wakes_nothing() -> None:
    """A create parked, woken early by an erasure (its heap entry left behind), starts the
    next life; a create parked for that life's expiry must not wake at the first life's
    old expiry, where the left entry is, but at its own running life's."""
    p = Partition()
    p.event("a", "create", T0)  # expires at T0 + TTL
    p.event("a", "create", T0 + TTL, now=T0 + 100)  # parked for T0 + TTL
    erased = p.event("a", "delete", T0 + 200, now=T0 + 200)
    assert [s.created_at for s, _ in erased.stamps] == [T0 + TTL]  # the next life, at once
    assert dict(p.event("a", "create", T0 + 2 * TTL, now=T0 + 300).verdicts) == {"parked": 1}
    p.tick(T0 + TTL)
    assert _unpark(p, T0 + TTL) is None  # the left entry: the life runs to T0 + 2 TTL
    assert p.proc.parked == 1
    p.tick(T0 + 2 * TTL)
    woken = _unpark(p, T0 + 2 * TTL)
    assert woken is not None
    assert [s.created_at for s, _ in woken.stamps] == [T0 + 2 * TTL]


def test_the_settled_offset_stays_before_a_create_still_parked_after_a_wake() -> None:
    """Two records' creates parked for different expiries: waking the first, the
    partition is settled only up to the second, still parked (a crash reads it again)."""
    p = Partition()
    p.event("a", "create", T0)  # expires at T0 + TTL
    p.event("b", "create", T0 + 500)  # expires at T0 + TTL + 500
    p.event("a", "create", T0 + TTL, now=T0 + 600)
    p.event("b", "create", T0 + TTL + 500, now=T0 + 600)
    b_offset = p.offset
    p.event("c", "create", T0 + 600)
    p.tick(T0 + TTL)
    woken = _unpark(p, T0 + TTL)
    assert woken is not None
    assert [s.identity.record_id for s, _ in woken.stamps] == ["a"]
    assert woken.next_offset == b_offset
    p.tick(T0 + TTL + 500)
    last = _unpark(p, T0 + TTL + 500)
    assert last is not None
    assert last.next_offset == p.offset + 1  # nothing parked: settled to the end


def test_after_a_clock_stepped_back_a_create_after_an_ended_life_is_not_parked() -> None:
    """The wall clock steps back below the expiry of a life that has ended already (fired
    on time, or kept by a hold): a create after it has no running life to wait for, and
    starts the next life at once."""
    p = Partition()
    p.event("a", "create", T0)
    p.tick(T0 + TTL)  # ended on time
    assert [(rid, reason) for rid, reason, _, _ in p.tombstones] == [("a", "ttl")]
    again = p.event("a", "create", T0 + TTL + 5, now=T0 + 500)  # the clock stepped back
    assert dict(again.verdicts) == {"recreated": 1}
    assert [s.created_at for s, _ in again.stamps] == [T0 + TTL + 5]
    held = Partition()
    held.holds.place(hold())
    held.event("a", "create", T0)
    held.tick(T0 + TTL)  # kept by the hold
    assert [(rid, reason) for rid, reason, _ in held.deferred] == [("a", "ttl")]
    back = held.event("a", "create", T0 + TTL + 5, now=T0 + 500)
    assert dict(back.verdicts) == {"recreated": 1}
    assert [(s.created_at, s.held_lives[0][0]) for s, _ in back.stamps] == [(T0 + TTL + 5, T0)]
    assert (p.proc.parked, held.proc.parked) == (0, 0)


def _session_after_an_erasure_and_a_touch(*, batched: bool) -> tuple[int | None, int | None]:
    """A session with a create parked for its expiry, then one slice of its erasure
    (dated before that expiry) and a touch dated after the erasure: the created_at and
    expires_at of its life once every expiry has passed, relative to T0."""
    p = Partition()
    p.event("s", "create", T0, category="session")
    assert dict(p.event("s", "create", T0 + TTL, now=T0 + 100, category="session").verdicts) == {
        "parked": 1
    }
    body = {"category": "session", "org": "acme", "bot": "b1", "record_id": "s"}
    recs = [
        _Rec(p.offset + 1, None, orjson.dumps({**body, "op": "delete", "ts": T0 + 200})),
        _Rec(p.offset + 2, None, orjson.dumps({**body, "op": "touch", "ts": T0 + 300})),
    ]
    p.offset += 2
    for chunk in [recs] if batched else [[r] for r in recs]:
        p._take(p.proc.process(chunk, T0 + 400), T0 + 400)
    for t in (T0 + TTL, T0 + 2 * TTL, T0 + 3 * TTL):
        p.tick(t)
        _unpark(p, t)
    state = p.proc.state_of(Identity("acme", "b1", "live", "session", "s").key)
    assert state is not None
    created, expires = state.created_at, state.expires_at
    return (None if created is None else created - T0, None if expires is None else expires - T0)


def test_a_parked_create_an_erasure_wakes_is_decided_before_the_slices_later_events() -> None:
    """In offset order: the parked create (read first) starts the next life once the
    erasure ends the running one, and the touch read after both, dated before that life,
    changes nothing. Decided one by one, so it is; in one slice, the touch was decided
    before the woken create, started a life of its own, and the create was then taken for
    its re-delivery: the next life was never stamped, and the session went 700 ms early.
    What a record becomes must not depend on how its events were sliced."""
    one_by_one = _session_after_an_erasure_and_a_touch(batched=False)
    assert one_by_one == (TTL, 2 * TTL)  # the parked create's life, event by event
    assert _session_after_an_erasure_and_a_touch(batched=True) == one_by_one


_OPS = st.tuples(
    st.sampled_from(["a", "b"]),
    st.sampled_from(["create", "touch", "delete"]),
    # Times around the expiries (TTL apart), where parking and erasures meet.
    st.sampled_from([0, 200, 300, TTL - 1, TTL, TTL + 200, TTL + 300, 2 * TTL, 2 * TTL + 300]),
    st.sampled_from(["session", "conversation"]),
)


def _lives(events: list[tuple[str, str, int, str]], cuts: list[int]) -> object:
    """Every tombstone and the final state of each record, the events read at one time
    (``T0 + 100``: creates dated after a running life's expiry park) in slices ending at
    ``cuts``, then the clock run past every expiry."""
    p = Partition()
    now = T0 + 100
    recs = []
    for rid, op, ts, category in events:
        p.offset += 1
        body = {"category": category, "org": "acme", "bot": "b1", "record_id": rid}
        recs.append(_Rec(p.offset, None, orjson.dumps({**body, "op": op, "ts": T0 + ts})))
    bounds = [0, *sorted(set(cuts)), len(recs)]
    for start, end in itertools.pairwise(bounds):
        if start < end:
            p._take(p.proc.process(recs[start:end], now), now)
    for t in range(T0 + TTL // 2, T0 + 6 * TTL, TTL // 2):
        p.tick(t)
        _unpark(p, t)
    finals: dict[tuple[str, str], tuple[int | None, bool] | None] = {}
    for rid, category in {(e[0], e[3]) for e in events}:
        state = p.proc.state_of(Identity("acme", "b1", "live", category, rid).key)
        finals[rid, category] = None if state is None else (state.created_at, state.live)
    return sorted(p.tombstones, key=repr), finals


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_OPS, min_size=1, max_size=8), cuts=st.lists(st.integers(1, 8), max_size=4))
@example(  # the helper's case: a parked create, then an erasure and a touch in one slice
    events=[
        ("a", "create", 0, "session"),
        ("a", "create", TTL, "session"),
        ("a", "delete", 200, "session"),
        ("a", "touch", 300, "session"),
    ],
    cuts=[2],
)
def test_what_a_record_becomes_does_not_depend_on_how_its_events_were_sliced(
    events: list[tuple[str, str, int, str]], cuts: list[int]
) -> None:
    """The service reads events in slices of whatever the fetch returned; replay and a
    restart read the same events cut elsewhere. The same events, one by one or in any
    slices, give the same tombstones and the same lives (a parked create woken at its
    slice's end, after a later touch, was taken for a re-delivery: a mutation helper)."""
    cuts = [c for c in cuts if c < len(events)]
    one_by_one = _lives(events, list(range(1, len(events))))
    assert _lives(events, cuts) == one_by_one

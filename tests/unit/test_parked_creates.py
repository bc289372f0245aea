"""Creates parked until their record's running life expires: when they wake, what the
partition's settled offset says meanwhile, and what ``replay`` decides at its end.

Each test pins one rule of :meth:`PartitionProcessor._park` and :meth:`unpark` that the
reference models leave loose (they have no offsets and no wake heap)."""

from __future__ import annotations

from tests.unit.test_holds import T0, TTL, Partition, _unpark, hold


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
    with it; a create parked behind the first for that earlier expiry wakes the record's
    parked events then, not at the expiry the first waited for."""
    p = Partition()
    p.event("a", "create", T0)  # expires at T0 + TTL
    assert dict(p.event("a", "create", T0 + TTL + 50, now=T0 + 10).verdicts) == {"parked": 1}
    moved = p.event("a", "create", T0 - 500, now=T0 + 20)  # the life now expires at T0 + 500
    assert [(s.created_at, s.expires_at) for s, _ in moved.stamps] == [(T0 - 500, T0 + 500)]
    assert dict(p.event("a", "create", T0 + 600, now=T0 + 30).verdicts) == {"parked": 1}
    assert _unpark(p, T0 + 499) is None
    p.tick(T0 + 500)
    assert [(rid, reason, exp) for rid, reason, _, exp in p.tombstones] == [("a", "ttl", T0 + 500)]
    woken = _unpark(p, T0 + 500)
    assert woken is not None
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

"""The engine's timers and horizon through its own API (feed, load, load_timers,
fire_now, cancel, advance, horizon_target): what mutation testing of ``engine.py``'s
timer half found unchecked (round 49).

The processor drives the engine with slot None, never calls ``fire_now`` on a record that
has a timer, cancels a record's timer itself before a legal hold takes it over, and loads
the next slice of timers before it fires (which puts a record's new timer in the place of
an old one left in the wheel); so the processor's tests pass whether or not the engine
does these things. These pin them on the engine, whose API is the shell's contract: a
tombstone once per life, never early, with the slot its timer was scheduled for.
"""

from __future__ import annotations

from stream_expiry.engine import Engine
from stream_expiry.model import Identity, Stamp
from tests.unit.test_engine import (
    BASE,
    SLIDING,
    _engine_at,
    _timers,
    constant_policy,
    ev,
    resolver,
)


def _created(engine: Engine[str], rid: str, ts: int, slot: str = "p") -> Stamp:
    """A new ``error`` record (ttl 50) created at ``ts``, its timer in the wheel."""
    out = engine.feed(ev("error", rid, "create", ts), None, ts, slot)
    assert out.state is not None
    return out.state


def test_a_life_fired_now_is_not_fired_again_by_its_timer() -> None:
    """``fire_now`` ends a life at once (a legal hold's release): its timer, if it still
    has one, goes with it, or the life got a second ``ttl`` tombstone at its expiry.
    Without the cancel the wheel kept the timer and fired it."""
    engine = _engine_at(BASE)
    stamp = _created(engine, "a", BASE)
    assert engine.pending_in_wheel == 1
    fired = engine.fire_now(stamp, BASE + 60)
    assert (fired.reason, fired.after.live) == ("ttl", False)
    assert engine.pending_in_wheel == 0
    assert engine.advance(BASE + 1_000) == []


def test_a_cancelled_timer_among_the_overdue_of_a_sliced_firing_does_not_fire() -> None:
    """A firing in slices (``limit``) leaves due timers waiting among the overdue, out of
    the wheel; a cancel (a legal hold takes the record over) must take the record's
    timer out of those too, or the next slice fired a record the hold keeps."""
    engine = _engine_at(BASE)
    engine.start_horizon(BASE + 10_000, _timers(BASE, [BASE + 10, BASE + 20, BASE + 30]), "p")
    [(first, _)] = engine.advance(BASE + 100, limit=1)
    assert first.before.expires_at == BASE + 10
    engine.cancel(Identity("o", "b", "live", "error", "r1").key)
    assert engine.pending_in_wheel == 1
    assert engine.next_due_ms() == BASE + 30
    fired = engine.advance(BASE + 100)
    assert [f.before.expires_at for f, _ in fired] == [BASE + 30]


def test_records_loaded_fire_with_the_slot_they_were_loaded_for() -> None:
    """``load`` (stored records on start or assignment) keeps each record's slot, as
    ``start_horizon`` and ``extend_horizon`` keep their timers' (the engine is generic in
    it): what fires names the partition it belongs to. The processor passes None, so only
    this test sees the slot dropped."""
    engine = _engine_at(BASE)
    a = Stamp(Identity("o", "b", "live", "error", "a"), BASE, BASE + 10, 10, "default")
    b = a._replace(identity=Identity("o", "b", "live", "error", "b"), expires_at=BASE + 20)
    engine.load([(a, "first"), (b, "second")])
    fired = engine.advance(BASE + 100)
    assert [(f.before.identity.record_id, slot) for f, slot in fired] == [
        ("a", "first"),
        ("b", "second"),
    ]


def test_a_touch_that_slides_a_session_past_the_horizon_takes_its_old_timer_out() -> None:
    """A touch slides a session beyond the horizon's end: its new timer waits in the
    store (loaded with the next slice), and its old one must leave the wheel, or it fired
    the session at its old expiry, before the expiry the touch gave it (never early). The
    processor's harness hides it: its next slice, loaded before the firing, puts the new
    timer in the old one's place."""
    engine: Engine[str] = Engine(resolver(constant_policy), SLIDING, now_ms=BASE, horizon_ms=400)
    created = engine.feed(ev("session", "s", "create", BASE), None, BASE, "p")
    assert created.state is not None  # ttl 300: due at 300, within the horizon
    assert engine.wheel_size == 1
    touched = engine.feed(ev("session", "s", "touch", BASE + 200), created.state, BASE, "p")
    assert touched.state is not None
    assert touched.state.expires_at == BASE + 500  # past the horizon's end (400)
    assert engine.wheel_size == 0
    assert engine.advance(BASE + 400) == []


def test_the_horizon_is_loaded_further_once_a_quarter_of_it_is_used() -> None:
    """``horizon_target``: the next slice is due when the clock has used a quarter of the
    horizon (not before: each load is an index query), or, ``eager`` (the last load
    stopped short at its limit), as soon as the end is short of a whole horizon. The
    target is always a whole horizon from the clock."""
    engine: Engine[str] = Engine(resolver(constant_policy), SLIDING, now_ms=BASE, horizon_ms=400)
    assert engine.horizon_end == BASE + 400
    assert engine.horizon_target(BASE + 99) is None
    assert engine.horizon_target(BASE + 100) == BASE + 500
    assert engine.horizon_target(BASE, eager=True) is None  # a whole horizon ahead
    assert engine.horizon_target(BASE + 1, eager=True) == BASE + 401
    engine.extend_horizon(BASE + 500, [], "p")
    assert engine.horizon_target(BASE + 199) is None
    assert engine.horizon_target(BASE + 200) == BASE + 600


def test_a_timer_loaded_again_replaces_the_one_waiting_among_the_overdue() -> None:
    """A stored record's timer loaded (a slice, a start) while its old timer waits among
    the overdue a sliced firing left: the loaded one is the record's timer now, as it
    replaces one in the wheel; the old one must not fire too (early, and twice)."""
    engine = _engine_at(BASE)
    engine.start_horizon(BASE + 10_000, _timers(BASE, [BASE + 10, BASE + 20]), "p")
    [(first, _)] = engine.advance(BASE + 100, limit=1)
    assert first.before.identity.record_id == "r0"
    # r1, due at 5,000 now, and r2, a record none of the overdue is of.
    _, later, other = _timers(BASE, [BASE + 10, BASE + 5_000, BASE + 6_000])
    engine.load_timers([other, later], "p")
    assert engine.pending_in_wheel == 2
    assert engine.advance(BASE + 4_999) == []
    fired = engine.advance(BASE + 6_000)
    assert [(f.before.expires_at, f.emitted_at) for f, _ in fired] == [
        (BASE + 5_000, BASE + 6_000),
        (BASE + 6_000, BASE + 6_000),
    ]


def test_a_timer_loaded_past_the_horizon_takes_the_records_timer_out_of_the_wheel() -> None:
    """``load_timers`` does for a stored timer what tracking a new state does: one due at
    or past the horizon's end waits in the store, and the record's timer in the wheel (an
    earlier expiry) goes, or it fired the record before the expiry it has now."""
    engine = _engine_at(BASE)
    engine.start_horizon(BASE + 1_000, _timers(BASE, [BASE + 100]), "p")
    [moved] = _timers(BASE, [BASE + 2_000])  # r0 again, due past the end now
    engine.load_timers([moved], "p")
    assert engine.wheel_size == 0
    assert engine.advance(BASE + 1_000) == []


def test_timers_due_at_the_clocks_time_left_by_a_slice_fire_in_the_next_slice_then() -> None:
    """A firing in slices (``limit``) at one clock reading, then another in the same
    millisecond (the firing task takes a backlog slice by slice, faster than the clock
    ticks): the timers due exactly then that the first slice left are due, not early,
    and the next slice fires them. Taken for a clock stepped back (``>=``), they went
    back into the wheel, came out of it again as due, more than the slice's room, and
    back: every slice of that millisecond fired nothing."""
    engine = _engine_at(BASE)
    dues = [BASE + 100, BASE + 100, BASE + 100]
    engine.start_horizon(BASE + 10_000, _timers(BASE, dues), "p")
    fired = [engine.advance(BASE + 100, limit=1) for _ in range(4)]
    assert [[f.before.identity.record_id for f, _ in one] for one in fired] == [
        ["r0"],
        ["r1"],
        ["r2"],
        [],
    ]
    assert engine.pending_in_wheel == 0


def test_a_timer_due_at_the_horizons_end_waits_in_the_store() -> None:
    """The horizon is half-open: ``load_timers`` schedules the timers due *before* its end
    (``start_horizon``: "every one due before ``end``"), as tracking a new state does; one
    due exactly at the end belongs to the next slice, which loads it from the store. Kept
    in the wheel too, the wheel held more than its slices say (``shrink_horizon``'s bound)."""
    engine = _engine_at(BASE)
    engine.start_horizon(BASE + 1_000, _timers(BASE, [BASE + 999, BASE + 1_000]), "p")
    assert engine.wheel_size == 1
    assert [f.before.expires_at for f, _ in engine.advance(BASE + 2_000)] == [BASE + 999]


def test_a_horizon_extended_to_an_earlier_end_keeps_its_end() -> None:
    """``extend_horizon`` only moves the end forward: a slice that ends before the end the
    wheel has (loaded late, after a larger one) must not shorten it, or a record created
    then, due between the two ends, got no timer in the wheel although the slices that
    cover its expiry were loaded already."""
    engine: Engine[str] = Engine(resolver(constant_policy), SLIDING, now_ms=BASE, horizon_ms=400)
    engine.extend_horizon(BASE + 200, [], "p")
    assert engine.horizon_end == BASE + 400
    _created(engine, "a", BASE + 100)  # error, ttl 50: due at 150, before either end
    created = engine.feed(ev("session", "s", "create", BASE), None, BASE, "p")
    assert created.state is not None
    assert created.state.expires_at == BASE + 300  # between the slice's end and the wheel's
    assert engine.wheel_size == 2

"""The horizon loaded in slices: a partition holds at most ``max_loaded_timers`` timers
from its store, loads at most ``load_slice`` at once, and still fires every record at its
time (``stream_expiry.state.processor``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream_expiry.policy import Resolution
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from stream_expiry.model import Identity
    from stream_expiry.state import Effects

BASE = 1_700_000_000_000
HOUR = 3_600_000
TTL = {"error": 2 * HOUR, "session": 90 * 60_000}


class Rec(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes | None


def _resolve(identity: Identity, at_ms: int) -> Resolution:
    return Resolution(TTL[identity.category], "default")


def _processor(
    now: int, *, max_loaded_timers: int = 20_000, load_slice: int = 2_000
) -> PartitionProcessor:
    return PartitionProcessor(
        "in",
        0,
        PartitionStore(MemoryKV()),
        resolve=_resolve,
        sliding=frozenset({"session"}),
        categories=frozenset(TTL),
        max_skew_ms=10**12,
        now_ms=now,
        max_loaded_timers=max_loaded_timers,
        load_slice=load_slice,
    )


def _event(record: str, ts: int, op: str = "create", category: str = "error") -> bytes:
    body = {"category": category, "record_id": record, "org": "o", "ts": ts, "op": op}
    return orjson.dumps(body)


Fired = tuple[str, str, int, int | None]  # key, reason, emitted_at, the expiry it ended


def _settled(proc: PartitionProcessor, effects: Effects, now: int) -> list[Fired]:
    proc.settle(effects, now)
    return [
        (f.before.identity.key, f.reason, f.emitted_at, f.before.expires_at)
        for f in effects.tombstones
    ]


def _run(
    proc: PartitionProcessor, since: int, until: int, step: int, first_turn: int | None = None
) -> tuple[list[Fired], int]:
    """The service's two tasks over ``[since, until]`` on a clock that jumps to the next
    thing either does: the firing task wakes at the partition's next due time; the loop
    extends the horizon once a ``step``. Returns what fired and the most timers held."""
    fired: list[Fired] = []
    most = proc.timers
    now, turn = since, since if first_turn is None else first_turn
    for _ in range(100_000):  # a partition that never stops being due is a failure
        due = proc.next_due_ms()
        now = max(now, turn if due is None else min(due, turn))
        if now > until:
            return fired, most
        if due is not None and due <= now:
            fired += _settled(proc, proc.fire_due(now, 2_000), now)
        if now >= turn:
            proc.extend_horizon(now)
            turn += step
        most = max(most, proc.timers)
    raise AssertionError("the partition was due again and again without firing")


def test_a_dense_horizon_is_loaded_in_slices_and_every_record_fires_at_its_time() -> None:
    """3,000 records due one a second from two hours on: an uncapped partition holds the
    whole hour ahead (3,600 timers); this one never more than its 100, and fires each
    record at its expiry, once, though the loop's turns (ten minutes apart here) could
    never load them in time: the partition is due where its horizon ends."""
    created = BASE + 3000 * 1000
    creates = [Rec(i, None, _event(f"r{i}", BASE + i * 1000)) for i in range(3000)]
    uncapped = _processor(created)
    capped = _processor(created, max_loaded_timers=100, load_slice=50)
    for proc in (uncapped, capped):
        proc.settle(proc.process(creates, created), created)
        assert proc.timers == 0  # all due past the horizon: in the store only
    end = BASE + 2 * HOUR + 3000 * 1000
    want, most_uncapped = _run(uncapped, created, end, 600_000)
    got, most = _run(capped, created, end, 600_000)
    assert most_uncapped >= 3000
    assert most <= 100
    assert got == want
    assert sorted(k for k, *_ in got) == sorted(f"o/_/live/error/r{i}" for i in range(3000))
    assert all(emitted == expires and reason == "ttl" for _, reason, emitted, expires in got)


def test_one_load_takes_at_most_a_slice() -> None:
    now = BASE + 10_000
    proc = _processor(now, max_loaded_timers=10_000, load_slice=300)
    creates = [Rec(i, None, _event(f"r{i}", BASE + i)) for i in range(10_000)]
    proc.settle(proc.process(creates, now), now)
    later = now + HOUR + 30 * 60_000  # the first due are 30 minutes ahead
    loads = []
    while loaded := proc.extend_horizon(later):
        loads.append(loaded)
    assert max(loads) <= 300
    assert sum(loads) == 10_000


def test_a_restart_loads_at_most_the_limit_and_the_rest_when_due() -> None:
    """A partition opened on a store with 1,000 timers within the horizon loads 100;
    the others come as the first fire."""
    now = BASE + 2 * HOUR
    first = _processor(now)
    creates = [
        Rec(i, None, _event(f"r{i}", now - 2 * HOUR + 60_000 + i * 100)) for i in range(1000)
    ]
    first.settle(first.process(creates, now), now)
    assert first.timers == 1000
    again = PartitionProcessor(
        "in",
        0,
        first.store,
        resolve=_resolve,
        sliding=frozenset({"session"}),
        categories=frozenset(TTL),
        max_skew_ms=10**12,
        now_ms=now,
        max_loaded_timers=100,
    )
    assert again.timers == 100
    fired, most = _run(again, now, now + 200_000, 1000)
    assert most <= 100 + 2_000  # a slice beyond a full wheel: loaded as it empties
    assert [k for k, *_ in fired] == [f"o/_/live/error/r{i}" for i in range(1000)]
    assert all(emitted == expires for *_, emitted, expires in fired)


def test_more_records_due_at_one_millisecond_than_a_slice_all_fire_then() -> None:
    now = BASE + 10_000
    proc = _processor(now, max_loaded_timers=20, load_slice=10)
    creates = [Rec(i, None, _event(f"r{i}", BASE)) for i in range(50)]
    proc.settle(proc.process(creates, now), now)
    fired, _ = _run(proc, now, BASE + 3 * HOUR, 60_000)
    assert len(fired) == 50
    assert {emitted for *_, emitted, _ in fired} == {BASE + 2 * HOUR}


def test_a_wheel_filled_by_new_records_still_loads_the_stored_ones_on_time() -> None:
    """New records fill the wheel to its limit (those due at one millisecond stay
    together, over the limit), so the loop's turns load nothing; the stored records due
    at the horizon's end must still fire then, not at the turn after it."""
    start = BASE + 2 * HOUR
    proc = _processor(start, max_loaded_timers=5)
    # 10 due 59 minutes on, from new events; 10 stored, due at the horizon's end and on
    soon = [Rec(i, None, _event(f"n{i}", start - 2 * HOUR + 59 * 60_000)) for i in range(10)]
    later = [Rec(10 + i, None, _event(f"s{i}", start - HOUR + i)) for i in range(10)]
    proc.settle(proc.process(later + soon, start), start)
    assert proc.timers == 10
    # The loop's turns five minutes past each ten: the last before the end at 55 minutes.
    fired, _ = _run(proc, start, start + 2 * HOUR, 10 * 60_000, first_turn=start + 5 * 60_000)
    assert len(fired) == 20
    assert all(emitted == expires for *_, emitted, expires in fired)


EVENT = st.tuples(
    st.integers(0, 30),  # record
    st.sampled_from(["create", "touch", "delete"]),
    st.sampled_from(["error", "session"]),
    st.integers(2 * HOUR, 4 * HOUR),  # event time after BASE: most due past the horizon
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.lists(EVENT, max_size=8), st.integers(1, 40 * 60_000)), max_size=30
    ),
    cap=st.integers(1, 12),
    load=st.integers(1, 5),
)
@example(  # found in CI: new records due within the horizon, two at one millisecond, cap 1
    steps=[([(0, "create", "error", 2 * HOUR), (2, "create", "error", 2 * HOUR + 1),
             (1, "create", "error", 2 * HOUR + 1)], 1)],
    cap=1,
    load=1,
)  # fmt: skip
@example(  # found in CI: a delete of a record never created (its tombstone ended no expiry),
    # then the record created and deleted within one millisecond
    steps=[([(0, "delete", "error", 2 * HOUR), (0, "create", "error", 2 * HOUR + 1),
             (0, "delete", "error", 2 * HOUR)], 1)],
    cap=1,
    load=1,
)  # fmt: skip
def test_a_capped_horizon_fires_what_an_uncapped_one_fires(
    steps: list[tuple[list[tuple[int, str, str, int]], int]], cap: int, load: int
) -> None:
    """Any events, at any times, with the clock moving by any steps: a partition holding a
    few timers at most fires the same tombstones at the same times as one holding all."""
    uncapped, capped = _side_by_side(steps, cap, load)
    _same_tombstones(capped, uncapped)


def _same_tombstones(capped: list[Fired], uncapped: list[Fired]) -> None:
    """The same tombstones, each at the same time, in time order. Timers due at one
    millisecond fire in the order they were scheduled, and those a full wheel dropped and
    loaded again in the store's (key) order: within a millisecond the order may differ.
    An explicit delete of a record never created ended no expiry (None), so the sort puts
    None first rather than comparing it with a time."""
    assert sorted(capped, key=_order) == sorted(uncapped, key=_order)
    assert [f[2] for f in capped] == sorted(f[2] for f in capped)


def _order(fired: Fired) -> tuple[str, str, int, int]:
    key, reason, emitted_at, expired = fired
    return key, reason, emitted_at, -1 if expired is None else expired


def _side_by_side(
    steps: list[tuple[list[tuple[int, str, str, int]], int]],
    cap: int,
    load: int,
    check: Callable[[PartitionProcessor, int], None] | None = None,
) -> tuple[list[Fired], list[Fired]]:
    """What an uncapped partition and one capped at ``cap`` timers (loading ``load`` at
    once) fire, given the same steps: events, then the clock moved on. ``check(capped,
    now)`` runs after each step's events."""
    now = BASE + 4 * HOUR
    procs = [_processor(now), _processor(now, max_loaded_timers=cap, load_slice=load)]
    outputs: list[list[Fired]] = [[], []]
    offset = 0
    for events, advance in steps:
        records = [
            Rec(offset + i, None, _event(f"r{n}", BASE + t, op, cat))
            for i, (n, op, cat, t) in enumerate(events)
        ]
        offset += len(records)
        for proc, out in zip(procs, outputs, strict=True):
            out += _settled(proc, proc.process(records, now), now)
        if check is not None:
            check(procs[1], now)
        for proc, out in zip(procs, outputs, strict=True):
            fired, _ = _run(proc, now, now + advance, 20 * 60_000)
            out += fired
        now += advance
    return outputs[0], outputs[1]


def test_new_records_due_within_the_horizon_keep_the_wheel_bounded() -> None:
    """5,000 new records due within the hour, in batches, in no order of expiry: the
    wheel holds at most a quarter over its limit of 100 at any time (an uncapped
    partition holds all 5,000), and every record fires at its expiry, once, as the
    uncapped partition fires it."""
    now = BASE + 2 * HOUR
    order = list(range(5_000))
    order.sort(key=lambda i: (i * 7_919) % 5_000)  # a fixed shuffle
    creates = [  # error: 2 hours to live; due 1 to 59 minutes from now, 0.7 s apart
        Rec(n, None, _event(f"r{i}", now - 2 * HOUR + 60_000 + i * 700))
        for n, i in enumerate(order)
    ]
    uncapped = _processor(now)
    capped = _processor(now, max_loaded_timers=100, load_slice=50)
    for proc in (uncapped, capped):
        most = 0
        for first in range(0, len(creates), 250):
            proc.settle(proc.process(creates[first : first + 250], now), now)
            most = max(most, proc.timers)
        assert most <= (125 if proc is capped else 5_000)
    assert uncapped.timers == 5_000
    want, _ = _run(uncapped, now, now + HOUR, 60_000)
    got, most = _run(capped, now, now + HOUR, 60_000)
    assert most <= 125
    assert got == want
    assert sorted(k for k, *_ in got) == sorted(f"o/_/live/error/r{i}" for i in range(5_000))
    assert all(emitted == expires and reason == "ttl" for _, reason, emitted, expires in got)


NEAR_EVENT = st.tuples(
    st.integers(0, 120),  # record
    st.sampled_from(["create", "create", "touch", "delete"]),
    st.sampled_from(["error", "session"]),
    st.integers(2 * HOUR, 3 * HOUR + 20 * 60_000),  # most due within the first horizon
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.lists(NEAR_EVENT, max_size=40), st.integers(1, 20 * 60_000)), max_size=20
    ),
    cap=st.integers(1, 12),
    load=st.integers(1, 5),
)
@example(  # found in CI: a load into room for one took a millisecond of two whole
    steps=[([(0, "create", "error", 2 * HOUR + 3), (1, "create", "error", 2 * HOUR + 2),
             (2, "create", "error", 2 * HOUR + 3)], 1), ([], 1)],
    cap=2,
    load=1,
)  # fmt: skip
def test_new_records_over_a_full_wheel_fire_what_an_uncapped_one_fires(
    steps: list[tuple[list[tuple[int, str, str, int]], int]], cap: int, load: int
) -> None:
    """Many new records due within the horizon, touched, deleted, at any times: a
    partition that drops the latest timers when its wheel is full fires the same
    tombstones at the same times as one holding all, and holds few at any time."""

    def bounded(capped: PartitionProcessor, now: int) -> None:
        # A quarter over the limit at most, unless those over it are due already or at one
        # millisecond: a cut keeps the earliest millisecond whole (no later timer is held
        # then), and a load fills the wheel up to its limit and then takes the rest of the
        # last millisecond it reached (those before it stay under the limit).
        dues = [entry[0] for entry in capped._engine._wheel._index.values()]
        before_last = [d for d in dues if now < d < max(dues, default=now)]
        assert len(dues) <= cap + cap // 4 or len(before_last) < cap, (sorted(dues), now)

    uncapped, capped = _side_by_side(steps, cap, load, bounded)
    _same_tombstones(capped, uncapped)


def _due_at(proc: PartitionProcessor, now: int, name: str, dues: list[int], at: int = 0) -> None:
    """Create one error record (two hours to live) due at each of ``dues``, settled."""
    creates = [
        Rec(at + i, None, _event(f"{name}{at + i}", due - 2 * HOUR)) for i, due in enumerate(dues)
    ]
    proc.settle(proc.process(creates, now), now)


def test_the_wheel_grows_a_quarter_over_its_limit_before_it_is_cut_back_to_it() -> None:
    """Cutting costs a pass over the wheel, so it waits for a quarter more than the limit
    (125 timers for 100), and then keeps the limit: the earliest 100."""
    now = BASE + 2 * HOUR
    proc = _processor(now, max_loaded_timers=100)
    dues = [now + 60_000 + i * 1_000 for i in range(126)]
    for first in range(0, 125, 5):
        _due_at(proc, now, "r", dues[first : first + 5], at=first)
    assert proc.timers == 125
    _due_at(proc, now, "r", dues[125:], at=125)
    assert proc.timers == 100
    assert proc.next_due_ms() == dues[0]
    fired, most = _run(proc, now, now + HOUR, 60_000)
    assert most <= 100
    assert [emitted for _, _, emitted, _ in fired] == dues


@pytest.mark.parametrize(
    ("overdue", "held"),
    [
        (50, 100),  # the limit in all: 50 overdue and the earliest 50 in the wheel
        (90, 115),  # 90 overdue leave room for 10: the wheel keeps a least load, 25
    ],
)
def test_timers_due_and_not_fired_yet_count_against_the_limit(overdue: int, held: int) -> None:
    """A firing in slices leaves timers due and not fired (out of the wheel, still held):
    a cut keeps the limit for all of them together, and never fewer than a least load in
    the wheel, so that the next records still fire from it as the store's load waits."""
    now = BASE + 2 * HOUR
    proc = _processor(now, max_loaded_timers=100)  # least load: a quarter of the limit, 25
    soon = [now + 60_000 + i for i in range(overdue + 10)]
    _due_at(proc, now, "s", soon)
    later = now + 61_000
    effects = proc.fire_due(later, 10)
    proc.settle(effects, later)
    assert len(effects.tombstones) == 10
    assert proc.timers == overdue
    _due_at(proc, later, "n", [later + 60_000 + i * 1_000 for i in range(126)], at=1_000)
    assert proc.timers == held
    fired, _ = _run(proc, later, later + HOUR, 60_000)
    assert len(fired) == overdue + 126
    assert all(emitted == max(expires or 0, later) for _, _, emitted, expires in fired)


def test_a_slice_cut_short_by_its_limit_is_followed_at_once() -> None:
    """Loads wait for a quarter of the horizon to pass, except after a slice its limit
    cut short: the horizon then ends before the hour ahead, and the next slice follows at
    the next turn (here at the same time), not a quarter of an hour later."""
    created = BASE + 10_000
    proc = _processor(created, load_slice=300)
    creates = [Rec(i, None, _event(f"r{i}", BASE + i)) for i in range(3_000)]
    proc.settle(proc.process(creates, created), created)  # due in two hours: stored only
    later = BASE + 2 * HOUR - 50 * 60_000  # every one due 50 minutes on, in 3 seconds
    loads = []
    while loaded := proc.extend_horizon(later):
        loads.append(loaded)
    assert loads == [300] * 10


def test_a_full_wheel_loads_nothing_until_its_horizon_ends_then_what_fits() -> None:
    """With room for fewer timers than a least load (a quarter of a slice), a load waits:
    for room, or for the horizon's end, where the partition is due and takes what fits."""
    now = BASE + 2 * HOUR
    proc = _processor(now, max_loaded_timers=100, load_slice=100)  # least load 25
    _due_at(proc, now, "n", [now + 60_000 + i for i in range(90)])
    end = now + HOUR
    _due_at(proc, now, "s", [end + i for i in range(20)], at=90)  # stored
    assert proc.timers == 90
    assert proc.extend_horizon(end - 1) == 0
    assert proc.extend_horizon(end) == 10
    assert proc.timers == 100

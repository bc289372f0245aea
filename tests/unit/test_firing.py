"""The timer task (``stream_expiry.firing``): woken by an earlier timer, and group commit.

Real processors over the memory store; the outbox is a stand-in that records what it was
given and hands back ack futures the test resolves, which is all the task sees of Kafka.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

import anyio
import orjson
import pytest
from anyio import wait_all_tasks_blocked

from stream_expiry import firing
from stream_expiry.firing import Firing
from stream_expiry.policy import Resolution
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, ItemsView

    from stream_expiry.model import Identity
    from stream_expiry.outbox import Outbox
    from stream_expiry.state.processor import Effects

BASE = 1_700_000_000_000
TTL_MS = 1_000


def _resolve(identity: Identity, at_ms: int) -> Resolution:
    return Resolution(TTL_MS, "default")


class _Clock:
    def __init__(self) -> None:
        self.now = BASE

    def __call__(self) -> int:
        return self.now


class _Outbox:
    """Takes what the timer task sends; each send's ack is a future the test resolves."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []  # the keys tombstoned, per send
        self.acks: list[asyncio.Future[None]] = []
        self.arrived = anyio.Event()
        self.times: list[int] = []  # the now_ms of each send

    async def send(self, items: list[tuple[PartitionProcessor, Any]], now_ms: int) -> list[Any]:
        self.sent.append([f.before.identity.key for _, e in items for f in e.tombstones])
        self.times.append(now_ms)
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        self.arrived.set()
        return [ack]


def _processor(clock: _Clock, partition: int = 0) -> PartitionProcessor:
    return PartitionProcessor(
        "in",
        partition,
        PartitionStore(MemoryKV()),
        resolve=_resolve,
        sliding=frozenset({"session"}),
        categories=frozenset({"error", "session"}),
        max_skew_ms=10**12,
        now_ms=clock.now,
    )


def _create(
    proc: PartitionProcessor,
    record_id: str,
    created_at: int,
    clock: _Clock,
    category: str = "error",
    op: str = "create",
) -> Effects:
    """A record due at ``created_at + TTL_MS`` (or a touch of it), decided and settled."""
    body = {"category": category, "record_id": record_id, "org": "o", "ts": created_at, "op": op}
    rec = type("Rec", (), {"offset": 0, "key": None, "value": orjson.dumps(body)})()
    effects = proc.process([rec], clock.now)
    proc.settle(effects, clock.now)
    return effects


def _firing(
    proc: PartitionProcessor,
    outbox: _Outbox,
    clock: _Clock,
    tick_ms: int = 0,
    read_since: Callable[[int], Awaitable[None]] | None = None,
) -> Firing:
    """No tick unless asked: what a test sees waits for acks or a due time, not a pause.
    ``read_since``: the service's read of the holds before a firing (none by default)."""
    return Firing(
        {("in", 0): proc},
        cast("Outbox", outbox),
        anyio.Lock(),
        clock=clock,
        on_fired=lambda _f: None,
        tick_ms=tick_ms,
        read_since=read_since,
    )


@pytest.mark.asyncio
async def test_an_earlier_timer_wakes_the_sleeping_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # Asleep with nothing due it would look again only after IDLE_S: an hour here, so only
    # the wake-up can make the tombstone go out before the test's deadline.
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)
    clock = _Clock()
    proc = _processor(clock)
    outbox = _Outbox()
    task = _firing(proc, outbox, clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        await wait_all_tasks_blocked()
        assert outbox.sent == []
        _create(proc, "r1", clock.now - TTL_MS, clock)  # due now
        task.due_at(proc.next_due_ms())
        with anyio.fail_after(5):
            await outbox.arrived.wait()
        task.due_at(clock.now)  # ingest may say so while the task is awake: nothing to wake
        # Acked, it sleeps again; a second timer wakes it the same way.
        outbox.arrived = anyio.Event()
        outbox.acks[0].set_result(None)
        await wait_all_tasks_blocked()
        _create(proc, "r2", clock.now - TTL_MS, clock)
        task.due_at(proc.next_due_ms())
        with anyio.fail_after(5):
            await outbox.arrived.wait()
        tg.cancel_scope.cancel()
    assert outbox.sent == [["o/_/live/error/r1"], ["o/_/live/error/r2"]]


@pytest.mark.asyncio
async def test_group_commit_waits_for_the_acks_then_sends_all_that_fell_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)  # asleep means: until the next due time
    clock = _Clock()
    proc = _processor(clock)
    for i, created in enumerate((0, 1000, 1000, 2000)):
        _create(proc, f"r{i}", clock.now - TTL_MS + created, clock)
    outbox = _Outbox()
    task = _firing(proc, outbox, clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        with anyio.fail_after(5):
            await outbox.arrived.wait()
        assert outbox.sent == [["o/_/live/error/r0"]]
        # r1 and r2 fall due while r0's acks are awaited: no second send meanwhile (a task
        # that did not wait would be asleep until their due time, and woken here)...
        clock.now += 1000
        task.due_at(clock.now)
        await wait_all_tasks_blocked()
        assert len(outbox.sent) == 1
        # ...and once acked, both go out together (r3 is not due yet).
        outbox.arrived = anyio.Event()
        outbox.acks[0].set_result(None)
        with anyio.fail_after(5):
            await outbox.arrived.wait()
        tg.cancel_scope.cancel()
    assert outbox.sent == [
        ["o/_/live/error/r0"],
        ["o/_/live/error/r1", "o/_/live/error/r2"],
    ]


@pytest.mark.asyncio
async def test_a_backlog_goes_out_in_slices_without_waiting_for_acks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)
    monkeypatch.setattr(firing, "FIRE_BATCH", 2)
    clock = _Clock()
    proc = _processor(clock)
    for i in range(5):
        _create(proc, f"r{i}", clock.now - TTL_MS - 10 + i, clock)  # all due, in this order
    outbox = _Outbox()
    task = _firing(proc, outbox, clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        await wait_all_tasks_blocked()  # no ack was given: a task that waited would be here
        tg.cancel_scope.cancel()
    assert outbox.sent == [
        ["o/_/live/error/r0", "o/_/live/error/r1"],
        ["o/_/live/error/r2", "o/_/live/error/r3"],
        ["o/_/live/error/r4"],
    ]


@pytest.mark.asyncio
async def test_a_sleeping_task_wakes_at_the_first_due_time_by_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nobody calls due_at: the task must have slept until the timer's due time, not for
    IDLE_S (an hour here). The wall clock, since the task sleeps in real time."""
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)

    def clock() -> int:
        return time.time_ns() // 1_000_000

    at_start = _Clock()
    at_start.now = clock()
    proc = _processor(at_start)
    outbox = _Outbox()
    _create(proc, "soon", at_start.now - TTL_MS + 30, at_start)  # due in 30 ms
    task = Firing(
        {("in", 0): proc}, cast("Outbox", outbox), anyio.Lock(), clock=clock, on_fired=print
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        with anyio.fail_after(5):
            await outbox.arrived.wait()
        tg.cancel_scope.cancel()
    assert outbox.sent == [["o/_/live/error/soon"]]


@pytest.mark.asyncio
async def test_partitions_share_a_slice_and_each_tombstone_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)
    monkeypatch.setattr(firing, "FIRE_BATCH", 3)  # two partitions due: one timer each a slice
    clock = _Clock()
    procs = {("in", p): _processor(clock, p) for p in (0, 1)}
    for (_, p), proc in procs.items():
        for i in range(3):
            _create(proc, f"p{p}r{i}", clock.now - TTL_MS - 10 + i, clock)
    outbox = _Outbox()
    counted: list[str] = []
    task = Firing(
        procs,
        cast("Outbox", outbox),
        anyio.Lock(),
        clock=clock,
        on_fired=lambda f: counted.append(f.before.identity.record_id),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        await wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert outbox.sent == [[f"o/_/live/error/p0r{i}", f"o/_/live/error/p1r{i}"] for i in range(3)]
    assert counted == [f"p{p}r{i}" for i in range(3) for p in (0, 1)]
    assert outbox.times == [clock.now] * 3


@pytest.mark.asyncio
async def test_the_next_firing_waits_a_tick_from_the_start_of_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "r0", clock.now - TTL_MS, clock)
    _create(proc, "r1", clock.now - TTL_MS + 1000, clock)
    outbox = _Outbox()
    task = _firing(proc, outbox, clock, tick_ms=3_600_000)  # a tick of an hour
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        with anyio.fail_after(5):
            await outbox.arrived.wait()
        outbox.acks[0].set_result(None)
        clock.now += 1000  # r1 falls due after the acks: it waits for the tick
        task.due_at(clock.now)
        await wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert outbox.sent == [["o/_/live/error/r0"]]


@pytest.mark.asyncio
async def test_a_partition_with_input_unread_fires_its_due_records_but_the_sliding_ones() -> None:
    """A partition with input not read yet (the backlog after a restart, or a lag): a touch
    there may extend a session, so due sessions wait for it, while due errors (no event can
    postpone them) go out on time."""
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "err", clock.now - TTL_MS - 10, clock)
    _create(proc, "ses", clock.now - TTL_MS - 5, clock, "session")
    outbox = _Outbox()
    unread = {("in", 0): 70}
    task = Firing(
        {("in", 0): proc},
        cast("Outbox", outbox),
        anyio.Lock(),
        clock=clock,
        on_fired=lambda _f: None,
        unread=unread,
    )
    _, behind = await task.fire_due()
    assert outbox.sent == [["o/_/live/error/err"]]
    assert (proc.waiting, behind) == (1, False)
    assert proc.next_due_ms() is None  # set aside: the task does not spin on it

    # Read up to offset 69: not yet. Up to 70 (no touch of the session there): it fires,
    # though the partition lags again by then (it waited for what was sent before it).
    assert proc.let_go_read(69) == 0
    assert proc.let_go_read(70) == 1
    unread[("in", 0)] = 90
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        with anyio.fail_after(5):
            while len(outbox.sent) < 2:
                await outbox.arrived.wait()
                outbox.arrived = anyio.Event()
        tg.cancel_scope.cancel()
    assert outbox.sent[1] == ["o/_/live/session/ses"]
    assert proc.waiting == 0


def test_a_session_set_aside_for_unread_input_fires_at_the_expiry_its_touches_give() -> None:
    clock = _Clock()
    proc = _processor(clock)
    for rid in ("touched", "untouched"):
        _create(proc, rid, clock.now - TTL_MS - 20, clock, "session")
    assert proc.fire_due(clock.now, unread_until=5).tombstones == []
    assert proc.waiting == 2
    # The unread input held a touch of one of them, sent before it expired.
    _create(proc, "touched", clock.now - 30, clock, "session", op="touch")

    assert proc.let_go_read(5) == 2
    fired = proc.fire_due(clock.now, unread_until=9).tombstones
    assert [f.before.identity.record_id for f in fired] == ["untouched"]
    assert fired[0].before.expires_at == clock.now - 20
    assert proc.waiting == 0
    # At the expiry the touch gave, the partition lags again: a touch may wait there too,
    # so the session waits for it as any other (it fired at once: 500 of 500 in a trial,
    # though a touch acknowledged before that expiry was unread).
    extended = clock.now - 30 + TTL_MS
    assert proc.fire_due(extended, unread_until=20).tombstones == []
    assert proc.waiting == 1
    assert proc.let_go_read(20) == 1
    later = proc.fire_due(extended, unread_until=25).tombstones  # not extended: it goes
    assert [(f.before.identity.record_id, f.before.expires_at) for f in later] == [
        ("touched", extended)
    ]


def test_a_session_set_aside_and_ended_meanwhile_is_not_fired_again() -> None:
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "gone", clock.now - TTL_MS - 20, clock, "session")
    proc.fire_due(clock.now, unread_until=3)
    _create(proc, "gone", clock.now - 40, clock, "session", op="delete")  # erased meanwhile
    assert proc.let_go_read(3) == 0
    assert proc.fire_due(clock.now).tombstones == []


class _CountingDict(dict[str, int]):
    """The waiting sessions, counting the scans of them all."""

    scans = 0

    def items(self) -> ItemsView[str, int]:  # type: ignore[override]
        _CountingDict.scans += 1
        return super().items()


def test_sessions_set_aside_are_let_go_in_offset_order_without_scanning_them_all() -> None:
    """A catch-up sets aside every session due meanwhile, each until the offset the
    partition had to read then; each loop turn lets go those read by now. 300 sessions set
    aside until offsets 0-299, one of them touched and set aside again later: each turn
    lets go exactly those read, and no turn looks at all of them."""
    clock = _Clock()
    proc = _processor(clock)
    proc._waiting = _CountingDict()
    for i in range(300):  # due 10 ms apart (the tick) from 10 ms on
        _create(proc, f"s{i}", clock.now - TTL_MS + 10 * (i + 1), clock, "session")
    for i in range(300):
        assert proc.fire_due(clock.now + 10 * (i + 1), unread_until=i).tombstones == []
    assert sorted(proc._waiting.values()) == list(range(300))
    clock.now += 3_000
    _create(proc, "s0", clock.now - TTL_MS, clock, "session", op="touch")  # due now
    assert proc.let_go_read(-1) == 0
    assert proc.fire_due(clock.now, unread_until=500).tombstones == []
    _CountingDict.scans = 0
    assert proc.let_go_read(0) == 0  # s0 waits for 500 now
    assert [proc.let_go_read(i) for i in range(1, 300)] == [1] * 299
    assert proc.let_go_read(499) == 0
    assert proc.let_go_read(500) == 1
    assert proc.waiting == 0
    assert _CountingDict.scans == 0


@pytest.mark.asyncio
async def test_a_partition_reading_its_backlog_fires_nothing_until_it_has_read_it() -> None:
    """A takeover: the firing fired a conversation due now before its partition read the
    backlog, which held its erasure (dated before the expiry) and its creation again after
    the erasure. The record ended at its expiry, the create was dropped as the ended
    life's, the next life was never stamped nor tombstoned, and the erasure's tombstone
    said the expiry (a trial: 24 of 24 during a rebalance). A partition catching up fires
    nothing (its timers stay in its wheel); read, the backlog decides them as if read in
    time, and the task is woken."""
    clock = _Clock()
    proc, other = _processor(clock), _processor(clock, partition=1)
    _create(proc, "erased", clock.now - TTL_MS - 20, clock)
    _create(proc, "kept", clock.now - TTL_MS - 20, clock)
    _create(other, "elsewhere", clock.now - TTL_MS - 20, clock)
    outbox = _Outbox()
    catching_up: dict[tuple[str, int], object] = {("in", 0): (9, 0.0)}
    task = Firing(
        {("in", 0): proc, ("in", 1): other},
        cast("Outbox", outbox),
        anyio.Lock(),
        clock=clock,
        on_fired=lambda _f: None,
        catching_up=catching_up,
    )
    await task.fire_due()
    assert outbox.sent == [["o/_/live/error/elsewhere"]]  # the partition read on fires
    assert proc.next_due_ms() == clock.now - 20  # in its wheel: not taken, not set aside
    # The backlog: the erasure, then the record created again, both before the expiry.
    erased = _create(proc, "erased", clock.now - 40, clock, op="delete")
    assert [(f.reason, f.after.deleted_at) for f in erased.tombstones] == [
        ("explicit", clock.now - 40)
    ]
    again = _create(proc, "erased", clock.now - 30, clock)
    assert [s.created_at for s, _ in again.stamps] == [clock.now - 30]
    del catching_up[("in", 0)]  # read
    await task.fire_due()
    assert outbox.sent[1] == ["o/_/live/error/kept"]


@pytest.mark.asyncio
async def test_a_task_whose_partitions_all_read_their_backlog_sleeps_until_woken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The timers of a partition reading its backlog do not fire, nor does the task look
    at them: it does not read the holds for them each tick, as if about to fire, but sleeps
    until the backlog is read (``wake``), then fires them."""
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "due", clock.now - TTL_MS - 20, clock)
    outbox = _Outbox()
    reads: list[int] = []

    async def read_since(at_ms: int) -> None:
        reads.append(at_ms)

    catching_up: dict[tuple[str, int], object] = {("in", 0): (9, 0.0)}
    task = Firing(
        {("in", 0): proc},
        cast("Outbox", outbox),
        anyio.Lock(),
        clock=clock,
        on_fired=lambda _f: None,
        catching_up=catching_up,
        read_since=read_since,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        await wait_all_tasks_blocked()
        assert (reads, outbox.sent) == ([], [])
        del catching_up[("in", 0)]  # read
        task.wake()
        with anyio.fail_after(5):
            await outbox.arrived.wait()
        tg.cancel_scope.cancel()
    assert outbox.sent == [["o/_/live/error/due"]]
    assert reads != []  # read before the firing, as for any due timer


@pytest.mark.asyncio
async def test_nothing_fires_while_the_partitions_may_be_another_members() -> None:
    """A member paused past its group session resumes with its timers due: the group may
    have given their partitions to another member, which has read what they did since (an
    erasure and a next life, say). While the fence is closed (stream_expiry.fence) nothing
    fires; once the group has assigned them back, what is due fires."""
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "r0", clock.now - TTL_MS, clock)
    outbox = _Outbox()
    fenced = [True]
    task = Firing(
        {("in", 0): proc},
        cast("Outbox", outbox),
        anyio.Lock(),
        clock=clock,
        on_fired=lambda _f: None,
        tick_ms=0,
        fenced=lambda: fenced[0],
    )
    assert await task.fire_due() == ([], False)
    assert outbox.sent == []
    assert proc.next_due_ms() == clock.now  # still held, for the assignment to say
    fenced[0] = False
    acks, _ = await task.fire_due()
    assert len(acks) == 1
    assert outbox.sent == [["o/_/live/error/r0"]]


# --- the holds read before a firing (``read_since``) --------------------------------------


class _Reads:
    """The service's ``read_since`` as the task sees it: records each ``since`` it is
    asked to read the holds (and the inputs' ends) from; ``then``: where the clock is
    once the read is done (the time it took)."""

    def __init__(self, clock: _Clock, then: int | None = None) -> None:
        self.clock, self.then = clock, then
        self.since: list[int] = []
        self.called = anyio.Event()

    async def __call__(self, since: int) -> None:
        self.since.append(since)
        if self.then is not None:
            self.clock.now = self.then
        self.called.set()
        self.called = anyio.Event()


@pytest.mark.asyncio
@pytest.mark.parametrize(("tick_ms", "ahead"), [(10, 10), (0, 1)])
async def test_before_a_firing_the_holds_are_read_to_a_tick_before_now(
    tick_ms: int, ahead: int
) -> None:
    """A record due right now: the holds are read first, up to a tick before now (a hold
    acknowledged that long before the expiry keeps it), a millisecond with no tick.
    Mutants: ``first < now`` (a record due exactly now fired without the read), ``holds(
    now)`` (the read waited for holds acknowledged after the expiry), ``ahead = tick_ms``
    (with no tick, the same)."""
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "r1", clock.now - TTL_MS, clock)  # due exactly now
    outbox, reads = _Outbox(), _Reads(clock)
    task = _firing(proc, outbox, clock, tick_ms, reads)
    await task.fire_due()
    assert reads.since == [BASE - ahead]
    assert outbox.sent == [["o/_/live/error/r1"]]


@pytest.mark.asyncio
async def test_after_a_read_what_fires_is_what_was_due_before_it() -> None:
    """The read takes time; what falls due meanwhile was not covered by it, and waits for
    the next firing (and its read). Mutant re-reading the clock after the read: r2, due
    during the read, went out unread-for."""
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "r1", clock.now - TTL_MS, clock)
    _create(proc, "r2", clock.now - TTL_MS + 300, clock)
    outbox, reads = _Outbox(), _Reads(clock, then=BASE + 500)
    task = _firing(proc, outbox, clock, 10, reads)
    _, behind = await task.fire_due()
    assert (outbox.sent, outbox.times) == ([["o/_/live/error/r1"]], [BASE])
    assert (behind, proc.next_due_ms()) == (False, BASE + 300)  # r2: the next firing's


@pytest.mark.asyncio
async def test_without_a_read_the_firing_takes_what_is_due_once_it_has_the_lock() -> None:
    """The lock may be held while the loop decides input: what fell due meanwhile goes out
    with the rest. Mutant keeping the time from before the lock: r2 waited for the next
    firing."""
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "r1", clock.now - TTL_MS, clock)
    _create(proc, "r2", clock.now - TTL_MS + 300, clock)
    outbox, deciding = _Outbox(), anyio.Lock()
    task = Firing(
        {("in", 0): proc}, cast("Outbox", outbox), deciding, clock=clock, on_fired=lambda _f: None
    )
    async with anyio.create_task_group() as tg:
        await deciding.acquire()
        tg.start_soon(task.fire_due)
        await wait_all_tasks_blocked()
        clock.now += 300
        deciding.release()
    assert (outbox.sent, outbox.times) == (
        [["o/_/live/error/r1", "o/_/live/error/r2"]],
        [BASE + 300],
    )


@pytest.mark.asyncio
async def test_the_holds_are_read_ahead_while_waiting_for_a_due_time_within_a_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record due within a tick: the task reads the holds up to a tick before its due
    time while it waits, then fires. Mutants: ``first <= now`` for ``first - ahead <= now``
    (it never read ahead, and, its clock still, never fired), ``holds(first)`` (a read up
    to the expiry itself)."""
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "r1", clock.now - TTL_MS + 5, clock)  # due in 5 ms
    outbox, reads = _Outbox(), _Reads(clock, then=BASE + 5)  # the read takes the 5 ms
    task = _firing(proc, outbox, clock, 10, reads)
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        with anyio.fail_after(2):
            await outbox.arrived.wait()
        tg.cancel_scope.cancel()
    assert reads.since[0] == BASE - 5
    assert outbox.sent == [["o/_/live/error/r1"]]


@pytest.mark.asyncio
async def test_the_task_wakes_a_tick_before_a_due_time_to_read_the_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With holds to read, the task sleeps until a tick before the next due time, so the
    read is done by then. Mutant sleeping until the due time itself: every tombstone waited
    for a read after its expiry."""
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "r1", clock.now - TTL_MS + 100_000, clock)  # due in 100 s
    outbox, reads = _Outbox(), _Reads(clock)
    task = _firing(proc, outbox, clock, 10, reads)
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        await wait_all_tasks_blocked()
        asleep_until = task._sleeping_until
        tg.cancel_scope.cancel()
    assert asleep_until == BASE + 100_000 - 10
    assert reads.since == []


@pytest.mark.asyncio
async def test_after_the_acks_the_holds_are_read_for_what_falls_due_within_the_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Group commit: once a firing's acks are in, the holds are read to now when the next
    record falls due within the tick. Mutant ``first <= now``: no read then, the next
    firing's waited for its own."""
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)
    clock = _Clock()
    proc = _processor(clock)
    _create(proc, "r1", clock.now - TTL_MS, clock)
    _create(proc, "r2", clock.now - TTL_MS + 5, clock)  # due 5 ms later, within the tick
    outbox, reads = _Outbox(), _Reads(clock)
    task = _firing(proc, outbox, clock, 10, reads)
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        with anyio.fail_after(2):
            await outbox.arrived.wait()
        assert reads.since == [BASE - 10]  # before r1 fired
        called = reads.called
        outbox.acks[0].set_result(None)
        with anyio.fail_after(2):
            await called.wait()
        tg.cancel_scope.cancel()
    assert reads.since[1] == BASE


@pytest.mark.asyncio
async def test_the_task_wants_the_lock_once_its_sleep_is_over_or_while_it_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the ingest loop asks before each step of a slice (Firing.wants_the_lock): a
    task asleep until a due time wants it from that time on, one waiting for the lock
    wants it, one waiting for its acks does not."""
    monkeypatch.setattr(firing, "IDLE_S", 3600.0)
    clock = _Clock()
    proc = _processor(clock)
    outbox = _Outbox()
    task = _firing(proc, outbox, clock)
    lock = task._deciding
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        _create(proc, "r1", clock.now - TTL_MS + 500, clock)  # due in 500 ms
        task.due_at(proc.next_due_ms())
        await wait_all_tasks_blocked()
        assert not task.wants_the_lock(clock.now)
        assert not task.wants_the_lock(clock.now + 499)
        assert task.wants_the_lock(clock.now + 500)  # its sleep is over: it would fire
        await lock.acquire()  # the ingest loop decides
        clock.now += 500
        task.wake()
        await wait_all_tasks_blocked()
        assert task.wants_the_lock(clock.now - 10_000)  # queued for the lock, whatever the time
        assert outbox.sent == []
        lock.release()
        with anyio.fail_after(5):
            await outbox.arrived.wait()
        await wait_all_tasks_blocked()
        assert not task.wants_the_lock(clock.now + 10_000)  # waiting for its acks
        tg.cancel_scope.cancel()
    assert outbox.sent == [["o/_/live/error/r1"]]

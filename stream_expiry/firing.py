"""Firing due timers in a task of their own, with group commit.

A timer must not wait for ingest (issue 11): the ingest loop may be deep in a backlog, and
a record's deletion is due at its time whatever else is going on. So timers get a task of
their own, which sleeps until the earliest due time of any partition (or until the ingest
loop says an earlier one arrived) and fires everything due then.

Group commit, as databases flush their log: while one firing's messages are on their way
to the broker, the next waits for their acks, and at least a tick (``[service] tick_ms``,
10 ms) from the start of the last one; then it takes everything that fell due meanwhile. A
lone tombstone goes out the moment it is due; under load the batches grow instead of many
small produce requests queueing behind each other at the broker. Measured at 10k
expirations/s on a quiet machine (``bench.e2e_expiry``, lag at a consumer process): firing
as soon as the acks are in gave p50 19 ms, p99 119 ms, almost all of it between the
decision and the consumer; with the 10 ms tick, p50 12-14 ms, p99 23-30 ms (the decision
itself p99 10 ms).

A backlog of due timers (the machine was busy, or the service was down) is fired in slices
of at most ``FIRE_BATCH`` timers, one after the other without waiting for acks. Taking the
whole backlog at once made one round decide, encode and send tens of thousands of
tombstones before the first reached the broker, all of their objects alive meanwhile. At
50k expirations/s on 2 cores (``bench.e2e_expiry --rate 50000``; four runs before, two
after, 23:00-23:25 UTC on 2026-12-01): garbage collection took 1.15-1.55 s of each run
(pauses up to 0.40-0.64 s), the hop from decision to consumer p99 1.5-5.1 s, the lag p99
2.2-7.5 s; in slices, collection 0.31-0.32 s (pauses up to 19-28 ms), the hop p99 0.18-0.20
s, the lag p99 1.28-1.45 s. What is left of it is the CPU the firing needs. At 10k/s no
firing is ever behind (929 firings in a run, none), so nothing changes there.

Both tasks decide and send under one lock (``Service.deciding``): effects reach the outbox
in the order the processors made them, which is the order they settle in.

A partition with input not read yet (``unread``: the offset it must read up to) fires no
record of a sliding category: an event waiting there may extend it (a touch of a live
session), and firing first would delete an active session early. Two trials found it: at
every rolling restart, the sessions touched while no instance read their partition (up to
15 s early); and while the service read a few seconds behind, 61 of 25,000 sessions.
Its other records fire on time, since in the milliseconds a reading lags no event can
postpone them (:meth:`PartitionProcessor.fire_due`). The service lets the sessions set
aside go once the partition has read that far (:meth:`PartitionProcessor.let_go_read`),
and wakes this task. A partition reading the backlog found at its assignment (a start, a
takeover: seconds of events no instance read) fires nothing until it has read it
(:meth:`Firing._firable`).

Before it fires records that fell due at ``now``, the legal holds have been read to their
end since ``now`` less a tick, and the input partitions' ends asked for (``read_since``): a
hold acknowledged a tick (10 ms by default) before a record's expiry keeps it, as the
contract says of an active hold, and a touch acknowledged a tick before a session's expiry
slides it (the session waits for its partition to read that far). The
reads are made ahead, while the task waits for the next due time or the next tick, so a
tombstone seldom waits for one. The holds were read between reads of the inputs only,
every 0.2 s at most when idle: a trial saw holds acknowledged 0.1 to 0.2 s before their
records' expiry keep none of them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio

from stream_expiry.outbox import settled_or_failed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from stream_expiry.engine import Fired
    from stream_expiry.outbox import Outbox
    from stream_expiry.state import Effects, PartitionProcessor

__all__ = ["Firing"]

IDLE_S = 0.2  # look again this often when nothing is due (horizons move, holds release)
FIRE_BATCH = 2_000  # timers a firing takes at most, shared by the partitions due


class Firing:
    """The timer task: ``run`` it in the session's task group."""

    def __init__(
        self,
        processors: Mapping[tuple[str, int], PartitionProcessor],
        outbox: Outbox,
        deciding: anyio.Lock,
        *,
        clock: Callable[[], int],
        on_fired: Callable[[Fired], None],
        tick_ms: int = 10,
        unread: Mapping[tuple[str, int], int] | None = None,
        catching_up: Mapping[tuple[str, int], object] | None = None,
        read_since: Callable[[int], Awaitable[None]] | None = None,
        fenced: Callable[[], bool] | None = None,
    ) -> None:
        self._processors = processors
        # Whether the partitions may be another member's now: nothing fires meanwhile.
        self._fenced = fenced
        self._read_since = read_since
        # How long before a record's expiry a hold (or a touch) must be acknowledged to
        # count: a tick, which lets them be read ahead, while the task waits, not after the
        # expiry (a read after it added ~3 ms to every tombstone's lag at 10k/s, on Tansu).
        self._ahead_ms = max(1, tick_ms)
        self._unread: Mapping[tuple[str, int], int] = {} if unread is None else unread
        self._catching_up: Mapping[tuple[str, int], object] = (
            {} if catching_up is None else catching_up
        )
        self._outbox = outbox
        self._deciding = deciding
        self._clock = clock
        self._on_fired = on_fired
        self._tick_s = tick_ms / 1000
        self._wake = anyio.Event()
        self._sleeping_until: int | None = None  # ms; None while awake
        # Waiting for the lock the ingest loop holds while it decides (wants_the_lock).
        self._queued = False

    def wake(self) -> None:
        """Look again now (a partition has read on: its sessions set aside are due, or
        its backlog: its timers may fire)."""
        self._wake.set()

    def due_at(self, due_ms: int | None) -> None:
        """A timer due at ``due_ms`` was just set: wake the task unless it wakes before."""
        until = self._sleeping_until
        if due_ms is not None and until is not None and due_ms <= until:
            self._wake.set()

    def wants_the_lock(self, now_ms: int) -> bool:
        """Whether the task would fire now if the ingest loop let it: its sleep (until a
        timer's due time, or the tick after a firing) is over, or it waits for the lock.
        The loop then ends the entry it is deciding and lets the task in: a timer that
        waited for ingest slices of 200 events gave tombstones a p99 of 93-112 ms at 10k
        expirations/s beside 20k events/s of ingest, against 39 ms for slices of 50, which
        cost ingest a third of its rate (``bench.e2e_expiry --ingest-rate 20000``, round
        55). Cutting a slice only when a timer waits keeps both."""
        until = self._sleeping_until
        return self._queued or (until is not None and until <= now_ms)

    async def run(self) -> None:
        holds, ahead = self._read_since, self._ahead_ms
        while True:
            now = self._clock()
            first = self._first_due()
            if first is None or first > now:
                if holds is not None and first is not None and first - ahead <= now:
                    # The holds read ahead of the next due time, while waiting for it.
                    await holds(first - ahead)
                    now = self._clock()
                    delay_ms: float = max(0, first - now)
                elif first is None:
                    delay_ms = IDLE_S * 1000
                else:
                    delay_ms = min(IDLE_S * 1000, first - now - (ahead if holds else 0))
                self._sleeping_until = now + int(delay_ms)
                with anyio.move_on_after(delay_ms / 1000):
                    await self._wake.wait()
                self._sleeping_until = None
                self._wake = anyio.Event()
                continue
            started = time.monotonic()
            acks, behind = await self.fire_due()
            if behind:
                # A backlog: the next slice goes out now, its messages behind these in the
                # producer's queue (the outbox's bounded queue holds the firing back), and
                # the loop and the settler get their turn in between.
                await anyio.lowlevel.checkpoint()
                continue
            await settled_or_failed(acks)  # group commit: the next firing takes what fell due
            if holds is not None:  # for what falls due by the next firing, a tick later
                now, first = self._clock(), self._first_due()
                if first is not None and first <= now + ahead:
                    await holds(now)
            rest = started + self._tick_s - time.monotonic()
            if rest > 0:
                self._sleeping_until = self._clock() + int(rest * 1000)
                try:
                    await anyio.sleep(rest)  # and so does the one a tick later
                finally:
                    self._sleeping_until = None

    def _first_due(self) -> int | None:
        """The earliest time a timer of any partition that may fire is due, if any."""
        dues = [d for _, p in self._firable() if (d := p.next_due_ms()) is not None]
        return min(dues, default=None)

    def _firable(self) -> Iterable[tuple[tuple[str, int], PartitionProcessor]]:
        """The partitions whose timers may fire: not those reading the backlog found at
        their assignment (:attr:`InputReading.catching_up`, whose end :meth:`wake`s the
        task). An erasure there ends its record at its own time and a create behind it
        starts the next life; fired first at its expiry, the record's erasure tombstone
        said the expiry (the stores and the archive erased the next life with it) and the
        create was dropped as the ended life's, its life never stamped nor tombstoned (a
        trial: 24 of 24 records erased and created again during a rebalance, and 199
        erasures recorded as expiries). Left in the wheels, their timers keep the
        processors' bounds on what is loaded."""
        if self._fenced is not None and self._fenced():
            return ()  # the partitions may be another member's (stream_expiry.fence)
        catching_up = self._catching_up
        if not catching_up:  # nearly always: the mapping itself, no copy a tick
            return self._processors.items()
        return [(s, p) for s, p in self._processors.items() if s not in catching_up]

    async def fire_due(self) -> tuple[list[Any], bool]:
        """Decide and send the tombstones of the due timers, at most ``FIRE_BATCH`` at
        once; returns their acks, and whether more is due already."""
        now = self._clock()
        holds, read = self._read_since, False
        if holds is not None and (first := self._first_due()) is not None and first <= now:
            # Outside the lock: the loop decides input meanwhile. Mostly read already,
            # ahead of time (run): then nothing to wait for here.
            await holds(now - self._ahead_ms)
            read = True
        self._queued = True
        try:
            await self._deciding.acquire()
        finally:
            self._queued = False
        try:
            return await self._fire_locked(now, read)
        finally:
            self._deciding.release()

    async def _fire_locked(self, now: int, read: bool) -> tuple[list[Any], bool]:
        """:meth:`fire_due` once the task holds the lock."""
        if not read:
            now = self._clock()
        # (After a read: what was due by ``now``, not what fell due during the read.)
        fired: list[tuple[PartitionProcessor, Effects]] = []
        due = [(s, p) for s, p in self._firable() if _due_by(p, now)]
        if not due:
            return [], False
        share = max(1, FIRE_BATCH // len(due))  # the partitions behind share a slice
        unread = self._unread
        for slot, proc in due:
            effects = proc.fire_due(now, share, unread_until=unread.get(slot))
            if effects:
                fired.append((proc, effects))
                for f in effects.tombstones:
                    self._on_fired(f)
        if not fired:
            return [], False
        return await self._outbox.send(fired, now), any(_due_by(p, now) for _, p in due)


def _due_by(proc: PartitionProcessor, now_ms: int) -> bool:
    due = proc.next_due_ms()
    return due is not None and due <= now_ms

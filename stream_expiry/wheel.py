"""A hierarchical timing wheel: O(1) schedule and cancel, firing exact to the millisecond.

Pure: no IO, no clock. The caller says what time it is (``advance(now_ms)``) and gets back
every timer that is due, as ``(due_ms, key, value)`` tuples.

Shape (Varghese and Lauck 1987; the hashed hierarchical wheel of Kafka's purgatory and of
the Linux kernel, with aligned levels as in William Ahern's ``timeout.c``):

* Time is counted in *ticks* of ``tick_ms``, relative to the tick of ``start_ms``; a timer's
  tick is ``t = due_ms // tick_ms - origin``. ``slots`` is a power of two, ``2 ** bits``, so a
  tick is a number of ``bits``-wide digits. Level ``l`` has ``slots`` buckets, each covering
  ``slots ** l`` ticks.
* ``cur`` is the wheel's tick: ``now_ms // tick_ms - origin`` of the high-water ``now_ms``,
  or less while ``advance`` is still walking towards it.

Invariants kept between calls (``_check_invariants`` asserts all of them; the tests call it):

1. Placement. A live timer with ``t > cur`` sits at the level of the highest digit in which
   ``t`` and ``cur`` differ, in the bucket numbered by that digit of ``t``. A timer with
   ``t <= cur`` (due in the past or in the current tick) sits in level 0's bucket for ``cur``.
   So every level-0 timer lies in ``cur``'s level-1 block, every level-1 timer in a later
   level-1 block of ``cur``'s level-2 block, and so on: the levels are ordered in time, within
   a level the bucket number is time order, and the earliest timer is in the lowest occupied
   bucket of the lowest occupied level. A level-``l`` bucket (``l >= 1``) is cascaded, its
   timers placed again one level or more lower, when ``cur`` reaches its first tick.
2. Occupancy. ``_occ[l]`` has bit ``i`` set exactly when bucket ``i`` of level ``l`` is a
   non-empty list, so finding the next bucket is a lowest-set-bit on an int, never a walk
   over empty ticks: advancing a year costs what the occupied buckets in that year cost.
3. Order. Within a bucket, timers with the same ``due_ms`` are in the order they were
   scheduled (cascading and firing keep list order and buckets fill in time order), so a
   stable sort of a batch on ``due_ms`` yields ``(due_ms, insertion order)`` order.
4. Never early. A level-0 bucket is fired whole only when its tick is before the tick of
   ``now_ms``; the bucket of ``now_ms``'s own tick fires only the timers with
   ``due_ms <= now_ms`` and keeps the rest. A timer scheduled at or before the current time
   goes to the current bucket and is returned by the next ``advance``.
5. Lazy cancellation (as trio's ``Deadlines``). ``_index`` maps each key to its live entry
   tuple; a bucket entry is live only if it *is* (identity) the index's entry for its key.
   Cancelling or rescheduling leaves the old tuple where it is; ``_stale`` counts such dead
   tuples, they are dropped when their bucket is reached, and when they outnumber the live
   ones (and exceed ``_prune_min``) every bucket is rebuilt without them. Memory is thus at
   most about twice the live timers, and a replaced timer can never fire.
6. ``now_ms`` is a high-water mark: it never moves back; ``advance`` with an earlier time
   acts as ``advance(now_ms)``.
7. ``next_due_ms()`` is exact: a cached value, kept exact on ``schedule``, dropped when the
   earliest timer is cancelled, refreshed by ``advance`` when it fires or cascades anything
   (or dropped if the walk did not reach it), and recomputed when dropped from the earliest
   occupied bucket (its live entries only). The minimum of the last level >= 1
   bucket so scanned is remembered the same way, so a large far bucket is scanned once, not
   on every call while near timers come and go in front of it.

Levels: with ``levels=None`` levels are added on demand, as far as the furthest timer needs
(Python ints have no top). With ``levels=n`` the wheel has ``n`` levels covering
``slots ** n`` ticks around ``cur``; timers beyond that wait in an overflow heap and are
moved into the wheel when ``cur`` enters their top-level block. Either way the service keeps
only the next hour or so in memory; the rest waits in the durable index.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Hashable
from operator import itemgetter
from typing import Generic, TypeVar

__all__ = ["TimingWheel"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_PRUNE_MIN = 1024
_due_of_entry = itemgetter(0)


class TimingWheel(Generic[K, V]):
    """Timers keyed by ``K``, each carrying a ``V``, due at epoch milliseconds.

    One timer per key: scheduling a key again replaces its timer. All operations are O(1)
    but ``advance``, which is O(timers fired + timers cascaded + occupied buckets reached).
    """

    __slots__ = (
        "_bits",
        "_buckets",
        "_cur",
        "_index",
        "_lvl_of",
        "_mask",
        "_max_levels",
        "_memo_bucket",
        "_memo_min",
        "_next",
        "_next_ok",
        "_now",
        "_occ",
        "_origin",
        "_oseq",
        "_overflow",
        "_prune_min",
        "_stale",
        "_tick",
        "_top_shift",
    )

    def __init__(
        self,
        *,
        tick_ms: int = 10,
        slots: int = 256,
        levels: int | None = None,
        start_ms: int = 0,
        phase: int = 0,
    ) -> None:
        """Raise ``ValueError`` if ``tick_ms < 1``, ``slots`` is not a power of two of at
        least 2, or ``levels < 1``.

        ``phase`` (ticks) shifts where the wheel's blocks begin, so where it cascades: the
        wheels of a service's partitions, made in the same tick, cascaded their level-1
        buckets (2.56 s of timers each) in the same firing, one stall every 2.56 s
        (:func:`stream_expiry.state.processor.wheel_phase`). Which timers fire, and when,
        does not depend on it."""
        if tick_ms < 1:
            raise ValueError(f"tick_ms must be >= 1, not {tick_ms}")
        if slots < 2 or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two >= 2, not {slots}")
        if levels is not None and levels < 1:
            raise ValueError(f"levels must be >= 1 or None, not {levels}")
        bits = slots.bit_length() - 1
        self._tick = tick_ms
        self._bits = bits
        self._mask = slots - 1
        phase %= slots
        self._origin = start_ms // tick_ms - phase
        self._now = start_ms
        self._cur = phase
        self._index: dict[K, tuple[int, K, V]] = {}
        self._buckets: list[list[list[tuple[int, K, V]]]] = []
        self._occ: list[int] = []
        self._max_levels = levels
        self._top_shift = None if levels is None else levels * bits
        self._overflow: list[tuple[int, int, tuple[int, K, V]]] = []
        self._oseq = 0
        self._stale = 0
        self._prune_min = _PRUNE_MIN
        # Level of a timer from the bit length of (its tick XOR cur), 0 when they are equal;
        # covers the existing levels (an IndexError means "above the top level").
        self._lvl_of = [0]
        # Invariant 7: _next is the exact next due time when _next_ok; None otherwise.
        self._next: int | None = None
        self._next_ok = True
        # The earliest level >= 1 bucket whose live minimum _compute_next last scanned, so a
        # big far bucket is not scanned again on every call; None when unknown.
        self._memo_bucket: list[tuple[int, K, V]] | None = None
        self._memo_min = 0
        for _ in range(levels or 1):
            self._add_level()

    # -- queries ---------------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        """The high-water mark of the times given to ``advance`` (or ``start_ms``)."""
        return self._now

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._index
        except TypeError:  # unhashable: cannot be a key
            return False

    def due_of(self, key: K) -> int | None:
        """The due time of ``key``'s timer, or None if it has none."""
        entry = self._index.get(key)
        return None if entry is None else entry[0]

    def next_due_ms(self) -> int | None:
        """The earliest pending due time (exact; may be before ``now_ms``), None if empty."""
        if not self._next_ok:
            self._next = self._compute_next()
            self._next_ok = True
        return self._next

    # -- updates ---------------------------------------------------------------------------

    def schedule(self, key: K, due_ms: int, value: V) -> None:
        """Set ``key``'s timer to fire at ``due_ms`` with ``value``, replacing any timer it had.

        A due time at or before ``now_ms`` fires at the next ``advance``.
        """
        entry = (due_ms, key, value)
        index = self._index
        old = index.get(key)
        index[key] = entry
        if old is not None:
            self._stale += 1
            if old[0] == self._next:
                self._next = None
                self._next_ok = False
            if old[0] == self._memo_min:
                self._memo_bucket = None
            if self._stale > self._prune_min and self._stale > len(index):
                self._prune()
        nxt = self._next  # not None only when exact (invariant 7)
        if nxt is None:
            if self._next_ok:
                self._next = due_ms
        elif due_ms < nxt:
            self._next = due_ms
        cur = self._cur
        t = due_ms // self._tick - self._origin
        if t <= cur:
            idx = cur & self._mask
            bucket = self._buckets[0][idx]
            if not bucket:
                self._occ[0] |= 1 << idx
            bucket.append(entry)
            return
        try:
            lvl = self._lvl_of[(t ^ cur).bit_length()]
        except IndexError:  # above the top level
            if self._max_levels is not None:
                heapq.heappush(self._overflow, (due_ms, self._oseq, entry))
                self._oseq += 1
                return
            while (t ^ cur).bit_length() >= len(self._lvl_of):
                self._add_level()
            lvl = self._lvl_of[(t ^ cur).bit_length()]
        idx = (t >> (lvl * self._bits)) & self._mask
        bucket = self._buckets[lvl][idx]
        if not bucket:
            self._occ[lvl] |= 1 << idx
        elif bucket is self._memo_bucket and due_ms < self._memo_min:
            self._memo_min = due_ms
        bucket.append(entry)

    def cancel(self, key: K) -> bool:
        """Remove ``key``'s timer; True if it had one."""
        index = self._index
        entry = index.pop(key, None)
        if entry is None:
            return False
        self._stale += 1
        if entry[0] == self._next:
            self._next = None
            self._next_ok = False
        if entry[0] == self._memo_min:
            self._memo_bucket = None
        if self._stale > self._prune_min and self._stale > len(index):
            self._prune()
        return True

    def keep_earliest(self, keep: int) -> int | None:
        """Cancel the latest timers so that at most ``keep`` are left, all due before the
        returned cutoff, every one dropped due at or after it; None when nothing is dropped.

        The timers due by ``now_ms`` and those due at the earliest due time's millisecond
        are kept whatever their number (the next ``advance`` fires the first; a horizon
        ending inside a millisecond would split the others); what is due after them goes
        if they are ``keep`` or more. O(timers): for a caller that bounds memory and then
        keeps later timers out (the cutoff becomes where its horizon ends), so it runs once
        per many schedules.
        """
        index = self._index
        if len(index) <= keep:
            return None
        dues = sorted(entry[0] for entry in index.values())
        first = max(keep, bisect.bisect_right(dues, max(dues[0], self._now)))
        if first >= len(dues):
            return None
        cutoff = dues[first]
        for key in [key for key, entry in index.items() if entry[0] >= cutoff]:
            self.cancel(key)
        if self._stale > len(index) // 2:  # the dropped timers' values: free them now
            self._prune()
        return cutoff

    def advance(self, now_ms: int) -> list[tuple[int, K, V]]:
        """Move time to ``now_ms`` and remove and return every timer with ``due_ms <= now_ms``.

        The batch is sorted by due time, then by the order the timers were scheduled. Time
        never moves back: an earlier ``now_ms`` counts as the current ``now_ms``.
        """
        if now_ms > self._now:
            self._now = now_ms
        else:
            now_ms = self._now
        target = now_ms // self._tick - self._origin
        cur = self._cur
        index = self._index
        buckets = self._buckets
        occs = self._occ
        bits = self._bits
        stale = self._stale
        out: list[tuple[int, K, V]] = []
        touched = False
        # The next due time, if the walk below finds it on the way; None means "unknown".
        nxt: int | None = None
        while True:
            occ = occs[0]
            if occ:
                # Level 0: one bucket per tick of cur's level-1 block.
                base = (cur >> bits) << bits
                last = target - base  # target's slot, or > mask if target is past the block
                idx = (occ & -occ).bit_length() - 1
                if idx > last:
                    if not stale:  # the earliest bucket, all live: its minimum is exact
                        nxt = min(map(_due_of_entry, buckets[0][idx]))
                    break
                touched = True
                level0 = buckets[0]
                if idx < last:
                    # Whole ticks before target's: every live entry is due.
                    end = min(last, self._mask + 1)
                    for bucket in level0[idx:end]:
                        if not bucket:
                            continue
                        if stale:
                            for entry in bucket:
                                key = entry[1]
                                if index.get(key) is entry:
                                    del index[key]
                                    out.append(entry)
                                else:
                                    stale -= 1
                        else:
                            out += bucket
                            for entry in bucket:
                                del index[entry[1]]
                        bucket.clear()
                    occ = (occ >> end) << end
                    occs[0] = occ
                    if last > self._mask:  # target is past this block: level 0 is empty now
                        continue
                    if not occ & (1 << last):
                        break
                # Target's own tick: fire what is due, keep the rest for a later advance.
                bucket = level0[last]
                keep = []
                for entry in bucket:
                    key = entry[1]
                    if index.get(key) is not entry:
                        stale -= 1
                    elif entry[0] <= now_ms:
                        del index[key]
                        out.append(entry)
                    else:
                        keep.append(entry)
                if keep:
                    level0[last] = keep
                    nxt = min(map(_due_of_entry, keep))
                else:
                    bucket.clear()
                    occ ^= 1 << last
                    occs[0] = occ
                    if occ and not stale:  # the next bucket on level 0 holds the next due
                        nxt = min(map(_due_of_entry, level0[(occ & -occ).bit_length() - 1]))
                break
            lvl = 1
            for occ in occs[1:]:
                if occ:
                    break
                lvl += 1
            else:
                # The levels are empty; with fixed levels, timers may wait in the overflow.
                overflow = self._overflow
                while overflow and index.get(overflow[0][2][1]) is not overflow[0][2]:
                    heapq.heappop(overflow)
                    stale -= 1
                if not overflow or overflow[0][0] // self._tick - self._origin > target:
                    break
                touched = True
                cur = overflow[0][0] // self._tick - self._origin
                self._cur = cur
                self._stale = stale
                self._migrate()
                stale = self._stale
                continue
            idx = (occ & -occ).bit_length() - 1
            shift = lvl * bits
            high = shift + bits
            start = ((cur >> high) << high) | (idx << shift)
            if start > target:
                break
            # Cascade: cur reaches the bucket's first tick; place its timers lower down.
            touched = True
            cur = start
            bucket = buckets[lvl][idx]
            buckets[lvl][idx] = []
            occs[lvl] = occ ^ (1 << idx)
            if bucket is self._memo_bucket:
                self._memo_bucket = None
            tick = self._tick
            origin = self._origin
            mask = self._mask
            lvl_of = self._lvl_of
            for entry in bucket:
                if stale and index.get(entry[1]) is not entry:
                    stale -= 1
                    continue
                t = entry[0] // tick - origin
                low = lvl_of[(t ^ cur).bit_length()]
                i = (t >> (low * bits)) & mask
                dest = buckets[low][i]
                if not dest:
                    occs[low] |= 1 << i
                dest.append(entry)
        self._stale = stale
        if target > cur:
            top = self._top_shift
            self._cur = target
            if top is not None and target >> top != cur >> top:
                self._migrate()
        else:
            self._cur = cur
        if touched:
            self._next = nxt
            self._next_ok = nxt is not None
        if len(out) > 1:
            out.sort(key=_due_of_entry)
        return out

    # -- internals -------------------------------------------------------------------------

    def _add_level(self) -> None:
        self._buckets.append([[] for _ in range(self._mask + 1)])
        self._occ.append(0)
        bits = self._bits
        self._lvl_of += [
            (n - 1) // bits for n in range(len(self._lvl_of), len(self._occ) * bits + 1)
        ]

    def _migrate(self) -> None:
        """Move the overflow timers in ``cur``'s top-level block into the wheel."""
        top = self._top_shift
        if top is None:
            return
        # The remembered bucket minimum is dropped, not kept up to date: a migration comes
        # when cur enters a new top-level block, by which time every bucket of the old one
        # has been cascaded (and the memo with it), so keeping it exact here would be code
        # no run reaches and no test can check.
        self._memo_bucket = None
        overflow = self._overflow
        index = self._index
        block = self._cur >> top
        while overflow and (overflow[0][0] // self._tick - self._origin) >> top <= block:
            entry = heapq.heappop(overflow)[2]
            if index.get(entry[1]) is not entry:
                self._stale -= 1
                continue
            self._place(entry)

    def _place(self, entry: tuple[int, K, V]) -> None:
        """Put a live entry where invariant 1 says (only for ticks within the levels)."""
        cur = self._cur
        t = max(entry[0] // self._tick - self._origin, cur)
        lvl = (((t ^ cur).bit_length() - 1) // self._bits) if t != cur else 0
        idx = (t >> (lvl * self._bits)) & self._mask
        bucket = self._buckets[lvl][idx]
        if not bucket:
            self._occ[lvl] |= 1 << idx
        bucket.append(entry)

    def _compute_next(self) -> int | None:
        index_get = self._index.get
        for lvl, buckets in enumerate(self._buckets):
            while self._occ[lvl]:
                occ = self._occ[lvl]
                idx = (occ & -occ).bit_length() - 1
                bucket = buckets[idx]
                if bucket is self._memo_bucket:
                    return self._memo_min
                best: int | None = None
                if not self._stale:
                    best = min(map(_due_of_entry, bucket))
                else:
                    for entry in bucket:
                        if index_get(entry[1]) is entry and (best is None or entry[0] < best):
                            best = entry[0]
                if best is not None:
                    if lvl:
                        self._memo_bucket = bucket
                        self._memo_min = best
                    return best
                # Only cancelled timers here: drop them now.
                self._stale -= len(bucket)
                bucket.clear()
                self._occ[lvl] = occ ^ (1 << idx)
        overflow = self._overflow
        while overflow:
            entry = overflow[0][2]
            if index_get(entry[1]) is entry:
                return entry[0]
            heapq.heappop(overflow)
            self._stale -= 1
        return None

    def _prune(self) -> None:
        """Drop every cancelled or replaced entry (they outnumber the live ones)."""
        index_get = self._index.get
        self._memo_bucket = None
        for lvl, buckets in enumerate(self._buckets):
            occ = self._occ[lvl]
            while occ:
                low = occ & -occ
                occ ^= low
                idx = low.bit_length() - 1
                live = [e for e in buckets[idx] if index_get(e[1]) is e]
                buckets[idx] = live
                if not live:
                    self._occ[lvl] ^= low
        if self._overflow:
            self._overflow = [o for o in self._overflow if index_get(o[2][1]) is o[2]]
            heapq.heapify(self._overflow)
        self._stale = 0

    def _check_invariants(self) -> None:
        """Assert invariants 1, 2, 5 and 7 (for tests; O(everything))."""
        cur, bits, mask = self._cur, self._bits, self._mask
        assert cur == self._now // self._tick - self._origin
        seen: set[int] = set()
        stale = 0
        for lvl, buckets in enumerate(self._buckets):
            occupied = [idx for idx, bucket in enumerate(buckets) if bucket]
            assert self._occ[lvl] == sum(1 << idx for idx in occupied), lvl
            for idx in occupied:
                digit = (cur >> (lvl * bits)) & mask
                assert idx >= digit if lvl == 0 else idx > digit, (lvl, idx, digit)
                for entry in buckets[idx]:
                    if self._index.get(entry[1]) is not entry:
                        stale += 1
                        continue
                    assert id(entry) not in seen
                    seen.add(id(entry))
                    t = max(entry[0] // self._tick - self._origin, cur)
                    want = ((t ^ cur).bit_length() - 1) // bits if t != cur else 0
                    assert want == lvl, (entry, lvl, want)
                    assert (t >> (lvl * bits)) & mask == idx
        top = self._top_shift
        for due, _, entry in self._overflow:
            if self._index.get(entry[1]) is not entry:
                stale += 1
                continue
            assert top is not None
            assert (due // self._tick - self._origin) >> top > cur >> top
            assert id(entry) not in seen
            seen.add(id(entry))
        assert len(seen) == len(self._index)
        assert stale == self._stale, (stale, self._stale)
        assert self._next is None or self._next_ok
        memo = self._memo_bucket
        if memo is not None:
            assert any(memo is b for level in self._buckets[1:] for b in level)
            live = [e[0] for e in memo if self._index.get(e[1]) is e]
            assert live
            assert min(live) == self._memo_min
        if self._next_ok:
            dues = [entry[0] for entry in self._index.values()]
            assert self._next == (min(dues) if dues else None)

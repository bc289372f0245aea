"""One release budget per loop turn, shared fairly by every partition releasing."""

from __future__ import annotations

from collections import Counter

import pytest

from stream_expiry.holds import HoldBook
from stream_expiry.release_turns import ReleaseTurns
from tests.unit.test_holds import T0, TTL, Partition, hold


def _held_partitions(count: int, records: int) -> list[Partition]:
    """``count`` partitions sharing one hold book, ``records`` held and due in each."""
    book = HoldBook()
    book.place(hold())
    parts = [Partition(book) for _ in range(count)]
    for n, p in enumerate(parts):
        for i in range(records):
            p.event(f"p{n}-r{i}", "create", T0 + i)
        p.tick(T0 + 4 * TTL)
        assert p.proc.store.counts.held == records
    book.release("h1")
    return parts


def _turn(turns: ReleaseTurns, parts: list[Partition], now: int) -> Counter[int]:
    """One turn; how many records each partition let go."""
    by_proc = {id(p.proc): n for n, p in enumerate(parts)}
    done: Counter[int] = Counter()
    for proc, effects in turns.take([p.proc for p in parts], now):
        n = by_proc[id(proc)]
        parts[n]._take(effects, now)
        done[n] += len(effects.tombstones)
    return done


def test_a_turn_decides_one_budget_however_many_partitions_release() -> None:
    parts = _held_partitions(12, 40)
    turns = ReleaseTurns(budget=30)
    now = T0 + 5 * TTL
    per_turn = []
    while any(p.proc.releasing for p in parts):
        per_turn.append(sum(_turn(turns, parts, now).values()))
    assert max(per_turn) <= 30
    assert sum(per_turn) == 12 * 40
    for p in parts:  # every record once, none early
        assert len(p.tombstones) == 40
        assert len({rid for rid, *_ in p.tombstones}) == 40
        assert all(at >= (exp or 0) for _, _, at, exp in p.tombstones)


def test_more_partitions_than_slices_each_gets_its_turn() -> None:
    parts = _held_partitions(7, 3)
    turns = ReleaseTurns(budget=2, chunk=1)
    now = T0 + 5 * TTL
    served: Counter[int] = Counter()
    for _ in range(4):  # 8 slices of one record: every one of the 7 partitions got one
        done = _turn(turns, parts, now)
        assert sum(done.values()) <= 2
        served.update(done)
    assert set(served) == set(range(7))


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ReleaseTurns(budget=0)

"""How a range read moves on each answer (``stream_expiry.fetch._take``): records kept
within the range, positions past control batches and compacted gaps, a log start that moved
past the position, and a partition that stays empty. The broker side is tested in
``tests/integration/test_fetch.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from aiokafka import TopicPartition

from stream_expiry import fetch
from stream_expiry.errors import BrokerUnavailableError
from stream_expiry.fetch import EMPTY_ROUNDS, Fetched, _Partition, _Retry, _take

if TYPE_CHECKING:
    from collections.abc import Iterator

TP = TopicPartition("t", 0)


@dataclass
class Rec:
    offset: int


@dataclass
class Batch:
    base_offset: int
    next_offset: int
    offsets: list[int] = field(default_factory=list)
    is_control_batch: bool = False

    def __iter__(self) -> Iterator[Rec]:
        return (Rec(o) for o in self.offsets)


def batch(first: int, last: int, *, gaps: tuple[int, ...] = (), control: bool = False) -> Batch:
    return Batch(first, last + 1, [o for o in range(first, last + 1) if o not in gaps], control)


def offsets(fetched: Fetched) -> list[int]:
    return [r.offset for r in fetched]


def test_records_outside_the_range_are_left_out_and_the_position_stops_at_the_end() -> None:
    part = _Partition(5, 12)
    got = _take(part, TP, (100, 0, [batch(0, 9), batch(10, 19)], 100), False)
    assert offsets(got) == list(range(5, 12))
    assert got.position == part.position == 12


def test_control_batches_and_compacted_gaps_move_the_position_without_records() -> None:
    part = _Partition(0, 30)
    answer = [batch(0, 9, gaps=(3, 4)), batch(10, 10, control=True), batch(11, 19)]
    got = _take(part, TP, (30, 0, answer, 30), False)
    assert offsets(got) == [0, 1, 2, 5, 6, 7, 8, 9, *range(11, 20)]
    assert got.position == 20


def test_the_end_is_the_first_answers_high_watermark_when_none_was_given() -> None:
    part = _Partition(0)
    got = _take(part, TP, (8, 0, [batch(0, 7)], 8), False)
    assert (got.end, got.position, len(offsets(got))) == (8, 8, 8)
    later = _take(part, TP, (50, 0, [], 50), True)  # a later, higher watermark changes nothing
    assert later.end == 8


def test_a_start_past_the_end_reads_nothing_and_keeps_its_position() -> None:
    part = _Partition(40)
    got = _take(part, TP, (10, 0, [], 10), True)
    assert (offsets(got), got.position, got.end) == ([], 40, 10)


def test_offsets_gone_before_the_log_start_are_skipped_to_it() -> None:
    part = _Partition(3, 100)
    got = _take(part, TP, (100, 60, [], 100), False)
    assert (got.position, offsets(got)) == (60, [])


def test_only_idle_rounds_count_towards_giving_up_on_a_partition() -> None:
    part = _Partition(10, 20)
    for _ in range(EMPTY_ROUNDS * 3):  # other partitions filled these answers
        assert _take(part, TP, (20, 0, [], 20), False).position == 10
    for _ in range(EMPTY_ROUNDS - 1):
        assert _take(part, TP, (20, 0, [], 20), True).position == 10
    # A record resets the count: it takes EMPTY_ROUNDS idle rounds in a row.
    assert _take(part, TP, (20, 0, [batch(10, 10)], 20), True).position == 11
    for _ in range(EMPTY_ROUNDS - 1):
        assert _take(part, TP, (20, 0, [], 20), True).position == 11
    got = _take(part, TP, (20, 0, [], 20), True)
    assert (got.position, offsets(got)) == (20, [])  # the rest was compacted away


@pytest.mark.asyncio
async def test_the_ends_are_asked_again_after_a_leader_moved_then_given_up_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``end_offsets(..., retries=2)`` tries three times, 0.2 s then 0.4 s apart, the
    leaders looked up again after a failure; a fourth failure is not tried."""
    tp = TopicPartition("sessions", 0)
    outcomes: list[Exception | dict[TopicPartition, tuple[int, int, list[object], int]]] = [
        _Retry("not the leader"),
        _Retry("not the leader"),
        {tp: (12, 0, [], 12)},
    ]
    cached: list[bool] = []
    slept: list[float] = []

    async def one_round(
        cons: object, parts: object, leaders: dict[TopicPartition, int], *args: object, **kw: object
    ) -> object:
        cached.append(bool(leaders))
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(fetch, "_round", one_round)
    monkeypatch.setattr(fetch, "_cached_leaders", lambda cons, parts: {tp: 1})
    monkeypatch.setattr("stream_expiry.fetch.asyncio.sleep", sleep)
    assert await fetch.end_offsets(None, {tp: 10}, retries=2) == {tp: 12}
    assert (cached, slept) == ([True, False, False], [0.2, 0.4])

    outcomes[:] = [_Retry("away")] * 3
    with pytest.raises(BrokerUnavailableError):
        await fetch.end_offsets(None, {tp: 10}, retries=2)
    assert outcomes == []

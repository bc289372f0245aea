"""An ingest slice ends early when a timer waits for the lock (Service._decide): what was
decided is sent as one entry, the firing goes first, and the rest follows; nothing is
decided twice, skipped or reordered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from stream_expiry.service import STEP, Service

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class _Firing:
    """Wants the lock at the checks ``wanted`` names (counted from 1)."""

    def __init__(self, wanted: set[int]) -> None:
        self.wanted = wanted
        self.checks = 0

    def wants_the_lock(self, now_ms: int) -> bool:
        self.checks += 1
        return self.checks in self.wanted


class _Processor:
    def process(self, chunk: list[int], now: int) -> list[int]:
        return chunk


class _Commits:
    def __init__(self) -> None:
        self.decided_to: list[int] = []

    def decided(self, slot: tuple[str, int], last: int) -> None:
        self.decided_to.append(last)


def _service(firing: _Firing | None) -> tuple[Service, list[list[int]], _Commits]:
    service = object.__new__(Service)
    proc = _Processor()
    entries: list[list[int]] = []
    commits = _Commits()

    async def send_decided(decide: Callable[[int], Iterator[tuple[Any, list[int]]]]) -> None:
        entries.append([n for _, chunk in decide(0) for n in chunk])

    service.__dict__.update(
        _firing=firing,
        clock=lambda: 0,
        processors={("in", 0): proc},
        _commits=commits,
        _send_decided=send_decided,
    )
    return service, entries, commits


def _group(events: int) -> list[tuple[tuple[str, int], Any, list[int]]]:
    records = list(range(events))
    return [(("in", 0), None, records[i : i + STEP]) for i in range(0, events, STEP)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("wanted", "want"),
    [
        (set(), [[0, 200]]),  # no timer waits: one entry
        ({1}, [[0, 50], [50, 200]]),  # after the first step
        ({2}, [[0, 100], [100, 200]]),
        ({1, 2, 3, 4}, [[0, 50], [50, 100], [100, 150], [150, 200]]),
    ],
)
async def test_a_slice_is_cut_where_a_timer_waits_and_every_event_is_decided_once_in_order(
    wanted: set[int], want: list[list[int]]
) -> None:
    service, entries, commits = _service(_Firing(wanted))
    group = [(slot, service.processors[slot], chunk) for slot, _, chunk in _group(4 * STEP)]
    await service._decide(group)
    assert [[e[0], e[-1] + 1] for e in entries] == want
    assert [n for e in entries for n in e] == list(range(4 * STEP))
    assert commits.decided_to == [STEP * (i + 1) - 1 for i in range(4)]


@pytest.mark.asyncio
async def test_without_a_firing_task_a_slice_is_one_entry() -> None:
    service, entries, _ = _service(None)
    group = [(slot, service.processors[slot], chunk) for slot, _, chunk in _group(2 * STEP)]
    await service._decide(group)
    assert entries == [list(range(2 * STEP))]

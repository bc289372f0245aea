"""The service's notes at an assignment and at a partition's end of backlog: the firing
woken, and what is said (or refused) of records kept for holds the holds topic does not
have."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

import pytest
from aiokafka import TopicPartition

from stream_expiry.config import parse_config
from stream_expiry.engine import Fired
from stream_expiry.errors import ConfigurationError
from stream_expiry.holds import Hold
from stream_expiry.model import Identity, Stamp
from stream_expiry.reading import END_UNKNOWN
from stream_expiry.service import Service
from stream_expiry.state import Effects

if TYPE_CHECKING:
    from collections.abc import Iterator

    from stream_expiry.firing import Firing
    from stream_expiry.outbox import Outbox
    from stream_expiry.state import PartitionProcessor


class _Firing:
    def __init__(self) -> None:
        self.woken = 0
        self.due: list[int | None] = []

    def wake(self) -> None:
        self.woken += 1

    def due_at(self, due_ms: int | None) -> None:
        self.due.append(due_ms)


class _Outbox:
    def __init__(self) -> None:
        self.sent: list[list[tuple[object, Effects]]] = []

    async def send(self, items: list[tuple[object, Effects]], now_ms: int) -> list[object]:
        self.sent.append(items)
        return []


class _Counts:
    def __init__(self, held: int) -> None:
        self.held = held


class _Store:
    def __init__(self, held: int) -> None:
        self.counts = _Counts(held)


class _Processor:
    """What the assignment's notes read of a partition: its store's held count, and its
    timers in the wheel and set aside."""

    def __init__(self, held: int = 0, timers: int = 0, waiting: int = 0) -> None:
        self.store = _Store(held)
        self.timers, self.waiting = timers, waiting
        self.next_due: int | None = None

    def next_due_ms(self) -> int | None:
        return self.next_due


def _service(config: str = "") -> Service:
    return Service(parse_config(config), bootstrap_servers="k:1", environ={})


def test_a_partition_that_has_read_its_backlog_wakes_the_firing() -> None:
    """Its timers waited for the backlog (the firing passed the partition over, and may
    sleep with nothing else due): once read, the task is woken to fire them, whether or
    not sessions were set aside."""
    service = _service()
    firing = _Firing()
    service._firing = cast("Firing", firing)
    service._let_go(("in", 0), END_UNKNOWN)
    assert firing.woken == 1
    service._let_go(("in", 0), 42)  # a lagging read, nothing set aside: nothing to wake
    assert firing.woken == 1


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records if "legal" in r.getMessage()]


async def _judge(
    monkeypatch: pytest.MonkeyPatch, config: str, written: int, holds: int = 0
) -> None:
    """Judge 3 records kept for holds in ``in[0]``'s store at its assignment, the holds
    topic having had ``written`` messages and ``holds`` holds active."""
    asked: list[str] = []

    async def topic_ends(_brokers: object, topics: list[str]) -> dict[str, int]:
        asked.extend(topics)
        return dict.fromkeys(topics, written)

    monkeypatch.setattr("stream_expiry.service.topic_ends", topic_ends)
    service = _service(config)
    for n in range(holds):
        service.holds.place(Hold(f"h{n}", "acme", None, None, None, None, "case", None))
    try:
        await service._judge_held_without_holds(
            {("in", 0): cast("PartitionProcessor", _Processor(held=3))}
        )
    finally:
        assert asked == ([] if holds else ["expiry.holds"])


ARCHIVE = "[archive]\nrequired = true\n"


@pytest.mark.asyncio
async def test_records_kept_with_no_active_hold_are_said_and_stop_the_start_on_a_new_topic(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records the stores keep for holds when no hold is active: on a holds topic that
    never had a message, the holds were elsewhere: the start stops, or with ``[archive]
    required`` (the stores keep records for the archive too, and cannot tell them apart)
    it warns, where nothing was said (a trial). An active hold: nothing is asked or
    said. (A topic that has had messages: the next test.)"""
    caplog.set_level(logging.INFO, logger="stream_expiry")
    with pytest.raises(ConfigurationError) as refused:
        await _judge(monkeypatch, "", written=0)
    assert str(refused.value).startswith(
        "the stores of in[0] (3) keep 3 records for legal holds, but no hold is active and "
        "the legal holds topic 'expiry.holds' has never had a message"
    )
    assert _said(caplog) == []
    await _judge(monkeypatch, ARCHIVE, written=0)
    (said,) = _said(caplog)
    assert said.startswith(
        "WARNING the stores of in[0] (3) keep 3 records for the archive or for legal holds "
        "([archive] required: the stores do not tell which), and the legal holds topic "
        "expiry.holds has never had a message"
    )
    caplog.clear()
    await _judge(monkeypatch, "", written=0, holds=1)
    assert _said(caplog) == []


@pytest.mark.asyncio
async def test_records_kept_for_holds_released_before_the_start_are_said_as_released(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a holds topic that has had messages and has no active hold, the holds were
    released before the start (the service down): the records go, and the start warned
    that "the holds topic was lost", alarming for a normal operation (a trial). An info
    line says they were released; with ``[archive] required`` also that the archive may
    be what keeps them, where nothing was said."""
    caplog.set_level(logging.INFO, logger="stream_expiry")
    await _judge(monkeypatch, "", written=2)
    await _judge(monkeypatch, ARCHIVE, written=2)
    released = (
        "INFO the stores of in[0] (3) keep 3 records for legal holds released before this "
        "start (read now from expiry.holds, which has no active hold)"
    )
    assert _said(caplog) == [
        f"{released}: let go now, and tombstoned if due; expiry.audit says when each hold "
        "was released",
        f"{released}, or for the archive ([archive] required: the stores do not tell which): "
        "each is let go once the archive has it, and tombstoned if due",
    ]


def test_the_assignment_line_counts_the_timers_set_aside_of_the_partitions_assigned() -> None:
    """The restore's timers, in the wheels or set aside (sessions waiting for unread
    input), of the partitions the assignment gave: not those of partitions held before."""
    service = _service()
    service.processors[("in", 0)] = cast("PartitionProcessor", _Processor(timers=5, waiting=2))
    service.processors[("in", 1)] = cast("PartitionProcessor", _Processor(timers=100))
    assigned = [TopicPartition("in", 0), TopicPartition("in", 7)]  # 7: revoked meanwhile
    assert service._timers_of(assigned) == 7


@pytest.mark.asyncio
async def test_what_the_loop_decides_tells_the_firing_when_its_timers_are_due() -> None:
    """Decided and sent (a slice read, or creates woken from parking), a partition's next
    due time goes to the firing, which may sleep past it (due_at wakes it): the timer of
    a create woken from parking, due before the firing looks again, fired late."""
    service = _service()
    firing, outbox = _Firing(), _Outbox()
    service._firing, service._outbox = cast("Firing", firing), cast("Outbox", outbox)
    proc = _Processor()
    proc.next_due = 1_234

    def decide(now: int) -> Iterator[tuple[PartitionProcessor, Effects]]:
        yield cast("PartitionProcessor", proc), Effects(1)

    await service._send_decided(decide)
    assert len(outbox.sent) == 1
    assert firing.due == [1_234]


def test_a_null_sent_again_without_its_tombstone_event_counts_as_no_tombstone() -> None:
    """The release of an old erasure a hold deferred sends the ended life's null again,
    not its tombstone event (``Fired.null_only``): the tombstones counted (the metric
    ``tombstones_total``) are the events sent, and that life's was counted when it ended."""
    service = _service()
    t = 1_800_000_000_000
    life = Stamp(Identity("acme", "_", "live", "conversation", "c"), t, t + 1_000, 1_000, "default")
    marker = life._replace(deleted_at=t + 999)
    service._count_tombstone(Fired(life, marker, "ttl", t + 1_000))  # at its expiry
    service._count_tombstone(Fired(life, marker, "ttl", t + 9_000, null_only=True))
    assert (service.stats.tombstones, service.stats.explicit) == (1, 0)

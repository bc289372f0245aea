"""Where an assigned input partition resumes, and the read positions the service keeps."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from aiokafka import TopicPartition

from stream_expiry.errors import BrokerUnavailableError
from stream_expiry.reading import END_UNKNOWN, InputReading, resume_point

TP = TopicPartition("conversations", 3)
SLOT = ("conversations", 3)


@dataclass
class Rec:
    offset: int


def _reading() -> tuple[InputReading, list[tuple[TopicPartition, int]], list[tuple[object, int]]]:
    seeks: list[tuple[TopicPartition, int]] = []
    let_go: list[tuple[object, int]] = []
    reading = InputReading(
        lambda slot, at: let_go.append((slot, at)), lambda tp, at: seeks.append((tp, at))
    )
    return reading, seeks, let_go


def test_the_committed_offset_is_where_a_partition_resumes() -> None:
    point = resume_point(TP, 40, 0, 90, None)
    assert (point.offset, point.warning) == (40, None)
    assert point.why == "at the committed offset"


def test_no_committed_offset_reads_from_the_beginning_without_a_warning() -> None:
    point = resume_point(TP, None, 7, 90, None)
    assert (point.offset, point.warning) == (7, None)
    assert "no committed offset" in point.why


def test_an_offset_at_the_end_is_trusted_and_one_past_it_is_said() -> None:
    assert resume_point(TP, 90, 0, 90, None).offset == 90
    point = resume_point(TP, 91, 5, 90, None)
    assert point.offset == 5
    assert point.warning is not None
    assert (
        "conversations[3]: the committed offset 91 is past the partition's end 90" in point.warning
    )


def test_an_offset_after_another_message_than_the_marked_one_reads_from_the_beginning() -> None:
    point = resume_point(TP, 40, 2, 90, "key b'x' at 39, marked b'y'")
    assert point.offset == 2
    assert point.warning is not None
    assert "(key b'x' at 39, marked b'y')" in point.warning
    assert "not this topic's committed offset" in point.why


def test_a_partition_with_a_backlog_holds_its_sliding_records_until_it_is_read() -> None:
    reading, seeks, let_go = _reading()
    reading.assigned([SLOT])
    assert reading.unread[SLOT] == END_UNKNOWN  # held from the assignment on
    said = reading.positioned(TP, 10, 14)
    assert seeks == [(TP, 10)]
    assert reading.unread[SLOT] == 14
    assert reading.catching_up[SLOT][0] == 14
    assert "the 4 events before 14" in said
    assert let_go == []


def test_a_partition_without_a_backlog_lets_its_records_go_at_once() -> None:
    reading, _, let_go = _reading()
    reading.assigned([SLOT])
    assert reading.positioned(TP, 14, 14) == ""
    assert SLOT not in reading.unread
    assert SLOT not in reading.catching_up
    assert let_go == [(SLOT, END_UNKNOWN)]


def test_records_before_the_position_are_dropped_and_the_position_moves_past_the_rest() -> None:
    reading, seeks, _ = _reading()
    reading.positioned(TP, 5, 5)
    before = reading.seeks
    taken = reading.take(TP, [Rec(3), Rec(4), Rec(5), Rec(6)], before)
    assert [r.offset for r in taken] == [5, 6]
    assert reading.next_offset[SLOT] == 7
    assert reading.take(TP, [Rec(5), Rec(6)], before) == []  # read again: nothing new
    assert reading.next_offset[SLOT] == 7
    assert seeks == [(TP, 5)]


def test_a_partition_made_again_while_read_is_read_from_its_new_beginning_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The topic deleted and made again while the service ran: the consumer meets "offset
    out of range" and goes back to the beginning, and the batch it hands over starts below
    the position, the partition's end below it too. Those are new events, not records read
    again: dropped, each create, touch and erasure went undecided without a word (a trial:
    337 sessions never stamped). The records waiting for the old log's offsets go too."""
    reading, _, let_go = _reading()
    reading.positioned(TP, 340, 350)
    reading.unread[SLOT] = 350  # a sliding record waits for the old log's offset 349
    taken = reading.take(TP, [Rec(0), Rec(1), Rec(2)], reading.seeks, end=45)
    assert [r.offset for r in taken] == [0, 1, 2]
    assert reading.next_offset[SLOT] == 3
    assert SLOT not in reading.unread
    assert SLOT not in reading.catching_up
    assert let_go[-1] == (SLOT, END_UNKNOWN)
    assert "conversations[3] now ends at offset 45, before offset 340" in caplog.text
    assert "reading it from offset 0" in caplog.text


def test_records_read_again_below_the_position_are_dropped_while_the_end_is_beyond_it() -> None:
    reading, _, let_go = _reading()
    reading.positioned(TP, 5, 5)
    taken = reading.take(TP, [Rec(3), Rec(4), Rec(5)], reading.seeks, end=9)
    assert [r.offset for r in taken] == [5]
    assert reading.next_offset[SLOT] == 6
    assert let_go == [(SLOT, END_UNKNOWN)]  # the positioning's, no reset's


def test_a_batch_fetched_before_a_seek_is_left_and_read_again_from_the_new_position() -> None:
    reading, seeks, _ = _reading()
    reading.positioned(TP, 5, 5)
    before = reading.seeks
    reading.positioned(TP, 20, 20)  # the assignment positioned it again meanwhile
    assert reading.take(TP, [Rec(30), Rec(31)], before) == []
    assert seeks[-1] == (TP, 20)
    assert reading.next_offset[SLOT] == 20
    assert [r.offset for r in reading.take(TP, [Rec(20)], reading.seeks)] == [20]


def test_a_partition_not_positioned_takes_nothing() -> None:
    reading, seeks, _ = _reading()
    assert reading.take(TP, [Rec(0)], reading.seeks) == []
    assert seeks == []


def test_a_revoked_partition_is_forgotten_and_the_mapping_the_firing_reads_stays_the_same() -> None:
    reading, _, _ = _reading()
    unread = reading.unread
    reading.assigned([SLOT, ("sessions", 0)])
    reading.positioned(TP, 1, 9)
    reading.forget(SLOT)
    assert SLOT not in reading.next_offset
    assert SLOT not in reading.catching_up
    assert SLOT not in unread
    reading.clear()
    assert reading.unread is unread
    assert not unread
    assert not reading.catching_up


@pytest.mark.asyncio
async def test_the_ends_learnt_for_the_firing_mark_what_a_partition_has_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker's ends, asked now (with two more tries for a leader moving), note a
    partition read short of its end as unread up to it; one read to its end is left
    alone. A broker still away after them is raised."""
    reading, _, _ = _reading()
    other = ("sessions", 0)
    reading.next_offset.update({SLOT: 10, other: 5})
    answers: list[Exception | dict[TopicPartition, int]] = [{TP: 12, TopicPartition(*other): 5}]

    async def end_offsets(
        cons: object, at: dict[TopicPartition, int], *, retries: int = 0
    ) -> dict[TopicPartition, int]:
        assert at == {TP: 10, TopicPartition(*other): 5}
        assert retries == 2
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr("stream_expiry.reading.end_offsets", end_offsets)
    await reading.learn_ends(None, [SLOT, other])
    assert reading.unread == {SLOT: 12}

    answers[:] = [BrokerUnavailableError("away")]
    with pytest.raises(BrokerUnavailableError):
        await reading.learn_ends(None, [SLOT, other])


@pytest.mark.asyncio
async def test_an_end_learnt_while_the_reading_is_tracked_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The firing learns a partition's end (``learn_ends``) while the loop asks the
    consumer how far it has read (``track_unread`` awaits its position): the end learnt
    meanwhile, beyond what the loop had seen, was overwritten or dropped when the loop
    went on, and a session due could fire before a touch still unread (a review)."""
    reading, _, _ = _reading()
    reading.next_offset[SLOT] = 10
    monkeypatch.setattr("stream_expiry.reading.stable_end", lambda cons, tp: 12)

    class Consumer:
        def assignment(self) -> set[TopicPartition]:
            return {TP}

        def highwater(self, tp: TopicPartition) -> int:
            return 12

        async def position(self, tp: TopicPartition) -> int:
            reading.unread[SLOT] = 20  # learn_ends, run by the firing meanwhile
            return 12

    await reading.track_unread(Consumer(), [SLOT])
    assert reading.unread == {SLOT: 20}


@pytest.mark.asyncio
async def test_a_partition_whose_end_falls_below_its_position_is_read_from_the_start_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The topic deleted and made again while the service ran, on a broker that answers a
    fetch past the end with nothing (Tansu) rather than "offset out of range": the consumer
    waited at the old offset, and every event of the new topic before it went undecided,
    without a word (a trial: 102 creates in 30 s, none stamped, so none ever tombstoned).
    The end the consumer's last fetch gave, below the position, says it: the partition is
    read again from offset 0, with a warning, and the records that waited for the old
    log's offsets go."""
    reading, seeks, let_go = _reading()
    reading.positioned(TP, 332, 332)
    reading.next_offset[SLOT] = 340
    reading.unread[SLOT] = 345

    class Consumer:
        def highwater(self, tp: TopicPartition) -> int:
            return 15

        def last_stable_offset(self, tp: TopicPartition) -> None:
            return None

        def assignment(self) -> set[TopicPartition]:
            return {TP}

        async def position(self, tp: TopicPartition) -> int:
            return 340

    before = reading.seeks
    await reading.track_unread(Consumer(), [SLOT])
    assert seeks[-1] == (TP, 0)
    assert reading.next_offset[SLOT] == 0
    assert SLOT not in reading.unread
    assert let_go[-1] == (SLOT, END_UNKNOWN)
    assert "conversations[3] now ends at offset 15, before offset 340" in caplog.text
    # A batch fetched from the old position before the seek is read again, from 0.
    assert reading.take(TP, [Rec(340)], before) == []
    assert [r.offset for r in reading.take(TP, [Rec(0), Rec(1)], reading.seeks)] == [0, 1]


@pytest.mark.asyncio
async def test_a_partition_not_positioned_yet_holds_its_timers_past_the_catch_up_limit() -> None:
    """The limit on the wait for a partition's backlog (``CATCH_UP_MAX_S``) counts from
    the assignment until the partition is positioned: a restore of tens of millions of
    stamps outlasts it, and the next loop turn let the partition's timers go before its
    position, and so its backlog, was known. The firing then fired every record that fell
    due during the restore, a touch or an erasure in the backlog unread (the sessions
    deleted early, the erasures recorded as expiries). Not positioned, it waits for the
    positioning, which gives it the limit anew."""
    reading, _, let_go = _reading()
    reading.assigned([SLOT])
    reading.catching_up[SLOT] = (END_UNKNOWN, 0.0)  # the limit passed during the restore

    class Consumer:
        def assignment(self) -> set[TopicPartition]:
            return set()  # paused, not positioned

    await reading.caught_up(Consumer())
    assert let_go == []
    assert reading.unread[SLOT] == END_UNKNOWN
    assert SLOT in reading.catching_up
    reading.positioned(TP, 10, 14)
    assert reading.catching_up[SLOT][0] == 14

"""The input offsets a commit saves, and the marks that let the next assignment check them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from stream_expiry.commits import OffsetCommits
from stream_expiry.state.store import input_position_name, position_marks

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiokafka import AIOKafkaConsumer

    from stream_expiry.outbox import Outbox
    from stream_expiry.state import PartitionProcessor

SLOT = ("conversations", 0)


@dataclass
class _Rec:
    offset: int
    key: bytes | None = None
    timestamp: int = 0


def test_a_commit_short_of_every_slice_end_commits_the_last_one_before_it() -> None:
    """A partition with a create parked is settled up to that create, where no slice
    ends: committed there, the offset had no mark, and the check for a cluster rebuilt
    meanwhile passed it over (a review). It commits the last slice end before it."""
    commits = OffsetCommits({})
    for last in (9, 19, 29):  # slices ending at offsets 9, 19, 29: marks at 10, 20, 30
        commits.decided(SLOT, _Rec(last, b"k%d" % last))
    assert commits.marked(SLOT, 20) == 20  # a slice end: as it is
    assert commits.marked(SLOT, 25) == 20  # the parked create at 25: the end before it
    assert commits.marked(SLOT, 5) == 5  # none before it: as it is (no mark, as before)
    assert commits.marked(("errors", 0), 7) == 7  # a partition with no slices yet


class _Proc:
    def __init__(self) -> None:
        from stream_expiry.state import MemoryKV, PartitionStore

        self.store = PartitionStore(MemoryKV())

    def checkpoint_meta(self, runs: object) -> dict[str, int]:
        return {}


class _Store:
    def __init__(self) -> None:
        self.meta: dict[str, int] = {}

    def set_meta(self, meta: dict[str, int]) -> None:
        self.meta.update(meta)


class _Processor:
    """What a commit asks of a partition's processor: its changelog positions (none
    moved here) and its store, where the commit's mark is written."""

    def __init__(self) -> None:
        self.store = _Store()

    def checkpoint_meta(self, runs: object) -> dict[str, int]:
        return {}


class _Outbox:
    def __init__(self) -> None:
        self.committable: dict[tuple[str, int], int] = {}

    def take_written(self) -> set[tuple[str, int]]:
        return set()

    def runs(self, proc: object) -> dict[str, list[object]]:
        return {}


class _Consumer:
    def __init__(self) -> None:
        self.committed: dict[tuple[str, int], int] = {}

    async def commit(self, offsets: dict[object, int]) -> None:
        for tp, offset in offsets.items():
            self.committed[(tp.topic, tp.partition)] = offset  # type: ignore[attr-defined]


def _committer(commits: OffsetCommits) -> Callable[[int], int]:
    """A commit of ``commits`` with the partition settled up to an offset; returns the
    offset the consumer was given."""
    import anyio

    outbox, cons = _Outbox(), _Consumer()

    async def commit_at(settled: int) -> int:
        outbox.committable[SLOT] = settled
        assert await commits.commit(cons, outbox)  # type: ignore[arg-type]
        return cons.committed[SLOT]

    return lambda settled: anyio.run(commit_at, settled)


def test_every_commit_while_a_create_stays_parked_is_marked() -> None:
    """A create parked for minutes keeps the partition's settled offset at it while
    slices after it are decided: each commit meanwhile commits there again. The first
    commits the slice end before it, marked; the commit dropped that mark with those it
    passed, and the next commits went to the parked offset itself, unmarked (the check
    for a cluster rebuilt meanwhile passed them over), as before ``marked``."""
    from stream_expiry.state.store import input_position_name

    proc = _Proc()
    commits = OffsetCommits({SLOT: proc})  # type: ignore[dict-item]
    commit_at = _committer(commits)

    for last in (9, 19):
        commits.decided(SLOT, _Rec(last, b"k%d" % last, last))
    # A create at offset 25 parked; the partition is settled up to it, slices go on.
    for last in (29, 39, 49):
        commits.decided(SLOT, _Rec(last, b"k%d" % last, last))
        committed = commit_at(25)
        mark = proc.store.position_mark(input_position_name(*SLOT))
        assert mark is not None
        assert committed == 20
        assert mark[0] == committed - 1, (committed, mark)


def test_a_commit_at_a_create_parked_past_the_marks_kept_is_marked() -> None:
    """More slices decided after the parked create than a partition keeps marks of
    (``INPUT_MARKS``): the slice end before it is gone, and the commit there went unmarked
    as well. It commits again the offset last committed, which its store has the mark of."""
    from stream_expiry.commits import INPUT_MARKS
    from stream_expiry.state.store import input_position_name

    proc = _Proc()
    commits = OffsetCommits({SLOT: proc})  # type: ignore[dict-item]
    commit_at = _committer(commits)

    commits.decided(SLOT, _Rec(19, b"k", 19))
    assert commit_at(20) == 20
    for last in range(30, 30 + INPUT_MARKS + 10):  # the create at 25 parked meanwhile
        commits.decided(SLOT, _Rec(last, b"k%d" % last, last))
    assert commit_at(25) == 20
    mark = proc.store.position_mark(input_position_name(*SLOT))
    assert mark is not None
    assert mark[0] == 19


class _SettledOutbox:
    def __init__(self, committable: dict[tuple[str, int], int]) -> None:
        self.committable = committable

    def take_written(self) -> dict[tuple[str, int], object]:
        return {}

    def runs(self, proc: object) -> list[object]:
        return []


class _RecordingConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


@pytest.mark.asyncio
async def test_a_partition_settled_up_to_a_parked_create_commits_a_marked_offset() -> None:
    """The outbox says the partition is settled up to a parked create (offset 25, inside
    a slice): the commit saves the last slice end before it, 20, and marks the message
    before it in the store, so the next assignment can check it; committed at 25, the
    offset had no mark (a review)."""
    proc = _Processor()
    commits = OffsetCommits(cast("dict[tuple[str, int], PartitionProcessor]", {SLOT: proc}))
    for last in (9, 19, 29):
        commits.decided(SLOT, _Rec(last, b"k%d" % last, 1_000 + last))
    cons = _RecordingConsumer()
    outbox = _SettledOutbox({SLOT: 25})
    assert await commits.commit(cast("AIOKafkaConsumer", cons), cast("Outbox", outbox))
    assert cons.commits == [{TopicPartition(*SLOT): 20}]
    name = input_position_name(*SLOT)
    assert proc.store.meta == position_marks(name, 19, b"k19", 1_019)


def test_a_create_still_parked_when_its_partition_is_given_back_is_committed_marked() -> None:
    """A rebalance takes the partition and gives it back (the eager protocol: every
    member join) while a create stays parked: the revocation's commit is marked, and the
    commits forget the partition. Its processor is resumed as it was (no other member
    wrote its changelog meanwhile), and the positioning finds the group's offset marked in
    its store (``resumed``), as after a restart with the store kept; it reads on in slices
    that end past the create: with no mark below it and no offset known to be marked, the
    next commit went to the parked offset itself, unmarked, and the check for a cluster
    rebuilt passed it over for as long as the create stayed parked."""
    proc = _Proc()
    processors = {SLOT: proc}
    commits = OffsetCommits(processors)  # type: ignore[arg-type]
    commit_at = _committer(commits)
    commits.decided(SLOT, _Rec(19, b"k19", 19))
    commits.decided(SLOT, _Rec(29, b"k29", 29))  # the create at 25 parked
    assert commit_at(25) == 20  # the revocation's commit, marked
    del processors[SLOT]  # revoked: set aside, as it is
    commits.forget(SLOT)
    processors[SLOT] = proc  # given back, resumed as it was
    commits.resumed(SLOT, 20)  # the positioning: the group's offset, its mark held
    commits.decided(SLOT, _Rec(39, b"k39", 39))
    committed = commit_at(25)
    mark = proc.store.position_mark(input_position_name(*SLOT))
    assert mark is not None
    assert (committed, mark[0]) == (20, 19)


def test_a_partition_built_anew_after_its_revocation_trusts_no_earlier_commit() -> None:
    """A partition given back after another member read it (its processor built anew from
    the changelog) knows nothing of the commits made before its revocation: the group may
    have committed past them since. A commit short of every slice end commits the offset
    it is settled to (unmarked, as any first commit there), never the earlier one, which
    would move the group's offset back."""
    processors = {SLOT: _Proc()}
    commits = OffsetCommits(processors)  # type: ignore[arg-type]
    commit_at = _committer(commits)
    commits.decided(SLOT, _Rec(19, b"k19", 19))
    assert commit_at(20) == 20
    del processors[SLOT]
    commits.forget(SLOT)
    processors[SLOT] = _Proc()  # restored anew: another member committed up to 100
    commits.decided(SLOT, _Rec(119, b"k", 119))  # a create at 105 parked in this slice
    assert commit_at(105) == 105


def test_a_commit_never_goes_past_the_offset_settled() -> None:
    """The offset last committed with its mark stands in only for offsets at or past it:
    a partition settled short of it (a create parked before it) is committed where it is
    settled, never past it, where a crash would skip records never decided."""
    processors = {SLOT: _Proc()}
    commits = OffsetCommits(processors)  # type: ignore[arg-type]
    commit_at = _committer(commits)
    commits.decided(SLOT, _Rec(29, b"k29", 29))
    assert commit_at(30) == 30
    assert commits.marked(SLOT, 25) == 25


class _RefusingConsumer:
    """A group consumer whose commit the group refuses: it rebalanced meanwhile. aiokafka
    0.14 raises CommitFailedError from the group's answer (``cause``)."""

    def __init__(self, cause: Exception | None = None) -> None:
        self._cause = cause

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        raise CommitFailedError("the group has already rebalanced") from self._cause


@pytest.mark.asyncio
async def test_a_commit_refused_by_a_rebalance_says_the_partitions_may_be_anothers() -> None:
    """aiokafka calls the revocation back only after its next round trips; meanwhile the
    partitions may be another member's, and the service must stop writing for them
    (stream_expiry.fence). The offsets wait for the next commit, as before."""
    told: list[tuple[str, bool]] = []
    proc = _Processor()
    commits = OffsetCommits(
        cast("dict[tuple[str, int], PartitionProcessor]", {SLOT: proc}),
        on_rebalance=lambda why, routine: told.append((why, routine)),
    )
    outbox = _SettledOutbox({SLOT: 25})
    assert not await commits.commit(
        cast("AIOKafkaConsumer", _RefusingConsumer()), cast("Outbox", outbox)
    )
    assert told == [("an offset commit was refused: the group rebalanced meanwhile", False)]
    assert outbox.committable == {SLOT: 25}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("cause", "why", "routine", "level"),
    [
        (RebalanceInProgressError("g"), "the group is rebalancing", True, logging.INFO),
        (UnknownMemberIdError("g"), "the group rebalanced meanwhile", False, logging.WARNING),
        (IllegalGenerationError("g"), "the group rebalanced meanwhile", False, logging.WARNING),
    ],
)
async def test_a_commit_refused_during_a_rebalance_it_is_in_is_routine(
    cause: Exception, why: str, routine: bool, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The group's answer tells a rebalance this member takes part in (an instance added:
    RebalanceInProgressError) from a member the group dropped or went on without
    (UnknownMemberIdError, IllegalGenerationError): only the second is a zombie's, to
    warn of. Both were said as a warning and fenced as a zombie's."""
    told: list[tuple[str, bool]] = []
    commits = OffsetCommits(
        cast("dict[tuple[str, int], PartitionProcessor]", {SLOT: _Processor()}),
        on_rebalance=lambda why, routine: told.append((why, routine)),
    )
    outbox = _SettledOutbox({SLOT: 25})
    with caplog.at_level(logging.INFO, logger="stream_expiry.commits"):
        assert not await commits.commit(
            cast("AIOKafkaConsumer", _RefusingConsumer(cause)), cast("Outbox", outbox)
        )
    assert told == [(f"an offset commit was refused: {why}", routine)]
    [said] = [r for r in caplog.records if r.name == "stream_expiry.commits"]
    assert said.levelno == level
    assert said.getMessage() == f"offset commit failed, retried with the next one: {why}"
    assert outbox.committable == {SLOT: 25}

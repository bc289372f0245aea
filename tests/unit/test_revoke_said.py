"""What a revocation says of its commit: a member the group had dropped cannot commit."""

from __future__ import annotations

import logging

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, RebalanceInProgressError, UnknownMemberIdError

from stream_expiry.config import parse_config
from stream_expiry.service import Service
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

SLOT = ("conversations", 0)
NOW = 1_000_000


class _Outbox:
    """What a revocation asks of the outbox: nothing in flight, and the offset settled."""

    def __init__(self) -> None:
        self.committable: dict[tuple[str, int], int] = {SLOT: 42}

    async def drain(self) -> None:
        return None

    def take_written(self) -> set[tuple[str, int]]:
        return set()

    def runs(self, proc: object) -> dict[str, list[object]]:
        return {}


class _DroppedConsumer:
    """A member the group dropped (paused past its session timeout): commits are refused."""

    async def commit(self, offsets: object) -> None:
        # as aiokafka 0.14 raises it from the group's answer
        raise CommitFailedError("rebalanced") from UnknownMemberIdError("group")

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        """No metadata of ``topic`` (the assignment's counts are read from it)."""
        del topic
        return None


class _RebalancingConsumer:
    """A member in a rebalance another member started (an instance added): the group
    refuses commits until it has assigned the partitions again."""

    async def commit(self, offsets: object) -> None:
        raise CommitFailedError("rebalanced") from RebalanceInProgressError("group")


def _service() -> Service:
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={}, clock=lambda: NOW)
    proc = PartitionProcessor(
        *SLOT, PartitionStore(MemoryKV()), resolve=lambda i, t: None,  # type: ignore[arg-type,return-value]
        sliding=frozenset(), categories=frozenset({"conversation"}), max_skew_ms=0, now_ms=NOW,
    )  # fmt: skip
    service.processors[SLOT] = proc
    service._outbox = _Outbox()  # type: ignore[assignment]
    service._consumer = _DroppedConsumer()
    return service


@pytest.mark.asyncio
async def test_a_revocation_whose_commit_is_refused_does_not_say_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An instance paused past its session timeout (SIGSTOP in a trial; a long GC pause or
    a throttled container alike) is dropped by the group; when it runs again its commit is
    refused and its partitions revoked. The log said "offset commit failed, retried with
    the next one", then "revoked ...: committed and handed over": neither was so. The next
    owner reads again from the last commit, and what was sent since goes out again."""
    service = _service()
    with caplog.at_level(logging.INFO, logger="stream_expiry"):
        await service.revoke([TopicPartition(*SLOT)])
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("revoked")]
    assert "committed and handed over" not in said
    assert "not committed" in said
    assert "nothing is lost" in said
    assert "conversations[0]" in said


class _Consumer:
    def __init__(self) -> None:
        self.committed: dict[tuple[str, int], int] = {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update({(tp.topic, tp.partition): o for tp, o in offsets.items()})


@pytest.mark.asyncio
async def test_a_revocation_whose_commit_is_taken_says_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = _service()
    consumer = service._consumer = _Consumer()
    with caplog.at_level(logging.INFO, logger="stream_expiry"):
        await service.revoke([TopicPartition(*SLOT)])
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("revoked")]
    assert said.endswith("committed and handed over")
    assert consumer.committed == {SLOT: 42}


@pytest.mark.asyncio
async def test_a_revocation_whose_commit_is_refused_still_takes_the_partition_from_the_timers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused commit does not keep a revoked partition firing: its processor leaves the
    mapping the timer task fires from (set aside until the assignment says whether it
    comes back), and the refusal closes the write fence until that assignment."""
    service = _service()
    with caplog.at_level(logging.WARNING, logger="stream_expiry.fence"):
        await service.revoke([TopicPartition(*SLOT)])
    assert service.processors == {}
    assert SLOT in service._suspended
    assert service._fence.why == "an offset commit was refused: the group rebalanced meanwhile"
    assert service.stats.writes_fenced == 1
    assert len([r for r in caplog.records if r.name == "stream_expiry.fence"]) == 1
    await service.assign([])  # the group's next assignment (none here)
    assert service._fence.why is None


@pytest.mark.asyncio
async def test_a_commit_refused_by_a_routine_rebalance_fences_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator adding an instance: the group rebalances with this member in it, and a
    commit meanwhile is refused with RebalanceInProgressError. The fence closes all the
    same (the partitions may move before the revocation is called back), but that is no
    zombie: said at INFO, not counted in stream_expiry_writes_fenced_total (it warned and
    counted as if the member had been dropped)."""
    service = _service()
    service._consumer = _RebalancingConsumer()
    with caplog.at_level(logging.INFO, logger="stream_expiry"):
        await service.revoke([TopicPartition(*SLOT)])
    assert service._fence.why == "an offset commit was refused: the group is rebalancing"
    assert service.stats.writes_fenced == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    [said] = [r for r in caplog.records if r.name == "stream_expiry.fence"]
    assert said.levelno == logging.INFO
    assert "wait for the group's new assignment" in said.getMessage()

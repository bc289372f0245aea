"""The write fence of a member that may have lost its partitions (stream_expiry.fence):
closed by a stall as long as the group session or by a commit refused by a rebalance,
said once, a rejoin asked for; open again at the group's next assignment."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from stream_expiry.fence import WriteFence
from stream_expiry.stalls import Stalls

if TYPE_CHECKING:
    from collections.abc import Callable

    import pytest


class _Member:
    """The clocks a :class:`Stalls` reads, the partitions owned and the rejoins asked."""

    def __init__(self, owned: int = 3) -> None:
        self.wall = self.mono = self.cpu = 100.0
        self.owned = owned
        self.rejoins = 0
        self.stalls = Stalls(
            tick_s=0.25, wall=lambda: self.wall, monotonic=lambda: self.mono, cpu=lambda: self.cpu
        )

    def pause(self, seconds: float) -> None:
        """SIGSTOP for ``seconds``: the clocks move, the CPU time does not."""
        self.wall += seconds
        self.mono += seconds

    def fence(self, stalls: bool = True) -> WriteFence:
        def rejoin() -> None:
            self.rejoins += 1

        owned: Callable[[], int] = lambda: self.owned  # noqa: E731
        return WriteFence(
            self.stalls if stalls else None,
            session_ms=6_000,
            heartbeat_ms=1_000,
            owned=owned,
            rejoin=rejoin,
        )


def test_a_pause_shorter_than_the_session_less_a_heartbeat_fences_nothing() -> None:
    member = _Member()
    fence = member.fence()
    member.pause(0.25 + 4.9)
    assert not fence.closed()
    assert member.stalls.count == 1  # a stall all the same (said by the watch)
    assert member.rejoins == 0


def test_a_pause_as_long_as_the_session_closes_the_fence_until_the_next_assignment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Asked by the timer task before the stall watch's own turn: the question notices the
    stall. A heartbeat before the pause may have been the last the group saw: 5 s of a 6 s
    session with a 1 s heartbeat is enough to have been dropped."""
    member = _Member()
    fence = member.fence()
    member.pause(0.25 + 5.0)  # the watch's tick, then 5 s off the CPU
    with caplog.at_level(logging.WARNING, logger="stream_expiry.fence"):
        assert fence.closed()
        assert fence.closed()  # and stays closed, said once, one rejoin asked
    [said] = [r for r in caplog.records if r.name == "stream_expiry.fence"]
    assert said.levelno == logging.WARNING
    assert "did not run for 5.0 s" in said.getMessage()
    assert "may have given this member's 3 partitions to another" in said.getMessage()
    assert member.rejoins == 1
    fence.open()  # the group assigned partitions again
    assert not fence.closed()  # the same stall closes it no more
    assert member.rejoins == 1


def test_a_stall_with_no_partition_owned_fences_nothing() -> None:
    """A pause during the first join: nothing to write for, and the assignment to come is
    the group's answer already."""
    member = _Member(owned=0)
    fence = member.fence()
    member.pause(30.0)
    assert not fence.closed()
    member.owned = 3
    assert not fence.closed()  # that stall is past
    assert member.rejoins == 0


def test_a_commit_refused_by_a_rebalance_closes_it_without_a_stall_watch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    member = _Member()
    fence = member.fence(stalls=False)
    assert not fence.closed()
    with caplog.at_level(logging.WARNING, logger="stream_expiry.fence"):
        fence.close("an offset commit was refused: the group rebalanced")
        fence.close("an offset commit was refused: the group rebalanced")
    assert fence.closed()
    assert fence.why == "an offset commit was refused: the group rebalanced"
    assert len([r for r in caplog.records if r.name == "stream_expiry.fence"]) == 1
    assert member.rejoins == 1
    fence.open()
    assert not fence.closed()

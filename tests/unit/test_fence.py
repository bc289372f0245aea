"""The write fence of a member that may have lost its partitions (stream_expiry.fence):
closed by a stall as long as the group session or by a commit refused by a rebalance,
said once, a rejoin asked for; open again at the group's next assignment."""

from __future__ import annotations

import logging
import time
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

    def block(self, seconds: float) -> None:
        """The loop blocked by the process' own work for ``seconds``: all of it on the CPU."""
        self.wall += seconds
        self.mono += seconds
        self.cpu += seconds

    def fence(self, stalls: bool = True) -> WriteFence:
        def rejoin() -> None:
            self.rejoins += 1

        def fenced() -> None:
            self.fenced += 1

        self.fenced = 0
        owned: Callable[[], int] = lambda: self.owned  # noqa: E731
        return WriteFence(
            self.stalls if stalls else None,
            session_ms=6_000,
            heartbeat_ms=1_000,
            owned=owned,
            rejoin=rejoin,
            fenced=fenced,
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
    assert (member.rejoins, member.fenced) == (1, 1)
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
    assert (member.rejoins, member.fenced) == (1, 1)
    fence.open()
    assert not fence.closed()


def test_a_commit_refused_by_a_routine_rebalance_closes_it_said_at_info_and_uncounted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rebalance this member is in (an instance added): the partitions it is about to
    lose may move before the revocation is called back, so nothing is written meanwhile,
    but no zombie is said nor counted (it warned and counted each time)."""
    member = _Member()
    fence = member.fence(stalls=False)
    with caplog.at_level(logging.INFO, logger="stream_expiry.fence"):
        fence.close("an offset commit was refused: the group is rebalancing", routine=True)
    assert fence.closed()
    [said] = [r for r in caplog.records if r.name == "stream_expiry.fence"]
    assert said.levelno == logging.INFO
    assert said.getMessage().startswith(
        "an offset commit was refused: the group is rebalancing: the partitions of this "
        "member (3) wait for the group's new assignment"
    )
    assert (member.rejoins, member.fenced) == (1, 0)


def test_a_loop_blocked_by_the_process_own_work_as_long_as_the_session_closes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A long synchronous piece of work (a huge batch, a garbage collection, a container
    starved of CPU...) blocks the loop the Kafka client heartbeats from as surely as a
    SIGSTOP: the group drops the member all the same. The stall watch counts only time
    off the CPU, and the fence stayed open until the next refused commit."""
    member = _Member()
    fence = member.fence()
    member.block(0.25 + 5.0)
    with caplog.at_level(logging.WARNING, logger="stream_expiry.fence"):
        assert fence.closed()
    [said] = [r for r in caplog.records if r.name == "stream_expiry.fence"]
    assert "the event loop was blocked for 5.0 s" in said.getMessage()
    assert (member.rejoins, member.fenced) == (1, 1)
    assert member.stalls.count == 0  # the process ran: no stall said


def test_turns_late_under_load_close_nothing() -> None:
    """Turns 100-300 ms late under load, and one blocked just short of the session less
    a heartbeat, leave the fence open."""
    member = _Member()
    fence = member.fence()
    for late in (0.1, 0.3, 0.2) * 20:
        member.block(0.25 + late)
        assert not fence.closed()
    member.block(0.25 + 4.9)
    assert not fence.closed()
    assert (member.rejoins, member.fenced) == (0, 0)


def test_a_loop_blocked_for_real_past_a_short_session_closes_it() -> None:
    """The real clocks: the test's own thread keeps the loop (the only thread) busy on
    the CPU for 0.6 s, past a 0.3 s session less a 0.1 s heartbeat."""
    owned: Callable[[], int] = lambda: 1  # noqa: E731
    stalls = Stalls(tick_s=0.02, late_s=0.1)
    fence = WriteFence(stalls, session_ms=300, heartbeat_ms=100, owned=owned, rejoin=lambda: None)
    assert not fence.closed()
    started = time.process_time()
    while time.process_time() - started < 0.6:  # the synchronous block is the scenario
        pass
    assert fence.closed()


def test_a_late_turn_before_the_assignment_closes_nothing_after_it() -> None:
    """The group's assignment answers what happened before it: a block noticed before the
    fence opened (by another caller of the stall watch) does not close it again."""
    member = _Member()
    fence = member.fence()
    fence.close("an offset commit was refused: the group rebalanced meanwhile")
    member.block(0.25 + 5.0)
    member.stalls.check()  # the watch's turn notices it
    fence.open()
    assert not fence.closed()
    assert member.rejoins == 1

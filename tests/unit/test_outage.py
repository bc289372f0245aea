"""stream_expiry.outage: what a command says and does while the broker is away (the broker
itself is in tests/integration/test_archive_outage.py, test_service_outage.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import pytest

from stream_expiry.errors import BrokerError, BrokerUnavailableError
from stream_expiry.health import Health
from stream_expiry.outage import SessionOutage
from stream_expiry.stalls import Stalls

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.asyncio

REDONE = "what was not committed is done again"
LOST = BrokerUnavailableError("the connection was dropped")


@pytest.fixture
def said(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG, logger="stream_expiry.outage"):
        yield caplog


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


async def test_an_outage_is_one_warning_then_a_line_when_the_broker_answers(
    said: pytest.LogCaptureFixture,
) -> None:
    outage = SessionOutage(None, REDONE, retry_s=0)
    stop = anyio.Event()
    assert await outage.wait_out(LOST, stop)
    assert await outage.wait_out(LOST, stop)  # the next session failed too: not warned again
    assert (outage.outages, outage.tries) == (1, 2)
    outage.answered()
    outage.answered()  # said once
    assert _lines(said, logging.WARNING) == [
        "the broker failed (the connection was dropped); the session is closed and started "
        f"again every 0 s until it answers, {REDONE}"
    ]
    assert [m for m in _lines(said, logging.INFO) if "answers again" in m] == [
        "the broker answers again, after 0 s and 2 sessions"
    ]
    assert outage.since is None
    assert await outage.wait_out(LOST, stop)  # a new outage, said again
    assert outage.outages == 2


async def test_what_retrying_cannot_cure_is_no_outage(said: pytest.LogCaptureFixture) -> None:
    outage = SessionOutage(None, REDONE, retry_s=0)
    stop = anyio.Event()
    refused = BrokerError("the broker refused the SASL authentication")
    assert not await outage.wait_out(refused, stop)
    stop.set()
    assert not outage.stopped_in(refused, stop)
    assert outage.outages == 0
    assert not said.records


async def test_a_stop_in_an_outage_is_a_clean_one(said: pytest.LogCaptureFixture) -> None:
    outage = SessionOutage(None, REDONE, retry_s=60)
    stop = anyio.Event()
    assert not outage.stopped_in(LOST, stop)  # not stopped: the failure is to be met
    async with anyio.create_task_group() as tg:

        async def stop_when_waiting() -> None:  # during the wait between two sessions
            await anyio.wait_all_tasks_blocked()
            stop.set()

        tg.start_soon(stop_when_waiting)
        with anyio.fail_after(10):
            assert not await outage.wait_out(LOST, stop)
    assert outage.stopped_in(LOST, stop)
    assert _lines(said, logging.WARNING)[-1].startswith(
        "stopped while the broker fails (the connection was dropped): the last offsets not "
        f"committed; nothing is lost, {REDONE} at the next start"
    )


async def test_the_first_failure_after_a_stall_is_the_stall_s(
    said: pytest.LogCaptureFixture,
) -> None:
    clock = [1_000.0]
    stalls = Stalls(wall=lambda: clock[0], monotonic=lambda: clock[0], cpu=lambda: 0.0)
    outage = SessionOutage(stalls, REDONE, retry_s=0)
    stop = anyio.Event()
    clock[0] += 10.0  # the process did not run for 10 s
    assert await outage.wait_out(LOST, stop)
    assert (outage.outages, outage.since) == (0, None)
    assert "not a broker outage; the session is started again" in said.text
    assert await outage.wait_out(LOST, stop)  # a second failure is the broker's
    assert outage.outages == 1


async def test_a_waiter_learns_when_the_probe_finds_the_broker_gone() -> None:
    health = Health()
    found: list[str] = []
    async with anyio.create_task_group() as tg:

        async def wait() -> None:
            found.append(await health.broker_lost())

        tg.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert not found
        health.broker_unreachable("127.0.0.1:9092 (timed out)")
    assert found == ["127.0.0.1:9092 (timed out)"]
    assert await health.broker_lost() == "127.0.0.1:9092 (timed out)"  # at once while gone

"""What the archive makes of the broker probe's findings (no broker: a consumer that
fetches nothing, and the probe's verdicts given to :class:`Health` as the probe gives them)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from stream_expiry import archive
from stream_expiry.archive import ArchiveWriter, _Session
from stream_expiry.errors import BrokerUnavailableError
from stream_expiry.health import Health
from stream_expiry.outage import SessionOutage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path


class _IdleConsumer:
    """A consumer with nothing to read; each fetch is one step of the probe's ``verdicts``
    (then ``stop``), with a few turns of the loop after it for the archive's watch."""

    def __init__(self, verdicts: list[Callable[[], None]], stop: anyio.Event) -> None:
        self.verdicts, self.stop = verdicts, stop

    async def getmany(self, **_: Any) -> dict[Any, Any]:
        if self.verdicts:
            self.verdicts.pop(0)()
        else:
            self.stop.set()
        for _turn in range(5):
            await anyio.lowlevel.checkpoint()
        return {}


def _session(
    monkeypatch: pytest.MonkeyPatch, health: Health, verdicts: list[Callable[[], None]]
) -> tuple[_Session, anyio.Event]:
    stop = anyio.Event()

    @contextlib.asynccontextmanager
    async def consumer(*_: Any, **__: Any) -> AsyncIterator[_IdleConsumer]:
        yield _IdleConsumer(verdicts, stop)

    monkeypatch.setattr(archive, "consumer", consumer)
    outage = SessionOutage(None, "again")
    return _Session("k:1", ("stamped", "tombstones"), "g", {}, outage, health), stop


@pytest.mark.asyncio
async def test_one_probe_that_fails_with_the_broker_fine_keeps_the_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One probe's answer came late (past its 3 s: a busy broker, a busy machine), the
    next one's in time: the broker is fine. The archive took the one failure for an
    outage: it closed its session (its group rebalanced without it) and archived its
    uncommitted batch again, saying "the broker failed"."""
    health = Health()
    verdicts = [
        lambda: health.broker_unreachable("k:1 (timed out)"),
        health.broker_reachable,
        lambda: health.broker_unreachable("k:1 (connection dropped without an answer)"),
        health.broker_reachable,
    ]
    session, stop = _session(monkeypatch, health, verdicts)
    await session.run(ArchiveWriter(str(tmp_path)), stop, 10, None)
    assert stop.is_set()  # it read on to its stop


@pytest.mark.asyncio
async def test_probes_that_fail_in_a_row_end_the_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A broker the probe keeps finding unreachable is an outage, waited out by a new
    session (the archive's client would wait on it without a word)."""
    health = Health()
    verdicts = [
        lambda: health.broker_unreachable("k:1 (timed out)"),
        lambda: health.broker_unreachable("k:1 (Connection refused)"),
    ]
    session, stop = _session(monkeypatch, health, verdicts)
    with pytest.raises(BrokerUnavailableError, match=r"Kafka unreachable: k:1 \(Connection"):
        await session.run(ArchiveWriter(str(tmp_path)), stop, 10, None)
    assert not stop.is_set()

"""A session touched before its expiry is not deleted at that expiry, however late the
service reads the touch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest

from stream_expiry.errors import BrokerError
from stream_expiry.service import wall_clock_ms
from stream_expiry.timeutil import parse_ts
from tests.conftest import read_topic, wait_for
from tests.integration.service_helpers import config_for, event, produce, running_service
from tests.log_capture import captured_logs

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

TTL_MS = 3_000


@pytest.mark.timeout(90)
async def test_a_touch_on_the_broker_before_the_expiry_slides_the_session_however_late_read(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timer task judged what a partition had not read by what the loop had noted
    from the consumer's last fetch: when the timer task got its turn before the loop (a
    process paused by a GC, CPU throttling or a VM's stolen time, then woken), a touch
    acknowledged seconds before its session's expiry let the session go at its old
    expiry (a trial: 300 of 300 after a 4 s pause; 24 of 45 touched 30 ms ahead). Here
    the loop gets no turn: its consumer is paused and it notes nothing; the timer task
    asks the broker for the partitions' ends itself."""
    retention = f'[retention.defaults]\nsession = "{TTL_MS // 1000}s"\n'
    config = config_for(topics, str(tmp_path / "state"), retention)
    # The service's clock runs a minute behind until the touch is on the broker, so the
    # touch comes before the session's expiry by construction. It asserted the wall clock
    # had not reached the expiry yet: the create's stamp read back, the consumer paused and
    # the touch acknowledged within the 3 s ttl (0.1-0.3 s here, but a busy machine's
    # pause of a few seconds failed the test, not the service).
    behind = [60_000]
    async with running_service(config, broker, clock=lambda: wall_clock_ms() - behind[0]) as svc:
        t0 = wall_clock_ms()
        await produce(broker, [(topics.sessions, *event("session", "s1", ts=t0))])
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 1)
        cons = svc._consumer
        assert cons is not None
        reading = svc._reading
        noting = reading.track_unread

        async def no_turn(*args: Any) -> None:
            pass

        monkeypatch.setattr(reading, "track_unread", no_turn)
        cons.pause(*cons.assignment())
        touched = t0 + TTL_MS // 2
        await produce(broker, [(topics.sessions, *event("session", "s1", op="touch", ts=touched))])
        assert svc.clock() < t0 + TTL_MS, "the touch must be on the broker before the expiry"
        behind[0] = 0  # the clock catches up: the expiry passes at once, or in < 3 s

        def old_expiry_handled() -> bool:
            """The expiry passed, and the timer task took its timer (fired or set aside)."""
            dues = [p.next_due_ms() for p in svc.processors.values()]
            return svc.clock() > t0 + TTL_MS and all(d is None or d > t0 + TTL_MS for d in dues)

        await wait_for(old_expiry_handled, timeout_s=30)
        monkeypatch.setattr(reading, "track_unread", noting)
        cons.resume(*cons.assignment())
        (tombstone,) = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 1)
    body = orjson.loads(tombstone.value)
    assert (body["reason"], parse_ts(body["expires_at"])) == ("ttl", touched + TTL_MS)


@pytest.mark.timeout(90)
async def test_the_firing_goes_on_when_the_broker_gives_no_ends(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Late in a 5-minute soak the test broker left the ask for the ends unanswered, and
    the BrokerError raised in the timer task ended the service. Without an answer the
    firing goes on with what the loop noted, as before it asked, and says so."""
    retention = f'[retention.defaults]\nsession = "{TTL_MS // 1000}s"\n'
    config = config_for(topics, str(tmp_path / "state"), retention)
    async with running_service(config, broker) as svc:

        async def unanswered(*args: Any) -> None:
            raise BrokerError("the broker gave no end for [...]")

        monkeypatch.setattr(svc._reading, "learn_ends", unanswered)
        with captured_logs() as logs:
            t0 = wall_clock_ms()
            await produce(broker, [(topics.sessions, *event("session", "s1", ts=t0))])
            (tombstone,) = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 1)
        assert svc.health.live
    body = orjson.loads(tombstone.value)
    assert (body["reason"], parse_ts(body["expires_at"])) == ("ttl", t0 + TTL_MS)
    assert "ends went unanswered" in logs.text.getvalue()

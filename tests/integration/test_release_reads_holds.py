"""A release lets go only what no hold acknowledged before it keeps.

After a hold's release the service tombstones what it kept, a slice per loop turn, with
the holds the loop's consumer had fetched. The holds topic has several partitions (a
hold's id picks one), and a consumer gets each partition's records in its own fetches
(from each partition's leader): a hold placed on one partition before a release on
another may reach the service after the release. The firing reads the holds to their
end before it fires (a hold acknowledged a tick before a record's expiry keeps it); the
release slices did not, and tombstoned records an active hold matched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import TopicPartition

from stream_expiry import service as service_module
from stream_expiry.control import ControlTopics
from stream_expiry.holds import Hold, encode_hold
from stream_expiry.kafka import producer
from stream_expiry.service import wall_clock_ms
from tests.conftest import wait_for
from tests.integration.service_helpers import config_for, event, produce, running_service

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


@pytest.mark.timeout(90)
async def test_a_hold_placed_before_another_holds_release_keeps_its_records(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hold ``old`` keeps a due record; hold ``new`` is placed on it (on the holds topic's
    other partition), then ``old`` is released. The service's consumer has not fetched
    ``new``'s partition when it reads the release (paused here: as when the two
    partitions' leaders answer apart). The record stays held: ``new`` was active before
    the release was even sent."""
    made: list[ControlTopics] = []

    class Kept(ControlTopics):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(service_module, "ControlTopics", Kept)
    config = config_for(
        topics, str(tmp_path / "state"), '[retention.defaults]\nconversation = "1s"\n'
    )
    t0 = wall_clock_ms()
    old = Hold("old", "acme", None, None, None, "r1", "case 1", t0)
    new = Hold("new", "acme", None, None, None, "r1", "case 2", t0)
    async with producer(broker) as prod:
        await prod.send_and_wait(topics.holds, encode_hold(old), key=b"old", partition=0)
    async with running_service(config, broker) as svc:
        await wait_for(lambda: len(svc.holds) == 1)
        await produce(broker, [(topics.conversations, *event("conversation", "r1", ts=t0))])

        def held() -> int:
            return sum(p.store.counts.held for p in svc.processors.values())

        await wait_for(lambda: held() == 1)  # due after a second, and kept by ``old``
        (control,) = made
        control._holds_reader.pause(TopicPartition(topics.holds, 1))
        async with producer(broker) as prod:
            await prod.send_and_wait(topics.holds, encode_hold(new), key=b"new", partition=1)
            await prod.send_and_wait(topics.holds, None, key=b"old", partition=0)

        def released() -> bool:
            """``old``'s release is read and its slices decided."""
            return svc.holds.get("old") is None and not any(
                p.releasing for p in svc.processors.values()
            )

        await wait_for(released)
        assert svc.stats.tombstones == 0
        assert held() == 1
        assert svc.holds.get("new") is not None

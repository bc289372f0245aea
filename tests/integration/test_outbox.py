"""The outbox against the real broker: what one batch of effects puts on the changelog, in
which order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry import codec
from stream_expiry.config import parse_config
from stream_expiry.kafka import producer
from stream_expiry.outbox import Outbox, all_acked
from stream_expiry.policy import PolicyBook
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore
from tests.conftest import read_all
from tests.integration.service_helpers import config_text

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

T0 = 1_800_000_000_000


class _Rec:
    def __init__(self, offset: int, value: bytes) -> None:
        self.offset, self.key, self.value = offset, None, value


def _error(offset: int, ts: int) -> _Rec:
    body = {"category": "error", "org": "acme", "record_id": "e1", "ts": ts}
    return _Rec(offset, orjson.dumps(body))


async def test_a_life_an_event_ended_goes_out_before_the_life_it_started(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An event at a record's expiry, before its timer fired, ends that life and starts the
    next in one batch. On ``expiry.stamped`` the null must come first: compaction keeps a
    key's last message, and a restore takes it as the record's state."""
    config = parse_config(
        config_text(topics, str(tmp_path), '[retention.defaults]\nerror = "1m"\n')
    )
    proc = PartitionProcessor.from_config(
        topics.errors, 0, PartitionStore(MemoryKV()), config, PolicyBook(config, {}), now_ms=T0
    )
    first = proc.process([_error(0, T0)], T0)
    at_expiry = T0 + 60_000
    second = proc.process([_error(1, at_expiry)], at_expiry)  # the timer has not fired
    assert [f.reason for f in second.tombstones] == ["ttl"]
    assert len(second.stamps) == 1
    async with producer(broker) as prod:
        outbox = Outbox(prod, config.topics, dict.fromkeys(topics.all, 2))
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            await all_acked(await outbox.send([(proc, first)], T0))
            await all_acked(await outbox.send([(proc, second)], at_expiry))
            await outbox.drain()
            outbox.close()
    stamped = [r for r in await read_all(broker, topics.stamped) if r.key is not None]
    assert [
        (r.value is None, codec.deleted_at_of(r.headers), codec.reason_of(r.headers))
        for r in stamped
    ] == [(False, None, None), (True, at_expiry - 1, "ttl"), (False, None, None)]
    (event,) = await read_all(broker, topics.tombstones)  # its deletion time, as the null's
    assert codec.deleted_at_of(event.headers) == at_expiry - 1
    latest = orjson.loads(stamped[-1].value)
    assert (latest["created_at"], latest["previous_deleted_at"]) == (
        "2027-01-15T08:01:00.000Z",
        "2027-01-15T08:00:59.999Z",
    )

"""The write-behind keeps the order of writes: in submission order, each after its acks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stream_expiry.model import Identity, Stamp
from stream_expiry.writer import OrderedWriter

SLOT = ("in", 0)


class RecordingIndex:
    """Stands in for the SQLite index: records what was written, in order."""

    def __init__(self) -> None:
        self.writes: list[tuple[list[str], dict[Any, int]]] = []
        self.rows: dict[str, Stamp] = {}

    async def write(
        self, states: list[tuple[Stamp, Any]], offsets: dict[Any, int] | None = None
    ) -> None:
        await asyncio.sleep(0)
        self.writes.append(([s.identity.record_id for s, _ in states], dict(offsets or {})))
        self.rows.update({s.identity.key: s for s, _ in states})

    async def get_many(self, keys: list[str]) -> dict[str, Stamp]:
        return {k: self.rows[k] for k in keys if k in self.rows}


def stamp(rid: str, expires: int) -> Stamp:
    return Stamp(Identity("o", "_", "live", "error", rid), 0, expires, expires, "default")


@pytest.mark.asyncio
async def test_writes_follow_submission_order_and_wait_for_their_acks() -> None:
    index = RecordingIndex()
    writer = OrderedWriter(index)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    first_ack, second_ack = loop.create_future(), loop.create_future()
    await writer.submit([(stamp("a", 1), SLOT)], [first_ack], {SLOT: 1})
    await writer.submit([(stamp("a", 2), SLOT), (stamp("b", 2), SLOT)], [second_ack], {SLOT: 2})
    # Lookups see the latest submitted state before anything is written.
    got = await writer.lookup([stamp("a", 0).identity.key, stamp("b", 0).identity.key])
    assert {k: s.expires_at for k, s in got.items()} == {
        "o/_/live/error/a": 2,
        "o/_/live/error/b": 2,
    }
    second_ack.set_result(None)  # the later batch is acked first ...
    await asyncio.sleep(0.01)
    assert index.writes == []  # ... but nothing is written before the earlier batch
    assert writer.committable == {}
    first_ack.set_result(None)
    await writer.settle()
    assert index.writes == [(["a"], {SLOT: 1}), (["a", "b"], {SLOT: 2})]
    assert writer.committable == {SLOT: 2}
    assert writer.get(stamp("a", 0).identity.key) is None  # written: the shadow is gone


@pytest.mark.asyncio
async def test_a_refused_ack_fails_the_write_and_everything_after_it() -> None:
    from aiokafka.errors import KafkaTimeoutError

    from stream_expiry.errors import BrokerError

    index = RecordingIndex()
    writer = OrderedWriter(index)  # type: ignore[arg-type]
    refused = asyncio.get_running_loop().create_future()
    refused.set_exception(KafkaTimeoutError())
    await writer.submit([(stamp("a", 1), SLOT)], [refused], {SLOT: 1})
    await writer.submit([(stamp("b", 1), SLOT)], [], {SLOT: 2})
    with pytest.raises(BrokerError):
        await writer.settle()
    assert index.writes == []  # the index never gets ahead of the broker
    assert writer.committable == {}

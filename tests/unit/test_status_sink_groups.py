"""``status``'s downstream stores: every sink group is measured against the same ends of
the service's outputs, read once: each group's consumer read them again, one fetch a group
for the same topics. No broker: a fake consumer that counts the fetches the ends are
learnt from."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import TopicPartition

from stream_expiry import status
from stream_expiry.config import Config
from stream_expiry.instances import Group

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

STAMPED, TOMBSTONES = Config().topics.stamped, Config().topics.tombstones
ENDS = {
    TopicPartition(STAMPED, 0): 7,
    TopicPartition(STAMPED, 1): 5,
    TopicPartition(TOMBSTONES, 0): 3,
    TopicPartition(TOMBSTONES, 1): 0,
}
# What each group committed: "behind" 2 stamps, no tombstone (none to look up the time of).
COMMITTED = {
    "behind": {
        TopicPartition(STAMPED, 0): 6,
        TopicPartition(STAMPED, 1): 4,
        TopicPartition(TOMBSTONES, 0): 3,
    },
    "never": {},
    # A consumer of the tombstones alone (examples/tombstone_consumer.py): no changelog.
    "tombstones_only": {TopicPartition(TOMBSTONES, 0): 3},
    # A sink that has committed on one changelog partition, not yet on the other.
    "one_stamped": {TopicPartition(STAMPED, 0): 6, TopicPartition(TOMBSTONES, 0): 3},
}


class _Broker:
    def __init__(self) -> None:
        self.fetches = 0  # the fetches that answered with the partitions' ends


class _Consumer:
    """What status asks of an aiokafka consumer, answered from ``ENDS`` and ``COMMITTED``;
    the ends known only after a fetch, as on a broker (:func:`~stream_expiry.kafka.stable_ends`)."""

    def __init__(self, broker: _Broker, group_id: str | None) -> None:
        self._broker, self._group_id, self._fetched = broker, group_id, False

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in ENDS if tp.topic == topic}

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        del tps

    async def position(self, tp: TopicPartition) -> int:
        del tp
        return 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        del tp, offset

    async def getmany(self, *tps: TopicPartition, **_: Any) -> dict[TopicPartition, list[Any]]:
        self._broker.fetches += 1
        self._fetched = True
        return {}

    def highwater(self, tp: TopicPartition) -> int | None:
        return ENDS[tp] if self._fetched else None

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        del tp
        return None

    async def committed(self, tp: TopicPartition) -> int | None:
        assert self._group_id is not None, "aiokafka: committed() requires a group_id"
        return COMMITTED[self._group_id].get(tp)


def _on_fake_broker(monkeypatch: pytest.MonkeyPatch) -> _Broker:
    """``status`` reading ``ENDS`` and ``COMMITTED`` through :class:`_Consumer`; every
    group stable with no member."""
    broker = _Broker()

    @contextlib.asynccontextmanager
    async def consumer(_: Any, *__: str, group_id: str | None = None) -> AsyncIterator[_Consumer]:
        yield _Consumer(broker, group_id)

    async def describe_group(_: Any, group_id: str) -> Group:
        return Group(group_id, "Stable", ())

    monkeypatch.setattr(status, "consumer", consumer)
    monkeypatch.setattr(status, "describe_group", describe_group)
    return broker


@pytest.mark.asyncio
async def test_two_sink_groups_are_measured_against_ends_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = _on_fake_broker(monkeypatch)
    stores = await status._stores(Config(), "k:1", ["behind", "never"], named=True)

    assert broker.fetches == 1
    behind, never = stores["behind"], stores["never"]
    assert (behind.stamps_behind, behind.tombstones_behind, behind.running) == (2, 0, 0)
    assert behind.partitions[f"{STAMPED}[0]"] == {"end": 7, "committed": 6, "lag": 1}
    assert never.partitions[f"{TOMBSTONES}[0]"] == {"end": 3, "committed": None, "lag": 3}
    assert not never.committed


@pytest.mark.asyncio
async def test_a_group_with_no_offset_on_the_changelog_is_said_not_to_read_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its "changelog messages not applied" were every message of expiry.stamped, a count
    that never went down (a user trial, the example consumer's group my-store)."""
    _on_fake_broker(monkeypatch)
    stores = await status._stores(
        Config(), "k:1", ["behind", "tombstones_only", "one_stamped"], named=True
    )

    only = stores["tombstones_only"].as_dict(0)
    assert (only["reads_changelog"], only["stamps_behind"], only["tombstones_behind"]) == (
        False,
        None,
        0,
    )
    behind = stores["behind"].as_dict(0)
    assert (behind["reads_changelog"], behind["stamps_behind"]) == (True, 2)
    # One changelog offset is enough: it reads the changelog, the other partition's
    # messages all behind (a group taken for a tombstones-only one hid a sink's backlog).
    one = stores["one_stamped"].as_dict(0)
    assert (one["reads_changelog"], one["stamps_behind"]) == (True, 1 + 5)

"""``status`` says how far each downstream store is behind: a tombstone on time on Kafka is
still a row in a store that has not applied it, and nothing said so (a left item of the
compliance trial: "status says nothing of sinks")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from aiokafka import TopicPartition

from stream_expiry.config import Config, Topics
from stream_expiry.kafka import committed_offsets, consumer, partitions_of, producer, stable_ends
from stream_expiry.status import status, text_lines
from stream_expiry.timeutil import format_ts, wall_clock_ms
from tests.integration.sink_helpers import (
    MINUTE,
    ident,
    open_store,
    produce,
    running_sink,
    sink_config,
    stamp,
    stamped_msg,
    tombstone_msg,
    wait_until,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import TopicSet

pytestmark = pytest.mark.integration


def _config(topics: TopicSet) -> Config:
    return Config(
        group_id=f"{topics.prefix}-group",
        topics=Topics(
            inputs=topics.inputs,
            policies=topics.policies,
            stamped=topics.stamped,
            tombstones=topics.tombstones,
            dlq=topics.dlq,
            receipts=topics.receipts,
            holds=topics.holds,
            audit=topics.audit,
        ),
    )


async def _all_committed(broker: str, group: str, topics: list[str]) -> bool:
    """Whether ``group`` committed every partition of ``topics`` up to its end."""
    async with consumer(broker, group_id=group) as cons:
        tps = [TopicPartition(t, p) for t in topics for p in await partitions_of(cons, t)]
        cons.assign(tps)
        ends = await stable_ends(cons, tps)
        done = await committed_offsets(cons, tps)
    return all((done[tp] or 0) == ends[tp] for tp in tps)  # None: an empty partition


@pytest.mark.asyncio
async def test_status_says_what_each_store_has_not_applied_and_since_when(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    config = _config(topics)
    now = wall_clock_ms()
    first = [stamp(ident(f"r{i}"), created_at=now - 2 * MINUTE, ttl_ms=MINUTE) for i in range(2)]
    later = [stamp(ident(f"s{i}"), created_at=now - 2 * MINUTE, ttl_ms=MINUTE) for i in range(3)]
    sink = sink_config(broker, topics)
    async with open_store("sqlite", tmp_path) as store:
        async with running_sink(store, sink):
            await produce(broker, topics.stamped, [stamped_msg(s) for s in first + later])
            await produce(broker, topics.tombstones, [tombstone_msg(s) for s in first])
            await wait_until(
                lambda: _all_committed(broker, sink.group_id, [topics.stamped, topics.tombstones]),
                what="the sink to commit what it applied",
            )
        # The sink stopped: three more tombstones, and one stamp, wait for it.
        waiting_since = now - 30_000
        # One partition each: the oldest is the older of the two partitions' first.
        async with producer(broker) as prod:
            sends = [(later[0], 1, waiting_since), *((s, 0, now - 9_000) for s in later[1:])]
            for s, partition, at in sends:
                key, value = tombstone_msg(s)
                sent = await prod.send(
                    topics.tombstones, value, key=key, partition=partition, timestamp_ms=at
                )
                await sent
        await produce(broker, topics.stamped, [stamped_msg(stamp(ident("t0")))])
        assert await store.get(later[0].identity) is not None  # still there: not applied

    never = f"{topics.prefix}.no-such-sink"
    typo = sink.group_id[:-1]  # a letter left out: the group meant is named
    said = await status(
        config, broker, now_ms=now, clock=wall_clock_ms, sink_groups=[sink.group_id, never, typo]
    )
    d = said.as_dict()
    mine = d["stores"][sink.group_id]
    assert (mine["tombstones_behind"], mine["stamps_behind"], mine["committed"]) == (3, 1, True)
    assert mine["oldest_tombstone_waiting"] == format_ts(waiting_since)
    assert mine["tombstones_waiting_s"] == 30.0
    tombstones = [p for name, p in mine["partitions"].items() if name.startswith(topics.tombstones)]
    assert (sum(p["end"] for p in tombstones), sum(p["lag"] for p in tombstones)) == (5, 3)
    assert d["stores"][never]["committed"] is False
    lines = "\n".join(text_lines(d))
    assert (
        f"    {sink.group_id}: 3 tombstones not applied, the oldest from "
        f"{format_ts(waiting_since)} (30.0 s: deletions due that long are not made in it yet); "
        "1 changelog message not applied"
    ) in lines
    assert f"    {never}: has committed no offset" in lines
    assert d["stores"][typo]["did_you_mean"] == sink.group_id
    assert f"never ran; did you mean --sink-group {sink.group_id}?" in lines

    # Named no group, status looks for the sinks' default groups: none ran on these topics.
    default = (await status(config, broker, now_ms=now, clock=wall_clock_ms)).as_dict()
    assert default["stores"] == {}
    assert default["sink_groups"][:2] == [
        "stream-expiry-sink-sqlite",
        "stream-expiry-sink-postgres",
    ]
    assert "no sink group with committed offsets under the sinks' default names" in "\n".join(
        text_lines(default)
    )


@pytest.mark.asyncio
async def test_status_finds_the_group_of_a_store_given_a_name(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A sink given ``--name eu`` joins ``stream-expiry-sink-eu`` and its receipts say
    ``store eu`` (``deletions`` counts them so), but ``status`` looked only for the groups
    of the two store types: the store fell behind with no line about it. Named no group,
    status takes every ``stream-expiry-sink-*`` group that committed on its topics."""
    config = _config(topics)
    now = wall_clock_ms()
    stamps = [stamp(ident(f"r{i}"), created_at=now - 2 * MINUTE, ttl_ms=MINUTE) for i in range(2)]
    group = f"stream-expiry-sink-{topics.prefix}-eu"
    sink = sink_config(broker, topics, group_id=group)
    async with open_store("sqlite", tmp_path) as store, running_sink(store, sink):
        await produce(broker, topics.stamped, [stamped_msg(s) for s in stamps])
        await produce(broker, topics.tombstones, [tombstone_msg(stamps[0])])
        await wait_until(
            lambda: _all_committed(broker, group, [topics.stamped, topics.tombstones]),
            what="the sink to commit what it applied",
        )
        # While it runs, its group has it as a member: what a stopped sink lacks.
        running = (await status(config, broker, clock=wall_clock_ms)).as_dict()["stores"]
        assert running[group]["running"] == 1
    await produce(broker, topics.tombstones, [tombstone_msg(stamps[1])])

    d = (await status(config, broker, now_ms=now, clock=wall_clock_ms)).as_dict()
    assert group in d["sink_groups"]
    assert list(d["stores"]) == [group]  # the others committed nothing on these topics
    assert (d["stores"][group]["tombstones_behind"], d["stores"][group]["stamps_behind"]) == (1, 0)
    assert f"    {group}: 1 tombstone not applied" in "\n".join(text_lines(d))

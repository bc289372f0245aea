"""A member paused past its group session (SIGSTOP, a frozen VM, a starved container) has
lost its partitions to another member when it runs again; until the group tells it so, it
must not fire or write for them (a zombie, as Kafka Streams calls it).

Tansu, like a cluster without transactions, fences no producer: what the paused member
sends on resume lands beside the new owner's messages. Its wheel still holds the timers
of the partitions it had, and they are due; the new owner has meanwhile read an erasure
and a create of each of those records (a new life, created before the first life's
expiry). A ``ttl`` tombstone of the first life, sent after the new owner stamped the
second, ends every life created before that expiry (the sinks' bound): the second life's
data, live, is deleted early, and the first life's null follows the second life's stamp
on ``expiry.stamped``, where a sink reading it deletes the second life's row at once too.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

from stream_expiry.kafka import ensure_topics
from stream_expiry.model import Identity
from stream_expiry.service import wall_clock_ms
from stream_expiry.testing.processes import ArrivalLog
from stream_expiry.testing.proxy import proxied_broker
from stream_expiry.timeutil import parse_ts
from tests.conftest import make_topic_set, read_all, read_topic, wait_for
from tests.integration.service_helpers import (
    config_text,
    event,
    no_orphans,
    produce,
    spawn_service,
)

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process

    from stream_expiry.testing.processes import ServiceProcess
    from stream_expiry.testing.proxy import Proxy

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

TTL_S = 20  # long enough for the takeover, the erasures and the creates before it ends
RECORDS = 12  # over both partitions of the conversations: some are the paused member's
STARTED: list[Process] = []
# A member's line once an assignment's partitions are restored and positioned
ASSIGNED = ("assigned ", "timers within the horizon")
FENCED = "no timer fires and nothing is written for them until the group confirms"
# The group coordinator's: OffsetCommit, JoinGroup, Heartbeat, SyncGroup
_GROUP_REQUESTS = (8, 11, 12, 14)

_no_orphans = no_orphans(STARTED)


def _config(topics: Any, state_dir: Path) -> str:
    """Both members' config: a 4 s session (a heartbeat a second), the shortest that keeps
    two members on the test broker out of rebalance storms (service_helpers.GROUP_MEMBER)."""
    retention = f'[retention.defaults]\nconversation = "{TTL_S}s"\n'
    text = config_text(topics, str(state_dir), retention)
    return text.replace("tick_ms = 5", 'tick_ms = 5\nsession_timeout = "4s"')


def _said(svc: ServiceProcess, *texts: str) -> int:
    """The lines of ``svc``'s log holding each of ``texts``."""
    return sum(all(text in line for text in texts) for line in svc.lines)


async def _lines(svc: ServiceProcess, *texts: str, count: int, timeout_s: float = 60) -> None:
    """Until ``svc`` has logged ``count`` lines holding each of ``texts``."""
    with anyio.move_on_after(timeout_s):
        while _said(svc, *texts) < count:
            assert svc.process.returncode is None, svc.tail()
            await anyio.sleep(0.05)  # a poll interval: the log decides
    assert _said(svc, *texts) >= count, (texts, count, svc.tail(60))


def _key(record_id: str) -> bytes:
    return Identity("acme", "_", "live", "conversation", record_id).key.encode()


def _life(rec: Any) -> tuple[str, int | None]:
    """A tombstone's reason and the creation of the life it ends (None: it names none)."""
    body = orjson.loads(rec.value)
    created = body["created_at"]
    return body["reason"], None if created is None else parse_ts(created)


@pytest.mark.timeout(240)
async def test_a_member_paused_past_its_session_writes_nothing_for_partitions_it_lost(
    tmp_path: Path,
) -> None:
    """The group coordinator's answers to the paused member are held on resume (a proxy),
    so its timer task has its turn before it can learn of the rebalance, every time: on
    the test broker the revocation came a few milliseconds after the resume, and the
    tombstones went out before it in 2 runs of 4."""
    async with proxied_broker() as proxy:
        await _paused_past_its_session(proxy, tmp_path)


async def _paused_past_its_session(proxy: Proxy, tmp_path: Path) -> None:
    broker = proxy.address
    topics = make_topic_set()
    await ensure_topics(broker, topics.all, partitions=2)
    svcs = []
    tombstones_seen = ArrivalLog(broker, topics.tombstones)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tombstones_seen.follow)
        for name in ("b", "a"):  # b first, then a takes its share from b
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(_config(topics, tmp_path / name))
            svc = await spawn_service(broker, cfg, STARTED)
            svcs.append(svc)
            tg.start_soon(svc.follow_log)
            await _lines(svc, *ASSIGNED, count=1)
        b, a = svcs
        await _lines(b, *ASSIGNED, count=2)  # b's share after a joined

        t0 = wall_clock_ms()
        ids = [f"c{i}" for i in range(RECORDS)]
        await produce(
            broker,
            [(topics.conversations, *event("conversation", r, ts=t0)) for r in [*ids, "kept"]],
        )
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= RECORDS + 1)
        os.kill(a.process.pid, signal.SIGSTOP)
        try:
            # b takes a's partitions over once a's session runs out, restored from the
            # changelog (its third "assigned ... timers" line)
            await _lines(b, *ASSIGNED, count=3)
            erased = wall_clock_ms()
            await produce(
                broker,
                [
                    (topics.conversations, *event("conversation", r, op="delete", ts=erased))
                    for r in ids
                ],
            )
            again = wall_clock_ms()
            await produce(
                broker, [(topics.conversations, *event("conversation", r, ts=again)) for r in ids]
            )
            assert again < t0 + TTL_S * 1000, "the next lives must start before the expiry"
            # The first lives' expiry has passed once b fired the record left alone.
            await read_topic(
                broker,
                topics.tombstones,
                until=lambda r: any(t.key == _key("kept") for t in r),
                timeout_s=TTL_S + 30,
            )
            # a's group requests wait (b's, a moment): a has its turn before the group's answer
            proxy.hold_requests(*_GROUP_REQUESTS)
        finally:
            os.kill(a.process.pid, signal.SIGCONT)
        erased_keys = {_key(r) for r in ids}

        def had_its_turn() -> bool:
            """a said it fenced its writes, or sent a first life's ttl tombstone."""
            zombie = any(
                r.key in erased_keys and _life(r)[0] == "ttl" for _, r in tombstones_seen.arrivals
            )
            return zombie or a.log_has(FENCED)

        try:
            await wait_for(had_its_turn, timeout_s=30)
        finally:
            proxy.release_requests()
        # a learns it lost its partitions, and takes its share again from b.
        await _lines(a, "revoked ", count=1)
        await _lines(a, *ASSIGNED, count=2)
        await _lines(b, *ASSIGNED, count=4)
        tombstones = await read_all(broker, topics.tombstones)
        stamped = await read_all(broker, topics.stamped)
        for svc in svcs:
            os.kill(svc.process.pid, signal.SIGINT)
        with anyio.fail_after(30):
            for svc in svcs:
                await svc.process.wait()
        tg.cancel_scope.cancel()

    keys = {_key(r) for r in ids}
    lives = [_life(t) for t in tombstones if t.key in keys]
    # Each record: its first life erased (explicit, at the erasure's time); none ended by a
    # ttl tombstone of its first life, which would delete the second life's data.
    assert sorted(lives, key=str) == [("explicit", t0)] * RECORDS, (lives, a.tail(40))
    # The changelog ends, for each record, with its second life's stamp.
    last = {r.key: r for r in stamped if r.key in keys}
    assert all(r.value is not None for r in last.values()), a.tail(60)
    assert {parse_ts(orjson.loads(r.value)["created_at"]) for r in last.values()} == {again}
    for svc in svcs:
        assert svc.process.returncode == 0, svc.tail()

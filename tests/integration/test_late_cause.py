"""Why a deletion was late survives a crash: a record already due at ingest (a late event),
its stamp written and the service killed before its tombstone, is tombstoned by the next
instance with ``expiry-late-cause: late_event``, whether it restarts on the same state
directory or restores the partition from the changelog (a lost disk, a takeover). Both
said ``catch_up``: the cause was in the killed process's memory only. The same after an
applied ``replay`` that published the stamp again (a ``[redact]`` rule added since), its
expiry unchanged: replay's stamp dropped the header, and the restore said ``catch_up``.

The crash is real (SIGKILL of a service process) and lands in the window on purpose: the
late event is the first of a partition's backlog, and a partition reading the backlog
found at its assignment fires nothing until it has read it (``Firing._firable``), so the
record is stamped, and its state settled, seconds before its tombstone may go.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry import codec
from stream_expiry.cli import main
from stream_expiry.kafka import producer
from stream_expiry.replay import H_REPLAY
from stream_expiry.service import wall_clock_ms
from stream_expiry.timeutil import parse_ts
from tests.conftest import read_all, read_topic, wait_for
from tests.integration.service_helpers import (
    ArrivalLog,
    config_for,
    config_text,
    event,
    no_orphans,
    produce,
    running_service,
    spawn_service,
)
from tests.integration.sink_helpers import open_store, running_sink, sink_config

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from anyio.abc import Process

    from stream_expiry.config import Config
    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

STARTED: list[Process] = []
_no_orphans = no_orphans(STARTED)

RETENTION = '[retention.defaults]\nconversation = "1h"\n'
# Events behind the late one that change nothing (touches of records of a category that
# does not slide, never created: no stamp, no dead letter): seconds of reading for the
# service, during which the partition fires nothing.
BACKLOG = 150_000


async def _late_event_then_backlog(broker: str, topic: str, **extra: Any) -> bytes:
    """A create dated two hours ago (due an hour ago, produced now: late; ``extra``: more
    fields of it), then :data:`BACKLOG` events that change nothing, all on partition 0;
    the record's key."""
    key, late = event("conversation", "late", ts=wall_clock_ms() - 2 * 3_600_000, **extra)
    async with producer(broker, max_batch_size=1 << 20) as prod:
        await prod.send_and_wait(topic, late, key=key, partition=0)
        batch, acks = prod.create_batch(), []
        for i in range(BACKLOG):
            k, v = event("conversation", f"never-{i}", op="touch")
            if batch.append(key=k, value=v, timestamp=None) is None:
                acks.append(await prod.send_batch(batch, topic, partition=0))
                batch = prod.create_batch()
                batch.append(key=k, value=v, timestamp=None)
        acks.append(await prod.send_batch(batch, topic, partition=0))
        for ack in acks:
            await ack
    return key


async def _stamped_then_killed(
    broker: str, topics: TopicSet, tmp_path: Path, key: bytes
) -> list[tuple[int, Any]]:
    """A service (state directory ``a``) reads the late event first, stamps it, and is
    killed (SIGKILL) before its tombstone; what it wrote on ``expiry.stamped``."""
    text = config_text(topics, str(tmp_path / "a"), RETENTION)
    path = tmp_path / "a.toml"
    path.write_text(text.replace("tick_ms = 5", 'tick_ms = 5\nsession_timeout = "2s"'))
    stamped = ArrivalLog(broker, topics.stamped)
    async with anyio.create_task_group() as tg:
        tg.start_soon(stamped.follow)
        a = await spawn_service(broker, path, STARTED)
        tg.start_soon(a.follow_log)
        await wait_for(lambda: any(r.key == key for _, r in stamped.arrivals), timeout_s=90)
        a.process.send_signal(signal.SIGKILL)
        await a.process.wait()
        tg.cancel_scope.cancel()
    early = [r for r in await read_all(broker, topics.tombstones) if r.key == key]
    assert not early, "killed after the tombstone: the backlog was read too fast to test"
    return stamped.arrivals


async def _tombstone_and_null(broker: str, topics: TopicSet, config: Config, key: bytes) -> Any:
    """Run the service until ``key``'s tombstone and null are out; they say the same late
    cause, which is returned."""
    async with running_service(config, broker):
        tombs = await read_topic(
            broker,
            topics.tombstones,
            until=lambda rs: any(r.key == key for r in rs),
            timeout_s=90,
        )
        nulls = await read_topic(
            broker,
            topics.stamped,
            until=lambda rs: any(r.key == key and r.value is None for r in rs),
        )
    (tomb,) = [r for r in tombs if r.key == key]
    (null,) = [r for r in nulls if r.key == key and r.value is None]
    cause = dict(tomb.headers).get(codec.H_LATE_CAUSE)
    assert dict(null.headers).get(codec.H_LATE_CAUSE) == cause
    return cause


@pytest.mark.timeout(180)
@pytest.mark.parametrize("state", ["kept", "lost"])
async def test_a_late_event_s_record_tombstoned_after_a_sigkill_says_late_event(
    broker: str, topics: TopicSet, tmp_path: Path, state: str
) -> None:
    """``kept``: the service restarts on its state directory (its store holds the record);
    ``lost``: another instance, with an empty one, restores it from ``expiry.stamped``."""
    key = await _late_event_then_backlog(broker, topics.conversations)
    arrivals = await _stamped_then_killed(broker, topics, tmp_path, key)
    config = config_for(topics, str(tmp_path / ("a" if state == "kept" else "b")), RETENTION)
    assert await _tombstone_and_null(broker, topics, config, key) == b"late_event"
    # What the killed instance said on the stamp, for the instance that restores it.
    (stamp,) = [r for _, r in arrivals if r.key == key]
    expires = parse_ts(orjson.loads(stamp.value)["expires_at"])
    assert codec.due_at_ingest_of(stamp.headers) == expires


@pytest.mark.timeout(240)
async def test_a_late_event_s_stamp_replay_redacts_still_says_late_event_after_a_restore(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A late create's stamp (due on arrival, ``expiry-due-at-ingest``), its tombstone not
    out yet (the service killed), then a ``[redact]`` rule added and ``replay`` applied:
    replay publishes the stamp again without the field, its expiry as it was. A service
    with a lost state directory restores the record from that stamp, and its tombstone
    says ``late_event``; it said ``catch_up``: replay's stamp did not keep the header."""
    key = await _late_event_then_backlog(
        broker, topics.conversations, data={"email": "x@example.com", "topic": "billing"}
    )
    arrivals = await _stamped_then_killed(broker, topics, tmp_path, key)
    (stamp,) = [r for _, r in arrivals if r.key == key]
    expires = codec.due_at_ingest_of(stamp.headers)
    assert expires == parse_ts(orjson.loads(stamp.value)["expires_at"])

    rules = RETENTION + '\n[redact]\nconversation = ["email"]\n'
    cfg = tmp_path / "redact.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "b"), rules))
    argv = ["replay", "--config", str(cfg), "--bootstrap-servers", broker, "--json"]
    assert await anyio.to_thread.run_sync(main, argv) == 0
    (replayed,) = [
        r
        for r in await read_all(broker, topics.stamped)
        if r.key == key and H_REPLAY in dict(r.headers)
    ]
    body = orjson.loads(replayed.value)
    assert (body["data"], body["redacted"]) == ({"topic": "billing"}, ["email"])
    assert parse_ts(body["expires_at"]) == expires
    assert codec.due_at_ingest_of(replayed.headers) == expires

    config = config_for(topics, str(tmp_path / "b"), rules)  # b: restored from the changelog
    assert await _tombstone_and_null(broker, topics, config, key) == b"late_event"


@pytest.mark.timeout(120)
async def test_an_erasure_request_that_reached_the_bus_late_says_so_to_the_stores(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An erasure dated two hours before it reached the broker is carried out at once, two
    hours after its request's time: its tombstone event and its null say
    ``expiry-late-cause: late_event`` (it said nothing: explicit tombstones carried no
    cause), a store's receipt of it says the same, and an erasure on time says nothing."""
    config = config_for(
        topics, str(tmp_path / "state"), '[retention.defaults]\nconversation = "4h"\n'
    )
    t0 = wall_clock_ms()
    messages = [
        event("conversation", "late", ts=t0 - 3 * 3_600_000),
        event("conversation", "late", ts=t0 - 2 * 3_600_000, op="delete"),
        event("conversation", "on-time", ts=t0),
        event("conversation", "on-time", ts=t0 + 1, op="delete"),
    ]
    async with (
        open_store("sqlite", tmp_path) as store,
        running_sink(store, sink_config(broker, topics)),
        running_service(config, broker),
    ):
        await produce(broker, [(topics.conversations, k, v) for k, v in messages])
        receipts = await read_topic(broker, topics.receipts, until=lambda r: len(r) >= 2)
        tombs = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 2)
        stamped = await read_topic(
            broker, topics.stamped, until=lambda r: sum(m.value is None for m in r) >= 2
        )
    said = {
        (kind, orjson.loads(r.value)["record_id"] if r.value else r.key.decode().split("/")[-1]):
            dict(r.headers).get(codec.H_LATE_CAUSE)
        for kind, rs in (("tombstone", tombs), ("receipt", receipts), ("null", stamped))
        for r in rs
        if kind != "null" or r.value is None
    }  # fmt: skip
    assert said == {
        ("tombstone", "late"): b"late_event",
        ("null", "late"): b"late_event",
        ("receipt", "late"): b"late_event",
        ("tombstone", "on-time"): None,
        ("null", "on-time"): None,
        ("receipt", "on-time"): None,
    }

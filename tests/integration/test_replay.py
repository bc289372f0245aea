"""Replay re-derives exactly what the live run stamped, applies policy changes, and a lost
state directory is rebuilt from the topics without resurrecting anything."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry import exits
from stream_expiry.codec import source_headers
from stream_expiry.config import parse_config
from stream_expiry.kafka import key_partition, producer
from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.replay import Share, replay, replay_share
from stream_expiry.service import wall_clock_ms
from stream_expiry.testing.processes import spawn_service
from stream_expiry.timeutil import format_ts
from tests.conftest import TopicSet, read_all, read_topic
from tests.integration.service_helpers import (
    config_for,
    config_text,
    event,
    live_expiries,
    produce,
    running_service,
)

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

LONG = """
[retention.defaults]
conversation = "1h"
session = "30m"
error = "2h"

[retention.orgs.globex]
conversation = "10m"
"""


def _latest_stamps(records: list[object]) -> dict[bytes, bytes | None]:
    latest: dict[bytes, bytes | None] = {}
    for rec in records:
        latest[rec.key] = rec.value  # type: ignore[attr-defined]
    return latest


async def _live_run(
    broker: str, topics: TopicSet, state: Path, n: int
) -> dict[bytes, bytes | None]:
    config = config_for(topics, str(state), LONG)
    now = wall_clock_ms() - n * 1000
    msgs = []
    for i in range(n):
        cat, topic = [
            ("conversation", topics.conversations),
            ("session", topics.sessions),
            ("error", topics.errors),
        ][i % 3]
        org = "globex" if i % 4 == 0 else "acme"
        msgs.append(
            (topic, *event(cat, f"r{i}", org=org, ts=format_ts(now + i * 1000), data={"i": i}))
        )
    async with running_service(config, broker):
        await produce(broker, msgs)
        stamped = await read_topic(broker, topics.stamped, until=lambda r: len(r) >= n)
    return _latest_stamps(stamped)


async def test_replay_reproduces_the_live_stamps_field_by_field(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    n = 60
    live = await _live_run(broker, topics, tmp_path / "state", n)
    assert len(live) == n
    config = config_for(topics, str(tmp_path / "state"), LONG)
    report = await replay(
        config, broker, environ={}, dry_run=True, from_inputs=True, keep_states=True
    )
    assert report.counts()["records"] == n
    for key, raw in live.items():
        assert raw is not None
        want = orjson.loads(raw)
        state = report.states[key.decode()]
        got = orjson.loads(encode_stamp(state, want["data"]))
        for name in (
            "org",
            "bot",
            "env",
            "category",
            "record_id",
            "created_at",
            "expires_at",
            "ttl_seconds",
            "ttl_source",
            "data",
        ):
            assert got[name] == want[name], (key, name)
    assert report.unchanged == n
    assert report.earlier == report.later == report.never == 0
    # From the changelog (the default), without the input topics: the same verdict.
    from_stamps = await replay(config, broker, environ={}, dry_run=True)
    assert from_stamps.counts()["records"] == from_stamps.unchanged == n


async def test_replay_applies_a_policy_change_and_a_restarted_service_acts_on_it(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    base = config_for(
        topics,
        str(state),
        '[retention.defaults]\nconversation = "1h"\nsession = "1h"\nerror = "1h"\n',
    )
    ten_seconds_ago = wall_clock_ms() - 10_000
    async with running_service(base, broker):
        await produce(
            broker,
            [
                (topics.conversations, *event("conversation", "c", ts=ten_seconds_ago)),
                (topics.sessions, *event("session", "s", ts=ten_seconds_ago)),
                (topics.errors, *event("error", "e", ts=ten_seconds_ago)),
            ],
        )
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 3)
    changed = dataclasses.replace(
        base,
        retention=parse_config(
            '[retention.defaults]\nconversation = "1s"\nsession = "3h"\nerror = 0\n', path="<new>"
        ).retention,
    )
    dry = await replay(changed, broker, environ={}, dry_run=True)
    assert dry.counts() == {
        "events": 3,
        "records": 3,
        "unchanged": 0,
        "earlier": 0,
        "later": 1,
        "due_now": 1,
        "never": 1,
    }
    stamped_before = len(await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 3))
    assert stamped_before == 3  # the dry run changed nothing
    applied = await replay(changed, broker, environ={}, dry_run=False)
    assert applied.counts() == dry.counts()
    again = await replay(changed, broker, environ={}, dry_run=True)
    assert again.unchanged == 3  # applied stamps are now the current ones
    async with running_service(changed, broker):
        tombs = await read_topic(
            broker, topics.tombstones, until=lambda r: len(r) >= 1, timeout_s=15
        )
    assert [orjson.loads(t.value)["record_id"] for t in tombs] == ["c"]


async def test_restore_into_an_empty_state_dir_keeps_pending_and_resurrects_nothing(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    retention = '[retention.defaults]\nconversation = "1h"\nerror = "1s"\n'
    config = config_for(topics, str(state), retention)
    async with running_service(config, broker):
        await produce(
            broker,
            [(topics.conversations, *event("conversation", f"c{i}")) for i in range(5)]
            + [(topics.errors, *event("error", f"e{i}")) for i in range(5)]
            + [(topics.conversations, *event("conversation", "c0", op="delete"))],
        )
        await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 6)
    before = live_expiries(str(state))
    shutil.rmtree(state)
    async with running_service(config, broker) as service:
        # Restored from the changelog; the input topics are not read again.
        assert service.stats.restored > 0
        assert service.stats.events == 0
    after = live_expiries(str(state))
    assert after == before
    assert len(after) == 4
    assert all(v is not None for v in after.values())
    stamped = await read_all(broker, topics.stamped)
    stamps_per_key = Counter(r.key for r in stamped if r.value is not None)
    tombstoned = {t.key for t in await read_all(broker, topics.tombstones)}
    assert len(tombstoned) == 6
    assert all(stamps_per_key[k] <= 1 for k in tombstoned)  # no deleted record stamped again
    assert len(await read_all(broker, topics.tombstones)) == 6  # and no tombstone twice


async def test_replay_from_the_changelog_judges_each_records_latest_message_only(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Replay judges as the topic streams; the key's last message still decides: a stamp
    followed by a null is gone, a null followed by a stamp counts, and an older verdict of
    a record never outlives a newer one."""
    config = config_for(topics, str(tmp_path / "state"), LONG)
    created = wall_clock_ms() - 60_000
    hour = 3_600_000

    def stamp(rid: str, expires: int) -> tuple[bytes, bytes]:
        identity = Identity("acme", "_", "live", "conversation", rid)
        value = encode_stamp(Stamp(identity, created, expires, hour, "default"))
        return identity.key.encode(), value

    unchanged, later = created + hour, created + 2 * hour
    first: list[tuple[bytes, bytes | None]] = [
        stamp("gone", unchanged),
        stamp("back", unchanged),
        stamp("fixed", later),  # then stamped as the policy says: unchanged
        stamp("moved", unchanged),  # then stamped two hours out: earlier under the policy
    ]
    first.insert(1, (first[1][0], None))  # "back" deleted before its stamp
    second = [(first[0][0], None), stamp("fixed", unchanged), stamp("moved", later)]
    async with producer(broker) as prod:
        for batch in (first, second):
            for key, value in batch:
                await (await prod.send(topics.stamped, key=key, value=value, partition=0))
    report = await replay(config, broker, environ={}, dry_run=True)
    assert report.counts() == {
        "events": len(first) + len(second),
        "records": 3,
        "unchanged": 2,
        "earlier": 1,
        "later": 0,
        "due_now": 0,
        "never": 0,
    }
    assert [c.key for c in report.sample] == [
        Identity("acme", "_", "live", "conversation", "moved").key
    ]


async def _stamps_on_the_changelog(broker: str, topics: TopicSet, n: int, now: int) -> None:
    """``n`` stamps on ``expiry.stamped`` as a service leaves them (partition, headers),
    of two orgs and three categories, created over the last hours."""
    async with producer(broker) as prod:
        acks = []
        for i in range(n):
            cat = ("conversation", "session", "error")[i % 3]
            org = "globex" if i % 4 == 0 else "acme"
            identity = Identity(org, "_", "live", cat, f"r{i}")
            created = now - (i % 50) * 600_000
            stamp = Stamp(identity, created, created + 3_600_000, 3_600, "default")
            key = identity.key.encode()
            partition = key_partition(key, 2)
            acks.append(
                await prod.send(
                    topics.stamped,
                    key=key,
                    value=encode_stamp(stamp, {"i": i}),
                    partition=partition,
                    headers=source_headers(topics.conversations, partition),
                )
            )
        for ack in acks:
            await ack


async def test_replay_in_worker_processes_reports_and_applies_what_one_process_does(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Each worker replays its own partitions: the counts, the sample (the first changes in
    key order), the states and the published stamps are those of a replay in one process."""
    now = wall_clock_ms()
    await _stamps_on_the_changelog(broker, topics, 300, now)
    config = config_for(topics, str(tmp_path / "state"), LONG)
    one = await replay(config, broker, environ={}, dry_run=True, sample_size=40, keep_states=True, workers=1)  # fmt: skip
    two = await replay(config, broker, environ={}, dry_run=True, sample_size=40, keep_states=True, workers=2)  # fmt: skip
    assert one.counts()["records"] == 300
    assert one.unchanged < 300  # the config changes some: the comparison means something
    assert two.counts() == one.counts()
    assert [c.as_dict() for c in two.sample] == [c.as_dict() for c in one.sample]
    assert two.states == one.states
    assert len(two.worker_rss) == 2
    assert one.worker_rss == []
    applied = await replay(config, broker, environ={}, dry_run=False, workers=2)
    assert applied.counts() == one.counts()
    after = await replay(config, broker, environ={}, dry_run=True, workers=1)
    assert after.unchanged == after.records == 300  # every change was published, once
    stamped = await read_all(broker, topics.stamped)
    assert len(stamped) == 300 + (300 - one.unchanged)
    for rec in stamped:  # each new stamp went beside the old one, with its source
        assert rec.partition == key_partition(rec.key, 2)


async def test_replay_from_inputs_leaves_out_what_the_service_rejected_as_future(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An event dead-lettered as ``future_timestamp`` (ts further ahead of the time the
    service read it than the allowed skew) stays rejected when replay reads it once its
    ts has passed: replay judges its skew at the record's Kafka timestamp, not at its own
    clock, so the rejected event does not become a record."""
    config = config_for(topics, str(tmp_path / "state"), LONG)
    now = wall_clock_ms()
    ten_minutes = 600_000
    async with running_service(config, broker):
        await produce(
            broker,
            [
                (topics.conversations, *event("conversation", "ahead", ts=now + ten_minutes)),
                (topics.conversations, *event("conversation", "kept", ts=now)),
            ],
        )
        dead = await read_topic(broker, topics.dlq, until=lambda r: len(r) >= 1)
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 1)
    assert [dict(d.headers)["expiry-error"] for d in dead] == [b"future_timestamp"]
    later = now + 2 * ten_minutes  # the rejected event's ts has passed
    report = await replay(
        config, broker, environ={}, dry_run=True, from_inputs=True, clock=lambda: later
    )
    assert report.counts() == {
        "events": 2,
        "records": 1,
        "unchanged": 1,
        "earlier": 0,
        "later": 0,
        "due_now": 0,
        "never": 0,
    }
    assert report.sample == []


async def test_replay_from_inputs_stamps_no_record_that_has_no_stamp(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A record whose events are still on an input topic but which has neither a stamp nor
    a null on ``expiry.stamped`` was deleted and its null compacted away (input topics
    keep events for days, a compacted topic its nulls for a day): an applied replay from
    the inputs, under a longer policy, must not stamp it again, which would bring the
    deleted record back into every store. Tansu does not compact, so the compacted record
    is one whose events reached the input topic while no service ran."""
    config = config_for(topics, str(tmp_path / "state"), LONG)
    now = wall_clock_ms()
    async with running_service(config, broker):
        await produce(broker, [(topics.conversations, *event("conversation", "kept", ts=now))])
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 1)
    await produce(broker, [(topics.conversations, *event("conversation", "gone", ts=now))])
    longer = config_for(topics, str(tmp_path / "state"), LONG.replace('"1h"', '"2h"', 1))
    report = await replay(longer, broker, environ={}, from_inputs=True)
    assert report.counts() == {
        "events": 2,
        "records": 1,
        "unchanged": 0,
        "earlier": 0,
        "later": 1,
        "due_now": 0,
        "never": 0,
    }
    assert report.unstamped == 1
    stamped = await read_all(broker, topics.stamped)
    keys = [rec.key.decode().rsplit("/", 1)[-1] for rec in stamped]
    assert sorted(keys) == ["kept", "kept"]  # the live stamp and replay's: none for "gone"


async def test_replay_from_inputs_counts_and_applies_a_life_its_policy_ended_between_events(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A conversation created 20 minutes ago and touched 10 minutes ago (activity: counted,
    it does not slide) lives an hour under the old policy. Under a 5-minute policy it was
    over before the touch. Replay from the inputs feeds the touch to its processor at its
    own clock, after that expiry, so the processor tombstones the life there; the record
    is still live on ``expiry.stamped`` and must come out ``due_now`` and be applied, as
    replay from the stamps says, not be left out as if the stores had deleted it (it
    then lived out the old policy's hour)."""
    config = config_for(topics, str(tmp_path / "state"), LONG)
    now = wall_clock_ms()
    minute = 60_000
    async with running_service(config, broker):
        await produce(
            broker,
            [
                (topics.conversations, *event("conversation", "c", ts=now - 20 * minute)),
                (
                    topics.conversations,
                    *event("conversation", "c", op="touch", ts=now - 10 * minute),
                ),
                (topics.conversations, *event("conversation", "kept", ts=now)),
            ],
        )
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 2)
    shorter = config_for(topics, str(tmp_path / "state"), LONG.replace('"1h"', '"5m"', 1))
    want = {
        "events": 3,
        "records": 2,
        "unchanged": 0,
        "earlier": 1,
        "later": 0,
        "due_now": 1,
        "never": 0,
    }
    from_stamps = await replay(shorter, broker, environ={}, dry_run=True)
    assert from_stamps.counts() == {**want, "events": 2}
    dry = await replay(shorter, broker, environ={}, dry_run=True, from_inputs=True)
    assert dry.counts() == want
    assert {c.key.rsplit("/", 1)[-1]: c.kind for c in dry.sample} == {
        "c": "due_now",
        "kept": "earlier",
    }
    applied = await replay(shorter, broker, environ={}, from_inputs=True)
    assert applied.counts() == want
    stamps = [r for r in await read_all(broker, topics.stamped) if r.key.endswith(b"/c")]
    assert orjson.loads(stamps[-1].value)["expires_at"] == format_ts(now - 15 * minute)
    async with running_service(shorter, broker):
        tombs = await read_topic(
            broker, topics.tombstones, until=lambda r: len(r) >= 1, timeout_s=15
        )
    assert [orjson.loads(t.value)["record_id"] for t in tombs] == ["c"]


async def test_replay_redacts_the_stamps_it_publishes_under_its_own_redact_rules(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A stamp written before a ``[redact]`` rule existed holds the field; a replay with the
    config that adds the rule publishes the changed stamp without it (and says so in
    ``redacted``, after what the stamp already listed), also from worker processes: the
    field must not come back newer than the stamp compaction would remove."""
    created = wall_clock_ms() - 60_000
    data = {"user": {"email": "a@example.com", "name": "A"}, "ip": "10.0.0.1", "k": 1}
    async with producer(broker) as prod:
        for rid in ("r1", "r2"):
            identity = Identity("globex", "_", "live", "conversation", rid)
            value = encode_stamp(
                Stamp(identity, created, created + 3_600_000, 3_600, "default"),
                {k: v for k, v in data.items() if k != "ip"} if rid == "r2" else data,
                ["ip"] if rid == "r2" else (),
            )
            await (await prod.send(topics.stamped, key=identity.key.encode(), value=value))
    rules = '\n[redact]\nconversation = ["user.email", "ip"]\n'
    config = config_for(topics, str(tmp_path / "state"), LONG + rules)
    applied = await replay(config, broker, environ={}, dry_run=False, workers=2)
    assert applied.earlier == 2  # globex conversations: 10 minutes now, both are published
    published = [r for r in await read_all(broker, topics.stamped) if r.headers]
    assert len(published) == 2
    for rec in published:
        body = orjson.loads(rec.value)
        assert body["data"] == {"user": {"name": "A"}, "k": 1}
        assert body["redacted"] == (
            ["ip", "user.email"] if body["record_id"] == "r2" else ["user.email", "ip"]
        )


async def test_replay_says_which_policy_updates_it_skipped_as_the_service_would(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Replay applies the policy updates as the service does, and said nothing of those it
    rejected whole or applied in part: its counts then rested on a policy the operator did
    not know was not the one typed."""
    config = config_for(topics, str(tmp_path / "state"), LONG)
    await produce(
        broker,
        [
            (topics.policies, b"org/acme", b'{"scope": "org", "org": "acme", "ttl": {"sesion": 1}}'),
            (topics.policies, b"org/globex",
             b'{"scope": "org", "org": "globex", "ttl": {"error": "1d", "session": "banana"}}'),
        ],
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        await replay(config, broker, environ={}, dry_run=True)
    said = [r.getMessage() for r in caplog.records]
    assert any("ignored" in s and "'sesion' is not a configured category" in s for s in said)
    assert any(
        s.startswith("policy update org/globex") and "ttl.session: 'banana'" in s for s in said
    )


async def test_a_replay_stopped_by_sigterm_leaves_no_store_in_the_temporary_directory(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The workers' stores hold every stamp of their partitions, ``data`` included. A
    SIGTERM ended the process on the spot and the kill of its workers left each one's
    store in /tmp, erased users' data with them, until something cleared it."""
    await _stamps_on_the_changelog(broker, topics, 100_000, wall_clock_ms())
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), LONG))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = ["replay", "--config", str(cfg), "--bootstrap-servers", broker, "--workers", "2"]
    command = [sys.executable, "-m", "stream_expiry", *argv, "--dry-run", "--json"]
    async with await anyio.open_process(command, env={**os.environ, "TMPDIR": str(tmp)}) as proc:
        try:
            deadline = time.monotonic() + 60
            while len(list(tmp.rglob("current"))) < 2:  # both workers' stores are open
                assert proc.returncode is None, "the replay ended before the test stopped it"
                assert time.monotonic() < deadline, "the workers never opened their stores"
                await anyio.sleep(0.005)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert code == exits.INTERRUPTED
    assert list(tmp.iterdir()) == []


class _EraseOnceRead:
    """A replay's progress display that, once replay has read ``expiry.stamped`` and
    before it publishes, has the running instance erase a record and waits for the
    instance's null: the instance writes between replay's read and its stamps."""

    def __init__(self, broker: str, topics: TopicSet, record_id: str) -> None:
        self.total = 0
        self.broker, self.topics, self.record_id = broker, topics, record_id

    def __call__(self, done: int, final: bool = False) -> None:
        if final:
            # Replay's event loop waits meanwhile: the instance is a process of its own.
            thread = threading.Thread(target=anyio.run, args=(self._erase,))
            thread.start()
            thread.join()

    async def _erase(self) -> None:
        key, value = event("conversation", self.record_id, op="delete")
        await produce(self.broker, [(self.topics.conversations, key, value)])
        await read_topic(
            self.broker,
            self.topics.stamped,
            until=lambda recs: any(r.key == key and r.value is None for r in recs),
        )


@pytest.mark.timeout(150)
async def test_replay_leaves_a_null_an_instance_wrote_after_its_read_the_latest_message(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An instance that runs while replay does erased a record after replay had read its
    stamp: replay's stamp of it, published later, was its latest message, so the next
    restore took the deleted record for live and tombstoned it again (a trial: 75 of
    3,000 records expiring during a replay). Replay now publishes the instance's null
    again after its stamp; the restored service tombstones nothing twice."""
    minute = 60_000
    state = tmp_path / "state"
    cfg = tmp_path / "service.toml"
    text = config_text(topics, str(state), '[retention.defaults]\nconversation = "10m"\n')
    # Alone in its group: a 2 s session, for a join the test broker holds 1 s, not 3.
    cfg.write_text(text.replace("[service]\n", '[service]\nsession_timeout = "2s"\n', 1))
    now = wall_clock_ms()
    gone, _ = event("conversation", "gone")
    kept, _ = event("conversation", "kept")
    started: list[Process] = []
    try:
        async with anyio.create_task_group() as tg:
            svc = await spawn_service(broker, cfg, started)
            tg.start_soon(svc.follow_log)
            with anyio.fail_after(60):
                await svc.ready.wait()
            await produce(
                broker,
                [
                    (topics.conversations, *event("conversation", rid, ts=now - 8 * minute))
                    for rid in ("gone", "kept")
                ],
            )
            await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 2)
            shorter = config_for(topics, str(state), '[retention.defaults]\nconversation = "5m"\n')
            share = Share(
                config=shorter,
                bootstrap=broker,
                environ={},
                updates=(),
                now=wall_clock_ms(),
                since_ms=None,
                dry_run=False,
                sample_size=10,
                keep_states=False,
            )
            report = await replay_share(share, _EraseOnceRead(broker, topics, "gone"))
            svc.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await svc.process.wait() == 0
            tg.cancel_scope.cancel()
    finally:
        for proc in started:
            if proc.returncode is None:
                proc.kill()
    assert (report.due_now, report.superseded) == (2, 1)  # both were live when read
    stamped = await read_all(broker, topics.stamped)
    latest = _latest_stamps(stamped)
    assert latest[gone] is None  # the instance's null, published again after replay's stamp
    assert latest[kept] is not None
    assert [dict(r.headers).get("expiry-reason") for r in stamped if r.key == gone][-1] == (
        b"explicit"
    )
    shutil.rmtree(state)  # restored from the changelog alone
    async with running_service(shorter, broker):
        tombs = await read_topic(
            broker, topics.tombstones, until=lambda r: any(t.key == kept for t in r)
        )
    reasons = Counter((t.key, orjson.loads(t.value)["reason"]) for t in tombs)
    assert reasons == {(gone, "explicit"): 1, (kept, "ttl"): 1}


async def test_replay_publishes_again_the_stamps_a_new_redact_rule_removes_data_from(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A ``[redact]`` rule added after the stamps were written, the policy unchanged:
    replay found every expiry unchanged and published nothing, so every stamp kept the
    field (a trial: 1,000 of 1,000). It publishes again the stamps the rule removes
    something from, counted ``unchanged`` (their expiry stands), and a second replay finds
    nothing left to remove."""
    created = wall_clock_ms() - 60_000
    async with producer(broker) as prod:
        for rid, data in (("r1", {"email": "a@example.com", "k": 1}), ("r2", {"k": 2})):
            identity = Identity("acme", "_", "live", "conversation", rid)
            value = encode_stamp(
                Stamp(identity, created, created + 3_600_000, 3_600, "default"), data, ()
            )
            await (await prod.send(topics.stamped, key=identity.key.encode(), value=value))
    rules = '\n[redact]\nconversation = ["email"]\n'
    config = config_for(topics, str(tmp_path / "state"), LONG + rules)
    dry = await replay(config, broker, environ={}, dry_run=True)
    assert (dry.unchanged, dry.redacted) == (2, 1)
    assert len(await read_all(broker, topics.stamped)) == 2  # the dry run published nothing
    applied = await replay(config, broker, environ={}, dry_run=False)
    assert applied.counts() == dry.counts()
    assert applied.redacted == 1
    latest = _latest_stamps(await read_all(broker, topics.stamped))
    bodies = {orjson.loads(v)["record_id"]: orjson.loads(v) for v in latest.values() if v}
    assert bodies["r1"]["data"] == {"k": 1}
    assert bodies["r1"]["redacted"] == ["email"]
    assert bodies["r1"]["expires_at"] == format_ts(created + 3_600_000)  # its expiry stands
    assert bodies["r2"]["data"] == {"k": 2}
    again = await replay(config, broker, environ={}, dry_run=True)
    assert (again.unchanged, again.redacted) == (2, 0)


async def test_replay_from_inputs_keeps_a_running_life_whose_next_create_is_dated_ahead(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A create dated after its record's running life's expiry, read before that expiry
    (a producer's clock ahead, within the skew), waits in the service for the expiry
    (parked; its offset not committed). Replay from the inputs, run meanwhile, decided it
    at once as if time had come to the expiry: it derived the next life, counted it
    'later', and an applied replay stamped it over the running one, whose tombstone then
    never came (a restarted service restored the next life and took the create, read
    again, for its re-delivery): the running life's data was kept a whole TTL past its
    expiry. Replay derives the record as it is at its clock: the running life."""
    config = config_for(topics, str(tmp_path / "state"), LONG)
    now = wall_clock_ms()
    hour = 3_600_000
    first = now - hour + 60_000  # expires in a minute
    async with running_service(config, broker):
        await produce(broker, [(topics.conversations, *event("conversation", "a", ts=first))])
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 1)
        ahead = event("conversation", "a", ts=now + 61_000)  # a second after that expiry
        await produce(broker, [(topics.conversations, *ahead)])
    report = await replay(
        config, broker, environ={}, dry_run=True, from_inputs=True, keep_states=True
    )
    assert (report.unchanged, report.later) == (1, 0)
    (state,) = report.states.values()
    assert (state.created_at, state.expires_at) == (first, first + hour)


async def test_replay_from_inputs_reads_a_retired_topic_up_to_where_the_service_stopped(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A topic moved to ``[topics] retired`` still has records alive, which the instances
    fire: replay from the inputs re-derives them from its events too (it read the inputs
    alone, and left them as they were under any policy). Only the events the service read
    before the retirement, up to its group's committed offset: a session's touch and a
    create sent to the topic after it, which the service ignores, change nothing."""
    state = str(tmp_path / "state")
    now = wall_clock_ms()
    minute = 60_000
    async with running_service(config_for(topics, state, LONG), broker):
        await produce(
            broker,
            [
                (topics.errors, *event("error", "e", ts=now)),
                (topics.errors, *event("session", "s", ts=now - 20 * minute)),
                (topics.conversations, *event("conversation", "c", ts=now)),
            ],
        )
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 3)
    # Sent after the retirement: the service never reads them.
    await produce(
        broker,
        [
            (topics.errors, *event("session", "s", op="touch", ts=now)),
            (topics.errors, *event("error", "late", ts=now)),
        ],
    )
    inputs = f'inputs = ["{topics.conversations}", "{topics.sessions}", "{topics.errors}"]'
    retired = config_text(topics, state, LONG.replace('error = "2h"', 'error = "1h"')).replace(
        inputs,
        f'inputs = ["{topics.conversations}", "{topics.sessions}"]\nretired = ["{topics.errors}"]',
    )
    report = await replay(parse_config(retired), broker, environ={}, dry_run=True, from_inputs=True)
    assert report.counts() == {
        "events": 3,
        "records": 3,
        "unchanged": 2,
        "earlier": 1,
        "later": 0,
        "due_now": 0,
        "never": 0,
    }
    assert report.unstamped == 0
    assert [(c.key.rsplit("/", 1)[-1], c.kind) for c in report.sample] == [("e", "earlier")]

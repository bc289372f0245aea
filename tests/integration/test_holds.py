"""Legal holds end to end: the CLI places and releases them on expiry.holds, a running
service keeps what they match, lets the rest go on time, and tombstones the kept records
within a second of the release; holds survive a restart; every step is on expiry.audit."""

from __future__ import annotations

import dataclasses
import getpass
import logging
import re
import zlib
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

from stream_expiry import codec
from stream_expiry import service as service_module
from stream_expiry import status as status_module
from stream_expiry.archive import (
    ERASURES,
    ArchiveWriter,
    Entry,
    archived_offsets,
    purge,
    read_lines,
)
from stream_expiry.changelog import read_latest
from stream_expiry.cli import main
from stream_expiry.codec import deleted_at_of, reason_of
from stream_expiry.errors import ConfigurationError, leaves
from stream_expiry.exits import status_of
from stream_expiry.holds import Hold, HoldBook, encode_hold
from stream_expiry.kafka import ensure_topics, missing_topics, producer
from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.murmur2 import partition_for
from stream_expiry.replay import replay
from stream_expiry.service import wall_clock_ms
from stream_expiry.state import RocksKV
from stream_expiry.timeutil import format_ts, parse_ts
from tests.conftest import TopicSet, read_all, read_topic, wait_for
from tests.integration.service_helpers import (
    ArrivalLog,
    archive_running,
    archive_topics,
    config_for,
    config_text,
    event,
    produce,
    running_service,
)
from tests.integration.sink_helpers import wait_until
from tests.log_capture import captured_logs

if TYPE_CHECKING:
    from pathlib import Path

    from stream_expiry.config import Config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

RETENTION = '[retention.defaults]\nconversation = "2s"\n'


async def _cli(*argv: str) -> int:
    return await anyio.to_thread.run_sync(main, list(argv))


def _setup(
    broker: str, topics: TopicSet, tmp_path: Path, retention: str
) -> tuple[tuple[str, ...], Config]:
    """The CLI's common arguments (a config file written for these topics) and the same
    configuration for a service run in the test."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), retention))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)
    return common, config_for(topics, str(tmp_path / "state"), retention)


@pytest.mark.timeout(120)
async def test_holds_keep_what_they_match_until_released(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common, config = _setup(broker, topics, tmp_path, RETENTION)
    # A hold placed before any record arrives, on bot b1.
    assert await _cli("hold", "place", *common, "--org", "acme", "--bot", "b1",
                      "--reason", "case 7", "--id", "case-7") == 0  # fmt: skip
    tombstones = ArrivalLog(broker, topics.tombstones)
    # The service's clock runs a minute behind until it knows the second hold: "late" is
    # pending when that hold comes, however long the command placing it takes (0.4-0.8 s
    # of the 2 s ttl beside a busy core, with coverage). Never ahead: none comes early.
    behind = [60_000]
    async with anyio.create_task_group() as tg:
        tg.start_soon(tombstones.follow)
        async with running_service(
            config, broker, clock=lambda: wall_clock_ms() - behind[0]
        ) as service:
            await wait_for(lambda: len(service.holds) == 1)
            t0 = wall_clock_ms()
            await produce(
                broker,
                [(topics.conversations, *event("conversation", f"b1-{i}", bot="b1", ts=t0))
                 for i in range(5)]
                + [(topics.conversations, *event("conversation", f"b2-{i}", bot="b2", ts=t0))
                   for i in range(5)]
                + [(topics.conversations, *event("conversation", "late", bot="b3", ts=t0))],
            )  # fmt: skip
            # A hold placed while records are pending, on one record of bot b3.
            assert await _cli("hold", "place", *common, "--org", "acme", "--bot", "b3",
                              "--record-id", "late", "--reason", "case 8", "--id", "case-8") == 0  # fmt: skip
            await wait_for(lambda: len(service.holds) == 2)
            behind[0] = 0
            # Bot b2 expires on time; b1's records and b3's "late" are kept.
            await wait_for(lambda: service.stats.tombstones >= 5, timeout_s=15)
            await wait_for(
                lambda: sum(p.store.counts.held for p in service.processors.values()) >= 6,
                timeout_s=15,
            )
            # An erasure request for a kept record waits too.
            await produce(
                broker,
                [(topics.conversations, *event("conversation", "b1-0", bot="b1", op="delete"))],
            )
            await wait_for(lambda: service.stats.verdicts["held"] >= 1)
        # Holds survive a restart (and the restore of the state).
        async with running_service(config, broker) as service:
            await wait_for(lambda: len(service.holds) == 2)
            assert {r.key for _, r in tombstones.arrivals} == {
                k for k, _ in (event("conversation", f"b2-{i}", bot="b2") for i in range(5))
            }
            capsys.readouterr()
            assert await _cli("hold", "list", *common, "--json") == 0
            listed = orjson.loads(capsys.readouterr().out)
            assert sorted(h["hold_id"] for h in listed) == ["case-7", "case-8"]
            released_at = wall_clock_ms()
            why = ("--reason", "case closed", "--by", "j.doe (legal)")
            assert await _cli("hold", "release", *common, "case-7", *why) == 0
            await wait_for(lambda: len(tombstones.arrivals) >= 10, timeout_s=10)
            assert await _cli("hold", "release", *common, "case-8") == 0
            await wait_for(lambda: len(tombstones.arrivals) >= 11, timeout_s=10)
        tg.cancel_scope.cancel()
    bodies = {orjson.loads(r.value)["record_id"]: (at, orjson.loads(r.value))
              for at, r in tombstones.arrivals}  # fmt: skip
    assert len(bodies) == 11
    for rid, (arrived, body) in bodies.items():
        assert arrived >= parse_ts(body["expires_at"]), rid
        if rid.startswith("b1-") or rid == "late":
            assert arrived >= released_at, rid  # kept until the release
            assert arrived - released_at < 10_000
    assert bodies["b1-0"][1]["reason"] == "explicit"
    assert {bodies[f"b1-{i}"][1]["reason"] for i in range(1, 5)} == {"ttl"}
    audit = [orjson.loads(r.value) for r in await read_all(broker, topics.audit)]
    kinds = [a["type"] for a in audit]
    assert kinds.count("hold_placed") == 2
    assert kinds.count("hold_released") == 2
    # Who placed and released each, and why case-7 was released (its reason stays the
    # placement's): a trial found the release said neither.
    released = {a["hold_id"]: a for a in audit if a["type"] == "hold_released"}
    assert (released["case-7"]["release_reason"], released["case-7"]["by"]) == (
        "case closed",
        "j.doe (legal)",
    )
    assert "release_reason" not in released["case-8"]
    runner = getpass.getuser()
    assert {a.get("by") for a in audit if a["type"] == "hold_placed"} == {runner}
    assert released["case-8"]["by"] == runner
    deferred = {a["record_id"] for a in audit if a["type"] == "deletion_deferred"}
    assert deferred >= {f"b1-{i}" for i in range(5)} | {"late"}


async def test_status_counts_pending_never_held_and_lag(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    retention = '[retention.defaults]\nconversation = "1h"\nsession = "1s"\n'
    common, config = _setup(broker, topics, tmp_path, retention)
    assert await _cli("hold", "place", *common, "--org", "acme", "--category", "session",
                      "--reason", "audit 3", "--id", "audit-3") == 0  # fmt: skip
    # A hold on records not due yet keeps none of them yet: it matches them (a compliance
    # officer confirms a new hold covers what it should; held alone said 0, as for a typo).
    assert await _cli("hold", "place", *common, "--org", "acme", "--category", "conversation",
                      "--reason", "audit 4", "--id", "audit-4") == 0  # fmt: skip
    async with running_service(config, broker) as service:
        await produce(
            broker,
            [(topics.conversations, *event("conversation", f"c{i}")) for i in range(3)]
            + [(topics.errors, *event("analytics", f"a{i}")) for i in range(2)]
            + [(topics.sessions, *event("session", f"s{i}")) for i in range(4)],
        )
        await wait_for(
            lambda: sum(p.store.counts.held for p in service.processors.values()) == 4,
            timeout_s=15,
        )
        # While it runs, status names it: one member of the service's group.
        capsys.readouterr()
        assert await _cli("status", *common) == 0
        running = capsys.readouterr().out
        assert f"instances running: 1 (group {config.group_id!r}, Stable)" in running, running
        assert re.search(r"^    stream-expiry-\S+", running, re.MULTILINE), running
    # The service has stopped: its last offsets were committed on the way out.
    capsys.readouterr()
    assert await _cli("status", *common, "--json") == 0
    got = orjson.loads(capsys.readouterr().out)
    # The test broker keeps a member listed after it left the group (still there 12 s after
    # its LeaveGroup, measured): "none running" is the unit tests' case, not this broker's.
    assert got["instances"]["group"] == config.group_id
    assert [m["member_id"][:14] for m in got["instances"]["members"]] == ["stream-expiry-"]
    assert got["pending"] == {"conversation": 3}
    assert got["never"] == 2
    assert got["overdue"] == 0
    assert [(h["hold_id"], h["records_held"], h["records_matched"]) for h in got["holds"]] == [
        ("audit-3", 4, 4),
        ("audit-4", 0, 3),
    ]
    assert set(got["lag"]) == {f"{t}[{p}]" for t in topics.inputs for p in range(2)}
    assert sum(v["end"] for v in got["lag"].values()) == 9
    assert all(v["lag"] == 0 for v in got["lag"].values()), got["lag"]


@pytest.mark.timeout(120)
async def test_status_says_how_many_overdue_records_wait_for_the_archive(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With [archive] required, a record the archive has not read is due and not
    tombstoned: status called it overdue, 'the service is down or behind', while the
    service's metrics said nothing was overdue (a compliance trial), and said only that
    such records 'count here too'. It now says how many wait for the archive, and none
    once the archive has written them (still overdue then: the service is what is late)."""
    now = wall_clock_ms()
    due = Stamp(Identity("acme", "_", "live", "conversation", "c"), now - 7_200_000,
                now - 3_600_000, 3_600_000, "default")  # fmt: skip
    await produce(broker, [(topics.stamped, due.identity.key.encode(), encode_stamp(due))])
    group = f"{topics.prefix}-archive"
    required = f'[archive]\nrequired = true\ngroup_id = "{group}"\n'

    async def status(archive: str) -> tuple[dict[str, Any], str]:
        common, _ = _setup(broker, topics, tmp_path, archive)
        capsys.readouterr()
        assert await _cli("status", *common, "--json") == 0
        got = orjson.loads(capsys.readouterr().out)
        assert await _cli("status", *common) == 0
        return got, capsys.readouterr().out

    got, out = await status("")
    assert (got["overdue"], got["archive_waiting"]) == (1, None)
    assert re.search(r"^  overdue +1\b", out, re.MULTILINE), out
    assert "archive" not in out
    got, out = await status(required)
    assert (got["overdue"], got["archive_waiting"]) == (1, 1)
    assert re.search(r"^    waiting for the archive +1 .*their purges wait for it", out, re.M), out

    async def archived() -> bool:
        return sum((await archived_offsets(broker, group, topics.stamped)).values()) >= 1

    async with archive_running(broker, tmp_path / "archive", topics, group):
        await wait_until(archived, what="the archive's commit")
    got, out = await status(required)
    assert (got["overdue"], got["archive_waiting"]) == (1, 0)
    assert re.search(r"^    waiting for the archive +0$", out, re.MULTILINE), out


async def test_status_keeps_no_record_data_in_its_scratch_store(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """status counts; it kept every record's latest stamp, ``data`` included, in a store
    on disk while it ran (a kill left it there). What it keeps of a record now is where
    its stamp is, when it is due and two flags; the counts are those of the stamps."""
    now = wall_clock_ms()
    acme = Identity("acme", "_", "live", "conversation", "c")
    pending = Stamp(acme, now, now + 3_600_000, 3_600_000, "default")
    overdue = Stamp(Identity("acme", "_", "live", "conversation", "d"), now - 7_200_000, now - 3_600_000,
                    3_600_000, "default")  # fmt: skip
    never = Stamp(Identity("acme", "_", "live", "analytics", "a"), now, None, None, None)
    secret = {"email": "jane.doe.secret@private.example", "transcript": "x" * 5000}
    await produce(
        broker,
        [(topics.stamped, st.identity.key.encode(), encode_stamp(st, secret))
         for st in (pending, overdue, never)],
    )  # fmt: skip
    kv = RocksKV(str(tmp_path / "scratch"), durable=False)
    try:
        assert await read_latest(broker, topics.stamped, kv, status_module._latest) == 3
        kept = dict(kv.scan(b"", b"\xff" * 8))
        result = status_module.Status(at=now)
        status_module._count(result, kv, HoldBook())
    finally:
        kv.close()
    assert set(kept) == {st.identity.key.encode() for st in (pending, overdue, never)}
    assert all(b"secret" not in v and len(v) < 64 for v in kept.values()), kept
    assert (dict(result.pending), result.overdue, result.never) == ({"conversation": 1}, 1, 1)
    assert (result.next_due, result.oldest_overdue) == (pending.expires_at, overdue.expires_at)


async def test_status_counts_earlier_lives_that_wait_for_the_archive(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """With ``[archive] required``, an event after a life's expiry keeps that life for
    the archive and starts the next: the record's current life is pending, its earlier
    one waits, and status counted it nowhere (a trial)."""
    now = wall_clock_ms()
    running = Stamp(Identity("acme", "_", "live", "session", "s"), now, now + 3_600_000,
                    3_600_000, "default")  # fmt: skip
    kept = running._replace(
        held_lives=((now - 7_200_000, now - 3_600_000, 3_600_000, "default", None),)
    )
    await produce(broker, [(topics.stamped, kept.identity.key.encode(), encode_stamp(kept, None))])
    kv = RocksKV(str(tmp_path / "scratch"), durable=False)
    try:
        await read_latest(broker, topics.stamped, kv, status_module._latest)
        waiting, written = status_module.Status(at=now), status_module.Status(at=now)
        status_module._count(waiting, kv, HoldBook(), archived=dict.fromkeys(range(2), 0))
        status_module._count(written, kv, HoldBook(), archived=dict.fromkeys(range(2), 100))
    finally:
        kv.close()
    assert (dict(waiting.pending), waiting.archive_waiting) == ({"session": 1}, 1)
    assert written.archive_waiting == 0


@pytest.mark.timeout(120)
async def test_a_held_session_that_comes_back_starts_its_next_life_and_both_are_tombstoned(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A returning user's session under a hold: the life the hold keeps past its expiry
    stays kept, the touch after that expiry starts the next life with an expiry of its
    own, and at the release the kept life is tombstoned with no null on expiry.stamped
    (the record lives on), the next life at its own expiry, never early. The service's
    clock runs a minute behind until the release is done, and the touch is dated by the
    wall clock: the next life cannot fall due before the release (with a 3 s ttl it did
    when the release took longer than the rest of it)."""
    retention = '[retention.defaults]\nsession = "3s"\n'
    common, config = _setup(broker, topics, tmp_path, retention)
    assert await _cli("hold", "place", *common, "--org", "acme", "--record-id", "s-1",
                      "--reason", "case 9", "--id", "case-9") == 0  # fmt: skip
    tombstones = ArrivalLog(broker, topics.tombstones)
    key, _ = event("session", "s-1")
    behind = [60_000]
    async with anyio.create_task_group() as tg:
        tg.start_soon(tombstones.follow)
        async with running_service(
            config, broker, clock=lambda: wall_clock_ms() - behind[0]
        ) as service:
            await wait_for(lambda: len(service.holds) == 1)
            t0 = service.clock()
            await produce(broker, [(topics.sessions, *event("session", "s-1", ts=t0))])
            await wait_for(
                lambda: (
                    sum(p.store.counts.held for p in service.processors.values()) >= 1
                    and service.clock() >= t0 + 3000
                ),
                timeout_s=15,
            )
            t1 = wall_clock_ms()  # a minute ahead of the service's clock (within its skew)
            await produce(broker, [(topics.sessions, *event("session", "s-1", op="touch", ts=t1))])
            await wait_for(lambda: service.stats.verdicts["recreated"] >= 1)
            released_at = wall_clock_ms()
            assert await _cli("hold", "release", *common, "case-9") == 0
            await wait_for(lambda: len(tombstones.arrivals) >= 1, timeout_s=15)  # the kept life
            behind[0] = 0  # the next life falls due at its own expiry
            await wait_for(lambda: len(tombstones.arrivals) >= 2, timeout_s=15)
        tg.cancel_scope.cancel()
    assert tombstones.arrivals[0][0] >= released_at  # nothing before the release
    lives = [(at, orjson.loads(r.value)) for at, r in tombstones.arrivals]
    assert [(parse_ts(b["created_at"]), b["reason"]) for _, b in lives] == [
        (t0, "ttl"),
        (t1, "ttl"),
    ]
    assert lives[1][0] >= t1 + 3000  # the next life at its own expiry, never early
    on_stamped = [r for r in await read_all(broker, topics.stamped) if r.key == key]
    bodies = [None if r.value is None else orjson.loads(r.value) for r in on_stamped]
    # The first life; the next, keeping the first for the hold; the next again, the
    # first let go; then the null of its own expiry. No null while the record lived.
    assert [None if b is None else parse_ts(b["created_at"]) for b in bodies] == [
        t0,
        t1,
        t1,
        None,
    ]
    assert bodies[1] is not None
    assert [parse_ts(life["created_at"]) for life in bodies[1]["held_lives"]] == [t0]
    assert bodies[2] is not None
    assert "held_lives" not in bodies[2]


def _archive_lines(directory: Path) -> list[dict[str, object]]:
    return [
        line for path in sorted(directory.glob("*/*.jsonl.gz")) for line in read_lines(str(path))
    ]


@pytest.mark.timeout(120)
async def test_an_erasure_deferred_past_the_next_life_reaches_the_archive(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A record erased under a hold, then created again (its next life) before the
    release: at the release the erased life is tombstoned without a null (the next life
    lives on). The archive reads that tombstone as a life marker, and purge removes the
    erased life's lines and keeps the next life's."""
    common, config = _setup(broker, topics, tmp_path, '[retention.defaults]\nconversation = "1h"\n')
    assert await _cli("hold", "place", *common, "--org", "acme", "--record-id", "c-1",
                      "--reason", "case 10", "--id", "case-10") == 0  # fmt: skip
    archive_dir = tmp_path / "archive"
    stop = anyio.Event()

    def markers() -> list[dict[str, object]]:
        path = archive_dir / "acme" / ERASURES
        return read_lines(str(path)) if path.exists() else []

    async def archive() -> None:
        await archive_topics(broker, archive_dir, topics, f"{topics.prefix}-archive", stop=stop)

    async with anyio.create_task_group() as tg:
        tg.start_soon(archive)
        async with running_service(config, broker) as service:
            await wait_for(lambda: len(service.holds) == 1)
            t0 = wall_clock_ms()
            first = event("conversation", "c-1", ts=t0, data={"text": "first life"})
            await produce(broker, [(topics.conversations, *first)])
            await produce(
                broker, [(topics.conversations, *event("conversation", "c-1", op="delete"))]
            )
            await wait_for(lambda: service.stats.verdicts["held"] >= 1)
            t1 = wall_clock_ms() + 1
            second = event("conversation", "c-1", ts=t1, data={"text": "next life"})
            await produce(broker, [(topics.conversations, *second)])
            await wait_for(lambda: service.stats.verdicts["recreated"] >= 1)
            assert await _cli("hold", "release", *common, "case-10") == 0
            await wait_for(lambda: bool(markers()), timeout_s=15)
            await wait_for(
                lambda: any("next life" in str(x) for x in _archive_lines(archive_dir)),
                timeout_s=15,
            )
        stop.set()
    records = await read_all(broker, topics.tombstones)
    tombstones = [orjson.loads(r.value) for r in records]
    assert [(t["reason"], parse_ts(t["created_at"])) for t in tombstones] == [("explicit", t0)]
    key = first[0]
    assert [r.value for r in await read_all(broker, topics.stamped) if r.key == key].count(
        None
    ) == 0  # no null: it would compact the next life away
    # Where the erasure ended the first life: after its creation, before the next life's,
    # so the stores delete the first life's row only, and the archive its lines only.
    (ended,) = [deleted_at_of(r.headers) for r in records]
    assert ended is not None
    assert t0 <= ended < t1
    (marker,) = markers()
    assert (marker["key"], marker["until"]) == (key.decode(), format_ts(ended))
    before = _archive_lines(archive_dir)
    assert any("first life" in str(line) for line in before)
    purge(str(archive_dir))
    after = [line for line in _archive_lines(archive_dir) if "stamp" in line]
    assert after
    assert not any("first life" in str(line) for line in after)
    assert {parse_ts(line["stamp"]["created_at"]) for line in after} == {t1}  # type: ignore[index]


@pytest.mark.timeout(120)
async def test_an_old_erasure_read_again_under_a_hold_spares_the_ended_next_life(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A record erased (its first life), created again (its second life), which then
    expires; a hold is placed, and the first erasure is read again (a new consumer group,
    a replayed input). Dated before the second life's creation, it names no life: at the
    release it must end at its own time, and the second life, kept by the archive at its
    expiry, must stay there. It went out with the second life's end as its
    ``expiry-deleted-at`` and an explicit null on ``expiry.stamped``: ``archive purge``
    then removed the second life's lines too, which no erasure had named. The second
    life's null follows it again, not its ttl tombstone, which went out at its expiry."""
    common, config = _setup(broker, topics, tmp_path, RETENTION)
    archive_dir = tmp_path / "archive"
    stop = anyio.Event()

    async def archive() -> None:
        await archive_topics(broker, archive_dir, topics, f"{topics.prefix}-archive", stop=stop)

    t0 = wall_clock_ms()
    first = event("conversation", "c-9", ts=t0, data={"text": "first life"})
    erasure = event("conversation", "c-9", op="delete", ts=t0 + 10)
    second = event("conversation", "c-9", ts=t0 + 20, data={"text": "second life"})
    key = first[0]
    async with anyio.create_task_group() as tg:
        tg.start_soon(archive)
        async with running_service(config, broker) as service:
            await produce(broker, [(topics.conversations, *m) for m in (first, erasure, second)])
            stats = service.stats  # explicit and ttl tombstones, counted apart
            await wait_for(lambda: stats.tombstones >= 1, timeout_s=15)  # the second expired
            assert stats.explicit == 1
            assert await _cli("hold", "place", *common, "--org", "acme", "--record-id", "c-9",
                              "--reason", "case 11", "--id", "case-11") == 0  # fmt: skip
            await wait_for(lambda: len(service.holds) == 1)
            await produce(broker, [(topics.conversations, *erasure)])  # read again
            await wait_for(lambda: service.stats.verdicts["held"] >= 1)
            assert (stats.explicit, stats.tombstones) == (1, 1)  # kept
            assert await _cli("hold", "release", *common, "case-11") == 0

            async def released() -> bool:  # the release's null is on expiry.stamped
                stamped = await read_all(broker, topics.stamped)
                return [r.value for r in stamped if r.key == key].count(None) >= 3

            await wait_until(released, timeout_s=15, what="the release's null")
            await wait_for(
                lambda: any("second life" in str(x) for x in _archive_lines(archive_dir)),
                timeout_s=15,
            )
            ends: dict[tuple[str, int], int] = {}
            for topic in (topics.stamped, topics.tombstones):
                for r in await read_all(broker, topic):
                    ends[topic, r.partition] = max(ends.get((topic, r.partition), 0), r.offset + 1)

            async def archived() -> bool:
                group = f"{topics.prefix}-archive"
                done = {topic: await archived_offsets(broker, group, topic) for topic, _ in ends}
                return all(done[topic].get(p, 0) >= end for (topic, p), end in ends.items())

            await wait_until(archived, what="the archive's commits of both topics")
        stop.set()
    records = [r for r in await read_all(broker, topics.tombstones) if r.key == key]
    sent = [
        (orjson.loads(r.value)["reason"], orjson.loads(r.value)["created_at"] is None,
         deleted_at_of(r.headers))
        for r in records
    ]  # fmt: skip
    second_end = t0 + 20 + 2_000 - 1
    assert sent == [
        ("explicit", False, t0 + 10),  # the first life's erasure
        ("ttl", False, second_end),  # the second life's expiry
        ("explicit", True, t0 + 10),  # read again: no life, its own time
    ]  # and not the second life's ttl tombstone again: its null alone follows
    assert (stats.explicit, stats.tombstones) == (2, 1)
    nulls = [reason_of(r.headers) for r in await read_all(broker, topics.stamped)
             if r.key == key and r.value is None]  # fmt: skip
    assert nulls == ["explicit", "ttl", "ttl"]  # no explicit null after the second life
    purge(str(archive_dir))
    kept = [line for line in _archive_lines(archive_dir) if "stamp" in line]
    assert any("second life" in str(line) for line in kept)
    assert not any("first life" in str(line) for line in kept)


async def test_hold_place_refuses_what_the_service_would_and_a_live_id(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hold the service would dead-letter (while the audit trail called it placed), a
    category no record has (a hold that keeps nothing), and an id in use (placing it again
    replaced a live hold, with no release on the audit trail) are refused; nothing is
    written."""
    common, _ = _setup(broker, topics, tmp_path, RETENTION)
    assert await _cli("hold", "place", *common, "--org", "legal", "--reason", "case 43",
                      "--id", "h-legal") == 0  # fmt: skip
    capsys.readouterr()
    refused = [
        (("--org", "", "--reason", "x"), "--org must be a string of 1 to 512 characters"),
        (("--org", "acme", "--reason", ""), "--reason must be a string of 1 to 512 characters"),
        (("--org", "acme", "--reason", "x", "--record-id", "r" * 513),
         "--record-id must be a string of 1 to 512 characters"),
        (("--org", "acme", "--reason", "x", "--category", "sesion"),
         ": a hold on it would keep nothing; did you mean 'session'?"),
        (("--org", "acme", "--reason", "x", "--id", "h-legal"),
         "hold 'h-legal' is active (org=legal, reason: case 43); placing it again would "
         "replace it: release it first (stream-expiry hold release h-legal) or choose another "
         "--id"),
    ]  # fmt: skip
    for argv, message in refused:
        assert await _cli("hold", "place", *common, *argv) == 2, argv
        assert message in capsys.readouterr().err
    held = await read_all(broker, topics.holds)
    assert [r.key for r in held] == [b"h-legal"]
    assert len(await read_all(broker, topics.audit)) == 1
    assert await _cli("hold", "release", *common, "h-legal") == 0
    capsys.readouterr()
    assert await _cli("hold", "release", *common, "h-legal") == 1  # released already
    assert capsys.readouterr().err.strip() == (
        "stream-expiry hold: no active hold 'h-legal'; see `stream-expiry hold list`"
    )
    assert await _cli("hold", "place", *common, "--org", "acme", "--reason", "case 44",
                      "--id", "h-legal", "--category", "session") == 0  # fmt: skip
    capsys.readouterr()
    # A mistyped id names the active one it is closest to.
    assert await _cli("hold", "release", *common, "h-legl") == 1
    assert capsys.readouterr().err.strip() == (
        "stream-expiry hold: no active hold 'h-legl' (did you mean 'h-legal'?); "
        "see `stream-expiry hold list`"
    )


async def test_hold_place_names_the_org_a_policy_update_or_a_hold_spells_in_another_case(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial: ``hold place --org Beta`` of ``beta``'s records said nothing, and the hold
    kept nothing (org ids are case-sensitive). The config file names no org here; a policy
    update naming ``beta``, or an active hold on ``gamma``, is what the command can read
    cheaply: each is named. The hold is placed all the same."""
    common, _ = _setup(broker, topics, tmp_path, RETENTION)
    update = {"scope": "org", "org": "beta", "ttl": {"conversation": "1h"}}
    await produce(broker, [(topics.policies, b"org/beta", orjson.dumps(update))])
    assert await _cli("hold", "place", *common, "--org", "Beta", "--reason", "case 8") == 0
    assert (
        "warning: no org or bot setting (config file, policy update) names org 'Beta': did "
        "you mean 'beta'? (org ids are case-sensitive) The hold keeps the records of 'Beta' "
        "only; release it if that is not what you meant"
    ) in capsys.readouterr().err
    assert await _cli("hold", "place", *common, "--org", "gamma", "--reason", "case 9",
                      "--id", "h-gamma") == 0  # fmt: skip
    assert "warning" not in capsys.readouterr().err
    assert await _cli("hold", "place", *common, "--org", "GAMMA", "--reason", "case 9") == 0
    assert (
        "warning: no setting and no active hold names org 'GAMMA', but the active hold "
        "'h-gamma' is on org 'gamma': did you mean 'gamma'? (org ids are case-sensitive)"
    ) in capsys.readouterr().err
    assert len(await read_all(broker, topics.holds)) == 3  # placed all the same


async def test_hold_place_says_when_it_created_the_holds_topic(
    broker: str,
    topics: TopicSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A holds topic named other than the services' (a typo, a --config left out where
    they rename it) was created without a word, and the command printed the hold's id as
    for any other: a hold that nothing reads (a trial). The creation is said."""
    common, _ = _setup(broker, topics, tmp_path, RETENTION)
    assert await _cli("hold", "place", *common, "--org", "legal", "--reason", "case 1") == 0
    assert "created the holds topic" not in capsys.readouterr().err  # the services' topic
    monkeypatch.setenv("STREAM_EXPIRY_TOPICS_HOLDS", f"{topics.holds}.typo")
    assert await _cli("hold", "place", *common, "--org", "legal", "--reason", "case 2") == 0
    said = capsys.readouterr()
    assert said.out.startswith("hold-")  # the id, for scripts, as before
    assert f"created the holds topic '{topics.holds}.typo', which did not exist" in said.err


async def test_hold_list_on_a_holds_topic_that_does_not_exist_says_so(
    broker: str,
    topics: TopicSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`hold list` under a config that names a holds topic the cluster does not have (a
    typo, a --config left out where the services rename it) printed "no active legal
    holds", exit 0: an officer read the active holds as none (a compliance trial). It
    stops with the topic's name and what to give, exit 2, as `archive purge` does."""
    common, _ = _setup(broker, topics, tmp_path, RETENTION)
    assert await _cli("hold", "place", *common, "--org", "legal", "--reason", "case 1") == 0
    capsys.readouterr()
    monkeypatch.setenv("STREAM_EXPIRY_TOPICS_HOLDS", f"{topics.holds}.typo")
    assert await _cli("hold", "list", *common) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err.startswith(
        f"stream-expiry hold: the holds topic '{topics.holds}.typo' (from environment "
        "variable STREAM_EXPIRY_TOPICS_HOLDS) does not exist on the cluster, so the legal "
        "holds cannot be read: set $STREAM_EXPIRY_TOPICS_HOLDS to the services' [topics] "
        "holds, or unset it"
    )
    assert await missing_topics(broker, [f"{topics.holds}.typo"]) == [f"{topics.holds}.typo"]
    monkeypatch.delenv("STREAM_EXPIRY_TOPICS_HOLDS")
    assert await _cli("hold", "list", *common) == 0
    assert "org=legal" in capsys.readouterr().out


@pytest.mark.timeout(60)
async def test_a_hold_acknowledged_before_a_records_expiry_keeps_it(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The firing read the holds only through the loop, between reads of the inputs (every
    0.2 s at most when idle): a trial saw holds acknowledged 0.1-0.2 s before their
    records' expiry keep none. Now the firing reads the holds to their end before it fires
    what fell due. Here the loop looks at the control topics only every 5 s when idle,
    and the record falls due (the service's clock moves on ten minutes) right after its hold
    is acknowledged: the firing alone can have read it."""
    monkeypatch.setattr(service_module, "IDLE_WAIT_MS", 5_000)
    offset = [0]
    _common, config = _setup(
        broker, topics, tmp_path, '[retention.defaults]\nconversation = "10m"\n'
    )
    async with running_service(config, broker, clock=lambda: wall_clock_ms() + offset[0]) as svc:
        t0 = wall_clock_ms()
        await produce(broker, [(topics.conversations, *event("conversation", "kept", ts=t0))])
        await wait_for(lambda: svc.stats.stamped >= 1)  # the loop has looked, then waits
        hold = Hold("case-9", "acme", None, None, None, "kept", "case 9", t0)
        async with producer(broker) as prod:
            await prod.send_and_wait(topics.holds, encode_hold(hold), key=b"case-9")
        offset[0] = 600_000 + 1_000  # due a second ago: after the hold was acknowledged

        def held() -> int:
            return sum(p.store.counts.held for p in svc.processors.values())

        await wait_for(lambda: held() >= 1 or svc.stats.tombstones >= 1, timeout_s=4)
        assert svc.stats.tombstones == 0
        assert held() == 1


async def test_hold_list_says_who_placed_each_hold_and_unknown_where_nothing_says(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A compliance officer listing the holds asks who placed each one: ``hold place``
    takes ``--by`` and writes it on expiry.audit, and ``hold list`` did not show it. The
    hold's own message (the contract's fields) does not carry it, so ``hold list`` reads it
    from the hold's ``hold_placed`` entry (the latest placement, not one released before);
    a hold whose entry names nobody (an older version's) or that has none (a tool that
    wrote expiry.holds alone) is listed as placed by someone unknown, not refused."""
    common, _config = _setup(broker, topics, tmp_path, RETENTION)
    place = ("hold", "place", *common, "--org", "acme", "--reason", "case 1")
    assert await _cli(*place, "--id", "case-1", "--by", "Jane Roe") == 0
    assert await _cli("hold", "release", *common, "case-1") == 0
    assert await _cli(*place, "--id", "case-1", "--by", "Ann Lee") == 0  # placed again
    t0 = wall_clock_ms()
    older = Hold("case-2", "acme", None, None, None, None, "case 2", t0)
    bare = Hold("case-3", "acme", "b1", None, None, None, "case 3", t0)
    async with producer(broker) as prod:
        for hold in (older, bare):
            key = hold.hold_id.encode()
            await prod.send_and_wait(topics.holds, encode_hold(hold), key=key)
        # An older version's entry: no `by`.
        said = codec.encode_hold_audit("hold_placed", older.as_dict(), t0)
        await prod.send_and_wait(topics.audit, said, key=b"case-2")
    capsys.readouterr()
    assert await _cli("hold", "list", *common, "--json") == 0
    listed = {h["hold_id"]: h for h in orjson.loads(capsys.readouterr().out)}
    assert {hold_id: h["by"] for hold_id, h in listed.items()} == {
        "case-1": "Ann Lee", "case-2": None, "case-3": None,
    }  # fmt: skip
    assert list(listed["case-1"])[-1] == "by"  # after the keys it had, in their order
    assert await _cli("hold", "list", *common) == 0
    lines = capsys.readouterr().out.splitlines()
    placed_1 = listed["case-1"]["placed_at"]
    assert lines[0] == f"case-1  org=acme  placed {placed_1} by Ann Lee  reason: case 1"
    assert lines[1] == f"case-2  org=acme  placed {format_ts(t0)} by (unknown)  reason: case 2"
    assert lines[2].startswith(f"case-3  org=acme bot=b1  placed {format_ts(t0)} by (unknown)")


async def test_status_says_who_placed_each_hold_and_unknown_where_nothing_says(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status`` lists the active holds, and an officer reading it asked who placed each,
    which only ``hold list`` said: it reads the same ``hold_placed`` entry on expiry.audit
    (the latest placement of the id), and says unknown for a hold whose entry names nobody
    or that has none; JSON ``by``, the last key of each hold entry."""
    common, _config = _setup(broker, topics, tmp_path, RETENTION)
    place = ("hold", "place", *common, "--org", "acme", "--reason", "case 1")
    assert await _cli(*place, "--id", "case-1", "--by", "Jane Roe") == 0
    assert await _cli("hold", "release", *common, "case-1") == 0
    assert await _cli(*place, "--id", "case-1", "--by", "Ann Lee") == 0  # placed again
    bare = Hold("case-2", "acme", None, None, None, None, "case 2", wall_clock_ms())
    async with producer(broker) as prod:
        await prod.send_and_wait(topics.holds, encode_hold(bare), key=b"case-2")
    capsys.readouterr()
    assert await _cli("status", *common, "--json") == 0
    holds = {h["hold_id"]: h for h in orjson.loads(capsys.readouterr().out)["holds"]}
    assert {hold_id: h["by"] for hold_id, h in holds.items()} == {
        "case-1": "Ann Lee", "case-2": None,
    }  # fmt: skip
    assert list(holds["case-1"])[-2:] == ["records_matched", "by"]
    assert await _cli("status", *common) == 0
    text = capsys.readouterr().out
    assert "case-1: 0 records held, 0 matched (case 1), placed by Ann Lee\n" in text
    assert "case-2: 0 records held, 0 matched (case 2), placed by (unknown)\n" in text


async def test_hold_list_prints_what_a_producer_chose_without_driving_the_terminal(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Anyone who writes to expiry.holds chooses the id, the scope and the reason: their
    escape sequences and newlines reached the terminal of whoever ran ``hold list``."""
    common, _config = _setup(broker, topics, tmp_path, RETENTION)
    assert await _cli("hold", "place", *common, "--org", "acme\x1b]0;title\x07",
                      "--reason", "x\x1b[2J\nfake line", "--id", "h\x1b[31m") == 0  # fmt: skip
    assert capsys.readouterr().out == "h\\x1b[31m\n"  # the id placed, escaped too
    assert await _cli("hold", "list", *common) == 0
    out = capsys.readouterr().out
    # The id as printed cannot be typed back: its key as hex, which `hold release` takes.
    hexed = b"h\x1b[31m".hex()
    assert re.fullmatch(
        r"h\\x1b\[31m  org=acme\\x1b\]0;title\\x07  placed \S+ by \S+  reason: x\\x1b\[2J\\nfake line"
        f"  key {hexed} \\(hold release --key-hex {hexed}\\)\n",
        out,
    ), out


@pytest.mark.timeout(120)
async def test_a_hold_keyed_by_bytes_that_are_not_utf8_is_listed_and_released_by_its_key(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hold keyed by bytes that are not UTF-8 (another tool's) is read as its id with
    U+FFFD, and `hold release` with that id nulled the id's UTF-8, another key: the hold
    looked released until compaction removed that null, and came back at a start; and
    no form of the command named the key itself. `hold list` now shows such a key as hex,
    `hold release --key-hex` takes it, and a release by the id nulls the key read as it.
    So does one by an id in doubt, keyed so, and one by a key over 512 characters."""
    common, _ = _setup(broker, topics, tmp_path, RETENTION)
    keys = {"placed": b"case-\xff1", "doubted": b"case-\xfe2", "long": b"\xff" + b"k" * 600}
    placed = b'{"org": "acme", "reason": "case 1"}'
    async with producer(broker) as prod:
        await prod.send_and_wait(topics.holds, placed, key=keys["placed"])
        await prod.send_and_wait(topics.holds, b"{", key=keys["doubted"])
        await prod.send_and_wait(topics.holds, placed, key=keys["long"])
    capsys.readouterr()
    assert await _cli("hold", "list", *common, "--json") == 0
    listed = {h["hold_id"]: h["key_hex"] for h in orjson.loads(capsys.readouterr().out)}
    assert sorted(listed.values()) == sorted(k.hex() for k in keys.values())
    assert await _cli("hold", "list", *common) == 0
    text = capsys.readouterr().out
    for key in keys.values():
        assert f"  key {key.hex()} (hold release --key-hex {key.hex()})\n" in text

    async def nulls() -> set[bytes]:
        return {r.key for r in await read_all(broker, topics.holds) if r.value is None}

    # By the id as `hold list` shows it: the null goes under the hold's own key.
    assert await _cli("hold", "release", *common, "case-\ufffd1") == 0
    assert await nulls() == {keys["placed"]}
    assert await _cli("hold", "release", *common, "--key-hex", keys["doubted"].hex()) == 0
    assert await _cli("hold", "release", *common, "--key-hex", keys["long"].hex()) == 0
    assert await nulls() == set(keys.values())
    capsys.readouterr()
    assert await _cli("hold", "list", *common) == 0
    assert capsys.readouterr().out == "no active legal holds\n"


async def _stamped_under_a_hold(
    broker: str,
    topics: TopicSet,
    tmp_path: Path,
    record_id: str,
    hold_id: str,
    events: list[tuple[bytes, bytes]],
    *,
    until: str,
) -> None:
    """Under a ten-minute policy for conversations, a hold ``hold_id`` placed on the
    conversation ``record_id``, then the service runs ``events`` and stops once that
    record's latest stamp holds the field ``until``."""
    common, config = _setup(
        broker, topics, tmp_path, '[retention.defaults]\nconversation = "10m"\n'
    )
    assert await _cli("hold", "place", *common, "--org", "acme", "--record-id", record_id,
                      "--reason", "a case", "--id", hold_id) == 0  # fmt: skip
    key, _ = event("conversation", record_id)
    async with running_service(config, broker) as service:
        await wait_for(lambda: len(service.holds) == 1)
        await produce(broker, [(topics.conversations, *e) for e in events])
        await wait_for(lambda: service.stats.events >= len(events))

        async def in_latest() -> bool:
            records = await read_all(broker, topics.stamped)
            mine = [r for r in records if r.key == key and r.value is not None]
            return bool(mine) and until in orjson.loads(mine[-1].value)

        await wait_until(in_latest, what=f"the stamp with {until}")


@pytest.mark.timeout(120)
async def test_replay_from_the_inputs_keeps_a_held_life_for_its_release(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A conversation created, erased under a hold (the erasure deferred) and created again:
    its stamp keeps the held life. Replay from the inputs runs its processors without
    holds, so its state of the record had no held life, and the stamp it published under a
    new policy dropped it: at the release no tombstone came at all (a trial). It keeps the
    stamp's held lives, as replay from the stamps does, and the release tombstones the
    erased life (``explicit``)."""
    minute = 60_000
    key, _ = event("conversation", "d1")
    now = wall_clock_ms()
    await _stamped_under_a_hold(
        broker, topics, tmp_path, "d1", "case-4",
        [
            event("conversation", "d1", ts=now - 8 * minute),
            event("conversation", "d1", op="delete", ts=now - minute),
            event("conversation", "d1", ts=now - minute // 2),
        ],
        until="held_lives",
    )  # fmt: skip
    shorter = '[retention.defaults]\nconversation = "5m"\n'
    common, config = _setup(broker, topics, tmp_path, shorter)
    report = await replay(config, broker, environ={}, from_inputs=True)
    assert report.counts()["earlier"] == 1
    mine = [r for r in await read_all(broker, topics.stamped) if r.key == key]
    latest = orjson.loads(mine[-1].value)
    assert parse_ts(latest["expires_at"]) == now - minute // 2 + 5 * minute  # replay's
    assert [parse_ts(life["created_at"]) for life in latest["held_lives"]] == [now - 8 * minute]
    tombstones = ArrivalLog(broker, topics.tombstones)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tombstones.follow)
        async with running_service(config, broker) as service:
            await wait_for(lambda: len(service.holds) == 1)
            assert await _cli("hold", "release", *common, "case-4") == 0
            await wait_for(lambda: len(tombstones.arrivals) >= 1, timeout_s=15)
        tg.cancel_scope.cancel()
    (body,) = [orjson.loads(r.value) for _, r in tombstones.arrivals]
    assert (body["reason"], parse_ts(body["created_at"])) == ("explicit", now - 8 * minute)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("from_inputs", [False, True], ids=["from-stamps", "from-inputs"])
async def test_replay_leaves_an_erasure_a_hold_deferred_to_the_release(
    broker: str, topics: TopicSet, tmp_path: Path, from_inputs: bool
) -> None:
    """A conversation erased under a hold: its erasure waits for the release, whatever the
    policy says of its expiry. Replay from the inputs saw it erased (its processors know
    no holds) and left it out; replay from the stamps counted it ``due_now`` under a
    shorter policy and stamped it again. Both leave it out now, and the release erases it
    (``explicit``)."""
    minute = 60_000
    key, _ = event("conversation", "e1")
    now = wall_clock_ms()
    await _stamped_under_a_hold(
        broker, topics, tmp_path, "e1", "case-5",
        [
            event("conversation", "e1", ts=now - 8 * minute),
            event("conversation", "f1", ts=now - 8 * minute),
            event("conversation", "e1", op="delete", ts=now - minute),
        ],
        until="erase_requested_at",
    )  # fmt: skip
    before = {(r.partition, r.offset) for r in await read_all(broker, topics.stamped)}
    shorter = '[retention.defaults]\nconversation = "5m"\n'
    common, config = _setup(broker, topics, tmp_path, shorter)
    report = await replay(config, broker, environ={}, from_inputs=from_inputs)
    # f1 (created 8 minutes ago) is due under 5 minutes; e1 is left to its erasure.
    counts = report.counts()
    assert (counts["records"], counts["due_now"]) == (1, 1), counts
    stamped = await read_all(broker, topics.stamped)
    published = [r.key for r in stamped if (r.partition, r.offset) not in before]
    assert published == [event("conversation", "f1")[0]]
    tombstones = ArrivalLog(broker, topics.tombstones)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tombstones.follow)
        async with running_service(config, broker) as service:
            await wait_for(lambda: len(service.holds) == 1)
            await wait_for(lambda: len(tombstones.arrivals) >= 1, timeout_s=15)  # f1
            assert await _cli("hold", "release", *common, "case-5") == 0
            await wait_for(lambda: len(tombstones.arrivals) >= 2, timeout_s=15)
        tg.cancel_scope.cancel()
    by_key = {r.key: orjson.loads(r.value)["reason"] for _, r in tombstones.arrivals}
    assert by_key == {key: "explicit", event("conversation", "f1")[0]: "ttl"}


async def test_a_hold_goes_where_kafkas_partitioner_puts_it_and_a_release_clears_it_everywhere(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hold place` wrote to the partition CRC-32 picks, while any other producer (Java,
    aiokafka, librdkafka) puts an id where murmur2 does: a hold placed by the command and
    released by a tool sat on two partitions, and the service kept or let go its records
    by the order it read them in (a trial: 0 of 50 deleted, 2 runs in 3). The command now
    places as Kafka's default partitioner does, and a release nulls the id on every
    partition that places it: a hold an earlier version placed is released too."""
    from aiokafka import AIOKafkaProducer

    common, _ = _setup(broker, topics, tmp_path, RETENTION)
    differ = [
        i.encode()
        for i in (f"case-{n}" for n in range(64))
        if zlib.crc32(i.encode()) % 2 != partition_for(i.encode(), 2)
    ]
    new, old = differ[0], differ[1]
    assert await _cli("hold", "place", *common, "--org", "acme", "--reason", "case 1",
                      "--id", new.decode()) == 0  # fmt: skip
    async with producer(broker) as earlier:  # CRC-32, as the command partitioned before
        value = encode_hold(Hold(old.decode(), "acme", None, None, None, None, "case 2", 0))
        await earlier.send_and_wait(topics.holds, key=old, value=value)
    on = {r.key: r.partition for r in await read_all(broker, topics.holds)}
    assert on == {new: partition_for(new, 2), old: zlib.crc32(old) % 2}
    plain = AIOKafkaProducer(bootstrap_servers=broker)  # Kafka's default partitioner
    await plain.start()
    try:
        await plain.send_and_wait(topics.holds, key=new, value=None)
    finally:
        await plain.stop()
    assert await _cli("hold", "release", *common, old.decode()) == 0
    nulls = sorted(
        (r.key, r.partition) for r in await read_all(broker, topics.holds) if r.value is None
    )
    assert nulls == [(new, partition_for(new, 2)), (old, 0), (old, 1)]
    capsys.readouterr()
    assert await _cli("hold", "list", *common) == 0
    assert capsys.readouterr().out == "no active legal holds\n"


@pytest.mark.timeout(120)
async def test_a_release_that_leaves_its_hold_placed_elsewhere_is_said_and_no_other(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A null on one partition of a hold another partition still places is said, once its
    read is applied: at the start, after the whole catch-up, and later, after the batch.
    A hold nulled on every partition is not: the start said so for it (a review), when
    it applied one partition's null before it read the other's."""
    _, config = _setup(broker, topics, tmp_path, RETENTION)

    def hold(hold_id: str) -> bytes:
        return encode_hold(Hold(hold_id, "acme", None, None, None, None, "case", 0))

    async def write(hold_id: str, value: bytes | None, *partitions: int) -> None:
        async with producer(broker) as prod:
            for p in partitions:
                await prod.send_and_wait(
                    topics.holds, key=hold_id.encode(), value=value, partition=p
                )

    def said(hold_id: str) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith(f"legal hold {hold_id} released at ")
        ]

    for hold_id in ("everywhere", "half"):
        await write(hold_id, hold(hold_id), 0, 1)
    await write("everywhere", None, 0, 1)
    await write("half", None, 0)
    caplog.set_level("INFO", logger="stream_expiry.service")
    async with running_service(config, broker) as service:
        await wait_for(lambda: service.holds.get("half") is not None)
        assert said("half") == [
            f"legal hold half released at {topics.holds}[0]@3 stays active: it is placed on "
            "partition 1 too (written with another partitioner than Kafka's default); release "
            "it with `stream-expiry hold release half`, which nulls it on every partition"
        ]
        await write("late", hold("late"), 0, 1)
        await wait_for(lambda: service.holds.get("late") is not None)
        await write("late", None, 1)
        await wait_for(lambda: bool(said("late")))
        assert service.holds.get("late") is not None
        assert said("everywhere") == []


async def test_archive_purge_reads_the_holds_and_keeps_what_they_match(
    broker: str,
    topics: TopicSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An erasure asked just before a hold was placed: the archive's purge, later, removed
    what the hold keeps (a trial). `archive purge` reads the active holds and keeps the
    erased lines they match until the release; with no broker to read them from it stops,
    rather than purge what a hold may keep."""
    common, _ = _setup(broker, topics, tmp_path, RETENTION)
    archive_dir = tmp_path / "archive"
    ident = Identity("lit", "_", "live", "conversation", "c1")
    created = wall_clock_ms() - 60_000
    stamp = Stamp(ident, created, created + 3_600_000, 3_600_000, "default")
    ArchiveWriter(str(archive_dir)).write(
        [
            Entry(ident.key.encode(), encode_stamp(stamp, {"text": "evidence"}), 0, 0, created),
            Entry(ident.key.encode(), None, 0, 1, created + 1_000),  # its erasure
        ]
    )
    assert await _cli("hold", "place", *common, "--org", "lit", "--reason", "L-1",
                      "--id", "h-lit") == 0  # fmt: skip
    capsys.readouterr()
    purge_argv = ("archive", "purge", "--dir", str(archive_dir), *common)
    assert await _cli(*purge_argv) == 0
    assert "1 erased line kept under a legal hold, purged after its release" in (
        capsys.readouterr().out
    )
    kept = [line for line in _archive_lines(archive_dir) if "stamp" in line]
    assert [line["key"] for line in kept] == [ident.key]
    assert await _cli("hold", "release", *common, "h-lit") == 0
    capsys.readouterr()
    assert await _cli(*purge_argv) == 0
    assert capsys.readouterr().out.startswith(
        "purged 1 erased line from 1 file; 0 lines left in it"
    )
    unreachable = ("--config", common[1], "--bootstrap-servers", "127.0.0.1:1")
    assert await _cli("archive", "purge", "--dir", str(archive_dir), *unreachable) == 3
    # A holds topic the cluster does not have (another config's name, a typo) is not "no
    # holds": it would purge what the services' holds keep.
    monkeypatch.setenv("STREAM_EXPIRY_TOPICS_HOLDS", f"{topics.holds}.typo")
    capsys.readouterr()
    assert await _cli(*purge_argv) == 2
    assert (
        f"the holds topic '{topics.holds}.typo' (from environment variable "
        "STREAM_EXPIRY_TOPICS_HOLDS) does not exist"
    ) in capsys.readouterr().err


async def test_archive_purge_refuses_while_a_hold_id_is_in_doubt(
    broker: str,
    topics: TopicSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A hold id whose latest message cannot be read (compaction removed the valid
    placement before it) holds nothing as read: a purge erased the archived line it was
    meant to keep, perhaps its last copy, while the service refused to start for that
    id. The purge refuses too (exit 2), naming the id and the two commands that settle
    it, and touches no file; once the hold is placed again it purges, keeping the line."""
    common, _ = _setup(broker, topics, tmp_path, RETENTION)
    archive_dir = tmp_path / "archive"
    ident = Identity("lit", "_", "live", "conversation", "c1")
    created = wall_clock_ms() - 60_000
    stamp = Stamp(ident, created, created + 3_600_000, 3_600_000, "default")
    ArchiveWriter(str(archive_dir)).write(
        [
            Entry(ident.key.encode(), encode_stamp(stamp, {"text": "evidence"}), 0, 0, created),
            Entry(ident.key.encode(), None, 0, 1, created + 1_000),  # its erasure
        ]
    )
    before = _archive_lines(archive_dir)
    twice = b'{"org": "lit", "reason": "L-2", "org": "other"}'
    async with producer(broker) as prod:
        sent = await prod.send_and_wait(topics.holds, twice, key=b"h-lit")
    where = f"{topics.holds}[{sent.partition}]@{sent.offset}"
    capsys.readouterr()
    purge_argv = ("archive", "purge", "--dir", str(archive_dir), *common)
    assert await _cli(*purge_argv) == 2
    said = capsys.readouterr().err
    assert (
        f"the latest message of 1 legal hold id on {topics.holds!r} cannot be read, so what "
        f"it holds is unknown: 'h-lit' at {where}: invalid_field"
    ) in said
    assert "Purged now, the purge would erase the archived lines each was meant to keep" in said
    assert "`stream-expiry hold place --id ID --org ORG" in said
    assert "`stream-expiry hold release ID`; then purge again" in said
    assert _archive_lines(archive_dir) == before  # nothing erased
    assert await _cli("hold", "place", *common, "--org", "lit", "--reason", "L-2",
                      "--id", "h-lit") == 0  # fmt: skip
    capsys.readouterr()
    assert await _cli(*purge_argv) == 0
    assert "1 erased line kept under a legal hold" in capsys.readouterr().out
    assert [line["key"] for line in _archive_lines(archive_dir) if "stamp" in line] == [ident.key]


async def _keep_a_record_for_a_hold(
    broker: str, topics: TopicSet, config: Config, common: tuple[str, ...]
) -> None:
    """A hold on org acme, and a record of it the service keeps past its expiry (2 s),
    in its store; the service stopped."""
    assert await _cli("hold", "place", *common, "--org", "acme", "--reason", "case 9") == 0
    async with running_service(config, broker) as service:
        await wait_for(lambda: len(service.holds) == 1)
        await produce(broker, [(topics.conversations, *event("conversation", "c1"))])
        await wait_for(
            lambda: sum(p.store.counts.held for p in service.processors.values()) == 1,
            timeout_s=15,
        )


async def _placed_again_the_record_stays_kept(
    broker: str, topics: TopicSet, tmp_path: Path, config: Config
) -> None:
    """The hold placed again with ``hold place`` on ``config``'s holds topic (and audit
    trail): the service starts on it, keeps the record of :func:`_keep_a_record_for_a_hold`,
    and tombstones nothing."""
    cfg = tmp_path / "placed-again.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), RETENTION).replace(
        f'holds = "{topics.holds}"', f'holds = "{config.topics.holds}"'
    ).replace(f'audit = "{topics.audit}"', f'audit = "{config.topics.audit}"'))  # fmt: skip
    again = ("--config", str(cfg), "--bootstrap-servers", broker)
    assert await _cli("hold", "place", *again, "--org", "acme", "--reason", "case 9") == 0
    async with running_service(config, broker) as service:
        await wait_for(lambda: len(service.holds) == 1)
        await wait_for(
            lambda: sum(p.store.counts.held for p in service.processors.values()) == 1,
            timeout_s=15,
        )
    assert await read_all(broker, topics.tombstones) == []


def _on_holds_topic(config: Config, holds: str, audit: str | None = None) -> Config:
    """``config`` with another holds topic (and audit trail)."""
    topics = dataclasses.replace(config.topics, holds=holds, audit=audit or config.topics.audit)
    return dataclasses.replace(config, topics=topics)


@pytest.mark.timeout(150)
async def test_an_empty_holds_topic_beside_an_audit_trail_of_holds_stops_the_start(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A mistyped ``[topics] holds`` naming a topic that exists and has never had a
    message (made by an earlier sink given the same name) was read as "every hold
    released", and the start let go of what the holds kept (a trial). The audit trail
    has the holds' entries: the start stops before the group is joined, whatever the
    stores hold (here a state directory of its own: a member that restores the
    partitions from the changelog), and makes nothing."""
    common, config = _setup(broker, topics, tmp_path, RETENTION)
    await _keep_a_record_for_a_hold(broker, topics, config, common)
    typo = f"{topics.holds}.typo"
    await ensure_topics(broker, [typo], partitions=2)
    mistyped = dataclasses.replace(
        _on_holds_topic(config, typo), state_dir=str(tmp_path / "another-state")
    )
    stopped = service_module.Service(mistyped, bootstrap_servers=broker, environ={})
    with pytest.raises(ConfigurationError) as refused:
        with anyio.fail_after(30):
            await stopped.run(anyio.Event())
    # The hold's placement, and the deferral of the record's expiry.
    assert str(refused.value).startswith(
        f"the legal holds topic {typo!r} has never had a message, but the audit trail "
        f"{topics.audit!r} has 2 entries (holds placed or released, deletions they deferred)"
    )
    assert "Check [topics] holds (and STREAM_EXPIRY_TOPICS_HOLDS)" in str(refused.value)
    assert stopped.stats.assignments == 0  # refused before joining the group
    assert await read_all(broker, topics.tombstones) == []


@pytest.mark.timeout(90)
async def test_one_holds_entry_on_the_audit_trail_stops_a_start_on_an_empty_holds_topic(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """One hold placed (the audit trail's one entry, its placement) is a deployment whose
    holds are on another topic as surely as many: the start on an empty holds topic stops,
    and says "1 entry". Mutant ``entries > 1`` let it start on the empty topic, reading
    the hold as released (the review of round 42's mutation report)."""
    common, config = _setup(broker, topics, tmp_path, RETENTION)
    assert await _cli("hold", "place", *common, "--org", "acme", "--reason", "case 9") == 0
    typo = f"{topics.holds}.typo"
    await ensure_topics(broker, [typo], partitions=2)
    stopped = service_module.Service(
        _on_holds_topic(config, typo), bootstrap_servers=broker, environ={}
    )
    with pytest.raises(ConfigurationError) as refused:
        with anyio.fail_after(30):
            await stopped.run(anyio.Event())
    assert str(refused.value).startswith(
        f"the legal holds topic {typo!r} has never had a message, but the audit trail "
        f"{topics.audit!r} has 1 entry (holds placed or released, deletions they deferred)"
    )


@pytest.mark.timeout(90)
async def test_a_start_with_an_empty_changelog_makes_a_missing_holds_topic(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A first start (or a cluster rebuilt without its changelog) has no hold to lose: a
    holds topic that does not exist is made, and the service runs. Mutant ``if True`` (the
    changelog's messages not looked at) refused every first start of a deployment whose
    holds topic was not made beforehand (the review of round 42's mutation report)."""
    _common, config = _setup(broker, topics, tmp_path, RETENTION)
    new = f"{topics.holds}.new"
    assert await missing_topics(broker, [new]) == [new]
    async with running_service(_on_holds_topic(config, new), broker) as service:
        assert service.stats.assignments > 0
    assert await missing_topics(broker, [new]) == []


@pytest.mark.timeout(150)
async def test_an_empty_holds_topic_while_the_stores_keep_records_for_holds_stops_the_start(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A holds topic that exists and has never had a message (made again by hand with
    its audit trail, a cluster rebuilt beside the stores) was read as one whose holds
    were all released: the start warned of the records the stores kept for holds, then
    let them go (a trial). The holds that kept them were never on it (a release leaves
    its null): the start stops, deleting nothing; once the holds are placed on it, the
    record stays kept. (A holds topic that does not exist stops the start too: the test
    below.)"""
    common, config = _setup(broker, topics, tmp_path, RETENTION)
    await _keep_a_record_for_a_hold(broker, topics, config, common)
    rebuilt, audit = f"{topics.holds}.rebuilt", f"{topics.audit}.rebuilt"
    await ensure_topics(broker, [rebuilt, audit], partitions=2)
    lost = _on_holds_topic(config, rebuilt, audit)
    stopped = service_module.Service(lost, bootstrap_servers=broker, environ={})
    with pytest.raises(Exception) as raised:  # noqa: PT011 (the one inside is checked)
        with anyio.fail_after(60):
            await stopped.run(anyio.Event())
    (refused,) = leaves(raised.value)  # raised by the loop, through its task groups
    assert isinstance(refused, ConfigurationError)
    said = str(refused)
    assert said.startswith(f"the stores of {topics.conversations}[")
    assert (
        "keep 1 record for legal holds, but no hold is active and the legal holds topic "
        f"{rebuilt!r} has never had a message: the holds that keep them were on another topic"
    ) in said
    assert "Check [topics] holds (and STREAM_EXPIRY_TOPICS_HOLDS)" in said
    # The holds placed again on that topic: the start goes on, and the record stays kept.
    await _placed_again_the_record_stays_kept(broker, topics, tmp_path, lost)


@pytest.mark.timeout(150)
async def test_records_kept_under_archive_required_on_an_empty_holds_topic_are_said(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``[archive] required`` the stores keep records for the archive as for holds,
    and a start on a holds topic that has never had a message said nothing at all: a
    record a lost hold kept went as soon as the archive had it (a trial). The start says
    how many records are kept for either and what to check; it goes on (the stores do
    not tell a record waiting for the archive from one a hold kept)."""
    required = f'[archive]\nrequired = true\ngroup_id = "{topics.prefix}-archive"\n'
    common, config = _setup(broker, topics, tmp_path, RETENTION + required)
    await _keep_a_record_for_a_hold(broker, topics, config, common)
    rebuilt, audit = f"{topics.holds}.rebuilt", f"{topics.audit}.rebuilt"
    await ensure_topics(broker, [rebuilt, audit], partitions=2)
    caplog.set_level(logging.WARNING, logger="stream_expiry")

    def kept_said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "for legal holds" in r.getMessage()]

    async with running_service(_on_holds_topic(config, rebuilt, audit), broker):
        await wait_for(lambda: bool(kept_said()), timeout_s=60)
    (said,) = kept_said()
    assert said.startswith(f"the stores of {topics.conversations}[")
    assert (
        "keep 1 record for the archive or for legal holds ([archive] required: the stores "
        f"do not tell which), and the legal holds topic {rebuilt} has never had a message"
    ) in said
    assert "check [topics] holds" in said


@pytest.mark.timeout(150)
async def test_a_hold_released_while_the_service_was_down_is_said_as_a_release(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hold released while the service was down: at the start its records go, as they
    should, and the start warned "If their holds were not released ..., the holds topic
    was lost", alarming for a normal operation (a trial). It says what happened: holds
    released before the start, read now; nothing of a lost topic."""
    common, config = _setup(broker, topics, tmp_path, RETENTION)
    assert await _cli("hold", "place", *common, "--org", "acme", "--reason", "case 9",
                      "--id", "h-9") == 0  # fmt: skip
    async with running_service(config, broker) as service:
        await wait_for(lambda: len(service.holds) == 1)
        await produce(broker, [(topics.conversations, *event("conversation", "c1"))])
        await wait_for(
            lambda: sum(p.store.counts.held for p in service.processors.values()) == 1,
            timeout_s=15,
        )
    assert await _cli("hold", "release", *common, "h-9") == 0
    caplog.set_level(logging.INFO, logger="stream_expiry")

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "legal holds" in r.getMessage()]

    async with running_service(config, broker):
        let_go = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 1)
        assert len(let_go) == 1
    (line,) = [r for r in caplog.records if "for legal holds" in r.getMessage()]
    assert line.levelno == logging.INFO
    assert re.fullmatch(
        re.escape(f"the stores of {topics.conversations}[")
        + r"[01]"
        + re.escape(
            "] (1) keep 1 record for legal holds released before this start (read now from "
            f"{topics.holds}, which has no active hold): let go now, and tombstoned if due; "
            "expiry.audit says when each hold was released"
        ),
        line.getMessage(),
    ), line.getMessage()
    assert not [m for m in said() if "lost" in m]


@pytest.mark.timeout(120)
async def test_a_holds_topic_that_does_not_exist_stops_the_start_and_deletes_nothing(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A typo in ``[topics] holds`` (a trial: ``expiry.hold``) on a deployment that ran:
    the service made the topic, read no hold from it, and tombstoned every record a hold
    kept within seconds, without a word under ``[archive] required``. The start stops
    with what to check, deleting nothing; once the holds are placed on that topic (`hold
    place` makes it), the service starts and the record stays kept."""
    common, config = _setup(broker, topics, tmp_path, RETENTION)
    await _keep_a_record_for_a_hold(broker, topics, config, common)
    typo = f"{topics.holds}.typo"
    mistyped = _on_holds_topic(config, typo)
    stopped = service_module.Service(mistyped, bootstrap_servers=broker, environ={})
    with pytest.raises(ConfigurationError) as refused:
        with anyio.fail_after(30):
            await stopped.run(anyio.Event())
    assert str(refused.value).startswith(
        f"the legal holds topic {typo!r} does not exist, but the changelog {topics.stamped!r} has "
    )
    assert "Check [topics] holds (and STREAM_EXPIRY_TOPICS_HOLDS)" in str(refused.value)
    # A rename on purpose, with no hold ever: the way out that places none.
    assert str(refused.value).endswith(
        "if it was renamed on purpose and never held a hold, create it empty and compacted "
        "(cleanup.policy=compact) with your Kafka tooling"
    )
    assert await missing_topics(broker, [typo]) == [typo]  # not made: the next start stops too
    # The holds placed again on that topic: the start goes on, and the record stays kept.
    await _placed_again_the_record_stays_kept(broker, topics, tmp_path, mistyped)


@pytest.mark.timeout(90)
async def test_an_erasure_a_hold_defers_names_its_request_on_the_audit_trail(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A compliance officer matches erasure requests to deletions by id. One a hold
    deferred is carried out at the release by a tombstone that names no request (the
    README: its ``deletion_deferred`` entry is its trace), but that entry did not name the
    request either: its event_id was nowhere, neither on the audit trail nor in
    ``history`` (a trial helper's finding). The entry's message now carries the request's
    headers, as the tombstone of an erasure carried out at once does."""
    common, config = _setup(broker, topics, tmp_path, '[retention.defaults]\nconversation = "1h"\n')
    async with running_service(config, broker) as svc:
        t0 = wall_clock_ms()
        await produce(broker, [(topics.conversations, *event("conversation", "r1", ts=t0))])
        await wait_for(lambda: svc.stats.stamped >= 1)
        assert await _cli("hold", "place", *common, "--org", "acme", "--record-id", "r1",
                          "--reason", "case 3", "--id", "case-3") == 0  # fmt: skip
        await wait_for(lambda: len(svc.holds) == 1)
        erase = event("conversation", "r1", op="delete", ts=t0 + 1, event_id="gdpr-77")
        await produce(broker, [(topics.conversations, *erase)])
        audit = await read_topic(
            broker,
            topics.audit,
            until=lambda recs: any(b"deletion_deferred" in (r.value or b"") for r in recs),
        )
    (deferral,) = [r for r in audit if b"deletion_deferred" in (r.value or b"")]
    headers = dict(deferral.headers)
    assert headers["expiry-request-event-id"] == b"gdpr-77"
    where = re.escape(topics.conversations) + r"\[\d\]@1"  # the create is @0
    assert re.fullmatch(where, headers["expiry-request"].decode())
    capsys.readouterr()
    argv = ("--org", "acme", "--category", "conversation", "--record-id", "r1", "--json")
    assert await _cli("history", *common, *argv) == 0
    found = orjson.loads(capsys.readouterr().out)
    (entry,) = [e for e in found["events"] if e["kind"] == "deletion_deferred"]
    assert entry["request_event_id"] == "gdpr-77"
    assert await _cli("history", *common, *argv[:-1]) == 0
    assert "deferred by case-3 (expires_at" in (text := capsys.readouterr().out)
    assert "the erasure request event_id 'gdpr-77' at" in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("state", ["kept", "lost"])
async def test_an_erasure_a_hold_deferred_names_its_request_at_the_release(
    broker: str, topics: TopicSet, tmp_path: Path, state: str
) -> None:
    """An erasure request a hold deferred is carried out at the release by a tombstone and
    a null that name it, as an on-time erasure's do (they named none: the README's query of
    the receipts by ``request_event_id`` found nothing, a compliance trial). Released while
    the service is down; it restarts on its state directory (``kept``), or an instance with
    an empty one restores the partition from ``expiry.stamped`` (``lost``)."""
    common, config = _setup(broker, topics, tmp_path, '[retention.defaults]\nconversation = "1h"\n')
    key = event("conversation", "r1")[0]
    async with running_service(config, broker) as svc:
        t0 = wall_clock_ms()
        await produce(broker, [(topics.conversations, *event("conversation", "r1", ts=t0))])
        await wait_for(lambda: svc.stats.stamped >= 1)
        assert await _cli("hold", "place", *common, "--org", "acme", "--record-id", "r1",
                          "--reason", "case 4", "--id", "case-4") == 0  # fmt: skip
        await wait_for(lambda: len(svc.holds) == 1)
        erase = event("conversation", "r1", op="delete", ts=t0 + 1, event_id="gdpr-78")
        await produce(broker, [(topics.conversations, *erase)])
        await wait_for(lambda: svc.stats.stamped >= 2)  # the stamp that records the erasure
    assert await _cli("hold", "release", *common, "case-4") == 0
    if state == "lost":
        config = dataclasses.replace(config, state_dir=str(tmp_path / "empty"))
    async with running_service(config, broker):
        tombs = await read_topic(
            broker, topics.tombstones, until=lambda rs: any(r.key == key for r in rs)
        )
        nulls = await read_topic(
            broker,
            topics.stamped,
            until=lambda rs: any(r.key == key and r.value is None for r in rs),
        )
    (tomb,) = [r for r in tombs if r.key == key]
    (null,) = [r for r in nulls if r.key == key and r.value is None]
    where = re.escape(topics.conversations) + r"\[\d\]@1"  # the create is @0
    for message in (tomb, null):
        headers = dict(message.headers)
        assert headers["expiry-request-event-id"] == b"gdpr-78"
        assert re.fullmatch(where, headers["expiry-request"].decode())
    assert orjson.loads(tomb.value)["reason"] == "explicit"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("state", ["kept", "lost"])
async def test_two_lives_a_hold_kept_erased_each_name_their_request_at_the_release(
    broker: str, topics: TopicSet, tmp_path: Path, state: str
) -> None:
    """A record erased under a hold (``gdpr-81``), created again and erased again
    (``gdpr-82``) before the release: the first life's tombstone named no request (the
    second erasure's took its place in the store). Released while the service is down,
    restarted on its state directory (``kept``), or an instance with an empty one restores
    the partition from ``expiry.stamped`` (``lost``: the first life's tombstone named none,
    the record's latest stamp named the second erasure's request alone; it names the
    first's in ``expiry-deferred-requests``): each life's tombstone names its own request."""
    common, config = _setup(broker, topics, tmp_path, '[retention.defaults]\nconversation = "1h"\n')
    key = event("conversation", "r1")[0]
    async with running_service(config, broker) as svc:
        t0 = wall_clock_ms()
        await produce(broker, [(topics.conversations, *event("conversation", "r1", ts=t0))])
        await wait_for(lambda: svc.stats.stamped >= 1)
        assert await _cli("hold", "place", *common, "--org", "acme", "--record-id", "r1",
                          "--reason", "case 5", "--id", "case-5") == 0  # fmt: skip
        await wait_for(lambda: len(svc.holds) == 1)
        await produce(
            broker,
            [
                (topics.conversations, *e)
                for e in (
                    event("conversation", "r1", op="delete", ts=t0 + 1, event_id="gdpr-81"),
                    event("conversation", "r1", ts=t0 + 2),
                    event("conversation", "r1", op="delete", ts=t0 + 3, event_id="gdpr-82"),
                )
            ],
        )
        await wait_for(lambda: svc.stats.stamped >= 4)  # the create, the two erasures, the life
    assert await _cli("hold", "release", *common, "case-5") == 0
    if state == "lost":
        config = dataclasses.replace(config, state_dir=str(tmp_path / "empty"))
    async with running_service(config, broker):
        tombs = await read_topic(
            broker, topics.tombstones, until=lambda rs: sum(r.key == key for r in rs) >= 2
        )
    named = [dict(r.headers) for r in tombs if r.key == key]
    assert [h["expiry-request-event-id"] for h in named] == [b"gdpr-81", b"gdpr-82"]
    where = re.escape(topics.conversations) + r"\[\d\]@%d"
    for headers, offset in zip(named, (1, 3), strict=True):
        assert re.fullmatch(where % offset, headers["expiry-request"].decode())


@pytest.mark.timeout(120)
async def test_a_hold_giving_a_key_twice_leaves_the_hold_before_in_force_and_is_warned_of(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tool writes hold case-1 again with ``"org"`` twice, acme then other. Read as the
    last value, the hold moved to org other and acme's records, due and kept by case-1, were
    tombstoned within a second. Refused now: case-1 stays as placed (nothing let go), the
    message is dead-lettered, and the service, and ``hold list``, warn naming the key, where
    the message is, and the hold that stays; its release then lets the records go."""
    common, config = _setup(
        broker, topics, tmp_path, '[retention.defaults]\nconversation = "10m"\n'
    )
    assert await _cli("hold", "place", *common, "--org", "acme", "--reason", "case 1",
                      "--id", "case-1") == 0  # fmt: skip
    offset = [0]
    with captured_logs() as logs:
        async with running_service(
            config, broker, clock=lambda: wall_clock_ms() + offset[0]
        ) as svc:

            def held() -> int:
                return sum(p.store.counts.held for p in svc.processors.values())

            await wait_for(lambda: len(svc.holds) == 1)
            t0 = wall_clock_ms()
            await produce(
                broker,
                [(topics.conversations, *event("conversation", f"r{i}", ts=t0)) for i in range(3)],
            )
            await wait_for(lambda: svc.stats.stamped >= 3)
            offset[0] = 600_000 + 1_000  # every record due: case-1 keeps them
            await wait_for(lambda: held() == 3)
            generation = svc.holds.generation
            twice = b'{"hold_id": "case-1", "org": "acme", "reason": "case 1", "org": "other"}'
            async with producer(broker) as prod:
                sent = await prod.send_and_wait(topics.holds, twice, key=b"case-1")
            await wait_for(lambda: svc.stats.dead_letters >= 1 or svc.stats.tombstones >= 1)
            assert svc.stats.tombstones == 0
            kept = svc.holds.get("case-1")
            assert kept is not None
            assert kept.org == "acme"
            assert svc.holds.generation == generation  # nothing let go, so nothing to fire
            assert held() == 3
            capsys.readouterr()
            assert await _cli("hold", "list", *common, "--json") == 0
            said = capsys.readouterr()
            assert [(h["hold_id"], h["org"]) for h in orjson.loads(said.out)] == [
                ("case-1", "acme")
            ]
            where = f"{topics.holds}[{sent.partition}]@{sent.offset}"
            assert f"legal hold message at {where} (key 'case-1') is ignored" in said.err
            assert "key 'org' is given twice (at the top level)" in said.err
            assert await _cli("hold", "release", *common, "case-1") == 0
            await wait_for(lambda: svc.stats.tombstones == 3, timeout_s=10)
    text = logs.text.getvalue()
    assert "legal hold rejected: invalid_field (key 'org' is given twice (at the top level)" in text
    assert f"key 'case-1', {where}; put on the dead-letter topic" in text
    assert (
        f"{where}, rejected: the legal hold 'case-1' it would replace stays in force as "
        "placed before (org=acme)" in text
    )
    letters = await read_topic(broker, topics.dlq, until=lambda rs: len(rs) >= 1)
    assert [r.value for r in letters] == [twice]
    headers = dict(letters[0].headers)
    assert headers["expiry-error"] == b"invalid_field"
    assert headers["expiry-source-offset"] == str(sent.offset).encode()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("settled_by", ["release", "place"])
async def test_a_start_whose_hold_id_has_only_an_unreadable_message_is_refused(
    broker: str,
    topics: TopicSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    settled_by: str,
) -> None:
    """``expiry.holds`` is compacted: once the valid placement before a message that
    cannot be read is removed, a start reads that message alone, and the id had no hold:
    its records were tombstoned, with a dead-letter line to say so. The test broker does
    not compact, so here the unreadable message is the only one under its id, which is
    the compacted state (and the case of a new id written malformed). The start stops
    (exit 2) naming the id, where the message is, why, and what to do, before it joins
    the group, so no due record is tombstoned; ``hold list`` shows the id in doubt. Then
    ``hold release`` (or a valid placement under the id) settles it, and the start goes
    on: the records are tombstoned (released) or kept (placed)."""
    common, config = _setup(broker, topics, tmp_path, RETENTION)
    due = wall_clock_ms() - 60_000  # created a minute ago with a 2 s ttl: all due
    await produce(
        broker,
        [(topics.conversations, *event("conversation", f"r{i}", ts=due)) for i in range(3)],
    )
    twice = b'{"org": "acme", "reason": "case 5", "org": "other"}'
    async with producer(broker) as prod:
        sent = await prod.send_and_wait(topics.holds, twice, key=b"case-5")
    where = f"{topics.holds}[{sent.partition}]@{sent.offset}"
    stopped = service_module.Service(config, bootstrap_servers=broker, environ={})
    with pytest.raises(ConfigurationError) as refused:
        with anyio.fail_after(30):
            await stopped.run(anyio.Event())
    said = str(refused.value)
    assert status_of(refused.value) == 2
    assert said.startswith(
        f"the latest message of 1 legal hold id on {topics.holds!r} cannot be read, so what "
        f"it holds is unknown: 'case-5' at {where}: invalid_field (key 'org' is given twice "
        "(at the top level)"
    )
    assert "the service would delete the records each was meant to keep" in said
    assert "`stream-expiry hold place --id ID --org ORG" in said
    assert said.endswith("`stream-expiry hold release ID`; then start")
    assert stopped.stats.assignments == 0  # refused before joining the group
    assert stopped.stats.tombstones == 0
    capsys.readouterr()
    assert await _cli("hold", "list", *common) == 0
    listed = capsys.readouterr().out
    assert listed.startswith(f"case-5  in doubt: its latest message at {where} cannot be read")
    assert await _cli("hold", "list", *common, "--json") == 0
    (entry,) = orjson.loads(capsys.readouterr().out)
    assert (entry["hold_id"], entry["org"]) == ("case-5", None)
    assert [(d["partition"], d["offset"], d["error"]) for d in entry["in_doubt"]] == [
        (sent.partition, sent.offset, "invalid_field")
    ]
    if settled_by == "release":
        assert await _cli("hold", "release", *common, "case-5") == 0
    else:
        assert await _cli("hold", "place", *common, "--org", "acme", "--reason", "case 5",
                          "--id", "case-5") == 0  # fmt: skip
    async with running_service(config, broker) as svc:
        if settled_by == "release":
            await wait_for(lambda: svc.stats.tombstones == 3, timeout_s=15)
        else:
            await wait_for(
                lambda: sum(p.store.counts.held for p in svc.processors.values()) == 3,
                timeout_s=15,
            )
            assert svc.stats.tombstones == 0
    assert len(await read_all(broker, topics.tombstones)) == (3 if settled_by == "release" else 0)


@pytest.mark.timeout(120)
async def test_status_says_how_many_erasure_requests_each_hold_keeps_waiting(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An erasure request has a deadline, and a hold that defers one keeps the requester
    waiting: status said "N records held" for a hold, whether they were expiries or
    erasure requests, so a compliance officer could not see which erasures waited on
    which hold, nor since when (a trial). Each hold says how many of the records it
    keeps wait with an erasure request, and the oldest request among them (JSON
    ``erasures_held``, ``oldest_erasure_held``)."""
    common, config = _setup(broker, topics, tmp_path, '[retention.defaults]\nconversation = "1h"\n')
    assert await _cli("hold", "place", *common, "--org", "acme",
                      "--reason", "case 12", "--id", "case-12") == 0  # fmt: skip
    t0 = wall_clock_ms()
    async with running_service(config, broker) as service:
        await produce(
            broker,
            [
                (topics.conversations, *event("conversation", "c1", ts=t0 - 2 * 3_600_000)),
                (topics.conversations, *event("conversation", "c2", ts=t0)),
                (topics.conversations, *event("conversation", "c2", ts=t0 + 5, op="delete")),
            ],
        )
        await wait_for(
            lambda: sum(p.store.counts.held for p in service.processors.values()) == 2,
            timeout_s=15,
        )
    capsys.readouterr()
    assert await _cli("status", *common, "--json") == 0
    (held,) = orjson.loads(capsys.readouterr().out)["holds"]
    assert (held["records_held"], held["erasures_held"]) == (2, 1)
    assert held["oldest_erasure_held"] == format_ts(t0 + 5)
    assert await _cli("status", *common) == 0
    text = capsys.readouterr().out
    assert (
        f"case-12: 2 records held, 1 of them an erasure request waiting since "
        f"{format_ts(t0 + 5)}, 2 matched (case 12)"
    ) in text

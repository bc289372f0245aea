"""The archive against the real broker: every stamp and erasure lands in the files, offsets
are committed only after the files are durable, and dying in between loses nothing."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry.archive import ERASURES, MarkerTerms, archived_offsets, purge, read_lines
from stream_expiry.codec import H_REASON
from stream_expiry.kafka import producer
from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.service import Service, wall_clock_ms
from stream_expiry.timeutil import format_ts, parse_ts
from tests.conftest import wait_for
from tests.integration.service_helpers import (
    archive_running,
    archive_topics,
    config_for,
    event,
    running_service,
)
from tests.integration.service_helpers import produce as produce_events

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from stream_expiry.archive import ArchiveWriter
    from tests.conftest import TopicSet

pytestmark = pytest.mark.integration

DAY1 = 1_795_000_000_000  # 2026-11-18
ORGS = ("acme", "../evil org/é")


def stamps(n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        ident = Identity(ORGS[i % 2], "b", "live", "conversation", f"r{i}")
        created = DAY1 + (i % 3) * 86_400_000
        stamp = Stamp(ident, created, created + 3_600_000, 3_600_000, "default")
        out.append((ident.key.encode(), encode_stamp(stamp, {"i": i})))
    return out


async def produce(
    broker: str,
    topic: str,
    records: Sequence[tuple[bytes, bytes | None]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    async with producer(broker) as prod:
        for key, value in records:
            await prod.send(topic, key=key, value=value, headers=headers)
        await prod.flush()


def archived(directory: Path) -> dict[str, list[dict[str, object]]]:
    """Lines per file name relative to the directory."""
    return {
        os.path.relpath(p, directory): read_lines(p)
        for p in glob.glob(str(directory / "*" / "*.jsonl.gz"))
    }


async def archive_until(
    broker: str, directory: Path, topics: TopicSet, group: str, done: int
) -> ArchiveWriter:
    """Run the archive until it has written ``done`` entries, then stop it cleanly."""
    stop = anyio.Event()
    result: list[ArchiveWriter] = []

    async def run() -> None:
        result.append(await archive_topics(broker, directory, topics, group, stop=stop))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await wait_for(lambda: _written(directory) >= done, timeout_s=30)
        stop.set()
    return result[0]


def _written(directory: Path) -> int:
    try:
        return sum(len(lines) for lines in archived(directory).values())
    except (OSError, EOFError):  # a file being appended to right now
        return 0


@pytest.mark.asyncio
async def test_every_stamp_and_erasure_is_archived_then_committed(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    records = stamps(40)
    erased = [records[0][0], records[1][0]]
    expired = [records[2][0], records[3][0]]  # their nulls say ttl: the archive keeps them
    await produce(broker, topics.stamped, records)
    await produce(broker, topics.stamped, [(k, None) for k in expired], [(H_REASON, b"ttl")])
    await produce(broker, topics.stamped, [(erased[0], None)], [(H_REASON, b"explicit")])
    await produce(broker, topics.stamped, [(erased[1], None)])  # no reason (older versions)
    group = f"archive-{uuid.uuid4().hex[:8]}"
    writer = await archive_until(broker, tmp_path, topics, group, 42)
    assert (writer.lines, writer.erasures, writer.expiries) == (40, 2, 2)

    files = archived(tmp_path)
    orgs = sorted({f.split("/")[0] for f in files})
    assert orgs == ["%2E%2E%2Fevil%20org%2F%C3%A9", "acme"]
    days = sorted({f.split("/")[1] for f in files if not f.endswith(ERASURES)})
    assert days == ["2026-11-18.jsonl.gz", "2026-11-19.jsonl.gz", "2026-11-20.jsonl.gz"]
    stored = {
        line["key"]: line["stamp"]
        for name, lines in files.items()
        if not name.endswith(ERASURES)
        for line in lines
    }
    assert stored == {k.decode(): orjson.loads(v) for k, v in records}
    markers = [str(m["key"]) for name, ms in files.items() if name.endswith(ERASURES) for m in ms]
    assert sorted(markers) == sorted(k.decode() for k in erased)

    # What the service's gating reads: everything produced is below the committed offsets.
    offsets = await archived_offsets(broker, group, topics.stamped)
    per_partition: dict[int, int] = {}
    for lines in files.values():
        for line in lines:
            p, o = int(line["partition"]), int(line["offset"])  # type: ignore[call-overload]
            per_partition[p] = max(per_partition.get(p, -1), o + 1)
    assert offsets == per_partition
    assert await archived_offsets(broker, "never-ran", topics.stamped) == {}

    result = purge(str(tmp_path))
    assert result.lines_removed == 2
    left = {
        line["key"] for lines in archived(tmp_path).values() for line in lines if "stamp" in line
    }
    assert left == {k.decode() for k, _ in records[2:]}  # the expired ones included


@pytest.mark.asyncio
async def test_dying_between_write_and_commit_loses_nothing(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    records = stamps(30)
    await produce(broker, topics.stamped, list(records))
    group = f"archive-{uuid.uuid4().hex[:8]}"
    written_before_death: list[int] = []

    with anyio.CancelScope() as scope:

        async def die() -> None:  # the files are fsynced, the offsets not yet committed
            written_before_death.append(_written(tmp_path))
            scope.cancel()
            await anyio.lowlevel.checkpoint()

        await archive_topics(broker, tmp_path, topics, group, after_write=die)
    assert scope.cancelled_caught
    assert written_before_death
    assert written_before_death[0] > 0
    assert await archived_offsets(broker, group, topics.stamped) == {}  # nothing committed

    # Restarted, the archive gets the uncommitted batch again: duplicates, never a gap.
    await archive_until(broker, tmp_path, topics, group, 30 + written_before_death[0])
    lines = [line for ls in archived(tmp_path).values() for line in ls]
    latest: dict[str, dict[str, object]] = {}
    for line in sorted(lines, key=lambda x: int(str(x["offset"]))):
        latest[str(line["key"])] = line
    assert {k: v["stamp"] for k, v in latest.items()} == {
        k.decode(): orjson.loads(v) for k, v in records
    }
    assert len(lines) == 30 + written_before_death[0]
    assert sum((await archived_offsets(broker, group, topics.stamped)).values()) == 30


@pytest.mark.asyncio
async def test_the_archive_command_runs_until_sigterm_and_exits_zero(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    await produce(broker, topics.stamped, list(stamps(3)))
    config = tmp_path / "expiry.toml"
    config.write_text(
        f'[topics]\nstamped = "{topics.stamped}"\ntombstones = "{topics.tombstones}"\n'
    )
    archive_dir = tmp_path / "archive"
    argv = [
        sys.executable, "-m", "stream_expiry", "archive", "--dir", str(archive_dir),
        "--config", str(config), "--bootstrap-servers", broker,
        "--group-id", f"{topics.prefix}.archive-cli",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)  # noqa: ASYNC220
    try:
        await wait_for(lambda: proc.poll() is not None or _written(archive_dir) >= 3)
        assert proc.poll() is None, proc.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=20))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "archive stopped: 3 stamps and 0 erasure markers" in err
    assert await archived_offsets(broker, f"{topics.prefix}.archive-cli", topics.stamped)


# A killed member holds the group until its session runs out: 2 s here (the successor
# archived in about 3 s); with aiokafka's 10 s session it took about 20 s. A behaviour
# bound between the two, not a speed (test_ops: rekey's and the sink's).
GHOST_RESTART_BOUND_S = 12.0


def _archive_command(broker: str, directory: Path, config: Path, group: str) -> list[str]:
    return [
        sys.executable, "-m", "stream_expiry", "archive", "--dir", str(directory),
        "--config", str(config), "--bootstrap-servers", broker, "--group-id", group,
    ]  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.asyncio
async def test_an_archive_killed_holds_its_successor_no_longer_than_the_service_s_session(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An archive SIGKILLed (an OOM kill) stays in its group (no LeaveGroup) until the
    coordinator's session for it runs out, and the archive restarted in its place reads
    nothing until then. The archive took aiokafka's 10 s session whatever ``[service]
    session_timeout`` said (the successor archived a new stamp ~20 s after its start on
    the test broker); it takes the config's now."""
    await produce(broker, topics.stamped, list(stamps(3)))
    config = tmp_path / "expiry.toml"
    config.write_text(
        f'[topics]\nstamped = "{topics.stamped}"\ntombstones = "{topics.tombstones}"\n'
        '[service]\nsession_timeout = "2s"\n'
    )
    archive_dir = tmp_path / "archive"
    argv = _archive_command(broker, archive_dir, config, f"{topics.prefix}.archive")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)  # noqa: ASYNC220
    try:
        await wait_for(lambda: killed.poll() is not None or _written(archive_dir) >= 3)
        assert killed.poll() is None, killed.stderr
    finally:
        killed.kill()
        await anyio.to_thread.run_sync(killed.communicate)
    after = Identity("acme", "b", "live", "conversation", "after-the-kill")
    stamp = Stamp(after, DAY1, DAY1 + 3_600_000, 3_600_000, "default")
    await produce(broker, topics.stamped, [(after.key.encode(), encode_stamp(stamp, {}))])
    restarted = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)  # noqa: ASYNC220
    started = time.monotonic()
    try:
        await wait_for(
            lambda: restarted.poll() is not None or bool(_lines_with(archive_dir, after.key)),
            timeout_s=60,
        )
        took = time.monotonic() - started
        assert restarted.poll() is None, restarted.stderr
        restarted.send_signal(signal.SIGTERM)
        _, err = await anyio.to_thread.run_sync(lambda: restarted.communicate(timeout=20))
    finally:
        if restarted.poll() is None:
            restarted.kill()
            restarted.wait()
    assert took < GHOST_RESTART_BOUND_S, f"archived {took:.1f} s after the restart: {err}"
    assert restarted.returncode == 0, err


@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_the_archive_makes_a_missing_stamped_topic_as_the_service_would_and_says_so(
    broker: str, tmp_path: Path
) -> None:
    """An archive started before the service (or with a typo in [topics]) subscribed to a
    topic that did not exist, and the broker's auto-creation made it without a word and
    with its defaults: an ``expiry.stamped`` not compacted, whose stamps go at the broker's
    retention, which the service, never altering a topic that exists, then kept (a
    trial). Now the archive makes it as the service does, and warns."""
    from stream_expiry.kafka import missing_topics, topic_config_values

    prefix = f"t{uuid.uuid4().hex[:10]}"
    stamped, tombstones = f"{prefix}.expiry.stamped", f"{prefix}.expiry.tombstones"
    config = tmp_path / "expiry.toml"
    config.write_text(
        f'[topics]\nstamped = "{stamped}"\ntombstones = "{tombstones}"\n'
        "replication_factor = 1\npartitions = 2\n"
    )
    argv = [
        sys.executable, "-m", "stream_expiry", "archive", "--dir", str(tmp_path / "archive"),
        "--config", str(config), "--bootstrap-servers", broker, "--group-id", f"{prefix}.a",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)  # noqa: ASYNC220
    try:
        with anyio.fail_after(20):  # polled: the topics appear while the command starts
            while True:
                if proc.poll() is not None or not await missing_topics(
                    broker, [stamped, tombstones]
                ):
                    break
                await anyio.sleep(0.05)
        assert proc.poll() is None, proc.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=20))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    names = ("cleanup.policy", "retention.ms")
    made = await topic_config_values(broker, [stamped, tombstones], names)
    assert made[stamped]["cleanup.policy"] == "compact"
    assert made[tombstones] == {"cleanup.policy": "delete", "retention.ms": str(7 * 86_400_000)}
    for topic in (stamped, tombstones):
        assert f"created topic {topic}, which did not exist: the service writes it" in err


TTL_S = 8  # the erasure must come before the expiry, even on a loaded machine


def _service_markers(service: Service) -> int:
    return sum(proc.store.counts.markers for proc in service.processors.values())


def _lines_with(directory: Path, text: str) -> list[dict[str, object]]:
    try:
        lines = [line for ls in archived(directory).values() for line in ls]
    except (OSError, EOFError):  # a file being appended to right now
        return []
    return [line for line in lines if text in str(line)]


@pytest.mark.timeout(120)
@pytest.mark.asyncio
async def test_a_create_redelivered_after_the_services_marker_went_is_purged_until_the_bound(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Why the archive keeps erasure markers, and for how long. The service prunes its own
    marker of an erased life at its expiry plus ``marker_grace`` (0 here); a create of that
    life re-delivered after that is stamped again and tombstoned at once as already due
    (``ttl``: the archive keeps its data), above the erasure's null, so only the life marker
    erases it. The life marker carries the erased life's expiry, and ``purge`` drops the
    key's markers once now is past that expiry plus the grace, the compaction bound and
    the margin, not before."""
    config = config_for(
        topics, str(tmp_path / "state"), f'[retention.defaults]\nconversation = "{TTL_S}s"\n',
        marker_grace_ms=0,
    )  # fmt: skip
    archive_dir = tmp_path / "archive"
    async with archive_running(broker, archive_dir, topics, f"{topics.prefix}-archive"):
        async with running_service(config, broker) as service:
            t0 = wall_clock_ms()  # the life must still be running when the erasure comes
            create = event("conversation", "c-1", ts=t0, data={"text": "secret"})
            delete = event("conversation", "c-1", ts=t0 + 1, op="delete")
            await produce_events(broker, [(topics.conversations, *create)])
            await wait_for(lambda: service.stats.verdicts["created"] >= 1)
            await produce_events(broker, [(topics.conversations, *delete)])
            await wait_for(lambda: service.stats.verdicts["deleted"] >= 1)
            await wait_for(lambda: _service_markers(service) == 1)  # written, then pruned:
            await wait_for(lambda: _service_markers(service) == 0, timeout_s=30)
            await produce_events(broker, [(topics.conversations, *create)])  # re-delivered
            await wait_for(lambda: service.stats.verdicts["created"] >= 2)
            await wait_for(lambda: len(_lines_with(archive_dir, "secret")) >= 2, timeout_s=30)
        await wait_for(lambda: (archive_dir / "acme" / ERASURES).exists())

    markers = read_lines(str(archive_dir / "acme" / ERASURES))
    (null,) = [m for m in markers if "until" not in m]
    (life,) = [m for m in markers if "until" in m]
    expires = t0 + TTL_S * 1000
    assert life["expires_at"] == format_ts(expires)  # from the explicit tombstone
    again = max(_lines_with(archive_dir, "secret"), key=lambda x: int(str(x["offset"])))
    assert int(str(again["offset"])) > int(null["offset"])  # the null cannot erase it

    terms = MarkerTerms.of(config)
    end = max(parse_ts(life["erased_at"]), parse_ts(life["until"]), expires)
    assert end == expires  # erased before its expiry: the expiry bounds the marker
    at_bound = purge(str(archive_dir), terms, now_ms=terms.drop_at(end))
    assert (at_bound.lines_removed, at_bound.markers_dropped, at_bound.markers_kept) == (2, 0, 2)
    assert _lines_with(archive_dir, "secret") == []
    past = purge(str(archive_dir), terms, now_ms=terms.drop_at(end) + 1)
    assert (past.markers_dropped, past.markers_kept) == (2, 0)
    assert not (archive_dir / "acme" / ERASURES).exists()

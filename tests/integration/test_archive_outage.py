"""A broker outage under ``stream-expiry archive``: it waits it out, as ``run`` and the sinks do.

Every connection is cut by a proxy the broker advertises (:mod:`stream_expiry.testing.proxy`;
Tansu loses everything when restarted). The archive exited at the first Kafka failure
(status 3), and with ``[archive] required`` the service's purges then waited on an archive
nothing restarted. ``STREAM_EXPIRY_TEST_OUTAGE_S`` changes the outage's length (15 s by
default: over twice the group's 6 s session, so the member is gone when the broker answers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from stream_expiry.archive import archived_offsets, read_lines
from stream_expiry.kafka import ensure_topics, producer
from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.testing.processes import ServiceProcess, spawn_command
from stream_expiry.testing.proxy import proxied_broker
from stream_expiry.timeutil import wall_clock_ms
from tests.conftest import make_topic_set
from tests.integration.service_helpers import config_text, no_orphans

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyio.abc import Process

    from stream_expiry.testing.proxy import Proxy
    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

OUTAGE_S = float(os.environ.get("STREAM_EXPIRY_TEST_OUTAGE_S", "15"))
STARTED: list[Process] = []

_no_orphans = no_orphans(STARTED)


def _stamp(record_id: str) -> tuple[bytes, bytes]:
    ident = Identity("acme", "b", "live", "conversation", record_id)
    now = wall_clock_ms()
    return ident.key.encode(), encode_stamp(Stamp(ident, now, now + 3_600_000, 3_600_000, "d"))


def _archived_ids(directory: Path) -> set[str]:
    """The record ids of every stamp in the archive's files (none while one is appended)."""
    ids: set[str] = set()
    try:
        for path in directory.glob("*/*.jsonl.gz"):
            ids |= {str(line["key"]).rsplit("/", 1)[-1] for line in read_lines(str(path))}
    except (OSError, EOFError):  # a file being appended to right now
        return set()
    return ids


async def _produce(broker: str, topic: str, record_id: str) -> None:
    async with producer(broker) as prod:
        key, value = _stamp(record_id)
        await prod.send_and_wait(topic, value, key=key)


async def _start_archive(tmp_path: Path, topics: TopicSet, broker: str) -> ServiceProcess:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state")))
    return await spawn_command(
        [
            "archive",
            "--dir",
            str(tmp_path / "archive"),
            "--config",
            str(cfg),
            "--bootstrap-servers",
            broker,
            "--log-level",
            "INFO",
        ],
        STARTED,
    )


async def _archived(proc: ServiceProcess, directory: Path, record_id: str) -> None:
    """Wait until ``record_id`` is in the files; fail at once if the archive exits."""
    with anyio.fail_after(90):
        while record_id not in _archived_ids(directory):
            assert proc.process.returncode is None, proc.tail()
            await anyio.sleep(0.1)  # a poll interval: the files decide


async def _committed(broker: str, topic: str, stamps: int) -> None:
    """Wait until the archive's group has committed ``stamps`` stamps of ``topic``: a stamp in
    the files whose commit the cut then fails is archived again after the outage (at least
    once, by design), and the count this test checks would be one more."""
    with anyio.fail_after(30):
        while True:
            if sum((await archived_offsets(broker, topic=topic)).values()) >= stamps:
                return
            await anyio.sleep(0.1)  # a poll interval: the committed offsets decide


async def _said(proc: ServiceProcess, text: str, timeout_s: float) -> None:
    """Wait until the archive's log has ``text``; fail at once if it exits."""
    with anyio.fail_after(timeout_s):
        while not proc.log_has(text):
            assert proc.process.returncode is None, proc.tail()
            await anyio.sleep(0.1)  # a poll interval: the log decides


@contextlib.asynccontextmanager
async def _archive_cut_off(
    tmp_path: Path,
) -> AsyncIterator[tuple[Proxy, ServiceProcess, Path, str]]:
    """The archive running, a stamp archived, then every connection cut until the archive
    says the broker failed; the body runs in the outage (the proxy, the archive, its
    directory, the stamped topic). The archive's log is followed meanwhile."""
    topics = make_topic_set()
    directory = tmp_path / "archive"
    async with proxied_broker() as proxy:
        await ensure_topics(proxy.address, topics.all, partitions=2)
        proc = await _start_archive(tmp_path, topics, proxy.address)
        async with anyio.create_task_group() as tg:
            tg.start_soon(proc.follow_log)
            await _produce(proxy.address, topics.stamped, "before")
            await _archived(proc, directory, "before")
            await _committed(proxy.address, topics.stamped, 1)
            proxy.cut()
            await _said(proc, "the broker failed", OUTAGE_S + 30)
            yield proxy, proc, directory, topics.stamped
            tg.cancel_scope.cancel()


async def _sigterm(proc: ServiceProcess) -> int:
    """SIGTERM, and the exit status."""
    proc.process.send_signal(signal.SIGTERM)
    with anyio.fail_after(40):
        return await proc.process.wait()


@pytest.mark.timeout(OUTAGE_S + 150)
async def test_the_archive_rides_out_a_broker_outage_and_archives_what_follows(
    tmp_path: Path,
) -> None:
    async with _archive_cut_off(tmp_path) as (proxy, proc, directory, stamped):
        said_at = time.monotonic()  # the outage lasts OUTAGE_S more after it was said
        while time.monotonic() - said_at < OUTAGE_S:
            assert proc.process.returncode is None, proc.tail()
            await anyio.sleep(0.2)  # the outage's length is the point of the test
        proxy.restore()
        await _produce(proxy.address, stamped, "after")
        await _archived(proc, directory, "after")
        await _said(proc, "the broker answers again", 30)
        code = await _sigterm(proc)
    said = proc.tail(60)
    assert code == 0, said
    assert proc.log_has("archive stopped: 2 stamps"), said
    assert proc.log_has("started again every 2 s until it answers"), said


@pytest.mark.timeout(OUTAGE_S + 120)
async def test_sigterm_during_an_outage_stops_the_archive_cleanly(tmp_path: Path) -> None:
    async with _archive_cut_off(tmp_path) as (_, proc, _, _):
        code = await _sigterm(proc)
    said = proc.tail(60)
    assert code == 0, said
    assert proc.log_has("stopped while the broker fails"), said
    assert proc.log_has("archive stopped: 1 stamps"), said
    assert not proc.log_has("Traceback"), said

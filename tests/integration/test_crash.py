"""Kill the service with SIGKILL at random moments while events flow, many times.

In the end every record with a finite expiry has a tombstone, none was emitted before its
``expires_at``, and none exists for a record that never expires. The service runs as a real
process (``python -m stream_expiry run``), so a kill is a real crash: no cleanup runs.
Each restart joins a fresh consumer group: positions come from the index, not the group,
and a fresh group skips the broker's wait for the killed member's session to time out.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry.kafka import producer
from stream_expiry.model import Identity
from stream_expiry.service import wall_clock_ms
from stream_expiry.timeutil import parse_ts
from tests.conftest import TopicSet, read_all
from tests.integration.service_helpers import config_text

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from anyio.abc import Process

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

KILLS = int(os.environ.get("STREAM_EXPIRY_CRASH_KILLS", "20"))
TTL_S = {"conversation": 2, "session": 1, "error": 1}


def _config(topics: TopicSet, state: Path, run: int) -> str:
    retention = "[retention.defaults]\n" + "".join(f'{c} = "{s}s"\n' for c, s in TTL_S.items())
    return config_text(topics, str(state), retention, group_id=f"{topics.prefix}-run{run}")


class ServiceProcess:
    """One ``stream-expiry run`` process; ``ready`` once it owns its partitions."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.ready = anyio.Event()
        self.lines: list[str] = []

    async def follow_log(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                self.lines.append(text)
                if "assigned" in text:
                    self.ready.set()


STARTED: list[Process] = []


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """However the test ends, no service process outlives it."""
    yield
    for proc in STARTED:
        if proc.returncode is None:
            proc.kill()
    STARTED.clear()


async def _start(broker: str, config_path: Path) -> ServiceProcess:
    proc = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "stream_expiry",
            "run",
            "--config",
            str(config_path),
            "--bootstrap-servers",
            broker,
            "--log-level",
            "INFO",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    STARTED.append(proc)
    return ServiceProcess(proc)


@pytest.mark.timeout(420)
async def test_sigkill_at_random_moments_loses_nothing_and_never_fires_early(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    rng = random.Random(20261123)
    state = tmp_path / "state"
    produced: dict[bytes, str] = {}  # record key -> category ("analytics": never expires)
    traffic_done = anyio.Event()

    async def traffic() -> None:
        async with producer(broker) as prod:
            i = 0
            while not traffic_done.is_set():
                i += 1
                category = rng.choice(["conversation", "session", "error", "analytics"])
                ident = Identity(rng.choice(["acme", "globex"]), "_", "live", category, f"r{i}")
                body = {
                    "category": category,
                    "org": ident.org,
                    "record_id": ident.record_id,
                    "ts": wall_clock_ms(),
                }
                topic = {"conversation": topics.conversations, "session": topics.sessions}.get(
                    category, topics.errors
                )
                await prod.send(topic, key=ident.key.encode(), value=orjson.dumps(body))
                produced[ident.key.encode()] = category
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(traffic)
        for run in range(KILLS):
            cfg = tmp_path / f"run{run}.toml"
            cfg.write_text(_config(topics, state, run))
            svc = await _start(broker, cfg)
            tg.start_soon(svc.follow_log)
            with anyio.fail_after(60):
                await svc.ready.wait()
            # Kill at a random moment of its work: mid-batch, mid-emit, mid-commit.
            await anyio.sleep(rng.uniform(0.05, 1.5))
            svc.process.send_signal(signal.SIGKILL)
            await svc.process.wait()
        traffic_done.set()
        cfg = tmp_path / "final.toml"
        cfg.write_text(_config(topics, state, KILLS))
        final = await _start(broker, cfg)
        tg.start_soon(final.follow_log)
        finite = {k for k, c in produced.items() if c != "analytics"}
        tombstoned: set[bytes] = set()

        async def all_tombstoned() -> bool:
            tombstoned.update(r.key for r in await read_all(broker, topics.tombstones))
            return finite <= tombstoned

        with anyio.fail_after(90):
            while not await all_tombstoned():  # noqa: ASYNC110 - polls the broker
                await anyio.sleep(0.5)
        final.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            assert await final.process.wait() == 0, "\n".join(final.lines[-20:])

    tombs = await read_all(broker, topics.tombstones)
    assert len(produced) > 100
    for rec in tombs:
        body = orjson.loads(rec.value)
        assert body["reason"] == "ttl"
        assert produced[rec.key] != "analytics", "a record that never expires was tombstoned"
        assert parse_ts(body["emitted_at"]) >= parse_ts(body["expires_at"]), body
        created = parse_ts(body["created_at"])
        ttl_s = TTL_S[body["category"]]
        assert body["ttl_seconds"] == ttl_s
        assert parse_ts(body["expires_at"]) == created + ttl_s * 1000
    assert finite <= {r.key for r in tombs}

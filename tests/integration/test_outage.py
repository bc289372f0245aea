"""Broker outages: every connection to the broker cut mid-traffic, then restored.

The broker is not restarted (Tansu would lose everything); a proxy it advertises is cut
instead (``stream_expiry.testing.proxy``), so every client of the test (the sink process and
the test's own producer) loses the broker at once, as in a network partition or a broker
crash. ``STREAM_EXPIRY_TEST_OUTAGE_S`` changes the outage's length (15 s by default; the 30 s
of before cost the suite 15 s of waiting for no further check; 15 s is still
over twice the group's session, and the sink's probe says Kafka unreachable within a second).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from stream_expiry.kafka import ensure_topics, producer
from stream_expiry.sinks.framework import wall_clock_ms
from stream_expiry.sinks.sqlite import SQLiteStore
from stream_expiry.testing.proxy import proxied_broker
from tests.integration.sink_helpers import ident, stamp, stamped_msg, tombstone_msg

if TYPE_CHECKING:
    from pathlib import Path

    from stream_expiry.model import Identity

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

OUTAGE_S = float(os.environ.get("STREAM_EXPIRY_TEST_OUTAGE_S", "15"))
HOUR = 3_600_000


async def _traffic(
    address: str, topics: tuple[str, str], stop: anyio.Event, sent: list[Identity]
) -> None:
    """A record every 20 ms; every other one is deleted right after. A producer whose
    requests outlast the outage: what it sends while the broker is away is held, not lost."""
    stamped, tombstones = topics
    async with producer(address, request_timeout_ms=int(OUTAGE_S * 1000) + 60_000) as prod:
        futures = []
        i = 0
        while not stop.is_set():
            now = wall_clock_ms()
            s = stamp(ident(f"r{i}"), created_at=now, ttl_ms=HOUR)
            key, value = stamped_msg(s)
            futures.append(await prod.send(stamped, value, key=key))
            if i % 2 == 0:
                key, value = tombstone_msg(s, reason="explicit", emitted_at=now)
                futures.append(await prod.send(tombstones, value, key=key))
            sent.append(s.identity)
            i += 1
            await anyio.sleep(0.02)  # the traffic's pace, not synchronisation
        for f in futures:
            await f


@pytest.mark.timeout(OUTAGE_S + 90)
async def test_sink_survives_a_broker_outage(tmp_path: Path) -> None:
    db = tmp_path / "sink.db"
    p = f"t{uuid.uuid4().hex[:10]}"
    stamped, tombstones, receipts = f"{p}.stamped", f"{p}.tombstones", f"{p}.receipts"
    async with proxied_broker() as proxy:
        await ensure_topics(proxy.address, [stamped, tombstones, receipts], partitions=2)
        argv = [
            sys.executable, "-m", "stream_expiry", "sink", "sqlite", "--path", str(db),
            "--bootstrap-servers", proxy.address, "--group-id", f"{p}.sink",
            "--stamped-topic", stamped, "--tombstones-topic", tombstones,
            "--receipts-topic", receipts,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        log = tmp_path / "sink.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stderr=out, env=env)  # noqa: ASYNC220
        reader = SQLiteStore(db, name="probe")
        sent: list[Identity] = []
        stop_traffic = anyio.Event()

        def alive() -> None:
            if proc.poll() is not None:
                err = log.read_text()[-3000:]
                pytest.fail(f"the sink exited ({proc.returncode}) during the test: {err}")

        async def deleted(idents: list[Identity]) -> int:
            if not db.exists():
                return 0
            await reader.open()
            return sum([await reader.get(i) is None for i in idents])

        async def poll_until(check: object, timeout_s: float, what: str) -> None:
            end = time.monotonic() + timeout_s
            while True:
                alive()
                if await check():  # type: ignore[operator]
                    return
                if time.monotonic() > end:
                    pytest.fail(
                        f"timed out after {timeout_s:.0f} s waiting for {what}; the sink's log "
                        f"ends: {log.read_text()[-3000:]}"
                    )
                await anyio.sleep(0.05)  # a poll interval: the check decides

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_traffic, proxy.address, (stamped, tombstones), stop_traffic, sent)

                async def some_deleted() -> bool:
                    if not db.exists():
                        return False
                    await reader.open()
                    return len(await reader.receipts()) >= 20

                await poll_until(some_deleted, 30, "the sink to delete its first records")
                proxy.cut()
                cut_at, sent_at_cut = time.monotonic(), len(sent)
                while time.monotonic() - cut_at < OUTAGE_S:
                    alive()
                    await anyio.sleep(0.2)  # the outage's length is the point of the test
                proxy.restore()
                assert len(sent) > sent_at_cut  # traffic went on during the outage
                await anyio.sleep(2)  # more traffic after the restore
                stop_traffic.set()
            deletes, keeps = sent[::2], sent[1::2]

            async def caught_up() -> bool:
                if not db.exists():
                    return False
                await reader.open()
                receipted = {r.identity for r in await reader.receipts()}
                kept = [await reader.get(i) is not None for i in keeps]
                return receipted >= set(deletes) and all(kept)

            await poll_until(caught_up, 45, f"{len(sent)} records handled after the restore")
            assert await deleted(deletes) == len(deletes)
            await reader.close()
            proc.send_signal(signal.SIGINT)
            await anyio.to_thread.run_sync(lambda: proc.wait(timeout=20))
            assert proc.returncode == 0, log.read_text()[-3000:]
        finally:
            await reader.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()

"""A short horizon: timers are loaded from the store slice by slice as time moves on.

The service runs with ``[service] horizon = "2s"`` and TTLs of 5 to 10 s, so at start every
timer lies beyond the horizon and each must come from the store when its slice is due; it is
SIGKILLed midway and restarted on the same state directory and group. Every record fires,
none before its expiry (arrival times at the test, expiries computed from what the test
produced), and the wheel (``timers_in_wheel`` on ``/metrics``, sampled while the first run
works) holds a fraction of the records at every sample.
"""

from __future__ import annotations

import random
import re
import signal
import urllib.request
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry.broker import free_port
from stream_expiry.service import wall_clock_ms
from stream_expiry.testing.processes import ArrivalLog, ServiceProcess, spawn_service
from stream_expiry.timeutil import parse_ts
from tests.integration.service_helpers import config_text, event, no_orphans, produce

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process

    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

TTL_S = {"conversation": 5, "session": 7, "error": 10}
RECORDS = 600
STARTED: list[Process] = []
_WHEEL = re.compile(rb"^\w+_timers_in_wheel (\d+)", re.MULTILINE)


_no_orphans = no_orphans(STARTED)


def _wheel(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            m = _WHEEL.search(resp.read())
    except OSError:
        return None
    return int(m[1]) if m else None


@pytest.mark.timeout(120)
async def test_a_2s_horizon_fires_every_record_none_early_across_a_crash(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    rng = random.Random(5)
    retention = "[retention.defaults]\n" + "".join(f'{c} = "{s}s"\n' for c, s in TTL_S.items())
    cfg = tmp_path / "service.toml"
    text = config_text(topics, str(tmp_path / "state"), retention)
    cfg.write_text(
        text.replace("[service]\n", '[service]\nhorizon = "2s"\nsession_timeout = "2s"\n')
    )
    topic_of = {"conversation": topics.conversations, "session": topics.sessions}
    expires: dict[bytes, int] = {}
    wheel: list[int] = []
    tombstones = ArrivalLog(broker, topics.tombstones)

    async def start(tg: anyio.abc.TaskGroup) -> tuple[ServiceProcess, int]:
        port = free_port()
        svc = await spawn_service(broker, cfg, STARTED, "--metrics-port", str(port))
        tg.start_soon(svc.follow_log)
        with anyio.fail_after(60):
            await svc.ready.wait()
        return svc, port

    async def sample(port: int, stop: anyio.Event) -> None:
        while not stop.is_set():
            n = await anyio.to_thread.run_sync(_wheel, port)
            if n is not None:
                wheel.append(n)
            await anyio.sleep(0.2)  # a sampling interval

    async with anyio.create_task_group() as tg:
        tg.start_soon(tombstones.follow)
        first, port = await start(tg)
        now = wall_clock_ms()
        msgs = []
        for i in range(RECORDS):
            category = rng.choice(list(TTL_S))
            ts = now - rng.randint(0, 1_500)  # expiries spread over 3.5 to 10 s from now
            key, value = event(category, f"r{i}", ts=ts)
            expires[key] = ts + TTL_S[category] * 1000
            msgs.append((topic_of.get(category, topics.errors), key, value))
        await produce(broker, msgs)
        stop_sampling = anyio.Event()
        tg.start_soon(sample, port, stop_sampling)
        # Crash once the first slices have fired, with most records still pending.
        with anyio.fail_after(30):
            while len(tombstones.keys()) < RECORDS // 10:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        stop_sampling.set()
        # Records must be pending at the kill, for the restart to load them from the store
        # slice by slice. The kill comes ~4 s after the produce (61 fired, idle and beside a
        # busy core); the errors, a third, fall due 8.5-10 s after it, so this holds unless
        # the test sees its 60th tombstone 4.5 s late. It asked for half still pending,
        # which the test seeing that tombstone 2.3 s late (a stall, a busy machine) would break.
        assert len(tombstones.keys()) < RECORDS * 2 // 3, "too slow: most fired before the kill"
        first.process.send_signal(signal.SIGKILL)
        await first.process.wait()
        second, port = await start(tg)
        with anyio.fail_after(40):
            while not set(expires) <= tombstones.keys():  # noqa: ASYNC110
                await anyio.sleep(0.1)
        second.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            assert await second.process.wait() == 0
        tg.cancel_scope.cancel()

    counts = Counter(r.key for _, r in tombstones.arrivals)
    assert set(counts) == set(expires)
    for arrived, rec in tombstones.arrivals:
        body = orjson.loads(rec.value)
        assert parse_ts(body["expires_at"]) == expires[rec.key]
        assert arrived >= expires[rec.key], (
            f"{rec.key!r} arrived {expires[rec.key] - arrived} ms early"
        )
    # The wheel held a slice, never the backlog: expiries spread over ~6.5 s, a 2 s horizon.
    # (After the restart the records that fell due while it was down are loaded at once,
    # as they must be: those samples say nothing of the horizon.) Any 2 s of expiries holds
    # about 200 records (189 seen, idle and beside a busy core), plus those due and not
    # fired yet when the firing lags (~130 a second of lag); the backlog is all 600 until
    # the first expiry, 3.5 s (some 15 samples) after the produce. Half of them (300) was
    # the bound, which a firing under a second behind reaches; 500 still tells the
    # backlog from a slice.
    assert wheel, "no sample of the wheel"
    assert max(wheel) > 0, wheel
    assert max(wheel) < RECORDS * 5 // 6, wheel

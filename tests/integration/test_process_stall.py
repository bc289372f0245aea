"""A paused service (SIGSTOP, then SIGCONT) on the real broker: it says it did not run, and
does not take the pause for a broker outage.

The broker probe of ``/readyz`` runs every 5 s and waits 3 s for its answer. A pause that
catches a probe in flight lets its deadline pass while the answer waits in the stopped
process' socket: on resume the probe timed out, and the service said "Kafka unreachable",
``/readyz`` 503 and ``stream_expiry_broker_reachable`` 0 for the next 5 s, with the broker
fine all along. The proxy in front of the broker holds one probe's request
(:meth:`~stream_expiry.testing.proxy.Proxy.hold_probes`), so the pause catches a probe in
flight every time instead of once in a few thousand.

Every long-running command that serves ``/readyz`` probes the broker so, and each is
paused here: ``run``, a ``sink`` and ``rekey`` (the last two said "Kafka unreachable" after
such a pause before they watched their stalls too). The stall metrics have the same names
in each; the health gauges have the command's prefix.
"""

from __future__ import annotations

import os
import re
import signal
import urllib.request
from typing import TYPE_CHECKING

import anyio
import pytest

from stream_expiry.broker import free_port
from stream_expiry.kafka import ensure_topics
from stream_expiry.testing.processes import spawn_command
from stream_expiry.testing.proxy import proxied_broker
from tests.conftest import make_topic_set
from tests.integration.service_helpers import config_text, http_status, no_orphans

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process

    from stream_expiry.testing.processes import ServiceProcess
    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

PAUSE_S = 5.0  # longer than the probe's 3 s timeout, and the 2 s a stall is counted from
STARTED: list[Process] = []
_SAMPLE = re.compile(r"^(stream_expiry_\w+) (\S+)$", re.MULTILINE)

_no_orphans = no_orphans(STARTED)


def _scrape(port: int) -> dict[str, float]:
    """The unlabelled samples of ``/metrics`` (empty while nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {name: float(value) for name, value in _SAMPLE.findall(text)}


def _command(name: str, proxy: str, cfg: Path, port: int, topics: TopicSet) -> list[str]:
    """The argv of the command paused (its log at INFO, its port ``port``)."""
    common = ["--config", str(cfg), "--bootstrap-servers", proxy, "--metrics-port", str(port)]
    common += ["--log-level", "INFO"]
    if name == "run":
        return ["run", *common]
    if name == "sink":
        return ["sink", "sqlite", "--path", str(cfg.parent / "sink.db"), *common]
    return ["rekey", "--from", topics.conversations, "--group-id", f"{topics.prefix}.rk", *common]


async def _ready(proc: ServiceProcess, port: int) -> None:
    """``/readyz`` 200 (the command joined its group, read what it must) and ``/metrics``
    answering."""
    url = f"http://127.0.0.1:{port}/readyz"
    with anyio.fail_after(60):
        while await anyio.to_thread.run_sync(http_status, url) != 200:
            assert proc.process.returncode is None, proc.tail()
            await anyio.sleep(0.1)  # a poll interval: the answer decides
        while await anyio.to_thread.run_sync(_scrape, port) == {}:  # noqa: ASYNC110
            await anyio.sleep(0.05)


_REACHABLE = {
    "run": "stream_expiry_broker_reachable",
    "sink": "stream_expiry_sink_broker_reachable",
    "rekey": "stream_expiry_rekey_broker_reachable",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["run", "sink", "rekey"])
async def test_a_paused_command_says_it_did_not_run_and_no_broker_outage(
    tmp_path: Path, command: str
) -> None:
    topics = make_topic_set()
    port = free_port()
    reachable = _REACHABLE[command]
    async with proxied_broker() as proxy:
        await ensure_topics(proxy.address, topics.all, partitions=2)
        cfg = tmp_path / "service.toml"
        cfg.write_text(config_text(topics, str(tmp_path / "state")))
        argv = _command(command, proxy.address, cfg, port, topics)
        svc = await spawn_command(argv, STARTED)
        pid = svc.process.pid
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.follow_log)
            await _ready(svc, port)

            with anyio.fail_after(15):  # the next probe (every 5 s) is held in flight
                await proxy.hold_probes().wait()
            os.kill(pid, signal.SIGSTOP)
            try:
                proxy.release_probes()  # its answer now waits in the stopped process' socket
                # The stimulus: the length of the pause under test (no outcome is awaited).
                await anyio.sleep(PAUSE_S)
            finally:
                os.kill(pid, signal.SIGCONT)

            # After the resume: the stall counted, and a probe cycle over (the next probe
            # held means the one after the resume has answered and said what it found).
            samples: list[dict[str, float]] = []
            with anyio.fail_after(30):
                while not samples or samples[-1].get("stream_expiry_process_stalls_total", 0) < 1:
                    samples.append(await anyio.to_thread.run_sync(_scrape, port))
                    if svc.log_has("Kafka unreachable"):
                        break
                    await anyio.sleep(0.05)
                await proxy.hold_probes().wait()
            proxy.release_probes()
            after = await anyio.to_thread.run_sync(_scrape, port)
            readyz = await anyio.to_thread.run_sync(http_status, f"http://127.0.0.1:{port}/readyz")
            os.kill(pid, signal.SIGINT)
            with anyio.fail_after(30):
                await svc.process.wait()
            tg.cancel_scope.cancel()

    assert not svc.log_has("Kafka unreachable"), svc.tail()
    assert not svc.log_has("the broker failed"), svc.tail()
    assert all(s.get(reachable, 1) == 1 for s in samples), samples
    assert (after[reachable], readyz) == (1, 200)
    said = [line for line in svc.lines if "the process did not run for" in line]
    assert len(said) == 1, svc.tail()
    assert "WARNING" in said[0]
    assert "(paused, or starved of CPU); not a broker outage" in said[0]
    seconds = float(re.search(r"did not run for ([\d.]+) s", said[0])[1])  # type: ignore[index]
    assert PAUSE_S - 1 <= seconds <= PAUSE_S + 2, said[0]
    assert after["stream_expiry_process_stalls_total"] == 1
    assert after["stream_expiry_process_stalled_seconds_total"] == pytest.approx(seconds, abs=0.1)
    assert after["stream_expiry_process_longest_stall_seconds"] == pytest.approx(seconds, abs=0.1)
    assert svc.process.returncode == 0, svc.tail()


@pytest.mark.timeout(120)
async def test_a_paused_archive_says_it_did_not_run(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """``stream-expiry archive`` watched no pause of its own, where ``run``, the sinks and
    ``rekey`` do: a paused archive (whose lag the service's purges wait on) said nothing,
    and the Kafka client's timeouts on resume read as the broker's. It serves no metrics,
    so the watch's one WARNING is what says it."""
    cfg = tmp_path / "service.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state")))
    argv = ["archive", "--dir", str(tmp_path / "archive"), "--config", str(cfg)]
    svc = await spawn_command(
        [*argv, "--bootstrap-servers", broker, "--log-level", "INFO"], STARTED
    )
    pid = svc.process.pid
    async with anyio.create_task_group() as tg:
        tg.start_soon(svc.follow_log)
        with anyio.fail_after(30):
            while not svc.log_has("archiving "):
                assert svc.process.returncode is None, svc.tail()
                await anyio.sleep(0.05)  # a poll interval: the log decides
        os.kill(pid, signal.SIGSTOP)
        try:
            # The stimulus: the length of the pause under test (no outcome is awaited).
            await anyio.sleep(PAUSE_S)
        finally:
            os.kill(pid, signal.SIGCONT)
        with anyio.fail_after(30):
            while not svc.log_has("the process did not run for"):  # noqa: ASYNC110
                await anyio.sleep(0.05)  # a poll interval: the log decides
        os.kill(pid, signal.SIGINT)
        with anyio.fail_after(30):
            await svc.process.wait()
        tg.cancel_scope.cancel()
    said = [line for line in svc.lines if "the process did not run for" in line]
    assert len(said) == 1, svc.tail()
    assert "WARNING" in said[0]
    assert "(paused, or starved of CPU); not a broker outage" in said[0]
    seconds = float(re.search(r"did not run for ([\d.]+) s", said[0])[1])  # type: ignore[index]
    assert PAUSE_S - 1 <= seconds <= PAUSE_S + 2, said[0]
    assert svc.process.returncode == 0, svc.tail()

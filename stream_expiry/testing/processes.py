"""The service as a real process, and the arrival times of what it produces.

A SIGKILL of a :class:`ServiceProcess` is a real crash: no cleanup runs. An
:class:`ArrivalLog` notes when each message of a topic reached the test, so that "never
early" is checked against the test's clock, never against the service's own ``emitted_at``
(a service with a wrong clock cannot vouch for itself).
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
from aiokafka import TopicPartition

from stream_expiry.kafka import consumer, partitions_of
from stream_expiry.timeutil import wall_clock_ms

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process

__all__ = ["ArrivalLog", "ServiceProcess", "spawn_service"]

# Logged once the assigned partitions are restored and positioned ("assigned T[P], ...:
# N timers within the horizon"); each partition's restore line ends the same way.
READY_LINE = "timers within the horizon"


class ServiceProcess:
    """One ``stream-expiry run`` process; ``ready`` once it owns and restored its partitions.

    Its stderr is kept line by line (``lines``) for assertions and for failure messages;
    run :meth:`follow_log` in a task, or the pipe fills and the service blocks.
    """

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
                if READY_LINE in text and "assigned " in text:
                    self.ready.set()

    def log_has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])


async def spawn_service(
    broker: str, config_path: Path, started: list[Process], *extra: str
) -> ServiceProcess:
    """``python -m stream_expiry run`` as a real process; appended to ``started`` so that
    the caller can make sure none outlives it."""
    args = ["run", "--config", str(config_path), "--bootstrap-servers", broker]
    return await spawn_command([*args, "--log-level", "INFO", *extra], started)


async def spawn_command(args: list[str], started: list[Process]) -> ServiceProcess:
    """``python -m stream_expiry ARGS`` (any command: ``sink``, say) as :func:`spawn_service`
    runs ``run``; ``ready`` is only ever set by ``run``'s line."""
    proc = await anyio.open_process(
        [sys.executable, "-m", "stream_expiry", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    started.append(proc)
    return ServiceProcess(proc)


class ArrivalLog:
    """Every message of a topic with the wall-clock time it reached the test (ms)."""

    def __init__(self, broker: str, topic: str) -> None:
        self.broker, self.topic = broker, topic
        self.arrivals: list[tuple[int, Any]] = []

    async def follow(self) -> None:
        async with consumer(self.broker) as cons:
            tps = [TopicPartition(self.topic, p) for p in await partitions_of(cons, self.topic)]
            cons.assign(tps)
            await cons.seek_to_beginning(*tps)
            while True:
                batch = await cons.getmany(timeout_ms=100)
                now = wall_clock_ms()
                for records in batch.values():
                    self.arrivals.extend((now, r) for r in records)

    def keys(self) -> set[bytes]:
        return {r.key for _, r in self.arrivals}

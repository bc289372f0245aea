"""Ctrl-C and SIGTERM stop a command while it connects to Kafka."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration]


def _interrupted(args: list[str], *signals: signal.Signals) -> tuple[int, str]:
    """``stream-expiry ARGS`` against an address that accepts connections and never answers
    (a load balancer in front of a dead broker): once the command sent its first request
    and waits for the answer, ``signals`` are sent to it. Its exit status and stderr."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", "stream_expiry", *args,
             "--bootstrap-servers", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        with _reaped(proc):
            listener.settimeout(30)
            accepted, _ = listener.accept()
            with accepted:
                accepted.settimeout(30)
                assert accepted.recv(4)  # its first request: it waits for the answer now
                for sig in signals:
                    proc.send_signal(sig)
                err = _stderr_once_ended(proc, within_s=20)
    return proc.returncode, err


def _stderr_once_ended(proc: subprocess.Popen[bytes], within_s: float) -> str:
    """``proc``'s stderr once it has ended; one still running after ``within_s`` fails
    the test with where each of its threads was (SIGABRT, which its ``-X faulthandler``
    answers with their tracebacks): a CI run once saw ``explain`` outlive a SIGTERM by
    20 s, and its stderr had nothing to say why."""
    try:
        _, err = proc.communicate(timeout=within_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"still running {within_s} s after the signal; its threads:\n{err.decode()}")
    return err.decode()


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kill and wait for ``proc`` if it still runs when the block ends (a failed test),
    and close its pipe: left open, the garbage collector found it during a later test of
    the same worker and failed that one ("unclosed file", a CI run)."""
    with proc:
        try:
            yield
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["hold", "list"],
        ["history", "--org", "a", "--category", "conversation", "--record-id", "r"],
        ["explain", "--org", "a", "--category", "conversation"],
        ["replay", "--dry-run"],
    ],
    ids=lambda c: c[0],
)
def test_an_interrupt_stops_a_command_waiting_for_a_broker_that_does_not_answer(
    command: list[str], sig: signal.Signals
) -> None:
    """SIGTERM ended ``hold`` and ``history`` with 143 (killed), and every one-shot command
    interrupted while it waited for its first answer left asyncio's "Unclosed
    AIOKafkaConsumer" error on stderr (a trial). Each exits 130 (interrupted), its client
    closed."""
    status, err = _interrupted(command, sig)
    assert status == 130, err
    assert "Unclosed" not in err, err
    if command[0] == "replay":  # it said nothing of what it had published (a trial)
        assert "stream-expiry replay: interrupted; nothing was published (--dry-run)" in err


@pytest.mark.timeout(60)
def test_a_second_signal_stops_the_archive_while_it_connects(tmp_path: Path) -> None:
    """``archive`` stops after its batch at the first signal and at once at the second:
    a second one while it connected ended it with a traceback (``writer`` unbound) and
    exit 1 (a trial, every time, also under ``timeout``, which signals the process and its
    group). It says it stopped before it started, and exits 130."""
    args = ["archive", "--dir", str(tmp_path / "a")]
    status, err = _interrupted(args, signal.SIGTERM, signal.SIGINT)
    assert status == 130, err
    assert "Traceback" not in err, err
    assert "archive stopped while it started" in err, err


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler of its own for ``sig`` (Linux: SigCgt)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig.value - 1) & 1)
    return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_the_command_loads_is_a_quiet_stop(sig: signal.Signals) -> None:
    """Ctrl-C while the command's modules load (its first quarter of a second) printed a
    KeyboardInterrupt traceback from an import, and SIGTERM ended it with 143 (a trial).
    The signal is sent the moment the entry point has set its handler, which is before it
    imports the command: a stop with status 130 and no traceback. (Before that moment, the
    interpreter's own start, a signal ends it as a signal does.)"""
    import time

    with socket.create_server(("127.0.0.1", 0)) as silent:  # the command must not end first
        proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", "stream_expiry", "status",
             "--bootstrap-servers", f"127.0.0.1:{silent.getsockname()[1]}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        with _reaped(proc):
            deadline = time.monotonic() + 20
            while not _catches(proc.pid, signal.SIGTERM):
                assert proc.poll() is None, "it ended before it set a handler"
                assert time.monotonic() < deadline, "no handler set within 20 s"
                time.sleep(0.001)  # polling another process's state, not a wait for time
            proc.send_signal(sig)
            err = _stderr_once_ended(proc, within_s=20)
    assert (proc.returncode, "Traceback" in err) == (130, False), err

"""A signal that interrupts no system call still stops a one-shot command at once.

The race, made certain: the command's main thread blocks SIGINT, so the signal is taken
by another thread while the loop sleeps in its ``epoll_wait``, which nothing interrupts:
what a signal landing just before that call does to ``asyncio.run``. Python runs the
handler (which cancels the command) only once the main thread runs again, and a loop
with nothing due sleeps until its next timer. :func:`stream_expiry.wakeup.run_woken`
gives the loop the signal's byte to wake on.
"""

from __future__ import annotations

import signal
import subprocess
import sys

_SCRIPT = """
import os, signal, sys, threading, time

import anyio

from stream_expiry.wakeup import run_woken

# SIGINT as a new program has it: a process inherits an ignored SIGINT and a blocked one
# across exec, and the pytest worker that starts this had, at times, one or the other
# (from a test before this one): the signal was never taken, and the woken command slept
# its 30 s out (two CI runs in a row; either state, set by hand, hangs it the same way).
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

blocked = threading.Event()
main = threading.get_native_id()


def waiting() -> bool:
    with open(f"/proc/self/task/{main}/wchan") as f:
        wchan = f.read().strip()
    if wchan not in ("", "0"):
        return "epoll" in wchan
    with open(f"/proc/self/task/{main}/stat") as f:  # no wchan: asleep is in epoll_wait
        return f.read().rsplit(")", 1)[1].split()[0] == "S"


def interrupt_when_the_loop_sleeps() -> None:
    blocked.wait()
    while not waiting():
        time.sleep(0.001)  # polling another thread's state, not a wait for time
    os.kill(os.getpid(), signal.SIGINT)  # taken by this thread: the main one blocks it
    # One write(2): a print wrote "sent" and its newline apart, and a command woken at
    # once exited between the two (a daemon thread), which read as never sent.
    os.write(1, b"sent\\n")


async def command() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    blocked.set()
    await anyio.sleep(3600)


threading.Thread(target=interrupt_when_the_loop_sleeps, daemon=True).start()
try:
    (run_woken if sys.argv[1] == "woken" else anyio.run)(command)
except KeyboardInterrupt:
    sys.exit(130)
"""


def _interrupted(runner: str, within_s: float) -> tuple[int | None, str]:
    """The exit status of the script run by ``runner`` (None: still running ``within_s``
    after its start), once it said it sent the signal, and its stderr (a stack dumped by
    ``faulthandler`` when it is still running: where a woken run slept)."""
    argv = [sys.executable, "-X", "faulthandler", "-c", _SCRIPT, runner]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            status: int | None = proc.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            status = None
            proc.send_signal(signal.SIGABRT)  # faulthandler dumps every thread's stack
        said, errors = proc.communicate()
    assert said == b"sent\n", (said, errors)
    return status, errors.decode(errors="replace")


def test_a_signal_no_system_call_saw_wakes_the_command() -> None:
    status, errors = _interrupted("woken", within_s=30)
    assert status == 130, errors


def test_without_it_the_loop_sleeps_through_the_signal() -> None:
    """What the wakeup is for, so that a Python that mends its ``asyncio.run`` says so:
    the plain run is still asleep 3 s after its start, the signal sent (an hour's sleep,
    no timer before)."""
    assert _interrupted("plain", within_s=3)[0] is None

"""A one-shot command's event loop, woken by every signal: :func:`run_woken`.

``asyncio.run`` (anyio's too) takes Ctrl-C with a plain ``signal.signal`` handler, and
Python runs such a handler only when the main thread next runs bytecode. A signal that
lands between the loop's last look at the signals and its ``epoll_wait`` interrupts no
system call: the loop sleeps until its next timer, and the handler, which would cancel
the command, waits with it. Against a broker that never answers, the next timer is the
request timeout: ``status``, ``hold``, ``history``, ``explain`` and ``replay`` outlived
a SIGTERM or a Ctrl-C by 20 s and more, about once in a thousand interrupts (a CI run;
then, under load, every few hundred; a dump of the sleeping loop showed the cancellation
queued and never run).

Python's remedy is its wakeup file descriptor: the C-level handler writes the signal's
number there, whatever the main thread is doing, so a loop watching it wakes at once and
the handler runs. The long-running commands have one already (anyio's signal receivers
use ``loop.add_signal_handler``, which sets it); the one-shot commands did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from typing import TYPE_CHECKING, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

__all__ = ["run_woken", "signals_wake_the_loop"]

T = TypeVar("T")


def run_woken(func: Callable[..., Awaitable[T]], *args: object) -> T:
    """``anyio.run(func, *args)``, its loop woken by every signal that arrives while it
    runs (:func:`signals_wake_the_loop`)."""
    return anyio.run(_woken, func, *args)


async def _woken(func: Callable[..., Awaitable[T]], *args: object) -> T:
    with signals_wake_the_loop():
        return await func(*args)


@contextlib.contextmanager
def signals_wake_the_loop() -> Iterator[None]:
    """Within the block, every signal's arrival wakes the running asyncio loop: a socket
    pair, its write end the process's wakeup file descriptor, its read end drained by the
    loop. The wakeup descriptor set before is put back at the end. Outside the main thread
    (``main()`` called from a thread) it does nothing: only the main thread may set it,
    and it handles no signal there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    readable, writable = socket.socketpair()
    readable.setblocking(False)
    writable.setblocking(False)
    loop.add_reader(readable.fileno(), _drain, readable)
    before = signal.set_wakeup_fd(writable.fileno(), warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(before)
        loop.remove_reader(readable.fileno())
        readable.close()
        writable.close()


def _drain(readable: socket.socket) -> None:
    """Empty the socket: its bytes are signal numbers, whose handlers Python runs itself
    as soon as the loop is awake."""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while readable.recv(4096):
            pass

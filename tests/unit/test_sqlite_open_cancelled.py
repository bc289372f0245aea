"""A SQLite store's open cancelled while it waits on a lock another process holds (a stop
while the sink starts: ``stream_expiry.stopping``) lets its connection's thread go.

aiosqlite runs each connection in a thread of its own, not a daemon: an open cancelled
half-way left that thread waiting for requests, and Python's exit waits for such threads,
so the sink, its stop said, never ended (a review found the leak; this is what it does).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING

import anyio
import pytest

from stream_expiry.sinks.sqlite import SQLiteStore

if TYPE_CHECKING:
    from pathlib import Path


def _workers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


@pytest.mark.asyncio
async def test_an_open_cancelled_behind_a_lock_lets_its_thread_go(tmp_path: Path) -> None:
    path = tmp_path / "sink.db"
    async with SQLiteStore(path):
        pass  # the file and its schema exist
    before = _workers()
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # the open waits on it (busy_timeout: 10 s)
        with anyio.move_on_after(1) as waited:
            await SQLiteStore(path).open()
        assert waited.cancelled_caught, "the open did not wait on the lock"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    left = _workers() - before
    for thread in left:  # each ends once the statement it runs gives up or gets the lock
        await anyio.to_thread.run_sync(thread.join, 15)
    assert not [t for t in left if t.is_alive()], "the cancelled open's thread still runs"

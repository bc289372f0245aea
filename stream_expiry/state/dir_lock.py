"""One process at a time in a state directory.

Two instances of the service started with one state directory (two ``run`` on a machine,
both with the default ``./state``) went on without a word (a trial): each opens the
stores of the partitions it owns, and at the first rebalance that moves a partition
between them, the new owner finds its store still open in the other process. The
service takes an exclusive ``flock`` on ``STATE_DIR/.lock`` for as long as it runs, and a
second process stops at its start with a message that says what to do. The lock goes
with the process (closed or killed), so a crash leaves nothing to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import TYPE_CHECKING, Final

from stream_expiry.errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["LOCK_FILE", "state_dir_locked"]

LOCK_FILE: Final = ".lock"


@contextlib.contextmanager
def state_dir_locked(state_dir: str) -> Iterator[None]:
    """Hold ``state_dir``'s lock for the block; raise :class:`StoreError` if another
    process holds it (naming its pid, which the holder writes in the file)."""
    path = os.path.join(state_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StoreError(
                f"the state directory {state_dir!r} is in use by another stream-expiry "
                f"process{who}: give each instance a state directory of its own "
                "(--state-dir, $STREAM_EXPIRY_STATE_DIR, or state_dir in the config file)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock

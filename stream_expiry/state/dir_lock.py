"""One process at a time in a state directory.

Two instances of the service started with one state directory (two ``run`` on a machine,
both with the default ``./state``) went on without a word (a trial): each opens the
stores of the partitions it owns, and at the first rebalance that moves a partition
between them, the new owner finds its store still open in the other process. The
service takes an exclusive ``flock`` on ``STATE_DIR/.lock`` for as long as it runs, and a
second process stops at its start with a message that says what to do. The lock goes
with the process (closed or killed), so a crash leaves nothing to clean up.

A state directory given as a path that is a file (or under one) is what the user gave
wrong: :func:`check_state_dir` says so before anything is started (status 2, as a file
given as the archive's ``--dir``), where it was found only at the service's start and
said with status 4, a state directory that failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import TYPE_CHECKING, Final

from stream_expiry.errors import ConfigurationError, StoreError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["LOCK_FILE", "check_state_dir", "state_dir_locked"]

LOCK_FILE: Final = ".lock"
_GIVEN_AS: Final = "--state-dir, $STREAM_EXPIRY_STATE_DIR, or state_dir in the config file"


def check_state_dir(state_dir: str, *, given_as: str = _GIVEN_AS) -> None:
    """Raise :class:`ConfigurationError` if ``state_dir`` is not a directory and cannot be
    made one: it is a file, or the first of its parents that exists is one. Anything else
    (no permission, a full disk) is found when the directory is made and written.
    ``given_as``: where the user gives it (``demo`` takes only ``--state-dir``)."""
    path = os.path.abspath(state_dir)
    give = f"give a directory, created if missing ({given_as})"
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigurationError(f"the state directory {path!r} is a file, not a directory: {give}")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigurationError(
            f"the state directory {path!r} cannot be made: {parent!r} is a file, not a "
            f"directory; {give}"
        )


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

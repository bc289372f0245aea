"""The state directory's lock (stream_expiry.state.dir_lock), in this one process: a
``flock`` is held by the open file, so a second open of the lock file here is refused as
a second process's would be (the two-services case is tests/integration/test_service.py)."""

from __future__ import annotations

import fcntl
import os
from typing import TYPE_CHECKING

import pytest

from stream_expiry.errors import StoreError
from stream_expiry.state.dir_lock import LOCK_FILE, state_dir_locked

if TYPE_CHECKING:
    from pathlib import Path


def test_a_second_holder_is_refused_naming_the_first_ones_pid_and_the_lock_goes_with_the_block(
    tmp_path: Path,
) -> None:
    """A lock file left longer by an earlier holder (a pid of more digits, or anything) is
    rewritten whole, so the refusal names this pid, not a mix of the two; once the block
    ends, the directory can be locked again (a crashed or stopped service leaves nothing to
    clean up)."""
    (tmp_path / LOCK_FILE).write_text("1234567890123456789012345\n")
    with state_dir_locked(str(tmp_path)):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(StoreError) as refused, state_dir_locked(str(tmp_path)):
            pass
        assert str(refused.value) == (
            f"the state directory {str(tmp_path)!r} is in use by another stream-expiry "
            f"process (pid {os.getpid()}): give each instance a state directory of its own "
            "(--state-dir, $STREAM_EXPIRY_STATE_DIR, or state_dir in the config file)"
        )
    with state_dir_locked(str(tmp_path)):
        pass


def test_a_holder_that_wrote_no_pid_is_refused_without_one(tmp_path: Path) -> None:
    """The file says no pid (a holder between its lock and its write, or another tool's
    lock): the refusal names none rather than the file's text."""
    (tmp_path / LOCK_FILE).write_text("not a pid\n")
    held = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with (
            pytest.raises(StoreError, match=r"process: give each instance"),
            state_dir_locked(str(tmp_path)),
        ):
            pass
    finally:
        os.close(held)


def test_a_fresh_state_directory_gets_its_lock_file_readable_by_its_owner_alone(
    tmp_path: Path,
) -> None:
    """A first start has no lock file: it is created (the service does not stop on a new
    directory), holding the pid, and no other user can read or write it."""
    with state_dir_locked(str(tmp_path)):
        lock = tmp_path / LOCK_FILE
        assert lock.read_text() == f"{os.getpid()}\n"
        assert lock.stat().st_mode & 0o777 == 0o600

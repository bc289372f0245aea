"""How work is shared among worker processes, and how replay's reports add up; the
replay itself, in one process and in two, runs against the broker in
tests/integration/test_replay.py."""

from __future__ import annotations

import io
import pickle
from typing import TYPE_CHECKING

import pytest

from stream_expiry.errors import BrokerError, StreamExpiryError
from stream_expiry.replay import Change, ProgressBar, ReplayReport
from stream_expiry.replay_workers import merge_reports
from stream_expiry.workers import AUTO_FROM_MESSAGES, _sendable, run_in_workers, worker_count

if TYPE_CHECKING:
    from pathlib import Path

    from stream_expiry.workers import Reporter


def test_workers_are_asked_for_or_follow_the_cpus_for_a_large_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("stream_expiry.workers._cpus", lambda: 3)
    assert worker_count(None, 8, AUTO_FROM_MESSAGES - 1) == 1  # small: not worth a process
    assert worker_count(None, 8, AUTO_FROM_MESSAGES) == 3
    assert worker_count(None, 2, 10 * AUTO_FROM_MESSAGES) == 2  # at most one per part
    assert worker_count(4, 8, 0) == 4  # asked: whatever the size
    assert worker_count(4, 0, 0) == 1


def change(key: str) -> Change:
    return Change(key, 1, 2, "default", "earlier")


def test_reports_add_up_and_the_sample_is_the_first_changes_in_key_order() -> None:
    a = ReplayReport(events=5, records=4, unchanged=1, earlier=3, worker_rss=[10])
    a.sample = [change("a/1"), change("a/3"), change("c/9")]
    b = ReplayReport(events=7, records=6, unchanged=2, later=1, due_now=2, never=1)
    b.sample, b.worker_rss = [change("a/2"), change("b/1")], [20]
    merged = merge_reports([a, b], sample_size=3)
    assert merged.counts() == {
        "events": 12,
        "records": 10,
        "unchanged": 3,
        "earlier": 3,
        "later": 1,
        "due_now": 2,
        "never": 1,
    }
    assert [c.key for c in merged.sample] == ["a/1", "a/2", "a/3"]
    assert merged.worker_rss == [10, 20]


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def test_a_worker_error_reaches_the_parent_as_itself_or_as_its_text() -> None:
    plain = BrokerError("no broker at h:1")
    assert _sendable(plain) is plain
    odd = _sendable(Unpicklable(1, 2))  # its class cannot be rebuilt from its args
    assert isinstance(odd, StreamExpiryError)
    assert "Unpicklable: 1/2" in str(odd)
    pickle.loads(pickle.dumps(odd))


def square(job: int, report: Reporter) -> int:
    """A worker's function: reports once, then answers (or fails, for 13)."""
    report(job, final=True)
    if job == 13:
        raise BrokerError(f"job {job} failed")
    return job * job


@pytest.mark.asyncio
async def test_workers_return_their_results_in_order_and_their_progress() -> None:
    seen: list[tuple[int, int]] = []
    results = await run_in_workers(
        square, [3, 4], name="test", on_progress=lambda i, p: seen.append((i, p))
    )
    assert results == [9, 16]
    assert sorted(seen) == [(0, 3), (1, 4)]


def collection_thresholds(job: int, report: Reporter) -> tuple[int, ...]:
    import gc

    return gc.get_threshold()


@pytest.mark.asyncio
async def test_a_worker_collects_garbage_as_seldom_as_the_service() -> None:
    """A restore's worker spent 4-8 % of its CPU in cyclic collections at the default
    thresholds (stream_expiry.collection)."""
    # (A spawned process starts at Python's defaults, whatever this one's are.)
    assert await run_in_workers(collection_thresholds, [0], name="test") == [(50_000, 50, 100)]


@pytest.mark.asyncio
async def test_a_failed_worker_raises_its_error_in_the_parent() -> None:
    with pytest.raises(BrokerError, match="job 13 failed"):
        await run_in_workers(square, [2, 13], name="test")


def test_a_cgroup_cpu_quota_caps_the_cpus(tmp_path: Path) -> None:
    from stream_expiry.workers import _cgroup_quota

    assert _cgroup_quota(str(tmp_path)) is None  # nothing to read: no quota known
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: 2 processes
    assert _cgroup_quota(str(tmp_path)) == 2
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1, no quota
    assert _cgroup_quota(str(tmp_path)) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert _cgroup_quota(str(tmp_path)) == 1


def sleeper(job: str, report: Reporter) -> None:
    """A worker's function that writes its pid to ``job`` (a path) and then waits."""
    import os
    import time

    with open(job, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)


PARENT = """
import anyio, sys
from stream_expiry.workers import run_in_workers
from tests.unit.test_replay_workers import sleeper
anyio.run(lambda: run_in_workers(sleeper, [sys.argv[1]], name="test"))
"""


def test_a_worker_dies_with_its_parent_killed_outright(tmp_path: Path) -> None:
    """A service killed by SIGKILL (or the OOM killer) mid-restore must not leave a worker
    holding its stores' locks when it starts again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(pid_file)], cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()):
            assert parent.poll() is None, "the parent ended before its worker started"
            assert time.monotonic() < deadline, "no worker started within 30 s"
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        while _alive(worker):
            assert time.monotonic() < deadline + 10, f"worker {worker} outlived its parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def vanish(job: int, report: Reporter) -> None:
    """A worker's function whose process ends without a word (as if killed)."""
    import os

    os._exit(job)


@pytest.mark.asyncio
async def test_a_worker_that_vanishes_is_reported_with_what_to_do() -> None:
    with pytest.raises(StreamExpiryError, match=r"test worker 0 stopped .*exit code 3.*; do X"):
        await run_in_workers(vanish, [3], name="test", hint="; do X")


_MAPPED_AFTER = """
import ctypes, sys
from stream_expiry.workers import give_back_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "on":
    give_back_freed_memory()
block = bytearray(4 << 20)  # a response's size: mapped, then freed
del block
blocks = [bytearray(300 * 1024) for _ in range(40)]
print(libc.mallinfo2().hblkhd)
"""


def test_freed_buffers_are_given_back_not_kept_in_the_heap() -> None:
    """glibc raises its mmap threshold when a mapped block is freed; replay's workers fix
    it, so buffers the size of a fetch stay mapped (and are unmapped when freed)."""
    import ctypes
    import subprocess
    import sys

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("not glibc 2.33 or later: give_back_freed_memory does nothing here")

    def mapped(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _MAPPED_AFTER, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    # Fixed: each of the 40 blocks (12 MiB) mapped on its own. glibc's default: from the
    # heap; what else is mapped (the interpreter's own, coverage's) is under a MiB or two.
    blocks = 40 * 300 * 1024
    assert mapped("on") >= blocks
    assert mapped("off") < blocks // 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_replay_progress_is_a_line_every_10_s_off_a_terminal_and_a_bar_on_one() -> None:
    """Off a terminal it said nothing at all: 22 s of silence on 400,000 stamps in a
    user trial, a minute or more at 10 M (a pod's log, CI, a pipe)."""
    out = io.StringIO()
    bar = ProgressBar("stamps", 400_000, out)
    bar(1_000)
    assert out.getvalue() == ""  # not yet: a line every 10 s
    bar.last -= ProgressBar.LINE_EVERY_S
    bar(100_000)
    [line] = out.getvalue().splitlines()
    assert line.startswith("replay: 100,000 of 400,000 stamps (25 %), ")
    assert line.endswith(" s left")
    bar(400_000, final=True)  # the summary follows: no last line
    assert len(out.getvalue().splitlines()) == 1
    term = _Terminal()
    bar = ProgressBar("stamps", 400_000, term)
    bar(100_000, final=True)
    assert term.getvalue().startswith("\rreplay [#######.......................] 100,000/400,000")

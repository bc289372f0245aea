"""bench.cgroup: where a memory cgroup goes, its limit, and what it reports, on a fake
cgroup tree (the real one needs root; ``bench.e2e_replay --memory-limit`` uses it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from bench.cgroup import CgroupUnavailable, open_cgroup

if TYPE_CHECKING:
    from pathlib import Path

V1 = "9:name=systemd:/\n4:memory:/jobs/abc\n1:cpu:/\n0::/\n"
V2 = "0::/user.slice/me\n"


def _v1_tree(root: Path) -> Path:
    own = root / "memory" / "jobs" / "abc"
    own.mkdir(parents=True)
    return own


def _v2_tree(root: Path, controllers: str) -> Path:
    own = root / "user.slice" / "me"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers)
    return own


def test_v1_cgroup_goes_under_the_process_own_memory_cgroup(tmp_path: Path) -> None:
    own = _v1_tree(tmp_path)
    cg = open_cgroup(200 * 2**20, root=tmp_path, proc_cgroup=V1)
    assert cg.version == 1
    assert cg.path.parent == own
    assert (cg.path / "memory.limit_in_bytes").read_text() == str(200 * 2**20)
    (cg.path / "memory.max_usage_in_bytes").write_text("123456\n")
    (cg.path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cg.peak_bytes() == 123456
    assert cg.oom_kills() == 2


def test_v2_is_preferred_when_its_memory_controller_is_there(tmp_path: Path) -> None:
    own = _v2_tree(tmp_path, "cpu io memory pids\n")
    cg = open_cgroup(64 * 2**20, root=tmp_path, proc_cgroup=V2)
    assert (cg.version, cg.path.parent) == (2, own)
    assert (cg.path / "memory.max").read_text() == str(64 * 2**20)
    (cg.path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    (cg.path / "memory.peak").write_text("999\n")
    assert (cg.peak_bytes(), cg.oom_kills()) == (999, 1)


def test_v2_without_memory_controller_is_skipped(tmp_path: Path) -> None:
    _v2_tree(tmp_path, "cpu pids\n")
    with pytest.raises(CgroupUnavailable, match="no memory controller"):
        open_cgroup(2**20, root=tmp_path, proc_cgroup=V2)


def test_an_unwritable_tree_says_why(tmp_path: Path) -> None:
    # The v1 hierarchy is named but its directory is missing: mkdir fails.
    with pytest.raises(CgroupUnavailable, match="v1"):
        open_cgroup(2**20, root=tmp_path, proc_cgroup=V1)


def test_remove_deletes_the_cgroup_directory(tmp_path: Path) -> None:
    _v1_tree(tmp_path)
    cg = open_cgroup(2**20, root=tmp_path, proc_cgroup=V1)
    (cg.path / "memory.limit_in_bytes").unlink()  # a real cgroup's files go with it
    cg.remove()
    assert not cg.path.exists()
    assert cg.oom_kills() == 0
    assert cg.peak_bytes() is None

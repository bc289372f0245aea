"""A memory cgroup around one child process tree: the memory a container's limit would see.

Adding up each process's peak RSS overstates what a process tree needs: the pages of the
interpreter and its libraries are counted once per process, and the peaks need not
coincide. What a user's container enforces is its memory cgroup's limit, so
``bench.e2e_replay --memory-limit`` runs the replay under one: the child joins a fresh
cgroup (v2 where this process's cgroup can be written to, else v1's memory hierarchy) with
``memory.max`` (``memory.limit_in_bytes``) set, and the run either completes under it or is
killed by the kernel's OOM killer, which the cgroup counts. The cgroup also charges the page
cache of the files its processes write (RocksDB's), which the kernel reclaims at the limit,
so its peak usage is about the limit whenever there is more to cache: the figure that
counts is whether the run completed, and how fast.

Needs write access to the cgroup filesystem (root on these machines); :func:`open_cgroup`
raises :class:`CgroupUnavailable` saying why when there is none.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupUnavailable", "MemoryCgroup", "open_cgroup"]

ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(RuntimeError):
    """No memory cgroup can be made here."""


@dataclass
class MemoryCgroup:
    path: Path
    version: int  # 1 or 2
    limit_bytes: int

    def join(self, pid: int | None = None) -> None:
        """Move ``pid`` (this process by default) into the cgroup; its children follow."""
        (self.path / "cgroup.procs").write_text(str(pid if pid is not None else os.getpid()))

    def peak_bytes(self) -> int | None:
        """The highest usage charged, page cache included (v2 needs Linux 5.19)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        """Processes the kernel killed for this cgroup's limit."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = (self.path / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        """Remove the cgroup (its processes must have ended)."""
        with contextlib.suppress(OSError):
            self.path.rmdir()


def _own_cgroups(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller list (v2: ""): path}."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def _candidates(root: Path, own: dict[str, str]) -> list[tuple[int, Path]]:
    """Where a child cgroup with a memory controller could go, best first."""
    found = []
    if "" in own:  # v2: the unified hierarchy, at the root or under unified/
        for mount in (root, root / "unified"):
            listed = mount / own[""].lstrip("/") / "cgroup.controllers"
            if listed.is_file() and "memory" in listed.read_text().split():
                found.append((2, listed.parent))
    for controllers, where in own.items():  # v1: the memory hierarchy
        if "memory" in controllers.split(","):
            found.append((1, root / "memory" / where.lstrip("/")))
    return found


def open_cgroup(
    limit_bytes: int, *, root: Path = ROOT, proc_cgroup: str | None = None, name: str = "se-bench"
) -> MemoryCgroup:
    """A new memory cgroup limited to ``limit_bytes``, under this process's own
    (``proc_cgroup``: the text of ``/proc/self/cgroup``, read when not given)."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError as exc:
            raise CgroupUnavailable(f"cannot read /proc/self/cgroup: {exc}") from exc
    own = _own_cgroups(proc_cgroup)
    errors = []
    for version, parent in _candidates(root, own):
        path = parent / f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
        except OSError as exc:
            errors.append(f"v{version} {parent}: {exc}")
            continue
        limit = "memory.limit_in_bytes" if version == 1 else "memory.max"
        try:
            (path / limit).write_text(str(limit_bytes))
            if version == 2:  # no swapping out of the limit (these machines have no swap)
                swap = path / "memory.swap.max"
                if swap.exists():
                    swap.write_text("0")
        except OSError as exc:
            path.rmdir()
            errors.append(f"v{version} {path}: {exc}")
            continue
        return MemoryCgroup(path, version, limit_bytes)
    why = "; ".join(errors) or "no memory controller in /proc/self/cgroup"
    raise CgroupUnavailable(f"no memory cgroup can be made here ({why}); run as root on Linux")

"""The RocksDB stores of one process share its memory and open files, whatever their count.

An instance owning 48 partitions of each input topic opens 144 stores: with a 16 MiB write
buffer each (and its memtable Bloom filter, a tenth of it, made at once) it held 316 MiB
with every store empty, and with every table file kept open, 1,332 descriptors after a
little traffic (docs/BENCHMARKS.md, round 26)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from stream_expiry.state import RocksKV
from stream_expiry.state.kv import store_sizes

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1024 * 1024


def _sizes(stores: int) -> tuple[int, int]:
    s = store_sizes(stores, memtables=48 * MIB, write_buffer=16 * MIB, table_files=500)
    return s.write_buffer, s.table_files


def test_a_few_stores_keep_whole_buffers_and_many_share_the_budget() -> None:
    """Up to three stores keep 16 MiB memtables (the ingest speed the memtable's Bloom
    filter was added for); beyond, the memtables of all add up to the process's 48 MiB,
    down to a floor of 256 KiB a store; open table files add up to 500 down to 10."""
    assert _sizes(1) == (16 * MIB, 500)
    assert _sizes(3) == (16 * MIB, 166)
    assert _sizes(12) == (4 * MIB, 41)
    assert _sizes(144) == (48 * MIB // 144, 10)
    assert _sizes(1000) == (256 * 1024, 10)
    for n in (4, 12, 48, 144):
        buffer, files = _sizes(n)
        assert n * buffer <= 48 * MIB
        assert n * files <= 500 or files == 10


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _options(path: str) -> dict[str, str]:
    """What RocksDB runs the store with, from the OPTIONS file it writes at open."""
    name = max(n for n in os.listdir(path) if n.startswith("OPTIONS-"))
    values: dict[str, str] = {}
    with open(os.path.join(path, name), encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep:
                values.setdefault(key, value)
    return values


def test_stores_opened_together_share_the_memory_of_one(tmp_path: Path) -> None:
    """48 stores opened as one assignment: each memtable a 48th of the budget, not 16 MiB
    (with its 1.6 MiB filter, 48 empty stores took 89 MiB; now a few)."""
    paths = [str(tmp_path / f"s{i}") for i in range(48)]
    before = _rss()
    with contextlib.ExitStack() as stack, RocksKV.opening(len(paths)):
        kvs = [RocksKV(p) for p in paths]
        for kv in kvs:
            stack.callback(kv.close)
        grown = _rss() - before
        for path in (paths[0], paths[-1]):
            options = _options(path)
            assert int(options["write_buffer_size"]) <= 48 * MIB // 48
            assert float(options["memtable_prefix_bloom_size_ratio"]) == pytest.approx(0.1)
            assert int(options["max_open_files"]) == kvs[0].sizes.max_open_files
    assert grown < 30 * MIB, f"48 empty stores grew the process by {grown / MIB:.0f} MiB"


def test_a_store_keeps_no_more_table_files_open_than_its_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 table files, each read: RocksDB kept all 30 open (no max_open_files), and with a
    bound but its table cache in 64 shards, 24 of them."""
    monkeypatch.setattr(RocksKV, "TABLE_FILES", 10)
    path = str(tmp_path / "s")
    kv = RocksKV(path)
    try:
        assert kv.sizes.table_files == 10
        for b in range(30):  # disjoint ranges: compaction moves the files, keeps them apart
            kv.apply({b"%04d-%04d" % (b, i): b"v" * 100 for i in range(500)}, ())
            kv._db.flush()  # one table file each
        keys = [b"%04d-0007" % b for b in range(30)]
        assert kv.multi_get(keys) == [b"v" * 100] * 30
        assert len([n for n in os.listdir(path) if n.endswith(".sst")]) == 30
        assert 0 < _open_files_under(path, ".sst") <= 10
    finally:
        kv.close()


def _open_files_under(path: str, suffix: str) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            target = os.readlink(f"/proc/self/fd/{fd}")
            count += target.startswith(path) and target.endswith(suffix)
    return count


def _in_a_process(code: str, tmp_path: Path) -> str:
    """``code`` in a fresh Python (the open-file limit is the process's); its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout + done.stderr


def test_the_first_store_raises_the_soft_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    """A shell's soft limit of 1,024 is below what 144 stores hold (6 files each before any
    table file): the process takes what its hard limit allows, as Go's runtime does."""
    out = _in_a_process(
        """
        import resource, sys
        from stream_expiry.state import RocksKV
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        kv = RocksKV(sys.argv[1] + "/s")
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard)
        kv.close()
        """,
        tmp_path,
    )
    assert out.strip().endswith("True")


def test_stores_beyond_the_hard_file_limit_are_a_warning(tmp_path: Path) -> None:
    out = _in_a_process(
        """
        import logging, resource, sys
        logging.basicConfig()
        from stream_expiry.state import RocksKV
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        with RocksKV.opening(100):
            RocksKV(sys.argv[1] + "/s").close()
        """,
        tmp_path,
    )
    assert "100 state stores may hold up to 1800 open files" in out
    assert "may open 256 (ulimit -n)" in out

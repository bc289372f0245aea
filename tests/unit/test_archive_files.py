"""The archive's files without a broker: layout, durability format, org names, purge."""

from __future__ import annotations

import gzip
import os
from typing import TYPE_CHECKING

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.archive import ERASURES, ArchiveWriter, Entry, org_dirname, purge, read_lines
from stream_expiry.cli import main
from stream_expiry.errors import StoreError
from stream_expiry.model import Identity, Stamp, encode_stamp

if TYPE_CHECKING:
    from pathlib import Path

DAY1 = 1_795_000_000_000  # 2026-11-18
DAY2 = DAY1 + 86_400_000


def stamp_entry(org: str, rid: str, created: int, offset: int, partition: int = 0) -> Entry:
    ident = Identity(org, "_", "live", "conversation", rid)
    value = encode_stamp(Stamp(ident, created, created + 60_000, 60_000, "default"), {"n": rid})
    return Entry(ident.key.encode(), value, partition, offset, created)


def erasure(org: str, rid: str, offset: int, partition: int = 0) -> Entry:
    ident = Identity(org, "_", "live", "conversation", rid)
    return Entry(ident.key.encode(), None, partition, offset, DAY2)


@given(st.text(max_size=600), st.text(max_size=600))
def test_org_names_are_safe_and_injective(a: str, b: str) -> None:
    for org in (a, b):
        name = org_dirname(org)
        assert name not in ("", ".", "..")
        assert "/" not in name
        assert "\0" not in name
        assert len(name.encode()) <= 200
    if a != b:
        assert org_dirname(a) != org_dirname(b)


def test_layout_by_org_and_day_and_one_gzip_member_per_batch(tmp_path: Path) -> None:
    w = ArchiveWriter(str(tmp_path))
    w.write([stamp_entry("acme", "1", DAY1, 0), stamp_entry("acme", "2", DAY2, 1)])
    w.write([stamp_entry("a/b", "3", DAY1, 2), erasure("acme", "1", 3)])
    w.write([stamp_entry("acme", "4", DAY1, 4)])
    assert sorted(w.files) == [
        "a%2Fb/2026-11-18.jsonl.gz",
        "acme/2026-11-18.jsonl.gz",
        "acme/2026-11-19.jsonl.gz",
        f"acme/{ERASURES}",
    ]
    day1 = read_lines(str(tmp_path / "acme" / "2026-11-18.jsonl.gz"))
    assert [(x["key"], x["offset"]) for x in day1] == [
        (Identity("acme", "_", "live", "conversation", "1").key, 0),
        (Identity("acme", "_", "live", "conversation", "4").key, 4),
    ]
    assert day1[0]["stamp"]["data"] == {"n": "1"}
    raw = (tmp_path / "acme" / "2026-11-18.jsonl.gz").read_bytes()
    assert raw.count(b"\x1f\x8b\x08") == 2  # two appends, two gzip members, one valid file
    assert gzip.decompress(raw).count(b"\n") == 2
    (marker,) = read_lines(str(tmp_path / "acme" / ERASURES))
    assert marker["offset"] == 3
    assert marker["erased_at"] == "2026-11-19T11:06:40.000Z"
    assert (w.lines, w.erasures, w.batches) == (4, 1, 3)


def test_unreadable_values_and_foreign_keys_are_kept(tmp_path: Path) -> None:
    w = ArchiveWriter(str(tmp_path))
    w.write([Entry(b"not-a-record-key", b"\xffnot json", 0, 7, DAY1)])
    (line,) = read_lines(str(tmp_path / "_unknown" / "undated.jsonl.gz"))
    assert line["key"] == "not-a-record-key"
    assert line["offset"] == 7
    assert "not json" in line["stamp"]


def test_purge_removes_erased_lines_and_keeps_later_lives(tmp_path: Path) -> None:
    w = ArchiveWriter(str(tmp_path))
    w.write([stamp_entry("acme", "1", DAY1, 0), stamp_entry("acme", "2", DAY1, 1)])
    w.write([stamp_entry("acme", "1", DAY1, 5)])  # re-delivered duplicate, before the erasure
    w.write([erasure("acme", "1", 6), stamp_entry("other", "1", DAY1, 7)])
    w.write([stamp_entry("acme", "1", DAY2, 9)])  # a new life after the delete
    result = purge(str(tmp_path))
    assert (result.files_rewritten, result.lines_removed, result.lines_kept) == (1, 2, 2)
    left = read_lines(str(tmp_path / "acme" / "2026-11-18.jsonl.gz"))
    assert [x["stamp"]["record_id"] for x in left] == ["2"]
    assert read_lines(str(tmp_path / "acme" / "2026-11-19.jsonl.gz"))[0]["offset"] == 9
    assert len(read_lines(str(tmp_path / "other" / "2026-11-18.jsonl.gz"))) == 1
    assert read_lines(str(tmp_path / "acme" / ERASURES))  # markers stay, for re-deliveries
    assert not [p for p in os.listdir(tmp_path / "acme") if "tmp" in p]
    again = purge(str(tmp_path))
    assert again.lines_removed == 0
    assert again.files_rewritten == 0


def test_purge_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ArchiveWriter(str(tmp_path)).write([stamp_entry("o", "1", DAY1, 0), erasure("o", "1", 1)])
    assert main(["archive", "purge", "--dir", str(tmp_path)]) == 0
    assert "purged 1 erased lines from 1 files; 0 lines kept" in capsys.readouterr().out
    assert main(["archive", "purge", "--dir", str(tmp_path / "missing")]) == 2
    assert "no archive directory" in capsys.readouterr().err


def test_a_corrupt_file_is_reported_not_a_traceback(tmp_path: Path) -> None:
    ArchiveWriter(str(tmp_path)).write([erasure("o", "1", 1)])
    (tmp_path / "o" / "2026-11-18.jsonl.gz").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="cannot purge"):
        purge(str(tmp_path))


def test_lines_are_the_stamps_as_produced(tmp_path: Path) -> None:
    e = stamp_entry("acme", "x", DAY1, 3, partition=1)
    ArchiveWriter(str(tmp_path)).write([e])
    (line,) = read_lines(str(tmp_path / "acme" / "2026-11-18.jsonl.gz"))
    assert orjson.dumps(line["stamp"]) == e.value
    assert line["partition"] == 1

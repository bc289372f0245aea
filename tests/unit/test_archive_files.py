"""The archive's files without a broker: layout, durability format, org names, purge."""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.archive import (
    ERASURES,
    ArchiveWriter,
    Entry,
    MarkerTerms,
    org_dirname,
    purge,
    read_lines,
)
from stream_expiry.cli import main
from stream_expiry.errors import StoreError
from stream_expiry.holds import Hold, HoldBook
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.timeutil import format_ts

if TYPE_CHECKING:
    from pathlib import Path

DAY1 = 1_795_000_000_000  # 2026-11-18
DAY2 = DAY1 + 86_400_000
NOW = DAY2 + 3_600_000  # a purge soon after the erasures: every marker stays


def stamp_entry(org: str, rid: str, created: int, offset: int, partition: int = 0) -> Entry:
    ident = Identity(org, "_", "live", "conversation", rid)
    value = encode_stamp(Stamp(ident, created, created + 60_000, 60_000, "default"), {"n": rid})
    return Entry(ident.key.encode(), value, partition, offset, created)


def erasure(org: str, rid: str, offset: int, partition: int = 0) -> Entry:
    ident = Identity(org, "_", "live", "conversation", rid)
    return Entry(ident.key.encode(), None, partition, offset, DAY2)


def tombstone_entry(
    org: str,
    rid: str,
    created: int | None,
    reason: str,
    offset: int,
    deleted_at: int | None = None,
    *,
    ttl: int = 60_000,
    at: int = DAY2 + 5,
) -> Entry:
    """A message of expiry.tombstones, written ``at``, ending the life created at
    ``created`` (of ``ttl``), with the service's ``expiry-deleted-at`` header when
    ``deleted_at`` is given."""
    ident = Identity(org, "_", "live", "conversation", rid)
    stamp = Stamp(ident, created, None if created is None else created + ttl, ttl, "org")
    value = encode_tombstone(stamp, reason=reason, emitted_at=at)  # type: ignore[arg-type]
    return Entry(ident.key.encode(), value, 0, offset, at, None, "tombs", deleted_at)


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


def test_a_stamp_nested_too_deep_for_a_line_is_kept_as_text(tmp_path: Path) -> None:
    """A stamp orjson reads but cannot write one level further down (254 levels; earlier
    versions stamped data that deep) is kept as text: it stopped the archive, every time."""
    data = b"[" * 253 + b"]" * 253
    value = b'{"org":"acme","created_at":"2026-11-18T00:00:00.000Z","data":' + data + b"}"
    w = ArchiveWriter(str(tmp_path))
    w.write(
        [Entry(Identity("acme", "_", "live", "conversation", "1").key.encode(), value, 0, 3, DAY1)]
    )
    (line,) = read_lines(str(tmp_path / "acme" / "2026-11-18.jsonl.gz"))
    assert (line["offset"], line["stamp"]) == (3, value.decode())


def test_the_archive_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """It holds the records' data: under the usual umask (022) its files were 0644 and its
    directories 0755, readable by every user of the machine."""
    old = os.umask(0o022)
    try:
        top = tmp_path / "archive"
        w = ArchiveWriter(str(top))
        w.write([stamp_entry("acme", "1", DAY1, 0), erasure("acme", "2", 1)])
        w.write([stamp_entry("acme", "3", DAY1, 2), erasure("acme", "1", 3)])
        made = [top, top / "acme", *(top / "acme").iterdir(), top / ".lock"]
        modes = {p.name: p.stat().st_mode & 0o777 for p in made}
        assert modes == {
            "archive": 0o700,
            "acme": 0o700,
            "2026-11-18.jsonl.gz": 0o600,
            ERASURES: 0o600,
            ".lock": 0o600,
        }
        day = top / "acme" / "2026-11-18.jsonl.gz"
        day.chmod(0o640)  # an operator's choice, which a purge's rewrite keeps
        assert purge(str(top), now_ms=NOW).files_rewritten == 1
        assert day.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_purge_removes_erased_lines_and_keeps_later_lives(tmp_path: Path) -> None:
    w = ArchiveWriter(str(tmp_path))
    w.write([stamp_entry("acme", "1", DAY1, 0), stamp_entry("acme", "2", DAY1, 1)])
    w.write([stamp_entry("acme", "1", DAY1, 5)])  # re-delivered duplicate, before the erasure
    w.write([erasure("acme", "1", 6), stamp_entry("other", "1", DAY1, 7)])
    w.write([stamp_entry("acme", "1", DAY2, 9)])  # a new life after the delete
    result = purge(str(tmp_path), now_ms=NOW)
    # Kept: what is left in the file purged, not the org's untouched file (DAY2's).
    assert (result.files_rewritten, result.lines_removed, result.lines_kept) == (1, 2, 1)
    left = read_lines(str(tmp_path / "acme" / "2026-11-18.jsonl.gz"))
    assert [x["stamp"]["record_id"] for x in left] == ["2"]
    assert read_lines(str(tmp_path / "acme" / "2026-11-19.jsonl.gz"))[0]["offset"] == 9
    assert len(read_lines(str(tmp_path / "other" / "2026-11-18.jsonl.gz"))) == 1
    assert read_lines(str(tmp_path / "acme" / ERASURES))  # markers stay, for re-deliveries
    assert not [p for p in os.listdir(tmp_path / "acme") if "tmp" in p]
    again = purge(str(tmp_path), now_ms=NOW)
    assert again.lines_removed == 0
    assert again.files_rewritten == 0


def test_purge_keeps_what_a_legal_hold_matches_until_its_release(tmp_path: Path) -> None:
    """An erasure asked before a hold was placed reached the archive's purge after it, and
    removed what the hold keeps, perhaps its last copy (a trial). The erased lines of a
    record an active hold matches stay, and so do its markers; the purge after the release
    removes them."""
    w = ArchiveWriter(str(tmp_path))
    w.write([stamp_entry("acme", "1", DAY1, 0), stamp_entry("acme", "2", DAY1, 1)])
    w.write([erasure("acme", "1", 2), erasure("acme", "2", 3)])
    holds = HoldBook()
    holds.place(Hold("h1", "acme", None, None, None, "1", "case 7", 0))
    result = purge(str(tmp_path), now_ms=NOW + 30 * DAY, holds=holds)
    assert (result.lines_removed, result.lines_held, result.lines_kept) == (1, 1, 1)
    left = read_lines(str(tmp_path / "acme" / "2026-11-18.jsonl.gz"))
    assert [x["stamp"]["record_id"] for x in left] == ["1"]
    # Long past their time, record 2's marker goes; record 1's waits for its line.
    assert [m["key"] for m in read_lines(str(tmp_path / "acme" / ERASURES))] == [left[0]["key"]]
    holds.release("h1")
    after = purge(str(tmp_path), now_ms=NOW + 30 * DAY, holds=holds)
    assert (after.lines_removed, after.lines_held, after.markers_dropped) == (1, 0, 1)


def test_purge_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ArchiveWriter(str(tmp_path)).write([stamp_entry("o", "1", DAY1, 0), erasure("o", "1", 1)])
    assert main(["archive", "purge", "--dir", str(tmp_path), "--without-holds"]) == 0
    assert "purged 1 erased line from 1 file; 0 lines left in it;" in capsys.readouterr().out


def test_purge_command_counts_the_lines_left_in_the_files_it_purged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial's purge said "purged 2 erased lines from 1 file; 3 lines kept" of a file left
    with 2 lines: the org's file it did not touch was counted too."""
    w = ArchiveWriter(str(tmp_path))
    w.write([stamp_entry("o", str(i), DAY1, i) for i in range(4)])
    w.write([stamp_entry("o", "9", DAY2, 4)])  # another file of the org, untouched
    w.write([erasure("o", "0", 5), erasure("o", "1", 6)])
    assert main(["archive", "purge", "--dir", str(tmp_path), "--without-holds"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("purged 2 erased lines from 1 file; 2 lines left in it;")
    assert len(read_lines(str(tmp_path / "o" / "2026-11-18.jsonl.gz"))) == 2
    assert main(["archive", "purge", "--dir", str(tmp_path / "missing"), "--without-holds"]) == 2
    assert "no archive directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("action", "says"),
    [
        ("purge", "give --dir the archive's directory"),
        ("run", "give --dir the archive's directory (created if missing)"),
    ],
)
def test_a_file_as_dir_is_said_to_be_one_before_kafka_is_asked(
    action: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial: ``purge`` said "no archive directory" of a file that is there, once it had
    read the holds from Kafka (and with no broker, only that none was given); ``run`` said
    "File exists" with status 4 once it had made the topics. No broker listens here: the
    file is found first."""
    afile = tmp_path / "archive.jsonl.gz"
    afile.write_bytes(b"")
    argv = ["archive", action, "--dir", str(afile), "--bootstrap-servers", "127.0.0.1:1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"stream-expiry archive: --dir {str(afile)!r} is a file, not a directory: {says}"


def test_a_corrupt_file_is_reported_not_a_traceback(tmp_path: Path) -> None:
    ArchiveWriter(str(tmp_path)).write([erasure("o", "1", 1)])
    (tmp_path / "o" / "2026-11-18.jsonl.gz").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="cannot purge"):
        purge(str(tmp_path), now_ms=NOW)


def test_lines_are_the_stamps_as_produced(tmp_path: Path) -> None:
    e = stamp_entry("acme", "x", DAY1, 3, partition=1)
    ArchiveWriter(str(tmp_path)).write([e])
    (line,) = read_lines(str(tmp_path / "acme" / "2026-11-18.jsonl.gz"))
    assert orjson.dumps(line["stamp"]) == e.value
    assert line["partition"] == 1


def test_org_names_that_fit_are_the_org_percent_encoded(tmp_path: Path) -> None:
    """A reader finds an org's files by its name: short names decode back to the org, UTF-8
    byte by byte, up to exactly 200 bytes."""
    for org in ("acme", "Ünï cødé", "a.b/c", "日本", "x" * 200, "é" * 33 + "ab"):
        name = org_dirname(org)
        assert unquote(name, errors="strict") == org
        assert len(name) <= 200
    assert org_dirname("é") == "%C3%A9"
    assert org_dirname("") == "%"


def test_long_org_names_are_cut_and_end_with_a_hash_of_the_whole_org() -> None:
    shared = "tenant-" + "x" * 300
    a, b = org_dirname(shared + "a"), org_dirname(shared + "b")
    assert a != b  # both cut in the shared part: the hash tells them apart
    for org, name in ((shared + "a", a), (shared + "b", b)):
        head, _, digest = name.rpartition("~")
        assert digest == hashlib.blake2b(org.encode(), digest_size=16).hexdigest()
        assert org.startswith(head)
        assert 190 <= len(name) <= 200
    assert "~" not in org_dirname("x" * 200)  # cut only beyond 200 bytes
    assert "~" in org_dirname("x" * 201)


def test_stamps_without_a_readable_day_are_undated_and_bad_keys_kept(tmp_path: Path) -> None:
    ident = Identity("acme", "_", "live", "conversation", "1")
    w = ArchiveWriter(str(tmp_path))
    w.write(
        [
            Entry(ident.key.encode(), b'["a list"]', 0, 1, DAY1),
            Entry(ident.key.encode(), b'{"created_at": "soon"}', 0, 2, DAY1),
            Entry(ident.key.encode(), b'{"created_at": 1795000000000}', 0, 3, DAY1),
            Entry(b"\xff\xfe", b'{"created_at": "2026-11-18T00:00:00Z"}', 0, 4, DAY1),
            Entry(None, b"{}", 0, 5, DAY1),
        ]
    )
    undated = read_lines(str(tmp_path / "acme" / "undated.jsonl.gz"))
    assert [(x["offset"], x["stamp"]) for x in undated] == [
        (1, ["a list"]),
        (2, {"created_at": "soon"}),
        (3, {"created_at": 1795000000000}),
    ]
    foreign = read_lines(str(tmp_path / "_unknown" / "2026-11-18.jsonl.gz"))
    assert [(x["key"], x["offset"]) for x in foreign] == [("\ufffd\ufffd", 4)]
    (keyless,) = read_lines(str(tmp_path / "_unknown" / "undated.jsonl.gz"))
    assert keyless["key"] == ""


def test_counts_and_identical_batches_give_identical_files(tmp_path: Path) -> None:
    """A file's bytes depend on its lines only (no time in the gzip header): two archives
    of the same stamps can be compared byte for byte."""
    batch = [stamp_entry("o", "1", DAY1, 0), erasure("o", "1", 1), erasure("o", "2", 2)]
    one, two = ArchiveWriter(str(tmp_path / "one")), ArchiveWriter(str(tmp_path / "two"))
    one.write(batch)
    two.write(batch)
    assert (one.lines, one.erasures, one.batches) == (1, 2, 1)
    for rel in ("o/2026-11-18.jsonl.gz", f"o/{ERASURES}"):
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
    w = ArchiveWriter(str(tmp_path / "one"))
    w.write([stamp_entry("o", "3", DAY1, 3), erasure("o", "3", 4)])
    purge(str(tmp_path / "one"), now_ms=NOW)  # rewrites the day's file
    for rel in ("o/2026-11-18.jsonl.gz", f"o/{ERASURES}"):
        raw = (tmp_path / "one" / rel).read_bytes()
        members = raw.split(b"\x1f\x8b\x08")[1:]
        assert members
        assert all(m[1:5] == bytes(4) for m in members)  # MTIME 0 in every member's header


def test_an_archive_that_cannot_be_made_or_written_says_where(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match=r"cannot create the archive directory '.*file/a'"):
        ArchiveWriter(str(blocker / "a"))
    w = ArchiveWriter(str(tmp_path / "arch"))
    (tmp_path / "arch" / "o").write_text("an org's directory is a file")
    with pytest.raises(StoreError, match=r"cannot write the archive in '.*arch'"):
        w.write([stamp_entry("o", "1", DAY1, 0)])


def test_purge_takes_each_keys_latest_marker_in_every_file(tmp_path: Path) -> None:
    """Markers in any order (re-deliveries append old ones after new ones): the highest
    offset decides; every file of the org is purged, undated ones included, and kept lines
    read back whole."""
    w = ArchiveWriter(str(tmp_path))
    w.write([stamp_entry("o", "1", DAY1, 0), stamp_entry("o", "1", DAY2, 4)])
    w.write([stamp_entry("o", "k1", DAY1, 1), stamp_entry("o", "k2", DAY1, 2)])
    ident = Identity("o", "_", "live", "conversation", "1")
    w.write([Entry(ident.key.encode(), b"{}", 0, 3, DAY1)])  # undated
    w.write([erasure("o", "1", 5), stamp_entry("o", "1", DAY2, 6), erasure("o", "1", 7)])
    w.write([erasure("o", "1", 5)])  # the first marker re-delivered after the second
    w.write([stamp_entry("o", "1", DAY2, 8)])  # the life after the last erasure
    result = purge(str(tmp_path), now_ms=NOW)
    assert (result.files_rewritten, result.lines_removed, result.lines_kept) == (3, 4, 3)
    day1 = read_lines(str(tmp_path / "o" / "2026-11-18.jsonl.gz"))
    assert [x["stamp"]["record_id"] for x in day1] == ["k1", "k2"]
    assert [x["offset"] for x in read_lines(str(tmp_path / "o" / "2026-11-19.jsonl.gz"))] == [8]
    assert read_lines(str(tmp_path / "o" / "undated.jsonl.gz")) == []


def test_the_null_of_an_expiry_erases_nothing(tmp_path: Path) -> None:
    """Only an explicit delete is an erasure request: purging what merely expired would
    empty the archive of what it is there to keep. A null without its reason (written
    before the header existed) still counts as an erasure, the side of privacy."""
    w = ArchiveWriter(str(tmp_path))
    w.write([stamp_entry("o", f"r{i}", DAY1, i) for i in range(4)])
    ident = {i: Identity("o", "_", "live", "conversation", f"r{i}").key.encode() for i in range(4)}
    w.write(
        [
            Entry(ident[0], None, 0, 10, DAY2, "ttl"),
            Entry(ident[1], None, 0, 11, DAY2, "explicit"),
            Entry(ident[2], None, 0, 12, DAY2),
        ]
    )
    assert (w.lines, w.erasures, w.expiries) == (4, 2, 1)
    markers = read_lines(str(tmp_path / "o" / ERASURES))
    assert [m["offset"] for m in markers] == [11, 12]
    assert purge(str(tmp_path), now_ms=NOW).lines_removed == 2
    kept = read_lines(str(tmp_path / "o" / "2026-11-18.jsonl.gz"))
    assert [x["stamp"]["record_id"] for x in kept] == ["r0", "r3"]


def test_explicit_tombstones_are_life_markers_and_purge_erases_up_to_the_request(
    tmp_path: Path,
) -> None:
    """An erasure a hold deferred, of a life the record has since followed with another, has
    no null on expiry.stamped: its explicit tombstone erases the lines of that key created
    at or before where the erasure ended the life, at any offset (a backdated create's
    line too), and keeps the next life, created after the request."""
    w = ArchiveWriter(str(tmp_path))
    w.write([stamp_entry("acme", "1", DAY1 + 9, 0), stamp_entry("acme", "2", DAY1, 1)])
    w.write([stamp_entry("acme", "1", DAY1, 2)])  # a backdated create of the same life
    w.write([stamp_entry("acme", "1", DAY2, 4)])  # the next life of record 1
    w.write([stamp_entry("acme", "3", DAY1, 5), stamp_entry("acme", "3", DAY2, 6)])
    w.write([stamp_entry("acme", "4", DAY1, 7), stamp_entry("acme", "4", DAY2, 8)])
    w.write(
        [
            tombstone_entry("acme", "1", DAY1, "explicit", 3, deleted_at=DAY1 + 10),
            tombstone_entry("acme", "2", DAY1, "ttl", 4),  # an expiry erases nothing
            # A request read after the life's expiry: it names no life; its header does.
            tombstone_entry("acme", "3", None, "explicit", 5, deleted_at=DAY1 + 20),
            tombstone_entry("acme", "4", DAY1, "explicit", 6),  # no header: its created_at
            tombstone_entry("acme", "5", None, "explicit", 7),  # says neither: no marker
            Entry(b"k", b"not json", 0, 8, DAY2, None, "tombs"),
        ]
    )
    assert (w.lines, w.erasures, w.tombstones) == (8, 3, 6)
    markers = read_lines(str(tmp_path / "acme" / ERASURES))
    assert markers[0] == {
        "key": Identity("acme", "_", "live", "conversation", "1").key,
        "until": "2026-11-18T11:06:40.010Z",
        "expires_at": "2026-11-18T11:07:40.000Z",  # the erased life's, from the tombstone
        "topic": "tombs",
        "partition": 0,
        "offset": 3,
        "erased_at": "2026-11-19T11:06:40.005Z",
    }
    assert [m["until"] for m in markers[1:]] == [
        "2026-11-18T11:06:40.020Z",
        "2026-11-18T11:06:40.000Z",
    ]
    result = purge(str(tmp_path), now_ms=NOW)
    assert (result.lines_removed, result.lines_kept) == (4, 1)  # left in the one file purged
    left = read_lines(str(tmp_path / "acme" / "2026-11-18.jsonl.gz"))
    assert [x["stamp"]["record_id"] for x in left] == ["2"]
    next_lives = read_lines(str(tmp_path / "acme" / "2026-11-19.jsonl.gz"))
    assert [(x["stamp"]["record_id"], x["offset"]) for x in next_lives] == [
        ("1", 4),
        ("3", 6),
        ("4", 8),
    ]


DAY = 86_400_000
TERMS = MarkerTerms(grace_ms=7 * DAY, compaction_ms=2 * DAY, margin_ms=DAY)


def test_markers_go_once_past_the_later_of_erasure_and_expiry_plus_grace_and_margin(
    tmp_path: Path,
) -> None:
    """A key's markers (its null and its life marker alike) stay until now is past the later
    of the erasure and the erased life's expiry (from the explicit tombstone), plus the
    grace and the margin; what they erase is gone first, even in the run that drops them.
    A life erased long before its expiry keeps its marker until after that expiry (the
    service's own marker stops its re-delivered create until then)."""
    w = ArchiveWriter(str(tmp_path))
    erased = DAY2
    # "short": its life would have ended before the erasure; "long": a year after it.
    w.write([stamp_entry("o", "short", DAY1, 0), stamp_entry("o", "long", DAY1, 1)])
    w.write(
        [
            erasure("o", "short", 2),
            tombstone_entry("o", "short", DAY1, "explicit", 0, erased, ttl=60_000, at=erased),
            tombstone_entry("o", "long", DAY1, "explicit", 1, erased, ttl=365 * DAY, at=erased),
            erasure("o", "bare", 3),  # a null alone: no expiry known
        ]
    )
    long_expires = DAY1 + 365 * DAY
    assert [m.get("expires_at") for m in read_lines(str(tmp_path / "o" / ERASURES))] == [
        None,
        format_ts(DAY1 + 60_000),
        format_ts(long_expires),
        None,
    ]
    short_end = erased  # the later of the erasure and the expiry
    assert TERMS.drop_at(short_end) == short_end + 8 * DAY

    at_bound = purge(str(tmp_path), TERMS, now_ms=TERMS.drop_at(short_end))
    assert (at_bound.lines_removed, at_bound.markers_dropped, at_bound.markers_kept) == (2, 0, 4)

    # The create of "short"'s life re-delivered after the service's marker went: restamped,
    # its data reaches the archive; the marker still there erases it as it drops.
    w.write([stamp_entry("o", "short", DAY1, 9)])
    past = purge(str(tmp_path), TERMS, now_ms=TERMS.drop_at(short_end) + 1)
    assert (past.lines_removed, past.markers_dropped, past.markers_kept) == (1, 3, 1)
    assert [m["key"] for m in read_lines(str(tmp_path / "o" / ERASURES))] == [
        Identity("o", "_", "live", "conversation", "long").key
    ]
    assert read_lines(str(tmp_path / "o" / "2026-11-18.jsonl.gz")) == []

    # Past the bound, nothing erases "short" any more: what arrives now is kept.
    w.write([stamp_entry("o", "short", DAY1, 10)])
    assert purge(str(tmp_path), TERMS, now_ms=TERMS.drop_at(long_expires)).lines_removed == 0
    last = purge(str(tmp_path), TERMS, now_ms=TERMS.drop_at(long_expires) + 1)
    assert (last.markers_dropped, last.markers_kept) == (1, 0)
    assert not (tmp_path / "o" / ERASURES).exists()  # none left: the file goes
    assert [x["offset"] for x in read_lines(str(tmp_path / "o" / "2026-11-18.jsonl.gz"))] == [10]


def _write_markers(path: Path, markers: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"".join(orjson.dumps(m) + b"\n" for m in markers)))


def test_markers_without_an_expiry_end_at_their_erasure(tmp_path: Path) -> None:
    """Archives of earlier versions: their life markers have no ``expires_at`` and end at
    the later of their erasure and ``until``, as the service's marker of a life without an
    expiry does; a marker whose erasure time cannot be read keeps its key's markers."""
    key = Identity("o", "_", "live", "conversation", "1").key
    odd = Identity("o", "_", "live", "conversation", "2").key
    old = {"key": key, "until": format_ts(DAY1), "topic": "t", "partition": 0, "offset": 4}
    _write_markers(
        tmp_path / "o" / ERASURES,
        [
            {**old, "erased_at": format_ts(DAY2)},
            {"key": key, "partition": 0, "offset": 7, "erased_at": format_ts(DAY1)},
            {"key": odd, "partition": 0, "offset": 8, "erased_at": "not a time"},
        ],
    )
    assert purge(str(tmp_path), TERMS, now_ms=TERMS.drop_at(DAY2)).markers_dropped == 0
    result = purge(str(tmp_path), TERMS, now_ms=TERMS.drop_at(DAY2) + 1)
    assert (result.markers_dropped, result.markers_kept) == (2, 1)
    assert [m["key"] for m in read_lines(str(tmp_path / "o" / ERASURES))] == [odd]


@pytest.mark.parametrize(
    ("grace", "compaction", "margin", "after"),
    [
        (7 * DAY, 2 * DAY, DAY, 8 * DAY),  # the service's grace is the longer
        (0, 2 * DAY, DAY, 3 * DAY),  # a stamp can be read again until compacted
        (0, 0, 0, 0),
    ],
)
def test_the_bound_is_the_longer_of_grace_and_compaction_plus_the_margin(
    grace: int, compaction: int, margin: int, after: int
) -> None:
    assert MarkerTerms(grace, compaction, margin).drop_at(DAY1) == DAY1 + after


def test_purge_command_takes_its_terms_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``archive purge --config`` reads ``[service] marker_grace``, ``[topics] segment`` and
    ``max_compaction_lag`` and ``[archive] marker_margin``, as the service reads them."""
    now = time.time_ns() // 1_000_000
    erased = now - 3 * DAY
    ArchiveWriter(str(tmp_path)).write(
        [tombstone_entry("o", "1", erased - 60_000, "explicit", 0, erased, at=erased)]
    )
    assert main(["archive", "purge", "--dir", str(tmp_path), "--without-holds"]) == 0  # 7 d + 2 d
    assert "0 erasure markers past their time dropped, 1 kept" in capsys.readouterr().out
    config = tmp_path / "expiry.toml"
    config.write_text(
        '[service]\nmarker_grace = "1d"\n[topics]\nsegment = "1h"\n'
        'max_compaction_lag = "1h"\n[archive]\nmarker_margin = "1d"\n'
    )
    assert main(["archive", "purge", "--dir", str(tmp_path), "--config", str(config),
                 "--without-holds"]) == 0  # fmt: skip
    assert "1 erasure marker past its time dropped, 0 kept" in capsys.readouterr().out

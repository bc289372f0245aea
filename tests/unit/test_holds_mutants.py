"""Tests that kill mutants of stream_expiry/holds.py the suite let through (a hand-made
sweep): each passes on the code and fails on the mutant its docstring names. Parsing a
hold (field lengths, a placement time, which misspelt field a rejection names), encoding
one, the index's order, the book's answers for an id placed on two partitions, the ids in
doubt, and the message for an id too long for a command line."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from stream_expiry.holds import (
    MAX_HEX_KEY_BYTES,
    Hold,
    HoldBook,
    HoldIndex,
    InDoubt,
    apply_hold_message,
    encode_hold,
    parse_hold,
)
from stream_expiry.model import MAX_ID_CHARS, Identity, Rejection
from stream_expiry.timeutil import format_ts
from tests.unit.test_holds import T0, hold

REC = Identity("acme", "b1", "live", "conversation", "r1")


def _hold(**fields: object) -> bytes:
    return orjson.dumps({"org": "acme", "reason": "case 7"} | fields)


@pytest.mark.parametrize("name", ["org", "bot", "category", "record_id", "reason"])
def test_a_field_of_the_longest_length_is_taken_and_one_longer_is_not(name: str) -> None:
    """Mutant ``1 <= len(value) < MAX_ID_CHARS``: a field of exactly 512 characters (an
    id the events may carry) was rejected, and its hold not in force."""
    taken = parse_hold(b"h", _hold(**{name: "x" * MAX_ID_CHARS}))
    assert isinstance(taken, Hold)
    assert getattr(taken, name) == "x" * MAX_ID_CHARS
    refused = parse_hold(b"h", _hold(**{name: "x" * (MAX_ID_CHARS + 1)}))
    assert isinstance(refused, Rejection)
    assert refused.code == "invalid_field"


@pytest.mark.parametrize("name", ["org", "bot", "category", "record_id", "reason"])
def test_an_empty_field_is_refused(name: str) -> None:
    """Mutant ``0 <= len(value)``: ``"bot": ""`` was a hold of a bot no record has (it
    held nothing, silently), ``"org": ""`` likewise."""
    got = parse_hold(b"h", _hold(**{name: ""}))
    assert isinstance(got, Rejection)
    assert (got.code, got.detail) == (
        "invalid_field",
        f"field {name!r} must be a string of 1 to {MAX_ID_CHARS} characters",
    )


def test_an_empty_placement_time_is_refused_and_zero_is_the_epoch() -> None:
    """Mutant ``if body.get("placed_at"):``: an empty ``placed_at`` was taken as none
    given, and a placement time of 0 (the epoch, as numbers are read) was dropped."""
    empty = parse_hold(b"h", _hold(placed_at=""))
    assert isinstance(empty, Rejection)
    assert empty.code == "bad_timestamp"
    epoch = parse_hold(b"h", _hold(placed_at=0))
    assert isinstance(epoch, Hold)
    assert epoch.placed_at == 0


def test_a_hold_encodes_its_placement_time_as_rfc3339_and_reads_back_the_same() -> None:
    """Mutant ``"placed_at": self.placed_at``: the milliseconds went out as a number
    (``hold list``, the holds topic), not the timestamp text the contract writes."""
    h = hold()
    body = orjson.loads(encode_hold(h))
    assert body["placed_at"] == format_ts(T0)
    assert isinstance(body["placed_at"], str)
    assert parse_hold(b"h1", encode_hold(h)) == h
    assert orjson.loads(encode_hold(replace(h, placed_at=None)))["placed_at"] is None


def test_a_missing_field_names_the_field_that_stands_for_it_not_another() -> None:
    """Mutant ``if True:`` (for ``meant == name``): the first misspelt field of the hold
    was named, whichever field it stood for ("field 'reason' is required; the hold has
    'recordId'")."""
    got = parse_hold(b"h", orjson.dumps({"org": "acme", "recordId": "r", "resaon": "x"}))
    assert isinstance(got, Rejection)
    assert got.detail == "field 'reason' is required; the hold has 'resaon': is that it?"


def test_only_a_missing_field_is_said_to_be_perhaps_misspelt() -> None:
    """Mutant without ``if why.code != "missing_field": return why``: a field given but
    not a string was told it might be its misspelt neighbour, which it is not (it is
    there, with the wrong type)."""
    got = parse_hold(b"h", orjson.dumps({"org": 5, "Org": "acme", "reason": "x"}))
    assert isinstance(got, Rejection)
    assert got.detail == f"field 'org' must be a string of 1 to {MAX_ID_CHARS} characters"


def test_the_index_gives_the_holds_of_several_shapes_in_the_order_they_were_added() -> None:
    """Mutant without ``found.sort()``: the holds came by shape (all record-level ones,
    then the org-wide), not in the order placed, which the deferrals list."""
    index = HoldIndex()
    first, second, third = hold("a", record_id="r1"), hold("b"), hold("c", record_id="r1")
    for h in (first, second, third):
        index.add(h)
    assert [h.hold_id for h in index.matching(REC)] == ["a", "b", "c"]


def test_an_id_on_two_partitions_is_the_lowest_partitions_hold_whatever_the_order() -> None:
    """Mutant ``placed[max(placed)]``: ``get`` gave the highest partition's scope. And
    ``holding`` gives, for such an id, the scope placed first (mutant keeping the last
    one per id: the history showed the other scope)."""
    book = HoldBook()
    wide, narrow = hold("h", bot="b1"), hold("h", record_id="r1")
    book.place(wide, 0)
    book.place(narrow, 1)
    assert book.get("h") == wide
    assert book.holding(REC) == [wide]
    other = HoldBook()
    other.place(narrow, 1)
    other.place(wide, 0)
    assert other.get("h") == wide
    assert other.holding(REC) == [narrow]


def test_the_let_go_list_keeps_the_latest_ones_up_to_its_bound() -> None:
    """Mutant ``> self.LET_GO_KEPT + 1``: one more release than the bound was kept."""
    book = HoldBook()
    book.LET_GO_KEPT = 3
    for n in range(6):
        book.place(hold(f"h{n}"))
        book.release(f"h{n}")
    assert [h.hold_id for h in book.let_go_since(0)] == ["h3", "h4", "h5"]


def test_an_id_in_doubt_says_where_its_latest_unreadable_message_is() -> None:
    """Mutant ``setdefault`` for the doubt: the first unreadable message was named (its
    offset, its reason), not the latest, which is the one to look at."""
    book = HoldBook()
    apply_hold_message(book, b"h", b"not json", 0, 3)
    apply_hold_message(book, b"h", b"{}", 0, 7)
    [doubt] = book.in_doubt()
    assert (doubt.offset, doubt.why.code) == (7, "missing_field")


def test_a_key_too_long_for_a_command_line_is_measured_in_bytes() -> None:
    """The hex of a key is one argument of a command line, whose bound is in bytes.
    Mutant measuring characters: a key of 40,000 two-byte characters (80,000 bytes, whose
    hex no command line takes) was said to be released with ``--key-hex``."""
    why = Rejection("invalid_json", "not JSON")
    wide = "é" * 40_000
    assert len(wide) <= MAX_HEX_KEY_BYTES < len(wide.encode())
    said = InDoubt(wide, 0, 1, why).described("expiry.holds")
    assert "write a null under that key with your Kafka tooling" in said
    assert "--key-hex HEX" not in said


def test_a_null_releases_a_hold_placed_under_the_same_key_not_utf8() -> None:
    """A key that is not UTF-8 names one hold id, as its placement and its release read
    it alike. Mutant decoding the release's key with ``errors="ignore"`` (the placement:
    ``"replace"``): the null under the very key that placed it let nothing go."""
    book = HoldBook()
    placed = apply_hold_message(book, b"case-\xff", _hold())
    assert isinstance(placed, Hold)
    assert apply_hold_message(book, b"case-\xff", None) == placed
    assert len(book) == 0

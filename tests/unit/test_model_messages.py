"""What ``stream_expiry.model`` makes of a record's lives and of tombstone events.

A restore rebuilds deletion markers from tombstone events alone
(:func:`model.deletion_from_tombstone`); these are its rules, case by case, beside the
restore properties of test_restore_model.py, which check the whole.
"""

from __future__ import annotations

import orjson
import pytest

from stream_expiry.model import (
    Identity,
    Reason,
    Stamp,
    deletion_from_tombstone,
    encode_stamp,
    encode_tombstone,
    last_activity,
)
from stream_expiry.timeutil import format_ts

IDENT = Identity("acme", "b", "live", "conversation", "r1")
LIFE = Stamp(IDENT, 1_000, 61_000, 60_000, "org")


def tombstone(stamp: Stamp, reason: Reason, emitted_at: int) -> bytes:
    return encode_tombstone(stamp, reason=reason, emitted_at=emitted_at)


def test_a_held_life_becomes_a_state_of_its_own_to_be_tombstoned() -> None:
    record = LIFE._replace(created_at=90_000, expires_at=150_000, held_lives=((1, 2, 3, "bot", 4),))
    assert record.held_life(record.held_lives[0]) == Stamp(IDENT, 1, 2, 3, "bot", None, 4)
    assert LIFE.held_life(LIFE.as_held_life()) == LIFE


def test_held_lives_are_written_with_their_ttl_in_whole_seconds_or_null() -> None:
    lives = ((1_000, 61_500, 60_500, "org", None), (70_000, None, None, None, 80_000))
    body = orjson.loads(encode_stamp(LIFE._replace(held_lives=lives)))
    assert body["held_lives"] == [
        {"created_at": "1970-01-01T00:00:01.000Z", "expires_at": "1970-01-01T00:01:01.500Z",
         "ttl_seconds": 60, "ttl_source": "org", "erase_requested_at": None},
        {"created_at": "1970-01-01T00:01:10.000Z", "expires_at": None, "ttl_seconds": None,
         "ttl_source": None, "erase_requested_at": "1970-01-01T00:01:20.000Z"},
    ]  # fmt: skip


def test_a_ttl_tombstone_ends_its_life_just_before_its_expiry() -> None:
    assert deletion_from_tombstone(tombstone(LIFE, "ttl", 61_004), None) == LIFE._replace(
        deleted_at=60_999
    )


@pytest.mark.parametrize(
    ("stamp", "emitted_at", "deleted_at"),
    [
        (LIFE, 5_000, 5_000),  # up to when it went out: a bound, not the delete's time
        (LIFE, 500, 1_000),  # a delete older than a create stamped ahead: at the creation
        (Stamp(IDENT, None, None, None, None), 5_000, 5_000),  # a record never seen
        (Stamp(IDENT, 1_000, None, None, None), 5_000, 5_000),  # one that never expires
    ],
)
def test_an_erasure_ends_its_life_at_the_latest_time_it_may_have_happened(
    stamp: Stamp, emitted_at: int, deleted_at: int
) -> None:
    # Its marker remembers the erasure went out (an erasure request read late is not
    # carried out again).
    assert deletion_from_tombstone(tombstone(stamp, "explicit", emitted_at), None) == (
        stamp._replace(deleted_at=deleted_at, erase_at=deleted_at)
    )


def test_a_marker_that_knows_as_much_or_more_stands() -> None:
    ttl = tombstone(LIFE, "ttl", 61_004)  # implies a deletion at 60,999
    for deleted_at in (60_999, 70_000):
        assert deletion_from_tombstone(ttl, LIFE._replace(deleted_at=deleted_at)) is None
    # An erasure's marker has its exact time; the tombstone only a bound: the marker stands.
    erased = tombstone(LIFE, "explicit", 9_000)
    assert deletion_from_tombstone(erased, LIFE._replace(deleted_at=4_000)) is None


def test_a_later_deletion_moves_an_older_marker() -> None:
    # A ttl tombstone of a life that began before the marker's deletion and ended after it.
    moved = deletion_from_tombstone(tombstone(LIFE, "ttl", 61_004), LIFE._replace(deleted_at=500))
    assert moved == LIFE._replace(deleted_at=60_999)
    # An erasure of a newer life than the marker's.
    newer = LIFE._replace(created_at=7_000, expires_at=67_000)
    moved = deletion_from_tombstone(
        tombstone(newer, "explicit", 9_000), LIFE._replace(deleted_at=4_000)
    )
    assert moved == newer._replace(deleted_at=9_000, erase_at=9_000)


def test_a_newer_life_in_the_store_is_left_alone_and_its_own_life_is_not() -> None:
    newer = LIFE._replace(created_at=70_000, expires_at=130_000)
    assert deletion_from_tombstone(tombstone(LIFE, "ttl", 61_004), newer) is None
    # The live state of the same life: its null never reached the changelog. The marker
    # is what the tombstone says (restore counts the null it owes).
    assert deletion_from_tombstone(tombstone(LIFE, "ttl", 61_004), LIFE) == LIFE._replace(
        deleted_at=60_999
    )


@pytest.mark.parametrize("value", [None, b"", b"[]", b'{"org": "acme"}'])
def test_an_unreadable_tombstone_implies_nothing(value: bytes | None) -> None:
    assert deletion_from_tombstone(value, None) is None


@pytest.mark.parametrize(
    ("stamp", "active"),
    [
        (LIFE, 1_000),  # a creation: its own time
        (LIFE._replace(expires_at=90_000), 30_000),  # a session a touch at 30 s slid
        (LIFE._replace(expires_at=None, ttl_ms=None), 1_000),  # never expires
        (LIFE._replace(ttl_ms=None), 1_000),
        (Stamp(IDENT, None, None, None, None), None),  # deleted before it was seen
        (LIFE._replace(created_at=None), None),
        (LIFE._replace(expires_at=30_000), 1_000),  # never earlier than its creation
    ],
)
def test_the_last_activity_is_what_set_the_expiry(stamp: Stamp, active: int | None) -> None:
    """Replay re-derives a sliding record's expiry from it under another ttl."""
    assert last_activity(stamp) == active
    written = orjson.loads(encode_stamp(stamp))["last_activity_at"]
    assert written == (None if active is None else format_ts(active))


def test_each_tombstone_says_its_own_emission_time_whatever_came_before() -> None:
    """``encode_tombstone`` formats a run of one ``emitted_at`` once (a memo of the last):
    a tombstone emitted at another time, or at an earlier one again, says its own."""
    stamp = Stamp(Identity("o", "b", "live", "error", "r1"), 1_000, 61_000, 60_000, "default")
    for at in (61_005, 61_005, 72_250, 61_005, 0, 1_796_000_612_345, 72_250):
        body = orjson.loads(encode_tombstone(stamp, reason="ttl", emitted_at=at))
        assert body["emitted_at"] == format_ts(at)
        assert body["expires_at"] == format_ts(61_000)

"""The input offsets a commit saves, and the marks that let the next assignment check them."""

from __future__ import annotations

from dataclasses import dataclass

from stream_expiry.commits import OffsetCommits

SLOT = ("conversations", 0)


@dataclass
class _Rec:
    offset: int
    key: bytes | None = None
    timestamp: int = 0


def test_a_commit_short_of_every_slice_end_commits_the_last_one_before_it() -> None:
    """A partition with a create parked is settled up to that create, where no slice
    ends: committed there, the offset had no mark, and the check for a cluster rebuilt
    meanwhile passed it over (a review). It commits the last slice end before it."""
    commits = OffsetCommits({})
    for last in (9, 19, 29):  # slices ending at offsets 9, 19, 29: marks at 10, 20, 30
        commits.decided(SLOT, _Rec(last, b"k%d" % last))
    assert commits.marked(SLOT, 20) == 20  # a slice end: as it is
    assert commits.marked(SLOT, 25) == 20  # the parked create at 25: the end before it
    assert commits.marked(SLOT, 5) == 5  # none before it: as it is (no mark, as before)
    assert commits.marked(("errors", 0), 7) == 7  # a partition with no slices yet

"""The hold book's index: the holds a record has, found without looking at the others.

A platform under litigation holds thousands of records of one org by id. Matching each of
that org's events (and each held record at a release) against every one of its holds made
ingest and releases cost the number of holds: 20,000 events took 38 s with 10,000
record-level holds in their org, and releasing the 10,000 at once took 26 s. These tests
count the comparisons (:meth:`Hold.matches` is the only one) and check the index against
the plain scan it replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_expiry.holds import Hold, HoldBook, HoldIndex
from stream_expiry.model import Identity
from stream_expiry.policy import Resolution
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

T0 = 1_800_000_000_000
TTL = 1_000
MANY = 2_000


@dataclass(frozen=True, slots=True)
class CountedHold(Hold):
    """A hold that counts how often a record is compared with it."""

    compared: ClassVar[list[int]] = [0]

    def matches(self, identity: Identity) -> bool:
        CountedHold.compared[0] += 1
        return Hold.matches(self, identity)


def counted(hold_id: str, org: str = "big", **fields: str | None) -> CountedHold:
    f: dict[str, str | None] = {"bot": None, "env": None, "category": None, "record_id": None}
    f |= fields
    return CountedHold(
        hold_id, org, f["bot"], f["env"], f["category"], f["record_id"], "case 7", T0
    )


def identity(rid: str, org: str = "big", bot: str = "b1") -> Identity:
    return Identity(org, bot, "live", "conversation", rid)


def test_a_records_holds_are_found_without_comparing_it_with_its_orgs_other_holds() -> None:
    book = HoldBook()
    for i in range(MANY):
        book.place(counted(f"r{i}", record_id=f"held{i}"))
    book.place(counted("bot", bot="b1"))
    CountedHold.compared[0] = 0
    assert [h.hold_id for h in book.holding(identity("held7"))] == ["r7", "bot"]
    assert book.is_held(identity("held7"))
    assert book.holding(identity("free", bot="b2")) == []
    assert not book.is_held(identity("free", bot="b2"))
    assert CountedHold.compared[0] == 0


@dataclass
class _Rec:
    offset: int
    key: bytes | None
    value: bytes | None


def test_releasing_thousands_of_holds_at_once_compares_no_held_record_with_each() -> None:
    """Record-level holds over records an org-wide hold also keeps: the release of all of
    them at once lets nothing go, and records, for each held record, that a hold let go of
    it while another keeps it, without scanning the released holds."""
    book = HoldBook()
    for i in range(MANY):
        book.place(counted(f"r{i}", record_id=f"held{i}"))
    book.place(counted("org"))
    proc = PartitionProcessor(
        "in",
        0,
        PartitionStore(MemoryKV()),
        resolve=lambda _identity, _at: Resolution(TTL, "default"),
        sliding=frozenset(),
        categories=frozenset({"conversation"}),
        max_skew_ms=10**12,
        now_ms=T0,
        holds=book,
    )
    body = {"org": "big", "bot": "b1", "category": "conversation", "ts": T0}
    records = [_Rec(i, None, orjson.dumps(body | {"record_id": f"held{i}"})) for i in range(MANY)]
    proc.settle(proc.process(records, T0), T0)
    due = T0 + TTL
    while (first := proc.next_due_ms()) is not None and first <= due:
        proc.settle(proc.fire_due(due), due)
    assert proc.store.counts.held == MANY
    for i in range(MANY):
        book.release(f"r{i}")
    CountedHold.compared[0] = 0
    deferred: list[tuple[str, list[str]]] = []
    while proc.releasing:
        effects = proc.release_due(due, budget=500)
        assert effects.tombstones == []
        deferred += [(s.identity.record_id, ids) for s, _, ids in effects.deferred]
        proc.settle(effects, due)
    assert sorted(deferred) == sorted((f"held{i}", ["org"]) for i in range(MANY))
    assert CountedHold.compared[0] == 0
    book.release("org")
    tombstones = 0
    while proc.releasing:
        effects = proc.release_due(due, budget=500)
        tombstones += len(effects.tombstones)
        proc.settle(effects, due)
    assert tombstones == MANY


# -- the index against the scan it replaced ---------------------------------------------

_names = st.sampled_from(["a", "b"])
_holds = st.builds(
    Hold,
    hold_id=st.sampled_from(["h1", "h2", "h3", "h4", "h5"]),
    org=_names,
    bot=st.none() | _names,
    env=st.none() | st.sampled_from(["live", "draft"]),
    category=st.none() | st.sampled_from(["conversation", "session"]),
    record_id=st.none() | _names,
    reason=st.just("case"),
    placed_at=st.none(),
)
_identities = st.builds(
    Identity,
    org=_names,
    bot=_names,
    env=st.sampled_from(["live", "draft"]),
    category=st.sampled_from(["conversation", "session"]),
    record_id=_names,
)
_steps = st.lists(st.tuples(st.booleans(), _holds), max_size=30)


@settings(max_examples=300, deadline=None)
@given(steps=_steps, asked=st.lists(_identities, min_size=1, max_size=10))
def test_the_book_finds_what_a_scan_of_its_holds_in_placing_order_finds(
    steps: list[tuple[bool, Hold]], asked: list[Identity]
) -> None:
    book = HoldBook()
    placed: dict[str, Hold] = {}  # insertion-ordered, a replacement goes last
    let_go: list[Hold] = []
    for place, h in steps:
        gone = placed.pop(h.hold_id, None)
        if gone is not None:
            let_go.append(gone)
        if place:
            placed[h.hold_id] = h
            assert book.place(h) == gone
        else:
            assert book.release(h.hold_id) == gone
    assert list(book) == list(placed.values())
    assert book.let_go_since(0) == let_go
    assert book.let_go_since(book.generation - 1) == let_go[-1:]
    index = HoldIndex()
    for h in let_go:
        index.add(h)
    for who in asked:
        assert book.holding(who) == [h for h in placed.values() if h.matches(who)]
        assert book.is_held(who) == any(h.matches(who) for h in placed.values())
        assert index.matching(who) == [h for h in let_go if h.matches(who)]
        assert index.any_matches(who) == any(h.matches(who) for h in let_go)

"""Legal holds in the partition processor: what they keep, what they let go, and when."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import pytest

from stream_expiry.holds import Hold, HoldBook, encode_hold, parse_hold
from stream_expiry.model import Identity, Rejection
from stream_expiry.policy import Resolution
from stream_expiry.state import Effects, MemoryKV, PartitionProcessor, PartitionStore

T0 = 1_800_000_000_000
TTL = 1_000


@dataclass
class _Rec:
    offset: int
    key: bytes | None
    value: bytes | None


def resolve(identity: Identity, at_ms: int) -> Resolution:
    return Resolution(TTL, "default")


class Partition:
    """One processor with its hold book; every effect settles at once."""

    def __init__(self, holds: HoldBook | None = None, horizon_ms: int = 3_600_000) -> None:
        self.holds = holds or HoldBook()
        self.proc = PartitionProcessor(
            "in",
            0,
            PartitionStore(MemoryKV()),
            resolve=resolve,
            sliding=frozenset({"session"}),
            categories=frozenset({"conversation", "session"}),
            max_skew_ms=10**12,
            now_ms=T0,
            horizon_ms=horizon_ms,
            holds=self.holds,
        )
        self.offset = 0
        self.tombstones: list[tuple[str, str, int, int | None]] = []  # (rid, reason, at, exp)
        self.deferred: list[tuple[str, str, list[str]]] = []

    def _take(self, effects: Effects, now: int) -> Effects:
        for f in effects.tombstones:
            self.tombstones.append(
                (f.before.identity.record_id, f.reason, f.emitted_at, f.before.expires_at)
            )
        self.deferred += [(s.identity.record_id, r, ids) for s, r, ids in effects.deferred]
        self.proc.settle(effects, now)
        return effects

    def event(
        self, rid: str, op: str, ts: int, *, bot: str = "b1", now: int | None = None
    ) -> Effects:
        self.offset += 1
        body = {
            "category": "conversation",
            "org": "acme",
            "bot": bot,
            "record_id": rid,
            "op": op,
            "ts": ts,
        }
        rec = _Rec(self.offset, None, orjson.dumps(body))
        return self._take(self.proc.process([rec], now if now is not None else ts), now or ts)

    def tick(self, now: int) -> None:
        self.proc.extend_horizon(now)
        self._take(self.proc.fire_due(now), now)
        while self.proc.releasing:
            self._take(self.proc.release_due(now, budget=100), now)


def hold(hold_id: str = "h1", **fields: str) -> Hold:
    f = {"bot": None, "env": None, "category": None, "record_id": None} | fields
    return Hold(hold_id, "acme", f["bot"], f["env"], f["category"], f["record_id"], "case 7", T0)


def test_a_hold_keeps_records_past_expiry_and_the_release_tombstones_them_then() -> None:
    p = Partition()
    p.holds.place(hold())
    p.event("a", "create", T0)
    p.tick(T0 + TTL)
    assert p.tombstones == []
    assert p.deferred == [("a", "ttl", ["h1"])]
    assert p.proc.timers == 0  # held records are on disk, not in the wheel
    p.tick(T0 + 5 * TTL)
    assert p.tombstones == []
    p.holds.release("h1")
    p.tick(T0 + 6 * TTL)
    assert p.tombstones == [("a", "ttl", T0 + 6 * TTL, T0 + TTL)]
    p.tick(T0 + 100 * TTL)
    assert len(p.tombstones) == 1  # once


def test_a_hold_on_one_bot_leaves_another_bots_records_on_time() -> None:
    p = Partition()
    p.holds.place(hold(bot="b1"))
    p.event("kept", "create", T0, bot="b1")
    p.event("free", "create", T0, bot="b2")
    p.tick(T0 + TTL)
    assert p.tombstones == [("free", "ttl", T0 + TTL, T0 + TTL)]


def test_a_hold_placed_while_pending_keeps_and_one_not_matching_does_not() -> None:
    p = Partition()
    p.event("a", "create", T0)
    p.event("b", "create", T0)
    p.holds.place(hold(record_id="a"))
    p.tick(T0 + TTL)
    assert [t[0] for t in p.tombstones] == ["b"]


def test_an_erasure_of_a_held_record_waits_for_the_release_and_stays_explicit() -> None:
    p = Partition()
    p.event("a", "create", T0)
    p.holds.place(hold())
    effects = p.event("a", "delete", T0 + 10)
    assert p.tombstones == []
    assert [s.erase_at for s, _ in effects.stamps] == [T0 + 10]  # on the changelog
    assert p.deferred == [("a", "explicit", ["h1"])]
    p.tick(T0 + 10 * TTL)
    assert p.tombstones == []
    p.holds.release("h1")
    p.tick(T0 + 10 * TTL + 1)
    assert p.tombstones == [("a", "explicit", T0 + 10 * TTL + 1, T0 + TTL)]


def test_an_erasure_of_an_unseen_record_under_a_hold_is_deferred_too() -> None:
    p = Partition()
    p.holds.place(hold())
    p.event("ghost", "delete", T0)
    assert p.tombstones == []
    p.holds.release("h1")
    p.tick(T0 + 1)
    assert p.tombstones == [("ghost", "explicit", T0 + 1, None)]


def test_a_held_record_is_frozen_until_released() -> None:
    p = Partition()
    p.holds.place(hold())
    p.event("a", "create", T0)
    p.tick(T0 + TTL)
    effects = p.event("a", "touch", T0 + 2 * TTL)
    assert effects.verdicts == {"held": 1}
    assert not effects.stamps


def test_a_released_record_an_event_finds_first_is_let_go_and_the_event_applies() -> None:
    """After the release and before its scan, an event for the record: frozen, it
    swallowed a create of the next life, whose data then never expired."""
    p = Partition()
    p.holds.place(hold())
    p.event("a", "create", T0)
    p.tick(T0 + TTL)
    assert p.deferred == [("a", "ttl", ["h1"])]
    p.holds.release("h1")
    effects = p.event("a", "create", T0 + 2 * TTL)  # a new life, before the release scan
    assert p.tombstones == [("a", "ttl", T0 + 2 * TTL, T0 + TTL)]
    assert [(s.created_at, s.expires_at) for s, _ in effects.stamps] == [
        (T0 + 2 * TTL, T0 + 3 * TTL)
    ]
    p.tick(T0 + 3 * TTL)
    assert p.tombstones[1:] == [("a", "ttl", T0 + 3 * TTL, T0 + 3 * TTL)]
    assert len(p.tombstones) == 2  # the release scan found nothing left to let go


def test_two_holds_keep_a_record_until_both_are_released() -> None:
    p = Partition()
    p.holds.place(hold("h1"))
    p.holds.place(hold("h2", category="conversation"))
    p.event("a", "create", T0)
    p.tick(T0 + TTL)
    p.holds.release("h1")
    p.tick(T0 + 2 * TTL)
    assert p.tombstones == []
    p.holds.release("h2")
    p.tick(T0 + 3 * TTL)
    assert [t[0] for t in p.tombstones] == ["a"]


def test_releasing_many_held_records_goes_slice_by_slice_none_early() -> None:
    p = Partition()
    p.holds.place(hold())
    for i in range(2_500):
        p.event(f"r{i}", "create", T0 + i)
    p.tick(T0 + 4 * TTL)  # every one is due by now (the last at T0 + 3499)
    assert p.proc.store.counts.held == 2_500
    p.holds.release("h1")
    now = T0 + 5 * TTL
    steps = 0
    while p.proc.releasing:
        p._take(p.proc.release_due(now, budget=500), now)
        steps += 1
    assert steps >= 5
    assert len(p.tombstones) == 2_500
    assert all(at >= (exp or 0) for _, _, at, exp in p.tombstones)
    assert p.proc.store.counts.held == 0


def test_parse_hold_rejects_with_a_reason_and_round_trips() -> None:
    h = hold(bot="b1", record_id="r")
    assert parse_hold(b"h1", encode_hold(h)) == h
    assert isinstance(parse_hold(b"x", b"{}"), Rejection)
    assert isinstance(parse_hold(b"x", b"not json"), Rejection)
    bad_env = orjson.dumps({"org": "a", "reason": "r", "env": "prod"})
    got = parse_hold(b"x", bad_env)
    assert isinstance(got, Rejection)
    assert got.code == "invalid_field"


@pytest.mark.parametrize(
    ("fields", "matches"),
    [
        ({}, True),
        ({"bot": "b1"}, True),
        ({"bot": "b2"}, False),
        ({"env": "draft"}, False),
        ({"category": "session"}, False),
        ({"record_id": "r"}, True),
        ({"record_id": "other"}, False),
    ],
)
def test_a_hold_matches_when_every_field_it_gives_equals(
    fields: dict[str, str], matches: bool
) -> None:
    record = Identity("acme", "b1", "live", "conversation", "r")
    assert hold(**fields).matches(record) is matches
    assert hold(**fields).matches(Identity("other", "b1", "live", "conversation", "r")) is False

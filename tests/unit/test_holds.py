"""Legal holds in the partition processor: what they keep, what they let go, and when."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream_expiry.archive_gate import ArchiveGate
from stream_expiry.control import refuse_holds_in_doubt
from stream_expiry.errors import ConfigurationError
from stream_expiry.exits import USAGE, status_of
from stream_expiry.holds import (
    Hold,
    HoldBook,
    InDoubt,
    apply_hold_message,
    encode_hold,
    parse_hold,
)
from stream_expiry.model import Identity, InputEvent, Rejection
from stream_expiry.policy import Resolution
from stream_expiry.state import Effects, MemoryKV, PartitionProcessor, PartitionStore
from tests.unit.test_engine import OPS_, SLIDING, Harness, Reference, RefRecord, Tomb, ev

if TYPE_CHECKING:
    from stream_expiry.engine import Fired

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

    def __init__(
        self,
        holds: HoldBook | None = None,
        horizon_ms: int = 3_600_000,
        archive: ArchiveGate | None = None,
    ) -> None:
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
            archive=archive,
        )
        self.offset = 0
        self.stamped = 0  # the next offset on expiry.stamped (the broker's acks give them)
        self.tombstones: list[tuple[str, str, int, int | None]] = []  # (rid, reason, at, exp)
        self.deferred: list[tuple[str, str, list[str]]] = []
        self.fired: list[Fired] = []  # every tombstone, as the outbox gets it

    def _take(self, effects: Effects, now: int) -> Effects:
        self.fired += effects.tombstones
        for f in effects.tombstones:
            if f.null_only:
                continue  # no tombstone event: the null of one that went out before
            self.tombstones.append(
                (f.before.identity.record_id, f.reason, f.emitted_at, f.before.expires_at)
            )
        self.deferred += [(s.identity.record_id, r, ids) for s, r, ids in effects.deferred]
        for state, _ in effects.stamps:
            effects.stamp_offsets[state.identity.key] = self.stamped
            self.stamped += 1
        self.proc.settle(effects, now)
        return effects

    def event(
        self,
        rid: str,
        op: str,
        ts: int,
        *,
        bot: str = "b1",
        now: int | None = None,
        category: str = "conversation",
        event_id: str | None = None,
    ) -> Effects:
        self.offset += 1
        body: dict[str, object] = {
            "category": category,
            "org": "acme",
            "bot": bot,
            "record_id": rid,
            "op": op,
            "ts": ts,
        }
        if event_id is not None:
            body["event_id"] = event_id
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


def test_a_held_record_that_comes_back_starts_its_next_life_and_keeps_the_held_one() -> None:
    """A returning user's session under a hold: the touch after its held life's end starts
    the next life, stamped with its own expiry and the held life it keeps; at the release
    the held life is tombstoned (no null: the record lives on), and the next life expires
    at its own time, never early."""
    p = Partition()
    p.holds.place(hold())
    p.event("s", "create", T0, category="session")
    p.tick(T0 + TTL)  # expired, kept
    back = p.event("s", "touch", T0 + 3 * TTL, category="session")
    assert back.verdicts == {"recreated": 1}
    [(state, _)] = back.stamps
    assert (state.created_at, state.expires_at) == (T0 + 3 * TTL, T0 + 4 * TTL)
    assert state.held_lives == ((T0, T0 + TTL, TTL, "default", None),)
    assert state.previous_deleted_at == T0 + TTL - 1
    p.tick(T0 + 3 * TTL + 500)
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL + 600)
    release = p.proc.state_of(state.identity.key)
    assert release is not None
    assert (release.held_lives, release.expires_at) == ((), T0 + 4 * TTL)
    assert p.tombstones == [("s", "ttl", T0 + 3 * TTL + 600, T0 + TTL)]
    p.tick(T0 + 4 * TTL - 1)
    assert len(p.tombstones) == 1
    p.tick(T0 + 4 * TTL)
    assert p.tombstones[1:] == [("s", "ttl", T0 + 4 * TTL, T0 + 4 * TTL)]


def test_lives_that_all_end_under_the_hold_are_tombstoned_oldest_first_at_the_release() -> None:
    p = Partition()
    p.holds.place(hold())
    p.event("c", "create", T0)
    p.tick(T0 + TTL)
    assert p.event("c", "create", T0 + TTL - 1).verdicts == {"held": 1}  # the held life's
    assert p.event("c", "touch", T0 + 2 * TTL).verdicts == {"held": 1}  # does not slide
    p.event("c", "create", T0 + 2 * TTL)  # the second life
    p.event("c", "delete", T0 + 2 * TTL + 10)  # its erasure, deferred
    p.event("c", "create", T0 + 2 * TTL + 20)  # the third
    p.tick(T0 + 4 * TTL)  # the third expired too, kept
    assert p.tombstones == []
    assert [d[:2] for d in p.deferred] == [("c", "ttl"), ("c", "explicit"), ("c", "ttl")]
    p.holds.release("h1")
    p.tick(T0 + 5 * TTL)
    assert p.tombstones == [
        ("c", "ttl", T0 + 5 * TTL, T0 + TTL),
        ("c", "explicit", T0 + 5 * TTL, T0 + 3 * TTL),
        ("c", "ttl", T0 + 5 * TTL, T0 + 3 * TTL + 20),
    ]
    [ended] = p.proc.states()
    assert (ended.live, ended.held, ended.held_lives) == (False, False, ())


def test_a_timer_that_fires_after_the_release_before_its_scan_tombstones_the_lives_first() -> None:
    p = Partition()
    p.holds.place(hold())
    p.event("s", "create", T0, category="session")
    p.tick(T0 + TTL)
    p.event("s", "create", T0 + TTL, category="session", now=T0 + TTL)
    p.holds.release("h1")
    p.proc.extend_horizon(T0 + 2 * TTL)
    p._take(p.proc.fire_due(T0 + 2 * TTL), T0 + 2 * TTL)  # the timer, before any scan
    assert p.tombstones == [
        ("s", "ttl", T0 + 2 * TTL, T0 + TTL),
        ("s", "ttl", T0 + 2 * TTL, T0 + 2 * TTL),
    ]
    p.tick(T0 + 3 * TTL)
    assert len(p.tombstones) == 2  # the scan finds nothing left


def test_lives_a_released_hold_kept_wait_with_their_record_for_the_archive() -> None:
    """``[archive] required`` and a record that keeps a held life while its next runs:
    released before the archive has read the next life's stamp, an event at that life's
    expiry must not end it without the held life (whose tombstone would then never go):
    both wait for the archive, and go, oldest first, once it has them."""
    archive = ArchiveGate(partitions=1)
    p = Partition(archive=archive)
    p.holds.place(hold())
    p.event("s", "create", T0, category="session")
    p.tick(T0 + TTL)
    p.event("s", "touch", T0 + 3 * TTL, category="session")  # the next life, keeping one
    archive.update({0: 1})  # the first life's stamp only
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL + 100)
    assert p.tombstones == []  # the archive holds them back
    p.event("s", "touch", T0 + 4 * TTL, category="session")  # at the running life's expiry
    assert p.tombstones == []
    archive.update({0: 100})
    p.tick(T0 + 4 * TTL + 100)
    assert p.tombstones == [
        ("s", "ttl", T0 + 4 * TTL + 100, T0 + TTL),
        ("s", "ttl", T0 + 4 * TTL + 100, T0 + 4 * TTL),
    ]
    [state] = p.proc.states()
    assert (state.created_at, state.held_lives, state.live) == (T0 + 4 * TTL, (), True)


def test_an_event_that_finds_a_life_due_waits_for_the_archive_as_its_timer_does() -> None:
    """``[archive] required``, the archive behind: a touch at or after a session's expiry,
    read before its timer fired, ended the life at once with a ``ttl`` tombstone, ahead of
    the archive (a trial, with a late create and its touch read together). The life waits
    for the archive, and the touch starts the next one."""
    archive = ArchiveGate(partitions=1)
    p = Partition(archive=archive)
    p.event("s", "create", T0, category="session", now=T0 + 2 * TTL)
    p.event("s", "touch", T0 + 2 * TTL, category="session")
    assert p.tombstones == []  # the archive has not read the stamp
    p.proc.recheck_archive()  # counted again by a scan of the store, as the service does
    p.tick(T0 + 2 * TTL + 50)
    # Waiting since the kept life's expiry (the warning named the next life's, to come).
    assert (p.proc.archive_waiting, p.proc.archive_waiting_since) == (1, T0 + TTL)
    archive.update({0: 100})
    p.tick(T0 + 2 * TTL + 100)
    assert p.tombstones == [("s", "ttl", T0 + 2 * TTL + 100, T0 + TTL)]
    [state] = p.proc.states()
    assert (state.created_at, state.live) == (T0 + 2 * TTL, True)


def test_an_erasure_that_finds_an_unarchived_life_due_names_that_life_at_once() -> None:
    """An erasure never waits for the archive. It came with a ``ttl`` tombstone for the
    life it found due and an ``explicit`` one naming no life, so the store's receipt said
    ttl for a record an erasure request removed (a trial); it names that life now."""
    archive = ArchiveGate(partitions=1)
    p = Partition(archive=archive)
    p.event("c", "create", T0, now=T0 + 2 * TTL)
    p.event("c", "delete", T0 + 2 * TTL)
    assert p.tombstones == [("c", "explicit", T0 + 2 * TTL, T0 + TTL)]


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


def test_an_erasure_carried_out_at_the_release_ends_the_life_at_the_request() -> None:
    """The state the release leaves is the erasure's: deleted at the request's time, so a
    redelivered create of the erased life stays erased and a later one is a new life."""
    p = Partition()
    p.event("a", "create", T0)
    p.holds.place(hold())
    p.event("a", "delete", T0 + 10)
    p.holds.release("h1")
    p.tick(T0 + 20)
    assert [t[1] for t in p.tombstones] == ["explicit"]
    state = p.proc.state_of(Identity("acme", "b1", "live", "conversation", "a").key)
    assert state is not None
    assert (state.deleted_at, state.erase_at, state.held) == (T0 + 10, T0 + 10, False)
    redelivered = p.event("a", "create", T0, now=T0 + 30)
    assert (redelivered.verdicts, redelivered.stamps) == ({"stale": 1}, [])
    later = p.event("a", "create", T0 + 40)
    assert later.verdicts == {"recreated": 1}
    assert [s.previous_deleted_at for s, _ in later.stamps] == [T0 + 10]


def test_a_held_erasure_in_flight_when_the_horizon_reaches_it_gets_no_timer() -> None:
    """A horizon load takes the records in flight (decided, not yet acked) from the
    processor's overlay, not the store: a held erasure requested for a time past the
    horizon's end (a producer's clock ahead) is due within the next slice, and must not
    be loaded as a timer that would delete the record the hold keeps."""
    p = Partition(horizon_ms=60_000)
    p.holds.place(hold())
    p.event("a", "create", T0)
    ahead = T0 + 90_000  # past the horizon's end, T0 + 60 s
    rec = _Rec(p.offset + 1, None, orjson.dumps(
        {"category": "conversation", "org": "acme", "bot": "b1", "record_id": "a",
         "op": "delete", "ts": ahead}
    ))  # fmt: skip
    in_flight = p.proc.process([rec], T0)
    assert [(s.erase_at, s.held) for s, _ in in_flight.stamps] == [(ahead, True)]
    assert p.proc.extend_horizon(T0 + 45_000) == 0  # the slice up to T0 + 105 s
    assert p.proc.fire_due(ahead + 1).tombstones == []
    p._take(in_flight, ahead + 1)
    p.tick(ahead + 10 * TTL)
    assert p.tombstones == []
    p.holds.release("h1")
    p.tick(ahead + 11 * TTL)
    assert [(rid, reason) for rid, reason, *_ in p.tombstones] == [("a", "explicit")]


def test_an_erasure_of_an_unseen_record_under_a_hold_is_deferred_too() -> None:
    p = Partition()
    p.holds.place(hold())
    p.event("ghost", "delete", T0)
    assert p.tombstones == []
    p.holds.release("h1")
    p.tick(T0 + 1)
    assert p.tombstones == [("ghost", "explicit", T0 + 1, None)]


def test_an_erasure_read_late_of_a_life_its_expiry_ended_waits_for_the_release() -> None:
    """Read after the ttl tombstone (a backlog), an erasure request still goes out (the
    engine's rule, for the archive); under a hold, at the release, like any other. The
    life's end stands meanwhile: its late events stay stale, and a create after it is the
    next life."""
    p = Partition()
    p.event("a", "create", T0)
    p.tick(T0 + TTL)
    p.holds.place(hold())
    effects = p.event("a", "delete", T0 + 10, now=T0 + 2 * TTL)
    assert effects.verdicts == {"held": 1}
    assert p.deferred == [("a", "explicit", ["h1"])]
    p.event("a", "create", T0 + TTL - 1, now=T0 + 2 * TTL)  # of the ended life: stale
    p.tick(T0 + 3 * TTL)
    assert p.tombstones == [("a", "ttl", T0 + TTL, T0 + TTL)]
    p.holds.release("h1")
    p.tick(T0 + 4 * TTL)
    assert p.tombstones[1:] == [("a", "explicit", T0 + 4 * TTL, None)]  # naming no life
    state = p.proc.state_of(Identity("acme", "b1", "live", "conversation", "a").key)
    assert state is not None
    assert (state.deleted_at, state.erase_at) == (T0 + TTL - 1, T0 + 10)
    p.event("a", "delete", T0 + 10, now=T0 + 5 * TTL)  # redelivered: nothing more
    p.event("a", "create", T0 + TTL, now=T0 + 5 * TTL)  # at the expiry: the next life
    p.tick(T0 + 6 * TTL)
    assert p.tombstones[2:] == [("a", "ttl", T0 + 6 * TTL, T0 + 2 * TTL)]


def test_a_deferral_another_hold_takes_over_at_a_release_is_on_the_audit_trail() -> None:
    """Deferred by h1, kept by h2 once h1 was released: the audit named h1 only, and the
    deletion then came at h2's release (a compliance trial). A record h1 never kept gets
    no entry from h1's release."""
    p = Partition()
    p.holds.place(hold("h1", record_id="a"))
    p.holds.place(hold("h-b", record_id="b"))
    p.event("a", "create", T0)
    p.event("b", "create", T0)
    p.tick(T0 + TTL)
    assert p.deferred == [("a", "ttl", ["h1"]), ("b", "ttl", ["h-b"])]
    p.holds.place(hold("h2"))  # the whole org
    p.holds.release("h1")
    p.tick(T0 + 2 * TTL)
    assert p.tombstones == []
    assert p.deferred[2:] == [("a", "ttl", ["h2"])]
    p.tick(T0 + 3 * TTL)
    assert len(p.deferred) == 3  # said once
    p.holds.release("h2")
    p.holds.release("h-b")
    p.tick(T0 + 4 * TTL)
    assert sorted(t[0] for t in p.tombstones) == ["a", "b"]
    assert len(p.deferred) == 3  # let go: nothing deferred


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


def test_a_hold_replaced_by_a_narrower_one_lets_go_what_it_no_longer_matches() -> None:
    """A hold placed again under its id replaces it (the compacted topic keeps the latest):
    records only the old one matched are released as by a release."""
    p = Partition()
    p.holds.place(hold())
    p.event("a", "create", T0)
    p.event("b", "create", T0)
    p.tick(T0 + TTL)
    assert sorted(r for r, _, _ in p.deferred) == ["a", "b"]
    p.holds.place(hold(record_id="b"))
    p.tick(T0 + 2 * TTL)
    assert p.tombstones == [("a", "ttl", T0 + 2 * TTL, T0 + TTL)]


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
    not_utf8 = parse_hold(b"x", b'{"hold_id": "h\xff"}')
    assert isinstance(not_utf8, Rejection)
    assert not_utf8.code == "invalid_json"
    assert "not valid UTF-8 (byte 14: invalid start byte)" in not_utf8.detail
    bad_env = orjson.dumps({"org": "a", "reason": "r", "env": "prod"})
    got = parse_hold(b"x", bad_env)
    assert isinstance(got, Rejection)
    assert got.code == "invalid_field"


def test_a_hold_is_the_one_its_key_names_so_the_null_of_that_key_releases_it() -> None:
    """A tool that keys a hold by its own case number while the value names another
    ``hold_id``: the key is the hold (what a release nulls, what compaction keeps), so
    ``hold list`` shows it under its key, the null under that key releases it, and the
    compacted topic (the value alone, once the null is gone) cannot bring back a hold
    released under the value's id, which was never an id of it."""
    value = orjson.dumps({"hold_id": "H-9", "org": "acme", "bot": "b9", "reason": "case 9"})
    book = HoldBook()
    placed = apply_hold_message(book, b"case-9", value)
    assert isinstance(placed, Hold)
    assert [h.hold_id for h in book] == ["case-9"]
    assert apply_hold_message(book, b"H-9", None) is None  # not an id of it: nothing
    assert apply_hold_message(book, b"case-9", None) == placed
    assert len(book) == 0
    keyless = parse_hold(None, value)
    assert isinstance(keyless, Hold)
    assert keyless.hold_id == "H-9"  # without a key, the value's id


def test_a_hold_is_its_keys_the_one_a_release_removes_from_the_compacted_topic() -> None:
    """A hold valued hold_id "case-7" under the key "case-7-key" was taken as case-7: its
    release (a null under case-7) let it go in memory while the topic kept it under its
    own key, so once compaction removed the null it came back at every start, for good."""
    value = encode_hold(hold("case-7"))
    book = HoldBook()
    placed = apply_hold_message(book, b"case-7-key", value)
    assert isinstance(placed, Hold)
    assert placed.hold_id == "case-7-key"
    assert apply_hold_message(book, b"case-7", None) is None  # not this hold: still held
    assert [h.hold_id for h in book] == ["case-7-key"]
    # What compaction leaves of the topic once the key's own null is there: nothing.
    assert apply_hold_message(book, b"case-7-key", None) == placed
    assert len(book) == 0
    assert parse_hold(None, value) == hold("case-7")  # no key: the value's id is the id
    # The key is held to the value's bounds (it is logged, listed and kept in memory; a
    # 3 MB key made a 3 MB hold id).
    long_key = parse_hold(b"k" * 513, value)
    assert isinstance(long_key, Rejection)
    assert long_key.code == "invalid_field"


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


# -- the property: the processor under holds against a reference ---------------------------


class HoldingReference:
    """The contract's legal holds written over the engine's reference model: a record a
    hold matches is not tombstoned at its expiry nor on a delete; it is kept, frozen, and
    at the release tombstoned as it would have been (``explicit`` for an erasure asked
    meanwhile, else ``ttl``). A create or touch after a kept life's end starts the next
    life as it would have without the hold, and the kept life waits for the release all
    the same, its tombstone first. An event for a released record that the release scan
    has not reached lets it go first, as the scan would."""

    def __init__(self) -> None:
        self.base = Reference()
        self.holds: set[str] = set()  # record ids held, "*" for the whole org
        self.kept: dict[str, int | None] = {}  # key -> the erasure asked while held
        # key -> earlier lives kept for the release: (reason, expires_at), oldest first
        self.lives: dict[str, list[tuple[str, int | None]]] = {}
        # (key, deletion) of each erasure of the lives before a running one kept among them
        self.erased_before: set[tuple[str, int]] = set()
        # key -> the ended life an erasure dated before its creation left (that erasure,
        # kept, names no life): the record is that life's end again at the release
        self.ended: dict[str, RefRecord] = {}
        # key -> the other erasures dated before that life's creation, read while the
        # first waits: each goes out at the release too, as each does without the hold
        self.later: dict[str, list[int]] = {}

    def _matches(self, key: str) -> bool:
        return "*" in self.holds or key.rsplit("/", 1)[1] in self.holds

    def _end(self, key: str) -> int:
        """Where the kept life of ``key`` ends: its erasure, else its expiry."""
        erase, rec = self.kept[key], self.base.recs[key]
        if erase is not None:  # the end of a life already ended (rec.deleted) stands
            return max(erase, erase if rec.created is None else rec.created, rec.deleted or erase)
        assert rec.expires is not None
        return rec.expires - 1

    def _let_go(self, key: str) -> list[Tomb]:
        now = self.base.now
        out = [(key, reason, now, expires) for reason, expires in self.lives.pop(key, [])]
        self.erased_before = {k for k in self.erased_before if k[0] != key}
        ended = self.ended.pop(key, None)
        if ended is not None:  # as without the hold (the ended life's tombstone went out)
            del self.kept[key]
            self.base.recs[key] = ended
            erasures = [(key, "explicit", now, None)] * (1 + len(self.later.pop(key, [])))
            return [*out, *erasures]
        if key in self.kept:
            rec = self.base.recs[key]
            reason = "ttl" if self.kept[key] is None else "explicit"
            rec.deleted = self._end(key)
            rec.erased = reason == "explicit"
            del self.kept[key]
            out.append((key, reason, now, rec.expires))
        return out

    def _erase_before(self, key: str, floor: int) -> None:
        """An erasure of the lives before the running one, under a hold: kept among the
        lives for the release, naming no life, once."""
        if (key, floor) not in self.erased_before:
            self.erased_before.add((key, floor))
            self.lives.setdefault(key, []).append(("explicit", None))

    def event(self, e: InputEvent) -> list[Tomb]:
        out = self._event(e)
        return out + self.base.unpark_ended(e.identity.key, self.event, e.identity.key in self.kept)

    def _event(self, e: InputEvent) -> list[Tomb]:
        key, t, base = e.identity.key, e.ts, self.base
        if base.park(e, frozen=key in self.kept):
            return []
        held = key in self.kept or key in self.lives
        out = self._let_go(key) if held and not self._matches(key) else []
        rec = base.recs.get(key)
        if (
            e.op == "delete"
            and rec is not None
            and rec.deleted is None
            and rec.floor is not None
            and t <= rec.floor
            and (key in self.kept or self._matches(key))
        ):  # the lives before the running one: their erasure waits for the release
            if self.kept.get(key) is None:  # an erasure kept for this life ends them too
                self._erase_before(key, rec.floor)
            return out
        if key in self.kept:  # frozen; an erasure asked is kept for the release
            if e.op == "delete":
                ended = self.ended.get(key)
                if ended is not None and ended.created is not None:
                    assert ended.deleted is not None
                    if ended.created <= t:  # that life's own, or a new life's: it waits now
                        del self.ended[key]
                        self.later.pop(key, None)  # it ends what they erase, and more
                        self.kept[key] = t
                        if t > ended.deleted:
                            base.recs[key] = RefRecord(None, None, None)
                    elif t != self.kept[key] and t not in self.later.get(key, []):
                        self.later.setdefault(key, []).append(t)  # another, once
                    return out
                if self.kept[key] is None:
                    self.kept[key] = t
                return out
            end = self._end(key)
            if t <= end or (e.op == "touch" and e.identity.category not in SLIDING):
                return out
            # The next life: the kept one waits for the release, as before.
            reason = "ttl" if self.kept[key] is None else "explicit"
            self.lives.setdefault(key, []).append((reason, base.recs[key].expires))
            erased = self.kept[key]
            if base.recs[key].created is None and erased is not None:  # one naming no life
                self.erased_before.add((key, erased))
            for later in self.later.pop(key, []):  # and those read after it, each its own
                self.lives[key].append(("explicit", None))
                self.erased_before.add((key, later))
            base.recs[key].deleted = end
            del self.kept[key]
            self.ended.pop(key, None)  # its tombstone went out before the hold
        if self._matches(key):
            rec = base.recs.get(key)
            if e.op == "delete":
                if rec is not None and rec.deleted is not None:
                    if t <= rec.deleted and rec.erased:
                        return out  # stale
                    if rec.created is not None and t < rec.created:
                        # Dated before the ended life's creation: it names no life.
                        self.ended[key] = rec
                        base.recs[key] = RefRecord(None, None, None, rec.deleted)
                        self.kept[key] = t
                        return out
                    if t <= rec.deleted:  # a life its expiry ended: its erasure is deferred
                        base.recs[key] = RefRecord(None, None, None, rec.deleted)  # no life
                        self.kept[key] = t
                        return out
                    rec = None
                if rec is None:
                    base.recs[key] = RefRecord(None, None, None)
                base._unschedule(key)
                self.kept[key] = t
                return out
            if (
                rec is not None
                and rec.deleted is None
                and rec.expires is not None
                and rec.expires <= base.now
                and t >= rec.expires
            ):  # due, not fired yet: the event finds it first and the hold keeps it,
                # and the event goes on as for any kept life (it may start the next one)
                base._unschedule(key)
                self.kept[key] = None
                return out + self.event(e)
        return out + base.event(e, unpark=False)

    def tick(self, now: int) -> list[Tomb]:
        """Timers due by ``now``, then the release scan."""
        base = self.base
        base.now = max(base.now, now)
        out: list[Tomb] = []
        while base.timers and base.timers[0][0] <= base.now:
            expires, key = base.timers.pop(0)
            if self._matches(key):
                self.kept[key] = None
            else:
                base.recs[key].deleted = expires - 1
                out.append((key, "ttl", base.now, expires))
        for e in base.woken():
            out += self.event(e)
        released = sorted({*self.kept, *self.lives} - {k for k in base.recs if self._matches(k)})
        return out + [t for k in released for t in self._let_go(k)]


def _hold_for(target: str) -> Hold:
    return Hold(f"h-{target}", "o", None, None, None, None if target == "*" else target, "", 0)


# Short TTLs (error 50, session 300 and sliding) and few records, so that holds, expiries,
# erasures and releases meet within a few steps.
hold_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("event"),
            st.sampled_from(["error", "error", "session"]),
            st.sampled_from(["a", "b"]),
            OPS_,
            st.integers(-4, 4),
        ),
        st.tuples(st.just("advance"), st.integers(0, 6)),
        st.tuples(st.sampled_from(["hold", "release"]), st.sampled_from(["a", "*"])),
    ),
    min_size=5,
    max_size=60,
)


@settings(max_examples=1000, deadline=None)
@given(steps=hold_steps, lag=st.sampled_from([0, 2]), horizon=st.sampled_from([50, 5000]))
# The boundaries, each a step or two from where random steps go: a record due exactly now
# and not fired yet when an event finds it under a hold (kept, not tombstoned); an erasure
# redelivered under a hold at exactly its first delete's time (stale, not a second one).
@example(
    steps=[
        ("advance", 2),
        ("hold", "a"),
        ("event", "error", "a", "create", -1),
        ("event", "error", "a", "touch", 0),
    ],
    lag=0,
    horizon=5000,
)
@example(
    steps=[
        ("event", "error", "a", "delete", 2),
        ("hold", "a"),
        ("event", "error", "a", "delete", 2),
    ],
    lag=0,
    horizon=5000,
)
# An erasure dated before an ended life's creation, read under a hold: it names no life (at
# the release it ends at its own time, and that life's end goes out again), and an erasure
# of that life itself, read after the release, still goes out.
@example(
    steps=[
        ("event", "error", "a", "create", 1),
        ("advance", 2),
        ("hold", "a"),
        ("event", "error", "a", "delete", -2),
        ("release", "a"),
        ("advance", 0),
        ("event", "error", "a", "delete", -1),
    ],
    lag=0,
    horizon=5000,
)
# Two erasures dated before an ended life's creation, read under a hold: each goes out at
# the release, as without the hold (the second was taken for a re-delivery and dropped).
@example(
    steps=[
        ("advance", 2),
        ("event", "error", "a", "create", 1),
        ("advance", 3),
        ("hold", "a"),
        ("event", "error", "a", "delete", -3),
        ("event", "error", "a", "delete", -4),
        ("event", "error", "a", "delete", -3),
        ("release", "a"),
        ("advance", 0),
    ],
    lag=0,
    horizon=5000,
)
# And the same, a next life started while they wait: it keeps both for the release.
@example(
    steps=[
        ("advance", 2),
        ("event", "error", "a", "create", 1),
        ("advance", 3),
        ("hold", "a"),
        ("event", "error", "a", "delete", -3),
        ("event", "error", "a", "delete", -4),
        ("event", "error", "a", "create", 1),
        ("release", "a"),
        ("advance", 0),
    ],
    lag=0,
    horizon=5000,
)
def test_processor_under_legal_holds_matches_the_reference(
    steps: list[tuple[object, ...]], lag: int, horizon: int
) -> None:
    book = HoldBook()
    h, ref = Harness(horizon_ms=horizon, settle_lag=lag, holds=book), HoldingReference()
    now = 0
    for step in steps:
        kind = step[0]
        if kind in ("hold", "release"):
            target = str(step[1])
            if kind == "hold":
                book.place(_hold_for(target))
                ref.holds.add(target)
            else:
                book.release(f"h-{target}")
                ref.holds.discard(target)
        elif kind == "advance":
            now += 50 * int(step[1])  # type: ignore[call-overload]
            got = h.advance(now) + h.release_scan()
            assert Counter(got) == Counter(ref.tick(now)), step
        else:
            _, cat, rid, op, k = step
            event = ev(str(cat), str(rid), str(op), max(0, now + 50 * int(k)))  # type: ignore[call-overload]
            assert h.feed(event) == ref.event(event), step
        h.check_changelog()
    for target in ("a", "*"):
        book.release(f"h-{target}")
    ref.holds.clear()
    final = now + 10**7
    assert Counter(h.advance(final) + h.release_scan()) == Counter(ref.tick(final))
    assert not ref.kept
    assert not ref.lives
    assert not ref.later


def test_the_archive_gate_lets_go_only_what_the_archive_committed() -> None:
    """``[archive] required``: a stamp is archived once the archive group's committed
    offset on its partition of expiry.stamped is past it, and never before any commit."""
    gate = ArchiveGate(partitions=2)  # input partition n -> expiry.stamped partition n % 2
    assert not gate.archived(0, 0)  # nothing committed yet, not even offset 0
    assert not gate.archived(0, None)  # a stamp not acknowledged yet
    assert gate.update({0: 5})
    assert gate.generation == 1
    assert gate.archived(0, 4)
    assert gate.archived(2, 4)  # input partition 2 writes to partition 0 too
    assert not gate.archived(0, 5)
    assert not gate.archived(1, 0)  # partition 1: still no commit
    assert not gate.archived(0, None)
    assert not gate.update({0: 5})  # the same offsets again: nothing moved
    assert not gate.update({0: 3})  # an older read never takes an offset back
    assert gate.generation == 1
    assert gate.archived(0, 4)
    assert gate.update({0: 5, 1: 1})
    assert gate.generation == 2
    assert gate.archived(1, 0)


def test_a_release_every_turn_does_not_keep_the_scan_from_later_held_records() -> None:
    """A busy legal team releases a hold nearly every loop turn while more records stay
    held than one turn's scan reads. The scan after a release used to start again at the
    first held key, so the records after the first budget's worth (here bot b's, behind
    bot a's, which stay held) waited for as long as releases kept coming, past the
    contract's second. Each turn below brings a new release; every record freed by the
    first one is tombstoned within one pass over the held records, counted in turns."""
    budget, kept, freed = 100, 350, 40
    p = Partition()
    p.holds.place(hold("keep", bot="a"))
    p.holds.place(hold("free", bot="b"))
    for i in range(kept):
        p.event(f"k{i:04}", "create", T0, bot="a")
    for i in range(freed):
        p.event(f"f{i:04}", "create", T0, bot="b")
    due = T0 + TTL
    p.tick(due)
    assert p.proc.store.counts.held == kept + freed
    p.holds.release("free")
    one_pass = (kept + freed) // budget + 2
    for turn in range(3 * one_pass):
        p.holds.place(hold(f"other{turn}", bot="c"))  # no record of bot c: frees nothing
        p.holds.release(f"other{turn}")
        p._take(p.proc.release_due(due + turn, budget=budget), due + turn)
        if len(p.tombstones) == freed:
            break
    assert sorted(rid for rid, *_ in p.tombstones) == [f"f{i:04}" for i in range(freed)]
    assert turn < one_pass
    assert p.proc.store.counts.held == kept


def test_releases_that_join_a_scan_under_way_each_tell_the_audit_once() -> None:
    """Record-level holds over bot a's records, which an org-wide hold keeps too, released
    one per turn while the scan goes round: each record gets exactly one deferral entry
    for its own hold's release (none missed where the scan wrapped, none twice where two
    releases' passes overlap), and the record the last release frees is tombstoned."""
    budget, kept = 30, 200
    p = Partition()
    p.holds.place(hold("keep", bot="a", record_id="k0150"))
    p.holds.place(hold("all-a", bot="a"))
    for i in range(kept):
        p.holds.place(hold(f"p{i:04}", bot="a", record_id=f"k{i:04}"))
        p.event(f"k{i:04}", "create", T0, bot="a")
    due = T0 + TTL
    p.tick(due)
    p.deferred.clear()
    order = [*range(150, kept), *range(150)]  # the first releases come mid-key-space
    turn = 0
    for turn, i in enumerate(order):
        p.holds.release(f"p{i:04}")
        p._take(p.proc.release_due(due + turn, budget=budget), due + turn)
    while p.proc.releasing:
        turn += 1
        p._take(p.proc.release_due(due + turn, budget=budget), due + turn)
    assert p.tombstones == []
    p.holds.release("all-a")
    while p.proc.releasing:
        turn += 1
        p._take(p.proc.release_due(due + turn, budget=budget), due + turn)
    told = Counter(rid for rid, _, _ in p.deferred)
    assert told == Counter({f"k{i:04}": 1 for i in range(kept) if i != 150} | {"k0150": 2})
    assert sorted(rid for rid, *_ in p.tombstones) == [f"k{i:04}" for i in range(kept) if i != 150]


def test_an_archive_that_moves_every_turn_does_not_keep_the_scan_from_later_records() -> None:
    """``[archive] required`` with more due records waiting for the archive than one
    turn's scan reads, and an archive that commits a little every loop turn (a busy one
    does). Each move used to start the scan again at the first key, whose records (here
    stamped last) the archive had not reached: the records it had archived, later in key
    order, waited as long as it kept moving. Each is now purged within a pass (counted in
    turns) of the archive's having it, and none before."""
    budget, records = 100, 300
    archive = ArchiveGate(partitions=1)
    p = Partition(archive=archive)
    for i in reversed(range(records)):  # k0299 gets stamp offset 0, k0000 offset 299
        p.event(f"k{i:04}", "create", T0)
    due = T0 + TTL
    p.tick(due)
    assert p.tombstones == []
    assert p.proc.archive_waiting > 0
    one_pass = records // budget + 2
    turns = 4 * one_pass
    for turn in range(turns):
        archive.update({0: turn + 1})  # the archive has offsets 0..turn now
        p._take(p.proc.release_due(due + turn, budget=budget), due + turn)
    gone = {int(rid[1:]) for rid, *_ in p.tombstones}
    archived_early = {records - 1 - offset for offset in range(turns - one_pass)}
    assert archived_early <= gone
    assert all(records - 1 - i < turns for i in gone)  # never before the archive had it


def test_a_partition_may_slide_once_it_has_records_or_reads_a_sliding_event() -> None:
    """The firing asks the broker for the ends only of partitions whose records may
    slide: an empty one starts without, a session event or a stored record makes it one."""
    p = Partition()
    assert not p.proc.may_slide
    p.event("c", "create", T0)  # a conversation does not slide
    assert not p.proc.may_slide
    p.event("s", "create", T0, category="session")
    assert p.proc.may_slide
    restarted = PartitionProcessor(
        "in", 0, p.proc.store, resolve=resolve, sliding=frozenset({"session"}),
        categories=frozenset({"conversation", "session"}), max_skew_ms=10**12, now_ms=T0,
    )  # fmt: skip
    assert restarted.may_slide  # its store holds records: it may have sessions


@settings(max_examples=300, deadline=None)
@given(
    logs=st.lists(
        st.lists(
            st.tuples(st.sampled_from(["h1", "h2"]), st.sampled_from([None, "r1", "r2"])),
            max_size=5,
        ),
        min_size=1,
        max_size=3,
    ),
    order=st.randoms(use_true_random=False),
)
def test_what_is_held_does_not_depend_on_the_order_the_partitions_are_read_in(
    logs: list[list[tuple[str, str | None]]], order: object
) -> None:
    """One hold id on two partitions (placed by a producer hashing with CRC-32, released
    or replaced by one hashing with Kafka's murmur2): read partition by partition in
    whatever order a consumer gets them, every reader must agree. A hold is held while the
    latest message for it on some partition places it, with every scope so placed (a
    trial: the service kept the records while `hold list` showed nothing, 2 runs in 3; a
    review: of two scopes, the one read last won)."""
    import random

    assert isinstance(order, random.Random)
    records = [Identity("acme", "_", "live", "conversation", r) for r in ("r1", "r2", "r3")]

    def read(
        interleaving: list[int],
    ) -> tuple[list[tuple[str, str | None]], dict[str, frozenset[int]], list[list[str]]]:
        book, at = HoldBook(), [0] * len(logs)
        for p in interleaving:
            hold_id, scope = logs[p][at[p]]
            at[p] += 1
            value = None if scope is None else encode_hold(hold(hold_id, record_id=scope))
            apply_hold_message(book, hold_id.encode(), value, p)
        return (
            sorted((h.hold_id, h.record_id) for h in book),
            {h.hold_id: book.partitions_of(h.hold_id) for h in book},
            [sorted(h.hold_id for h in book.holding(r)) for r in records],  # placement order
        )

    in_order = [p for p, log in enumerate(logs) for _ in log]
    shuffled = list(in_order)
    order.shuffle(shuffled)
    latest = {(hold_id, p): scope for p, log in enumerate(logs) for hold_id, scope in log}
    placed = {(hold_id, scope) for (hold_id, _p), scope in latest.items() if scope is not None}
    expected = sorted((hold_id, scope) for (hold_id, _p), scope in latest.items() if scope)
    got = read(in_order)
    assert got == read(shuffled)
    assert got[0] == expected
    for r, ids in zip(records, got[2], strict=True):  # one entry per id, never two
        assert ids == sorted({h for h, scope in placed if scope == r.record_id})


# -- creates parked until their record's running life expires (a review) -------------------


def _unpark(p: Partition, now: int) -> Effects | None:
    woken = p.proc.unpark(now)
    return None if woken is None else p._take(woken, now)


def test_an_event_dated_before_the_expiry_a_create_waits_for_is_decided_at_once() -> None:
    """Behind a parked create waited every later event of its record, those of the
    running life too: a touch read in time did not slide the session, which was deleted
    at its old expiry, and an erasure waited for the expiry. Only events dated at or
    after that expiry wait; the others are decided as they come."""
    p = Partition()
    p.event("s", "create", T0, category="session")  # expires at T0 + 1000
    assert p.event("s", "create", T0 + TTL, now=T0 + 500, category="session").verdicts == {
        "parked": 1
    }
    touched = p.event("s", "touch", T0 + 600, now=T0 + 600, category="session")
    assert [state.expires_at for state, _ in touched.stamps] == [T0 + 600 + TTL]
    p.tick(T0 + TTL)
    assert _unpark(p, T0 + TTL) is not None  # the create, now a re-delivery: slid past it
    assert p.tombstones == []
    # An erasure dated before the expiry a create waits for goes out at once, and the
    # create then starts the next life.
    p.event("a", "create", T0)
    p.event("a", "create", T0 + TTL, now=T0 + 100)  # parked
    erased = p.event("a", "delete", T0 + 200, now=T0 + 200)
    assert [(f.reason, f.after.deleted_at) for f in erased.tombstones] == [("explicit", T0 + 200)]
    assert [state.created_at for state, _ in erased.stamps] == [T0 + TTL]


def test_a_parked_create_waits_for_the_firing_to_end_or_keep_the_running_life() -> None:
    """Woken before the firing had come to the running life (the loop's turn first), the
    create ended it itself, without the holds read to a tick before, and under a hold
    found it kept and was dropped: its life never stamped nor tombstoned. It waits for
    the firing; under a hold, the firing keeps the life and the create starts the next."""
    p = Partition()
    p.holds.place(hold())
    p.event("a", "create", T0)
    assert p.event("a", "create", T0 + TTL, now=T0 + 100).verdicts == {"parked": 1}
    assert _unpark(p, T0 + TTL) is None  # due, not fired yet: it waits
    p.tick(T0 + TTL)  # the hold keeps it
    assert [(rid, reason) for rid, reason, _ in p.deferred] == [("a", "ttl")]
    woken = _unpark(p, T0 + TTL)
    assert woken is not None
    assert [(s.created_at, s.held_lives[0][0]) for s, _ in woken.stamps] == [(T0 + TTL, T0)]


def test_a_create_read_again_behind_itself_is_parked_once() -> None:
    """A partition given back after a rebalance reads again from its committed offset,
    which stays before the parked create: read again, it was parked a second time."""
    p = Partition()
    p.event("a", "create", T0)
    p.event("a", "create", T0 + TTL, now=T0 + 100)
    body = {"category": "conversation", "org": "acme", "bot": "b1", "record_id": "a"}
    again = _Rec(p.offset, None, orjson.dumps({**body, "op": "create", "ts": T0 + TTL}))
    assert p.proc.process([again], T0 + 150).verdicts == {}
    assert p.proc.parked == 1
    p.tick(T0 + TTL)
    woken = _unpark(p, T0 + TTL)
    assert woken is not None
    assert woken.verdicts == {"recreated": 1}


def test_an_erasure_of_the_lives_before_a_hold_keeps_is_on_the_audit_trail() -> None:
    """An erasure of a record's earlier life, read while a hold matches it: kept for the
    release as the others, and on the audit trail as they are (it was not). Kept only for
    the archive, with no hold, it goes at once: an erasure never waits for the archive."""
    p = Partition()
    p.event("a", "create", T0)
    p.tick(T0 + TTL)  # the first life ends
    p.event("a", "create", T0 + 2 * TTL)  # the next
    p.holds.place(hold())
    late = p.event("a", "delete", T0 + 500, now=T0 + 2 * TTL + 10)
    assert late.tombstones == []
    assert [(s.identity.record_id, reason) for s, reason, _ in late.deferred] == [("a", "explicit")]


# -- erasures of the lives before the running one, under a hold ----------------------------


def test_an_erasure_of_earlier_lives_changes_nothing_when_the_records_own_waits() -> None:
    """Under a hold, a record's erasure waits for the release; one read later for its
    earlier lives adds nothing: the waiting erasure ends every earlier life too. Kept as
    a life of its own, it was stamped, deferred and tombstoned once more at the release."""
    p = Partition()
    p.event("a", "create", T0)
    p.tick(T0 + TTL)  # the first life ends
    p.event("a", "create", T0 + 2 * TTL)
    p.holds.place(hold())
    p.event("a", "delete", T0 + 2 * TTL + 100)  # waits for the release
    assert [(rid, reason) for rid, reason, _ in p.deferred] == [("a", "explicit")]
    late = p.event("a", "delete", T0 + 500, now=T0 + 2 * TTL + 200)
    assert (late.stamps, late.deferred, dict(late.verdicts)) == ([], [], {"held": 1})
    p.holds.release("h1")
    p.tick(T0 + 2 * TTL + 300)
    assert [(reason, exp) for _, reason, _, exp in p.tombstones] == [
        ("ttl", T0 + TTL),
        ("explicit", T0 + 3 * TTL),  # the erasure that waited, once
    ]


def test_an_erasure_of_an_erased_records_earlier_life_under_a_hold_is_stale() -> None:
    """A record whose last life an erasure ended, before a hold was placed: an erasure
    dated in its earlier life is stale, as the engine says, not an event the hold kept
    (the verdicts feed the metrics)."""
    p = Partition()
    p.event("a", "create", T0)
    p.tick(T0 + TTL)
    p.event("a", "create", T0 + 2 * TTL)
    p.event("a", "delete", T0 + 2 * TTL + 100)
    p.holds.place(hold())
    late = p.event("a", "delete", T0 + 500, now=T0 + 2 * TTL + 200)
    assert (late.stamps, late.deferred, late.tombstones) == ([], [], [])
    assert dict(late.verdicts) == {"stale": 1}


def test_an_erasure_of_earlier_lives_a_hold_keeps_is_stamped_with_the_lives_kept() -> None:
    """Kept for the release among the lives the hold keeps, the erasure goes on the
    changelog with them (a restore rebuilds the record from it): the running life's
    stamp, with the erasure that names no life and ends at the previous deletion."""
    p = Partition()
    p.event("a", "create", T0)
    p.tick(T0 + TTL)  # the first life ends, at T0 + TTL - 1
    p.event("a", "create", T0 + 2 * TTL)
    p.holds.place(hold())
    late = p.event("a", "delete", T0 + 500, now=T0 + 2 * TTL + 10)
    assert [(s.created_at, s.live, s.held_lives) for s, _ in late.stamps] == [
        (T0 + 2 * TTL, True, ((None, None, None, None, T0 + TTL - 1),))
    ]


def test_an_erasure_of_earlier_lives_a_hold_keeps_goes_out_at_the_release() -> None:
    """The running life's timer carries the erasure kept among the lives the hold keeps:
    fired at its expiry and kept by the hold, the life still has it, and the release
    tombstones it, naming no life, before the running life's own tombstone."""
    p = Partition()
    p.event("a", "create", T0)
    p.tick(T0 + TTL)
    p.event("a", "create", T0 + 2 * TTL)
    p.holds.place(hold())
    p.event("a", "delete", T0 + 500, now=T0 + 2 * TTL + 10)
    p.tick(T0 + 3 * TTL)  # the running life is due: the hold keeps it
    assert [reason for _, reason, _ in p.deferred] == ["explicit", "ttl"]
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL + 100)
    assert [(reason, exp) for _, reason, _, exp in p.tombstones] == [
        ("ttl", T0 + TTL),
        ("explicit", None),  # the erasure of the first life
        ("ttl", T0 + 3 * TTL),
    ]


def _sent(fired: Fired) -> tuple[str | None, int | None, int | None, str | None]:
    """What a tombstone sends: its reason (None: no tombstone event, its null alone,
    ``Fired.null_only``), the life it names (``created_at``), its ``expiry-deleted-at``
    header (``Outbox._put_tombstones``: where the stores and the archive stop erasing),
    and the reason of the null that follows it on ``expiry.stamped`` (None: no null)."""
    if fired.has_null:
        until = fired.after.deleted_at
    else:
        until = fired.before.erased_until if fired.reason == "explicit" else None
    null = fired.reason if fired.has_null else None
    return None if fired.null_only else fired.reason, fired.before.created_at, until, null


def _erased_then_back_then_expired() -> Partition:
    """A record erased at T0 + 100 in its first life, created again at T0 + 200 (its
    second life, which expires at T0 + 1200 and whose tombstone goes out), then held."""
    p = Partition()
    p.event("a", "create", T0)
    p.event("a", "delete", T0 + 100)
    p.event("a", "create", T0 + 200)
    p.tick(T0 + 200 + TTL)
    assert [_sent(f) for f in p.fired] == [
        ("explicit", T0, T0 + 100, "explicit"),
        ("ttl", T0 + 200, T0 + 199 + TTL, "ttl"),
    ]
    p.fired.clear()
    p.holds.place(hold())
    return p


KEY_A = Identity("acme", "b1", "live", "conversation", "a").key


def test_an_old_erasure_read_again_under_a_hold_is_released_naming_no_life() -> None:
    """The first life's delete read again (a new consumer group) under a hold, after the
    second life expired: dated before the second life's creation, it names no life, and
    without a hold it goes out at once, ending at its own time with no null (the engine's
    ``_erase_ended``). The hold defers it; at the release it went out as the second life's
    erasure: ``expiry-deleted-at`` that life's end, an explicit null (which erases every
    archived line of the key before it: the second life's data, kept by its expiry), and a
    marker taking the erasure for the second life's, so that life's own erasure, read
    late, was ignored. It must go out as without the hold, and the record stay where the
    second life's end left it (the null that follows is that end's, reason ``ttl``)."""
    p = _erased_then_back_then_expired()
    held = p.event("a", "delete", T0 + 100, now=T0 + 2 * TTL)
    assert [d[1] for d in p.deferred] == ["explicit"]
    assert [(s.created_at, s.erase_at) for s, _ in held.stamps] == [(None, T0 + 100)]
    p.tick(T0 + 3 * TTL)
    assert p.fired == []
    p.holds.release("h1")
    p.tick(T0 + 4 * TTL)
    assert [_sent(f) for f in p.fired] == [
        ("explicit", None, T0 + 100, None),  # the request's time, no null
        (None, T0 + 200, T0 + 199 + TTL, "ttl"),  # the second life's end: its null again
    ]
    state = p.proc.state_of(KEY_A)
    assert state is not None
    assert (state.created_at, state.deleted_at, state.erase_at, state.held, state.held_lives) == (
        T0 + 200,
        T0 + 199 + TTL,
        None,
        False,
        (),
    )
    p.fired.clear()
    p.event("a", "delete", T0 + 500, now=T0 + 5 * TTL)  # the second life's own, read late
    assert [_sent(f) for f in p.fired] == [("explicit", None, T0 + 199 + TTL, "explicit")]
    p.event("a", "delete", T0 + 500, now=T0 + 5 * TTL)  # redelivered: nothing more
    p.event("a", "delete", T0 + 100, now=T0 + 5 * TTL)  # nor the first one, a third time
    assert len(p.fired) == 1


def test_the_release_of_an_old_erasure_sends_the_ended_lifes_tombstone_once() -> None:
    """The second life's ``ttl`` tombstone went out when it expired, before the hold. The
    release of the old erasure sent it again: every store was told of that end twice, and
    one that had forgotten the life since (a hold longer than its marker grace) wrote a
    second ``ttl`` receipt for it. Only its null goes out again, so that the changelog
    ends at that end (the erasure's deferral, stamped meanwhile, is superseded)."""
    p = _erased_then_back_then_expired()
    p.tombstones.clear()  # the first life's erasure, and the second life's end: once each
    p.event("a", "delete", T0 + 100, now=T0 + 2 * TTL)
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL)
    p.tick(T0 + 10 * TTL)
    assert p.tombstones == [("a", "explicit", T0 + 3 * TTL, None)]  # the erasure alone
    nulls = [(f.reason, f.after.deleted_at) for f in p.fired if f.has_null]
    assert nulls == [("ttl", T0 + 199 + TTL)]  # the second life's null, again


def test_the_ended_lifes_own_erasure_read_while_an_older_one_is_held_waits_in_its_place() -> None:
    """While the erasure naming no life waits, the second life's own erasure is read
    late: it ends that life and every one before it, so it is what the release sends (as
    it does without the other): the life's end in its header, and an explicit null."""
    p = _erased_then_back_then_expired()
    p.event("a", "delete", T0 + 100, now=T0 + 2 * TTL)
    own = p.event("a", "delete", T0 + 500, now=T0 + 2 * TTL)
    assert [(s.created_at, s.erase_at, s.held_lives) for s, _ in own.stamps] == [
        (None, T0 + 500, ())
    ]
    assert [d[1] for d in p.deferred] == ["explicit", "explicit"]
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL)
    assert [_sent(f) for f in p.fired] == [("explicit", None, T0 + 199 + TTL, "explicit")]


def test_a_next_life_after_an_old_erasure_under_a_hold_keeps_the_erasure_alone() -> None:
    """A create after the ended life's end, while the erasure naming no life waits, starts
    the record's next life, which keeps the erasure for the release, not the ended life
    (its tombstone went out before the hold): the release sends the erasure, ending at
    its own time, and the next life goes on to its own expiry."""
    p = _erased_then_back_then_expired()
    p.event("a", "delete", T0 + 100, now=T0 + 2 * TTL)
    back = p.event("a", "create", T0 + 2 * TTL)
    assert [(s.created_at, s.held_lives) for s, _ in back.stamps] == [
        (T0 + 2 * TTL, ((None, None, None, None, T0 + 100),))
    ]
    p.holds.release("h1")
    p.tick(T0 + 2 * TTL + 10)
    assert [_sent(f) for f in p.fired] == [("explicit", None, T0 + 100, None)]
    p.tick(T0 + 3 * TTL)
    assert [_sent(f) for f in p.fired[1:]] == [("ttl", T0 + 2 * TTL, T0 + 3 * TTL - 1, "ttl")]


def test_two_erasures_dated_before_an_ended_life_both_go_out_at_the_release() -> None:
    """Two erasures dated before the second life's creation, read again under a hold after
    that life expired: without the hold each goes out at once, naming no life and ending
    at its own time, so each request has its tombstone and its receipt. Under the hold the
    first waits as the erasure naming no life (``Stamp.ended_life``) and the second, taken
    for a re-delivery of a kept erasure, was dropped: the release sent the first alone,
    ending at T0 + 50, and the request for T0 + 150 never went out (before a013cd6 the
    first went out ending at the life's end, which covered it)."""
    p = _erased_then_back_then_expired()
    p.event("a", "delete", T0 + 50, now=T0 + 2 * TTL)
    p.event("a", "delete", T0 + 150, now=T0 + 2 * TTL)
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL)
    explicit = [_sent(f) for f in p.fired if f.reason == "explicit"]
    assert sorted(f[2] or 0 for f in explicit) == [T0 + 50, T0 + 150]
    assert all(f[1] is None and f[3] is None for f in explicit)  # no life named, no null


def test_a_new_erasure_read_while_an_old_one_waits_naming_no_life_goes_out_at_the_release() -> None:
    """A user's erasure dated after the second life's end, read while an erasure dated
    before that life's creation waits under the hold (naming no life): without the hold
    it goes out as a new life's erasure, ending at its own time with an explicit null
    (which erases the archive's lines of the second life too). It was taken for a
    re-delivery of the erasure kept and dropped: the release sent the old one alone,
    ending at T0 + 50 with no null, and the second life's data it named was never erased.
    It ends every earlier life, so it is what the release sends, as it does when that
    life's own erasure is read instead."""
    p = _erased_then_back_then_expired()
    p.event("a", "delete", T0 + 100, now=T0 + 2 * TTL)
    p.event("a", "delete", T0 + 1500, now=T0 + 2 * TTL)
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL)
    assert [_sent(f) for f in p.fired] == [("explicit", None, T0 + 1500, "explicit")]
    p.fired.clear()
    p.event("a", "delete", T0 + 1500, now=T0 + 3 * TTL)  # redelivered: nothing more
    p.event("a", "create", T0 + 200, now=T0 + 3 * TTL)  # nor the second life's create
    assert p.fired == []


def test_a_hold_missing_a_required_field_it_has_under_another_spelling_names_it() -> None:
    """`{"Org": "acme", ...}` from a tool was rejected with "field 'org' is required" alone
    (a trial): a person reading the dead letter or the warning could not see that the hold
    is not in force only for a spelling. The detail names the hold's own field, as an
    event's does; a hold without anything like it is rejected as before."""
    misspelt = parse_hold(b"h", orjson.dumps({"Org": "acme", "reason": "case 3"}))
    assert misspelt == Rejection(
        "missing_field", "field 'org' is required; the hold has 'Org': is that it?"
    )
    no_reason = parse_hold(b"h", orjson.dumps({"org": "acme", "Reason": "case 3"}))
    assert no_reason == Rejection(
        "missing_field", "field 'reason' is required; the hold has 'Reason': is that it?"
    )
    assert parse_hold(b"h", orjson.dumps({"reason": "case 3", "ticket": 4})) == Rejection(
        "missing_field", "field 'org' is required"
    )


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b'{"org": "acme", "reason": "case 7", "org": "other"}', "key 'org'"),
        (b'{"org": "acme", "record_id": "r1", "reason": "case 7", "record_id": "r2"}', "key 'record_id'"),
        (b'{"org": "acme", "reason": "case 7", "ticket": {"n": 1, "n": 2}}', "at 'ticket.n'"),
    ],
)  # fmt: skip
def test_a_hold_giving_a_key_twice_is_rejected_and_the_hold_before_stays(
    raw: bytes, named: str
) -> None:
    """orjson keeps a repeated key's last value without a word: ``"org": "acme", ...,
    "org": "other"`` replaced a hold on acme by one on other, so acme's records were let go
    by a message no one can say was meant so. Rejected, naming the key and its path; the
    hold its key named before stays, neither released nor narrowed."""
    book = HoldBook()
    before = apply_hold_message(book, b"h1", encode_hold(hold("h1")))
    generation = book.generation
    got = apply_hold_message(book, b"h1", raw)
    assert isinstance(got, Rejection)
    assert got.code == "invalid_field"
    assert named in got.detail
    assert book.get("h1") == before
    assert book.generation == generation  # nothing let go
    assert book.is_held(Identity("acme", "_", "live", "conversation", "r9"))
    assert parse_hold(b"h2", raw) == got  # and a first placement is no hold at all


def _doubts(book: HoldBook) -> list[tuple[str, int, int, str]]:
    return [(d.hold_id, d.partition, d.offset, d.why.code) for d in book.in_doubt()]


def test_a_hold_id_whose_latest_message_cannot_be_read_is_in_doubt_until_settled() -> None:
    """``expiry.holds`` is compacted: once the placement before an unreadable message is
    removed, a start reads that message alone, and the id had no hold, its records deleted
    with a dead-letter line to say so. The book now names every id whose latest message on
    a partition cannot be read, however it read before (the running service's book keeps
    the hold placed before), until a later message for it there settles it: a placement
    or a null. Earlier unreadable messages under an id whose latest is valid are fine."""
    book = HoldBook()
    apply_hold_message(book, b"kept", encode_hold(hold("kept")), 0, 0)
    apply_hold_message(book, b"kept", b'{"org": "acme"', 0, 1)  # bad JSON
    apply_hold_message(book, b"new", b'{"reason": "case 2"}', 1, 2)  # no org
    apply_hold_message(book, b"mended", b"[]", 0, 3)
    apply_hold_message(book, b"mended", encode_hold(hold("mended")), 0, 4)
    apply_hold_message(book, b"nulled", b"{}", 0, 5)
    apply_hold_message(book, b"nulled", None, 0, 6)
    apply_hold_message(book, b"elsewhere", b"{}", 0, 7)
    apply_hold_message(book, b"elsewhere", encode_hold(hold("elsewhere")), 1, 8)
    assert _doubts(book) == [
        ("elsewhere", 0, 7, "missing_field"),
        ("kept", 0, 1, "invalid_json"),
        ("new", 1, 2, "missing_field"),
    ]
    assert book.get("kept") == hold("kept")  # the hold before stays, as it did
    assert book.doubts_of("new") == [InDoubt("new", 1, 2, book.doubts_of("new")[0].why)]
    # Settled only on its own partition: compaction removes a value only with one there.
    apply_hold_message(book, b"kept", None, 0, 9)
    apply_hold_message(book, b"elsewhere", None, 1, 10)
    apply_hold_message(book, b"new", encode_hold(hold("new")), 1, 11)
    assert _doubts(book) == [("elsewhere", 0, 7, "missing_field")]


def test_a_message_without_a_key_is_the_id_its_value_names_or_no_id() -> None:
    """A message without a key is the hold its value's ``hold_id`` names (as a valid one
    is placed): unreadable, that id is in doubt, and a later message for it settles it. One
    naming no id can be settled by no message (a null needs a key), and is in no id's
    doubt: it changes no hold, and a start refusing for it would refuse for ever."""
    book = HoldBook()
    apply_hold_message(book, None, b'{"hold_id": "named", "reason": "case"}', 2, 0)
    apply_hold_message(book, None, b'{"org": "acme", "reason": "case"}', 2, 1)
    apply_hold_message(book, None, b'{"hold_id": 7, "org": "acme"}', 2, 2)
    apply_hold_message(book, None, b"not json", 2, 3)
    assert _doubts(book) == [("named", 2, 0, "missing_field")]
    apply_hold_message(book, b"named", None, 2, 4)
    assert book.in_doubt() == []


def test_a_start_refuses_on_a_hold_id_in_doubt_naming_each_where_and_what_to_do() -> None:
    """What the service's start and a sink's sweep say, exit 2, as for a holds topic
    that is missing: each id, ``topic[partition]@offset``, the rejection's detail, and the
    commands that settle it. A book with nothing in doubt lets the start go on."""
    book = HoldBook()
    refuse_holds_in_doubt(book, "expiry.holds")  # nothing in doubt: no refusal
    apply_hold_message(book, b"case-1", b'{"org": "acme", "reason": "r", "org": "x"}', 0, 4)
    apply_hold_message(book, b"case-2", b'{"org": "acme"}', 3, 9)
    with pytest.raises(ConfigurationError) as refused:
        refuse_holds_in_doubt(book, "expiry.holds")
    said = str(refused.value)
    assert status_of(refused.value) == USAGE
    assert said.startswith(
        "the latest message of 2 legal hold ids on 'expiry.holds' cannot be read, so what "
        "they hold is unknown: 'case-1' at expiry.holds[0]@4: invalid_field (key 'org' is "
        "given twice (at the top level)"
    )
    assert "; 'case-2' at expiry.holds[3]@9: missing_field (field 'reason' is required)." in said
    assert "the service would delete the records each was meant to keep" in said
    assert "`stream-expiry hold place --id ID --org ORG" in said
    assert said.endswith("`stream-expiry hold release ID`; then start")
    long_key = b"k" * 600
    apply_hold_message(book, b"case-1", None, 0, 5)
    apply_hold_message(book, b"case-2", None, 3, 10)
    apply_hold_message(book, long_key, b'{"org": "acme", "reason": "r"}', 1, 0)
    with pytest.raises(ConfigurationError) as refused:
        refuse_holds_in_doubt(book, "expiry.holds")
    # An id `hold release` cannot take: cut in the message, with the way out it has.
    assert (
        "a key of 600 characters, which no hold id can be: release it by its key, "
        "`stream-expiry hold release --key-hex HEX`" in str(refused.value)
    )
    assert len(str(refused.value)) < 2_000


def test_a_held_life_another_hold_takes_over_is_named_on_the_audit_trail_not_the_next() -> None:
    """A session a hold kept past its expiry came back (its next life runs beside it);
    one of its two holds released, the other keeps the held life: the audit entry gave
    the next life's ``expires_at`` (not due yet) and no erasure, so it read as a deferral
    of a deletion not yet due, and not of the held life's (a trial). It names the held
    life, as the entry written at its expiry did; the next life is not deferred."""
    p = Partition()
    p.holds.place(hold("h-all"))
    p.holds.place(hold("h-s", record_id="s"))
    p.event("s", "create", T0, category="session")
    p.tick(T0 + TTL)  # expired, kept
    p.event("s", "touch", T0 + 3 * TTL, category="session")  # the next life
    p.holds.release("h-all")
    p.proc.extend_horizon(T0 + 3 * TTL + 10)
    p._take(p.proc.fire_due(T0 + 3 * TTL + 10), T0 + 3 * TTL + 10)
    taken_over = []
    while p.proc.releasing:
        effects = p._take(p.proc.release_due(T0 + 3 * TTL + 10, budget=100), T0 + 3 * TTL + 10)
        taken_over += effects.deferred
    assert [(s.created_at, s.expires_at, s.erase_at, r, ids) for s, r, ids in taken_over] == [
        (T0, T0 + TTL, None, "ttl", ["h-s"])
    ]


def test_an_erasure_another_hold_takes_over_names_its_request_on_the_audit_trail() -> None:
    """An erasure request two holds deferred; one released, the other keeps it: the new
    audit entry carried no request, so `history` said of it "the erasure request unknown
    (... an earlier version ...)", though the request was on the first entry (a trial).
    It names the request the first entry named."""
    p = Partition()
    p.holds.place(hold("h-all"))
    p.holds.place(hold("h-e", record_id="e"))
    p.event("e", "create", T0)
    first = p.event("e", "delete", T0 + 10, event_id="gdpr-7")
    [(index, request)] = first.deferred_requests.items()
    assert first.deferred[index][1] == "explicit"
    p.holds.release("h-all")
    now = T0 + 20
    taken_over: list[object] = []
    while p.proc.releasing or not taken_over:
        effects = p._take(p.proc.release_due(now, budget=100), now)
        taken_over += [
            (s.erase_at, r, ids, effects.deferred_requests.get(i))
            for i, (s, r, ids) in enumerate(effects.deferred)
        ]
        if not p.proc.releasing:
            break
    assert taken_over == [(T0 + 10, "explicit", ["h-e"], request)]


def test_a_life_due_on_arrival_that_waits_for_the_archive_is_late_for_its_event() -> None:
    """``[archive] required``, a create dated long before it arrived (a producer sending
    epoch seconds reads as 1970): its life is due on arrival, waits a moment for the
    archive, and its tombstone said ``late: archive, it waited for the archive``, so an
    auditor read a deletion 56 years after the expiry as the archive's fault (a trial).
    It says ``late_event``: the event made it due, the archive added the moment."""
    archive = ArchiveGate(partitions=1)
    p = Partition(archive=archive)
    arrived = T0 + 200 * TTL  # TTL after T0 plus minutes: due when read
    p.event("c", "create", T0, now=arrived)
    p.tick(arrived + 10)
    assert p.tombstones == []  # waits for the archive
    archive.update({0: 100})
    p.tick(arrived + 50)
    [fired] = p.fired
    assert (fired.reason, fired.late_cause) == ("ttl", "late_event")

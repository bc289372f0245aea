"""Why a deletion was late: a ``ttl`` tombstone emitted more than ``LATE_AFTER_MS`` after its
expiry names its cause (``Fired.late_cause``, the ``expiry-late-cause`` header): the firing
late (``catch_up``), an event that came after the expiry (``late_event``), a legal hold's
release (``hold``), or the archive catching up (``archive``); ``late_event`` also after a
restart or a restore. An erasure emitted more than that after its request names one too:
``hold``, ``catch_up`` or ``late_event``."""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

import stream_expiry.state.processor as processor
from stream_expiry.archive_gate import ArchiveGate
from stream_expiry.codec import H_DUE_AT_INGEST, H_PRODUCED_AT, LATE_AFTER_MS
from stream_expiry.model import Identity
from stream_expiry.policy import Resolution
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore
from stream_expiry.state.processor import _if_late
from tests.unit.test_holds import T0, TTL, Partition, hold, resolve
from tests.unit.test_restore_model import Changelog, _copy

if TYPE_CHECKING:
    import pytest

    from stream_expiry.engine import Resolver
    from stream_expiry.state import Effects

LATE = TTL + LATE_AFTER_MS  # after T0, when a record created at T0 is late


def _causes(p: Partition) -> list[tuple[str, str, str | None]]:
    return [
        (f.before.identity.record_id, f.reason, f.late_cause) for f in p.fired if not f.null_only
    ]


def test_on_time_or_a_minute_late_names_no_cause_and_later_says_catch_up() -> None:
    for fired_at, cause in ((T0 + TTL, None), (T0 + LATE, None), (T0 + LATE + 1, "catch_up")):
        p = Partition()
        p.event("c", "create", T0)
        p.tick(fired_at)
        assert _causes(p) == [("c", "ttl", cause)]


def test_the_firings_lateness_test_written_inline_says_what_if_late_says() -> None:
    """``fire_due`` tests lateness inline, not by calling ``_if_late`` as the other paths
    do: the call, once a tombstone, cost 1,604 instructions of the firing workload's
    217,036 (+0.7 %, ``bench.count_instructions``, round 42). The two must not drift: of
    every tombstone the firing sends, on time, at the minute, past it, and one a late
    event made due, ``_if_late`` says the same."""
    for fired_at in (T0 + TTL, T0 + LATE, T0 + LATE + 1, T0 + 10 * LATE):
        for arrived_late in (False, True):
            p = Partition()
            p.event("c", "create", T0, now=fired_at - 1 if arrived_late else T0)
            p.tick(fired_at)
            [fired] = p.fired
            cause = fired.late_cause or "catch_up"
            assert _if_late(fired._replace(late_cause=None), cause) == fired
    assert [f.late_cause for f in p.fired] == ["late_event"]  # the last: a late event's


def test_a_record_already_due_at_ingest_says_late_event() -> None:
    """The contract's "already due at ingest": a late (or replayed) create is stamped and
    tombstoned at once; the event came after the expiry, not the service."""
    p = Partition()
    p.event("c", "create", T0, now=T0 + LATE + 5)
    p.tick(T0 + LATE + 10)
    assert _causes(p) == [("c", "ttl", "late_event")]
    # The next life, on time: nothing.
    p.event("c", "create", T0 + LATE + 20)
    p.tick(T0 + LATE + 20 + TTL)
    assert _causes(p)[1:] == [("c", "ttl", None)]


@dataclass
class _Timed:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int  # the Kafka record's, as aiokafka gives it


def _late_create(p: Partition, timestamp: int, now: int, rid: str = "c") -> Effects:
    return _timed(p, rid, "create", T0, timestamp, now)


def _timed(p: Partition, rid: str, op: str, ts: int, timestamp: int, now: int) -> Effects:
    """An event read at ``now`` that the broker had at ``timestamp``."""
    p.offset += 1
    body = {"category": "conversation", "org": "acme", "bot": "b1", "record_id": rid, "op": op,
            "ts": ts}  # fmt: skip
    rec = _Timed(p.offset, None, orjson.dumps(body), timestamp)
    return p._take(p.proc.process([rec], now), now)


def test_an_event_on_the_bus_before_the_expiry_but_read_after_says_catch_up() -> None:
    """Its Kafka timestamp says the broker had the event before the expiry: the service
    read it late (a backlog), so the service caught up, the event was not late."""
    p = Partition()
    _late_create(p, T0 + 10, now=T0 + LATE + 5)
    p.tick(T0 + LATE + 10)
    assert _causes(p) == [("c", "ttl", "catch_up")]
    q = Partition()
    _late_create(q, T0 + LATE, now=T0 + LATE + 5)  # on the bus after the expiry
    q.tick(T0 + LATE + 10)
    assert _causes(q) == [("c", "ttl", "late_event")]


@dataclass
class _Copy(_Timed):
    headers: list[tuple[str, bytes]]  # a copy made by stream-expiry rekey


def test_a_copy_made_late_by_rekey_is_judged_by_the_producers_time() -> None:
    """Behind ``stream-expiry rekey`` the copy's timestamp is rekey's: an event the
    producer wrote before the expiry, copied after it (rekey behind or stopped), said
    ``late_event`` and blamed the producer (a trial). The copy's ``expiry-produced-at``
    says when the producer wrote it: the service caught up."""
    body = orjson.dumps({"category": "conversation", "org": "acme", "record_id": "c", "ts": T0})
    for produced, cause in ((T0 + 10, "catch_up"), (T0 + LATE, "late_event")):
        p = Partition()
        p.offset += 1
        copied_at = T0 + LATE + 1  # after the expiry: alone, it would say late_event
        rec = _Copy(p.offset, None, body, copied_at, [(H_PRODUCED_AT, b"%d" % produced)])
        p._take(p.proc.process([rec], T0 + LATE + 5), T0 + LATE + 5)
        p.tick(T0 + LATE + 10)
        assert _causes(p) == [("c", "ttl", cause)]


def test_an_event_that_finds_the_life_due_ends_it_saying_catch_up() -> None:
    """The prior life was due before the event came; the firing had not come to it."""
    p = Partition()
    p.event("c", "create", T0)
    p.event("c", "create", T0 + 2 * LATE, now=T0 + 2 * LATE)  # the next life
    assert _causes(p) == [("c", "ttl", "catch_up")]


def test_a_late_event_that_an_event_after_it_ends_says_late_event() -> None:
    """A late create and the next life's create read together: the first made its life due
    on arrival, the second ends that life at ingest."""
    p = Partition()
    now = T0 + 2 * LATE
    p.event("c", "create", T0, now=now)
    p.event("c", "create", T0 + LATE, now=now)
    assert _causes(p) == [("c", "ttl", "late_event")]
    p.tick(now + 10)  # the second life, due on arrival too
    assert _causes(p)[1:] == [("c", "ttl", "late_event")]


def test_a_touch_that_extends_a_life_due_before_it_keeps_catch_up() -> None:
    """A session due before a late touch (dated before its expiry) is not made due by the
    touch: the firing was behind."""
    p = Partition()
    p.event("s", "create", T0, category="session")
    p.event("s", "touch", T0 + 10, category="session", now=T0 + 2 * LATE)
    p.tick(T0 + 2 * LATE)
    assert _causes(p) == [("s", "ttl", "catch_up")]


def test_a_hold_s_release_says_hold_of_an_expiry_and_of_an_erasure_it_deferred() -> None:
    """An erasure a legal hold deferred goes out at the release, late: it says ``hold``
    too (it said nothing, as if an erasure were on time by definition)."""
    p = Partition()
    p.holds.place(hold())
    p.event("kept", "create", T0)
    p.event("erased", "create", T0)
    p.event("erased", "delete", T0 + 10)
    p.tick(T0 + TTL)
    p.holds.release("h1")
    p.tick(T0 + 2 * LATE)
    assert sorted(_causes(p)) == [("erased", "explicit", "hold"), ("kept", "ttl", "hold")]


def test_a_release_within_the_minute_names_no_cause() -> None:
    p = Partition()
    p.holds.place(hold())
    p.event("kept", "create", T0)
    p.tick(T0 + TTL)
    p.holds.release("h1")
    p.tick(T0 + LATE)
    assert _causes(p) == [("kept", "ttl", None)]


def test_earlier_lives_a_hold_kept_say_hold_and_the_running_life_its_own() -> None:
    """A session back after its held life's end: at the release the held life's tombstone
    says hold; the running life, fired on time, says nothing."""
    p = Partition()
    p.holds.place(hold())
    p.event("s", "create", T0, category="session")
    p.tick(T0 + TTL)
    start = T0 + 2 * LATE
    p.event("s", "touch", start, category="session")  # the next life, keeping the held one
    p.holds.release("h1")
    p.tick(start + 10)
    p.tick(start + TTL)
    assert _causes(p) == [("s", "ttl", "hold"), ("s", "ttl", None)]


def test_an_event_that_finds_a_released_record_first_says_hold() -> None:
    """Released, the release scan not come to it yet: the event lets it go."""
    p = Partition()
    p.holds.place(hold())
    p.event("c", "create", T0)
    p.tick(T0 + TTL)
    p.holds.release("h1")
    p.event("c", "create", T0 + 2 * LATE)
    assert _causes(p) == [("c", "ttl", "hold")]


def test_the_archive_catching_up_says_archive() -> None:
    archive = ArchiveGate(partitions=1)
    p = Partition(archive=archive)
    p.event("c", "create", T0)
    p.tick(T0 + TTL)
    assert _causes(p) == []  # waits for the archive
    archive.update({0: 100})
    p.tick(T0 + 2 * LATE)
    assert _causes(p) == [("c", "ttl", "archive")]


def test_with_the_archive_required_a_hold_s_release_still_says_hold() -> None:
    archive = ArchiveGate(partitions=1)
    archive.update({0: 100})
    p = Partition(archive=archive)
    p.holds.place(hold())
    p.event("c", "create", T0)
    p.tick(T0 + TTL)
    p.holds.release("h1")
    p.tick(T0 + 2 * LATE)
    assert _causes(p) == [("c", "ttl", "hold")]


def test_an_erasure_lets_lives_kept_for_the_archive_go_saying_archive() -> None:
    """Lives a released hold kept, held back by the archive: an erasure (never delayed)
    lets them go; they waited for the archive."""
    archive = ArchiveGate(partitions=1)
    p = Partition(archive=archive)
    p.holds.place(hold())
    p.event("s", "create", T0, category="session")
    p.tick(T0 + TTL)
    start = T0 + 2 * LATE
    p.event("s", "touch", start, category="session")  # the next life, keeping the held one
    p.holds.release("h1")
    p.tick(start + 100)
    assert _causes(p) == []  # the archive has not read the next life's stamp
    p.event("s", "delete", start + 200, category="session")
    assert _causes(p) == [("s", "ttl", "archive"), ("s", "explicit", None)]


# -- late_event kept across a restart and a restore ---------------------------------------


def _restarted(
    p: Partition, store: PartitionStore | None = None, resolver: Resolver = resolve
) -> Partition:
    """``p``'s partition after a crash and a restart: a new processor over the store ``p``
    settled into (the same state directory) or over ``store`` (restored from the
    changelog), with nothing of ``p``'s memory; ``resolver``, its policies."""
    q = Partition(holds=p.holds)
    q.proc = PartitionProcessor(
        "in",
        0,
        p.proc.store if store is None else store,
        resolve=resolver,
        sliding=frozenset({"session"}),
        categories=frozenset({"conversation", "session"}),
        max_skew_ms=10**12,
        now_ms=T0,
        holds=p.holds,
    )
    q.offset, q.stamped = p.offset, p.stamped
    return q


def test_a_late_event_s_tombstone_decided_after_a_restart_still_says_late_event() -> None:
    """Killed after the stamp of a record already due at ingest was settled and before its
    tombstone went out: the restarted processor fires it, and knows from its store that
    the event came late (it said ``catch_up``: the cause was in memory only)."""
    p = Partition()
    p.event("c", "create", T0, now=T0 + LATE + 5)  # settled; the firing has not come
    q = _restarted(p)
    q.tick(T0 + 3 * LATE)
    assert _causes(q) == [("c", "ttl", "late_event")]


def test_a_late_event_read_again_after_a_restart_still_says_late_event() -> None:
    """Its offset not committed, the restarted processor reads the event again: a
    re-delivery of the stored life, which changes nothing (it said ``catch_up``)."""
    p = Partition()
    p.event("c", "create", T0, now=T0 + LATE + 5)
    q = _restarted(p)
    q.offset -= 1  # from the committed offset, before the event
    q.event("c", "create", T0, now=T0 + 2 * LATE)
    q.tick(T0 + 2 * LATE)
    assert _causes(q) == [("c", "ttl", "late_event")]


def test_an_event_read_late_before_a_restart_still_says_catch_up() -> None:
    """The broker had the event before the expiry (its timestamp): the service read it
    late, and a restart does not make the event late."""
    p = Partition()
    _late_create(p, T0 + 10, now=T0 + LATE + 5)
    q = _restarted(p)
    q.tick(T0 + 3 * LATE)
    assert _causes(q) == [("c", "ttl", "catch_up")]


def test_a_late_event_the_memory_dropped_is_remembered_by_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The processor remembers a bounded number of lives due on arrival (the oldest
    dropped said ``catch_up``); the store keeps every one."""
    monkeypatch.setattr(processor, "_ARRIVED_DUE_MAX", 1)
    p = Partition()
    p.event("a", "create", T0, now=T0 + LATE + 5)
    p.event("b", "create", T0, now=T0 + LATE + 5)  # a dropped from memory
    p.tick(T0 + 3 * LATE)
    assert sorted(_causes(p)) == [("a", "ttl", "late_event"), ("b", "ttl", "late_event")]


def test_an_event_that_ends_a_late_event_s_life_after_a_restart_says_late_event() -> None:
    """The next life's create, read after the restart, ends the life a late event made
    due (the firing had not come to it): that life's tombstone says ``late_event``."""
    p = Partition()
    now = T0 + 2 * LATE
    p.event("c", "create", T0, now=now)
    q = _restarted(p)
    q.event("c", "create", T0 + 2 * TTL, now=now + 10)  # the next life: late, due too
    q.tick(now + 20)
    assert _causes(q) == [("c", "ttl", "late_event"), ("c", "ttl", "late_event")]


def test_what_the_store_keeps_of_a_life_due_on_arrival_goes_with_its_marker() -> None:
    p = Partition()
    [(life, _)] = p.event("c", "create", T0, now=T0 + LATE + 5).stamps
    store, key = p.proc.store, life.identity.key
    assert store.due_on_arrival([life]) == {key}
    assert store.due_on_arrival([life._replace(created_at=T0 - 1)]) == set()  # another life
    p.tick(T0 + LATE + 10)
    assert store.due_on_arrival([life]) == {key}  # its marker is there
    assert store.prune(T0 + 10**12) == 1
    assert store.due_on_arrival([life]) == set()
    assert list(store.kv.scan(b"", b"\xff" * 8)) == [
        (k, v) for k, v in store.kv.scan(b"~", b"\xff")
    ]  # nothing but the meta left


def test_an_entry_the_version_before_kept_counts_by_its_expiry_and_goes_with_the_marker() -> None:
    """The version before this one kept a life due on arrival by its expiry alone (``a`` +
    key -> the expiry): a store it wrote, opened by this version, still says
    ``late_event`` of that life, and drops the entry with the marker."""
    p = Partition()
    [(life, _)] = p.event("c", "create", T0).stamps  # on time: no entry of this version's
    kv = p.proc.store.kv
    kv.apply({b"a" + life.identity.key.encode(): struct.pack(">q", T0 + TTL)}, ())
    q = _restarted(p, PartitionStore(kv))
    q.tick(T0 + 3 * LATE)
    assert _causes(q) == [("c", "ttl", "late_event")]
    assert q.proc.store.prune(T0 + 10**12) == 1
    assert list(kv.scan(b"", b"\xff" * 8)) == list(kv.scan(b"~", b"\xff"))


def test_rolled_back_and_forward_again_a_late_life_the_version_before_noted_says_late_event() -> (
    None
):
    """Upgraded, rolled back, upgraded again on one state directory. This version noted a
    life due on arrival (``l``); rolled back, the version before ended that life and noted
    the record's next one, due on arrival too, by its expiry (``a``), leaving ``l`` as it
    is (it does not know the prefix). Killed before that life's firing came, the store is
    opened by this version again: the stale ``l`` names the earlier life, and the ``a``
    entry beside it, written after it (this version drops a record's ``a`` when it notes
    one of its lives), says the running one was due on arrival: ``late_event`` (it said
    ``catch_up``: a stale ``l`` hid the ``a``)."""
    p = Partition()
    [(first, _)] = p.event("c", "create", T0, now=T0 + LATE + 5).stamps
    p.tick(T0 + LATE + 10)
    assert _causes(p) == [("c", "ttl", "late_event")]
    kv, key = p.proc.store.kv, first.identity.key.encode()
    [stale] = kv.multi_get([b"l" + key])
    assert stale is not None
    # The version before reads the next life's create late and settles it (as this one
    # does, but for the entry): its ``a`` beside this version's ``l`` of the first life.
    later = T0 + 2 * TTL
    [(running, _)] = p.event("c", "create", later, now=later + LATE + 5).stamps
    kv.apply({b"l" + key: stale, b"a" + key: struct.pack(">q", later + TTL)}, ())
    q = _restarted(p, PartitionStore(kv))
    assert q.proc.store.due_on_arrival([running]) == {first.identity.key}
    q.tick(later + 3 * LATE)
    assert _causes(q) == [("c", "ttl", "late_event")]


def test_noting_a_late_life_drops_the_entry_the_version_before_kept_of_the_record() -> None:
    """An ``a`` entry beside an ``l`` one is read (above) because it can only be newer:
    noting a life of the record drops the record's ``a``, whose expiry alone may be the
    one of a later life of the record (an erasure, then a shorter ttl) that was not due on
    arrival."""
    p = Partition()
    [(life, _)] = p.event("c", "create", T0, now=T0 + 5).stamps  # on time
    kv, key = p.proc.store.kv, life.identity.key.encode()
    other = T0 + 5 * TTL  # the expiry of a later life, in the version before's entry
    kv.apply({b"a" + key: struct.pack(">q", other)}, ())
    q = _restarted(p, PartitionStore(kv))
    q.event("c", "delete", T0 + 10, now=T0 + 20)
    [(late, _)] = q.event("c", "create", T0 + 3 * TTL, now=T0 + 3 * TTL + LATE).stamps
    assert kv.multi_get([b"a" + key]) == [None]
    assert q.proc.store.due_on_arrival([late]) == {life.identity.key}
    assert (
        q.proc.store.due_on_arrival([late._replace(created_at=T0 + 4 * TTL, expires_at=other)])
        == set()
    )


def test_a_restored_stamp_says_its_life_was_due_on_arrival() -> None:
    """The partition restored from the changelog (a takeover, a lost disk): the stamp's
    ``expiry-due-at-ingest`` header says what the instance that read the event knew, and
    the restored processor's tombstone says ``late_event`` (it said ``catch_up``). A stamp
    without it (an event read late), or naming another expiry, says ``catch_up``."""
    p = Partition()
    log = Changelog()
    now = T0 + LATE + 5
    log.write(p.event("late", "create", T0, now=now), now)
    log.write(_late_create(p, T0 + 10, now=now, rid="read-late"), now)
    said = [dict(m.headers).get(H_DUE_AT_INGEST) for m in log.stamped]
    assert said == [b"%d" % (T0 + TTL), None]
    other = [
        (name, b"%d" % (T0 + TTL + 1) if name == H_DUE_AT_INGEST else value)
        for name, value in log.stamped[0].headers
    ]
    log.stamped.append(
        dataclasses.replace(log.stamped[0], key=_identity("other").key.encode(), headers=other)
    )
    q = _restarted(p, log.restore(now, PartitionStore(MemoryKV())))
    q.tick(T0 + 3 * LATE)
    assert sorted(_causes(q)) == [
        ("late", "ttl", "late_event"),
        ("other", "ttl", "catch_up"),
        ("read-late", "ttl", "catch_up"),
    ]


# A policy update at T0 + TTL halves the ttl: a life created at T0 and the next one,
# created at T0 + TTL after an erasure, both expire at T0 + 2 * TTL.
_HALVED_AT = T0 + TTL


def _halved_later(identity: Identity, at_ms: int) -> Resolution:
    return Resolution(2 * TTL if at_ms < _HALVED_AT else TTL, "org")


def _erased_then_a_life_with_its_expiry(p: Partition, now: int) -> list[Effects]:
    """After a create read late (due on arrival: the store keeps its life so), its erasure
    before the firing came to it, then the record's next life, created after the ttl was
    halved: it expires at the very millisecond the erased life did. The broker had its
    create before that expiry (its timestamp): the service read it late, and its tombstone
    will be late by the service's doing (``catch_up``). Each call's effects, as written."""
    return [
        p.event("c", "delete", T0 + 10, now=now),
        _timed(p, "c", "create", _HALVED_AT, _HALVED_AT + 10, now),
    ]


def test_a_later_life_with_a_late_life_s_expiry_is_not_taken_for_it() -> None:
    """The store's entry of the erased life named its expiry only, which the next life
    has too: that life's tombstone said ``late_event`` (the event was on the bus in
    time), in the processor that read it and after a restart."""
    now = T0 + 3 * LATE
    for restart in (False, True):
        p = _restarted(Partition(), resolver=_halved_later)
        p.event("c", "create", T0, now=now)
        _erased_then_a_life_with_its_expiry(p, now)
        q = _restarted(p, resolver=_halved_later) if restart else p
        q.tick(now + 10)
        [*_, fired] = q.fired
        assert fired.before.created_at == _HALVED_AT
        assert fired.before.expires_at == T0 + 2 * TTL
        assert (fired.reason, fired.late_cause) == ("ttl", "catch_up")


def test_read_in_one_batch_only_the_late_life_s_stamp_says_it_was_due_on_arrival() -> None:
    """The three events of the test above read in one slice: the stamp of the next life,
    whose expiry is the late life's, said ``expiry-due-at-ingest`` too (a restore then
    took it for a late event's), and its tombstone ``late_event``."""
    now = T0 + 3 * LATE
    p = _restarted(Partition(), resolver=_halved_later)
    events = [(T0, "create", None), (T0 + 10, "delete", None), (_HALVED_AT, "create", _HALVED_AT)]
    records = []
    for ts, op, on_bus in events:
        p.offset += 1
        body = {"category": "conversation", "org": "acme", "bot": "b1", "record_id": "c",
                "op": op, "ts": ts}  # fmt: skip
        records.append(_Timed(p.offset, None, orjson.dumps(body), -1 if on_bus is None else on_bus))
    log = Changelog()
    log.write(p._take(p.proc.process(records, now), now), now)
    said = [dict(m.headers).get(H_DUE_AT_INGEST) for m in log.stamped if m.value is not None]
    assert said == [b"%d" % (T0 + 2 * TTL), None]
    p.tick(now + 10)
    assert [(f.reason, f.late_cause) for f in p.fired][-1] == ("ttl", "catch_up")


def test_a_kept_store_brought_up_to_date_does_not_take_a_later_life_for_a_late_one() -> None:
    """An instance read the late create, then lost the partition; another read the
    erasure and the next life (same expiry, see above); the partition came back, and the
    kept store took what was written since from the changelog: the stale entry of the
    erased life must not make the next life's tombstone say ``late_event``."""
    now = T0 + 3 * LATE
    p = _restarted(Partition(), resolver=_halved_later)
    log = Changelog()
    log.write(p.event("c", "create", T0, now=now), now)
    kept, since = _copy(p.proc.store), log.ends
    for effects in _erased_then_a_life_with_its_expiry(p, now):
        log.write(effects, now)
    q = _restarted(p, log.restore(now, kept, since), resolver=_halved_later)
    q.tick(now + 10)
    assert [(f.before.created_at, f.late_cause) for f in q.fired] == [(_HALVED_AT, "catch_up")]


def _identity(rid: str) -> Identity:
    return Identity("acme", "b1", "live", "conversation", rid)


# -- erasures: late when a hold deferred them, or when read late -------------------------


def test_an_erasure_a_hold_deferred_says_hold_only_past_the_minute() -> None:
    for released, cause in ((T0 + 10 + LATE_AFTER_MS, None), (T0 + 11 + LATE_AFTER_MS, "hold")):
        p = Partition()
        p.holds.place(hold())
        p.event("c", "create", T0)
        p.event("c", "delete", T0 + 10)  # deferred: its tombstone is due at T0 + 10
        p.holds.release("h1")
        p.tick(released)
        assert _causes(p) == [("c", "explicit", cause)]


def test_an_erasure_a_hold_deferred_says_hold_after_a_restart_with_the_archive_required() -> None:
    """An erasure never waits for the archive, so its release says ``hold`` even where a
    restart leaves an expiry's cause to a guess (``archive``, see ``_release_cause``)."""
    archive = ArchiveGate(partitions=1)
    archive.update({0: 100})
    p = Partition(archive=archive)
    p.holds.place(hold())
    p.event("c", "create", T0)
    p.event("c", "delete", T0 + 10)
    p.holds.release("h1")  # while the service is down: the restarted one never saw it
    q = _restarted(p)
    q.proc.archive = archive
    q.tick(T0 + 2 * LATE)
    assert _causes(q) == [("c", "explicit", "hold")]


def test_an_erasure_a_hold_deferred_says_hold_when_restored_from_the_changelog() -> None:
    p = Partition()
    log = Changelog()
    p.holds.place(hold())
    log.write(p.event("c", "create", T0), T0)
    log.write(p.event("c", "delete", T0 + 10), T0 + 10)  # its stamp says the request
    p.holds.release("h1")
    q = _restarted(p, log.restore(T0 + 20, PartitionStore(MemoryKV())))
    q.tick(T0 + 2 * LATE)
    assert _causes(q) == [("c", "explicit", "hold")]


def test_an_erasure_read_late_says_catch_up_and_one_produced_late_says_late_event() -> None:
    """Carried out as it is read: late past the minute after the request's time (its
    ``ts``) when the service read it late (the broker had it: ``catch_up``) or when it
    reached the broker late (``late_event``); read within the minute, nothing."""
    now = T0 + 10 + LATE_AFTER_MS
    for timestamp, read_at, cause in (
        (T0 + 10, T0 + 10 + LATE_AFTER_MS, None),  # a minute: on time
        (T0 + 10, now + 1, "catch_up"),
        (T0 + 11 + LATE_AFTER_MS, now + 1, "late_event"),
        (T0 + 10 + LATE_AFTER_MS, now + 1, "catch_up"),  # reached it within the minute
    ):
        p = Partition()
        p.event("c", "create", T0)
        _timed(p, "c", "delete", T0 + 10, timestamp, read_at)
        assert _causes(p) == [("c", "explicit", cause)], (timestamp, read_at)


def test_an_erasure_of_a_record_never_seen_read_late_says_catch_up() -> None:
    p = Partition()
    _timed(p, "c", "delete", T0, T0 + 5, T0 + LATE)
    assert _causes(p) == [("c", "explicit", "catch_up")]


def test_an_erasure_read_late_of_a_record_the_archive_keeps_says_catch_up() -> None:
    """The record waits for the archive; an erasure, never delayed by it, lets it go at
    once: read late, its tombstone says ``catch_up``, not ``archive``."""
    archive = ArchiveGate(partitions=1)
    p = Partition(archive=archive)
    p.event("c", "create", T0)
    p.tick(T0 + TTL)
    assert _causes(p) == []  # kept for the archive
    _timed(p, "c", "delete", T0 + TTL + 10, T0 + TTL + 20, T0 + 2 * LATE)
    assert _causes(p) == [("c", "explicit", "catch_up")]


# -- what no durable state decides (README, "Why a deletion was late") ---------------------


def test_a_hold_released_before_a_restart_with_the_archive_required_says_archive() -> None:
    """The documented guess (``_release_cause``): the store says the record was kept, not
    by what, and nothing durable says whether the archive had its stamp when the hold
    went. Without ``[archive] required`` only a hold keeps a record: ``hold``."""
    for archive, cause in ((ArchiveGate(partitions=1), "archive"), (None, "hold")):
        if archive is not None:
            archive.update({0: 100})  # the archive has the stamp
        p = Partition(archive=archive)
        p.holds.place(hold())
        p.event("c", "create", T0)
        p.tick(T0 + TTL)  # kept by the hold
        p.holds.release("h1")  # while the service is down
        q = _restarted(p)
        q.proc.archive = archive
        q.tick(T0 + 2 * LATE)
        assert _causes(q) == [("c", "ttl", cause)]


def test_a_record_a_hold_kept_taken_over_after_the_release_says_catch_up() -> None:
    """Its stamp does not say a hold kept it: the instance that restores the partition
    fires it as any overdue record."""
    p = Partition()
    log = Changelog()
    p.holds.place(hold())
    log.write(p.event("c", "create", T0), T0)
    p.tick(T0 + TTL)  # kept by the hold: no stamp, no tombstone
    p.holds.release("h1")
    q = _restarted(p, log.restore(T0 + 2 * LATE, PartitionStore(MemoryKV())))
    q.tick(T0 + 2 * LATE)
    assert _causes(q) == [("c", "ttl", "catch_up")]

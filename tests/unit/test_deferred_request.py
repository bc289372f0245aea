"""An erasure a legal hold deferred names its request at the release, as an on-time one
does (``expiry-request``, ``expiry-request-event-id`` on its tombstone and null): the
README's query of the receipts by ``request_event_id`` found none of them (a compliance
trial). Kept with the deferred erasure: in memory, in the store from the settle on, and on
the stamps of the record while it waits (for a restore of the changelog): the stamp that
records ``erase_requested_at`` names it in ``expiry-request*``, the others the record
keeps in ``expiry-deferred-requests``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson
import pytest

from stream_expiry.codec import (
    H_DEFERRED_REQUESTS,
    H_ERASURE_READ_AT,
    H_PARTITION,
    H_REQUEST,
    H_REQUEST_EVENT_ID,
    H_TOPIC,
    deferred_requests_in,
    request_in,
)
from stream_expiry.logs import record_ref
from stream_expiry.state import MemoryKV, PartitionStore
from stream_expiry.state.restore import RestoreReport, _apply_stamps
from tests.unit.test_holds import T0, TTL, Partition, _Rec, hold
from tests.unit.test_late_cause import LATE, _identity, _restarted
from tests.unit.test_restore_model import Changelog

if TYPE_CHECKING:
    from collections.abc import Callable

# The delete is the partition's second event (offset 2) on input "in", partition 0.
NAMED = ((H_REQUEST, b"in[0]@2"), (H_REQUEST_EVENT_ID, b"gdpr-7"))


def _erasures(p: Partition) -> list[tuple[str, object]]:
    return [(f.before.identity.record_id, f.request) for f in p.fired if f.reason == "explicit"]


def _deferred(log: Changelog | None = None) -> Partition:
    """A record created and erased (request ``gdpr-7``) under a hold, then released."""
    p = Partition()
    p.holds.place(hold())
    for effects, at in (
        (p.event("c", "create", T0), T0),
        (p.event("c", "delete", T0 + 10, event_id="gdpr-7"), T0 + 10),
    ):
        if log is not None:
            log.write(effects, at)
    p.holds.release("h1")
    return p


def test_a_deferred_erasure_released_names_its_request() -> None:
    p = _deferred()
    p.tick(T0 + 2 * LATE)
    assert _erasures(p) == [("c", NAMED)]
    assert [f.late_cause for f in p.fired] == ["hold"]  # and says why it is late, as before


def test_a_deferred_erasure_released_after_a_restart_names_its_request() -> None:
    """The same state directory: the store kept the request with the deferral."""
    q = _restarted(_deferred())
    q.tick(T0 + 2 * LATE)
    assert _erasures(q) == [("c", NAMED)]


def test_a_deferred_erasure_restored_from_the_changelog_names_its_request() -> None:
    """A takeover or a lost disk: the stamp that records the erasure carries the request's
    headers, and the restore keeps them."""
    log = Changelog()
    p = _deferred(log)
    assert request_in(log.stamped[-1].headers) == NAMED
    assert request_in(log.stamped[0].headers) is None  # the create's stamp: none
    q = _restarted(p, log.restore(T0 + 20, PartitionStore(MemoryKV())))
    q.tick(T0 + 2 * LATE)
    assert _erasures(q) == [("c", NAMED)]


def test_an_erased_life_kept_beside_the_next_one_names_its_request() -> None:
    """A create after the erasure starts the record's next life, which keeps the erased
    one (``held_lives``) for its tombstone at the release: that tombstone names the
    request too, also after a restart."""
    for restart in (False, True):
        p = Partition()
        p.holds.place(hold())
        p.event("c", "create", T0)
        p.event("c", "delete", T0 + 10, event_id="gdpr-7")
        p.event("c", "create", T0 + 20)
        p.holds.release("h1")
        q = _restarted(p) if restart else p
        q.tick(T0 + 20 + LATE)
        assert _erasures(q) == [("c", NAMED)]


def test_an_on_time_erasure_and_an_expiry_are_unchanged() -> None:
    p = Partition()
    p.event("c", "create", T0)
    p.event("c", "delete", T0 + 10, event_id="gdpr-7")
    p.event("e", "create", T0)
    p.tick(T0 + TTL)
    assert _erasures(p) == [("c", NAMED)]
    assert [f.request for f in p.fired if f.reason == "ttl"] == [None]
    key = _identity("c").key
    assert p.proc.store.deferred_request(key, (T0 + 10, True)) is None  # nothing kept: not deferred


def test_what_the_store_keeps_of_a_deferred_request_goes_with_its_marker() -> None:
    p = _deferred()
    store, key = p.proc.store, _identity("c").key
    assert store.deferred_request(key, (T0 + 10, True)) == NAMED
    assert store.deferred_request(key, (T0 + 11, True)) is None  # another erasure's time: not it
    p.tick(T0 + 2 * LATE)
    assert store.prune(T0 + 10**12) == 1
    assert store.deferred_request(key, (T0 + 10, True)) is None
    assert list(store.kv.scan(b"", b"\xff" * 8)) == list(store.kv.scan(b"~", b"\xff"))


def _named(offset: int, event_id: str) -> tuple[tuple[str, bytes], ...]:
    """The request headers of the partition's event at ``offset`` (input "in"[0])."""
    return ((H_REQUEST, b"in[0]@%d" % offset), (H_REQUEST_EVENT_ID, event_id.encode()))


def _two_lives_erased(log: Changelog | None = None) -> Partition:
    """A record erased under a hold (request ``gdpr-7``, offset 2), created again (its
    next life) and erased again (``gdpr-8``, offset 4) before the release."""
    p = Partition()
    p.holds.place(hold())
    for effects, at in (
        (p.event("c", "create", T0), T0),
        (p.event("c", "delete", T0 + 10, event_id="gdpr-7"), T0 + 10),
        (p.event("c", "create", T0 + 20), T0 + 20),
        (p.event("c", "delete", T0 + 30, event_id="gdpr-8"), T0 + 30),
    ):
        if log is not None:
            log.write(effects, at)
    p.holds.release("h1")
    return p


def test_two_lives_erased_under_a_hold_each_name_their_own_request() -> None:
    """The first life's erasure was named by none: the second deferral's entry replaced
    the first's (one per record), and the first life's tombstone found another erasure's
    time there. Each life's tombstone names the request that erased that life, also after
    a restart on the same store."""
    for restart in (False, True):
        p = _two_lives_erased()
        q = _restarted(p) if restart else p
        q.tick(T0 + 2 * LATE)
        assert _erasures(q) == [("c", _named(2, "gdpr-7")), ("c", _named(4, "gdpr-8"))]
        assert [f.before.created_at for f in q.fired] == [T0, T0 + 20]  # life by life


def _older_erasures_of_an_ended_life(log: Changelog | None = None) -> Partition:
    """A record that lived and expired before a hold came; then two erasures dated before
    that life's creation (they name no life: ``Stamp.ended_life``, ``later_erasures``),
    ``gdpr-7`` at offset 2 and ``gdpr-8`` at offset 3, are read under the hold."""
    p = Partition()
    writes = [(p.event("c", "create", T0 + 200), T0 + 200)]
    p.proc.extend_horizon(T0 + 200 + TTL)
    expired = p.proc.fire_due(T0 + 200 + TTL)
    p._take(expired, T0 + 200 + TTL)
    writes.append((expired, T0 + 200 + TTL))
    p.holds.place(hold())
    for ts, event_id in ((T0 + 50, "gdpr-7"), (T0 + 150, "gdpr-8")):
        writes.append((p.event("c", "delete", ts, now=T0 + 2 * TTL, event_id=event_id), T0))
    if log is not None:
        for effects, at in writes:
            log.write(effects, at)
    p.holds.release("h1")
    return p


def test_erasures_naming_no_life_under_a_hold_each_name_their_own_request() -> None:
    """Each goes out at the release with its own tombstone (as it would at once without
    the hold); only the first kept its request, the second's tombstone named none."""
    for restart in (False, True):
        p = _older_erasures_of_an_ended_life()
        q = _restarted(p) if restart else p
        q.tick(T0 + 3 * TTL)
        explicit = [f for f in q.fired if f.reason == "explicit"]
        assert [(f.before.erase_at, f.request) for f in explicit] == [
            (T0 + 50, _named(2, "gdpr-7")),
            (T0 + 150, _named(3, "gdpr-8")),
        ]


def _earlier_lives_erased(log: Changelog | None = None) -> Partition:
    """A record's first life expired; its next life runs under a hold when two erasures
    of the lives before it (dated before the previous deletion: the engine's
    ``_erase_before``), ``gdpr-7`` (offset 4) then ``gdpr-8`` (offset 5), are read."""
    p = Partition()
    writes = [(p.event("c", "create", T0), T0)]
    p.proc.extend_horizon(T0 + TTL)
    expired = p.proc.fire_due(T0 + TTL)
    p._take(expired, T0 + TTL)
    writes += [(expired, T0 + TTL), (p.event("c", "create", T0 + 2 * TTL), T0 + 2 * TTL)]
    p.holds.place(hold())
    p.event("c", "touch", T0 + 2 * TTL + 1)  # offset 3: the running life, as any event
    for ts, event_id in ((T0 + 500, "gdpr-7"), (T0 + 600, "gdpr-8")):
        writes.append((p.event("c", "delete", ts, now=T0 + 2 * TTL + 10, event_id=event_id), T0))
    if log is not None:
        for effects, at in writes:
            log.write(effects, at)
    p.holds.release("h1")
    return p


def test_erasures_of_the_lives_before_the_running_one_name_the_first_request() -> None:
    """Kept for the release as one erasure of the lives before (the second changes
    nothing: it erases no more than the first), its tombstone named no request at all.
    It names the first: the request that asked for the erasure, when it was asked."""
    for restart in (False, True):
        p = _earlier_lives_erased()
        q = _restarted(p) if restart else p
        q.tick(T0 + 2 * TTL + 100)
        assert [(f.before.created_at, f.request) for f in q.fired if f.reason == "explicit"] == [
            (None, _named(4, "gdpr-7"))
        ]


def _erased_then_next_life(log: Changelog) -> Partition:
    """A record erased under a hold (``gdpr-7``, offset 2), then created again (its next
    life, which keeps the erased one for the release) before the release."""
    p = Partition()
    p.holds.place(hold())
    for effects, at in (
        (p.event("c", "create", T0), T0),
        (p.event("c", "delete", T0 + 10, event_id="gdpr-7"), T0 + 10),
        (p.event("c", "create", T0 + 20), T0 + 20),
    ):
        log.write(effects, at)
    p.holds.release("h1")
    return p


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (_erased_then_next_life, [(T0, _named(2, "gdpr-7"))]),
        (_two_lives_erased, [(T0, _named(2, "gdpr-7")), (T0 + 20, _named(4, "gdpr-8"))]),
        (
            _older_erasures_of_an_ended_life,
            [(None, _named(2, "gdpr-7")), (None, _named(3, "gdpr-8"))],
        ),
    ],
    ids=["erased-life-beside-the-next", "two-lives-erased", "erasures-naming-no-life"],
)
def test_deferred_erasures_kept_beside_another_life_restored_name_their_requests(
    scenario: Callable[[Changelog], Partition],
    expected: list[tuple[int | None, object]],
) -> None:
    """Restored from the changelog (compacted: the record's latest stamp alone), each
    erasure kept for the release names its request, as the instance that read it does.
    A restore read the latest stamp's own erasure's request only (``expiry-request*``):
    those kept in its held_lives (an erased life beside the next one; the later erasures
    naming no life) were on earlier stamps, which compaction removes, and their
    tombstones named none. Every stamp of the record carries them while they wait
    (``expiry-deferred-requests``)."""
    log = Changelog()
    p = scenario(log)
    q = _restarted(p, log.compacted().restore(T0 + 3 * TTL, PartitionStore(MemoryKV())))
    q.tick(T0 + 3 * TTL)
    explicit = [f for f in q.fired if f.reason == "explicit"]
    assert [(f.before.created_at, f.request) for f in explicit] == expected


def test_an_erasure_of_the_lives_before_and_an_erased_life_of_one_time_name_their_own() -> None:
    """A life erased under a hold (``gdpr-7``, offset 2), the next life created (offset
    3), then a request for the lives before it (``gdpr-8``, offset 4, dated before the
    first erasure): it waits beside the erased life, ending where that life ended, at the
    same time. Each tombstone names its own request (kept by time alone, both named one)."""
    for restart in (False, True):
        p = Partition()
        p.holds.place(hold())
        p.event("c", "create", T0)
        p.event("c", "delete", T0 + 10, event_id="gdpr-7")
        p.event("c", "create", T0 + 20)
        p.event("c", "delete", T0 + 5, now=T0 + 30, event_id="gdpr-8")
        p.holds.release("h1")
        q = _restarted(p) if restart else p
        q.tick(T0 + 2 * LATE)
        explicit = [f for f in q.fired if f.reason == "explicit"]
        assert [(f.before.created_at, f.before.erase_at, f.request) for f in explicit] == [
            (T0, T0 + 10, _named(2, "gdpr-7")),
            (None, T0 + 10, _named(4, "gdpr-8")),
        ]


def test_the_lives_before_erased_again_under_a_later_hold_name_the_new_request() -> None:
    """The store keeps the request of an erasure let go of until the record's marker
    goes; the same erasure asked again under a later hold (the lives before the running
    one, again: same time, same kind) is the new request's, not the old one's."""
    p = _earlier_lives_erased()
    p.tick(T0 + 2 * TTL + 100)
    p.holds.place(hold("h2"))
    p.event("c", "delete", T0 + 700, now=T0 + 2 * TTL + 200, event_id="gdpr-9")  # offset 6
    p.holds.release("h2")
    p.tick(T0 + 2 * TTL + 300)
    explicit = [f for f in p.fired if f.reason == "explicit"]
    assert [f.request for f in explicit] == [_named(4, "gdpr-7"), _named(6, "gdpr-9")]


def test_the_first_of_erasures_naming_no_life_restored_names_its_request() -> None:
    """The stamp of the second erasure naming no life records the first as the state's
    own (``erase_requested_at``): it names the first's request now (it named none, and
    the restore lost even that one); the second's, in ``expiry-deferred-requests``."""
    log = Changelog()
    p = _older_erasures_of_an_ended_life(log)
    q = _restarted(p, log.compacted().restore(T0 + 3 * TTL, PartitionStore(MemoryKV())))
    q.tick(T0 + 3 * TTL)
    explicit = [f for f in q.fired if f.reason == "explicit"]
    assert [(f.before.erase_at, f.request) for f in explicit][:1] == [
        (T0 + 50, _named(2, "gdpr-7"))
    ]


def test_a_store_keeps_several_deferred_requests_of_a_record_in_one_entry() -> None:
    """Several in one value that a version before this one reads as none (its time is
    no erasure's); one alone as that version wrote it, which stands for either kind; and
    all of them go with the record's marker."""
    p = _two_lives_erased()
    store, key = p.proc.store, _identity("c").key
    assert store.deferred_requests(key) == {
        (T0 + 10, True): _named(2, "gdpr-7"),
        (T0 + 30, True): _named(4, "gdpr-8"),
    }
    value = store.kv.multi_get([b"r" + key.encode()])[0]
    assert value is not None
    assert int.from_bytes(value[:8], "big", signed=True) not in (T0 + 10, T0 + 30)
    single = _deferred().proc.store
    assert single.deferred_requests(key) == {(T0 + 10, True): NAMED, (T0 + 10, False): NAMED}
    p.tick(T0 + 2 * LATE)
    assert store.prune(T0 + 10**12) == 1
    assert store.deferred_requests(key) == {}
    assert list(store.kv.scan(b"", b"\xff" * 8)) == list(store.kv.scan(b"~", b"\xff"))


def test_a_stamp_naming_its_own_erasure_alone_carries_no_other_header() -> None:
    """The common path unchanged: a stamp of a record that keeps no erasure but its own
    names it in the two request headers and where it was read alone (no
    ``expiry-deferred-requests``), and a stamp of no deferred erasure carries its two
    source headers alone (what a restore reads no further than)."""
    log = Changelog()
    _deferred(log)
    names = [[name for name, _ in m.headers] for m in log.stamped]
    assert names == [
        [H_TOPIC, H_PARTITION],
        [H_TOPIC, H_PARTITION, H_REQUEST, H_REQUEST_EVENT_ID, H_ERASURE_READ_AT],
    ]


def test_every_stamp_of_a_record_carries_the_requests_of_its_other_waiting_erasures() -> None:
    """The erased life's request on the next life's stamp, with the second erasure's own."""
    log = Changelog()
    _two_lives_erased(log)
    first = {(T0 + 10, True): _named(2, "gdpr-7")}
    said = [deferred_requests_in(m.headers) for m in log.stamped]
    assert said == [{}, {}, first, first]
    assert request_in(log.stamped[-1].headers) == _named(4, "gdpr-8")


@pytest.mark.parametrize(
    "value",
    [
        b"[[1, true, 'in[0]@2'",
        b'{"in[0]@2": "gdpr-7"}',
        b'[["1", true, "in[0]@2"]]',
        b"[[1, 1, 2]]",
    ],
    ids=["not-json", "not-a-list", "a-time-as-text", "not-texts"],
)
def test_a_stamp_s_unreadable_deferred_requests_are_counted_and_the_restore_goes_on(
    value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Another writer's, or a damaged, ``expiry-deferred-requests``: the record is restored
    and released as without it, its own erasure named (``expiry-request*``), the others
    naming none; the restore counts the stamp and logs it by its record's reference."""
    log = Changelog()
    p = _two_lives_erased(log)
    latest = log.compacted().stamped[-1]
    latest.headers = [
        (name, value if name == H_DEFERRED_REQUESTS else said) for name, said in latest.headers
    ]
    assert [name for name, _ in latest.headers][-1] == H_DEFERRED_REQUESTS
    store, report = PartitionStore(MemoryKV()), RestoreReport()
    with caplog.at_level(logging.WARNING, logger="stream_expiry.state.restore"):
        _apply_stamps(store, [latest], T0 + 3 * TTL, {}, report)
    assert (report.stamps, report.unreadable, report.requests_unreadable) == (1, 0, 1)
    assert [getattr(r, "record", None) for r in caplog.records] == [record_ref(_identity("c").key)]
    q = _restarted(p, store)
    q.tick(T0 + 3 * TTL)
    explicit = [f for f in q.fired if f.reason == "explicit"]
    assert [(f.before.created_at, f.request) for f in explicit] == [
        (T0, None),
        (T0 + 20, _named(4, "gdpr-8")),
    ]


def test_an_erasure_of_a_record_never_seen_let_go_before_it_settled_names_its_request() -> None:
    """An erasure of a record never seen (no life: ``(erase_at, False)``), deferred by a
    hold released before the deferral settled: the release finds the state unsettled
    (the overlay), and its request in this processor's memory alone, the store has none
    yet. Mutant N11 of round 42 (the lookup's ``names_life`` forced True in
    ``_let_go_now``) survived: once settled, the store keeps a record's one request in
    the form of the version before, which stands for either kind, and answered for the
    wrong kind too. Before the settle, it looked for the wrong kind and named none."""
    for let_go_by in ("the release scan", "the record's next event"):
        p = Partition()
        p.holds.place(hold())
        p.offset = 2  # the delete at offset 2, as NAMED says
        body = {"category": "conversation", "org": "acme", "bot": "b1", "record_id": "c",
                "op": "delete", "ts": T0 + 10, "event_id": "gdpr-7"}  # fmt: skip
        deferral = p.proc.process([_Rec(2, None, orjson.dumps(body))], T0 + 10)
        assert [s.created_at for s, _, _ in deferral.deferred] == [None]  # it names no life
        p.holds.release("h1")
        if let_go_by == "the release scan":
            released = p.proc.release_due(T0 + 20, budget=100)
        else:
            create = {**body, "op": "create", "ts": T0 + 20, "event_id": None}
            released = p.proc.process([_Rec(3, None, orjson.dumps(create))], T0 + 20)
        explicit = [(f.reason, f.request) for f in released.tombstones if f.reason != "ttl"]
        assert explicit == [("explicit", NAMED)], let_go_by

"""An explicit tombstone names the erasure request it carries out (``expiry-request``,
``expiry-request-event-id``): which request deleted a record is what an auditor asks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from stream_expiry.archive_gate import ArchiveGate
from stream_expiry.codec import H_REKEYED_FROM, H_REQUEST, H_REQUEST_EVENT_ID, request_of
from stream_expiry.policy import Resolution
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore
from tests.unit.test_holds import T0, TTL, Partition, hold

if TYPE_CHECKING:
    from stream_expiry.engine import Fired
    from stream_expiry.model import Identity

BASE = 1_700_000_000_000
TTL_MS = 1_000


def _resolve(identity: Identity, at_ms: int) -> Resolution:
    return Resolution(TTL_MS, "default")


@dataclass
class _Rec:
    offset: int
    value: bytes
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def _processor() -> PartitionProcessor:
    return PartitionProcessor(
        "conversations",
        3,
        PartitionStore(MemoryKV()),
        resolve=_resolve,
        sliding=frozenset({"session"}),
        categories=frozenset({"conversation", "session"}),
        max_skew_ms=10**12,
        now_ms=BASE,
    )


def _event(op: str, ts: int, record_id: str = "c1", **extra: object) -> bytes:
    body = {"category": "conversation", "record_id": record_id, "org": "o", "op": op, "ts": ts}
    return orjson.dumps(body | extra)


def _fired(proc: PartitionProcessor, recs: list[_Rec], now_ms: int) -> list[Fired]:
    effects = proc.process(recs, now_ms)
    proc.settle(effects, now_ms)
    return effects.tombstones


def test_an_erasure_s_tombstone_names_its_request_where_it_was_read_and_its_event_id() -> None:
    proc = _processor()
    assert _fired(proc, [_Rec(40, _event("create", BASE))], BASE) == []
    [fired] = _fired(proc, [_Rec(41, _event("delete", BASE + 10, event_id="gdpr-7"))], BASE + 20)
    assert fired.reason == "explicit"
    assert fired.request == (
        (H_REQUEST, b"conversations[3]@41"),
        (H_REQUEST_EVENT_ID, b"gdpr-7"),
    )
    assert request_of(list(fired.request)) == ("conversations[3]@41", "gdpr-7")


def test_a_request_without_an_event_id_is_named_by_where_it_was_read() -> None:
    """An erasure of a record never seen goes out too, and names its request."""
    proc = _processor()
    [fired] = _fired(proc, [_Rec(7, _event("delete", BASE, record_id="never"))], BASE)
    assert fired.request == ((H_REQUEST, b"conversations[3]@7"),)


def test_a_copy_made_by_rekey_names_where_the_producer_wrote_the_request() -> None:
    proc = _processor()
    copy = _Rec(7, _event("delete", BASE), headers=[(H_REKEYED_FROM, b"chat[0]@1041")])
    [fired] = _fired(proc, [copy], BASE)
    assert fired.request == ((H_REQUEST, b"chat[0]@1041"),)


def test_an_expiry_names_no_request_nor_does_the_ended_life_s_tombstone_before_an_erasure() -> None:
    """A delete read after the life's expiry first ends that life (``ttl``), then goes out
    itself: only its own tombstone is the request's."""
    proc = _processor()
    _fired(proc, [_Rec(0, _event("create", BASE))], BASE)
    ttl_then_erasure = _fired(
        proc, [_Rec(1, _event("delete", BASE + 5 * TTL_MS, event_id="e"))], BASE + 5 * TTL_MS
    )
    assert [(f.reason, f.request is None) for f in ttl_then_erasure] == [
        ("ttl", True),
        ("explicit", False),
    ]
    proc2 = _processor()
    _fired(proc2, [_Rec(0, _event("create", BASE))], BASE)
    fired = proc2.fire_due(BASE + 2 * TTL_MS)
    assert [(f.reason, f.request) for f in fired.tombstones] == [("ttl", None)]


def test_an_event_id_longer_than_an_id_is_cut_and_says_so() -> None:
    proc = _processor()
    long_id = "x" * 100_000
    [fired] = _fired(proc, [_Rec(7, _event("delete", BASE, event_id=long_id))], BASE)
    assert fired.request is not None
    said = dict(fired.request)[H_REQUEST_EVENT_ID]
    assert len(said) == 512
    assert said.endswith(b"...")
    assert long_id.startswith(said[:-3].decode())


def test_an_erasure_that_finds_the_life_due_before_the_archive_has_it_names_its_request() -> None:
    """``[archive] required``: an erasure that finds the record due, its stamp not archived
    yet, goes out at once (an erasure never waits for the archive), and it is the
    request's own tombstone: it names the request, as one read any other time does. It
    named none (``_wait_for_archive`` fired it apart from the engine's delete)."""
    p = Partition(archive=ArchiveGate(partitions=1))
    p.event("c", "create", T0)
    p.event("c", "delete", T0 + TTL + 10, now=T0 + TTL + 20)
    [fired] = p.fired
    assert fired.reason == "explicit"
    assert fired.request == ((H_REQUEST, b"in[0]@2"),)


def test_an_erasure_that_lets_lives_kept_for_the_archive_go_names_its_request() -> None:
    """Lives a released hold kept, then held back by the archive: the erasure lets them
    go (their ``ttl`` tombstones name no request) and its own tombstone names it."""
    p = Partition(archive=ArchiveGate(partitions=1))
    p.holds.place(hold())
    p.event("s", "create", T0, category="session")
    p.tick(T0 + TTL)
    start = T0 + 10 * TTL
    p.event("s", "touch", start, category="session")  # the next life, keeping the held one
    p.holds.release("h1")
    p.tick(start + 100)
    assert p.fired == []  # the archive has not read the next life's stamp
    p.event("s", "delete", start + 200, category="session")
    assert [(f.reason, f.request) for f in p.fired] == [
        ("ttl", None),
        ("explicit", ((H_REQUEST, b"in[0]@3"),)),
    ]


def test_an_erasure_of_a_record_kept_for_the_archive_does_not_wait_for_it() -> None:
    """``[archive] required`` keeps a due record until the archive has its stamp, but "an
    explicit delete is an erasure request: it is not delayed" (the contract). One read
    while the record was kept (the firing came first) was deferred as under a legal hold,
    with a ``deletion_deferred`` naming no hold, and went out only once the archive had
    caught up (never, with the archive stopped), naming no request."""
    archive = ArchiveGate(partitions=1)
    p = Partition(archive=archive)
    p.event("c", "create", T0)
    p.tick(T0 + TTL)
    assert p.fired == []  # kept for the archive
    p.event("c", "delete", T0 + TTL + 10, now=T0 + TTL + 20)
    assert [(f.reason, f.request) for f in p.fired] == [("explicit", ((H_REQUEST, b"in[0]@2"),))]
    assert p.deferred == []
    archive.update({0: 100})
    p.tick(T0 + 10 * TTL)
    assert len(p.fired) == 1

"""Tests that kill mutants of round 41's changes the suite let through: each passes on the
code and fails on the mutant named in its docstring (a one-token change: a comparison
flipped, a limit moved by one, a candidate or a condition dropped). ``stream-expiry
rekey``'s routing and size fitting, the erasure request's event id, the late cause of a
``ttl`` tombstone (the processor's note of a life made due on arrival, and what let a held
record go), and the request a sink reads from a tombstone event. The outbox's headers are
tested on the broker (tests/integration/test_outbox.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from stream_expiry.archive_gate import ArchiveGate
from stream_expiry.codec import (
    H_PRODUCED_AT,
    H_REQUEST,
    H_REQUEST_EVENT_ID,
    LATE_AFTER_MS,
    produced_at,
    request_headers,
)
from stream_expiry.config import Config
from stream_expiry.model import Identity, Stamp, encode_tombstone
from stream_expiry.oversize import message_bytes
from stream_expiry.rekey import H_REKEYED_FROM, Rekeyer, Routed, fit, route
from stream_expiry.sinks._messages import decode_tombstone
from stream_expiry.state import PartitionProcessor
from tests.unit.test_holds import T0, TTL, Partition, hold, resolve

if TYPE_CHECKING:
    from stream_expiry.state import Effects

NOW = 1_760_000_000_000
CATEGORIES = ("conversation", "session", "error")
LATE = TTL + LATE_AFTER_MS  # after T0, when a record created at T0 is late


# --- rekey: what a copy carries, and what it goes without over the limit --------------------


def _record(
    value: bytes | None,
    *,
    timestamp: int = NOW,
    headers: list[tuple[str, bytes]] | None = None,
) -> Any:
    return ConsumerRecord(
        "conversations", 3, 41, timestamp, 0, b"k", value, None, 0, 0, headers or []
    )


def _routed(rec: Any) -> Routed:
    return route(
        rec,
        target="conversations.by-record",
        dlq="expiry.dlq",
        categories=CATEGORIES,
        now_ms=NOW,
        max_skew_ms=300_000,
    )


def _event(**fields: Any) -> bytes:
    body = {"category": "conversation", "record_id": "c1", "org": "acme", "ts": NOW - 5}
    return orjson.dumps(body | fields)


def _without_data(value: bytes) -> bytes:
    """The copy's value once its data went (the contract's fields only), as ``fit`` makes it."""
    return orjson.dumps({k: v for k, v in orjson.loads(value).items() if k != "data"})


@pytest.mark.parametrize(("timestamp", "said"), [(-1, None), (0, b"0"), (NOW, b"%d" % NOW)])
def test_a_copy_carries_the_producers_time_only_when_kafka_has_one(
    timestamp: int, said: bytes | None
) -> None:
    """Kafka's "no timestamp" is -1: a copy of such a record says no producer's time, and
    the service then judges a late cause by what it knows (``codec.produced_at``). Mutant
    ``type(produced) is int`` (the sign check dropped) gave it ``expiry-produced-at: -1``,
    an event on the bus before any expiry: every late tombstone of it said ``catch_up``.
    Mutant ``produced > 0`` left out the epoch's own millisecond, a timestamp Kafka keeps."""
    routed = _routed(_record(_event(), timestamp=timestamp))
    assert dict(routed.headers).get(H_PRODUCED_AT) == said
    assert routed.headers[-1] == (H_REKEYED_FROM, b"conversations[3]@41")


def test_a_copy_exactly_at_the_limit_is_sent_whole() -> None:
    """``max.message.bytes`` is the largest message the broker takes, so a copy of exactly
    that size fits. Mutant ``message_bytes(...) < limit`` sent it without its origin
    header (the service then named the copy's topic as where an erasure was produced)."""
    routed = _routed(_record(_event(data={"text": "x" * 200_000})))
    whole = message_bytes(routed.key, routed.value, routed.headers)
    assert fit(routed, whole) == (routed.key, routed.value, routed.headers, False)
    assert fit(routed, whole - 1)[2] == routed.headers[:-1]


def test_a_copy_without_its_data_keeps_the_producers_headers_before_its_origin() -> None:
    """Without its data, a copy that has room for the producer's headers (and its
    ``expiry-produced-at``) but not also for the origin header goes without the origin
    only. Mutant ``for kept in (routed.headers, routed.headers[-1:])`` (the candidate
    without the origin dropped) sent it with the origin alone: the producer's headers
    went, the producer's time with them, and a late cause was judged by the copy's."""
    routed = _routed(_record(_event(data={"text": "x" * 200_000}), headers=[("trace", b"t" * 300)]))
    small = _without_data(routed.value or b"")
    limit = message_bytes(routed.key, small, routed.headers[:-1])
    assert message_bytes(routed.key, small, routed.headers) > limit
    key, value, headers, changed = fit(routed, limit)
    assert (key, value, headers, changed) == (routed.key, small, routed.headers[:-1], True)
    assert dict(headers)[H_PRODUCED_AT] == b"%d" % NOW


def test_a_copy_with_no_room_for_any_header_goes_with_none() -> None:
    """The last resort: the event's fields fit, with no header at all. Mutant ``return key,
    value, routed.headers[-1:], True`` kept the origin header though it did not fit: a
    send the broker refuses, which stops the partition at every start."""
    routed = _routed(_record(_event(data={"text": "x" * 200_000})))
    small = _without_data(routed.value or b"")
    limit = message_bytes(routed.key, small, [])
    assert message_bytes(routed.key, small, routed.headers[-1:]) > limit
    assert fit(routed, limit) == (routed.key, small, [], True)


def test_a_header_with_a_long_name_counts_toward_the_limit() -> None:
    """The quick size check (a copy well under the limit is sent as it is, unmeasured)
    counts header names as the broker does. Mutant ``sum(len(value) ...)`` took a copy
    with a 100 kB header name, under a 1 MB limit, for a small one and sent it over a
    limit of 90 kB."""
    routed = _routed(_record(_event(), headers=[("n" * 100_000, b"")]))
    assert fit(routed, 1_000_000) == (routed.key, routed.value, routed.headers, False)
    key, value, headers, changed = fit(routed, 90_000)
    assert changed
    assert message_bytes(key, value, headers) <= 90_000
    assert headers == [routed.headers[-1]]


def test_data_dropped_counts_copies_that_lost_their_data_only() -> None:
    """``stats.data_dropped`` (the ``data dropped`` counter of /metrics) counts copies sent
    without their data. Mutant ``elif changed:`` counted a copy that went without its
    origin header only, its data whole, and warned that its data was dropped."""
    rekeyer = Rekeyer(Config(), "127.0.0.1:1", {"conversations": "conversations.by-record"})
    rec = _record(_event(data={"text": "x" * 200_000}))
    routed = _routed(rec)
    rekeyer._limit = message_bytes(routed.key, routed.value, routed.headers[:-1])
    _, value, headers = rekeyer._fit(rec, routed)
    assert (value, headers) == (routed.value, routed.headers[:-1])
    assert rekeyer.stats.data_dropped == 0
    rekeyer._limit -= 1
    _, value, headers = rekeyer._fit(rec, routed)
    assert value == _without_data(routed.value or b"")
    assert rekeyer.stats.data_dropped == 1


# --- the erasure request's event id ------------------------------------------------------


@dataclass
class _Read:
    offset: int
    headers: list[tuple[str, bytes]]
    timestamp: int = -1


def test_an_event_id_of_512_characters_is_kept_whole_and_one_more_is_cut() -> None:
    """``expiry-request-event-id`` carries an id of up to 512 characters as it is (an
    auditor matches it to the request by equality). Mutant ``len(event_id) >=
    REQUEST_EVENT_ID_MAX`` cut an id of exactly 512 to 509 and "...": it matched nothing."""
    rec = _Read(7, [])
    whole = "i" * 512
    assert request_headers("t", 0, rec, whole) == (
        (H_REQUEST, b"t[0]@7"),
        (H_REQUEST_EVENT_ID, whole.encode()),
    )
    cut = dict(request_headers("t", 0, rec, whole + "j"))[H_REQUEST_EVENT_ID]
    assert cut == b"i" * 509 + b"..."


# --- the late cause ----------------------------------------------------------------------


def _causes(p: Partition) -> list[tuple[str, str, str | None]]:
    return [
        (f.before.identity.record_id, f.reason, f.late_cause) for f in p.fired if not f.null_only
    ]


def test_a_tombstone_a_minute_late_says_nothing_and_later_says_why() -> None:
    """The README's threshold: a tombstone more than a minute (60,000 ms) after its expiry
    says why. The suite's own test reads the constant, so a moved constant moved the test
    with it: mutant ``LATE_AFTER_MS = 59_999`` put a cause on a tombstone exactly a minute
    late."""
    for late_by, cause in ((60_000, None), (60_001, "catch_up")):
        p = Partition()
        p.event("c", "create", T0)
        p.tick(T0 + TTL + late_by)
        assert _causes(p) == [("c", "ttl", cause)]


@dataclass
class _Timed:
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


def _timed_create(p: Partition, ts: int, timestamp: int, now: int) -> Effects:
    """A create of record ``c`` dated ``ts``, whose Kafka timestamp is ``timestamp``."""
    p.offset += 1
    body = {"category": "conversation", "org": "acme", "record_id": "c", "ts": ts}
    rec = _Timed(p.offset, None, orjson.dumps(body), timestamp)
    return p._take(p.proc.process([rec], now), now)


def test_an_event_without_a_kafka_timestamp_is_judged_by_its_arrival() -> None:
    """A record whose timestamp is Kafka's "none" (-1) tells nothing of when it was on the
    bus: the life it made due on arrival says ``late_event``, as one with no timestamp at
    all. Mutant ``return ts if type(ts) is int`` (``codec.produced_at``'s sign check
    dropped) read -1 as a time before the expiry and said ``catch_up``."""
    assert produced_at(_Read(0, [], -1)) is None
    p = Partition()
    _timed_create(p, T0, -1, now=T0 + TTL + 60_005)
    p.tick(T0 + TTL + 60_010)
    assert _causes(p) == [("c", "ttl", "late_event")]


def test_an_event_on_the_bus_exactly_at_the_expiry_was_late() -> None:
    """The broker had the event at the very millisecond of the expiry: the life was due
    then (a life is due at its ``expires_at``), so the event came late. Mutant ``ts <=
    due`` took it for one on the bus in time and said ``catch_up``."""
    p = Partition()
    _timed_create(p, T0, T0 + TTL, now=T0 + TTL + 60_005)
    p.tick(T0 + TTL + 60_010)
    assert _causes(p) == [("c", "ttl", "late_event")]
    q = Partition()
    _timed_create(q, T0, T0 + TTL - 1, now=T0 + TTL + 60_005)
    q.tick(T0 + TTL + 60_010)
    assert _causes(q) == [("c", "ttl", "catch_up")]


def test_an_event_read_at_the_very_expiry_made_the_life_due_on_arrival() -> None:
    """A create read at exactly its expiry leaves a life due at once (the contract's
    "already due at ingest"); fired more than a minute later, its tombstone says
    ``late_event``. Mutant ``expires_at < now_ms`` (the note of a life due on arrival
    skipped at the boundary) said ``catch_up``."""
    p = Partition()
    p.event("c", "create", T0, now=T0 + TTL)
    p.tick(T0 + TTL + 60_010)
    assert _causes(p) == [("c", "ttl", "late_event")]


def test_a_second_late_event_of_a_life_due_on_arrival_keeps_late_event() -> None:
    """A late create, then a late touch dated before its expiry that slides the session to
    an expiry past already: the life was due on arrival, and stays so. Mutant ``if
    was_due or ...`` (the life's own note not looked at) took the touch for one that
    found a life the firing had not come to, and said ``catch_up``."""
    now = T0 + 10 * TTL + 60_000
    p = Partition()
    p.event("s", "create", T0, now=now, category="session")
    p.event("s", "touch", T0 + 10, now=now, category="session")
    p.tick(now + 10)
    assert _causes(p) == [("s", "ttl", "late_event")]


def test_a_life_due_at_the_very_time_an_earlier_create_is_read_says_catch_up() -> None:
    """A life due at the very millisecond a create from before it is read (the firing had
    not come to it): the create moves its start back, due still, and its tombstone, fired
    late, says ``catch_up`` (the service was behind, the event did not make it due).
    Mutant ``before.expires_at < now_ms`` took the life due at that millisecond for one
    still running, and blamed the event (``late_event``)."""
    p = Partition()
    p.event("c", "create", T0 + 5)
    p.event("c", "create", T0, now=T0 + 5 + TTL)  # backdated, read as the life falls due
    p.tick(T0 + 5 + TTL + 60_010)
    assert _causes(p) == [("c", "ttl", "catch_up")]


def _due_on_arrival_then_slid(p: Partition) -> int:
    """A session whose create came a millisecond after its expiry (due on arrival), then a
    touch dated before that expiry that slid it past the time it is read: the life is no
    longer due, and its new expiry is not the one noted. Returns that expiry."""
    p.event("s", "create", T0, now=T0 + TTL + 1, category="session")
    p.event("s", "touch", T0 + TTL - 1, now=T0 + TTL + 2, category="session")
    return T0 + 2 * TTL - 1


def test_a_life_slid_past_its_arrival_fired_late_by_the_firing_says_catch_up() -> None:
    """The expiry noted on arrival is not the one that fired late: the firing was late.
    Mutant ``late_event if on_arrival is not None`` (``fire_due``) blamed the event."""
    p = Partition()
    expires = _due_on_arrival_then_slid(p)
    p.tick(expires + 60_010)
    assert _causes(p) == [("s", "ttl", "catch_up")]


def test_a_life_slid_past_its_arrival_ended_late_by_an_event_says_catch_up() -> None:
    """As above, the life ended by the next life's create read late (the event path).
    Mutant ``arrived = on_arrival is not None`` (``process``) blamed the event."""
    p = Partition()
    expires = _due_on_arrival_then_slid(p)
    p.event("s", "create", expires + 60_010, category="session")
    assert _causes(p) == [("s", "ttl", "catch_up")]


# --- what let a held record go: the cause its late tombstones say ---------------------------


def test_with_the_archive_required_an_event_that_finds_a_released_record_says_hold() -> None:
    """A hold released, its release scan not come to the record yet: the event that finds
    it first lets it go, and the hold it was kept by is what its tombstone says, with
    ``[archive] required`` (the archive had its stamp all along) as without. Mutant ``if
    False`` (the holds let go of since the last scan not looked at) said ``archive``."""
    archive = ArchiveGate(partitions=1)
    archive.update({0: 100})
    p = Partition(archive=archive)
    p.holds.place(hold())
    p.event("c", "create", T0)
    p.tick(T0 + TTL)
    p.holds.release("h1")
    p.event("c", "create", T0 + 2 * LATE)
    assert _causes(p) == [("c", "ttl", "hold")]


def test_a_hold_released_while_the_service_was_down_says_hold_without_an_archive() -> None:
    """A record a hold kept, its hold released while the service was down: the restarted
    processor's first scan lets it go. With no archive required, only a hold can have
    kept it. Mutant ``if False`` (``_release_cause``'s no-archive answer skipped) found no
    hold released since the start and said ``archive``, for a service that has none."""
    p = Partition()
    p.holds.place(hold())
    p.event("c", "create", T0)
    p.tick(T0 + TTL)
    assert p.deferred == [("c", "ttl", ["h1"])]
    restarted = Partition()  # its hold book has no hold: released meanwhile
    restarted.proc = PartitionProcessor(
        "in", 0, p.proc.store, resolve=resolve, sliding=frozenset({"session"}),
        categories=frozenset({"conversation", "session"}), max_skew_ms=10**12,
        now_ms=T0 + 2 * LATE, holds=restarted.holds,
    )  # fmt: skip
    restarted.tick(T0 + 2 * LATE)
    assert _causes(restarted) == [("c", "ttl", "hold")]


def test_an_erasure_lets_a_life_kept_for_the_archive_go_saying_archive() -> None:
    """A hold kept a session's first life, a touch started the next, the hold was
    released; the archive has not read the record, so both lives wait for it, the running
    one due since. An erasure does not wait: the kept life goes first, more than a minute
    late, and it waited for the archive. Mutant ``cause="hold"`` in ``_hold_event``'s
    kept-for-the-archive branch said ``hold``."""
    p = Partition(archive=ArchiveGate(partitions=1))
    p.holds.place(hold())
    p.event("s", "create", T0, category="session")
    p.tick(T0 + TTL)
    start = T0 + 2 * LATE
    p.event("s", "touch", start, category="session")  # the next life, keeping the held one
    p.holds.release("h1")
    p.tick(start + TTL + 10)
    assert _causes(p) == []  # the archive has not read the record's latest stamp
    p.event("s", "delete", start + TTL + 20, category="session", now=start + TTL + 30)
    assert _causes(p) == [("s", "ttl", "archive"), ("s", "explicit", None)]


# --- the sinks: what a tombstone event names ------------------------------------------------


def test_a_ttl_tombstone_names_no_erasure_request_whatever_its_headers_say() -> None:
    """An expiry carried out no erasure request: a ``ttl`` tombstone event's receipt names
    none, though a header some other producer wrote says one (the service puts none on
    it). Mutant ``_request_of(headers)`` for every reason gave a ttl deletion's receipt
    a request."""
    s = Stamp(Identity("o", "b", "live", "conversation", "r"), 0, 1_000, 1_000, "org")
    key = s.identity.key.encode()
    said = [(H_REQUEST, b"t[0]@1"), (H_REQUEST_EVENT_ID, b"gdpr-1")]
    expired = decode_tombstone(key, encode_tombstone(s, reason="ttl", emitted_at=2_000), said)
    assert (expired.request, expired.request_event_id) == (None, None)
    erased = decode_tombstone(key, encode_tombstone(s, reason="explicit", emitted_at=2_000), said)
    assert (erased.request, erased.request_event_id) == ("t[0]@1", "gdpr-1")


def test_the_time_rekey_read_is_its_own_header_not_a_producers_of_the_same_name() -> None:
    """rekey appends ``expiry-produced-at`` after the producer's headers: a producer that
    sets a header of that name (a copy made by hand, a forged time) must not pass for the
    time rekey read, which decides ``late_event`` against ``catch_up``. The reader took
    the first such header (the review of round 42's mutation report)."""
    headers = [(H_PRODUCED_AT, b"5"), ("x", b"y"), (H_PRODUCED_AT, b"1000")]
    assert produced_at(_Read(0, headers, 7)) == 1000
    assert produced_at(_Read(0, [(H_PRODUCED_AT, b"9")], 7)) == 9
    assert produced_at(_Read(0, [("x", b"y")], 7)) == 7

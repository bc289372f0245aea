"""An erasure a legal hold deferred says where its request was read, at the release too.

Round 47 gave an erasure's tombstone and null ``expiry-erasure-read-at`` (where the service
read the request): with it a store ends the stamps of a life a create read late moved back
(engine ``_backdate``: the life's first stamp created later than the ``created_at`` the
tombstone names), and the service's store keeps the read position beside the marker, so
that events read again from before the request are repeats (processor ``_read_before``).
An erasure a hold deferred went out at the release without it: a store kept, or wrote
after the erasure, the row of the moved-back life's first stamp (its null deleted it
later, and that deletion waited for a tombstone that had come: the sweep's second
receipt), and a restart that read the record's events again from before the request
started a life the service never had.

The read position is kept with the deferred erasure now: beside the held state in the
store (the ``e`` entry, from the deferral on), on the record's stamp (its own erasure's,
beside the request's headers: a restore keeps it), and said at the release.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest

from stream_expiry import codec
from stream_expiry.archive_gate import ArchiveGate
from stream_expiry.config import Topics
from stream_expiry.holds import Hold, HoldBook
from stream_expiry.outbox import Outbox, _erasure_read_at
from stream_expiry.sinks._messages import Change, StampChange, TombstoneChange, decode_tombstone
from stream_expiry.state import MemoryKV, PartitionStore
from stream_expiry.state.restore import RestoreReport, _apply_stamps
from tests.unit.test_engine import BASE, Harness, ev
from tests.unit.test_holds import T0, TTL, Partition
from tests.unit.test_late_cause import _timed
from tests.unit.test_restore_model import Changelog, Message, _check_restore, _Stepper, harness
from tests.unit.test_sinks_late_erasure_life import (
    STAMPED,
    TOMBS,
    Stamped,
    _apply,
    _read,
    _reads,
    _swept_after,
    _Written,
)

if TYPE_CHECKING:
    from stream_expiry.state import Effects

HOLD = Hold("h-a", "o", None, None, None, "a", "legal", 0)
A = ev("conversation", "a", "create", 0).identity


class _Encoded(_Written):
    """What the outbox's own encoding (``Outbox._encode``) adds to its batches, by topic:
    the stamps with their headers too (``_put_stamps``), and the audit's entries."""

    after_held = False

    def try_add(
        self,
        slot: tuple[str, int],
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: list[tuple[str, bytes]],
        track: Effects | None = None,
    ) -> bool:
        del track
        self.msgs.setdefault(slot, []).append((key, value, list(headers)))
        return True


def _encode(out: _Encoded, h: Harness, effects: Effects) -> None:
    """``effects`` encoded by the outbox (``Outbox._encode``) into ``out``."""

    async def run() -> None:
        topics = Topics()
        partitions = dict.fromkeys((topics.stamped, topics.tombstones, topics.audit, topics.dlq), 1)
        prod = SimpleNamespace(_max_request_size=1 << 20)
        outbox = Outbox(cast("Any", prod), topics, partitions)
        try:
            await outbox._encode(cast("Any", out), h.proc, effects, BASE + h.now)
        finally:
            outbox.close()  # (its queue's two ends: nothing is settled here)
            outbox._receive.close()

    anyio.run(run)


def _deferred(book: HoldBook, log: Changelog | None = None) -> tuple[_Stepper, _Encoded, Any]:
    """A conversation under a legal hold: created at 5 s, then a create dated 1 s read
    late (the life moves back: created 1 s, expires 21 s, its first stamp says 5 s), then
    erased at 3 s, between the two: the hold defers it. The stepper, what the outbox
    wrote, and where the erasure was read (its offset and Kafka timestamp)."""
    book.place(HOLD)
    step = _Stepper(harness(PartitionStore(MemoryKV()), 0, book))
    out = _Encoded()
    for event in (
        ev("conversation", "a", "create", 5_000),
        ev("conversation", "a", "create", 1_000),
        ev("conversation", "a", "delete", 3_000),
    ):
        effects = step.process(event)
        _encode(out, step.h, effects)
        if log is not None:
            log.write(effects, BASE + step.h.now)
    held = step.h.proc.state_of(A.key)
    assert held is not None
    assert (held.held, held.erase_at, held.first_created_at) == (True, BASE + 3_000, BASE + 5_000)
    return step, out, step.fed[-1][0]


def _released(step: _Stepper, out: _Encoded, book: HoldBook) -> Effects:
    book.release(HOLD.hold_id)
    effects = step.step_advance(4_000)
    _encode(out, step.h, effects)
    return effects


def _held_then_released() -> tuple[_Encoded, Any]:
    book = HoldBook()
    step, out, read_at = _deferred(book)
    _released(step, out, book)
    return out, read_at


def test_the_release_of_a_deferred_erasure_says_where_its_request_was_read() -> None:
    """The tombstone event and the null the release sends say where the erasure was read,
    as one read without a hold does, and the first stamp's creation (the life was moved
    back). Before: neither header."""
    out, read_at = _held_then_released()
    ((key, event, tombstone_headers),) = out.msgs[TOMBS]
    assert decode_tombstone(key, event, tombstone_headers).reason == "explicit"
    _, value, null_headers = out.msgs[STAMPED][-1]
    assert value is None
    for headers in (tombstone_headers, null_headers):
        assert codec.erasure_read_at_of(headers) == read_at
        assert codec.first_created_at_of(headers) == BASE + 5_000
        assert codec.deleted_at_of(headers) == BASE + 3_000
        assert codec.request_of(headers)[0] is not None  # named as before


def test_the_deferrals_stamp_says_where_its_erasure_was_read() -> None:
    """The stamp that keeps the erasure for the release says where it was read, beside
    its request: a restore of the changelog keeps it. The stamps before say nothing."""
    _, out, read_at = _deferred(HoldBook())
    said = [codec.erasure_read_at_of(headers) for _, _, headers in out.msgs[STAMPED]]
    assert said == [None, None, read_at]
    *_, (_, _, held_headers) = out.msgs[STAMPED]
    assert codec.request_in(held_headers) is not None


def _messages() -> tuple[Stamped, list[TombstoneChange]]:
    stamped, tombs = _read(_held_then_released()[0])
    lives = [(c.created_at, c.expires_at) for c in stamped if isinstance(c, StampChange)]
    assert lives[:2] == [(BASE + 5_000, BASE + 25_000), (BASE + 1_000, BASE + 21_000)]
    return stamped, tombs


@pytest.mark.parametrize("batches", _reads(*_messages()))
def test_a_moved_back_life_erased_under_a_hold_leaves_nothing_in_a_store(
    batches: list[list[Change]],
) -> None:
    """Whatever the order a store reads the two topics in: no row is left, the erasure
    has one receipt, and nothing waits for a sweep. Bounded by the erasure's time alone
    (3 s), the release's tombstone missed the row of the stamp of 5 s (or, read first,
    let it be written): the null deleted it, and that deletion waited for a tombstone that
    had come, which the sweep then receipted a second time."""
    store = _apply(batches)
    assert store.rows == {}
    assert store.held == {}
    assert [(r.reason, r.created_at) for r in store.outbox] == [("explicit", BASE + 1_000)]
    assert [m.pending for m in store.markers.values()] == [()]
    assert _swept_after(store) == []


def test_the_service_keeps_where_a_deferred_erasure_was_read_beside_its_marker() -> None:
    """From the deferral on, the partition's store keeps where the erasure was read, and
    beside the marker the release leaves: events read again from before the request are
    repeats (``_read_before``)."""
    book = HoldBook()
    step, out, read_at = _deferred(book)
    store = step.h.proc.store
    held = step.h.proc.state_of(A.key)
    assert held is not None
    assert store.erasure_read_at(held) == read_at
    _released(step, out, book)
    marker = step.h.proc.state_of(A.key)
    assert marker is not None
    assert marker.deleted_at == BASE + 3_000
    assert store.erasure_read_at(marker) == read_at


@pytest.mark.parametrize("said", [True, False], ids=["this version's", "an earlier version's"])
def test_a_deferred_erasure_restored_from_its_stamp_keeps_where_it_was_read(said: bool) -> None:
    """Restored from the changelog before the release, the deferred erasure keeps its read
    position (from its stamp), and the release says it. A stamp an earlier version wrote
    says none: it is read as before (nothing unreadable, the request kept), and the
    release says no read position, as that version's did."""
    log = Changelog()
    step, _, read_at = _deferred(HoldBook(), log)
    stamps = log.stamped
    if not said:  # as an earlier version wrote it
        *_, last = stamps
        assert codec.erasure_read_at_of(last.headers) == read_at
        stamps[-1] = Message(
            last.offset,
            last.key,
            last.value,
            last.timestamp,
            [h for h in last.headers if h[0] != codec.H_ERASURE_READ_AT],
        )
    report = RestoreReport()
    store = PartitionStore(MemoryKV())
    _apply_stamps(store, stamps, BASE + step.h.now, {}, report)
    assert (report.unreadable, report.requests_unreadable) == (0, 0)
    assert store.deferred_requests(A.key) != {}  # the request, either way
    book = HoldBook()
    book.place(HOLD)
    restored = _Stepper(harness(store, step.h.now, book))
    held = restored.h.proc.state_of(A.key)
    assert held is not None
    assert held.held
    assert store.erasure_read_at(held) == (read_at if said else None)
    book.release(HOLD.hold_id)
    effects = restored.step_advance(4_000)
    (fired,) = effects.tombstones
    assert fired.request is not None
    header = _erasure_read_at(fired, effects.erasures_read or {})
    expected = (codec.H_ERASURE_READ_AT, codec.encode_read_at(read_at))
    assert header == (expected if said else None)


# A hold on b; a's create dated at its running life's expiry is parked until then, which
# keeps the committed offset back: a restart reads b's events again, from before its
# erasure. b created at 17 s, moved back to 16 s by a create read late, erased at 16 s:
# the hold defers the erasure.
_BEHIND_A_PARKED_CREATE: list[tuple[object, ...]] = [
    ("hold", "b"),
    ("event", "conversation", "a", "create", 0),
    ("advance", 16000),
    ("event", "conversation", "a", "create", 4000),
    ("event", "conversation", "b", "create", 1000),
    ("event", "conversation", "b", "create", 0),
    ("event", "conversation", "b", "delete", 0),
    ("advance", 0),
]


@pytest.mark.parametrize("kept", [None, 10], ids=["restored", "kept its store"])
def test_events_read_again_after_a_released_erasure_are_repeats(kept: int | None) -> None:
    """Released before the restart, and b's create of 17 s read again (from before the
    erasure, behind a's parked create) against the marker the release left: a repeat, as
    after an erasure read without a hold. Before, the release kept no read position, and
    the create read again started a life the original never had; b's next create of 17 s
    (read after the erasure) starts it on both."""
    before = [*_BEHIND_A_PARKED_CREATE, ("release", "b"), ("advance", 0), ("advance", 0)]
    _check_restore(before, [("event", "conversation", "b", "create", 1000)], kept=kept)


@pytest.mark.parametrize("kept", [None, 7], ids=["restored", "kept its store"])
def test_events_read_again_while_a_hold_keeps_the_erasure_are_repeats(kept: int | None) -> None:
    """Restarted while the hold keeps the erasure: b's create of 17 s read again (before
    the erasure) is a repeat, as it is against an erasure's marker. Before, it started b's
    next life beside the erased one, which the original never had."""
    after: list[tuple[object, ...]] = [
        ("release", "b"),
        ("advance", 0),
        ("event", "conversation", "b", "create", 1000),
    ]
    _check_restore(_BEHIND_A_PARKED_CREATE, after, kept=kept)


def test_an_erasure_of_a_record_the_archive_keeps_says_where_it_was_read() -> None:
    """The same path without a hold: a record kept for the archive only, let go at once by
    an erasure (which never waits for the archive), leaves its marker with that erasure.
    Its tombstone and null say where the request was read, as any erasure read now, and
    the store keeps it beside the marker. Before, they said none."""
    p = Partition(archive=ArchiveGate(partitions=1))
    p.event("c", "create", T0)
    p.tick(T0 + TTL)
    assert p.fired == []  # kept for the archive
    effects = _timed(p, "c", "delete", T0 + TTL + 10, T0 + TTL + 20, T0 + TTL + 30)
    (fired,) = effects.tombstones
    assert (fired.reason, fired.has_null) == ("explicit", True)
    read_at = (p.offset, T0 + TTL + 20)
    header = _erasure_read_at(fired, effects.erasures_read or {})
    assert header == (codec.H_ERASURE_READ_AT, codec.encode_read_at(read_at))
    assert p.proc.store.erasure_read_at(fired.after) == read_at

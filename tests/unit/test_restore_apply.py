"""What a restore does with each changelog message, and what it reports.

The restore properties (test_restore_model.py) check that a restored store decides as the
original does, from a changelog the service wrote; these check the messages it did not
write that way: unreadable ones, nulls from before ``expiry-deleted-at``, a tombstone event
whose null never came. And the report, which the restore's log line and metric show.
"""

from __future__ import annotations

from stream_expiry import codec, model
from stream_expiry.state import MemoryKV, PartitionStore
from stream_expiry.state.restore import RestoreReport, _apply_stamps, _apply_tombstones
from tests.unit.test_restore_model import SOURCE, Message

NOW = 1_795_000_000_000


def identity(record_id: str) -> model.Identity:
    return model.Identity("acme", "b", "live", "conversation", record_id)


def stamp_message(offset: int, record_id: str, created: int = NOW) -> Message:
    stamp = model.Stamp(identity(record_id), created, created + 60_000, 60_000, "org")
    return Message(offset, stamp.identity.key.encode(), model.encode_stamp(stamp), NOW, SOURCE)


def test_unreadable_messages_are_counted_and_skipped_and_the_rest_restored() -> None:
    store, report = PartitionStore(MemoryKV()), RestoreReport()
    messages = [
        stamp_message(0, "a"),
        Message(1, b"not a record key", model.encode_stamp(model.Stamp(identity("x"), NOW, None,
                                                                      None, None)), NOW, SOURCE),
        Message(2, identity("y").key.encode(), b"{not json", NOW, SOURCE),
        Message(3, None, b"{}", NOW, SOURCE),
        stamp_message(4, "b"),
        stamp_message(5, "c"),
    ]  # fmt: skip
    _apply_stamps(store, messages, NOW, {"stamped-0": 6}, report)
    assert (report.stamps, report.markers, report.unreadable) == (3, 0, 3)
    for rid in "abc":
        state = store.get(identity(rid).key)
        assert state is not None
        assert (state.live, state.expires_at) == (True, NOW + 60_000)
    assert store.meta("stamped-0") == 6
    assert store.counts.pending_total == 3
    # The next flush of the same read adds to the report.
    _apply_stamps(store, [stamp_message(6, "d"), Message(7, b"?", b"{}", NOW, SOURCE)], NOW,
                  {"stamped-0": 8}, report)  # fmt: skip
    assert (report.stamps, report.markers, report.unreadable) == (4, 0, 4)


def test_a_null_from_before_the_deleted_at_header_is_a_marker_at_its_own_time() -> None:
    store, report = PartitionStore(MemoryKV()), RestoreReport()
    key = identity("a").key.encode()
    nulls = [
        Message(0, key, None, NOW + 5, SOURCE),  # written before the header existed
        Message(1, identity("b").key.encode(), None, NOW + 5,
                [*SOURCE, (codec.H_DELETED_AT, str(NOW + 3).encode())]),
    ]  # fmt: skip
    _apply_stamps(store, nulls[:1], NOW + 10, {}, report)
    _apply_stamps(store, nulls[1:], NOW + 10, {}, report)  # the next flush adds up
    assert (report.stamps, report.markers) == (0, 2)
    deleted = [store.get(identity(rid).key) for rid in "ab"]
    assert [None if s is None else s.deleted_at for s in deleted] == [NOW + 5, NOW + 3]
    assert store.counts.markers == 2


def test_a_tombstone_event_whose_null_never_came_leaves_the_record_live() -> None:
    """The service stopped between the broker's acks of the tombstone event and of the
    null: the record is restored live, so that it is tombstoned again (and its null written)."""
    store, report = PartitionStore(MemoryKV()), RestoreReport()
    _apply_stamps(store, [stamp_message(0, "a"), stamp_message(1, "b")], NOW, {}, report)
    lives = [store.get(identity(rid).key) for rid in "ab"]
    tombstones = []
    for offset, live in enumerate(lives):
        assert live is not None
        event = model.encode_tombstone(live, reason="ttl", emitted_at=NOW + 60_001)
        tombstones.append(Message(offset, live.identity.key.encode(), event, NOW + 60_001, SOURCE))
    _apply_tombstones(store, tombstones, NOW + 60_001, {"tombstones-0": 2}, report)
    assert report.nulls_owed == 2
    assert [store.get(identity(rid).key) for rid in "ab"] == lives
    assert store.meta("tombstones-0") == 2


def test_a_tombstone_event_moves_a_marker_and_the_store_keeps_one() -> None:
    """An older life's marker, then the tombstone event of a later life (whose stamp and
    null compaction took): the marker moves to the later deletion, and the store counts one
    marker, not two (the old one's index entry goes)."""
    store, report = PartitionStore(MemoryKV()), RestoreReport()
    key = identity("a").key.encode()
    deleted = [*SOURCE, (codec.H_DELETED_AT, str(NOW + 3).encode())]
    _apply_stamps(store, [Message(0, key, None, NOW + 3, deleted)], NOW + 10, {}, report)
    later = model.Stamp(identity("a"), NOW + 100, NOW + 60_100, 60_000, "org")
    events = [
        Message(0, b"not a record key", b"{}", NOW, SOURCE),  # skipped, not the end
        Message(1, identity("z").key.encode(), b"{}", NOW, SOURCE),  # implies nothing: same
        Message(2, key, model.encode_tombstone(later, reason="ttl", emitted_at=NOW + 60_101),
                NOW + 60_101, SOURCE),
    ]  # fmt: skip
    _apply_tombstones(store, events, NOW + 60_101, {"tombstones-0": 3}, report)
    state = store.get(identity("a").key)
    assert state is not None
    assert (state.live, state.created_at, state.deleted_at) == (False, NOW + 100, NOW + 60_099)
    assert report.markers == 2  # the null's and the tombstone's
    assert store.counts.markers == 1
    assert store.meta("tombstones-0") == 3


def test_a_marker_that_learns_its_lifes_creation_is_counted_once() -> None:
    """A null (which says only the deletion's time) and the ``ttl`` tombstone event of the
    same life: the marker the null restored takes that life's creation from the event, and
    stays one marker. The report counts it once: counted again, a restore said more
    markers than the records it deleted (its log line and metric)."""
    store, report = PartitionStore(MemoryKV()), RestoreReport()
    life = model.Stamp(identity("a"), NOW, NOW + 60_000, 60_000, "org")
    key = life.identity.key.encode()
    deleted = [*SOURCE, (codec.H_DELETED_AT, str(NOW + 59_999).encode())]
    _apply_stamps(store, [Message(0, key, None, NOW + 60_000, deleted)], NOW + 60_010, {}, report)
    event = model.encode_tombstone(life, reason="ttl", emitted_at=NOW + 60_000)
    _apply_tombstones(store, [Message(0, key, event, NOW + 60_000, SOURCE)], NOW + 60_010, {},
                      report)  # fmt: skip
    state = store.get(identity("a").key)
    assert state is not None
    assert (state.live, state.created_at, state.deleted_at) == (False, NOW, NOW + 59_999)
    assert report.markers == 1
    assert store.counts.markers == 1


def test_only_a_tombstone_event_of_the_running_life_is_owed_its_null_once() -> None:
    """A record live on the changelog while ``expiry.tombstones`` holds tombstone events for
    it that owe no null: an erasure of the lives before the running one, read again while it
    runs (the engine's ``_erase_before``: it names no life, and no null follows it), and an
    erasure a legal hold deferred of an earlier life, sent at the release while the next
    life runs (the record lives on: no null). Neither is the running life's, and each was
    counted in ``nulls_owed``; so was a tombstone event the producer sent twice (the broker
    keeps both copies), once each. Only the running life's own tombstone event owes a null,
    once: the record is left live all the same, and tombstoned again."""
    store, report = PartitionStore(MemoryKV()), RestoreReport()
    _apply_stamps(store, [stamp_message(0, "a", NOW + 100), stamp_message(1, "b")], NOW, {},
                  report)  # fmt: skip
    a, b = (store.get(identity(rid).key) for rid in "ab")
    assert a is not None
    assert b is not None
    earlier = model.Stamp(a.identity, None, None, None, None, None, NOW + 50)  # names no life
    held = model.Stamp(a.identity, NOW - 5_000, NOW + 55_000, 60_000, "org", None, NOW - 10)
    events = [
        model.encode_tombstone(earlier, reason="explicit", emitted_at=NOW + 1_000),
        model.encode_tombstone(held, reason="explicit", emitted_at=NOW + 1_000),
    ]
    owed = model.encode_tombstone(b, reason="ttl", emitted_at=NOW + 60_001)
    messages = [Message(n, a.identity.key.encode(), e, NOW + 1_000, SOURCE)
                for n, e in enumerate(events)]  # fmt: skip
    messages += [Message(n, b.identity.key.encode(), owed, NOW + 60_001, SOURCE) for n in (2, 3)]
    _apply_tombstones(store, messages, NOW + 60_001, {}, report)
    assert report.nulls_owed == 1
    assert (store.get(a.identity.key), store.get(b.identity.key)) == (a, b)

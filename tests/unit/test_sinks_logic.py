"""The sink's pure decisions (stream_expiry/sinks/_logic.py), without Kafka or a database."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.sinks._logic import Plan, Slot, _max_opt, plan, prunable
from stream_expiry.sinks._messages import (
    Change,
    Marker,
    NullChange,
    Pending,
    Receipt,
    Row,
    StampChange,
    SweepChange,
    TombstoneChange,
    decode_pending,
    decode_stamped,
    decode_tombstone,
    encode_pending,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

T0 = 1_767_225_600_000
MIN = 60_000
A = Identity("acme", "_", "live", "conversation", "r1")
# The topics the World's messages are read from, partition 0 of each.
TOMBS, STAMPED = "expiry.tombstones", "expiry.stamped"


class World:
    """Applies batches to a dict state the way a store does, and collects receipts."""

    def __init__(self) -> None:
        self.state: dict[Identity, Slot] = {}
        self.receipts: list[Receipt] = []
        self.ids = (f"r{n}" for n in itertools.count())
        self.now = T0
        # The store's pruning bound, as kept for the partitions its pruning covered
        # (``sources``).
        self.pruned_before: int | None = None
        self.sources: tuple[tuple[str, int], ...] = ((TOMBS, 0), (STAMPED, 0))

    def apply(self, changes: Sequence[Change]) -> Plan:
        self.now += 1
        bound = self.pruned_before
        p = plan(
            changes, self.state, store="s", now_ms=self.now, new_id=lambda: next(self.ids),
            pruned_before=None if bound is None else dict.fromkeys(self.sources, bound),
        )  # fmt: skip
        for i in p.deletes:
            self.state[i].row = None
        for row in p.upserts:
            self.state.setdefault(row.identity, Slot()).row = row
        for m in p.markers:
            self.state.setdefault(m.identity, Slot()).marker = m
        self.receipts.extend(p.receipts)
        return p

    def prune(self, settled_before: int) -> int:
        """Forget the markers :func:`prunable` lets go and keep the bound, as a store's
        pruning does; how many went."""
        gone = [
            i for i, s in self.state.items()
            if s.marker is not None and prunable(s.marker, settled_before)
        ]  # fmt: skip
        for i in gone:
            slot = self.state[i]
            slot.marker = None
            if slot.row is None:
                del self.state[i]
        bound = self.pruned_before
        self.pruned_before = settled_before if bound is None else max(bound, settled_before)
        return len(gone)

    def row(self, i: Identity = A) -> Row | None:
        slot = self.state.get(i)
        return None if slot is None else slot.row


def st_change(s: Stamp, data: object = None, offset: int | None = None) -> StampChange:
    change = decode_stamped(
        s.identity.key.encode(), encode_stamp(s, data), partition=0, offset=offset
    )
    assert isinstance(change, StampChange)
    return change


def tomb(s: Stamp, reason: str = "ttl", emitted_at: int | None = None) -> TombstoneChange:
    at = emitted_at if emitted_at is not None else (s.expires_at or T0)
    value = encode_tombstone(s, reason=reason, emitted_at=at)  # type: ignore[arg-type]
    return decode_tombstone(None, value, topic=TOMBS, partition=0)


def life(created: int = T0, ttl: int = 10 * MIN, i: Identity = A) -> Stamp:
    return Stamp(i, created, created + ttl, ttl, "org")


def test_tombstone_deletes_its_record_and_leaves_one_receipt() -> None:
    w, s = World(), life()
    w.apply([st_change(s, {"text": "hi"})])
    p = w.apply([tomb(s)])
    assert w.row() is None
    assert p.deleted == 1
    [r] = p.receipts
    assert (r.reason, r.rows_deleted, r.created_at, r.expires_at) == ("ttl", 1, T0, T0 + 10 * MIN)
    assert (r.ttl_seconds, r.ttl_source, r.emitted_at, r.store) == (600, "org", T0 + 10 * MIN, "s")


def test_a_store_behind_its_topics_gives_1_to_a_life_read_whole_in_one_batch() -> None:
    """What the README's ``rows_deleted`` says of a store that starts behind its topics (it
    said 0 here, where a trial's SQLite sink, started after the events, gave 1): a life
    whose stamp and end come in one batch is written and deleted within that batch's
    transaction, never on disk, and its receipt says 1; the end alone of a life whose stamp
    compaction removed says 0."""
    w, s = World(), life()
    p = w.apply([st_change(s, {"text": "hi"}), tomb(s)])
    assert (p.upserts, p.deletes) == ([], [])
    assert [r.rows_deleted for r in p.receipts] == [1]
    gone = life(i=Identity("acme", "_", "live", "conversation", "r2"))
    assert [r.rows_deleted for r in w.apply([tomb(gone)]).receipts] == [0]


def test_two_stores_give_one_erasure_rows_deleted_by_what_each_held() -> None:
    """A trial: a SQLite and a PostgreSQL sink gave one erasure ``rows_deleted`` 1 and 0.
    ``rows_deleted`` is each store's own count (the README's receipts section): a store
    that read the life's stamp before the erasure's tombstone event held the row and
    deleted it (1), one that read the tombstone event first refused the stamp that came
    after it and never held the row (0). The contract asks one receipt per deletion, the
    same whatever order the tombstone event and the null come in, and that holds for
    each store; it does not make the count one across stores. Everything else on the two
    receipts agrees, and neither store holds anything of the life."""
    s = life()
    erase = replace(
        tomb(s, "explicit", emitted_at=T0 + MIN), request="conversations[0]@7",
        request_event_id="gdpr-7",
    )  # fmt: skip
    stamp = st_change(s, {"text": "hi"}, 0)
    got = {}
    for order in itertools.permutations(("stamp", "null", "erase")):
        # The null before the stamp: the delete keyed apart from the create, on another
        # partition of expiry.stamped.
        where = (0, 1) if order.index("stamp") < order.index("null") else (1, 0)
        null = NullChange(A, *where, reason="explicit", request="conversations[0]@7")
        changes: dict[str, Change] = {"stamp": stamp, "null": null, "erase": erase}
        w = World()
        for name in order:
            w.apply([changes[name]])
        assert w.row() is None
        [r] = w.receipts
        got[order] = r.rows_deleted
        assert (r.reason, r.created_at, r.expires_at, r.request, r.request_event_id) == (
            "explicit", T0, T0 + 10 * MIN, "conversations[0]@7", "gdpr-7",
        )  # fmt: skip
    # 1 where the stamp came before the tombstone event, whatever the null's place; 0 where
    # the tombstone event came first and the stamp after it was refused: no row held.
    assert got == {order: int(order.index("stamp") < order.index("erase")) for order in got}
    assert got[("stamp", "erase", "null")] == got[("stamp", "null", "erase")] == 1
    assert got[("erase", "stamp", "null")] == got[("erase", "null", "stamp")] == 0


def test_duplicate_tombstone_changes_nothing_and_leaves_no_second_receipt() -> None:
    w, s = World(), life()
    w.apply([st_change(s)])
    w.apply([tomb(s)])
    p = w.apply([tomb(s), tomb(s, emitted_at=T0 + 11 * MIN)])
    assert (p.upserts, p.deletes, p.markers, p.receipts) == ([], [], [], [])


def test_an_erasure_of_a_life_its_expiry_ended_leaves_the_expirys_receipt_alone() -> None:
    """The service sends an erasure read after the ttl tombstone (for the archive); the
    store deleted the row at the expiry: nothing more to delete, no second receipt. Both
    events carry the engine's deletion time, the life's last instant."""
    w, s = World(), life()
    w.apply([st_change(s, {"text": "hi"})])
    last = T0 + 10 * MIN - 1
    w.apply([replace(tomb(s), deleted_at=last)])
    nameless = Stamp(A, None, None, None, None)  # as the service sends it: no life named
    late = replace(tomb(nameless, "explicit", emitted_at=T0 + 20 * MIN), deleted_at=last)
    p = w.apply([late])
    assert (p.upserts, p.deletes, p.receipts) == ([], [], [])
    assert [r.reason for r in w.receipts] == ["ttl"]


def test_an_erasure_dated_after_the_expiry_leaves_the_expirys_receipt_alone() -> None:
    """A delete dated after the expiry finds a marker whose deletion time it is later than:
    the engine takes it for a new request and sends a tombstone naming no life, dated by
    the request (for the archive, which kept the expired data). The store deleted the row
    at the expiry: one receipt, ``ttl``; a second, ``rows_deleted`` 0, said otherwise."""
    w, s = World(), life()
    w.apply([st_change(s, {"text": "hi"})])
    w.apply([replace(tomb(s), deleted_at=T0 + 10 * MIN - 1)])
    erased_at = T0 + 20 * MIN
    unseen = Stamp(A, None, None, None, None)
    late = replace(tomb(unseen, "explicit", emitted_at=erased_at), deleted_at=erased_at)
    p = w.apply([late])
    assert (p.upserts, p.deletes, p.receipts) == ([], [], [])
    assert [(r.reason, r.rows_deleted) for r in w.receipts] == [("ttl", 1)]
    # The erasure still bounds what comes after it: a stamp of a life created before it
    # (a create re-delivered, a restamp) is not written.
    assert w.apply([st_change(life(created=T0 + 15 * MIN), {"text": "back"})]).stale == 1


def test_an_erasure_after_the_expiry_is_on_no_receipt_where_compaction_kept_its_null() -> None:
    """A trial's question: an erasure read after the life's expiry, in a store that started
    after compaction of expiry.stamped had kept only the erasure's null of the key, was
    named on no receipt (the life's ``ttl`` tombstone event claimed the null's deletion).
    As in a store that read everything in time, in either order of the topics: one
    receipt, the expiry's; the contract's receipt is one per deletion, naming the rule
    that deleted the record (the README). Only a store that never reads the ``ttl``
    tombstone event names the erasure, ``rows_deleted`` 0."""
    s = life()
    ttl = replace(tomb(s), deleted_at=T0 + 10 * MIN - 1)
    erased_at = T0 + 20 * MIN
    request, event_id = "conversations[0]@7", "gdpr-7"
    erase = replace(
        tomb(Stamp(A, None, None, None, None), "explicit", emitted_at=erased_at),
        deleted_at=erased_at, request=request, request_event_id=event_id,
    )  # fmt: skip
    erase_null = NullChange(A, 0, 2, reason="explicit", request=request, request_event_id=event_id)
    stamp, ttl_null = st_change(s, {"text": "hi"}, 0), NullChange(A, 0, 1, reason="ttl")
    orders: dict[str, list[Change]] = {
        "in time": [stamp, ttl_null, ttl, erase_null, erase],
        "tombstones first": [ttl, erase, stamp, ttl_null, erase_null],
        "compacted": [erase_null, ttl, erase],
        "compacted, tombstones first": [ttl, erase, erase_null],
    }
    got = {}
    for name, order in orders.items():
        w = World()
        for change in order:
            w.apply([change])
        got[name] = [(r.reason, r.rows_deleted, r.created_at, r.request) for r in w.receipts]
    assert got == {
        "in time": [("ttl", 1, T0, None)],
        "tombstones first": [("ttl", 0, T0, None)],
        "compacted": [("ttl", 0, T0, None)],
        "compacted, tombstones first": [("ttl", 0, T0, None)],
    }
    w = World()  # the ttl tombstone event never read (the topic's retention.ms)
    for change in (erase_null, erase):
        w.apply([change])
    assert [(r.reason, r.rows_deleted, r.request) for r in w.receipts] == [("explicit", 0, request)]


def test_an_erasure_naming_no_life_after_a_swept_row_leaves_the_sweeps_receipt_alone() -> None:
    w, s = World(), life()
    w.apply([st_change(s, {"text": "hi"}, offset=0)])
    w.apply([SweepChange(A, T0 + 11 * MIN)])
    unseen = Stamp(A, None, None, None, None)
    late = replace(tomb(unseen, "explicit", emitted_at=T0 + 20 * MIN), deleted_at=T0 + 20 * MIN)
    w.apply([late])
    assert [(r.reason, r.rows_deleted) for r in w.receipts] == [("sweep", 1)]


def test_an_erasure_a_hold_defers_of_a_record_never_seen_writes_no_row() -> None:
    """Its stamp names no life (created_at null); the release's tombstone finds no row:
    receipt rows_deleted 0, as without a hold."""
    w, ghost = World(), Stamp(A, None, None, None, None, erase_at=T0)
    p = w.apply([st_change(ghost)])
    assert (p.upserts, p.markers, p.receipts) == ([], [], [])
    assert w.row() is None
    p = w.apply([tomb(Stamp(A, None, None, None, None), "explicit", emitted_at=T0 + MIN)])
    assert [(r.reason, r.rows_deleted) for r in p.receipts] == [("explicit", 0)]


def test_tombstone_before_its_record_wins() -> None:
    w, s = World(), life()
    p = w.apply([tomb(s)])
    [r] = p.receipts
    assert r.rows_deleted == 0  # the store never held it, but the deletion is on record
    p = w.apply([st_change(s, {"late": True}), st_change(s)])
    assert w.row() is None
    assert p.stale == 2
    assert p.receipts == []


def test_a_new_life_after_the_tombstone_is_written_and_survives_the_old_tombstone() -> None:
    w, old = World(), life()
    new = life(created=old.expires_at or 0)  # a touch at the expiry starts a new life
    w.apply([tomb(old), st_change(new, {"v": 2})])
    row = w.row()
    assert row is not None
    assert row.created_at == new.created_at
    w.apply([tomb(old)])
    assert w.row() is not None


def test_explicit_delete_of_a_never_seen_record_blocks_only_earlier_lives() -> None:
    w = World()
    never = Stamp(A, None, None, None, None)
    p = w.apply([tomb(never, reason="explicit", emitted_at=T0)])
    assert [(r.reason, r.rows_deleted, r.created_at) for r in p.receipts] == [("explicit", 0, None)]
    w.apply([st_change(life(created=T0))])
    assert w.row() is None
    w.apply([st_change(life(created=T0 + 1))])
    assert w.row() is not None


def test_touch_restamp_keeps_data_but_a_new_life_does_not_inherit_it() -> None:
    w, s = World(), life()
    w.apply([st_change(s, {"text": "hi"})])
    slid = Stamp(A, s.created_at, (s.expires_at or 0) + MIN, s.ttl_ms, s.ttl_source)
    w.apply([st_change(slid)])
    row = w.row()
    assert row is not None
    assert row.data == '{"text":"hi"}'
    assert row.expires_at == slid.expires_at
    w.apply([NullChange(A), st_change(life(created=(slid.expires_at or 0) + 1))])
    row = w.row()
    assert row is not None
    assert row.data is None


def test_a_new_life_stamped_without_data_never_takes_the_deleted_lifes_data() -> None:
    """A sink that lags more than ``delete.retention.ms`` can find the null between two
    lives compacted away: the new life's first stamp (a touch starts it: no data) then
    meets the old life's row. The old life's data must not live on in the new one."""
    w, old = World(), life()
    w.apply([st_change(old, {"text": "old"}, offset=0)])
    new = life(created=(old.expires_at or 0) + MIN)
    w.apply([st_change(new, None, offset=2)])  # offset 1, the null, compacted away
    row = w.row()
    assert row is not None
    assert (row.created_at, row.data) == (new.created_at, None)
    w.apply([tomb(old)])  # the old life's tombstone leaves the new life alone
    row = w.row()
    assert row is not None
    assert row.created_at == new.created_at


def test_a_null_deletes_its_life_for_good_and_only_that_life() -> None:
    """After a null, a re-read stamp of the deleted life (a crash before the offset commit)
    does not bring it back; a life created the next millisecond is written."""
    w, first = World(), life(created=T0)
    w.apply([st_change(first, {"n": 1}, offset=0), NullChange(A, 0, 1)])
    w.apply([st_change(first, {"n": 1}, offset=0)])
    assert w.row() is None
    second = life(created=T0 + 1)
    w.apply([st_change(second, {"n": 2}, offset=2)])
    row = w.row()
    assert row is not None
    assert (row.created_at, row.data) == (T0 + 1, '{"n":2}')


def test_a_tombstone_claims_the_pending_deletions_of_the_lives_it_ends_only() -> None:
    """Two lives deleted by nulls, their receipts waiting: the first life's ``ttl``
    tombstone ends lives created before its expiry, so not the second, created exactly
    then; the second's own tombstone writes the second's receipt."""
    w, first = World(), life(created=T0, ttl=10 * MIN)
    second = life(created=T0 + 10 * MIN, ttl=10 * MIN)
    w.apply([st_change(first, offset=0), NullChange(A, 0, 1)])
    w.apply([st_change(second, offset=2), NullChange(A, 0, 3)])
    assert w.receipts == []
    w.apply([tomb(first)])
    assert [(r.created_at, r.reason) for r in w.receipts] == [(T0, "ttl")]
    w.apply([tomb(second, reason="explicit", emitted_at=T0 + 12 * MIN)])
    assert [(r.created_at, r.reason) for r in w.receipts] == [
        (T0, "ttl"),
        (T0 + 10 * MIN, "explicit"),
    ]


def test_an_erasure_naming_no_life_claims_the_deletion_waiting_for_its_rule() -> None:
    """An explicit tombstone of a record the service never saw (no ``created_at``) ends
    every life created before it: the row a null deleted gets its receipt from it, with
    the row's own times, and no second receipt for 'a row never held'."""
    w, s = World(), life()
    w.apply([st_change(s, offset=0), NullChange(A, 0, 1)])
    unseen = Stamp(A, None, None, None, None)
    w.apply([tomb(unseen, reason="explicit", emitted_at=T0 + MIN)])
    assert [(r.reason, r.rows_deleted, r.created_at, r.expires_at) for r in w.receipts] == [
        ("explicit", 1, T0, T0 + 10 * MIN)
    ]


def test_an_erasure_naming_no_life_leaves_a_life_created_after_it_to_its_own_rule() -> None:
    """The erasure (emitted at d, so it ends lives created at or before d) meets the
    deletion of a life created at d + 1, waiting for its rule: not its to claim."""
    w, s = World(), life(created=T0 + MIN + 1)
    w.apply([st_change(s, offset=0), NullChange(A, 0, 1)])
    w.apply([tomb(Stamp(A, None, None, None, None), reason="explicit", emitted_at=T0 + MIN)])
    assert [r.created_at for r in w.receipts if r.rows_deleted] == []
    w.apply([tomb(s)])
    assert [(r.reason, r.rows_deleted, r.created_at) for r in w.receipts if r.rows_deleted] == [
        ("ttl", 1, T0 + MIN + 1)
    ]


def test_a_repeated_erasure_of_a_record_never_held_is_on_record_once() -> None:
    w, unseen = World(), Stamp(A, None, None, None, None)
    erase = tomb(unseen, reason="explicit", emitted_at=T0)
    w.apply([erase])
    w.apply([erase])
    assert [(r.reason, r.rows_deleted) for r in w.receipts] == [("explicit", 0)]


def test_null_first_deletes_at_once_and_the_tombstone_event_writes_the_receipt() -> None:
    w, s = World(), life()
    w.apply([st_change(s)])
    deleted_at = w.now + 1
    p = w.apply([NullChange(A)])
    assert w.row() is None
    assert (p.deleted, p.receipts) == (1, [])  # the null names no rule: no receipt yet
    assert w.apply([NullChange(A)]).receipts == []
    p = w.apply([tomb(s, reason="explicit", emitted_at=T0 + 3 * MIN)])
    [r] = p.receipts
    assert (r.reason, r.rows_deleted, r.created_at, r.expires_at) == (
        "explicit", 1, T0, T0 + 10 * MIN,
    )  # fmt: skip
    assert (r.emitted_at, r.ttl_source, r.deleted_at) == (T0 + 3 * MIN, "org", deleted_at)
    assert w.apply([tomb(s, reason="explicit", emitted_at=T0 + 3 * MIN)]).receipts == []
    slot = w.state[A]
    assert slot.marker is not None
    assert slot.marker.pending == ()


def test_tombstone_first_then_null_gives_the_same_single_receipt() -> None:
    w, s = World(), life()
    w.apply([st_change(s)])
    p = w.apply([tomb(s)])
    assert [(r.reason, r.rows_deleted) for r in p.receipts] == [("ttl", 1)]
    p = w.apply([NullChange(A)])
    assert (p.deleted, p.receipts, p.markers) == (0, [], [])


def test_tombstone_of_a_later_life_does_not_lend_its_rule_to_an_earlier_pending_one() -> None:
    w, first = World(), life()
    second = life(created=(first.expires_at or 0) + MIN)
    w.apply([st_change(first, None, 0), NullChange(A, 0, 1), st_change(second, None, 2)])
    w.apply([NullChange(A, 0, 3)])
    p = w.apply([tomb(second, reason="explicit", emitted_at=(second.created_at or 0) + 1)])
    assert [(r.reason, r.created_at) for r in p.receipts] == [("explicit", second.created_at)]
    p = w.apply([tomb(first)])
    assert [(r.reason, r.created_at) for r in p.receipts] == [("ttl", T0)]
    assert w.state[A].marker is not None
    assert w.state[A].marker.pending == ()  # type: ignore[union-attr]


def test_sweep_writes_the_receipt_of_a_null_deletion_whose_tombstone_never_came() -> None:
    w, s = World(), life()
    w.apply([st_change(s)])
    deleted_at = w.now + 1
    w.apply([NullChange(A)])
    assert w.apply([SweepChange(A, deleted_at - 1)]).receipts == []  # still within the grace
    p = w.apply([SweepChange(A, deleted_at)])
    [r] = p.receipts
    assert (r.reason, r.rows_deleted, r.created_at, r.emitted_at, r.deleted_at) == (
        "sweep", 1, T0, None, deleted_at,
    )  # fmt: skip
    assert p.swept == 1
    assert w.apply([tomb(s)]).receipts == []  # the late tombstone: already on record


def test_the_sweeps_receipt_of_a_null_deletion_gives_the_nulls_reason() -> None:
    """A null says why (``expiry-reason``): an erasure whose tombstone never came (a
    mistyped --tombstones-topic, a sink down longer than the topic keeps them) got a
    receipt saying ``sweep``, and the log said the sweep deleted a row it had not (a
    trial). Its receipt says ``explicit``, counted apart from what the sweep deleted."""
    w, s = World(), life()
    w.apply([st_change(s)])
    deleted_at = w.now + 1
    w.apply([NullChange(A, reason="explicit")])
    p = w.apply([SweepChange(A, deleted_at)])
    assert [(r.reason, r.rows_deleted, r.deleted_at) for r in p.receipts] == [
        ("explicit", 1, deleted_at)
    ]
    assert (p.swept, p.unsettled) == (0, 1)
    assert w.apply([tomb(s)]).receipts == []  # the late tombstone: already on record


def test_pending_deletions_keep_their_reason_in_the_store() -> None:
    kept = (
        Pending(T0, T0 + MIN, 60, "default", T0 + 1),
        Pending(T0, T0 + MIN, 60, "default", T0 + 2, reason="explicit"),
        Pending(T0, T0 + MIN, 60, "default", T0 + 3, True),
        Pending(T0, T0 + MIN, 60, "default", T0 + 4, True, "ttl"),
    )
    assert decode_pending(encode_pending(kept)) == kept
    # What earlier versions wrote reads as before.
    assert decode_pending('[[1, 2, 60, "default", 3]]') == (Pending(1, 2, 60, "default", 3),)


def test_sweep_deletes_only_expired_rows_and_covers_the_late_tombstone() -> None:
    w, due, later = World(), life(), life(i=Identity("acme", "_", "live", "session", "s1"))
    w.apply([st_change(due), st_change(Stamp(later.identity, T0, T0 + 60 * MIN, 3_600_000, "env"))])
    cutoff = T0 + 10 * MIN
    p = w.apply([SweepChange(A, cutoff), SweepChange(later.identity, cutoff)])
    assert p.swept == 1
    assert [r.reason for r in p.receipts] == ["sweep"]
    assert w.row(A) is None
    assert w.row(later.identity) is not None
    assert w.apply([tomb(due)]).receipts == []


def test_restamping_the_same_content_writes_nothing() -> None:
    w, s = World(), life()
    w.apply([st_change(s, [1, 2])])
    p = w.apply([st_change(s, [1, 2]), st_change(s)])
    assert p.upserts == []
    assert p.written == 0


def test_writes_are_net_within_a_batch() -> None:
    w, old = World(), life()
    w.apply([st_change(old)])
    new = life(created=old.expires_at or 0)
    p = w.apply([tomb(old), st_change(new)])
    assert p.deletes == []
    assert [r.created_at for r in p.upserts] == [new.created_at]
    assert len(p.receipts) == 1


def test_identities_never_touch_each_other() -> None:
    other_org = Identity("globex", "_", "live", "conversation", "r1")
    w, s = World(), life()
    w.apply([st_change(s), st_change(life(i=other_org))])
    w.apply([tomb(s)])
    assert w.row(A) is None
    assert w.row(other_org) is not None


# --- property: any interleaving of the two topics gives the same end state -----------------


@dataclass(frozen=True)
class Life:
    created: int
    expires: int
    deleted_by: str | None  # "ttl" | "explicit" | None (still alive)
    deleted_at: int


@st.composite
def lives(draw: st.DrawFn) -> list[Life]:
    """Consecutive lives of one record, as the service would produce them."""
    n = draw(st.integers(1, 4))
    out: list[Life] = []
    t = T0
    for k in range(n):
        ttl = draw(st.integers(1, 100)) * MIN
        last = k == n - 1
        how = draw(st.sampled_from(["ttl", "explicit", None] if last else ["ttl", "explicit"]))
        d = t + ttl if how != "explicit" else t + draw(st.integers(1, ttl // MIN)) * MIN - 1
        out.append(Life(t, t + ttl, how, d))
        # A new life starts at or after the expiry (ttl), or after the delete (explicit).
        t = (t + ttl if how == "ttl" else d + 1) + draw(st.integers(0, 3)) * MIN
    return out


def topics_for(ls: Sequence[Life], dup_every: int) -> tuple[list[Change], list[Change]]:
    stamped: list[Change] = []
    tombs: list[Change] = []
    for n, lf in enumerate(ls):
        s = Stamp(A, lf.created, lf.expires, lf.expires - lf.created, "bot")
        # create, then a touch re-stamp; offsets are positions on expiry.stamped
        stamped += [st_change(s, {"life": n}, len(stamped)), st_change(s, None, len(stamped) + 1)]
        if lf.deleted_by is not None:
            stamped.append(NullChange(A, 0, len(stamped)))
            t = tomb(s, reason=lf.deleted_by, emitted_at=lf.deleted_at)
            tombs += [t, t] if dup_every and n % dup_every == 0 else [t]
    return stamped, tombs


def interleave(a: list[Change], b: list[Change], picks: Iterable[bool]) -> list[Change]:
    """Merge two topics as a consumer may see them: each keeps its own order."""
    out, rest_a, rest_b = [], list(a), list(b)
    for pick in picks:
        src = rest_a if (pick and rest_a) or not rest_b else rest_b
        if not src:
            break
        out.append(src.pop(0))
    return out + rest_a + rest_b


@settings(max_examples=300, deadline=None)
@given(
    ls=lives(),
    picks=st.lists(st.booleans(), max_size=40),
    cuts=st.lists(st.integers(1, 5), max_size=20),
    dup_every=st.integers(0, 2),
    replay_from=st.integers(0, 20),
)
def test_any_interleaving_converges_with_one_receipt_per_deleted_life(
    ls: list[Life], picks: list[bool], cuts: list[int], dup_every: int, replay_from: int
) -> None:
    stamped, tombs = topics_for(ls, dup_every)
    merged = interleave(stamped, tombs, picks)
    w = World()
    pos, sizes = 0, itertools.chain(cuts, itertools.repeat(3))
    while pos < len(merged):
        n = next(sizes)
        w.apply(merged[pos : pos + n])
        pos += n
    final = ls[-1]
    row = w.row()
    if final.deleted_by is None:
        assert row is not None
        assert (row.created_at, row.data) == (final.created, f'{{"life":{len(ls) - 1}}}')
    else:
        assert row is None
    deleted = [(lf.created, lf.deleted_by) for lf in ls if lf.deleted_by is not None]
    assert sorted((r.created_at or 0, r.reason) for r in w.receipts) == deleted
    emitted = {lf.created: lf.deleted_at for lf in ls}
    assert all(r.emitted_at == emitted[r.created_at or 0] for r in w.receipts)
    # Re-reading a suffix (a crash before the offset commit; or a restart from offset 0)
    # changes nothing and adds no receipt.
    before = {i: (s.row, s.marker) for i, s in w.state.items()}
    replay = w.apply(merged[min(replay_from, len(merged)) :])
    assert (replay.upserts, replay.deletes, replay.receipts) == ([], [], [])
    assert {i: (s.row, s.marker) for i, s in w.state.items()} == before


def _held_life_replaced(w: World) -> tuple[Stamp, Stamp, TombstoneChange, int]:
    """A life erased under a legal hold (its tombstone waits for the release), then the
    record's next life, whose stamp replaces the held life's row: the held life's tombstone,
    as the release sends it (where the erasure ended the life), and when the row went."""
    held = life()
    erased_at = T0 + MIN
    following = life(created=T0 + 2 * MIN, ttl=60 * MIN)
    w.apply([st_change(held, {"text": "held"}, 0)])
    replaced_at = w.now + 1
    p = w.apply([st_change(following, {"text": "next"}, 1)])
    assert p.receipts == []
    row = w.row()
    assert row is not None
    assert row.created_at == following.created_at
    release = replace(tomb(held, "explicit", emitted_at=T0 + 30 * MIN), deleted_at=erased_at)
    return held, following, release, replaced_at


def test_a_held_life_replaced_by_the_next_gets_its_receipt_at_the_release() -> None:
    w = World()
    held, _, release, replaced_at = _held_life_replaced(w)
    p = w.apply([release])
    [r] = p.receipts
    assert (r.reason, r.rows_deleted, r.created_at) == ("explicit", 1, held.created_at)
    assert r.deleted_at == replaced_at  # when the store let go of the held life's data
    assert w.row() is not None  # the next life stays
    assert w.apply([release]).receipts == []  # a repeat is one


def test_a_held_life_gets_its_receipt_when_the_next_lifes_null_came_first() -> None:
    """The null of the next life reached the store before the held life's tombstone: that
    tombstone was taken for a repeat, and the held life's erasure had no receipt."""
    w = World()
    held, following, release, replaced_at = _held_life_replaced(w)
    w.apply([NullChange(A, 0, 2)])
    assert w.row() is None
    p = w.apply([release])
    assert [(r.created_at, r.rows_deleted, r.deleted_at) for r in p.receipts] == [
        (held.created_at, 1, replaced_at)
    ]
    p = w.apply([tomb(following)])
    assert [(r.reason, r.created_at) for r in p.receipts] == [("ttl", following.created_at)]
    assert w.apply([release, tomb(following)]).receipts == []
    assert len(w.receipts) == 2  # one per life


def test_the_sweep_leaves_a_replaced_held_life_to_its_release() -> None:
    """A hold may last years, past any grace: the sweep writes no receipt for it."""
    w = World()
    _, _, release, _ = _held_life_replaced(w)
    assert w.apply([SweepChange(A, T0 + 50 * MIN)]).receipts == []
    slot = w.state[A]
    assert slot.marker is not None
    assert slot.marker.pending_since is None  # not in the sweep's index either
    assert [r.rows_deleted for r in w.apply([release]).receipts] == [1]


def test_with_an_archive_required_the_sweep_takes_only_rows_the_archive_has() -> None:
    """``[archive] required``: the service holds a ttl tombstone back until the archive has
    the record's stamp, so the sweep that stands in for it must not delete the row either
    (the row's stamp at offset 7 of partition 0: archived once the group is past 7)."""
    w, s = World(), life()
    w.apply([st_change(s, {"text": "hi"}, offset=7)])
    cutoff = T0 + 20 * MIN  # the row is past its expiry and the grace
    for offsets in ({}, {0: 7}, {1: 100}):  # nothing, up to the stamp, another partition
        p = w.apply([SweepChange(A, cutoff, offsets)])
        assert (p.swept, p.kept_for_archive, p.receipts) == (0, 1, [])
        assert w.row() is not None
    p = w.apply([SweepChange(A, cutoff, {0: 8})])  # the archive wrote it: the sweep goes on
    assert (p.swept, p.kept_for_archive) == (1, 0)
    assert [r.reason for r in p.receipts] == ["sweep"]
    assert w.row() is None


def test_a_row_archived_since_the_cutoff_is_left_to_the_services_tombstone() -> None:
    """After an archive outage longer than the grace, the rows the archive just wrote are
    past the cutoff at once: the service tombstones them (ttl) as soon as it sees them
    archived, and the sweep must not race it with a ``sweep`` receipt. A row archived by
    the cutoff is the sweep's; one not archived at all is kept and counted, as before."""
    w, s = World(), life()
    w.apply([st_change(s, {"text": "hi"}, offset=7)])
    cutoff = T0 + 20 * MIN
    p = w.apply([SweepChange(A, cutoff, {0: 8}, {0: 7})])  # archived since the cutoff
    assert (p.swept, p.kept_for_archive, p.receipts) == (0, 0, [])
    p = w.apply([SweepChange(A, cutoff, {0: 8}, {})])  # no reading that old: spared too
    assert (p.swept, p.kept_for_archive) == (0, 0)
    p = w.apply([SweepChange(A, cutoff, {0: 7}, {})])  # not archived: kept, and counted
    assert (p.swept, p.kept_for_archive) == (0, 1)
    p = w.apply([SweepChange(A, cutoff, {0: 9}, {0: 8})])  # archived by the cutoff
    assert (p.swept, p.kept_for_archive) == (1, 0)
    assert w.row() is None


def test_with_an_archive_required_a_row_of_unknown_position_is_never_swept() -> None:
    """A row whose stamp's position the store does not know cannot be shown archived."""
    w, s = World(), life()
    w.apply([st_change(s)])  # no offset
    p = w.apply([SweepChange(A, T0 + 20 * MIN, {0: 10**9})])
    assert (p.swept, p.kept_for_archive) == (0, 1)
    assert w.apply([SweepChange(A, T0 + 20 * MIN)]).swept == 1  # no archive required


# -- what mutation testing found unchecked (scripts/mutation.sh stream_expiry/sinks/_logic.py):
# a planner that wrote a row without its TTL, counted wrong, lost a held life's deletion or
# listed no living record passed every test above.

B = Identity("acme", "_", "live", "conversation", "r2")


def test_a_stamp_writes_its_row_whole_and_counts_each_row_written() -> None:
    w, s = World(), life()
    p = w.apply([st_change(s, {"text": "hi"}, offset=4), st_change(life(i=B), offset=5)])
    assert p.written == 2
    row = w.row()
    assert row is not None
    assert (row.created_at, row.expires_at, row.ttl_seconds, row.ttl_source, row.data) == (
        T0, T0 + 10 * MIN, 600, "org", '{"text":"hi"}',
    )  # fmt: skip
    assert (row.updated_at, row.src_partition, row.src_offset) == (w.now, 0, 4)


def test_an_older_stamp_read_again_never_overwrites_a_later_one_of_the_same_life() -> None:
    """A crash before the offset commit re-reads the topic from before a touch's re-stamp:
    the row keeps the position it was written from, and the older message is skipped."""
    w, s = World(), life()
    touched = s._replace(expires_at=T0 + 20 * MIN)
    w.apply([st_change(s, offset=3), st_change(touched, offset=4)])
    p = w.apply([st_change(s, offset=3)])
    assert (p.written, p.upserts) == (0, [])
    row = w.row()
    assert row is not None
    assert row.expires_at == T0 + 20 * MIN


def test_a_touched_life_still_gets_one_receipt() -> None:
    """A re-stamp of the same life (a touch) replaces the row; it is not a next life, so
    the life's tombstone deletes it with one receipt, not a second for a 'replaced' one."""
    w, s = World(), life()
    touched = s._replace(expires_at=T0 + 20 * MIN)
    w.apply([st_change(s, {"a": 1}, offset=0), st_change(touched, offset=1)])
    w.apply([tomb(touched)])
    assert [(r.created_at, r.rows_deleted) for r in w.receipts] == [(T0, 1)]


def test_two_held_lives_replaced_in_turn_each_get_their_receipt() -> None:
    """Each life a hold kept and the next one replaced waits for its own tombstone: the
    second replacement keeps the first one's deletion waiting beside its own."""
    w = World()
    first, second, third = life(), life(created=T0 + 2 * MIN), life(created=T0 + 4 * MIN)
    w.apply([st_change(first, {"n": 1}, 0)])
    w.apply([st_change(second, {"n": 2}, 1)])
    w.apply([st_change(third, {"n": 3}, 2)])
    erased = [
        replace(tomb(s, "explicit", emitted_at=T0 + 30 * MIN), deleted_at=(s.created_at or 0) + 1)
        for s in (first, second)
    ]
    w.apply(erased)
    assert sorted(r.created_at or 0 for r in w.receipts) == [T0, T0 + 2 * MIN]
    row = w.row()
    assert row is not None
    assert row.created_at == third.created_at


def test_an_erasure_naming_no_life_takes_the_receipts_fields_from_the_row_it_deletes() -> None:
    w, s = World(), life()
    w.apply([st_change(s, {"text": "hi"})])
    p = w.apply([tomb(Stamp(A, None, None, None, None), reason="explicit", emitted_at=T0 + MIN)])
    [r] = p.receipts
    assert (r.rows_deleted, r.created_at, r.expires_at, r.ttl_seconds, r.ttl_source) == (
        1, T0, T0 + 10 * MIN, 600, "org",
    )  # fmt: skip


def test_a_receipt_waiting_after_a_null_keeps_the_deleted_rows_ttl() -> None:
    w, s = World(), life()
    w.apply([st_change(s, offset=0), NullChange(A, 0, 1)])
    w.apply([tomb(Stamp(A, None, None, None, None), reason="explicit", emitted_at=T0 + MIN)])
    [r] = w.receipts
    assert (r.ttl_seconds, r.ttl_source) == (600, "org")


def test_the_sweep_names_each_record_and_counts_each_deletion() -> None:
    w = World()
    a, b = life(), life(i=B)
    w.apply([st_change(a, offset=0), st_change(b, offset=1)])
    p = w.apply([SweepChange(A, T0 + 20 * MIN), SweepChange(B, T0 + 20 * MIN)])
    assert p.swept == 2
    assert sorted(
        (r.identity.record_id, r.rows_deleted, r.created_at, r.ttl_seconds, r.ttl_source)
        for r in p.receipts
    ) == [("r1", 1, T0, 600, "org"), ("r2", 1, T0, 600, "org")]


def test_the_sweep_counts_each_row_it_keeps_for_the_archive() -> None:
    w = World()
    w.apply([st_change(life(), offset=0), st_change(life(i=B), offset=1)])
    p = w.apply([SweepChange(A, T0 + 20 * MIN, {}), SweepChange(B, T0 + 20 * MIN, {})])
    assert (p.kept_for_archive, p.swept) == (2, 0)


def test_a_row_at_the_first_offset_waits_while_the_archive_has_committed_nothing() -> None:
    """No committed offset on the partition: nothing of it is archived, offset 0 included."""
    w = World()
    w.apply([st_change(life(), offset=0)])
    assert w.apply([SweepChange(A, T0 + 20 * MIN, {})]).kept_for_archive == 1
    assert w.apply([SweepChange(A, T0 + 20 * MIN, {0: 1})]).swept == 1


def test_a_swept_life_stays_deleted_and_the_next_millisecond_starts_a_new_one() -> None:
    w, s = World(), life()
    w.apply([st_change(s, offset=0)])
    w.apply([SweepChange(A, T0 + 20 * MIN)])
    p = w.apply([st_change(s, offset=1)])  # the swept life's stamp, delivered again
    assert (p.written, p.stale) == (0, 1)
    assert w.row() is None
    w.apply([st_change(life(created=T0 + 1), offset=2)])
    row = w.row()
    assert row is not None
    assert row.created_at == T0 + 1


def test_a_row_of_unknown_creation_belongs_to_every_deleted_life() -> None:
    """A stamp without ``created_at`` (the store cannot tell its life) is deleted by the
    first tombstone, whatever life that names."""
    w = World()
    w.apply([StampChange(A, None, None, None, None, '{"x":1}', 0, 0)])
    p = w.apply([tomb(life())])
    assert (p.deleted, [r.rows_deleted for r in p.receipts]) == (1, [1])


def test_only_a_record_alive_again_after_its_deletion_is_listed_living() -> None:
    """Rule 6: A is deleted and created again in the batch (a compacted topic must get no
    null for it); B is only deleted."""
    w, a, b = World(), life(), life(i=B)
    w.apply([st_change(a, offset=0), st_change(b, offset=1)])
    again = life(created=a.expires_at or 0)
    p = w.apply([tomb(a), st_change(again, offset=2), tomb(b)])
    assert p.living == [A]
    assert sorted(r.identity.record_id for r in p.receipts) == ["r1", "r2"]


# Rule 7: when a marker may be forgotten.
PROFILE = Identity("acme", "_", "live", "contact_profile", "u1")
OTHER = Identity("acme", "_", "live", "conversation", "r2")


def _marker(w: World, i: Identity = A) -> Marker:
    slot = w.state.get(i)
    assert slot is not None
    assert slot.marker is not None
    return slot.marker


def test_a_marker_settles_at_the_later_of_its_deletion_and_the_deleted_lifes_expiry() -> None:
    """An erasure ends a life early: until that life's expiry, a stamp of it would be a
    live row again; after it, a due one. A life that never expires settles when deleted."""
    w = World()
    erased = life(ttl=60 * MIN)  # erased long before its expiry
    forever = Stamp(PROFILE, T0, None, None, None)
    ended = life(created=T0 - 30 * MIN, i=OTHER)  # expired before it was deleted
    w.apply([st_change(erased), st_change(forever), st_change(ended)])
    w.apply([tomb(erased, "explicit", emitted_at=T0 + MIN)])
    w.apply([tomb(forever, "explicit", emitted_at=T0 + MIN)])
    deleted_at = w.now + 1
    w.apply([tomb(ended)])
    assert _marker(w, A).settled_at == T0 + 60 * MIN
    assert _marker(w, PROFILE).settled_at == _marker(w, PROFILE).deleted_at
    assert _marker(w, OTHER).settled_at == deleted_at
    assert prunable(_marker(w, A), T0 + 60 * MIN)
    assert not prunable(_marker(w, A), T0 + 60 * MIN - 1)


def test_a_marker_waiting_for_a_tombstone_is_never_prunable() -> None:
    """A null deleted the row: the receipt waits for the tombstone, however late, and a
    held life replaced by the next waits for its release, which may come after any grace."""
    w, s = World(), life(created=T0 - 30 * MIN)
    w.apply([st_change(s, None, 0), NullChange(A, 0, 1)])
    assert _marker(w).pending
    assert not prunable(_marker(w), 2**62)
    held = Stamp(PROFILE, T0, T0 + MIN, MIN, "org")
    w.apply(
        [
            st_change(held, None, 0),
            st_change(Stamp(PROFILE, T0 + 2 * MIN, None, None, None), None, 1),
        ]
    )
    assert not prunable(_marker(w, PROFILE), 2**62)
    w.apply([tomb(s)])
    settled = _marker(w).settled_at
    assert settled is not None
    assert not _marker(w).pending
    assert prunable(_marker(w), settled)


def test_a_marker_of_an_earlier_version_is_kept_until_a_change_sets_its_settling() -> None:
    """Stores upgraded in place start such markers at their last change; one an earlier
    version wrote after that (a rolling upgrade) knows nothing, and is kept, until this
    version changes it."""
    w, s = World(), life(created=T0 - 30 * MIN)
    old = Marker(A, s.expires_at, s.created_at, T0 - 5 * MIN)  # type: ignore[arg-type]
    w.state[A] = Slot(None, old)
    assert not prunable(old, 2**62)
    p = w.apply([tomb(s)])  # already covered: no receipt, but the marker learns its settling
    assert p.receipts == []
    assert [m.settled_at for m in p.markers] == [T0 - 5 * MIN]
    assert prunable(_marker(w), T0 - 5 * MIN)


def test_a_repeated_tombstone_does_not_move_the_settling_on() -> None:
    """Re-deliveries are many and late: a marker they do not change is not rewritten, so
    they never keep it alive."""
    w, s = World(), life(created=T0 - 30 * MIN)
    w.apply([st_change(s)])
    w.apply([tomb(s)])
    settled = _marker(w).settled_at
    w.now += 10 * MIN
    p = w.apply([tomb(s), tomb(s)])
    assert (p.markers, p.receipts) == ([], [])
    assert _marker(w).settled_at == settled


@pytest.mark.parametrize(
    ("values", "largest"),
    [
        ((None, None), None),
        ((5, None), 5),
        ((None, 5), 5),
        ((3, 7), 7),
        ((7, 3), 7),
        ((4, 4), 4),
        ((1, None, 9, 2), 9),
        ((), None),
    ],
)
def test_the_largest_of_times_some_unknown(
    values: tuple[int | None, ...], largest: int | None
) -> None:
    """When a marker settles: the latest of the lives' expiries and of the deletions, any
    of them unknown. Two values take a path of their own (the common case, per deletion)."""
    assert _max_opt(*values) == largest


def test_an_erasures_null_read_before_the_stamp_of_a_life_it_ends_leaves_one_receipt() -> None:
    """A producer keyed a record's create and its delete apart: the erasure's null (on one
    partition of expiry.stamped, naming no life) came before the stamp of the life it
    ends (on another). The tombstone deleted the row and left two receipts for the one
    erasure, rows_deleted 1 and 0 (a trial); one is the record's."""
    w, s = World(), life()
    w.apply([NullChange(A, 1, 0, reason="explicit")])
    w.apply([st_change(s, offset=0)])
    assert w.row() is not None
    w.apply([tomb(Stamp(A, None, None, None, None), reason="explicit", emitted_at=T0 + MIN)])
    assert w.row() is None
    assert [(r.reason, r.rows_deleted, r.created_at) for r in w.receipts] == [("explicit", 1, T0)]


def test_an_erasure_of_a_moved_back_life_that_never_expires_ends_its_first_stamp() -> None:
    """A life that never expires, first stamped at ``f``, moved back to ``c`` by a create
    read late, erased at a time before ``f``: its tombstone (``expiry-erasure-read-at``,
    and ``expiry-first-created-at`` ``f``) ends at ``c``, and its window takes in the
    stamp of ``f`` (created up to ``f``; a next life's stamp would say a deletion at or
    after ``c``). Read between the two stamps, it
    left that row for the null: a receipt of nothing, then a deletion waiting for a
    tombstone that had come. Its null likewise keeps that stamp out, read again (a
    rewound group)."""
    c, f = T0, T0 + 2 * MIN
    first = Stamp(A, f, None, None, None)
    moved = Stamp(A, c, None, None, None, first_created_at=f)
    erasure = TombstoneChange(
        A, c, None, T0 + 3 * MIN, "explicit", None, None, deleted_at=c, topic=TOMBS,
        partition=0, erasure_read=True, first_created_at=f,
    )  # fmt: skip
    null = NullChange(A, 0, 2, reason="explicit", erasure_read=True, first_created_at=f)
    w = World()
    w.apply([st_change(first, {"n": 1}, offset=0)])
    w.apply([erasure])
    assert w.row() is None
    w.apply([st_change(moved, offset=1), null])
    assert [(r.created_at, r.rows_deleted) for r in w.receipts] == [(c, 1)]
    marker = w.state[A].marker
    assert marker is not None
    assert marker.pending == ()

    w = World()
    w.apply([st_change(first, {"n": 1}, offset=0), st_change(moved, offset=1), null])
    w.apply([st_change(first, {"n": 1}, offset=0)])  # read again: the group rewound
    assert w.row() is None
    next_life = Stamp(A, c + MIN, None, None, None, previous_deleted_at=c)
    w.apply([st_change(next_life, {"n": 2}, offset=3)])  # begun after the erasure: written
    row = w.row()
    assert row is not None
    assert row.created_at == c + MIN


@pytest.mark.parametrize("first", [None, T0 + 2 * MIN])
def test_an_erasure_of_a_life_that_never_expires_keeps_out_no_record_created_after_it(
    first: int | None,
) -> None:
    """An erasure (``expiry-erasure-read-at``) of a life that never expires, created at
    ``c``, with or without ``expiry-first-created-at`` (a create read late moved it back
    from ``first``), then the record created again a day later: the service's marker
    pruned after its grace, the new stamp says no ``previous_deleted_at``. The store,
    its tombstone's marker (or its null's) not yet pruned, writes it: the erasure's
    window ends after ``first`` (no window without it). With a window that never ended
    (round 47's first fix) the new record's data never reached the store."""
    c = T0
    erasure = TombstoneChange(
        A, c, None, T0 + 3 * MIN, "explicit", None, None, deleted_at=c, topic=TOMBS,
        partition=0, erasure_read=True, first_created_at=first,
    )  # fmt: skip
    null = NullChange(A, 0, 1, reason="explicit", erasure_read=True, first_created_at=first)
    again = Stamp(A, c + 24 * 60 * MIN, None, None, None)  # no previous_deleted_at
    erasures: list[list[Change]] = [[erasure], [null, erasure]]
    for erased in erasures:
        w = World()
        w.apply([st_change(Stamp(A, c, None, None, None), {"n": 1}, offset=0)])
        w.apply(erased)
        assert w.row() is None
        w.apply([st_change(again, {"n": 2}, offset=2)])
        row = w.row()
        assert row is not None
        assert row.created_at == again.created_at


@pytest.mark.parametrize("order", ["tombstone-first", "null-first", "tombstone-last"])
def test_an_erasure_of_a_life_with_an_expiry_keeps_out_no_record_created_after_it(
    order: str,
) -> None:
    """An erasure (``expiry-erasure-read-at``) of a life that never moved back, with a TTL
    longer than the markers' grace (30 days), then the record created again 10 days after
    the erasure, before the erased life's expiry: read once the service had forgotten
    the erasure (its marker pruned a grace after that expiry), the new stamp says no
    ``previous_deleted_at``. The store, its marker not yet pruned, writes it, and the
    tombstone read after it leaves it. The window reached to the erased life's expiry:
    the stamp was not written (``stale``), or its row deleted by the tombstone."""
    ttl, d = 30 * 24 * 60 * MIN, T0 + MIN
    erased = life(ttl=ttl)
    erasure = TombstoneChange(
        A, T0, erased.expires_at, T0 + 2 * MIN, "explicit", None, None, deleted_at=d,
        topic=TOMBS, partition=0, requested_at=d, erasure_read=True,
    )  # fmt: skip
    null = NullChange(A, 0, 1, reason="explicit", requested_at=d, erasure_read=True)
    again = life(d + 10 * 24 * 60 * MIN, ttl)  # no previous_deleted_at
    assert again.created_at is not None
    assert erased.expires_at is not None
    assert again.created_at < erased.expires_at
    first: Change = st_change(erased, {"n": 1}, offset=0)
    new: Change = st_change(again, {"n": 2}, offset=2)
    orders: dict[str, list[list[Change]]] = {
        "tombstone-first": [[first], [erasure], [null], [new]],
        "null-first": [[first, null], [erasure], [new]],
        "tombstone-last": [[first, null], [new], [erasure]],
    }
    w = World()
    for batch in orders[order]:
        w.apply(batch)
    row = w.row()
    assert row is not None
    assert (row.created_at, row.data) == (again.created_at, '{"n":2}')
    assert [(r.created_at, r.rows_deleted) for r in w.receipts] == [(T0, 1)]
    assert erasure.window is None  # every stamp of that life said its creation: the bound


def test_an_erasures_first_creation_header_reads_back_on_its_tombstone_and_null() -> None:
    """``expiry-first-created-at``, as the outbox writes it beside
    ``expiry-erasure-read-at``, reaches the stores' changes; without the latter it is not
    read (no window without it)."""
    from stream_expiry import codec

    f = T0 + 2 * MIN
    said = [
        (codec.H_FIRST_CREATED_AT, b"%d" % f),
        (codec.H_DELETED_AT, b"%d" % T0),
        (codec.H_REASON, b"explicit"),  # a null's only: the tombstone ignores it
        (codec.H_ERASURE_READ_AT, b"7"),
    ]
    value = encode_tombstone(Stamp(A, T0, None, None, None), reason="explicit", emitted_at=T0 + MIN)
    t = decode_tombstone(None, value, said)
    assert (t.first_created_at, t.window) == (f, (f + 1, T0))
    null = decode_stamped(A.key.encode(), None, 0, 3, said)
    assert isinstance(null, NullChange)
    assert null.first_created_at == f
    alone = said[:3]
    assert decode_tombstone(None, value, alone).window is None
    null = decode_stamped(A.key.encode(), None, 0, 3, alone)
    assert isinstance(null, NullChange)
    assert null.first_created_at is None

"""The tombstone lag histogram observes what the service made late, not what came late."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream_expiry.config import parse_config
from stream_expiry.engine import Fired
from stream_expiry.model import Identity, Stamp
from stream_expiry.service import Service
from stream_expiry.state import Effects

if TYPE_CHECKING:
    import pytest

NOW = 1_000_000


def _stamp(record_id: str, expires_at: int) -> Stamp:
    identity = Identity("acme", "_", "live", "conversation", record_id)
    return Stamp(identity, expires_at - 60_000, expires_at, 60_000, "default")


def _fired(stamp: Stamp, emitted_at: int, reason: str = "ttl") -> Fired:
    return Fired(stamp, stamp, reason, emitted_at)  # type: ignore[arg-type]


def test_a_record_overdue_when_read_is_kept_out_of_the_lag_and_its_note_goes() -> None:
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    late, erased, on_time = (
        _stamp("late", NOW - 3_600_000),
        _stamp("erased", NOW - 5),
        _stamp("on-time", NOW + 1_000),
    )
    read = Effects(1, stamps=[(late, None), (erased, None), (on_time, None)])
    service._note_overdue(read, NOW)
    # The batch after: an erasure of "erased" (its tombstone, decided as it was read), and
    # one of a record never seen (no expiry: the crash test's ghosts, a KeyError once).
    ghost = Stamp(Identity("acme", "_", "live", "conversation", "ghost"), None, None, None, None)
    ended = [_fired(erased, NOW + 1, "explicit"), _fired(ghost, NOW + 1, "explicit")]
    service._note_overdue(Effects(2, tombstones=ended), NOW + 1)
    service._count_fired(_fired(late, NOW + 10))  # its timer fires at once
    service._count_fired(_fired(on_time, NOW + 1_007))
    stats = service.stats
    assert (stats.tombstones, stats.lag_count, stats.lag_sum_ms) == (2, 1, 7)
    assert service._overdue_on_arrival == {}  # nothing left behind


def test_a_next_life_of_a_record_noted_overdue_is_observed() -> None:
    """The note is of a life (its expiry): a later life of the record is the service's."""
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    service._note_overdue(Effects(1, stamps=[(_stamp("r", NOW - 10), None)]), NOW)
    service._count_fired(_fired(_stamp("r", NOW + 5_000), NOW + 5_003))
    assert (service.stats.lag_count, service.stats.lag_sum_ms) == (1, 3)


def _service() -> Service:
    return Service(parse_config(""), bootstrap_servers="k:1", environ={})


def test_a_record_expiring_the_moment_it_is_read_is_overdue() -> None:
    """A timer is due at its expiry (``due_ms <= now``): a record read at the very
    millisecond it expires fires at once, as one already expired does, and is kept out of
    the lag likewise."""
    service = _service()
    due_now = _stamp("now", NOW)
    service._note_overdue(Effects(1, stamps=[(due_now, None)]), NOW)
    service._count_fired(_fired(due_now, NOW + 4))
    assert (service.stats.tombstones, service.stats.lag_count) == (1, 0)


def test_a_batch_that_ends_a_records_earlier_life_keeps_the_note_of_its_late_new_life() -> None:
    """One batch erases a record (its earlier life's tombstone) and reads a late create of
    it (a new life, already expired): the tombstone ends the earlier life, not the noted
    one, so the new life's timer, firing at once, is still kept out of the lag."""
    service = _service()
    earlier, late = _stamp("r", NOW + 60_000), _stamp("r", NOW - 3_600_000)
    batch = Effects(1, stamps=[(late, None)], tombstones=[_fired(earlier, NOW, "explicit")])
    service._note_overdue(batch, NOW)
    service._count_fired(_fired(late, NOW + 10))
    assert service.stats.lag_count == 0
    assert service._overdue_on_arrival == {}


def test_two_late_lives_of_a_record_in_one_batch_note_the_newer() -> None:
    """A batch reads a late create, its erasure and a late create again: the first life
    ends in the batch, and the note is of the second, whose timer fires at once and is
    kept out of the lag."""
    service = _service()
    first, second = _stamp("r", NOW - 7_200_000), _stamp("r", NOW - 3_600_000)
    batch = Effects(
        1,
        stamps=[(first, None), (second, None)],
        tombstones=[_fired(first, NOW, "explicit")],
    )
    service._note_overdue(batch, NOW)
    assert service._overdue_on_arrival == {second.identity.key: second.expires_at}
    service._count_fired(_fired(second, NOW + 10))
    assert service.stats.lag_count == 0


def test_a_noted_record_a_hold_defers_leaves_the_notes() -> None:
    """A late record a legal hold keeps is deferred, not fired: its tombstone comes with
    the hold's release, which the lag does not observe, so its note goes with the
    deferral (it stayed for good otherwise)."""
    service = _service()
    late = _stamp("held", NOW - 3_600_000)
    service._note_overdue(Effects(1, stamps=[(late, None)]), NOW)
    assert service._overdue_on_arrival == {late.identity.key: late.expires_at}
    kept = late._replace(held=True)
    service._note_overdue(Effects(2, deferred=[(kept, "ttl", ["case-1"])]), NOW + 1)
    assert service._overdue_on_arrival == {}


def test_the_notes_are_bounded_and_start_again_once_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``OVERDUE_NOTED`` notes (a backlog of late events), they are all let go and
    noting starts again with the next: the notes let go are observed when they fire."""
    monkeypatch.setattr("stream_expiry.service.OVERDUE_NOTED", 2)
    service = _service()
    late = [_stamp(f"r{i}", NOW - 1_000) for i in range(3)]
    service._note_overdue(Effects(1, stamps=[(s, None) for s in late]), NOW)
    assert service._overdue_on_arrival == {late[2].identity.key: NOW - 1_000}
    for stamp in late:
        service._count_fired(_fired(stamp, NOW + 5))
    assert (service.stats.lag_count, service.stats.lag_sum_ms) == (2, 2 * 1_005)


def test_a_timer_fired_erasure_is_counted_and_not_observed() -> None:
    """An erasure a hold deferred fires by its timer once due, as an explicit deletion: it
    is counted as one, and its lag (from an expiry it was not deleted for) is not
    observed."""
    service = _service()
    service._count_fired(_fired(_stamp("erased", NOW - 50), NOW, "explicit"))
    stats = service.stats
    assert (stats.explicit, stats.tombstones, stats.lag_count) == (1, 0, 0)


def test_the_oldest_overdue_counts_the_revoked_stores_during_a_rebalance() -> None:
    """During a rebalance nothing is assigned and nothing fires, the revoked stores kept
    open: the gauge read 0 while deletions waited 6-7 s (a trial). Their records count."""
    from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

    service = Service(parse_config(""), bootstrap_servers="k:1", environ={}, clock=lambda: NOW)
    store = PartitionStore(MemoryKV())
    due = _stamp("due", NOW - 7_000)
    store.write([(None, due)], now_ms=NOW - 60_000)
    proc = PartitionProcessor(
        "conversations", 0, store, resolve=lambda i, t: None,  # type: ignore[arg-type,return-value]
        sliding=frozenset(), categories=frozenset({"conversation"}), max_skew_ms=0,
        now_ms=NOW - 60_000,
    )  # fmt: skip
    service._suspended[("conversations", 0)] = proc  # revoked, kept open for the assignment
    service._observe()
    assert service._oldest_due == NOW - 7_000
    service._suspended.clear()  # given to another instance: its records are not ours
    service._observe()
    assert service._oldest_due is None


def test_the_pending_gauges_count_what_the_instance_holds_and_nothing_once_it_holds_none() -> None:
    """``stream_expiry_pending_records`` was set only while the instance owned partitions:
    one whose partitions all went elsewhere (a scale-out, a restore of others it was given)
    kept showing the last counts, which the new owners showed too, so a sum over the
    instances counted those records twice for as long as the restore took (a trial: 18,387
    on an instance restoring, its old partitions already another's). During a rebalance
    the revoked stores still count, as for the oldest overdue."""
    from prometheus_client.parser import text_string_to_metric_families

    from stream_expiry.metrics import ServiceMetrics
    from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

    metrics = ServiceMetrics()
    service = Service(
        parse_config(""), bootstrap_servers="k:1", environ={}, clock=lambda: NOW, metrics=metrics
    )

    def pending() -> float:
        return sum(
            s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples
            if s.name == "stream_expiry_pending_records"
        )

    store = PartitionStore(MemoryKV())
    store.write([(None, _stamp("later", NOW + 60_000))], now_ms=NOW)
    proc = PartitionProcessor(
        "conversations", 0, store, resolve=lambda i, t: None,  # type: ignore[arg-type,return-value]
        sliding=frozenset(), categories=frozenset({"conversation"}), max_skew_ms=0, now_ms=NOW,
    )  # fmt: skip
    service.processors[("conversations", 0)] = proc
    service._observe()
    assert pending() == 1
    service._suspended[("conversations", 0)] = service.processors.pop(("conversations", 0))
    service._observe()  # revoked, kept open until the next assignment
    assert pending() == 1
    service._suspended.clear()  # given to another instance, which counts it now
    service._observe()
    assert pending() == 0


def test_the_held_gauge_counts_what_the_legal_holds_keep_in_the_stores_owned() -> None:
    """Records a hold keeps past their expiry left ``stream_expiry_pending_records`` and were
    in no metric: 5,000 held conversations showed as 0 pending and 0 overdue, and only
    ``status`` said a hold kept them (a trial). ``stream_expiry_held_records`` says it."""
    from prometheus_client.parser import text_string_to_metric_families

    from stream_expiry.metrics import ServiceMetrics
    from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

    metrics = ServiceMetrics()
    service = Service(
        parse_config(""), bootstrap_servers="k:1", environ={}, clock=lambda: NOW, metrics=metrics
    )

    def held() -> float:
        return sum(
            s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples
            if s.name == "stream_expiry_held_records"
        )

    for partition, count in ((0, 3), (1, 2)):
        store = PartitionStore(MemoryKV())
        store.counts.held = count  # what the store's writes keep exact
        proc = PartitionProcessor(
            "conversations", partition, store,
            resolve=lambda i, t: None,  # type: ignore[arg-type,return-value]
            sliding=frozenset(), categories=frozenset({"conversation"}), max_skew_ms=0,
            now_ms=NOW,
        )  # fmt: skip
        service.processors[("conversations", partition)] = proc
    service._observe()
    assert held() == 5
    service.processors.clear()  # given to another instance, which counts them now
    service._observe()
    assert held() == 0

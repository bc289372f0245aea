"""One test suite over every partition-store engine (quix-streams' SUPPORTED_STORES idea):
RocksDB, which the service runs, and the in-memory engine the unit tests use."""

from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_expiry.engine import _pack_timer, _unpack_timer
from stream_expiry.errors import CorruptStoreError, NewerStoreError, StoreError
from stream_expiry.model import HeldLife, Identity, Stamp
from stream_expiry.outbox import MAX_RUNS, Run, add_run
from stream_expiry.service import _close_store
from stream_expiry.state import MemoryKV, PartitionStore, RocksKV
from stream_expiry.state.codec import decode_state, encode_state, timer_of_state
from stream_expiry.state.kv import KeyValue, _store_error, scratch_directory
from stream_expiry.state.restore_workers import _open_store
from stream_expiry.state.store import STORE_FORMAT, mark_holds

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

T0 = 1_800_000_000_000
GRACE = 60_000


@pytest.fixture(params=["rocksdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PartitionStore]:
    kv = RocksKV(str(tmp_path / "db")) if request.param == "rocksdb" else MemoryKV()
    s = PartitionStore(kv, grace_ms=GRACE)
    yield s
    s.close()


def ident(rid: str, category: str = "conversation", org: str = "acme") -> Identity:
    return Identity(org, "_", "live", category, rid)


def live(rid: str, expires: int | None, category: str = "conversation") -> Stamp:
    ttl = None if expires is None else 1000
    return Stamp(ident(rid, category), T0, expires, ttl, None if ttl is None else "default")


def _due_states(store: PartitionStore, since: int, before: int) -> list[Stamp]:
    """The states of the records the due index lists in ``[since, before)``, in its order."""
    states = []
    for key, _, _ in store.due_timers(since, before):
        state = store.get(key)
        assert state is not None  # an index entry without its state
        states.append(state)
    return states


def test_states_round_trip_and_absent_keys_are_none(store: PartitionStore) -> None:
    a, b = live("a", T0 + 5), live("b", None)
    store.write([(None, a), (None, b)], now_ms=T0)
    assert store.get_many([a.identity, ident("zzz"), b.identity]) == [a, None, b]
    assert store.get(a.identity.key) == a


def test_due_scans_live_records_in_expiry_order_within_the_range(store: PartitionStore) -> None:
    stamps = [live(f"r{i}", T0 + (7 * i) % 50) for i in range(50)]
    store.write([(None, s) for s in stamps], now_ms=T0)
    got = _due_states(store, T0 + 10, T0 + 30)
    assert [s.expires_at for s in got] == sorted(
        s.expires_at or 0 for s in stamps if T0 + 10 <= (s.expires_at or 0) < T0 + 30
    )
    assert len(got) == 20


@pytest.mark.parametrize("limit", [1, 3, 10, 11])
def test_held_records_are_paged_each_once_in_key_order(store: PartitionStore, limit: int) -> None:
    """The release scan pages through the held records that stay held (another hold still
    keeps them): every one exactly once, in key order, and the last page says the end."""
    held = [live(f"r{i:02d}", T0 + i)._replace(held=True) for i in range(10)]
    store.write([(None, s) for s in [*held, live("free", T0)]], now_ms=T0)
    seen: list[str] = []
    cursor: bytes | None = b""
    pages = 0
    while cursor is not None:
        page, cursor = store.held(cursor, limit)
        assert len(page) <= limit
        seen += [s.identity.record_id for s in page]
        pages += 1
        assert pages <= 10 // limit + 1
    assert seen == [f"r{i:02d}" for i in range(10)]


def test_a_moved_expiry_leaves_no_stale_index_entry(store: PartitionStore) -> None:
    a = live("a", T0 + 10)
    store.write([(None, a)], now_ms=T0)
    slid = a._replace(expires_at=T0 + 100)
    store.write([(a, slid)], now_ms=T0)
    assert _due_states(store, T0, T0 + 50) == []
    assert _due_states(store, T0, T0 + 200) == [slid]
    deleted = slid._replace(deleted_at=T0 + 99)
    store.write([(slid, deleted)], now_ms=T0)
    assert _due_states(store, T0, T0 + 10**6) == []
    assert store.get(a.identity.key) == deleted


def test_counts_follow_every_change_and_survive_a_reopen(tmp_path: Path) -> None:
    store = PartitionStore(RocksKV(str(tmp_path / "db")), grace_ms=GRACE)
    c1, s1, n1 = live("c", T0 + 5), live("s", T0 + 5, "session"), live("n", None)
    store.write([(None, c1), (None, s1), (None, n1)], now_ms=T0)
    store.write([(c1, c1._replace(deleted_at=T0 + 4))], now_ms=T0)
    expected = ({"conversation": 0, "session": 1}, 1, 1)
    assert (store.counts.pending, store.counts.never, store.counts.markers) == expected
    store.close()
    again = PartitionStore(RocksKV(str(tmp_path / "db")), grace_ms=GRACE)
    assert (again.counts.pending, again.counts.never, again.counts.markers) == expected
    again.close()


def test_markers_are_pruned_after_their_grace_and_not_before(store: PartitionStore) -> None:
    a = live("a", T0 + 5)
    store.write([(None, a)], now_ms=T0)
    marker = a._replace(deleted_at=T0 + 4)
    store.write([(a, marker)], now_ms=T0 + 10)  # deleted at T0+10: kept until T0+10+GRACE
    assert store.prune(T0 + 10 + GRACE - 1) == 0
    assert store.get(a.identity.key) == marker
    assert store.prune(T0 + 10 + GRACE) == 1
    assert store.get(a.identity.key) is None
    assert store.counts.markers == 0


def test_a_new_life_after_a_marker_is_never_pruned(store: PartitionStore) -> None:
    a = live("a", T0 + 5)
    marker = a._replace(deleted_at=T0 + 4)
    store.write([(None, a)], now_ms=T0)
    store.write([(a, marker)], now_ms=T0)
    reborn = live("a", T0 + 10 * GRACE)
    store.write([(marker, reborn)], now_ms=T0 + 1)
    assert store.prune(T0 + 5 * GRACE) == 0
    assert store.get(a.identity.key) == reborn
    assert store.counts.markers == 0


def test_a_marker_pruned_while_its_next_life_was_decided_is_counted_out_once(
    store: PartitionStore,
) -> None:
    """The processor reads a marker, decides the record's next life, and the housekeeping
    prunes the marker before that life is written (settled after its acks): the marker was
    counted out by the prune and again by the write, and the counts went below zero (a
    review; `status` and the metrics showed them)."""
    a = live("a", T0 + 5)
    marker = a._replace(deleted_at=T0 + 4)
    store.write([(None, a)], now_ms=T0)
    store.write([(a, marker)], now_ms=T0 + 10)
    assert store.prune(T0 + 10 + GRACE) == 1  # while the next life waits for its acks
    reborn = live("a", T0 + 20 * GRACE)
    store.write([(marker, reborn)], now_ms=T0 + 11 + GRACE)
    assert store.get(a.identity.key) == reborn
    assert (store.counts.markers, store.counts.pending) == (0, {"conversation": 1})


def test_near_twins_are_separate_records(store: PartitionStore) -> None:
    base = Identity("o", "b", "live", "conversation", "r")
    twins = [
        Identity("o2", "b", "live", "conversation", "r"),
        Identity("o", "b2", "live", "conversation", "r"),
        Identity("o", "b", "draft", "conversation", "r"),
        Identity("o", "b", "live", "session", "r"),
        Identity("o", "b", "live", "conversation", "r2"),
        Identity("o/b", "live", "conversation", "r", "x"),  # a slash cannot shift the parts
    ]
    stamps = [Stamp(i, T0, T0 + 9, 9, "default") for i in [base, *twins]]
    store.write([(None, s) for s in stamps], now_ms=T0)
    store.write([(stamps[0], stamps[0]._replace(deleted_at=T0 + 8))], now_ms=T0)
    states = store.get_many([base, *twins])
    assert [s is not None and s.live for s in states] == [False] + [True] * len(twins)


def test_meta_is_written_with_the_states(store: PartitionStore) -> None:
    assert store.meta("changelog/x/0") is None
    store.write([(None, live("a", T0))], now_ms=T0, meta={"changelog/x/0": 42})
    assert store.meta("changelog/x/0") == 42


def test_rocksdb_disk_use_falls_back_to_what_live_records_need(tmp_path: Path) -> None:
    """Many records through create, expiry and their markers' grace: the store shrinks."""
    kv = RocksKV(str(tmp_path / "db"))
    store = PartitionStore(kv, grace_ms=0)
    keep = [live(f"keep{i}", T0 + 10**9) for i in range(1000)]
    store.write([(None, s) for s in keep], now_ms=T0)
    kv.compact()
    live_only = kv.size_on_disk()
    for round_ in range(5):
        churn = [live(f"r{round_}-{i}-{'x' * 40}", T0 + 1) for i in range(20_000)]
        store.write([(None, s) for s in churn], now_ms=T0)
        store.write([(s, s._replace(deleted_at=T0)) for s in churn], now_ms=T0)
    kv.compact()
    peak = kv.size_on_disk()
    while store.prune(T0 + 2, budget=10_000):
        pass
    kv.compact()
    after = kv.size_on_disk()
    assert store.counts.markers == 0
    assert peak > 5 * live_only
    assert after < 2 * live_only
    store.close()


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 9), st.one_of(st.none(), st.integers(0, 100)), st.booleans()),
        max_size=40,
    )
)
def test_the_index_always_lists_exactly_the_live_finite_records(
    ops: list[tuple[int, int | None, bool]],
) -> None:
    store = PartitionStore(MemoryKV(), grace_ms=GRACE)
    current: dict[str, Stamp] = {}
    for n, expires, deleted in ops:
        new = live(f"r{n}", None if expires is None else T0 + expires)
        if deleted:
            new = new._replace(deleted_at=T0)
        key = new.identity.key
        store.write([(current.get(key), new)], now_ms=T0)
        current[key] = new
    want = sorted(
        (s.expires_at, s.identity.key)
        for s in current.values()
        if s.live and s.expires_at is not None
    )
    got = [(s.expires_at, s.identity.key) for s in _due_states(store, -(2**62), 2**62)]
    assert got == want
    assert store.counts.pending_total == len(want)
    assert store.counts.markers == sum(not s.live for s in current.values())


_TIME = st.one_of(st.none(), st.integers(-(2**62), 2**62))
_LIVES = st.lists(
    st.tuples(_TIME, _TIME, _TIME, st.one_of(st.none(), st.text(max_size=4)), _TIME), max_size=2
).map(tuple)
_STATES = st.builds(
    Stamp,
    st.just(ident("r/é 1")),
    _TIME,  # created_at
    _TIME,  # expires_at
    _TIME,  # ttl_ms
    st.one_of(st.none(), st.text(max_size=8)),  # ttl_source
    _TIME,  # deleted_at
    _TIME,  # erase_at
    st.booleans(),  # held
    _TIME,  # stamp_offset
    _TIME,  # previous_deleted_at
    _LIVES,
    _TIME,  # first_created_at
)


@settings(max_examples=500)
@given(state=_STATES, prune_at=_TIME)
def test_a_timer_cut_from_the_stored_bytes_is_the_one_the_engine_packs(
    state: Stamp, prune_at: int | None
) -> None:
    """Loading a horizon takes each timer from the stored state's bytes, without decoding
    it: the same due time and bytes as the engine's own packing of the decoded state, for
    a live, unheld record with a due time; none for any other."""
    found = timer_of_state(encode_state(state, prune_at))
    if not state.live or state.held or state.due_at is None:
        assert found is None
    else:
        assert found == (state.due_at, _pack_timer(state))


def _timers_of_states(store: PartitionStore, since: int, before: int) -> list[Any]:
    return [(s.identity.key, s.due_at, _pack_timer(s)) for s in _due_states(store, since, before)]


def test_due_timers_are_the_due_records_timers(store: PartitionStore) -> None:
    records = [live(f"r{i}", T0 + (i * 7919) % 50) for i in range(40)]
    records.append(live("erased", T0 + 99)._replace(erase_at=T0 + 3))
    store.write([(None, s) for s in records], now_ms=T0)
    # The stamps' offsets, set once their messages are acknowledged: in the timers too.
    store.write([(s, s.with_offset(i)) for i, s in enumerate(records[:10])], now_ms=T0)
    assert all(packed for _, packed in store.kv.scan(b"x", b"y"))  # no look-up needed
    want = _timers_of_states(store, T0, T0 + 40)
    assert len(want) == 1 + sum(1 for s in records if (s.expires_at or 0) < T0 + 40)
    assert list(store.due_timers(T0, T0 + 40, batch=7)) == want
    assert {_unpack_timer(key, packed).stamp_offset for key, _, packed in want} - {None}


def test_due_timers_of_index_entries_an_earlier_version_wrote_come_from_the_states(
    store: PartitionStore,
) -> None:
    """An earlier version kept the due index's values empty (and reads none): those
    entries' timers are cut from the states, in due order with the others."""
    records = [live(f"r{i}", T0 + i) for i in range(30)]
    store.write([(None, s) for s in records], now_ms=T0)
    want = _timers_of_states(store, T0, T0 + 30)
    older = [k for k, _ in store.kv.scan(b"x", b"y")][::3]
    store.kv.apply(dict.fromkeys(older, b""), [])
    assert len(older) == 10
    assert list(store.due_timers(T0, T0 + 30, batch=4)) == want
    assert list(store.due_timers(T0, T0 + 30, batch=100)) == want


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.integers(0, 9),
            st.one_of(st.none(), st.integers(0, 100)),  # expiry
            st.one_of(st.none(), st.integers(0, 100)),  # an erasure requested
            st.one_of(st.none(), st.integers(0, 10**6)),  # the stamp's offset
            st.booleans(),  # deleted
        ),
        max_size=40,
    ),
    restored=st.booleans(),
    filtered=st.booleans(),
)
def test_due_timers_always_match_the_stored_states(
    ops: list[tuple[int, int | None, int | None, int | None, bool]], restored: bool, filtered: bool
) -> None:
    """Whatever was written, by events or by a restore (into an empty store, with its key
    filter, or not): each due index entry's timer is the one its state's gives."""
    store = PartitionStore(MemoryKV(), grace_ms=GRACE)
    if filtered:
        assert store.start_key_filter(len(ops))
    current: dict[str, Stamp] = {}
    for n, expires, erase, offset, deleted in ops:
        new = live(f"r{n}", None if expires is None else T0 + expires)
        new = new._replace(
            erase_at=None if erase is None else T0 + erase,
            stamp_offset=offset,
            deleted_at=T0 if deleted else None,
        )
        key = new.identity.key
        if restored:
            store.write_restored(
                [
                    (
                        key.encode(), new.identity.category, new.created_at, new.expires_at,
                        new.ttl_ms, new.ttl_source, new.deleted_at, None, offset, None, (), None,
                    )
                ],
                now_ms=T0,
                meta={},
            )  # fmt: skip
            new = store.get(key) or new
        else:
            store.write([(current.get(key), new)], now_ms=T0)
        current[key] = new
    assert list(store.due_timers(-(2**62), 2**62, batch=3)) == _timers_of_states(
        store, -(2**62), 2**62
    )


@settings(max_examples=200, deadline=None)
@given(
    before=st.lists(st.tuples(st.integers(0, 9), st.integers(-50, 50)), max_size=10),
    rows=st.lists(
        st.tuples(
            st.integers(0, 9),
            st.one_of(st.none(), st.integers(-50, 50)),  # expiry (relative to now)
            st.booleans(),  # an erasure a hold defers: frozen, no timer
            st.booleans(),  # deleted: a null
        ),
        max_size=30,
    ),
)
def test_a_restore_counts_the_live_records_already_due_as_the_store_holds_them(
    before: list[tuple[int, int]], rows: list[tuple[int, int | None, bool, bool]]
) -> None:
    """What a restore says is due (stream_expiry_restoring_due_records): the count at its
    start plus each write's change is, after every write, the live records of the store
    due at the restore's now, held ones aside, however later stamps and nulls of the same
    records move or delete them."""
    now = T0 + 1_000
    store = PartitionStore(MemoryKV(), grace_ms=GRACE)
    for n, due_in in before:  # a store kept on disk, due records left by an outage
        old = store.get(ident(f"r{n}").key)
        store.write([(old, live(f"r{n}", now + due_in))], now_ms=T0)

    def truth() -> int:
        return sum(
            1
            for state in store.items()
            if state.live and not state.held and state.due_at is not None
            and state.due_at <= now
        )  # fmt: skip

    # A store that holds states looks each key up; an empty one only the keys it wrote.
    assert store.start_key_filter(len(rows)) == (not before)
    due = store.count_due(now)
    assert due == truth()
    for n, expires, erased, deleted in rows:
        key = ident(f"r{n}").key
        expires_at = None if expires is None else now + expires
        erase = now - 100 if erased and not deleted else None
        row = (
            key.encode(), "conversation", T0, expires_at, 1000, "default",
            now - 10 if deleted else None, erase, 7, None, (), None,
        )  # fmt: skip
        due += store.write_restored([row], now_ms=now, meta={})[2]
        assert due == truth() == store.count_due(now)


@given(
    fields=st.tuples(
        st.one_of(st.none(), st.integers()),
        st.one_of(st.none(), st.integers()),
        st.one_of(st.none(), st.integers()),
        st.one_of(st.none(), st.text(max_size=5)),
        st.one_of(st.none(), st.integers()),
        st.one_of(st.none(), st.integers()),
        st.booleans(),
        st.one_of(st.none(), st.integers()),
        st.one_of(st.none(), st.integers()),
    ),
    offset=st.one_of(st.none(), st.integers(0, 2**62)),
)
def test_with_offset_changes_the_stamp_offset_and_nothing_else(
    fields: tuple[int | None, int | None, int | None, str | None, int | None, int | None, bool,
                  int | None, int | None],
    offset: int | None,
) -> None:  # fmt: skip
    stamp = Stamp(Identity("o", "b", "live", "conversation", "r"), *fields)
    assert stamp.with_offset(offset) == stamp._replace(stamp_offset=offset)


def test_a_checkpoint_moves_positions_only_over_the_instances_own_run(
    store: PartitionStore,
) -> None:
    """A store's changelog position moves to the end of a run of this instance's settled
    messages only from within it: never back (a restore may have read further), and never
    over another writer's messages (``replay``'s stamps, another instance's) lying between
    the position and the run, which the next restore must read."""
    from stream_expiry.policy import Resolution
    from stream_expiry.state import PartitionProcessor
    from stream_expiry.state.store import position_name

    stamped, tombs = position_name("stamped", 0), position_name("tombstones", 0)
    store.set_meta({stamped: 100})
    proc = PartitionProcessor(
        "in",
        0,
        store,
        resolve=lambda _i, _t: Resolution(None, None),
        sliding=frozenset(),
        categories=frozenset({"conversation"}),
        max_skew_ms=10**12,
        now_ms=T0,
    )
    proc.checkpoint({stamped: [Run(40, 50, b"k49", 49)], tombs: [Run(0, 7, b"t6", 6)]})
    assert (store.meta(stamped), store.meta(tombs)) == (100, 7)
    assert store.position_mark(stamped) is None  # not moved: as it was saved
    proc.checkpoint({stamped: [Run(90, 150, b"k149", 149)], tombs: [Run(0, 7, b"t6", 6)]})
    assert (store.meta(stamped), store.meta(tombs)) == (150, 7)
    # offset 150 is someone else's: the position stays, and so does its mark
    proc.checkpoint({stamped: [Run(151, 200, b"k199", 199)], tombs: [Run(7, 9, b"t8", 8)]})
    assert (store.meta(stamped), store.meta(tombs)) == (150, 9)
    # Each moved position is marked with the run's last message: the one before it.
    assert store.position_mark(stamped) == (149, zlib.crc32(b"k149"), 149)
    assert store.position_mark(tombs) == (8, zlib.crc32(b"t8"), 8)
    # Runs out of the order they settled in: a position within the later one moves too.
    proc.checkpoint({stamped: [Run(120, 140, b"a", 1), Run(150, 160, b"k159", 159)]})
    assert store.meta(stamped) == 160


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=12),
    foreign=st.sets(st.integers(0, 11)),
    order=st.randoms(use_true_random=False),
)
def test_runs_join_batches_settled_in_any_order_and_never_over_a_gap(
    sizes: list[int], foreign: set[int], order: Any
) -> None:
    """The outbox's batches on a changelog partition may settle out of their offsets'
    order (a stamp goes out while an earlier entry's null waits for its tombstone): the
    runs must cover exactly the settled offsets, joined where they touch, never over an
    offset of another writer (a restore must read it), each ending with its last message."""
    batches, offset = [], 0
    for i, size in enumerate(sizes):
        if i in foreign:
            offset += 1  # another writer's message
        batches.append(Run(offset, offset + size, b"k%d" % (offset + size - 1), i))
        offset += size
    settled = list(batches)
    order.shuffle(settled)
    runs: list[Run] = []
    covered: set[int] = set()
    full = False  # the lowest run may have gone (MAX_RUNS)
    for batch in settled:
        add_run(runs, batch)
        full = full or len(runs) == MAX_RUNS
        covered |= set(range(batch.start, batch.end))
        starts = [r.start for r in runs]
        assert starts == sorted(starts)
        assert all(a.end < b.start for a, b in itertools.pairwise(runs))
        in_runs = {o for r in runs for o in range(r.start, r.end)}
        assert in_runs <= covered
        if not full:  # every settled offset is in a run
            assert in_runs == covered
        ends = {b.end: b for b in batches}
        assert all((r.last_key, r.last_timestamp) == ends[r.end][2:] for r in runs)


_time = st.one_of(st.none(), st.integers(-(2**62), 2**62))


@settings(max_examples=300)
@given(
    created=_time,
    expires=_time,
    ttl=_time,
    source=st.one_of(st.none(), st.text(min_size=1, max_size=8)),
    deleted=_time,
    erase=_time,
    held=st.booleans(),
    offset=_time,
    floor=_time,
    lives=st.lists(
        st.tuples(_time, _time, _time, st.one_of(st.none(), st.text(max_size=8)), _time),
        max_size=3,
    ).map(tuple),
)
def test_every_field_of_a_state_survives_the_store(
    created: int | None,
    expires: int | None,
    ttl: int | None,
    source: str | None,
    deleted: int | None,
    erase: int | None,
    held: bool,
    offset: int | None,
    floor: int | None,
    lives: tuple[HeldLife, ...],
) -> None:
    """The previous life's deletion and the lives a hold keeps are stored only when there
    are some, after bytes UTF-8 never holds: whatever the ttl source's text, it reads back
    as written, and so does a value written before the fields existed."""
    stamp = Stamp(
        ident("r"), created, expires, ttl, source, deleted, erase, held, offset, floor, lives
    )
    value = encode_state(stamp, None)
    assert decode_state(stamp.identity, value) == (stamp, None)
    if floor is None and not lives:
        # The layout of every state before ``previous_deleted_at``: fixed fields, source.
        assert value[57:] == (source or "").encode()


def test_a_restored_state_keeps_its_previous_lifes_deletion(store: PartitionStore) -> None:
    key = ident("r").key.encode()
    row = (key, "conversation", T0, T0 + 1000, 1000, "default", None, None, 7, T0 - 5, (), None)
    assert store.write_restored([row], now_ms=T0, meta={}) == (1, 0, 0)  # due later
    assert store.get(ident("r").key) == Stamp(
        ident("r"), T0, T0 + 1000, 1000, "default", None, None, False, 7, T0 - 5
    )


def test_a_working_store_without_a_temporary_directory_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """status and replay in a container whose root file system is read-only, /tmp
    included: one message naming TMPDIR, not "No usable temporary directory" in a
    traceback."""
    with scratch_directory("x-") as work:
        assert os.path.isdir(work)
    assert not os.path.exists(work)
    monkeypatch.setattr(tempfile, "tempdir", "/nonexistent/read-only")
    with (
        pytest.raises(StoreError, match="set TMPDIR to a writable directory"),
        scratch_directory("x-"),
    ):
        pass


@dataclass
class _Message:
    """A message as a fetch hands it back (the fields a mark is compared with)."""

    key: bytes | None
    timestamp: int
    timestamp_type: int = 0
    offset: int = 0
    value: bytes | None = None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


def test_a_mark_holds_for_its_own_message_only() -> None:
    """Same key, another time: another message (a record written again on the rebuilt
    cluster at the same offset); the time counts only where the producer set it."""
    key_crc = zlib.crc32(b"acme/_/live/conversation/c1")
    assert mark_holds(_Message(b"acme/_/live/conversation/c1", 1_000), key_crc, 1_000)
    assert not mark_holds(_Message(b"acme/_/live/conversation/c1", 1_001), key_crc, 1_000)
    assert not mark_holds(_Message(b"acme/_/live/conversation/c2", 1_000), key_crc, 1_000)
    assert not mark_holds(None, key_crc, 1_000)
    log_append = _Message(b"acme/_/live/conversation/c1", 9_999, timestamp_type=1)
    assert mark_holds(log_append, key_crc, 1_000)  # the broker's time: the key decides
    assert mark_holds(_Message(None, 5), zlib.crc32(b""), 5)


def test_an_erased_life_keeps_its_marker_until_its_own_expiry_and_the_grace(
    store: PartitionStore,
) -> None:
    """An erasure ends a life before its expiry: until that expiry a re-sent create of it
    would bring the record back, so its marker stays that long, plus the grace (it went
    after the grace from the deletion, and the create brought the erased data back)."""
    a = live("a", T0 + 10 * GRACE)
    store.write([(None, a)], now_ms=T0)
    erased = a._replace(deleted_at=T0 + 4)
    store.write([(a, erased)], now_ms=T0 + 4)
    # The same erasure restored from the changelog.
    b = ident("b").key.encode()
    row = (
        b, "conversation", T0, T0 + 10 * GRACE, 1000, "default", T0 + 4, T0 + 4, None, None, (),
        None,
    )  # fmt: skip
    assert store.write_restored([row], now_ms=T0, meta={}) == (0, 1, 0)
    assert store.prune(T0 + 4 + 2 * GRACE) == 0
    assert store.prune(T0 + 10 * GRACE + GRACE - 1) == 0
    assert store.get(a.identity.key) == erased
    assert store.prune(T0 + 10 * GRACE + GRACE) == 2
    assert store.counts.markers == 0


def _flip_middle_of_tables(path: str) -> None:
    """64 bytes flipped in the middle of every table file of a closed RocksDB store."""
    for name in os.listdir(path):
        if name.endswith(".sst"):
            sst = os.path.join(path, name)
            middle = os.path.getsize(sst) // 2
            with open(sst, "r+b") as f:
                f.seek(middle)
                flipped = bytes(b ^ 0xFF for b in f.read(64))
                f.seek(middle)
                f.write(flipped)


def test_a_damaged_block_is_an_error_of_the_store_not_the_end_of_a_scan(tmp_path: Path) -> None:
    """RocksDB's iterator stops at a block that fails its checksum as if the range ended:
    a scan of a damaged store came back short (half its records), without a word."""
    path = str(tmp_path / "s")
    kv = RocksKV(path)
    kv.apply({b"k%06d" % i: os.urandom(100) for i in range(20_000)}, [])
    kv.compact()
    kv.close()
    _flip_middle_of_tables(path)
    kv = RocksKV(path)
    try:
        with pytest.raises(CorruptStoreError, match="Corruption") as caught:
            sum(1 for _ in kv.scan(b"", b"\xff"))
        assert caught.value.path == path
        # The service moves it aside by its path; a worker process sends it pickled.
        assert pickle.loads(pickle.dumps(caught.value)).path == path
    finally:
        kv.close()


_WRITE_AND_DIE = """
import os, sys
from stream_expiry.state import RocksKV
kv = RocksKV(sys.argv[1])
for batch in range(40):
    kv.apply({b"k%02d-%03d" % (batch, i): b"v" * 100 for i in range(20)}, [])
os._exit(0)  # as a crash: nothing flushed, the batches in the write-ahead log alone
"""


def _keys(path: str) -> int:
    kv = RocksKV(path)
    try:
        return sum(1 for _ in kv.scan(b"", b"\xff"))
    finally:
        kv.close()


def test_a_write_ahead_log_cut_short_is_said_and_the_store_opened_as_before_the_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """RocksDB's point-in-time recovery drops a write-ahead log from its first torn record
    (a machine crash before the log's pages reached the disk) and said so only in the
    store's LOG file: the store opened short of its last batches without a word. The
    drop stays (the changelog restores it); a WARNING names the store. A process that
    died with its log whole is no warning."""
    whole = str(tmp_path / "whole")
    subprocess.run([sys.executable, "-c", _WRITE_AND_DIE, whole], check=True, timeout=60)
    [wal] = [w for w in glob.glob(os.path.join(whole, "*.log")) if os.path.getsize(w) > 0]
    torn = str(tmp_path / "torn")
    shutil.copytree(whole, torn)
    os.truncate(os.path.join(torn, os.path.basename(wal)), os.path.getsize(wal) // 2 + 7)
    with caplog.at_level(logging.WARNING, logger="stream_expiry.state.kv"):
        assert _keys(whole) == 800
        assert not caplog.records
        left = _keys(torn)
    assert 0 < left < 800  # the batches before the cut, not the rest
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith(f"the state store {torn}: its write-ahead log is cut short")
    assert "Corruption: truncated record" in said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stream_expiry.state.kv"):
        assert _keys(torn) == left  # said once: opened, the store is whole again
    assert not caplog.records


def test_a_store_whose_scan_failed_lets_go_of_its_directory_when_closed(tmp_path: Path) -> None:
    """The error of a failed scan, kept (a service keeps the session's failure to raise it),
    held RocksDB's iterator in its traceback, and the iterator the database: closed and
    moved aside, the damaged store still held its lock, so the store opened at its path to
    be restored failed ("lock hold by current process", exit 4; an incident drill, a table
    file damaged near its start), and the old database went on writing there."""
    path = str(tmp_path / "s")
    kv = RocksKV(path)
    kv.apply({b"k%06d" % i: os.urandom(100) for i in range(20_000)}, [])
    kv.compact()
    kv.close()
    _flip_middle_of_tables(path)
    kv = RocksKV(path)
    with pytest.raises(CorruptStoreError) as caught:
        sum(1 for _ in kv.scan(b"", b"\xff"))
    kv.close()
    os.rename(path, path + ".corrupt")
    again = RocksKV(path)  # the error is still held: ``caught``
    again.close()
    assert caught.value.path == path


def test_a_store_missing_its_manifest_or_not_a_directory_is_damaged(tmp_path: Path) -> None:
    """A MANIFEST deleted (or a CURRENT naming one that is not there) is an IO error to
    RocksDB, and a file in a store's place an ``[Errno 17]``: each stopped the service
    (exit 4) where a damaged store is moved aside and restored from the changelog."""
    gone = str(tmp_path / "gone")
    kv = RocksKV(gone)
    kv.apply({b"k": b"v"}, [])
    kv.close()
    for manifest in os.listdir(gone):
        if manifest.startswith("MANIFEST-"):
            os.unlink(os.path.join(gone, manifest))
    with pytest.raises(CorruptStoreError, match="No such file or directory") as caught:
        RocksKV(gone)
    assert caught.value.path == gone
    a_file = tmp_path / "a-file"
    a_file.write_text("not a store")
    with pytest.raises(CorruptStoreError, match="not a directory") as caught:
        RocksKV(str(a_file))
    assert caught.value.path == str(a_file)


@pytest.mark.parametrize(
    ("rocksdb_said", "advice"),
    [
        (
            "IO error: No space left on device: While appending to file: {path}/000004.log: "
            "No space left on device",
            "free space on the file system of the state directory",
        ),
        (
            "IO error: While open a file for appending: {path}/000012.log: Operation not permitted",
            "make {path} writable by the service's user",
        ),
        ("IO error: While mkdir: {path}: Read-only file system", "a read-only mount"),
    ],
)
def test_a_store_that_cannot_be_written_says_what_to_do(rocksdb_said: str, advice: str) -> None:
    """A full disk and a store the service may not write (both met in an incident drill)
    stopped it with RocksDB's words alone; they are not damage (moving the store aside
    cures neither), and the error says what to do, and that nothing is lost."""
    path = "/var/lib/stream-expiry/conversations-0"
    error = _store_error(
        "cannot write to the state store", path, Exception(rocksdb_said.format(path=path))
    )
    assert type(error) is StoreError
    assert advice.format(path=path) in str(error)
    assert str(error).endswith("nothing is lost, and what was not written is read again")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs to fill: a real ``No space left on device``, which an error made up
    in a test does not give (the slow close was RocksDB's flush thread, not its words).
    Skipped where no tmpfs can be mounted: that needs Linux, root (CAP_SYS_ADMIN) and the
    ``mount`` command."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a full disk is a tmpfs mounted here, which needs Linux and root")
    where = tmp_path / "full"
    where.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("a full disk is a tmpfs mounted here, and there is no mount command")
    if mounted.returncode != 0:
        pytest.skip(f"mount refused a tmpfs (CAP_SYS_ADMIN missing?): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)


def test_stores_on_a_full_disk_close_at_once_and_lose_nothing(full_disk: Path) -> None:
    """On a full disk each store took a second to close (a stop of dozens of partitions,
    as many seconds): its flush at close failed, and RocksDB's flush thread sleeps a fixed
    second after a failed flush, which the close waited out. A store now closes without a
    flush its disk has no room for, and every write it took is there once there is room:
    its write-ahead log held them, and the open after reads it again."""
    paths = [str(full_disk / f"conversations-{n}") for n in range(3)]
    with RocksKV.opening(len(paths)):
        stores = [RocksKV(path) for path in paths]
    # each memtable holds all the disk does: no flush while writing, which fails and sleeps
    assert all(kv.sizes.write_buffer > 4 * 1024 * 1024 for kv in stores)
    written: list[dict[bytes, bytes]] = [{} for _ in stores]
    said = ""
    for n in itertools.count():  # in turn, until the disk is full
        failed, puts = stores[n % 3], {os.urandom(16): os.urandom(1000) for _ in range(100)}
        try:
            failed.apply(puts, [])
        except StoreError as exc:
            said = str(exc)
            break
        written[n % 3].update(puts)
    assert "No space left on device" in said
    with contextlib.suppress(StoreError):  # its log, which the full disk cut, refuses a sync
        failed.close()
    for kv in stores:
        if kv is not failed:
            # No flush tried: before, each raised "No space left on device" of a table file
            # after its flush thread's second of sleep (the time is not asserted here: a
            # test does not time; the error is the flush's own mark).
            kv.close()
    grown = subprocess.run(["mount", "-o", "remount,size=64m", str(full_disk)], check=False)
    assert grown.returncode == 0
    for path, wrote in zip(paths, written, strict=True):
        again = RocksKV(path)
        assert again.multi_get(list(wrote)) == list(wrote.values())
        again.close()


def test_a_store_with_room_flushes_at_close(tmp_path: Path) -> None:
    """The close skips its flush on a full disk only: with room, the memtable is written
    to a table file, and the next open has no log to read again."""
    kv = RocksKV(str(tmp_path / "s"))
    kv.apply({b"k": b"v"}, [])
    assert not any(name.endswith(".sst") for name in os.listdir(kv.path))
    kv.close()
    assert any(name.endswith(".sst") for name in os.listdir(kv.path))


@pytest.mark.parametrize(
    ("durable", "room", "flushed"),
    [
        (True, 0, False),  # a full disk: the log holds it, no flush tried
        (True, 512 * 1024, False),  # room for the memtable, not for its flush's slack
        (True, 64 * 1024 * 1024, True),
        (False, 0, True),  # no log to hold it: flushed, or its writes are lost
    ],
)
def test_the_close_skips_its_flush_only_for_a_logged_store_without_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, room: int, flushed: bool
) -> None:
    """The rule of the full-disk close, on the free space the file system reports (made
    up here: the real full disk is the test above): a flush is skipped only where the
    write-ahead log holds what it would write, and only when the memtables and a flush's
    slack do not fit; whatever was skipped is there after the next open."""
    kv = RocksKV(str(tmp_path / "s"), durable=durable)
    kv.apply({b"k%d" % n: b"v" * 100 for n in range(100)}, [])
    held = kv._db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
    assert held > 0
    free = SimpleNamespace(f_bavail=held + room, f_frsize=1)
    monkeypatch.setattr("stream_expiry.state.kv.os.statvfs", lambda _path: free)
    kv.close()
    monkeypatch.undo()
    assert any(name.endswith(".sst") for name in os.listdir(kv.path)) is flushed
    again = RocksKV(kv.path, durable=durable)
    assert again.multi_get([b"k0", b"k99"]) == [b"v" * 100] * 2
    again.close()


def test_closing_a_store_twice_is_one_close(tmp_path: Path) -> None:
    """The service's stop and its session's end both close every store: the second close
    raised ``DbClosedError: DB instance already closed`` over the first one's error."""
    kv = RocksKV(str(tmp_path / "s"))
    kv.close()
    kv.close()


def test_a_store_that_fails_to_close_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop that meets a close error (RocksDB flushing onto a damaged file) says it in
    one line and goes on closing the others; it was a 70-line traceback and exit 4."""

    class FailingClose(MemoryKV):
        def close(self) -> None:
            raise StoreError("cannot close the state store /x/conversations-0: Corruption")

    procs = [
        SimpleNamespace(store=PartitionStore(FailingClose())),
        SimpleNamespace(store=PartitionStore(RocksKV(str(tmp_path / "s")))),
    ]
    with caplog.at_level(logging.WARNING, "stream_expiry.service"):
        for proc in procs:
            _close_store(proc)  # type: ignore[arg-type]
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    assert "conversations-0: Corruption" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is None
    procs[1].store.close()  # closed already: nothing happens


# -- the store's format (a rolling upgrade, a rollback) ---------------------------------------

_NONE = -(1 << 63)


def _fixed(created: int, expires: int, ttl: int, deleted: int = _NONE, prune: int = _NONE) -> bytes:
    """The fixed head of a stored state, as every format so far wrote it (written out
    here, not through the codec: these bytes are what stores on disk hold)."""
    return struct.pack(">qqqqqqqB", created, expires, ttl, deleted, prune, _NONE, _NONE, 0)


# A state as each layout before the store kept its format wrote it: the first (source
# only); 0b5a2f3's previous life's deletion behind 0xFF; b3981f0's held lives behind 0xFE.
_OLD_LAYOUTS = {
    "plain": _fixed(T0, T0 + 1000, 1000) + b"default",
    "floor": _fixed(T0, T0 + 1000, 1000) + b"\xff" + struct.pack(">q", T0 - 7) + b"org",
    "lives": _fixed(T0, T0 + 1000, 1000)
    + b"\xfe"
    + struct.pack(">I", len(b'[[1,2,1,"org",null]]'))
    + b'[[1,2,1,"org",null]]'
    + b"default",
}


@pytest.mark.parametrize("engine", ["rocksdb", "memory"])
def test_a_store_written_before_its_format_was_kept_reads_as_it_was_and_is_stamped(
    engine: str, tmp_path: Path
) -> None:
    """A store an earlier version wrote has no format: it is format 1, whose layouts all
    read unchanged (each field came behind a marker byte), so it is stamped format 1 when
    it opens, and kept. The states are written by this version and compared with the old
    bytes: a change of the layout that keeps the format fails here."""
    kv: KeyValue = RocksKV(str(tmp_path / "db")) if engine == "rocksdb" else MemoryKV()
    states = {
        "plain": live("plain", T0 + 1000),
        "floor": live("floor", T0 + 1000)._replace(ttl_source="org", previous_deleted_at=T0 - 7),
        "lives": live("lives", T0 + 1000)._replace(held_lives=((1, 2, 1, "org", None),)),
    }
    store = PartitionStore(kv, grace_ms=GRACE)
    assert store.meta("format") == STORE_FORMAT
    store.write([(None, s) for s in states.values()], now_ms=T0)
    for rid, old in _OLD_LAYOUTS.items():
        assert kv.multi_get([b"s" + ident(rid).key.encode()]) == [old]
    kv.apply({}, [b"~format"])  # as an earlier version left it
    again = PartitionStore(kv, grace_ms=GRACE)
    assert again.meta("format") == STORE_FORMAT
    assert {s.identity.record_id: s for s in again.items()} == states
    assert again.counts.pending_total == 3
    kv.close()


def test_a_store_of_a_newer_format_is_refused_before_anything_of_it_is_read() -> None:
    """A rollback: this version opened a store a newer one wrote and read it with its own
    codec (an older version raised UnicodeDecodeError at the first record with a tail it
    did not know, at an event or a timer, stopping the service each time). Now opening it
    raises NewerStoreError, before its meta is read (a newer meta may not be 8 bytes)."""
    kv = MemoryKV()
    newer = struct.pack(">q", STORE_FORMAT + 1)
    kv.apply({b"~format": newer, b"~never": b"\x01", b"s" + b"x": b"\xfd?"}, [])
    with pytest.raises(NewerStoreError, match=f"store format {STORE_FORMAT + 1}") as caught:
        PartitionStore(kv)
    assert caught.value.found == STORE_FORMAT + 1
    assert pickle.loads(pickle.dumps(caught.value)).found == STORE_FORMAT + 1
    assert kv.multi_get([b"~format"]) == [newer]  # left as it was


def test_a_store_of_a_newer_format_is_moved_aside_and_opened_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The restore then fills the empty store from the changelog; the newer store stays,
    renamed ``<dir>.newer-<UTC time>``, for a roll forward or a person; one warning."""
    path = str(tmp_path / "conversations-0")
    kv = RocksKV(path)
    kv.apply({b"~format": struct.pack(">q", STORE_FORMAT + 1), b"sk": b"\xfd"}, [])
    kv.close()
    with caplog.at_level(logging.WARNING, "stream_expiry.state.restore"):
        store = _open_store(path, GRACE)
    try:
        assert list(store.items()) == []
        assert store.meta("format") == STORE_FORMAT
    finally:
        store.close()
    (aside,) = [e.path for e in os.scandir(tmp_path) if ".newer-" in e.name]
    assert aside.startswith(path + ".newer-")
    (said,) = [r.getMessage() for r in caplog.records]
    assert "newer version" in said
    assert aside in said
    assert "restoring it from the changelog" in said


class _SeekLog(MemoryKV):
    """The in-memory engine, noting where each scan starts."""

    def __init__(self) -> None:
        super().__init__()
        self.lows: list[bytes] = []

    def scan(self, low: bytes, high: bytes) -> Iterator[tuple[bytes, bytes]]:
        self.lows.append(low)
        return super().scan(low, high)


def test_index_seeks_start_past_the_entries_deleted_before_the_last_one() -> None:
    """RocksDB's seek from an index's start walks every entry deleted since the memtable
    was flushed (300,000 fired timers: 130 ms for one gauge reading, the loop blocked):
    the seeks for the first due time and for markers to prune start from what the last
    seek found."""
    kv = _SeekLog()
    store = PartitionStore(kv, grace_ms=GRACE)
    records = [live(f"r{i}", T0 + i) for i in range(100)]
    store.write([(None, s) for s in records], now_ms=T0)
    assert store.first_due_ms() == T0
    fired = [(s, s._replace(deleted_at=T0 + 50)) for s in records[:50]]
    store.write(fired, now_ms=T0 + 50)
    assert store.first_due_ms() == T0 + 50
    assert store.first_due_ms() == T0 + 50
    assert kv.lows[-1] >= b"x" + struct.pack(">Q", T0 + 50 + (1 << 63))
    assert [s.expires_at for s in _due_states(store, -(2**62), T0 + 52)] == [T0 + 50, T0 + 51]
    assert kv.lows[-1] >= b"x" + struct.pack(">Q", T0 + 50 + (1 << 63))
    # Markers: the first prune takes those due; the next starts past them.
    marker_at = T0 + 51 + GRACE  # deleted at T0 + 50, so from T0 + 51, and the grace
    assert store.prune(marker_at, budget=20) == 20
    assert store.prune(marker_at, budget=1000) == 30
    assert store.prune(marker_at + 1) == 0
    assert kv.lows[-1] >= b"m" + struct.pack(">Q", marker_at + 1 + (1 << 63))


@pytest.mark.parametrize("engine", ["rocksdb", "memory"])
@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.integers(0, 9), st.integers(0, 100), st.booleans()),
            st.tuples(st.just("first"), st.just(0), st.just(0), st.just(False)),
            st.tuples(st.just("prune"), st.just(0), st.integers(0, 300), st.booleans()),
        ),
        max_size=40,
    )
)
def test_first_due_and_prune_agree_with_a_full_scan_whatever_came_before(
    engine: str, ops: list[tuple[str, int, int, bool]]
) -> None:
    """The floors are a shortcut only: what the seeks find is what a scan from each
    index's start finds, after any mix of writes, deletions, readings and prunes."""
    with tempfile.TemporaryDirectory() as tmp:
        kv = RocksKV(os.path.join(tmp, "db")) if engine == "rocksdb" else MemoryKV()
        store = PartitionStore(kv, grace_ms=5)
        current: dict[str, Stamp] = {}
        for op, n, at, flag in ops:
            if op == "write":
                new = live(f"r{n}", T0 + at)
                if flag:
                    new = new._replace(deleted_at=T0 + at)
                store.write([(current.get(new.identity.key), new)], now_ms=T0 + at)
                current[new.identity.key] = new
            elif op == "first":
                due = [k for k, _ in kv.scan(b"x", b"x\xff")]
                want = int(struct.unpack_from(">Q", due[0], 1)[0]) - (1 << 63) if due else None
                assert store.first_due_ms() == want
            else:
                before = sum(1 for _ in kv.scan(b"m", b"m\xff"))
                store.prune(T0 + at, budget=2 if flag else 1000)
                for key, _ in kv.scan(b"m", b"m\xff"):
                    at_ms = int(struct.unpack_from(">Q", key, 1)[0]) - (1 << 63)
                    assert flag or at_ms > T0 + at, "a marker due was left"
                assert sum(1 for _ in kv.scan(b"m", b"m\xff")) <= before
                current = {k: s for k, s in current.items() if store.get(k) is not None}
        due = [k for k, _ in kv.scan(b"x", b"x\xff")]
        want = int(struct.unpack_from(">Q", due[0], 1)[0]) - (1 << 63) if due else None
        assert store.first_due_ms() == want
        store.close()


@pytest.mark.parametrize("engine", ["rocksdb", "memory"])
def test_where_an_erasure_was_read_is_kept_beside_its_marker_and_goes_with_it(
    engine: str, tmp_path: Path
) -> None:
    """Where the erasure request that left a marker was read is an entry of its own (``e``),
    written with the marker and by a restore: the marker's value is the one a store of
    format 1 holds (an older version reads it unchanged, and skips the entry), the entry
    counts only for that erasure (an entry of another erasure, an older version's marker
    after a rollback, is none), survives a reopen, and goes when the marker is pruned."""
    kv: KeyValue = RocksKV(str(tmp_path / "db")) if engine == "rocksdb" else MemoryKV()
    store = PartitionStore(kv, grace_ms=GRACE)
    a = live("a", T0 + 5)
    store.write([(None, a)], now_ms=T0)
    assert store.erasure_read_at(a._replace(deleted_at=T0 + 4, erase_at=T0 + 4)) is None
    erased = a._replace(deleted_at=T0 + 4, erase_at=T0 + 4)
    read = {erased.identity.key: (T0 + 4, (12, T0 + 3))}
    store.write([(a, erased)], now_ms=T0 + 10, erasures_read=read)
    assert store.meta("format") == STORE_FORMAT == 1
    raw = kv.multi_get([b"s" + erased.identity.key.encode()])[0]
    assert raw == encode_state(erased, T0 + 10 + GRACE)  # the marker as before
    b = ident("b").key.encode()
    row = (b, "conversation", T0, T0 + 5, 1000, "default", T0 + 4, T0 + 4, None, None, (), None)
    store.write_restored([row], now_ms=T0 + 10, meta={}, erasures_read={b: (T0 + 4, (7, None))})
    if engine == "rocksdb":
        store.close()
        kv = RocksKV(str(tmp_path / "db"))
    store = PartitionStore(kv, grace_ms=GRACE)  # reopened: it finds it has such entries
    assert store.erasure_read_at(erased) == (12, T0 + 3)
    assert store.erasure_read_at(erased._replace(erase_at=T0 + 3)) is None  # another erasure
    restored = store.get(b.decode())
    assert restored is not None
    assert store.erasure_read_at(restored) == (7, None)
    assert store.prune(T0 + 10 + GRACE) == 2
    assert [k for k, _ in kv.scan(b"e", b"e\xff")] == []
    assert store.erasure_read_at(erased) is None
    store.close()

"""A store keeps the life an erasure read late let begin before the last life's expiry.

The service (engine ``_erased_at``): a conversation created at 0 (expires at 20 s) is
tombstoned at its expiry (``ttl``); an erasure dated 5 s and a create dated 8 s, both read
after that, end the first life at 5 s and start the next one at 8 s, as read in time. So
the next life is created before the first life's expiry, and a store that took every row
created before that expiry for the first life's deleted the next life's row when the first
life's ``ttl`` tombstone came after its stamp (or again, re-delivered), and dropped its
stamp when that tombstone came first: a live record the store never held.

The messages are the service's own: the processor's decisions, written by the outbox's
code (``Outbox._put_tombstones``: the tombstone event and the null with their headers),
read by the sink in every order Kafka may deliver the two topics in.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

from stream_expiry import codec, model
from stream_expiry.outbox import Outbox
from stream_expiry.sinks._logic import ended_by
from stream_expiry.sinks._messages import (
    Change,
    NullChange,
    StampChange,
    TombstoneChange,
    decode_stamped,
    decode_tombstone,
)
from stream_expiry.sinks.store import MemoryStore
from stream_expiry.state import Effects, MemoryKV, PartitionStore
from tests.unit.fake_batches import AppendsLikeBatches
from tests.unit.test_engine import BASE, ev
from tests.unit.test_restore_model import _Stepper, harness

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.unit.test_engine import Harness

SOURCE = codec.source_headers("in", 0)
STAMPED, TOMBS = ("expiry.stamped", 0), ("expiry.tombstones", 0)


class _Written(AppendsLikeBatches):
    """What the outbox adds to its batches, per topic, in order (``_Batches.try_add``)."""

    def __init__(self) -> None:
        self.msgs: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, Any]]] = {
            STAMPED: [],
            TOMBS: [],
        }
        self.after_tombstones = False
        self.held_keys: list[bytes] = []

    def try_add(
        self,
        slot: tuple[str, int],
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: list[tuple[str, bytes]],
    ) -> bool:
        self.msgs[slot].append((key, value, list(headers)))
        return True


def _write(out: _Written, effects: Effects) -> None:
    """The messages the service publishes for ``effects``: stamps as the outbox encodes
    them, tombstone events and nulls by the outbox's own code."""
    for stamps, tombstones in effects.runs():
        for state, data in stamps:
            key = state.identity.key.encode()
            out.try_add(STAMPED, key, model.encode_stamp(state, data), None, SOURCE)
        if tombstones:
            put = Outbox._put_tombstones
            anyio.run(put, None, out, tombstones, TOMBS, STAMPED, SOURCE)  # type: ignore[arg-type]


Stamped = list[StampChange | NullChange]


def _read(out: _Written) -> tuple[Stamped, list[TombstoneChange]]:
    """What the outbox wrote, decoded as the sink decodes it (with the stamps' offsets)."""
    stamped = [
        decode_stamped(k, v, 0, n, headers) for n, (k, v, headers) in enumerate(out.msgs[STAMPED])
    ]
    tombs = [decode_tombstone(k, v, headers) for k, v, headers in out.msgs[TOMBS]]
    return stamped, tombs


def erased_late(record: str, dated_ms: int) -> tuple[Harness, _Written]:
    """The late erasure's scenario (the service's own messages): conversation ``record``
    created at 0 s, tombstoned at its expiry (20 s), then an erasure dated ``dated_ms``
    read at 21 s. The harness, to go on with, and what it wrote."""
    h = harness(PartitionStore(MemoryKV()), 0)
    out = _Written()
    _write(out, h.process(ev("conversation", record, "create", 0)))
    _write(out, _Stepper(h).step_advance(20_000))  # the life's ttl tombstone and null
    h.now = 21_000
    _write(out, h.process(ev("conversation", record, "delete", dated_ms)))  # read late
    return h, out


def _service_messages(*, to_the_end: bool = False) -> tuple[Stamped, list[TombstoneChange]]:
    """The record's messages on ``expiry.stamped`` and ``expiry.tombstones``, up to the
    next life's stamp (``to_the_end``: and its expiry's tombstone and null)."""
    h, out = erased_late("a", 5_000)
    _write(out, h.process(ev("conversation", "a", "create", 8_000)))  # read late too
    if to_the_end:
        _write(out, _Stepper(h).step_advance(28_000))
    return _read(out)


def _apply(batches: Sequence[Sequence[Change]]) -> MemoryStore:
    ids = (f"r{n}" for n in itertools.count())
    store = MemoryStore("m", new_id=lambda: next(ids))

    async def run() -> None:
        for n, batch in enumerate(batches):
            await store.apply(list(batch), now_ms=BASE + 22_000 + n)

    anyio.run(run)
    return store


def test_the_service_starts_the_next_life_before_the_first_lifes_expiry() -> None:
    """The premise: what the service publishes for the scenario."""
    stamped, tombs = _service_messages()
    lives = [(c.created_at, c.expires_at) for c in stamped if isinstance(c, StampChange)]
    assert lives == [(BASE, BASE + 20_000), (BASE + 8_000, BASE + 28_000)]
    assert [(t.reason, t.created_at, t.deleted_at) for t in tombs] == [
        ("ttl", BASE, BASE + 19_999),
        ("explicit", None, BASE + 5_000),
    ]


def _orders() -> list[tuple[str, list[list[Change]], int]]:
    """How the store may read the messages: (name, batches, the ``rows_deleted`` of the
    first life's receipt: 0 when its tombstone came before its stamp, which then stays
    out, as for any life)."""
    read = _service_messages()
    stamped: list[Change] = list(read[0])
    tombs: list[Change] = list(read[1])
    ttl, erasure = tombs
    before, nxt = stamped[:-1], stamped[-1]  # the next life's stamp is the last
    return [
        ("stamps first", [stamped, tombs], 1),
        ("tombstones first", [tombs, stamped], 0),
        ("ttl tombstone between", [before, [ttl], [nxt], [erasure]], 1),
        ("all in one batch, tombstones last", [[*stamped, *tombs]], 1),
        ("all in one batch, tombstones first", [[*tombs, *stamped]], 0),
        ("re-delivered", [stamped, tombs, tombs, [ttl]], 1),
        ("re-delivered after a rewind", [stamped, tombs, stamped, tombs], 1),
    ]


@pytest.mark.parametrize(("order", "batches", "rows"), _orders(), ids=[o for o, _, _ in _orders()])
def test_the_first_lifes_tombstone_never_deletes_nor_drops_the_next_life(
    order: str, batches: list[list[Change]], rows: int
) -> None:
    """Whatever the order the store reads the two topics in, and read again: the next
    life's row stays (its own tombstone has not come), and the first life has its one
    ``ttl`` receipt; the erasure, which names no life, is covered by it."""
    store = _apply(batches)
    a = ev("conversation", "a", "create", 0).identity
    row = store.rows.get(a)
    assert row is not None, f"{order}: the next life's row is gone"
    assert (row.created_at, row.expires_at) == (BASE + 8_000, BASE + 28_000)
    assert [(r.reason, r.created_at, r.rows_deleted) for r in store.outbox] == [
        ("ttl", BASE, rows)
    ], order


def _moved_back(*, erased_late: bool = False) -> tuple[Stamped, list[TombstoneChange]]:
    """A conversation created at 5 s, then a create dated 1 s (read late: the life's
    creation moves back, its stamps say 5 s, then 1 s), expired at 21 s. ``erased_late``:
    then an erasure dated 3 s and a create dated 4 s, both read after that expiry: the next
    life begins at 4 s (after the erasure, ``previous_deleted_at`` 3 s), before the
    first stamp's creation and the first life's expiry, and expires at 24 s."""
    return _read(_moved_back_written(erased_late=erased_late))


def _moved_back_written(*, erased_late: bool = False) -> _Written:
    """:func:`_moved_back`'s messages as the outbox wrote them."""
    h = harness(PartitionStore(MemoryKV()), 0)
    out = _Written()
    _write(out, h.process(ev("conversation", "a", "create", 5_000)))
    _write(out, h.process(ev("conversation", "a", "create", 1_000)))
    _write(out, _Stepper(h).step_advance(21_000))
    if erased_late:
        h.now = 22_000
        _write(out, h.process(ev("conversation", "a", "delete", 3_000)))
        _write(out, h.process(ev("conversation", "a", "create", 4_000)))
        _write(out, _Stepper(h).step_advance(24_000))
    return out


def _interleavings(a: Sequence[Change], b: Sequence[Change]) -> list[list[Change]]:
    """Every order Kafka may deliver two topics in: each topic's own order kept."""
    if not a or not b:
        return [[*a, *b]]
    return [[a[0], *rest] for rest in _interleavings(a[1:], b)] + [
        [b[0], *rest] for rest in _interleavings(a, b[1:])
    ]


def _reads(stamped: Sequence[Change], tombs: Sequence[Change]) -> list[list[list[Change]]]:
    """Each interleaving as one batch a message, and as one batch of all."""
    reads: list[list[list[Change]]] = []
    for order in _interleavings(stamped, tombs):
        reads += [[[c] for c in order], [order]]
    return reads


def _swept_after(store: MemoryStore) -> list[Any]:
    """What a sweep long after the scenario writes (the receipts of deletions left
    waiting for a tombstone, had any been)."""

    async def run() -> list[Any]:
        page = await store.sweep(cutoff_ms=BASE + 10**9, now_ms=BASE + 10**9)
        return page.plan.receipts

    return anyio.run(run)


def test_the_service_stamps_a_moved_back_life_and_the_next_as_the_rule_needs() -> None:
    """The premise of the rule (``TombstoneChange.window``): a life's stamps from before
    its creation moved back have a later ``created_at`` than its ``ttl`` tombstone names,
    before its expiry, and no ``previous_deleted_at``; the next life, begun after an
    erasure read late, is created before both and says where the first life ended."""
    stamped, tombs = _moved_back(erased_late=True)
    said = [
        (c.created_at, c.expires_at, c.previous_deleted_at)
        for c in stamped
        if isinstance(c, StampChange)
    ]
    assert said == [
        (BASE + 5_000, BASE + 25_000, None),
        (BASE + 1_000, BASE + 21_000, None),
        (BASE + 4_000, BASE + 24_000, BASE + 3_000),
    ]
    assert [(t.reason, t.created_at, t.window) for t in tombs] == [
        ("ttl", BASE + 1_000, (BASE + 21_000, BASE + 1_000)),
        ("explicit", None, None),
        ("ttl", BASE + 4_000, (BASE + 24_000, BASE + 4_000)),
    ]


@pytest.mark.parametrize("batches", _reads(*_moved_back()))
def test_a_moved_back_lifes_tombstone_ends_its_stamps_from_before_the_move(
    batches: list[list[Change]],
) -> None:
    """Whatever the order, nothing of the life is left, and it has one ``ttl`` receipt:
    of its row when the store held one (``rows_deleted`` 1), else of nothing (the
    tombstone came first, and its stamps stay out). The tombstone, bounded by its
    ``created_at``, left the row of the stamp of 5 s: a receipt of nothing, then the
    null deleted that row and its deletion waited for a tombstone that had come (the
    sweep's second receipt)."""
    store = _apply(batches)
    assert store.rows == {}
    read = [c for b in batches for c in b]
    rows = 0 if isinstance(read[0], TombstoneChange) else 1  # else the stamp of 5 s came first
    assert [(r.reason, r.created_at, r.rows_deleted) for r in store.outbox] == [
        ("ttl", BASE + 1_000, rows)
    ]
    assert [m.pending for m in store.markers.values()] == [()]
    assert _swept_after(store) == []


def _moved_back_twice() -> tuple[Stamped, list[TombstoneChange]]:
    """A conversation created at 30 s (expiry 50 s), then a create dated 15 s read late
    (the life moves back: expiry 35 s, after 30 s), then one dated 5 s, read later still:
    its life would end at 25 s, after 15 s but before 30 s, the creation the first stamp
    said. Everything then expires."""
    h = harness(PartitionStore(MemoryKV()), 0)
    out = _Written()
    for created in (30_000, 15_000, 5_000):
        _write(out, h.process(ev("conversation", "a", "create", created)))
    _write(out, _Stepper(h).step_advance(60_000))
    return _read(out)


def test_a_life_moved_back_twice_still_ends_after_its_first_stamps_creation() -> None:
    """The service (the engine's ``_backdate``): the create of 5 s is an earlier life's,
    and moves nothing; the life ends at 35 s, after every stamp of it."""
    stamped, tombs = _moved_back_twice()
    said = [(c.created_at, c.expires_at) for c in stamped if isinstance(c, StampChange)]
    assert said == [(BASE + 30_000, BASE + 50_000), (BASE + 15_000, BASE + 35_000)]
    assert [(t.reason, t.created_at, t.window) for t in tombs] == [
        ("ttl", BASE + 15_000, (BASE + 35_000, BASE + 15_000))
    ]


@pytest.mark.parametrize("batches", _reads(*_moved_back_twice()))
def test_a_life_moved_back_twice_has_one_receipt_whatever_the_order(
    batches: list[list[Change]],
) -> None:
    """Whatever the order the store reads the two topics in, nothing of the life is left,
    it has one ``ttl`` receipt, and nothing waits for a sweep. Moved back to 5 s (expiry
    25 s), the tombstone left the row of the stamp of 30 s when read after it: a receipt
    of nothing, then the null deleted the row, its deletion waiting for a tombstone that
    had come, and the sweep wrote a second receipt (4 of the 10 reads)."""
    store = _apply(batches)
    assert store.rows == {}
    read = [c for b in batches for c in b]
    rows = 0 if isinstance(read[0], TombstoneChange) else 1
    assert [(r.reason, r.rows_deleted) for r in store.outbox] == [("ttl", rows)]
    assert [m.pending for m in store.markers.values()] == [()]
    assert _swept_after(store) == []


@pytest.mark.parametrize("batches", _reads(*_moved_back(erased_late=True)))
def test_a_moved_back_lifes_tombstone_ends_it_and_never_the_next_life(
    batches: list[list[Change]],
) -> None:
    """With the next life begun after an erasure read late, before the moved-back life's
    expiry and its first stamp's creation: each life has one ``ttl`` receipt (the
    erasure, which names no life, is covered), nothing is left waiting, and the next
    life's row stays until its own tombstone and null come."""
    store = _apply(batches)
    assert store.rows == {}
    said = sorted((r.reason, r.created_at) for r in store.outbox)
    assert said == [("ttl", BASE + 1_000), ("ttl", BASE + 4_000)]
    assert [m.pending for m in store.markers.values()] == [()]
    assert _swept_after(store) == []


def test_the_next_life_stays_while_the_moved_back_lifes_tombstone_comes_again() -> None:
    """The next life (created at 4 s, begun after the erasure at 3 s) read before the
    moved-back life's ``ttl`` tombstone, which comes again, alone (a store's ``take``),
    and its stamp again too: its row stays."""
    stamped, (ttl, erasure, _) = _moved_back(erased_late=True)
    s1, s2, n1, n_erased, s3, _ = stamped
    read: list[Change] = [s1, s2, n1, n_erased, s3]
    orders: list[list[list[Change]]] = [
        [read, [ttl, erasure]],
        [read, [ttl, erasure], [ttl], [s3], [ttl]],
    ]
    for batches in orders:
        store = _apply(batches)
        row = store.rows.get(s3.identity)
        assert row is not None, batches
        assert (row.created_at, row.previous_deleted_at) == (BASE + 4_000, BASE + 3_000)


@pytest.mark.parametrize("tombstones_first", [False, True])
def test_the_next_lifes_own_tombstone_still_ends_it(tombstones_first: bool) -> None:
    """At the next life's expiry its ``ttl`` tombstone and null end it, whatever the
    order: no row is left, and each life has its ``ttl`` receipt."""
    stamped, tombs = _service_messages(to_the_end=True)
    assert [(t.reason, t.created_at) for t in tombs][-1] == ("ttl", BASE + 8_000)
    batches: list[list[Change]] = [list(stamped), list(tombs)]
    store = _apply(batches[::-1] if tombstones_first else batches)
    assert store.rows == {}
    assert sorted((r.reason, r.created_at) for r in store.outbox) == [
        ("ttl", BASE),
        ("ttl", BASE + 8_000),
    ]


def _example() -> Any:
    """examples/tombstone_consumer.py, loaded as a module."""
    path = Path(__file__).resolve().parents[2] / "examples" / "tombstone_consumer.py"
    spec = importlib.util.spec_from_file_location("tombstone_consumer", path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_the_example_consumer_deletes_the_lives_the_stores_end() -> None:
    """The example's store, holding a life per stamp of the moved-back life and of the next
    life (begun after an erasure read late, created before both the first stamp and the
    first life's expiry), with each stamp's ``previous_deleted_at``: after each tombstone,
    the lives left are those no tombstone so far ends by the stores' rule
    (``ended_by``). Bounded by the ``ttl`` tombstone's ``created_at``, it kept the life of
    the first stamp (5 s) for good: your store gets no null."""
    example = _example()
    out = _moved_back_written(erased_late=True)
    stamps = [c for c in _read(out)[0] if isinstance(c, StampChange)]
    db = example.open_store(":memory:")
    ids = stamps[0].identity.parts()
    held = [(s.created_at, s.previous_deleted_at) for s in stamps]
    db.executemany(
        "INSERT INTO lives (org, bot, env, category, record_id, created_at, data, "
        "previous_deleted_at) VALUES (?, ?, ?, ?, ?, ?, 'payload', ?)",
        [(*ids, *life) for life in held],
    )
    read: list[TombstoneChange] = []
    left = []
    for key, value, headers in out.msgs[TOMBS]:
        assert key is not None
        assert value is not None
        example.apply(db, key, value, headers)
        read.append(decode_tombstone(key, value, headers))
        kept = {c for c, p in held if not any(ended_by(c, p, t.bound, t.window) for t in read)}
        have = {c for (c,) in db.execute("SELECT created_at FROM lives")}
        assert have == kept, read[-1]
        left.append(sorted(have))
    assert left == [[BASE + 4_000], [BASE + 4_000], []]


def test_the_example_consumer_ends_the_same_lives_as_the_stores() -> None:
    """examples/tombstone_consumer.py (the README's rule for a store of your own) deletes
    the lives created at or before the time it computes; for each tombstone of the
    scenario, the stores' bound less one. It took the ``ttl`` tombstone's header (a
    millisecond before the expiry), and deleted the next life."""
    example = _example()
    _h, out = erased_late("a", 5_000)
    ends = []
    for key, value, headers in out.msgs[TOMBS]:
        assert value is not None
        text = {name: v.decode() for name, v in headers}
        ended = example.last_creation_ended(orjson.loads(value), text)
        ends.append((ended, decode_tombstone(key, value, headers).bound - 1))
    assert ends == [(BASE, BASE), (BASE + 5_000, BASE + 5_000)]


def test_the_example_consumer_says_what_each_tombstone_did() -> None:
    """examples/tombstone_consumer.py printed nothing: a user who ran it as the README says,
    to watch the tombstones, saw no line (a user trial). Each tombstone it reads is now a
    line: its key and reason, the rows it deleted and the receipt; read again, that its
    receipt stands."""
    example = _example()
    db = example.open_store(":memory:")
    created = BASE + 1_000
    db.execute(
        "INSERT INTO lives (org, bot, env, category, record_id, created_at, data, "
        "previous_deleted_at) VALUES ('acme', '_', 'live', 'error', 'e-1', ?, 'x', NULL)",
        (created,),
    )
    key = b"acme/_/live/error/e-1"
    body = {
        "org": "acme", "bot": "_", "env": "live", "category": "error", "record_id": "e-1",
        "created_at": example.rfc3339(created), "expires_at": example.rfc3339(created + 30_000),
        "emitted_at": example.rfc3339(created + 30_004), "reason": "ttl", "ttl_seconds": 30,
        "ttl_source": "default",
    }  # fmt: skip
    value = orjson.dumps(body)
    headers = [("expiry-deleted-at", str(created + 29_999).encode())]
    first = example.apply(db, key, value, headers)
    (receipt_id,) = db.execute("SELECT receipt_id FROM receipts").fetchone()
    said = f"acme/_/live/error/e-1: ttl tombstone emitted {body['emitted_at']}"
    assert first == f"{said}: 1 row(s) deleted, receipt {receipt_id}"
    assert db.execute("SELECT count(*) FROM lives").fetchone() == (0,)
    assert example.apply(db, key, value, headers) == f"{said}: read again, its receipt stands"


def test_the_example_consumer_stops_on_ctrl_c_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C, the way to stop the example, ended it with two tracebacks (CancelledError,
    KeyboardInterrupt; a user trial): it exits 130 now, as every command does, after run()
    closed its clients."""
    example = _example()

    def interrupted(main: Any) -> None:
        main.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(example.asyncio, "run", interrupted)
    monkeypatch.setattr(
        "sys.argv", ["tombstone_consumer.py", "--bootstrap-servers", "h:1", "--db", ":memory:"]
    )
    with pytest.raises((SystemExit, KeyboardInterrupt)) as stopped:  # it was the latter
        example.main()
    assert isinstance(stopped.value, SystemExit), stopped.value
    assert stopped.value.code == 130

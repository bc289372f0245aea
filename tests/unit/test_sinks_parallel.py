"""A batch split into parallel transactions (``Store.parallel``): the same end state as one
transaction, the transactions really at the same time, each record's changes in one of
them, and a failed part that a second application of the batch repairs.

The store layer alone, on the in-memory reference store; tests/integration/
test_sinks_stores.py runs the same comparison on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from stream_expiry.errors import StoreError
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.sinks._logic import Plan, merge_plans
from stream_expiry.sinks._messages import Change, NullChange, decode_stamped, decode_tombstone
from stream_expiry.sinks.store import MemoryStore, StoreTransaction

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

T0 = 1_767_225_600_000
MIN = 60_000


def ident(n: int) -> Identity:
    return Identity("acme", "_", "live", "conversation", f"r{n}")


def put(s: Stamp, offset: int) -> Change:
    key = s.identity.key.encode()
    return decode_stamped(key, encode_stamp(s, {"n": offset}), partition=0, offset=offset)


def kill(s: Stamp) -> Change:
    return decode_tombstone(
        s.identity.key.encode(), encode_tombstone(s, reason="ttl", emitted_at=T0 + 40 * MIN)
    )


def random_batch(rng: random.Random, ids: list[Identity], size: int, first: int) -> list[Change]:
    """Stamps, tombstones and nulls over ``ids``, several per record in one batch."""
    out: list[Change] = []
    for n in range(first, first + size):
        i = rng.choice(ids)
        s = Stamp(i, T0 + rng.randint(0, 20) * MIN, T0 + 40 * MIN, 20 * MIN, "org")
        roll = rng.random()
        if roll < 0.5:
            out.append(put(s, n))
        elif roll < 0.85:
            out.append(kill(s))
        else:
            out.append(NullChange(i, 0, n))
    return out


def test_merged_plans_hold_every_write_in_order_and_sum_the_counts() -> None:
    a, b = ident(1), ident(2)
    one = Plan(deletes=[a], written=2, stale=1, deleted=1, swept=0)
    two = Plan(deletes=[b], written=1, stale=0, deleted=3, swept=4)
    merged = merge_plans([one, two])
    assert merged.deletes == [a, b]
    assert (merged.written, merged.stale, merged.deleted, merged.swept) == (3, 1, 4, 4)
    assert merge_plans([]) == Plan()


@pytest.mark.asyncio
@pytest.mark.parametrize("parallel", [2, 3])
async def test_a_split_batch_ends_as_one_transaction_would(parallel: int) -> None:
    rng = random.Random(parallel)
    ids = [ident(n) for n in range(300)]
    split, whole = MemoryStore("m"), MemoryStore("m")
    split.parallel = parallel
    offset = 0
    for step in range(8):
        batch = random_batch(rng, ids, 600, offset)
        offset += 600
        a = await split.apply(batch, now_ms=T0 + step * MIN)
        b = await whole.apply(batch, now_ms=T0 + step * MIN)
        assert (a.written, a.deleted, a.stale, len(a.receipts)) == (
            b.written, b.deleted, b.stale, len(b.receipts),
        )  # fmt: skip
        assert sorted(r.identity for r in a.receipts) == sorted(r.identity for r in b.receipts)
    assert split.rows == whole.rows
    assert split.markers == whole.markers
    assert len(split.outbox) == len(whole.outbox)


class BarrierStore(MemoryStore):
    """Each transaction waits until ``parallel`` of them have begun: a store that ran them
    one after the other would wait for ever (the test's deadline fails it)."""

    def __init__(self, parallel: int) -> None:
        super().__init__("barrier")
        self.parallel = parallel
        self.barrier = asyncio.Barrier(parallel)
        self.batches: list[list[Identity]] = []

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[StoreTransaction]:
        await self.barrier.wait()
        async with super()._transaction() as tx:
            yield tx


@pytest.mark.asyncio
async def test_the_parts_of_a_batch_run_at_the_same_time_each_with_whole_records() -> None:
    store = BarrierStore(2)
    seen: list[set[Identity]] = []
    applied = store._apply_one

    async def noting(changes: list[Change], **kw: object) -> Plan:
        seen.append({c.identity for c in changes})
        return await applied(changes, **kw)  # type: ignore[arg-type]

    store._apply_one = noting  # type: ignore[method-assign,assignment]
    rng = random.Random(7)
    ids = [ident(n) for n in range(50)]
    batch = random_batch(rng, ids, 400, 0)
    with anyio.fail_after(5):
        await store.apply(batch, now_ms=T0)
    assert len(seen) == 2
    assert not seen[0] & seen[1]  # a record's changes are in one part only
    assert seen[0] | seen[1] == {c.identity for c in batch}


@pytest.mark.asyncio
async def test_a_small_batch_is_one_transaction() -> None:
    store = MemoryStore("m")
    store.parallel = 2
    calls = 0
    applied = store._apply_one

    async def counting(changes: list[Change], **kw: object) -> Plan:
        nonlocal calls
        calls += 1
        return await applied(changes, **kw)  # type: ignore[arg-type]

    store._apply_one = counting  # type: ignore[method-assign,assignment]
    await store.apply(random_batch(random.Random(1), [ident(1), ident(2)], 150, 0), now_ms=T0)
    assert calls == 1


class MarkCountingStore(MemoryStore):
    """Counts the receipt ids each transaction marks published."""

    def __init__(self) -> None:
        super().__init__("m")
        self.marked: list[str] = []

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[StoreTransaction]:
        async with super()._transaction() as tx:
            mark = tx.mark_published

            async def counting(receipt_ids: Sequence[str], now_ms: int) -> None:
                self.marked.extend(receipt_ids)
                await mark(receipt_ids, now_ms)

            tx.mark_published = counting  # type: ignore[method-assign]
            yield tx


@pytest.mark.asyncio
async def test_published_receipts_are_marked_once_in_a_split_batch() -> None:
    store = MarkCountingStore()
    store.parallel = 2
    ids = [ident(n) for n in range(100)]
    lives = [Stamp(i, T0, T0 + MIN, MIN, "org") for i in ids]
    await store.apply([put(s, n) for n, s in enumerate(lives)], now_ms=T0)
    first = await store.apply([kill(s) for s in lives], now_ms=T0 + MIN)
    assert len(first.receipts) == 100
    ids_published = [r.receipt_id for r in first.receipts]
    more = [Stamp(ident(n), T0 + 2 * MIN, T0 + 3 * MIN, MIN, "org") for n in range(100, 400)]
    await store.apply([put(s, n) for n, s in enumerate(more)], now_ms=T0, published=ids_published)
    assert sorted(store.published) == sorted(ids_published)
    assert sorted(store.marked) == sorted(ids_published)  # by one of the parts only
    assert await store.pending_receipts(1000) == []


class FailingStore(MemoryStore):
    """Fails the transaction that holds ``doomed``, once; the others commit."""

    def __init__(self, doomed: Identity) -> None:
        super().__init__("failing")
        self.parallel = 2
        self.doomed: Identity | None = doomed

    async def _apply_one(self, changes, *, now_ms, published, living):  # type: ignore[no-untyped-def]
        if self.doomed is not None and any(c.identity == self.doomed for c in changes):
            self.doomed = None
            await anyio.lowlevel.checkpoint()  # the other part commits first
            raise StoreError("planted failure")
        return await super()._apply_one(changes, now_ms=now_ms, published=published, living=living)


@pytest.mark.asyncio
async def test_a_failed_part_fails_the_batch_and_applying_it_again_repairs_it() -> None:
    ids = [ident(n) for n in range(200)]
    lives = [Stamp(i, T0, T0 + MIN, MIN, "org") for i in ids]
    batch = [put(s, n) for n, s in enumerate(lives)] + [kill(s) for s in lives[:100]]
    store, reference = FailingStore(ids[0]), MemoryStore("failing")
    with pytest.raises(StoreError, match="planted"):
        await store.apply(batch, now_ms=T0)
    assert 0 < len(store.rows) + len(store.markers) < 200  # the other part committed
    await store.apply(batch, now_ms=T0)  # the sink reads the batch again
    await reference.apply(batch, now_ms=T0)
    assert store.rows == reference.rows
    assert store.markers == reference.markers
    assert len(store.outbox) == len(reference.outbox) == 100  # one receipt per deletion

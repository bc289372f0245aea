"""Property tests of a sink's planning through :meth:`MemoryStore.apply`, fed as Kafka feeds it.

A few records live service-like histories (lives created and stamped, touched, ended by
their expiry or by an erasure, kept by a legal hold while the record comes back, erasures
read late or of records never seen), each written as the service writes it
(``outbox._put_tombstones``: the tombstone event with its ``expiry-deleted-at`` header,
then the null on ``expiry.stamped`` with ``expiry-deleted-at`` and ``expiry-reason``; an
earlier life a hold kept, and an erasure of lives already ended, get no null). The sink
then reads them as Kafka delivers them: ``expiry.stamped`` and ``expiry.tombstones``
interleaved in any way, each partition of each in order, cut into batches of any size,
with crashes that read every partition again from any earlier position.

Properties (README "Downstream stores", "What a store remembers"; sinks/_logic.py):

1. the end state does not depend on how the messages were cut into batches;
2. reading any part again changes nothing and writes no receipt;
3. a store never deletes the row of a life no message delivered so far has ended, and
   never holds a row of a life once a message ending it has been delivered;
4. at the end, exactly the records whose last life still runs have a row: that life's;
5. one receipt per ended life, with its tombstone's reason and ``emitted_at``; one
   (``rows_deleted`` 0) for an erasure of a record never seen, whatever the order the
   store read its null and its tombstone event in (a bug found so: the minimal sequences
   at the end); none for anything else.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_expiry.codec import H_DELETED_AT, H_ERASURE_READ_AT, H_FIRST_CREATED_AT, H_REASON
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.sinks._messages import (
    Change,
    StampChange,
    TombstoneChange,
    decode_stamped,
    decode_tombstone,
)
from stream_expiry.sinks.store import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stream_expiry.model import Reason
    from stream_expiry.sinks._messages import Marker, Row

T0 = 1_767_225_600_000
MIN = 60_000
SRC = (("expiry-source-topic", b"sessions"), ("expiry-source-partition", b"0"))

Topic = Literal["stamped", "tombstones"]


class Msg:
    """One message the service published, and what the model knows of it: ``ends`` is the
    ``created_at`` of the life it ends (None: it ends no running life)."""

    __slots__ = ("ends", "headers", "ident", "life", "offset", "partition", "topic", "value")

    def __init__(
        self,
        topic: Topic,
        ident: Identity,
        value: bytes | None,
        headers: tuple[tuple[str, bytes], ...],
        ends: int | None = None,
        partition: int = 0,
        offset: int = 0,
    ) -> None:
        self.topic, self.ident, self.value, self.headers = topic, ident, value, headers
        self.ends, self.partition, self.offset = ends, partition, offset
        self.life: int | None = None  # a stamp's created_at
        if topic == "stamped" and value is not None:
            c = self.change()
            assert isinstance(c, StampChange)
            self.life = c.created_at

    def __repr__(self) -> str:
        """Short, for hypothesis' reports: times in ms after T0."""
        head = f"{self.topic[0].upper()}{self.partition}@{self.offset} {self.ident.record_id}"
        hs = {k: v.decode() for k, v in self.headers if not k.startswith("expiry-source")}
        hs = {k: str(int(v) - T0) if k == H_DELETED_AT else v for k, v in hs.items()}
        if self.value is None:
            return f"<{head} null {hs}>"
        c = self.change()
        if isinstance(c, StampChange):
            return f"<{head} stamp c={_rel(c.created_at)} e={_rel(c.expires_at)} d={c.data}>"
        assert isinstance(c, TombstoneChange)
        return (
            f"<{head} tomb {c.reason} c={_rel(c.created_at)} e={_rel(c.expires_at)} "
            f"at={_rel(c.emitted_at)} {hs}>"
        )

    def change(self) -> Change:
        key = self.ident.key.encode()
        if self.topic == "stamped":
            return decode_stamped(
                key, self.value, partition=self.partition, offset=self.offset,
                headers=list(self.headers),
            )  # fmt: skip
        return decode_tombstone(key, self.value, list(self.headers))


def _rel(t: int | None) -> int | None:
    return None if t is None else t - T0


@dataclass
class Life:
    """One life of a record as the model expects the store to see it."""

    created: int
    expires: int | None
    data: str
    reason: str | None = None  # None: still running at the end
    emitted_at: int | None = None


@dataclass
class Record:
    ident: Identity
    msgs: list[Msg] = field(default_factory=list)
    lives: list[Life] = field(default_factory=list)
    never_seen_erasure: int | None = None  # emitted_at of an erasure of the unseen record
    # The created_at and previous_deleted_at of a life's stamp from before a create moved
    # its creation back (the next life may be created at that same time, after an erasure:
    # its previous_deleted_at tells it), and
    # the life's (engine._backdate).
    moved: dict[tuple[int, int | None], int] = field(default_factory=dict)


# Where an erasure's request was read (outbox: on its tombstone and null).
READ_AT = (H_ERASURE_READ_AT, b"1041")


def _deleted_at(at: int) -> tuple[str, bytes]:
    return (H_DELETED_AT, str(at).encode())


def _erasure_read(first: int | None) -> tuple[tuple[str, bytes], ...]:
    """An erasure's headers as the outbox writes them on an erasure it read: where, and
    of a life a create read late moved back, its first stamp's creation."""
    return (READ_AT,) if first is None else (READ_AT, (H_FIRST_CREATED_AT, b"%d" % first))


def _data(record: int, life: int, n: int) -> dict[str, int]:
    return {"rec": record, "life": life, "n": n}


def _json(d: dict[str, int]) -> str:
    return orjson.dumps(d).decode()  # as the sink keeps a stamp's data


@st.composite
def record_history(draw: st.DrawFn, n: int) -> Record:
    """The messages the service publishes for one record, in its order, and the lives."""
    ident = Identity("acme", "_", "live", "session", f"r{n}")
    rec = Record(ident)
    out = rec.msgs
    t = T0 + draw(st.integers(0, 3)) * MIN
    floor: int | None = None  # the deletion that ended the previous life

    def stamped(s: Stamp, data: dict[str, int] | None) -> None:
        out.append(Msg("stamped", ident, encode_stamp(s, data), SRC))

    def tombstone(
        s: Stamp, reason: Reason, at: int, header: int | None, ends: int | None, read: bool = False,
        first: int | None = None,
    ) -> None:  # fmt: skip
        hs: tuple[tuple[str, bytes], ...] = SRC if header is None else (*SRC, _deleted_at(header))
        hs = (*hs, *_erasure_read(first)) if read else hs
        out.append(
            Msg("tombstones", ident, encode_tombstone(s, reason=reason, emitted_at=at), hs, ends)
        )

    def null(
        header: int, reason: str, ends: int | None, read: bool = False, first: int | None = None
    ) -> None:
        hs: tuple[tuple[str, bytes], ...] = (*SRC, _deleted_at(header), (H_REASON, reason.encode()))
        hs = (*hs, *_erasure_read(first)) if read else hs
        out.append(Msg("stamped", ident, None, hs, ends))

    nobody = Stamp(ident, None, None, None, None)
    if draw(st.booleans()):
        # An erasure of a record the service never saw (engine._delete, prior None): its
        # tombstone names no life, ends at its own time, and a null follows.
        d = t
        emitted = d + draw(st.integers(0, 2))
        tombstone(nobody, "explicit", emitted, d, None)
        null(d, "explicit", None)
        rec.never_seen_erasure = emitted
        floor = d
        t = d + 1 + draw(st.integers(0, 2)) * MIN
    count = draw(st.integers(1, 3))
    # Lives a legal hold keeps (their state, reason, header), oldest first; each gets its
    # tombstone at the release, with no null: the record lives on.
    held: list[tuple[Stamp, Reason, int | None, Life]] = []
    # Where the windows of the tombstones and nulls so far end (a ttl one's expiry, an
    # erasure's of a moved-back life its first stamp's creation plus one), and whether the
    # last life ended by an erasure the service wrote as read (its headers).
    reach, erased = T0, False
    for k in range(count):
        last = k == count - 1
        # The hold is released while this life runs (always, by the last life), or it
        # keeps this life too.
        release = bool(held) and (last or draw(st.booleans()))
        ttl = draw(st.sampled_from([None, 5 * MIN, 10 * MIN, 30 * MIN]))
        ends: list[str] = []
        if not held or release:
            ends += ["running"] if last else []
            ends += ["explicit"] + (["ttl"] if ttl is not None else [])
        if not last:
            ends += ["held_explicit"] + (["held_ttl"] if ttl is not None else [])
        end = draw(st.sampled_from(ends))
        c = t
        lives = tuple(h[0].as_held_life() for h in held)
        if erased and not held and c >= reach and draw(st.integers(0, 3)) == 0:
            # Created again once the service forgot the erasure (its marker pruned a grace
            # after the erased life's expiry; the create, dated before that expiry, read
            # after it): the stamps say no previous_deleted_at, and the stores, which
            # forget after the service, must still take this life for a later one.
            floor = None
        s = Stamp(ident, c, None if ttl is None else c + ttl, ttl, None if ttl is None else "org",
                  previous_deleted_at=floor, held_lives=lives)  # fmt: skip
        erased = False
        moved_from: int | None = None
        data = _data(n, k, 0)
        life = Life(c, s.expires_at, _json(data))
        rec.lives.append(life)
        if ttl is not None and end != "held_explicit" and draw(st.integers(0, 3)) == 0:
            # The life's create read after one dated later (engine._backdate): that one's
            # stamp first, created later, before this life's expiry; then the life's. Any
            # life: ended by its expiry, by an erasure (dated before that first stamp's
            # creation, too: its tombstone's bound, the erasure's time, does not reach that
            # stamp), kept by a hold until its expiry (its tombstone at the release has no
            # header), begun beside held lives, or running. Not erased under a hold: that
            # erasure's tombstone, at the release, does not say where the request was read
            # (expiry-erasure-read-at), so its window is not kept (a known gap).
            first = c + draw(st.integers(1, ttl - 1))
            stamped(s._replace(created_at=first, expires_at=first + ttl), _data(n, k, 9))
            out[-1].life = c
            rec.moved[first, floor] = c
            moved_from = first
        stamped(s, data)
        now = c
        if release:
            # The release: the held lives' tombstones, oldest first, then this life
            # stamped again without them.
            now += draw(st.integers(0, 2)) * MIN
            for h, reason, header, lf in held:
                tombstone(h, reason, now, header, h.created_at)
                lf.emitted_at = now
            s = s._replace(held_lives=())
            stamped(s, None)
            held = []
        if not held and floor is not None and draw(st.integers(0, 4)) == 0:
            # An erasure request dated at or before the previous life's end, read while
            # this one runs (engine._erase_before): it names no life, ends at that end,
            # and no null follows.
            now += 1
            tombstone(nobody, "explicit", now, floor, None)
        for j in range(draw(st.integers(0, 2))):
            if s.expires_at is None or s.ttl_ms is None:
                break
            # A touch before the expiry slides it; its stamp carries the touch's data.
            u = max(now, s.expires_at - s.ttl_ms) + draw(st.integers(1, 4)) * MIN
            if u >= s.expires_at:
                break
            now = u
            s = s._replace(expires_at=u + s.ttl_ms)
            life.expires = s.expires_at
            touch = _data(n, k, j + 1) if draw(st.booleans()) else None
            if touch is not None:
                life.data = _json(touch)
            stamped(s, touch)
        if end == "running":
            break
        if end in ("ttl", "held_ttl"):
            assert s.expires_at is not None
            e = s.expires_at
            life.reason = "ttl"
            floor = e - 1
            if end == "ttl":
                emitted = e + draw(st.integers(0, 3))
                life.emitted_at = emitted
                tombstone(s, "ttl", emitted, e - 1, c)
                null(e - 1, "ttl", c)
                reach = max(reach, e)
            else:
                held.append((s, "ttl", None, life))  # no header: before its expiry
            t = e + draw(st.integers(0, 2)) * MIN
        else:
            top = now + 20 * MIN if s.expires_at is None else s.expires_at - 1
            d = draw(st.integers(now, top))
            life.reason = "explicit"
            floor = d
            if end == "explicit":
                emitted = d + draw(st.integers(0, 3))
                life.emitted_at = emitted
                # As the service writes an erasure it read: saying where, and of a life
                # moved back, its first stamp's creation.
                tombstone(s, "explicit", emitted, d, c, read=True, first=moved_from)
                null(d, "explicit", c, read=True, first=moved_from)
                erased = True
                if moved_from is not None:
                    reach = max(reach, moved_from + 1)
            else:
                # Erased under the hold: kept, stamped with the request, no data.
                s = s._replace(erase_at=d, held=True)
                stamped(s, None)
                held.append((s._replace(held=False), "explicit", s.erased_until, life))
            t = d + 1 + draw(st.integers(0, 2)) * MIN
        if end == "ttl" and draw(st.integers(0, 3)) == 0:
            # An erasure request read late, after the expiry ended the life
            # (engine._erase_ended): dated within the life, it names no life, ends at its
            # own time, and a null follows, and a create dated after it, read late too,
            # starts the next life there, before the ended life's expiry (engine.
            # _erased_at); dated before it, no null and its own time.
            assert s.expires_at is not None
            d = draw(st.integers(c - 2 * MIN, s.expires_at - 1))
            at = s.expires_at + draw(st.integers(1, 3))
            if d >= c:
                tombstone(nobody, "explicit", at, d, None)
                null(d, "explicit", None)
                floor = d
                t = draw(st.integers(d + 1, t))
            elif draw(st.booleans()):
                tombstone(nobody, "explicit", at, d, None)
            else:
                # The same under a legal hold (processor._erase_no_life): deferred, stamped
                # naming no life and keeping the ended one; at the release, its tombstone,
                # then the ended life's tombstone again, and that end's null.
                e = s.expires_at
                kept = Stamp(ident, None, None, None, None, erase_at=d, held=True,
                             previous_deleted_at=e - 1, held_lives=(s.as_held_life(),))  # fmt: skip
                stamped(kept, None)
                tombstone(nobody, "explicit", at + 1, d, None)
                tombstone(s, "ttl", at + 1, e - 1, c)
                null(e - 1, "ttl", c)
    return rec


@dataclass
class Delivery:
    """How the sink reads the topics: which partition each next message comes from, where
    the batches end, and the crashes that rewind every partition."""

    picks: list[int]
    cuts: list[int]
    rewinds: list[tuple[int, list[int]]]  # (after batch n, a fraction in 0..8 per stream)
    # The tombstones topic lags: expiry.stamped is read to its end first, and then (after
    # batch ``reset``, None: never) read again from its start, the group's offsets on it
    # reset or rewound while those on expiry.tombstones stay: stamps of lives already
    # deleted are delivered again, before and after those lives' tombstones.
    lag: bool = False
    reset: int | None = None


def _layout(recs: Sequence[Record], order: Sequence[int], parts: Sequence[int]) -> list[list[Msg]]:
    """The records' messages merged in the service's order (``order``: which record's next
    message), on each record's partition, with offsets: one list per (topic, partition)."""
    queues = [list(r.msgs) for r in recs]
    streams: dict[tuple[Topic, int], list[Msg]] = {}
    merged: list[tuple[int, Msg]] = []
    picks = itertools.chain(order, itertools.cycle(range(len(recs))))
    while any(queues):
        n = next(picks) % len(recs)
        if queues[n]:
            merged.append((n, queues[n].pop(0)))
    for n, m in merged:
        slot = (m.topic, parts[n])
        stream = streams.setdefault(slot, [])
        stream.append(Msg(m.topic, m.ident, m.value, m.headers, m.ends, parts[n], len(stream) + 10))
    return [streams[k] for k in sorted(streams)]


def _deliver(
    streams: Sequence[Sequence[Msg]], how: Delivery, start: Sequence[int] = ()
) -> list[list[Msg]]:
    """The batches the sink reads: every stream in order (from ``start``, eighths of each
    stream, or its beginning), replayed from earlier positions after a crash, until every
    message has been read."""
    pos = [len(s) * start[n % len(start)] // 8 if start else 0 for n, s in enumerate(streams)]
    batches: list[list[Msg]] = []
    picks = itertools.chain(how.picks, itertools.cycle(range(len(streams))))
    cuts = itertools.chain(how.cuts, itertools.repeat(3))
    rewinds = dict((n, fr) for n, fr in how.rewinds)
    stamped = [n for n, s in enumerate(streams) if s and s[0].topic == "stamped"]
    reset = how.reset
    while any(p < len(s) for p, s in zip(pos, streams, strict=True)):
        size = next(cuts)
        batch: list[Msg] = []
        while len(batch) < size and any(p < len(s) for p, s in zip(pos, streams, strict=True)):
            n = next(picks) % len(streams)
            if how.lag and n not in stamped and any(pos[k] < len(streams[k]) for k in stamped):
                continue  # expiry.stamped first
            if pos[n] < len(streams[n]):
                batch.append(streams[n][pos[n]])
                pos[n] += 1
        batches.append(batch)
        if reset is not None and len(batches) >= reset:
            reset = None
            for n in stamped:
                pos[n] = 0
        back = rewinds.pop(len(batches), None)
        if back is not None:
            # A crash before the commit: each partition is read again from a position at
            # or before where it was (a committed offset).
            for n in range(len(streams)):
                fr = back[n % len(back)] if back else 0
                pos[n] = pos[n] * fr // 8
    return batches


@dataclass
class Run:
    store: MemoryStore
    now: int = T0 + 10**9
    delivered: dict[Identity, set[int]] = field(default_factory=dict)
    held_rows: dict[Identity, set[int | None]] = field(default_factory=dict)
    stamped: dict[Identity, set[int]] = field(default_factory=dict)
    moved: dict[Identity, dict[tuple[int, int | None], int]] = field(default_factory=dict)

    def life_of(self, ident: Identity, row: Row) -> int | None:
        """The life ``row`` is of (a moved life's first stamp's: the life's ``created_at``)."""
        created_at = row.created_at
        if created_at is None:
            return None
        return self.moved.get(ident, {}).get((created_at, row.previous_deleted_at), created_at)

    async def apply(self, batch: Sequence[Msg], *, check: bool = True) -> None:
        self.now += 1
        before = dict(self.store.rows)
        out = await self.store.apply([m.change() for m in batch], now_ms=self.now, living=True)
        # Rule 6: a receipt's record listed living exactly when a row of it stays.
        receipted = {r.identity for r in out.receipts}
        assert set(out.living) == {i for i in receipted if i in self.store.rows}
        for m in batch:
            if m.ends is not None:
                self.delivered.setdefault(m.ident, set()).add(m.ends)
            if m.life is not None:
                self.stamped.setdefault(m.ident, set()).add(m.life)
        for ident, row in self.store.rows.items():
            self.held_rows.setdefault(ident, set()).add(self.life_of(ident, row))
        if not check:
            return
        for ident, old in before.items():
            ended = self.delivered.get(ident, set())
            new = self.store.rows.get(ident)
            was = self.life_of(ident, old)
            later = any(c > (was or 0) for c in self.stamped.get(ident, ()))
            if new is None:
                # (3) a row goes only when a message ending its life has been read (or a
                # later life's stamp replaced it, in the same batch as that life's end).
                assert was in ended or later, (
                    f"{ident.record_id}: the row of the life created at {old.created_at} "
                    f"was deleted, but only lives {sorted(ended)} have ended"
                )
            elif (now := self.life_of(ident, new)) != was:
                # Replaced: only by a later life (a store keeps the latest).
                assert (now or 0) > (was or 0), (ident, old, new)
        for ident, row in self.store.rows.items():
            ended = self.delivered.get(ident, set())
            # (3) no row of a life once its end, or a later life's, has been read.
            assert all((self.life_of(ident, row) or 0) > c for c in ended), (
                f"{ident.record_id}: holds the life created at {row.created_at} after "
                f"lives {sorted(ended)} ended"
            )


def _rows(store: MemoryStore) -> dict[Identity, tuple[Any, ...]]:
    return {
        i: (r.created_at, r.expires_at, r.ttl_seconds, r.ttl_source, r.data, r.src_partition,
            r.src_offset)
        for i, r in store.rows.items()
    }  # fmt: skip


def _markers(store: MemoryStore) -> dict[Identity, tuple[Any, ...]]:
    def what(m: Marker) -> tuple[Any, ...]:
        pending = sorted((p.created_at or 0, p.expires_at or 0, p.superseded) for p in m.pending)
        return (m.deleted_before, m.last_life, tuple(pending))

    return {i: what(m) for i, m in store.markers.items()}


def _receipts(store: MemoryStore) -> list[tuple[str, int | None, str, int | None]]:
    return sorted(
        ((r.identity.record_id, r.created_at, r.reason, r.emitted_at) for r in store.outbox),
        key=repr,
    )


def _store() -> MemoryStore:
    ids = (f"id{n}" for n in itertools.count())
    return MemoryStore("m", new_id=lambda: next(ids))


def _run(recs: Sequence[Record] = ()) -> Run:
    return Run(_store(), moved={r.ident: r.moved for r in recs})


async def _scenario(recs: Sequence[Record], batches: Sequence[Sequence[Msg]]) -> Run:
    run = _run(recs)
    for b in batches:
        await run.apply(b)
    return run


def _expected_receipts(recs: Sequence[Record]) -> list[tuple[str, int | None, str, int | None]]:
    out: list[tuple[str, int | None, str, int | None]] = []
    for r in recs:
        if r.never_seen_erasure is not None:
            out.append((r.ident.record_id, None, "explicit", r.never_seen_erasure))
        out += [
            (r.ident.record_id, lf.created, lf.reason, lf.emitted_at)
            for lf in r.lives
            if lf.reason is not None
        ]
    return sorted(out, key=repr)


def _check_end(recs: Sequence[Record], run: Run) -> None:
    store = run.store
    # (4) exactly the records whose last life runs keep a row: that life, its latest data
    # and expiry.
    expected_rows = {
        r.ident: (r.lives[-1].created, r.lives[-1].expires, r.lives[-1].data)
        for r in recs
        if r.lives[-1].reason is None
    }
    rows = {i: (row.created_at, row.expires_at, row.data) for i, row in store.rows.items()}
    assert rows == expected_rows
    # (5) one receipt per ended life, with its tombstone's reason and emission; one for an
    # erasure of a record never seen; nothing else.
    got, expected = _receipts(store), _expected_receipts(recs)
    assert got == expected
    for rcpt in store.outbox:
        assert rcpt.rows_deleted in (0, 1)
        if rcpt.created_at is not None and rcpt.created_at in run.held_rows.get(
            rcpt.identity, set()
        ):
            # A life whose row the store was seen holding was deleted with its row.
            assert rcpt.rows_deleted == 1, rcpt
        if rcpt.created_at is None:
            assert rcpt.rows_deleted == 0, rcpt
    # Nothing waits for a tombstone event that has come.
    assert all(not m.pending for m in store.markers.values())


@st.composite
def histories(draw: st.DrawFn) -> History:
    n = draw(st.integers(1, 3))
    recs = [draw(record_history(k)) for k in range(n)]
    parts = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    order = draw(st.lists(st.integers(0, n - 1), max_size=30))
    return History(recs, _layout(recs, order, parts))


class History:
    """Records' histories, and the messages on each (topic, partition) in order."""

    def __init__(self, recs: list[Record], streams: list[list[Msg]]) -> None:
        self.recs, self.streams = recs, streams

    def __repr__(self) -> str:
        lines = [f"lives {r.ident.record_id}: {r.lives}" for r in self.recs]
        lines += [f"stream: {s}" for s in self.streams]
        return "History(\n" + "\n".join(lines) + ")"


deliveries = st.builds(
    Delivery,
    picks=st.lists(st.integers(0, 3), max_size=40),
    cuts=st.lists(st.integers(1, 6), max_size=15),
    rewinds=st.lists(
        st.tuples(st.integers(1, 12), st.lists(st.integers(0, 8), min_size=1, max_size=4)),
        max_size=3,
    ),
    lag=st.booleans(),
    reset=st.none() | st.integers(1, 12),
)


# 400 draws, not 1,000: the suite's longest test (83 s of 17 minutes in round 47, near its
# 120 s timeout under load). The same draws every run (the suite's profile); with the last
# round's fix to the stores undone, the first 400 still fail. More with
# STREAM_EXPIRY_TEST_HYPOTHESIS=random, new draws each run.
@settings(max_examples=400)
@given(
    h=histories(),
    how=deliveries,
    other_cuts=st.lists(st.integers(1, 6), max_size=15),
    reread=st.lists(st.integers(0, 8), max_size=4),
)
def test_a_store_ends_as_the_history_says_however_kafka_delivers_it(
    h: History, how: Delivery, other_cuts: list[int], reread: list[int]
) -> None:
    recs, streams = h.recs, h.streams
    batches = _deliver(streams, how)

    async def main() -> None:
        run = await _scenario(recs, batches)
        _check_end(recs, run)
        # (1) the same messages cut otherwise end in the same state.
        flat = [m for b in batches for m in b]
        again, pos = _run(recs), 0
        for size in itertools.chain(other_cuts, itertools.repeat(1)):
            if pos >= len(flat):
                break
            await again.apply(flat[pos : pos + size])
            pos += size
        assert _rows(again.store) == _rows(run.store)
        assert _markers(again.store) == _markers(run.store)
        assert _receipts(again.store) == _receipts(run.store)
        # Read in another interleaving, the store ends the same.
        other = await _scenario(recs, _deliver(streams, Delivery(how.picks[1:], other_cuts, [])))
        assert _rows(other.store) == _rows(run.store)
        assert _markers(other.store) == _markers(run.store)
        # (2) a re-read of everything, from any positions, changes nothing.
        rows, markers, receipts = (
            dict(run.store.rows),
            dict(run.store.markers),
            len(run.store.outbox),
        )
        for b in _deliver(streams, Delivery(how.picks[::-1], other_cuts, []), reread):
            await run.apply(b)
        assert run.store.rows == rows
        assert run.store.markers == markers
        assert len(run.store.outbox) == receipts

    anyio.run(main)


# --- a bug the properties found, as its minimal sequence, in both orders -------------------


def _erasure_then_a_life() -> tuple[list[Msg], list[Msg]]:
    """An erasure of a record the service never saw (at T0), then the record's first life
    (created at T0+1, never expiring), erased at once: ``expiry.stamped`` and
    ``expiry.tombstones`` as the service writes them."""
    a = Identity("acme", "_", "live", "session", "r0")
    nobody, first = Stamp(a, None, None, None, None), Stamp(a, T0 + 1, None, None, None)
    head = (*SRC, _deleted_at(T0))
    stamped = [
        Msg("stamped", a, None, (*head, (H_REASON, b"explicit")), None, 0, 10),
        Msg("stamped", a, encode_stamp(first, {"n": 1}), SRC, None, 0, 11),
        Msg(
            "stamped", a, None, (*SRC, _deleted_at(T0 + 1), (H_REASON, b"explicit")), T0 + 1, 0, 12
        ),
    ]
    tombs = [
        Msg("tombstones", a, encode_tombstone(nobody, reason="explicit", emitted_at=T0), head),
        Msg(
            "tombstones", a, encode_tombstone(first, reason="explicit", emitted_at=T0 + 1),
            (*SRC, _deleted_at(T0 + 1)), T0 + 1,
        ),
    ]  # fmt: skip
    return stamped, tombs


def test_an_erasure_before_a_records_first_life_is_on_record_when_read_first() -> None:
    stamped, tombs = _erasure_then_a_life()

    async def main() -> None:
        run = Run(_store())
        await run.apply(tombs[:1])  # the erasure's tombstone event before the life's null
        await run.apply(stamped)
        await run.apply(tombs[1:])
        got = sorted(((r.created_at, r.reason, r.rows_deleted) for r in run.store.outbox), key=repr)
        assert got == sorted([(None, "explicit", 0), (T0 + 1, "explicit", 1)], key=repr)

    anyio.run(main)


def test_an_erasure_before_a_records_first_life_is_on_record_whatever_the_order() -> None:
    stamped, tombs = _erasure_then_a_life()

    async def main() -> None:
        run = Run(_store())
        await run.apply(stamped)  # the sink reads expiry.stamped ahead of expiry.tombstones
        await run.apply(tombs)
        got = sorted(((r.created_at, r.reason, r.rows_deleted) for r in run.store.outbox), key=repr)
        assert got == sorted([(None, "explicit", 0), (T0 + 1, "explicit", 1)], key=repr)

    anyio.run(main)

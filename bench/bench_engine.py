"""The pure engine's speed: events per second through ``Engine.feed``, and timers fired per
second by ``Engine.advance``, with no IO at all, beside trivial baselines.

    python -m bench.bench_engine [--events 300000] [--repeat 3] [--orgs 1000]

What the service's ingest does per event minus every IO: the record's prior state comes from
an in-memory dict (the service reads it from SQLite), ``Engine.feed`` decides, the new state
goes back into the dict. The resolver is a real :class:`stream_expiry.policy.PolicyBook` with
defaults (conversation 20 min, session 15 min sliding, error 10 min), a cap and ``--orgs``
organisations with their own conversation TTL, so every timer lands inside the engine's
1-hour horizon, i.e. in the timing wheel (the costly case; with TTLs of days the wheel is
skipped). Keys are ~45-byte record keys (997 orgs, 13 bots). The garbage collector stays on.

Passes (each on fresh state, best wall time of ``--repeat``; CPU seconds recorded too):

* ``loop only``: iterate the pre-built events and do nothing (the floor);
* ``dict baseline``: ``d.get(key)``, a TTL from a category dict, ``d[key] = ts + ttl`` and a
  ``heapq.heappush`` of the due time: what the plainest Python expiry tracker costs;
* ``feed creates``: N creates of new records (stamp, resolve, schedule);
* ``feed touches``: N touches of live sessions (slide: reschedule) after N/4 session creates;
* ``feed deletes``: N explicit deletes of live records (cancel, tombstone) after N creates;
* ``feed mixed``: the ingest mix of ``bench.e2e_ingest`` with 1 delete per 50 events;
* ``parse_event``: the JSON fast path alone, on the mixed events' bytes;
* ``parse + feed mixed``: both, i.e. the engine-side CPU of ingest without IO;
* ``advance``: after N creates, move the clock in 10 ms steps (the service's tick) until
  every timer fired; timers per second; ``heapq baseline``: heappop in the same steps;
* ``processor mixed (memory|rocksdb)``: the service's per-partition core without Kafka,
  ``PartitionProcessor.process`` on slices of 500 raw messages of the mix, then ``settle``
  into a memory or RocksDB store; ``processor + encode (rocksdb)``: plus encoding every
  stamp's message value, as the outbox does before producing; ``processor firing
  (rocksdb)``: N errors due within 10 s, stored, then fired 12 s later in slices of 170
  (a partition's share of a firing that is behind), each tombstone's value encoded and
  the slice settled: the firing's CPU per tombstone without Kafka.

Prints ONE JSON object (``bench.common.envelope``, results under ``extra.passes``) on stdout;
progress on stderr. The suite's ``--rate/--seconds/--grace`` are accepted and ignored;
its ``--pending`` caps ``--events`` (so ``--quick`` stays quick).
"""

from __future__ import annotations

import gc
import heapq
import sys
import time
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from bench.common import base_parser, emit_result, envelope, log, utc_now_iso
from bench.e2e_expiry import BenchTopics, event_value, mixed_event, record_identity
from stream_expiry.config import parse_config
from stream_expiry.engine import Engine
from stream_expiry.model import InputEvent, Op, Stamp, parse_event
from stream_expiry.policy import PolicyBook

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from stream_expiry.state import PartitionProcessor
    from stream_expiry.state.kv import KeyValue

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed clock, the engine reads no other
TICK_MS = 10
DEFAULT_EVENTS = 300_000
SLOT = ("conversations", 0)
TTL_MS = {"conversation": 20 * 60_000, "session": 15 * 60_000, "error": 10 * 60_000}


def config_text(orgs: int) -> str:
    topics = BenchTopics("engine")
    lines = [
        f'state_dir = "/nonexistent"\n[topics]\ninputs = ["{topics.conversations}", '
        f'"{topics.sessions}", "{topics.errors}"]',
        "[retention.cap]",
        'max = "1y"',
        "[retention.defaults]",
        'conversation = "20m"',
        'session = "15m"',
        'error = "10m"',
    ]
    # org-0000..: the same TTL as the default, so every record's expiry is predictable.
    for o in range(orgs):
        lines += [f'[retention.orgs."org-{o:04d}"]', 'conversation = "20m"']
    return "\n".join(lines) + "\n"


class Bench:
    def __init__(self, events: int, repeat: int, orgs: int) -> None:
        self.n = events
        self.repeat = repeat
        self.config = parse_config(config_text(orgs), path="<bench_engine>")
        self.passes: list[dict[str, Any]] = []

    def engine(self) -> Engine[tuple[str, int]]:
        book = PolicyBook(self.config, {})
        return Engine(book.resolve, self.config.sliding, now_ms=NOW, tick_ms=TICK_MS)

    def timed(
        self,
        name: str,
        setup: Callable[[], Any],
        body: Callable[[Any], int],
        *,
        what: str,
        unit: str = "events/s",
    ) -> dict[str, Any]:
        """Best of ``repeat``: ``setup()`` untimed, then ``body(state)`` timed; body returns
        how many operations it did."""
        best: tuple[float, float, int] | None = None
        for _ in range(self.repeat):
            state = setup()
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            ops = body(state)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if best is None or wall < best[0]:
                best = (wall, cpu, ops)
            del state
        assert best is not None
        wall, cpu, ops = best
        entry = {
            "name": name,
            "ops": ops,
            "seconds": round(wall, 4),
            "cpu_seconds": round(cpu, 4),
            "per_s": round(ops / wall, 1) if wall > 0 else None,
            "unit": unit,
            "us_per_op": round(wall / ops * 1e6, 3) if ops else None,
            "what": what,
        }
        self.passes.append(entry)
        log(f"bench_engine: {name:<24} {entry['per_s']:>14,.0f} {unit}  ({wall:.2f}s)")
        return entry


def creates(n: int, category: str = "conversation", base: int = 0) -> list[InputEvent]:
    return [
        InputEvent(record_identity(base + i, category), "create", NOW - 60_000 + i // 100)
        for i in range(n)
    ]


def feed_all(
    engine: Engine[tuple[str, int]], events: list[InputEvent], priors: dict[str, Stamp]
) -> int:
    """What the service does per event, minus IO: prior in, feed, state out."""
    feed = engine.feed
    get = priors.get
    for ev in events:
        key = ev.identity.key
        out = feed(ev, get(key), NOW, SLOT)
        for fired in out.fired:
            priors[key] = fired.after
        if out.state is not None:
            priors[key] = out.state
    return len(events)


def primed(
    b: Bench, events: list[InputEvent]
) -> Callable[[], tuple[Engine[tuple[str, int]], dict[str, Stamp]]]:
    def setup() -> tuple[Engine[tuple[str, int]], dict[str, Stamp]]:
        engine = b.engine()
        priors: dict[str, Stamp] = {}
        feed_all(engine, events, priors)
        return engine, priors

    return setup


def mixed_events(n: int) -> list[InputEvent]:
    """The ingest mix with one delete per 50 events (of a conversation created earlier)."""
    out: list[InputEvent] = []
    ts0 = NOW - 60_000 - n // 10
    for i in range(n):
        if i % 50 == 49:
            out.append(InputEvent(record_identity(i - 49, "conversation"), "delete", ts0 + i // 10))
            continue
        ident, op = mixed_event(i, ts0)
        out.append(InputEvent(ident, cast("Op", op), ts0 + i // 10))
    return out


class Rec(NamedTuple):
    """What the processor reads of a consumed message (aiokafka's ConsumerRecord has more)."""

    offset: int
    key: bytes | None
    value: bytes | None


# The firing pass: creates of errors (10 min) whose expiry falls within 10 s of NOW, fired
# at NOW + 12 s in the slices a partition gets of a firing behind (FIRE_BATCH / 12).
FIRE_WINDOW_MS = 10_000
FIRE_AFTER_MS = 12_000
FIRE_SLICE = 170


def _due_soon(n: int) -> list[int]:
    """Event times of ``n`` error creates due over ``FIRE_WINDOW_MS`` from 1 s after NOW."""
    ttl = TTL_MS["error"]
    return [NOW - ttl + 1_000 + i * FIRE_WINDOW_MS // n for i in range(n)]


def new_processor(b: Bench, book: PolicyBook, kv: KeyValue) -> PartitionProcessor:
    """A processor for partition ``SLOT`` over ``kv``, as the service would make it for
    ``b``'s configuration (also what ``bench.count_instructions`` counts)."""
    from stream_expiry.state import PartitionProcessor, PartitionStore

    return PartitionProcessor(
        SLOT[0],
        SLOT[1],
        PartitionStore(kv),
        resolve=book.resolve,
        sliding=b.config.sliding,
        categories=frozenset(b.config.categories),
        max_skew_ms=300_000,
        now_ms=NOW,
        tick_ms=TICK_MS,
    )


def processor_passes(b: Bench, mixed_bytes: list[bytes]) -> None:
    """The service's per-partition core without Kafka: ``PartitionProcessor.process`` on
    slices of 500 records (the service's slice), then ``settle`` into the store, over the
    memory engine and over RocksDB; and the same plus encoding every stamp's message value
    (what the outbox does before producing)."""
    import tempfile

    from stream_expiry.model import encode_stamp, encode_tombstone
    from stream_expiry.state import MemoryKV, RocksKV

    records = [Rec(i, None, v) for i, v in enumerate(mixed_bytes)]
    book = PolicyBook(b.config, {})
    work = tempfile.TemporaryDirectory(prefix="bench-engine-")

    def make(kind: str) -> Callable[[], PartitionProcessor]:
        def setup() -> PartitionProcessor:
            if kind == "rocksdb":
                kv: KeyValue = RocksKV(tempfile.mkdtemp(dir=work.name))
            else:
                kv = MemoryKV()
            return new_processor(b, book, kv)

        return setup

    def drive(encode: bool) -> Callable[[PartitionProcessor], int]:
        def body(proc: PartitionProcessor) -> int:
            for lo in range(0, len(records), 500):
                effects = proc.process(records[lo : lo + 500], NOW)
                if encode:
                    for state, data in effects.stamps:
                        encode_stamp(state, data)
                proc.settle(effects, NOW)
            proc.store.close()
            return len(records)

        return body

    due_records = [
        Rec(i, None, event_value(record_identity(i, "error"), ts, "create"))
        for i, ts in enumerate(_due_soon(len(records)))
    ]

    def primed_for_firing() -> PartitionProcessor:
        proc = make("rocksdb")()
        for lo in range(0, len(due_records), 500):
            proc.settle(proc.process(due_records[lo : lo + 500], NOW), NOW)
        return proc

    def fire_all(proc: PartitionProcessor) -> int:
        now, fired = NOW + FIRE_AFTER_MS, 0
        while effects := proc.fire_due(now, FIRE_SLICE):
            for f in effects.tombstones:
                encode_tombstone(f.before, reason=f.reason, emitted_at=now)
            proc.settle(effects, now)
            fired += len(effects.tombstones)
        proc.store.close()
        return fired

    try:
        for kind in ("memory", "rocksdb"):
            b.timed(
                f"processor mixed ({kind})",
                make(kind),
                drive(False),
                what=f"PartitionProcessor.process + settle, slices of 500, {kind} store",
            )
        b.timed(
            "processor + encode (rocksdb)",
            make("rocksdb"),
            drive(True),
            what="the same on RocksDB, plus model.encode_stamp for every stamp (the outbox's "
            "encoding, without producing)",
        )
        b.timed(
            "processor firing (rocksdb)",
            primed_for_firing,
            fire_all,
            what=f"PartitionProcessor.fire_due in slices of {FIRE_SLICE}, "
            "model.encode_tombstone for each, settle: a firing without Kafka",
            unit="tombstones/s",
        )
    finally:
        work.cleanup()


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = utc_now_iso()
    n = args.events
    b = Bench(n, args.repeat, args.orgs)
    log(f"bench_engine: building {n:,} events of each kind")
    create_evs = creates(n)
    sessions = creates(max(1, n // 4), "session", base=n)
    touch_evs = [
        InputEvent(sessions[i % len(sessions)].identity, "touch", NOW - 30_000 + i // 100)
        for i in range(n)
    ]
    delete_evs = [InputEvent(e.identity, "delete", NOW - 1_000) for e in create_evs]
    mixed = mixed_events(n)
    mixed_bytes = [event_value(e.identity, e.ts, e.op) for e in mixed]
    cats = b.config.categories

    def nothing(evs: list[InputEvent]) -> int:
        k = 0
        for _ev in evs:
            k += 1
        return k

    b.timed("loop only", lambda: create_evs, nothing, what="iterate the events, no work")

    def dict_baseline(evs: list[InputEvent]) -> int:
        d: dict[str, int] = {}
        heap: list[tuple[int, str]] = []
        ttl = TTL_MS
        for ev in evs:
            ident = ev.identity
            key = ident.key
            prior = d.get(key)
            if prior is None:
                due = ev.ts + ttl[ident.category]
                d[key] = due
                heapq.heappush(heap, (due, key))
        return len(evs)

    b.timed(
        "dict baseline",
        lambda: create_evs,
        dict_baseline,
        what="dict get/set + TTL by category + heappush",
    )

    def fresh() -> tuple[Engine[tuple[str, int]], dict[str, Stamp]]:
        return b.engine(), {}

    def body_for(
        evs: list[InputEvent],
    ) -> Callable[[tuple[Engine[tuple[str, int]], dict[str, Stamp]]], int]:
        return lambda st: feed_all(st[0], evs, st[1])

    b.timed("feed creates", fresh, body_for(create_evs), what="Engine.feed, new records")
    b.timed(
        "feed touches",
        primed(b, sessions),
        body_for(touch_evs),
        what="Engine.feed, touches sliding live sessions",
    )
    b.timed(
        "feed deletes",
        primed(b, create_evs),
        body_for(delete_evs),
        what="Engine.feed, explicit deletes of live records",
    )
    b.timed("feed mixed", fresh, body_for(mixed), what="Engine.feed, the ingest mix + deletes")

    def parse_all(raw: list[bytes]) -> int:
        for value in raw:
            parse_event(value, categories=cats, now_ms=NOW, max_skew_ms=300_000)
        return len(raw)

    b.timed("parse_event", lambda: mixed_bytes, parse_all, what="model.parse_event fast path")

    def parse_and_feed(st: tuple[Engine[tuple[str, int]], dict[str, Stamp]]) -> int:
        engine, priors = st
        feed = engine.feed
        get = priors.get
        for value in mixed_bytes:
            ev = parse_event(value, categories=cats, now_ms=NOW, max_skew_ms=300_000)
            assert isinstance(ev, InputEvent)
            key = ev.identity.key
            out = feed(ev, get(key), NOW, SLOT)
            for fired in out.fired:
                priors[key] = fired.after
            if out.state is not None:
                priors[key] = out.state
        return len(mixed_bytes)

    b.timed("parse + feed mixed", fresh, parse_and_feed, what="parse_event then Engine.feed")

    def advance_all(st: tuple[Engine[tuple[str, int]], dict[str, Stamp]]) -> int:
        engine = st[0]
        fired = 0
        now = NOW
        while engine.pending_in_wheel:
            now += TICK_MS
            fired += len(engine.advance(now))
        return fired

    b.timed(
        "advance",
        primed(b, create_evs),
        advance_all,
        what=f"Engine.advance every {TICK_MS} ms of clock until all fired",
        unit="timers/s",
    )

    def heap_setup() -> list[tuple[int, str]]:
        heap = [(e.ts + TTL_MS["conversation"], e.identity.key) for e in create_evs]
        heapq.heapify(heap)
        return heap

    def heap_fire(heap: list[tuple[int, str]]) -> int:
        fired = 0
        now = NOW
        pop = heapq.heappop
        while heap:
            now += TICK_MS
            while heap and heap[0][0] <= now:
                pop(heap)
                fired += 1
        return fired

    b.timed(
        "heapq baseline (fire)",
        heap_setup,
        heap_fire,
        what=f"heappop everything due every {TICK_MS} ms",
        unit="timers/s",
    )

    processor_passes(b, mixed_bytes)

    by = {p["name"]: p for p in b.passes}
    return envelope(
        "bench_engine",
        "stream-expiry-engine",
        params={"events": n, "repeat": args.repeat, "orgs": args.orgs, "tick_ms": TICK_MS},
        extra={
            "passes": b.passes,
            "feed_vs_dict_baseline": round(
                by["dict baseline"]["per_s"] / by["feed creates"]["per_s"], 2
            ),
        },
        notes=[
            "Pure CPU, one thread, no IO: the ceiling the engine puts on ingest and firing; "
            "the service adds Kafka, SQLite and encoding around it.",
            "Best wall time of the repeats; cpu_seconds shows whether the machine was busy.",
        ],
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "engine")
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help=f"events per pass (default {DEFAULT_EVENTS:,}, or the suite's --pending if fewer)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per pass (best kept)")
    parser.add_argument("--orgs", type=int, default=1000, help="organisations with a policy")
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = min(DEFAULT_EVENTS, args.pending) if args.pending > 0 else DEFAULT_EVENTS
    emit_result(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Instructions per event of the per-partition processor, counted by callgrind.

Why: these machines' speed moves by a third within an hour, so a timed A/B of two commits
cannot show a change of a few per cent; valgrind's callgrind counts the instructions the
CPU runs, the same for the same code and input whatever else the machine does. The count
of one run includes Python's start-up and the building of the events, so each workload
runs at two sizes and the difference is divided by the difference in events.

Workloads (the service's core without Kafka, on the memory store, as ``bench_engine``'s
``processor`` passes): ``mixed``, the ingest mix (creates, touches, deletes) in slices of
500, each settled; ``fire``, error records ingested then every one fired and its tombstone
encoded; ``send``, the same firing through the service's :class:`~stream_expiry.outbox.Outbox`
(each tombstone and its null on ``expiry.stamped`` with their headers, appended to aiokafka's
record batches, the batches handed to a producer that acknowledges them at once, the
settler's settle), which ``fire`` leaves out; ``due``, those records ingested and
nothing fired: ``fire`` or ``send`` less ``due`` is the firing's own count a tombstone.
``sink``: a store sink's Python without Kafka or a database (``bench_sinks``'
records on the memory store): each record's stamp, then its tombstone, decoded as the
sink reads them and applied in batches of 5,000, and each receipt encoded and queued for
its partition as the sink publishes it; "an event" is then a record (its stamp and its
tombstone).

    python -m bench.count_instructions                  # both workloads, 4,000 and 12,000
    python -m bench.count_instructions --kinds due,fire,send  # the firing, and through the outbox
    python -m bench.count_instructions --kinds mixed --sizes 2000,6000

To compare two commits, run it in each (a ``git worktree`` or ``git archive`` copy; it
imports the ``stream_expiry`` beside it). Needs ``valgrind`` (Debian's package); one
workload takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import emit_result, envelope, log, utc_now_iso

ROOT = Path(__file__).resolve().parent.parent
_COLLECTED = re.compile(r"Collected : (\d+)")


def workload(kind: str, n: int) -> None:
    """Run ``kind`` over ``n`` events, in this process (what callgrind counts)."""
    if kind == "sink":
        sink_workload(n)
        return
    if kind == "send":
        send_workload(n)
        return
    if kind == "due":
        _primed(n)
        return
    from bench.bench_engine import (
        FIRE_AFTER_MS,
        FIRE_SLICE,
        NOW,
        Bench,
        Rec,
        mixed_events,
        new_processor,
    )
    from bench.bench_engine import _due_soon as due_soon
    from bench.e2e_expiry import event_value, record_identity
    from stream_expiry.model import encode_tombstone
    from stream_expiry.policy import PolicyBook
    from stream_expiry.state import MemoryKV

    bench = Bench(n, 1, 1000)
    book = PolicyBook(bench.config, {})
    proc = new_processor(bench, book, MemoryKV())
    if kind == "mixed":
        values = [event_value(e.identity, e.ts, e.op) for e in mixed_events(n)]
    else:
        values = [
            event_value(record_identity(i, "error"), ts, "create")
            for i, ts in enumerate(due_soon(n))
        ]
    records = [Rec(i, None, v) for i, v in enumerate(values)]
    for lo in range(0, len(records), 500):
        proc.settle(proc.process(records[lo : lo + 500], NOW), NOW)
    if kind == "fire":
        now = NOW + FIRE_AFTER_MS
        while effects := proc.fire_due(now, FIRE_SLICE):
            for f in effects.tombstones:
                encode_tombstone(f.before, reason=f.reason, emitted_at=now)
            proc.settle(effects, now)


def send_workload(n: int) -> None:
    """The ``send`` workload: ``fire``'s records ingested, then fired in the same slices,
    each slice through :meth:`Outbox.send` and its settler, to a producer that does not
    connect: its ``send_batch`` acknowledges each batch at once (aiokafka's own batch
    builder makes the batches). The changelog's linger is taken out of play (the next send,
    or the last, empty one, releases the nulls): its 10 ms would run out under callgrind
    at times, and the count would move with them."""
    import asyncio

    from aiokafka import AIOKafkaProducer
    from aiokafka.structs import RecordMetadata

    from bench.bench_engine import FIRE_AFTER_MS, FIRE_SLICE, NOW
    from stream_expiry import outbox as outbox_module
    from stream_expiry.config import Topics

    proc = _primed(n)
    now = NOW + FIRE_AFTER_MS
    outbox_module.CHANGELOG_LINGER_S = 3600.0
    counted: dict[str, int] = {}

    async def run() -> None:
        loop = asyncio.get_running_loop()
        prod = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")  # never started
        ends: dict[tuple[str, int], int] = {}

        async def send_batch(batch: Any, topic: str, *, partition: int) -> Any:
            batch.close()
            base = ends.get((topic, partition), 0)
            ends[(topic, partition)] = base + batch.record_count()
            ack = loop.create_future()
            ack.set_result(RecordMetadata(topic, partition, None, base, -1, -1, -1))
            return ack

        prod.send_batch = send_batch
        topics = Topics()
        box = outbox_module.Outbox(prod, topics, {t: 4 for t in topics.owned().values()})
        settler = asyncio.create_task(box.run())
        while effects := proc.fire_due(now, FIRE_SLICE):
            await box.send([(proc, effects)], now)
        await box.send([], now)  # the last slice's nulls go with it
        await box.drain()
        box.close()
        await settler
        prod._closed = True  # never started: no "Unclosed AIOKafkaProducer" at exit
        counted["tombstones"] = ends.get((topics.tombstones, 0), 0)
        counted["nulls"] = ends.get((topics.stamped, 0), 0)

    asyncio.run(run())
    if counted != {"tombstones": n, "nulls": n}:
        raise RuntimeError(f"the send workload sent {counted}, not {n} of each")


def _primed(n: int) -> Any:
    """``fire``'s processor: ``n`` error records due soon, ingested and settled."""
    from bench.bench_engine import NOW, Bench, Rec, new_processor
    from bench.bench_engine import _due_soon as due_soon
    from bench.e2e_expiry import event_value, record_identity
    from stream_expiry.policy import PolicyBook
    from stream_expiry.state import MemoryKV

    bench = Bench(n, 1, 1000)
    proc = new_processor(bench, PolicyBook(bench.config, {}), MemoryKV())
    values = [
        event_value(record_identity(i, "error"), ts, "create") for i, ts in enumerate(due_soon(n))
    ]
    records = [Rec(i, None, v) for i, v in enumerate(values)]
    for lo in range(0, len(records), 500):
        proc.settle(proc.process(records[lo : lo + 500], NOW), NOW)
    return proc


def sink_workload(n: int) -> None:
    """The ``sink`` workload: ``n`` records' stamps, then their tombstones, through the
    sink's decoding, planning and receipts (the memory store stands for the database)."""
    import asyncio

    from bench.bench_sinks import HOUR, T0, stamps
    from stream_expiry.kafka import key_partition
    from stream_expiry.model import encode_stamp, encode_tombstone
    from stream_expiry.sinks._messages import (
        decode_stamped,
        decode_tombstone,
        encode_receipt,
        receipt_headers,
    )
    from stream_expiry.sinks.store import MemoryStore

    records = stamps(n, "count")
    keys = [s.identity.key.encode() for s in records]
    stamped = [encode_stamp(s, {"text": "x" * 200}) for s in records]
    tombs = [encode_tombstone(s, reason="ttl", emitted_at=T0 + HOUR) for s in records]
    store = MemoryStore()
    queued: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]] = {}

    async def run() -> None:
        for lo in range(0, n, 5000):
            hi = min(n, lo + 5000)
            writes = [
                decode_stamped(keys[i], stamped[i], partition=i % 4, offset=i, timestamp=T0)
                for i in range(lo, hi)
            ]
            await store.apply(writes, now_ms=T0)
        for lo in range(0, n, 5000):
            hi = min(n, lo + 5000)
            kills = [
                decode_tombstone(keys[i], tombs[i], (), T0 + HOUR, topic="t", partition=i % 4)
                for i in range(lo, hi)
            ]
            out = await store.apply(kills, now_ms=T0 + HOUR)
            for r in out.receipts:
                key = r.identity.key.encode("utf-8")
                queued.setdefault(key_partition(key, 4), []).append(
                    (key, encode_receipt(r), receipt_headers(r))
                )

    asyncio.run(run())


def count(kind: str, n: int) -> int:
    """Instructions of one run of ``workload(kind, n)`` in a fresh interpreter."""
    with tempfile.TemporaryDirectory(prefix="callgrind-") as work:
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={work}/out",
            sys.executable,  # the interpreter itself: a launcher script would be counted
            "-m",
            "bench.count_instructions",
            "--run",
            kind,
            str(n),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind reported no count:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="mixed,fire", help="workloads (default: %(default)s)")
    parser.add_argument(
        "--sizes", default="4000,12000", help="the two sizes, in events (default: %(default)s)"
    )
    parser.add_argument("--run", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        workload(args.run[0], int(args.run[1]))
        return 0
    small, large = (int(s) for s in args.sizes.split(","))
    started = utc_now_iso()
    results: dict[str, Any] = {}
    for kind in args.kinds.split(","):
        log(f"count_instructions: {kind} at {small:,} and {large:,} events under callgrind")
        low, high = count(kind, small), count(kind, large)
        per_event = (high - low) / (large - small)
        results[kind] = {"instructions": {str(small): low, str(large): high},
                         "per_event": round(per_event)}  # fmt: skip
        log(f"count_instructions: {kind}: {per_event:,.0f} instructions an event")
    params = {"kinds": args.kinds, "sizes": [small, large]}
    notes = ["Instructions, not seconds: the same for the same code and input, however busy"
             " the machine; per_event is the difference of the two sizes per event."]  # fmt: skip
    result = envelope(
        "count_instructions",
        "stream-expiry-processor",
        params=params,
        extra=results,
        notes=notes,
        started_at=started,
    )
    emit_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

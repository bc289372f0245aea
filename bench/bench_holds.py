"""Legal holds at scale in the per-partition processor, no Kafka (not in the suite).

    python -m bench.bench_holds [--holds 10000] [--events 20000]

One org holds ``--holds`` records by id (record-level holds) and is held org-wide too.
Timed, in seconds: ingest of ``--events`` events of that org (the first ``--holds`` of
them for the held records), firing them all (every one deferred by the org-wide hold),
the release of every record-level hold at once (nothing goes: the org-wide hold keeps
them, and each deferral is recorded again), then the release of the org-wide hold (every
record tombstoned). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import orjson

from stream_expiry.holds import Hold, HoldBook
from stream_expiry.policy import Resolution
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

T0 = 1_800_000_000_000
TTL = 1_000


@dataclass
class _Rec:
    offset: int
    key: bytes | None
    value: bytes | None


def _processor(book: HoldBook) -> PartitionProcessor:
    return PartitionProcessor(
        "in",
        0,
        PartitionStore(MemoryKV()),
        resolve=lambda _identity, _at: Resolution(TTL, "default"),
        sliding=frozenset(),
        categories=frozenset({"conversation"}),
        max_skew_ms=10**12,
        now_ms=T0,
        holds=book,
    )


def _release_all(proc: PartitionProcessor, now: int) -> int:
    tombstones = 0
    while proc.releasing:
        effects = proc.release_due(now)
        tombstones += len(effects.tombstones)
        proc.settle(effects, now)
    return tombstones


def run(holds: int, events: int) -> dict[str, float | int]:
    book = HoldBook()
    for i in range(holds):
        book.place(Hold(f"h{i}", "big", None, None, None, f"r{i}", "case", None))
    book.place(Hold("org", "big", None, None, None, None, "case", None))
    proc = _processor(book)
    body = {"org": "big", "bot": "b1", "category": "conversation", "ts": T0}
    recs = [_Rec(i, None, orjson.dumps(body | {"record_id": f"r{i}"})) for i in range(events)]
    out: dict[str, float | int] = {"holds": holds, "events": events}
    t = time.perf_counter()
    for i in range(0, events, 200):
        proc.settle(proc.process(recs[i : i + 200], T0), T0)
    out["ingest_s"] = round(time.perf_counter() - t, 3)
    now = T0 + TTL
    t = time.perf_counter()
    while (first := proc.next_due_ms()) is not None and first <= now:
        proc.settle(proc.fire_due(now, 2000), now)
    out["fire_deferred_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    for i in range(holds):
        book.release(f"h{i}")
    out["release_record_holds_tombstones"] = _release_all(proc, now)
    out["release_record_holds_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    book.release("org")
    out["release_org_hold_tombstones"] = _release_all(proc, now)
    out["release_org_hold_s"] = round(time.perf_counter() - t, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--holds", type=int, default=10_000)
    p.add_argument("--events", type=int, default=20_000)
    args = p.parse_args()
    print(json.dumps(run(args.holds, args.events)))


if __name__ == "__main__":
    main()

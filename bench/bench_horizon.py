"""The horizon's loads at scale in the per-partition processor, on RocksDB, no Kafka (not in
the suite).

    python -m bench.bench_horizon [--records 200000] [--within]

``--records`` records, stored, fall due over one quarter of an hour, an hour from now (a
platform where long-lived records expire at ``records / 900`` a second). ``--within``:
their events arrive with the expiry already within the horizon instead, due from one to
59 minutes on (a platform with that many sessions open at once), and the ingest counts
in the most timers held and the RSS. The service's two
tasks are played on a simulated clock: the loop's turn every 200 ms (``extend_horizon``)
and the firing task at each due time (``fire_due``), until all have fired. Reported: the
longest single call (the loop is blocked that long), the most timers the wheel held, the
process's peak RSS growth (sampled every 100 turns), and how many records fired more than
a tick after their expiry. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time

import orjson
import psutil

from stream_expiry.policy import Resolution
from stream_expiry.state import PartitionProcessor, PartitionStore, RocksKV

T0 = 1_800_000_000_000
HOUR = 3_600_000
SLICE_MS = 15 * 60_000
TURN_MS = 200


class _Rec:
    __slots__ = ("key", "offset", "value")

    def __init__(self, offset: int, value: bytes) -> None:
        self.offset, self.key, self.value = offset, None, value


def run(records: int, *, within: bool = False) -> dict[str, float | int | bool]:
    work = tempfile.TemporaryDirectory(prefix="bench-horizon-")
    ttl = 2 * HOUR
    proc = PartitionProcessor(
        "in",
        0,
        PartitionStore(RocksKV(work.name)),
        resolve=lambda _identity, _at: Resolution(ttl, "default"),
        sliding=frozenset(),
        categories=frozenset({"conversation"}),
        max_skew_ms=10**12,
        now_ms=T0,
    )
    # Created an hour ago with a 2 h TTL: due from an hour on, over a quarter of an hour;
    # ``within``: due from a minute on, over 58 minutes.
    if within:
        first, step = T0 - 2 * HOUR + 60_000, 58 * 60_000 / records
    else:
        first, step = T0 - HOUR, SLICE_MS / records
    gc.collect()
    me = psutil.Process()
    rss0 = peak = me.memory_info().rss
    most = 0
    for i in range(0, records, 5_000):
        batch = [
            _Rec(
                j,
                orjson.dumps(
                    {
                        "org": "o",
                        "category": "conversation",
                        "record_id": f"r{j}",
                        "ts": first + int(j * step),
                    }
                ),
            )
            for j in range(i, min(records, i + 5_000))
        ]
        proc.settle(proc.process(batch, T0), T0)
        most = max(most, proc.timers)
        peak = max(peak, me.memory_info().rss)
    longest = 0.0
    fired = late = turns = 0
    now, turn = T0, T0
    started = time.perf_counter()
    while fired < records:
        due = proc.next_due_ms()
        now = max(now, turn if due is None else min(due, turn))
        if due is not None and due <= now:
            t = time.perf_counter()
            effects = proc.fire_due(now, 2_000)
            proc.settle(effects, now)
            longest = max(longest, time.perf_counter() - t)
            fired += len(effects.tombstones)
            late += sum(f.emitted_at > (f.before.expires_at or 0) + 10 for f in effects.tombstones)
        if now >= turn:
            t = time.perf_counter()
            proc.extend_horizon(now)
            longest = max(longest, time.perf_counter() - t)
            turn += TURN_MS
            turns += 1
            if turns % 100 == 0:
                peak = max(peak, me.memory_info().rss)
        most = max(most, proc.timers)
    proc.store.close()
    work.cleanup()
    return {
        "records": records,
        "within": within,
        "longest_call_ms": round(longest * 1000, 1),
        "most_timers_held": most,
        "rss_peak_growth_mib": round((peak - rss0) / 2**20, 1),
        "fired": fired,
        "fired_late": late,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument(
        "--within", action="store_true", help="events arrive already due within the horizon"
    )
    args = p.parse_args()
    print(json.dumps(run(args.records, within=args.within)))


if __name__ == "__main__":
    main()

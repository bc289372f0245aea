"""``stream-expiry deletions``' counting of receipts, no Kafka (not in the suite).

    python -m bench.bench_deletions [--receipts 200000]

Counts ``--receipts`` receipts of two stores (the parsed values and their ``deleted_at``,
as :func:`stream_expiry.deletions.deletions` hands them over) and prints one JSON object:
the seconds per million receipts and the bytes the report holds at its peak (tracemalloc),
per receipt. The receipts themselves are made before the measure: what is left is what
the report keeps of them (its waits, its counters).
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

from stream_expiry.deletions import Deletions, Filter
from stream_expiry.timeutil import format_ts

T0 = 1_800_000_000_000


def _receipts(n: int) -> list[tuple[dict[str, object], int]]:
    out = []
    for i in range(n):
        deleted_at = T0 + 7_000 + i
        receipt: dict[str, object] = {
            "receipt_id": f"{i:032x}",
            "store": "pg" if i % 2 else "sqlite",
            "key": f"acme/support/live/conversation/r{i}",
            "org": "acme",
            "bot": "support",
            "env": "live",
            "category": "conversation",
            "record_id": f"r{i}",
            "reason": "ttl",
            "rows_deleted": 1,
            "created_at": format_ts(T0),
            "expires_at": format_ts(T0 + 6_000),
            "ttl_seconds": 6,
            "ttl_source": "default",
            "emitted_at": format_ts(T0 + 6_000),
            "deleted_at": format_ts(deleted_at),
        }
        out.append((receipt, deleted_at))
    return out


def _count(receipts: list[tuple[dict[str, object], int]]) -> None:
    report = Deletions(Filter({}))
    for receipt, deleted_at in receipts:
        report.add(receipt, (), deleted_at)
    report.as_dict()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--receipts", type=int, default=200_000)
    args = p.parse_args()
    receipts = _receipts(args.receipts)
    began = time.perf_counter()
    _count(receipts)
    took = time.perf_counter() - began
    tracemalloc.start()  # a second run: tracing slows the first's clock many times
    _count(receipts)
    _now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = args.receipts
    print(
        json.dumps(
            {
                "receipts": n,
                "s_per_million": round(took / n * 1e6, 2),
                "peak_bytes_per_receipt": round(peak / n, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

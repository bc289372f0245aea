"""How long a record waits to be read, by the consumer's ``fetch_max_wait_ms``.

    python -m bench.bench_fetch_wait [--waits 100,20,10] [--records 200] [--interval-ms 37]

Why: a session fires only once its partition's input is read (a touch may slide it), so
the time from a record's ack to its read is part of a session's lag. Kafka answers a waiting
fetch the moment a record arrives, whatever the wait; the embedded test broker answers at
its next look, up to half the wait later. This measures it (the demo's ``FETCH_WAIT_MS``
rests on it).

On the embedded broker, per wait: one partition, a producer sending ``--records`` records
one at a time, each acknowledged before the next, ``--interval-ms`` apart (not a divisor of
the waits, so records arrive at every point of a waiting fetch), each carrying its send
time; a consumer with that ``fetch_max_wait_ms`` reads them. Reported: the time from the
send to the read, p50 / p90 / p99 / max per wait.

Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio

from bench.common import emit_result, envelope, log, percentile, summarize, utc_now_iso
from stream_expiry.broker import EmbeddedBroker
from stream_expiry.kafka import consumer, ensure_topics, producer


async def read_latencies(
    bootstrap: str, wait_ms: int, records: int, interval_s: float
) -> list[float]:
    """Milliseconds from each record's send to its read, with ``wait_ms`` as the fetch wait."""
    topic = f"fetch-wait-{wait_ms}-{time.monotonic_ns()}"
    await ensure_topics(bootstrap, [topic], partitions=1)
    latencies: list[float] = []
    async with (
        producer(bootstrap, linger_ms=0) as prod,
        consumer(bootstrap, topic, fetch_max_wait_ms=wait_ms) as cons,
        anyio.create_task_group() as tg,
    ):

        async def read() -> None:
            while len(latencies) < records:
                batch = await cons.getmany(timeout_ms=1000)
                now = time.monotonic()
                for recs in batch.values():
                    latencies.extend((now - float(r.value)) * 1000 for r in recs)

        tg.start_soon(read)
        await anyio.sleep(1)  # the consumer's first fetches are in flight: a steady state
        for _ in range(records):
            await prod.send_and_wait(topic, str(time.monotonic()).encode())
            await anyio.sleep(interval_s)
    return latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--waits", default="100,20,10", help="fetch_max_wait_ms values, comma-separated")
    p.add_argument("--records", type=int, default=200, help="records per wait")
    p.add_argument("--interval-ms", type=float, default=37.0, help="between two records")
    args = p.parse_args()
    started = utc_now_iso()
    waits = [int(w) for w in args.waits.split(",")]
    results: dict[str, Any] = {}
    with EmbeddedBroker() as broker:
        log(f"fetch wait: embedded broker on {broker.bootstrap_servers}")
        for wait in waits:
            lat = anyio.run(
                read_latencies,
                broker.bootstrap_servers,
                wait,
                args.records,
                args.interval_ms / 1000,
            )
            summary = summarize(lat).to_json()
            summary["p90"] = round(percentile(sorted(lat), 90), 3)
            results[str(wait)] = summary
            log(f"fetch_max_wait_ms {wait}: p50 {summary['p50']} p99 {summary['p99']} ms")
    emit_result(
        envelope(
            "bench_fetch_wait",
            "tansu-embedded",
            params={"waits": waits, "records": args.records, "interval_ms": args.interval_ms},
            extra={"read_latency_ms_by_wait": results},
            notes=["send (acked) to read by a consumer, one partition, one record at a time"],
            started_at=started,
        )
    )


if __name__ == "__main__":
    main()

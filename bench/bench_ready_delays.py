"""The two delays before ``/readyz`` after a warm restart, each measured both ways.

    python -m bench.bench_ready_delays [--pending 1000000] [--rounds 5]

Stores are left as a stopped service leaves them (``bench.bench_restart``'s warm mode:
``--pending`` records on the changelog, the stores restored and checkpointed), then, in
alternating rounds (the machine is shared: before and after in the same minutes):

* ``open``: the assignment's 12 stores opened as the restore opens them: in the event loop
  (before) or in a worker thread (after). ``wall_s`` is the open's own time; ``loop_stall_s``
  the longest gap between two turns of a task that asks for the loop every millisecond
  meanwhile (what heartbeats, ``/healthz`` and the firing task wait).
* ``ends``: the positioning's read of where the 12 input partitions (empty, as in a warm
  restart) begin and end, on a started reader: its consumer's fetch (before: an assignment,
  ``seek_to_beginning`` and ``stable_ends``) or ListOffsets for the beginnings and one
  Fetch that waits 1 ms for the ends (after, ``fetch.ends_and_highs``).

Prints ONE JSON object (``bench.common.envelope``); progress on stderr.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio
from aiokafka import TopicPartition

from bench.bench_restart import leave_stores
from bench.changelog import prefill_changelog
from bench.common import NS_PER_MS, base_parser, emit_result, envelope, log, utc_now_iso
from bench.e2e_expiry import PARTITIONS, BenchTopics, temp_state_dir
from stream_expiry.broker import EmbeddedBroker
from stream_expiry.fetch import ends_and_highs
from stream_expiry.kafka import consumer, ensure_topics, stable_ends
from stream_expiry.state.restore_workers import _close, _open, _open_aside
from stream_expiry.state.store import DEFAULT_GRACE_MS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

TICK_S = 0.001


async def _stall_during(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """``work``'s wall time, and the longest the loop went without a turn meanwhile."""
    longest = 0.0
    done = False

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await anyio.sleep(TICK_S)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(TICK_S * 5)  # the ticker runs
        t0 = time.perf_counter()
        await work()
        wall = time.perf_counter() - t0
        done = True
    return wall, longest


async def _open_round(paths: dict[tuple[str, int], str], threaded: bool) -> dict[str, float]:
    async def work() -> None:
        if threaded:
            stores = await _open_aside(paths, DEFAULT_GRACE_MS)
        else:
            stores = _open(paths, DEFAULT_GRACE_MS)
        _close(stores)

    wall, stall = await _stall_during(work)
    return {"wall_s": wall, "loop_stall_s": stall}


async def _ends_round(bootstrap: str, tps: list[TopicPartition], fetchless: bool) -> float:
    async with consumer(bootstrap) as reader:
        t0 = time.perf_counter()
        if fetchless:
            starts = await reader.beginning_offsets(tps)
            await ends_and_highs(reader, starts)
        else:
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            await stable_ends(reader, tps)
            for tp in tps:
                await reader.position(tp)
        return time.perf_counter() - t0


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


async def run(pending: int, rounds: int, bootstrap: str) -> dict[str, Any]:
    started = utc_now_iso()
    topics = BenchTopics.fresh()
    await ensure_topics(bootstrap, topics.all, partitions=PARTITIONS)
    now_ms = time.time_ns() // NS_PER_MS
    opens: dict[str, list[dict[str, float]]] = {"loop": [], "thread": []}
    ends: dict[str, list[float]] = {"consumer_fetch": [], "list_offsets_and_fetch": []}
    tps = [TopicPartition(t, p) for t in topics.inputs for p in range(PARTITIONS)]
    with temp_state_dir("readydelays") as state_dir:
        log(f"bench_ready_delays: {pending:,} stamps on the changelog, stores left warm")
        await prefill_changelog(bootstrap, topics, pending, now_ms, due=0)
        await leave_stores(bootstrap, topics, state_dir, now_ms, checkpoint=True)
        paths = {(tp.topic, tp.partition): os.path.join(state_dir, f"{tp.topic}-{tp.partition}") for tp in tps}  # fmt: skip
        for i in range(rounds * 2):
            threaded = i % 2 == 1
            opens["thread" if threaded else "loop"].append(await _open_round(paths, threaded))
            fetchless = i % 2 == 0
            key = "list_offsets_and_fetch" if fetchless else "consumer_fetch"
            ends[key].append(await _ends_round(bootstrap, tps, fetchless))
            log(f"bench_ready_delays: round {i + 1} of {rounds * 2}")
    return envelope(
        "ready_delays",
        "stream-expiry",
        params={"pending": pending, "rounds": rounds, "stores": len(paths), "partitions": len(tps)},
        extra={
            "open": {
                how: {
                    "wall_s": _summary([r["wall_s"] for r in runs]),
                    "loop_stall_s": _summary([r["loop_stall_s"] for r in runs]),
                }
                for how, runs in opens.items()
            },
            "ends_s": {how: _summary(values) for how, values in ends.items()},
        },
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "ready delays")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each way")
    args = parser.parse_args(argv)
    with EmbeddedBroker() as broker:
        result = anyio.run(run, args.pending, args.rounds, broker.bootstrap_servers)
    emit_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a rebalance costs the instance that stays: a member joins the group, then leaves.

    python -m bench.bench_rebalance [--partitions 16] [--pending 120000]

Runs the real service (``stream-expiry run``, a child process, as ``bench.e2e_partitions``)
against the embedded Tansu broker, every topic with ``--partitions`` partitions (three input
topics: 3 x N input partitions). ``--pending`` records over the three categories, due 30 to
40 minutes from now (within the horizon: every partition's wheel holds its timers), are
ingested; then a plain consumer joins the service's group (offering its assignors) and,
once the service is ready beside it, leaves. aiokafka's protocol is the eager one: each
time, every partition is revoked from the service and then assigned again, most of them
the ones it had.

Measured from the service's log (its ``assigned ...; reading X s after the assignment``
line): the seconds from the group's assignment to reading again, per rebalance, which is
the instance's own part of the pause (the join itself is the broker's: ~3 s on Tansu);
and how many partitions resumed as they were or were restored.
Not in the suite (``bench.run_suite``): ~1-2 minutes at the defaults.

Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.e2e_expiry import BenchTopics, event_value, input_partitions, produce_messages
from bench.e2e_partitions import TTLS_MS, ServiceProcess, ingested, prepared, proc_figures
from stream_expiry.broker import EmbeddedBroker
from stream_expiry.kafka import consumer
from stream_expiry.model import Identity
from stream_expiry.service import ASSIGNORS

if TYPE_CHECKING:
    from collections.abc import Iterator

# The service's assignment line (Service._on_assigned); ``kept``: of those restored, the
# stores kept from before (absent when none was restored).
READING = re.compile(
    r"assigned (?P<partitions>\d+) partitions? \(.*\), (?P<resumed>\d+) resumed as they were "
    r"and (?P<restored>\d+) restored from the changelog(?: \((?P<kept>\d+) kept stores caught "
    r"up from their positions, \d+ rebuilt from empty\))?: (?P<timers>\d+) timers within the "
    r"horizon loaded; reading (?P<after>[\d.]+) s after"
)


def log(msg: str) -> None:
    print(f"[bench_rebalance] {msg}", file=sys.stderr, flush=True)


def pending_messages(topics: BenchTopics, n: int) -> Iterator[tuple[str, bytes, bytes]]:
    """``n`` records over the three categories, due from 30 to 40 minutes from now."""
    first = int(time.time() * 1000) + 30 * 60_000
    cats = ("conversation", "session", "error")
    for i in range(n):
        cat = cats[i % 3]
        ident = Identity("org", f"bot-{i % 7}", "live", cat, f"r-{i:012d}")
        due = first + i * 600_000 // max(1, n)
        yield topics.input_for(cat), ident.key.encode(), event_value(ident, due - TTLS_MS[cat])


def rebalances(log_path: str, since: int) -> tuple[list[dict[str, Any]], int]:
    """The service's assignments logged from byte ``since`` on, and where the log ends."""
    text = Path(log_path).read_bytes()
    lines = text[since:].decode("utf-8", "replace").splitlines()
    found = []
    for line in lines:
        if m := READING.search(line):
            found.append(
                {
                    "partitions": int(m["partitions"]),
                    "timers": int(m["timers"]),
                    "reading_after_assignment_s": float(m["after"]),
                    "resumed": int(m["resumed"]),
                    "restored": int(m["restored"]),
                    "restored_into_kept_stores": int(m["kept"] or 0),
                }
            )
    return found, len(text)


async def run(args: Any, topics: BenchTopics, work: str) -> dict[str, Any]:
    state_dir = os.path.join(work, "state")
    config_path = os.path.join(work, "expiry.toml")
    group = f"{topics.prefix}-group"
    tps = input_partitions(topics.inputs, args.partitions)
    out: dict[str, Any] = {"partitions": args.partitions, "input_partitions": len(tps)}
    log_path = os.path.join(work, "service.log")
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        service = ServiceProcess(config_path, bootstrap, log_path)
        try:
            out["ready_s"] = round(service.start(), 2)
            sent = await produce_messages(bootstrap, pending_messages(topics, args.pending))
            out["ingest_s"] = round(await ingested(bootstrap, group, tps, sent), 1)
            out["with_pending"] = proc_figures(service.pid, state_dir)
            log(f"{sent} pending ingested: {out['with_pending']}")
            _, seen = rebalances(log_path, 0)
            member = {"group_id": group, "partition_assignment_strategy": ASSIGNORS}
            async with consumer(bootstrap, *topics.inputs, **member) as other:
                t0 = time.perf_counter()
                while not other.assignment():
                    await other.getmany(timeout_ms=100)
                out["member_joined_s"] = round(time.perf_counter() - t0, 2)
                joined = await _logged(log_path, seen, 1)
                log(f"member joined: {joined}")
                _, seen = rebalances(log_path, 0)
            left = await _logged(log_path, seen, 1)
            log(f"member left: {left}")
            out["joined"], out["left"] = joined, left
        finally:
            service.stop()
    return out


async def _logged(log_path: str, since: int, count: int) -> list[dict[str, Any]]:
    """Wait (up to 120 s) for ``count`` assignments in the log after byte ``since``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found, _ = rebalances(log_path, since)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no assignment logged within 120 s: see {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--pending", type=int, default=120_000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    with prepared(args) as (topics, work):
        print(json.dumps(asyncio.run(run(args, topics, work))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

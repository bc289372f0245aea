"""The PostgreSQL server's CPU a record, statement by statement, of the sink's store.

    python -m bench.pg_statement_cpu [--records 100000] [--dsn postgresql://...]

Writes ``--records`` stamps, then deletes them by their tombstones, through
``PostgresStore.apply`` in batches of 5,000 (the receipts of each batch marked published
in the next, as the sink does), and prints, for each statement, the CPU its backend used
(user + system, from Linux's /proc, read before and after the statement) and the wall time
the client waited, per record. Why: ``bench_sinks`` gives the server's CPU of a whole pass
(every ``postgres`` process), which says how much but not where; a statement's CPU is
counted here on its own backend only, so other clients of the server do not count.

No Kafka, no sink: the store's own statements. ``parallel`` 1, so one backend at a time.
Prints plain text on stdout (a tool for finding where the time goes, not in the suite).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bench_sinks import HOUR, T0, stamp_changes, stamps, tombstone_changes
from stream_expiry.sinks import postgres
from stream_expiry.sinks.postgres import DEFAULT_DSN, PostgresStore

BATCH = 5000


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Counted:
    """A connection whose statements (``execute``, ``fetch``, ``fetchrow``) are timed: the
    backend's CPU and the client's wait, summed by the statement's first words."""

    def __init__(
        self,
        conn: Any,
        cpu: collections.defaultdict[str, float],
        wall: collections.defaultdict[str, float],
    ):
        self._conn, self._cpu, self._wall = conn, cpu, wall
        self._pid = conn.get_server_pid()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._conn, name)
        if name not in ("execute", "fetch", "fetchrow"):
            return method

        async def counted(sql: str, *args: Any) -> Any:
            words = sql.split()
            what = " ".join(w.split(".")[-1].strip('"') for w in words[:3])
            cpu0, wall0 = _cpu_seconds(self._pid), time.perf_counter()
            try:
                return await method(sql, *args)
            finally:
                self._cpu[what] += _cpu_seconds(self._pid) - cpu0
                self._wall[what] += time.perf_counter() - wall0

        return counted


async def main(args: argparse.Namespace) -> None:
    cpu: collections.defaultdict[str, float] = collections.defaultdict(float)
    wall: collections.defaultdict[str, float] = collections.defaultdict(float)
    plain_init = postgres._PostgresTx.__init__

    def counted_init(self: Any, conn: Any, *rest: Any, **kw: Any) -> None:
        plain_init(self, _Counted(conn, cpu, wall), *rest, **kw)

    postgres._PostgresTx.__init__ = counted_init  # type: ignore[method-assign]
    n = args.records
    store = PostgresStore(args.dsn, name="pgcpu", schema=f"c{uuid.uuid4().hex[:10]}", parallel=1)
    await store.open()

    def report(phase: str, seconds: float) -> None:
        print(f"{phase}: {n} records in {seconds:.2f} s; per record:")
        for what in sorted(cpu):
            print(
                f"  {what:40s} {1e6 * cpu[what] / n:6.1f} us server CPU "
                f"{1e6 * wall[what] / n:6.1f} us wall"
            )
        cpu.clear()
        wall.clear()

    try:
        records = stamps(n, "c")
        writes = stamp_changes(records)
        start = time.perf_counter()
        for i in range(0, n, BATCH):
            await store.apply(writes[i : i + BATCH], now_ms=T0)
        report("stamps", time.perf_counter() - start)
        kills = tombstone_changes(records)
        published: list[str] = []
        start = time.perf_counter()
        for i in range(0, n, BATCH):
            out = await store.apply(kills[i : i + BATCH], now_ms=T0 + HOUR, published=published)
            published = [r.receipt_id for r in out.receipts]
        report("tombstones", time.perf_counter() - start)
    finally:
        postgres._PostgresTx.__init__ = plain_init  # type: ignore[method-assign]
        await store.drop_schema()
        await store.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--dsn", default=DEFAULT_DSN)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

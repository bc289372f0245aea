"""The long crash run: SIGKILL the service at random moments, many times, then check.

    python -m bench.soak_kill [--kills 100] [--seed N]

The same harness as ``tests/integration/test_crash.py`` (:mod:`stream_expiry.testing.crash`),
on an embedded Tansu broker of its own: ~100 events a second of creates, touches, deletes
and erasures of never-created records, one service process at a time in one consumer group
(a 2 s session, so each restart waits for the killed member to time out), killed 0.1-2 s
after it is ready, then a last run that must tombstone everything. Every tombstone is checked
against the time it reached the harness and the expiry computed from what was produced.

Prints ONE JSON object (``bench.common.envelope``; counts, the worst lag from ``expires_at``
to arrival, and ``violations``, which must be empty) on stdout; exit status 1 if any.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from bench.common import emit_result, envelope, log, utc_now_iso
from stream_expiry.broker import EmbeddedBroker
from stream_expiry.testing.crash import run_crashes

if TYPE_CHECKING:
    from anyio.abc import Process


async def _main(kills: int, seed: int) -> int:
    started_at = utc_now_iso()
    started: list[Process] = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        log(f"broker at {broker.bootstrap_servers}; {kills} kills, seed {seed}")
        try:
            outcome = await run_crashes(
                broker.bootstrap_servers,
                Path(tmp),
                kills=kills,
                seed=seed,
                started=started,
                final_timeout_s=180.0,
            )
        finally:
            for proc in started:
                if proc.returncode is None:
                    proc.kill()
    summary = outcome.summary()
    emit_result(
        envelope(
            "soak_kill",
            "stream-expiry",
            params={"kills": kills, "seed": seed},
            extra=summary,
            started_at=started_at,
        )
    )
    return 1 if summary["violations"] else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=100, help="SIGKILLs before the last run")
    p.add_argument("--seed", type=int, default=20261123, help="seed of the traffic and kills")
    args = p.parse_args(argv)
    if args.kills < 1:
        p.error("--kills must be at least 1")
    return anyio.run(_main, args.kills, args.seed)


if __name__ == "__main__":
    sys.exit(main())

"""Kill the service with SIGKILL at random moments while events flow, 8 times.

The harness (:mod:`stream_expiry.testing.crash`) runs the service as real processes in one
consumer group, so each restart resumes at the group's committed offsets; its traffic
creates, touches and deletes records and asks to erase records never created. The test
computes every record's expiry from what it produced (``ts`` + ttl, touches included) and
checks each tombstone against the time it reached the test: none early, none lost, none for
a record that never expires, ``expiry.stamped`` ending with a null for every tombstoned key
and no stamp after it, and the killed runs having done work (stamps, committed offsets that
moved and never went back). ``STREAM_EXPIRY_CRASH_KILLS`` changes the number of kills;
``python -m bench.soak_kill --kills 100`` is the long run (the same harness).

Eight kills, not the twenty of before: each restart costs ~4.5 s (the killed member's
2 s session, the test broker's ~3 s join hold), so twenty took ~99 s of a suite that is to
stay well under 20 minutes; the soak is bench/'s. Eight are two rounds of the harness's kill
moments (``_AFTER``: after a commit, two after a stamp, one after the ready line), so every
moment is still hit twice, and the shares :func:`violations` wants (a fifth of the runs moving
the committed offsets, three in four stamping) are still made by the runs killed only after
their first commit or stamp was seen, whatever the machine's speed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio
import pytest

from stream_expiry import codec
from stream_expiry.kafka import producer
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.service import wall_clock_ms
from stream_expiry.testing.crash import run_crashes, violations
from tests.conftest import TopicSet, read_all
from tests.integration.service_helpers import config_for, event, no_orphans, running_service

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

KILLS = int(os.environ.get("STREAM_EXPIRY_CRASH_KILLS", "8"))
STARTED: list[Process] = []


_no_orphans = no_orphans(STARTED)


@pytest.mark.timeout(60 + KILLS * 12)
async def test_sigkill_at_random_moments_loses_nothing_and_never_fires_early(
    broker: str, tmp_path: Path
) -> None:
    outcome = await run_crashes(broker, tmp_path, kills=KILLS, started=STARTED)
    summary = outcome.summary()
    assert summary["records"] > 500, summary
    assert summary["touched"] > 50, summary
    assert summary["deleted"] > 50, summary
    problems = violations(outcome)
    assert not problems, "\n".join([*problems, str(summary), str(outcome.resumes)])


async def test_a_tombstone_whose_null_never_reached_stamped_gets_it_after_a_restart(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The crash window the kill test found: killed after the broker acked a tombstone event
    but before it acked the null for ``expiry.stamped``. The restart must write the null
    (the stamp holds the record's data), for a ``ttl`` tombstone and for an erasure."""
    now = wall_clock_ms()
    source = codec.source_headers(topics.conversations, 0)
    due = Stamp(Identity("acme", "_", "live", "conversation", "due"), now - 9_000, now - 6_000,
                3_000, "default")  # fmt: skip
    erased = Stamp(Identity("acme", "_", "live", "conversation", "erased"), now - 1_000,
                   now + 3_600_000, 3_600_000, "default")  # fmt: skip
    async with producer(broker) as prod:
        for stamp, reason in ((due, "ttl"), (erased, "explicit")):
            key = stamp.identity.key.encode()
            await prod.send_and_wait(
                topics.stamped, encode_stamp(stamp), key=key, partition=0, headers=source
            )
            tomb = encode_tombstone(stamp, reason=reason, emitted_at=now - 500)  # type: ignore[arg-type]
            await prod.send_and_wait(topics.tombstones, tomb, key=key, partition=0, headers=source)
        # The erasure's input events: not committed, since the crash came before the settle.
        for op, ts in (("create", now - 1_000), ("delete", now - 600)):
            key, value = event("conversation", "erased", op=op, ts=ts)
            await prod.send_and_wait(topics.conversations, value, key=key, partition=0)
    config = config_for(
        topics, str(tmp_path / "state"), '[retention.defaults]\nconversation = "1h"\n'
    )
    keys = {due.identity.key.encode(), erased.identity.key.encode()}
    async with running_service(config, broker):
        with anyio.fail_after(20):
            while True:
                stamped = await read_all(broker, topics.stamped)
                if {r.key for r in stamped if r.value is None} >= keys:
                    break
                await anyio.sleep(0.1)
    last = {r.key: r.value for r in stamped}
    assert all(last[k] is None for k in keys), last

"""The sweep against tombstones queued behind a burst (a trial of the sinks, round 37).

After a service outage the service reads its backlog: each record already due is stamped,
then tombstoned at once (CONTRACT: "Already due at ingest: stamped, then tombstoned at
once"), and its tombstone may queue behind many others on ``expiry.tombstones``. A sink
whose sweep is on kept judging rows by the read-complete time W it had before the burst,
so a row whose stamp it read during the burst was swept at once, with a ``sweep`` receipt
and the warning "is the stream-expiry service running and keeping up?", although its
``ttl`` tombstone was already on the topic when the sweep ran (the trial: 7 rows, their
tombstones emitted 1.6 s before the sweep, with a 5 s grace).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from stream_expiry.sinks.framework import wall_clock_ms
from tests.integration.sink_helpers import (
    MINUTE,
    ident,
    open_store,
    produce,
    running_sink,
    sink_config,
    stamp,
    stamped_msg,
    store_params,
    tombstone_msg,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from stream_expiry.sinks.store import Store
    from tests.conftest import TopicSet

pytestmark = pytest.mark.integration

HOUR = 60 * MINUTE


@pytest_asyncio.fixture
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(request.param, tmp_path) as s:
        yield s


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_the_sweep_does_not_overtake_a_tombstone_queued_behind_a_burst(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """README (sinks): "a tombstone that gives its receipt the rule, is never overtaken by
    the sweep"; the grace "leaves the service time to deliver the real tombstone". Here the
    row's ttl tombstone is on the topic before the sink reads its stamp, behind a burst of
    other tombstones (erasures of records never seen): the row must get the ttl receipt."""
    now = wall_clock_ms()
    first = stamp(ident("first"), created_at=now, ttl_ms=HOUR)
    late = stamp(ident("late"), created_at=now - 2 * HOUR, ttl_ms=HOUR)  # due at ingest
    burst = [stamp(ident(f"e{n}"), created_at=now, ttl_ms=None) for n in range(3000)]
    config = sink_config(broker, topics, sweep_interval_s=0.05, sweep_grace_s=5, batch_size=100)
    async with running_sink(store, config) as sink:
        await produce(broker, topics.stamped, [stamped_msg(first)])

        async def caught_up() -> bool:  # the sweep knows a read-complete time
            return sink.metrics["messages_total"] >= 1 and sink._read_to_ms is not None

        await wait_until(caught_up, what="the sink caught up once")
        # The service after an outage: a record already due, stamped and tombstoned at
        # once, its tombstone behind a burst of others (erasures of records never seen);
        # all of it on the topics within a fraction of a second.
        await produce(broker, topics.stamped, [stamped_msg(late)])
        await produce(
            broker,
            topics.tombstones,
            [
                *(tombstone_msg(s, reason="explicit", emitted_at=wall_clock_ms()) for s in burst),
                tombstone_msg(late, emitted_at=wall_clock_ms()),
            ],
        )

        async def all_read() -> bool:
            return sink.metrics["messages_total"] >= len(burst) + 3

        await wait_until(all_read, what="every message applied")
        swept = sink.metrics["swept_total"]
    reasons = {r.identity.record_id: r.reason for r in await store.receipts()}
    assert reasons["late"] == "ttl", f"the row got a {reasons['late']!r} receipt"
    assert swept == 0

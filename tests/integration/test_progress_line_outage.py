"""``run``'s progress line goes on while the loop that reads the input waits on the broker.

The line ("events N (R/s), ..., oldest overdue S", every 10 s) was said from that loop,
which waits for an offset commit up to 10 s, and a commit after each slice a broker that
stopped answering never takes: in a trial such a broker silenced it for 19 and 26 s, the
very time an operator reads it for how late deletions are. It is now said from the task
that keeps the gauges once a second, which goes on whatever the loop waits on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest

from stream_expiry.kafka import ensure_topics
from stream_expiry.testing.proxy import proxied_broker
from tests.conftest import make_topic_set
from tests.integration.service_helpers import config_for, event, produce, running_service

if TYPE_CHECKING:
    from pathlib import Path

    from stream_expiry.service import ServiceStats

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

OFFSET_COMMIT = 8  # the Kafka API key


@pytest.mark.timeout(90)
async def test_the_progress_line_is_given_while_an_offset_commit_waits(tmp_path: Path) -> None:
    topics = make_topic_set()
    given: list[tuple[float, int]] = []  # (monotonic time, events) of each call

    def progress(stats: ServiceStats) -> None:
        given.append((time.monotonic(), stats.events))

    async with proxied_broker() as proxy:
        await ensure_topics(proxy.address, topics.all, partitions=2)
        # On the input before the start: read at once, and their offsets' commit held.
        await produce(
            proxy.address,
            [(topics.conversations, *event("conversation", f"c{i}")) for i in range(20)],
        )
        proxy.hold_requests(OFFSET_COMMIT)
        config = config_for(topics, str(tmp_path / "state"))
        try:
            async with running_service(config, proxy.address, on_progress=progress) as svc:
                with anyio.fail_after(30):  # decided; the commit after them waits
                    while svc.stats.events < 20:  # noqa: ASYNC110 (a count, no event)
                        await anyio.sleep(0.05)  # a poll interval: the count decides
                decided = time.monotonic()
                with anyio.fail_after(30):
                    while len([t for t, _ in given if t > decided + 1]) < 3:  # noqa: ASYNC110
                        await anyio.sleep(0.05)  # a poll interval: the calls decide
                later = [t for t, _ in given if t > decided + 1]
                proxy.release_requests()  # so that the service stops cleanly
        finally:
            proxy.release_requests()
    # Given every second or so (not once the commit gave up waiting, 10 s on): the third
    # call after the first second is due about 4 s on; 8 leaves room for a busy machine.
    assert later[2] - decided < 8, f"given at {[round(t - decided, 1) for t in later]} s"
    assert given[-1][1] == 20

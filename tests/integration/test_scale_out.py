"""Two instances in one consumer group share the partitions; when one leaves, the other
takes its partitions over (restoring them from the changelog) and nothing is lost or
resurrected."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry.timeutil import parse_ts
from tests.conftest import TopicSet, read_all, wait_for
from tests.integration.service_helpers import config_for, event, produce, running_service

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

RETENTION = '[retention.defaults]\nconversation = "2s"\nerror = "1h"\n'


@pytest.mark.timeout(180)
async def test_two_instances_share_the_work_and_one_takes_over_when_the_other_leaves(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    a = config_for(topics, str(tmp_path / "a"), RETENTION)
    b = config_for(topics, str(tmp_path / "b"), RETENTION)
    first = [(topics.conversations, *event("conversation", f"c{i}")) for i in range(40)]
    first += [(topics.errors, *event("error", f"keep{i}")) for i in range(10)]
    async with running_service(b, broker, fast_join=False) as svc_b:
        async with running_service(a, broker, fast_join=False) as svc_a:
            # Both own partitions once the group has rebalanced around the second member.
            await wait_for(lambda: bool(svc_a.owned) and bool(svc_b.owned), timeout_s=30)
            assert not (svc_a.owned & svc_b.owned)
            await produce(broker, first)
            await wait_for(
                lambda: svc_a.stats.tombstones + svc_b.stats.tombstones >= 40, timeout_s=30
            )
            assert svc_a.stats.events > 0
            assert svc_b.stats.events > 0
        # A has left: B owns everything now, A's partitions restored from the changelog.
        await wait_for(lambda: len(svc_b.owned) == 6, timeout_s=30)
        second = [(topics.conversations, *event("conversation", f"late{i}")) for i in range(20)]
        await produce(broker, second)
        await wait_for(lambda: svc_b.stats.verdicts["created"] >= 20, timeout_s=30)
        with anyio.fail_after(30):
            while True:
                tombs = await read_all(broker, topics.tombstones)
                if {t.key for t in tombs} >= {k for _, k, _ in first[:40] + second}:
                    break
                await anyio.sleep(0.2)
    per_key = Counter(t.key for t in tombs)
    for t in tombs:
        body = orjson.loads(t.value)
        assert body["category"] == "conversation"  # the 1 h errors are still pending
        assert parse_ts(body["emitted_at"]) >= parse_ts(body["expires_at"])
    # The takeover restored A's deletions: nothing tombstoned twice.
    assert max(per_key.values()) == 1, per_key.most_common(3)

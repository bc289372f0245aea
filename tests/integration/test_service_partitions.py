"""Many partitions on one instance: the loop's per-turn work follows the partitions with
work, not the partitions owned.

With 48-partition topics (144 stores in one instance) the service wrote every store twice
a second at its commit, and a release decided every partition's held records in one loop
turn while the timers waited (bench.e2e_partitions, round 26). These tests count what a
turn does over partitions that have nothing to do.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from stream_expiry import commits as commits_module
from stream_expiry import service as service_module
from stream_expiry.holds import Hold, encode_hold
from stream_expiry.kafka import ensure_topics, producer
from stream_expiry.outbox import Outbox
from stream_expiry.state.store import input_position_name
from tests.conftest import make_topic_set, wait_for
from tests.integration.service_helpers import config_for, event, produce, running_service
from tests.log_capture import Captured, captured_logs

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from stream_expiry.control import ControlTopics
    from stream_expiry.service import Service
    from stream_expiry.state.store import PartitionStore
    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

FAR = """
[retention.defaults]
conversation = "30d"
session = "30d"
error = "30d"
"""


def _marked(service: Service) -> list[tuple[str, int]]:
    """The partitions whose store holds the mark of a committed input offset."""
    return [
        slot
        for slot, proc in service.processors.items()
        if proc.store.position_mark(input_position_name(*slot)) is not None
    ]


def _count_meta_writes(store: PartitionStore, slot: tuple[str, int], writes: Counter[Any]) -> None:
    """Count ``store``'s meta writes under ``slot``, each still written."""
    write: Callable[..., None] = store.set_meta

    def counted(values: Any) -> None:
        writes[slot] += 1
        write(values)

    store.set_meta = counted  # type: ignore[method-assign]


async def test_a_commit_writes_only_the_store_that_settled_something_once(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One event on one partition: the commit writes that partition's store once (its
    changelog positions and its input offset's mark together), and none of the stores
    that share its changelog partition and did nothing. Before, the commit wrote the busy
    store twice and each idle one sharing the changelog partition once."""
    monkeypatch.setattr(commits_module, "CHECKPOINT_ALL_EVERY_S", 3600.0)
    config = config_for(topics, str(tmp_path / "state"), FAR)
    writes: Counter[tuple[str, int]] = Counter()
    async with running_service(config, broker) as service:
        await wait_for(lambda: len(service.processors) == 6)
        for slot, proc in service.processors.items():
            _count_meta_writes(proc.store, slot, writes)
        await produce(broker, [(topics.conversations, *event("conversation", "c1"))])

        await wait_for(lambda: bool(_marked(service)))
        (busy,) = _marked(service)
        assert busy[0] == topics.conversations
        # Another commit or two with nothing new: nothing more is written.
        committed = service._commits.committed_at
        await wait_for(lambda: service._commits.committed_at > committed + 1.0, timeout_s=10)
        assert dict(writes) == {busy: 1}


async def test_a_restart_over_kept_stores_knows_the_group_offset_is_marked(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A restart with its stores kept: the positioning finds the group's offset marked in
    the partition's store, and tells the commits, so that while a create read again is
    parked before the partition's first slice end, each commit goes to that marked offset
    again. Before, the commits knew of no marked offset after a restart (or a partition
    given back by a rebalance), and committed the parked create's offset unmarked, passed
    over by the check for a cluster rebuilt (a review)."""
    config = config_for(topics, str(tmp_path / "state"), FAR)
    async with running_service(config, broker) as service:
        await wait_for(lambda: len(service.processors) == 6)
        await produce(broker, [(topics.conversations, *event("conversation", "c1"))])

        await wait_for(lambda: bool(_marked(service)))
        (slot,) = _marked(service)
    async with running_service(config, broker) as service:
        far = 1 << 40  # settled far past the commit, with no slice end below it
        # The first commit's offset (after the one event at offset 0), marked in the store.
        await wait_for(
            lambda: slot in service.processors and service._commits.marked(slot, far) == 1
        )


SHORT = """
[retention.defaults]
conversation = "1s"
session = "1s"
error = "1s"
"""


@pytest.mark.timeout(120)
async def test_a_release_is_decided_in_slices_the_partitions_share(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An org-wide hold over 600 records on six partitions, released: no loop turn looks
    at more than a slice of held records (50 here) over all partitions together, and
    every record is tombstoned once. Before, each partition's held records were all
    decided in the first turn after the release (5,000 a partition)."""
    monkeypatch.setattr(service_module, "RELEASE_BATCH", 50)
    config = config_for(topics, str(tmp_path / "state"), SHORT)
    hold = Hold("case-1", "held", None, None, None, None, "case", None)
    held = 600
    async with running_service(config, broker) as service:
        await produce(broker, [(topics.holds, hold.hold_id.encode(), encode_hold(hold))])
        await wait_for(lambda: len(service.holds) == 1)
        inputs = (topics.conversations, topics.sessions, topics.errors)
        cats = ("conversation", "session", "error")
        await produce(
            broker,
            [
                (inputs[i % 3], *event(cats[i % 3], f"r{i}", org="held", bot=f"b{i % 5}"))
                for i in range(held)
            ],
        )
        await wait_for(
            lambda: sum(p.store.counts.held for p in service.processors.values()) == held,
            timeout_s=30,
        )
        looked: list[int] = []  # per loop turn: the held records looked at
        release_held = service._release_held

        async def counted(control: ControlTopics) -> bool:
            before = service.stats.tombstones
            more = await release_held(control)
            if service.stats.tombstones > before:
                looked.append(service.stats.tombstones - before)
            return more

        service._release_held = counted  # type: ignore[method-assign]
        await produce(broker, [(topics.holds, hold.hold_id.encode(), None)])
        await wait_for(lambda: service.stats.tombstones >= held, timeout_s=60)
    assert sum(looked) == held
    assert max(looked) <= 50  # a slice


async def test_a_batch_over_many_partitions_is_sent_in_slices_not_per_partition(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog over six partitions, read in a few batches: each slice of ``SLICE``
    events is one outbox entry however many partitions it spans. Before, every
    partition's records in a batch were an entry of their own (a produce request, a wait
    for acks and a settle each): six entries at least here."""
    sent: list[int] = []  # per outbox entry of ingest: the partitions in it
    send = Outbox.send

    async def counted(self: Outbox, items: list[Any], now_ms: int) -> list[Any]:
        if any(effects.events for _, effects in items):
            sent.append(len(items))
        return await send(self, items, now_ms)

    monkeypatch.setattr(Outbox, "send", counted)
    inputs = (topics.conversations, topics.sessions, topics.errors)
    cats = ("conversation", "session", "error")
    events = 120  # fewer than a slice
    await produce(broker, [(inputs[i % 3], *event(cats[i % 3], f"r{i}")) for i in range(events)])
    config = config_for(topics, str(tmp_path / "state"), FAR)
    async with running_service(config, broker) as service:
        await wait_for(lambda: service.stats.events >= events)
    assert sum(sent) >= 6  # every partition had events
    assert len(sent) < 6, sent


def _about_partitions(logs: Captured) -> list[str]:
    """The INFO lines of the service that name a partition or count them."""
    return [
        str(line["msg"])
        for line in logs.json_lines()
        if line["level"] == "INFO" and re.search(r"\[\d+\]|partition", str(line["msg"]))
    ]


async def _started_with_backlogs(
    broker: str, tmp_path: Path, partitions: int
) -> tuple[list[str], int]:
    """A service started on input topics of ``partitions`` partitions, an event waiting on
    each: its INFO lines about partitions until every backlog is read, and how many
    assignments they came in."""
    topics = make_topic_set()
    await ensure_topics(broker, topics.all, partitions=partitions)
    async with producer(broker) as prod:
        for n, topic in enumerate(topics.inputs):
            for p in range(partitions):
                key, value = event(("conversation", "session", "error")[n], f"r{p}")
                await (await prod.send(topic, key=key, value=value, partition=p))
    events = 3 * partitions
    config = config_for(topics, str(tmp_path / f"p{partitions}"), FAR)
    with captured_logs() as logs:
        async with running_service(config, broker) as service:
            await wait_for(
                lambda: service.stats.events == events and not service._reading.catching_up,
                timeout_s=30,
            )
            assignments = service.stats.assignments
    return _about_partitions(logs), assignments


@pytest.mark.timeout(120)
async def test_an_assignment_says_its_partitions_in_summaries_however_many_they_are(
    broker: str, tmp_path: Path
) -> None:
    """Each kind of step of an assignment (restored, positioned, assigned, backlogs read)
    is one INFO line, its partitions counted and the first few named; the per-partition
    lines are DEBUG. They were one INFO line a partition and step: hundreds at each
    rebalance of an instance owning 144 partitions."""
    said = {n: await _started_with_backlogs(broker, tmp_path, n) for n in (1, 4)}
    for n, (lines, assignments) in said.items():
        assert len(lines) <= 4 * assignments, (n, lines)  # with 3 stores as with 12
        counts = [int(m[1]) for line in lines if (m := re.match(r"assigned (\d+) ", line))]
        assert sum(counts) == 3 * n, lines
    lines, _ = said[4]
    if len(lines) == 4:  # one assignment, as the lone member mostly gets
        restored, positioned, assigned, read = lines  # in the order they happen
        assert re.fullmatch(
            r"assigned 12 partitions \((\S+\[\d\], ){8}and 4 more\), 0 resumed as they were and "
            r"12 restored from the changelog \(0 kept stores caught up from their positions, "
            r"12 rebuilt from empty\): 0 timers within the horizon loaded; reading .*",
            assigned,
        ), assigned
        assert restored.startswith("restored 12 partitions from the changelog in "), restored
        summary, _, resumes = positioned.partition("; each resumes at: ")
        assert summary == (
            "positioned 12 partitions: 12 from the beginning (no committed offset); the due "
            "timers of 12 wait until their backlogs (12 events) are read"
        )
        # Every partition with its offset, not only the first eight named.
        entries = resumes.split(", ")
        assert len(set(entries)) == 12, positioned
        assert all(re.fullmatch(r"\S+\[[0-3]\] 0", e) for e in entries), positioned
        assert (
            read == "12 partitions have read the backlog found when assigned: their due timers fire"
        )

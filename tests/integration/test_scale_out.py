"""Two instances in one consumer group share the partitions; when one leaves, the other
takes its partitions over (restoring them from the changelog) and nothing is lost or
resurrected."""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from stream_expiry.codec import source_headers
from stream_expiry.errors import BrokerError, leaves
from stream_expiry.instances import assignors
from stream_expiry.kafka import consumer, ensure_topics, partition_counts, producer
from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.policy import PolicyBook
from stream_expiry.service import ASSIGNORS, Service, wall_clock_ms
from stream_expiry.timeutil import parse_ts
from tests.conftest import TopicSet, make_topic_set, read_topic, wait_for
from tests.integration.service_helpers import (
    GROUP_MEMBER,
    config_for,
    event,
    produce,
    running_service,
)
from tests.log_capture import captured_logs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from aiokafka import TopicPartition

    from stream_expiry.config import Config

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
    async with running_service(b, broker, fast_join=False, consumer_options=GROUP_MEMBER) as svc_b:
        async with running_service(
            a, broker, fast_join=False, consumer_options=GROUP_MEMBER
        ) as svc_a:
            # Both own partitions once the group has rebalanced around the second member.
            await wait_for(lambda: bool(svc_a.owned) and bool(svc_b.owned), timeout_s=30)
            assert not (svc_a.owned & svc_b.owned)
            # What an operator sees of it: B was assigned twice (alone, then beside A), and
            # the two gauges add up to every input partition once.
            assert svc_b.stats.assignments >= 2
            assert svc_a.stats.assigned_partitions == len(svc_a.owned)
            assert svc_b.stats.assigned_partitions == len(svc_b.owned)
            assert svc_a.stats.assigned_partitions + svc_b.stats.assigned_partitions == 6
            await produce(broker, first)
            await wait_for(
                lambda: svc_a.stats.tombstones + svc_b.stats.tombstones >= 40, timeout_s=30
            )
            assert svc_a.stats.events > 0
            assert svc_b.stats.events > 0
        # A has left: B owns everything now, A's partitions restored from the changelog.
        await wait_for(lambda: len(svc_b.owned) == 6, timeout_s=30)
        assert svc_b.stats.assigned_partitions == 6
        second = [(topics.conversations, *event("conversation", f"late{i}")) for i in range(20)]
        await produce(broker, second)
        await wait_for(lambda: svc_b.stats.verdicts["created"] >= 20, timeout_s=30)
        wanted = {k for _, k, _ in first[:40] + second}
        tombs = await read_topic(
            broker, topics.tombstones, until=lambda r: {t.key for t in r} >= wanted, timeout_s=30
        )
    per_key = Counter(t.key for t in tombs)
    for t in tombs:
        body = orjson.loads(t.value)
        assert body["category"] == "conversation"  # the 1 h errors are still pending
        assert parse_ts(body["emitted_at"]) >= parse_ts(body["expires_at"])
    # The takeover restored A's deletions: nothing tombstoned twice.
    assert max(per_key.values()) == 1, per_key.most_common(3)


def _shared_once(*services: Service, partitions: int) -> Callable[[], bool]:
    """Every instance owns partitions, none is owned twice, all ``partitions`` are owned."""

    def check() -> bool:
        owned = [svc.owned for svc in services]
        total = sum(len(mine) for mine in owned)
        return all(owned) and len(frozenset().union(*owned)) == total == partitions

    return check


async def _three_partition_topics(broker: str, tmp_path: Path) -> tuple[TopicSet, Config, Config]:
    """Topics of three partitions each, and the configs of two instances ``a`` and ``b``."""
    topics = make_topic_set()
    await ensure_topics(broker, topics.all, partitions=3)
    return (
        topics,
        config_for(topics, str(tmp_path / "a"), RETENTION),
        config_for(topics, str(tmp_path / "b"), RETENTION),
    )


@pytest.mark.timeout(120)
async def test_an_instance_owns_the_same_partition_numbers_of_every_input_topic(
    broker: str, tmp_path: Path
) -> None:
    """So a changelog partition (an input partition's number) has one writer, and its
    stores' checkpoints are not cut short by another instance's messages. Round-robin,
    aiokafka's default, gives two instances numbers of both with three partitions a topic."""
    topics, a, b = await _three_partition_topics(broker, tmp_path)
    async with (
        running_service(b, broker, fast_join=False, consumer_options=GROUP_MEMBER) as svc_b,
        running_service(a, broker, fast_join=False, consumer_options=GROUP_MEMBER) as svc_a,
    ):
        await wait_for(_shared_once(svc_a, svc_b, partitions=9), timeout_s=30)
        numbers = [{p for _, p in svc.owned} for svc in (svc_a, svc_b)]
        assert not numbers[0] & numbers[1], (svc_a.owned, svc_b.owned)
        for svc, mine in zip((svc_a, svc_b), numbers, strict=True):
            assert svc.owned == {(t, p) for t in topics.inputs for p in mine}


@pytest.mark.timeout(120)
async def test_an_instance_of_the_round_robin_version_still_joins_the_group(
    broker: str, tmp_path: Path
) -> None:
    """A rolling upgrade: an instance that offers only round-robin (the earlier versions)
    and one that prefers range agree on round-robin, and share the partitions."""
    topics, a, b = await _three_partition_topics(broker, tmp_path)
    old = {**GROUP_MEMBER, "partition_assignment_strategy": (RoundRobinPartitionAssignor,)}
    async with (
        running_service(b, broker, fast_join=False, consumer_options=old) as svc_b,
        running_service(a, broker, fast_join=False, consumer_options=GROUP_MEMBER) as svc_a,
    ):
        await wait_for(_shared_once(svc_a, svc_b, partitions=9), timeout_s=30)
        await produce(
            broker, [(topics.conversations, *event("conversation", f"c{i}")) for i in range(30)]
        )
        await wait_for(lambda: svc_a.stats.events + svc_b.stats.events >= 30, timeout_s=30)


@pytest.mark.timeout(120)
async def test_a_group_id_taken_by_another_kind_of_consumer_is_said_plainly(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A member of the group that offers none of the service's assignors (here: sticky) is
    something else using its group id; the service says so instead of "cannot reach Kafka"."""
    config = config_for(topics, str(tmp_path / "a"), RETENTION)
    sticky = {"partition_assignment_strategy": (StickyPartitionAssignor,)}
    async with consumer(broker, topics.conversations, group_id=config.group_id, **sticky) as other:
        with anyio.fail_after(20):
            while not other.assignment():
                await other.getmany(timeout_ms=200)
        service = Service(config, bootstrap_servers=broker, environ={})
        with anyio.fail_after(60), pytest.raises((BrokerError, BaseExceptionGroup)) as caught:
            await service.run(anyio.Event())
    said = [str(e) for e in leaves(caught.value) if isinstance(e, BrokerError)]
    assert said, leaves(caught.value)
    assert "same group id" in said[0], said
    assert "cannot reach" not in said[0], said


@pytest.mark.timeout(180)
async def test_partitions_given_back_by_a_rebalance_resume_without_a_restore(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A member joins and leaves: each time every partition is revoked (the eager
    protocol) and the instance gets back those it keeps. Those resume as they were (the
    same processors, their timers in them), the others are restored; every record is
    tombstoned once, at or after its expiry, from whichever. The assignment's line counts
    the partitions resumed and those restored, these into the stores they had when the
    instance owned them before the member joined (kept, not rebuilt)."""
    config = config_for(topics, str(tmp_path / "a"), '[retention.defaults]\nconversation = "20s"\n')
    records = [(topics.conversations, *event("conversation", f"c{i}")) for i in range(30)]
    with captured_logs() as logs:
        await _resumed_then_restored(broker, topics, config, records)
    said = [str(line["msg"]) for line in logs.json_lines() if line["level"] == "INFO"]
    assigned = [line for line in said if line.startswith("assigned ")]
    assert re.fullmatch(
        r"assigned 6 partitions \((\S+\[\d\], ){5}\S+\[\d\]\), 3 resumed as they were and 3 "
        r"restored from the changelog \(3 kept stores caught up from their positions, 0 "
        r"rebuilt from empty\): \d+ timers within the horizon loaded; reading .*",
        assigned[-1],
    ), assigned
    assert any(line.startswith("resumed 3 partitions as they were") for line in said), said
    assert any(line.startswith("revoked 3 partitions (") for line in said), said


async def _resumed_then_restored(
    broker: str, topics: TopicSet, config: Config, records: list[tuple[str, bytes, bytes]]
) -> None:
    """The steps of the test above, apart so that its log is captured around them all."""
    async with running_service(config, broker, fast_join=False) as svc:
        await produce(broker, records)
        await wait_for(lambda: svc.stats.verdicts["created"] >= 30, timeout_s=30)
        before = dict(svc.processors)
        assert svc.stats.resumed_partitions == 0
        other = {"partition_assignment_strategy": ASSIGNORS, "session_timeout_ms": 6000}
        async with consumer(broker, *topics.inputs, group_id=config.group_id, **other) as member:
            with anyio.fail_after(30):
                while not member.assignment():
                    await member.getmany(timeout_ms=200)
            await wait_for(lambda: svc.stats.resumed_partitions == 3, timeout_s=30)
            await wait_for(lambda: len(svc.owned) == 3 and svc.ready.is_set(), timeout_s=30)
            kept = set(svc.owned)
            assert all(svc.processors[slot] is before[slot] for slot in kept)
            assert kept.isdisjoint((tp.topic, tp.partition) for tp in member.assignment())
        # The member has left: everything comes back, what was kept resumed once more.
        await wait_for(lambda: svc.stats.resumed_partitions == 6, timeout_s=30)
        await wait_for(lambda: len(svc.owned) == 6, timeout_s=30)
        for slot, proc in svc.processors.items():
            assert (proc is before[slot]) is (slot in kept), slot
        tombs = await read_topic(
            broker, topics.tombstones, until=lambda r: len({t.key for t in r}) >= 30, timeout_s=40
        )
    assert Counter(t.key for t in tombs) == Counter({k: 1 for _, k, _ in records})
    for t in tombs:
        body = orjson.loads(t.value)
        assert parse_ts(body["emitted_at"]) >= parse_ts(body["expires_at"])


@pytest.mark.timeout(180)
async def test_a_partition_given_back_after_another_writer_wrote_its_changelog_is_loaded_anew(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A member removed from the group that has not noticed yet (a zombie) may still write
    a partition's changelog while the rebalance runs: the partition, given back to the
    instance that kept it open, has its store brought up to date and its timers loaded
    again, not resumed with a wheel that misses what was written. Here the write is made
    just before the instance takes the assignment: a record stamped only there fires."""
    config = config_for(topics, str(tmp_path / "a"), '[retention.defaults]\nconversation = "1h"\n')
    async with running_service(config, broker, fast_join=False) as svc:
        before = dict(svc.processors)
        written: list[tuple[str, int]] = []
        take = svc.assign

        async def written_first(assigned: list[TopicPartition]) -> None:
            if not written and 0 < len(assigned) < 6:  # the assignment beside the member
                tp = next(tp for tp in assigned if tp.topic == topics.conversations)
                identity = Identity("acme", "_", "live", "conversation", "zombie")
                due = wall_clock_ms() + 3_000
                stamp = Stamp(identity, due - 3_600_000, due, 3_600_000, "default")
                async with producer(broker) as prod:
                    await (
                        await prod.send(
                            topics.stamped,
                            key=identity.key.encode(),
                            value=encode_stamp(stamp),
                            partition=tp.partition,
                            headers=source_headers(tp.topic, tp.partition),
                        )
                    )
                written.append((tp.topic, tp.partition))
            await take(assigned)

        svc.assign = written_first  # type: ignore[method-assign]
        other = {"partition_assignment_strategy": ASSIGNORS, "session_timeout_ms": 6000}
        async with consumer(broker, *topics.inputs, group_id=config.group_id, **other) as member:
            with anyio.fail_after(30):
                while not member.assignment():
                    await member.getmany(timeout_ms=200)
            await wait_for(lambda: len(svc.owned) == 3 and svc.ready.is_set(), timeout_s=30)
            assert len(written) == 1
            assert svc.processors[written[0]] is not before[written[0]]
            assert svc.stats.resumed_partitions == 2  # the other two input topics' kept
            tombs = await read_topic(broker, topics.tombstones, until=bool, timeout_s=30)
    assert [t.key for t in tombs] == [
        Identity("acme", "_", "live", "conversation", "zombie").key.encode()
    ]
    body = orjson.loads(tombs[0].value)
    assert parse_ts(body["emitted_at"]) >= parse_ts(body["expires_at"])


@pytest.mark.timeout(120)
async def test_instances_with_different_policies_are_said_at_the_assignment(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each instance joins with its config's policy digest; whichever member leads the
    assignment says when they differ (a record's TTL would depend on the instance holding
    its partition). The second member joins with the service's own assignors and another
    config's digest, as a second instance with an edited file would."""
    config = config_for(topics, str(tmp_path / "a"), '[retention.defaults]\nconversation = "1h"\n')
    edited = config_for(topics, str(tmp_path / "b"), '[retention.defaults]\nconversation = "2h"\n')
    theirs = PolicyBook(edited, {}).digest(edited.sliding)
    async with running_service(config, broker, fast_join=False) as svc:
        ours = svc.policy_digest
        assert ours != theirs
        with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
            other = {"partition_assignment_strategy": assignors(theirs), "session_timeout_ms": 6000}
            async with consumer(
                broker, *topics.inputs, group_id=config.group_id, **other
            ) as member:
                with anyio.fail_after(30):
                    while not member.assignment():
                        await member.getmany(timeout_ms=200)
                await wait_for(lambda: "different policies" in caplog.text, timeout_s=30)
    said = [r.getMessage() for r in caplog.records if "different policies" in r.getMessage()]
    assert f"policy {ours} on 1 (" in said[0], said
    assert f"policy {theirs} on 1 (" in said[0], said


@pytest.mark.timeout(120)
async def test_an_earlier_versions_digest_is_not_said_as_a_different_policy(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling upgrade from a version before the canonical digest (9336bfa), one config
    file: the second member joins as such a version does, its user data a digest of
    Python's repr and no form. The service, leading, warned "the instances of this group run
    with different policies ... give every instance the same config file" (an upgrade
    trial, 41c236b to this version); it now says which instances run an earlier version,
    at info level."""
    config = config_for(topics, str(tmp_path / "a"))
    earlier = orjson.dumps({"policy": "c17b33376dca", "version": "0.1.0"})
    async with running_service(config, broker, fast_join=False) as svc:
        assert svc.policy_digest != "c17b33376dca"
        with caplog.at_level(logging.INFO, logger="stream_expiry.service"):
            other = {"partition_assignment_strategy": _joining_with(earlier)}
            async with consumer(
                broker, *topics.inputs, group_id=config.group_id, session_timeout_ms=6000, **other
            ) as member:
                with anyio.fail_after(30):
                    while not member.assignment():
                        await member.getmany(timeout_ms=200)
                await wait_for(
                    lambda: "an earlier version of stream-expiry" in caplog.text, timeout_s=30
                )
    assert "run with different policies" not in caplog.text
    said = [r for r in caplog.records if "an earlier version of stream-expiry" in r.getMessage()]
    assert said[0].levelno == logging.INFO


def _joining_with(user_data: bytes) -> tuple[type[RangePartitionAssignor], ...]:
    """The range assignor of a member whose subscription carries ``user_data``."""

    class Earlier(RangePartitionAssignor):  # type: ignore[misc]  # aiokafka is untyped here
        @classmethod
        def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
            return ConsumerProtocolMemberMetadata(cls.version, list(topics), user_data)

    return (Earlier,)


@pytest.mark.timeout(120)
async def test_partitions_added_to_an_input_topic_while_it_runs_are_assigned_and_read(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The group's leader sees the new count in its metadata and joins again; the test
    broker answered that join with the old generation and the old assignment, ignoring the
    leader's new one (Tansu keeps a formed group as it is for a member that rejoins with
    unchanged metadata), so the new partitions stayed unassigned and their events unread
    until another member came or went (a trial: 10 minutes). The test broker cannot add
    partitions (no CreatePartitions): the topic is deleted and made again with 4, the count
    it would get if the service's metadata request made it first. A metadata age of 1 s
    stands for Kafka's 5 minutes."""
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    async with running_service(
        config, broker, consumer_options={"metadata_max_age_ms": 1000}
    ) as svc:
        await wait_for(lambda: len(svc.processors) == 6, timeout_s=30)
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            await admin.delete_topics([topics.sessions])
        finally:
            await admin.close()
        await ensure_topics(broker, [topics.sessions], partitions=4)
        assert (await partition_counts(broker, [topics.sessions]))[topics.sessions] == 4
        key, value = event("session", "s-new")
        async with producer(broker) as prod:
            await (await prod.send(topics.sessions, key=key, value=value, partition=3))
        await wait_for(lambda: (topics.sessions, 3) in svc.processors, timeout_s=30)
        stamps = await read_topic(
            broker, topics.stamped, until=lambda got: any(r.key == key for r in got)
        )
    (stamp,) = [r for r in stamps if r.key == key]
    assert set(source_headers(topics.sessions, 3)) <= set(stamp.headers)

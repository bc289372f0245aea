"""``stream-expiry rekey`` in front of the service, on the real broker: a producer that keys
a record's events apart (or not at all) gets the service's semantics all the same."""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from aiokafka import TopicPartition

from stream_expiry.broker import free_port
from stream_expiry.config import Topics
from stream_expiry.endpoints import open_listener, serve_http
from stream_expiry.errors import BrokerError
from stream_expiry.health import Health
from stream_expiry.kafka import (
    admin_client,
    committed_offsets,
    consumer,
    ensure_topics,
    key_partition,
    producer,
    topic_names,
)
from stream_expiry.metrics import RekeyMetrics
from stream_expiry.model import Identity
from stream_expiry.rekey import H_REKEYED_FROM, Rekeyer, targets_for
from stream_expiry.service import wall_clock_ms
from stream_expiry.stalls import Stalls
from stream_expiry.testing.proxy import proxied_broker
from stream_expiry.timeutil import parse_ts
from tests.conftest import make_topic_set, read_all, read_topic, wait_for
from tests.integration.service_helpers import config_for, event, produce, running_service
from tests.log_capture import captured_logs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection, Sequence
    from pathlib import Path

    from stream_expiry.config import Config
    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

SOURCE_PARTITIONS = 4
RETENTION = '[retention.defaults]\nconversation = "2s"\nsession = "3s"\n'


@contextlib.asynccontextmanager
async def running_rekey(
    config: Config,
    broker: str,
    sources: Sequence[str],
    *,
    producer_options: dict[str, Any] | None = None,
    consumer_options: dict[str, Any] | None = None,
    metrics: RekeyMetrics | None = None,
) -> AsyncIterator[Rekeyer]:
    rekeyer = Rekeyer(
        config,
        broker,
        targets_for(sources),
        group_id=f"{config.group_id}-rekey",
        consumer_options={
            "session_timeout_ms": 2000,
            "heartbeat_interval_ms": 500,
            **(consumer_options or {}),
        },
        producer_options=producer_options,
    )
    rekeyer.metrics = metrics  # as the command sets it when it serves /metrics
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(rekeyer.run, stop)
        with anyio.fail_after(30):
            await rekeyer.ready.wait()
        yield rekeyer
        stop.set()


async def _send(broker: str, topic: str, sends: Sequence[tuple[int, bytes | None, Any]]) -> None:
    """(partition, key, body) to ``topic``, each to the partition given: as a producer
    that keys by something else (or nothing) would spread them."""
    async with producer(broker) as prod:
        sent = [
            await prod.send(
                topic,
                key=key,
                value=body if isinstance(body, bytes) else orjson.dumps(body),
                partition=partition,
            )
            for partition, key, body in sends
        ]
        for fut in sent:
            await fut


def _body(category: str, record_id: str, ts: int, op: str = "create") -> dict[str, Any]:
    return {"category": category, "record_id": record_id, "org": "acme", "op": op, "ts": ts}


@pytest.mark.timeout(120)
async def test_a_record_s_events_keyed_apart_meet_once_rekeyed(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The erasure of a record created on another partition ends its life, a touch on
    another partition slides its session, and a bad event is dead-lettered naming where
    it was produced. Without rekey (the service on the producers' topic itself), the same
    events gave c1 a ttl tombstone after its erasure, kept its stamp on expiry.stamped, and
    let s1 go at its first expiry."""
    source = f"{topics.prefix}.chat"
    target = targets_for([source])[source]
    await ensure_topics(broker, [source], partitions=SOURCE_PARTITIONS)
    base = config_for(topics, str(tmp_path / "state"), RETENTION)
    config = dataclasses.replace(base, topics=dataclasses.replace(base.topics, inputs=(target,)))
    assert isinstance(config.topics, Topics)
    c1 = Identity("acme", "_", "live", "conversation", "c1").key
    s1 = Identity("acme", "_", "live", "session", "s1").key
    async with running_rekey(config, broker, [source]) as rekeyer, running_service(config, broker):
        t0 = wall_clock_ms()
        await _send(
            broker,
            source,
            [
                (0, b"acme", _body("conversation", "c1", t0)),
                (1, None, _body("session", "s1", t0)),
                (2, b"event-9", _body("session", "s1", t0 + 1_000, "touch")),
                (3, None, _body("conversation", "c1", t0 + 100, "delete")),
                (2, b"bad", b"{not json"),
            ],
        )
        # s1's tombstone comes last of the two lives' (due at t0 + 4 s; c1's would have
        # been due at t0 + 2 s): read until it is there.
        tombstones = await read_topic(
            broker,
            topics.tombstones,
            until=lambda recs: any(r.key.decode() == s1 for r in recs),
            timeout_s=60,
        )
        dead = await read_topic(broker, topics.dlq, until=lambda recs: len(recs) >= 1)
        stats = rekeyer.stats
    said = [(r.key.decode(), orjson.loads(r.value)) for r in tombstones]
    assert [(key, body["reason"]) for key, body in said] == [(c1, "explicit"), (s1, "ttl")]
    assert parse_ts(said[1][1]["expires_at"]) == t0 + 1_000 + 3_000  # slid by the touch
    # c1's stamps: every partition's latest one is the null, so compaction keeps no data.
    stamped = await read_all(broker, topics.stamped)
    latest: dict[int, bytes | None] = {}
    for rec in stamped:
        if rec.key.decode() == c1:
            latest[rec.partition] = rec.value
    assert latest
    assert all(value is None for value in latest.values())
    # The re-keyed copies: keyed by record, each naming where it was produced.
    copies = await read_all(broker, target)
    assert sorted(r.key.decode() for r in copies) == sorted([c1, c1, s1, s1])
    assert {r.key.decode(): r.partition for r in copies} == {
        r.key.decode(): r.partition for r in reversed(copies)
    }, "one record's copies share a partition"
    origins = sorted(dict(r.headers)[H_REKEYED_FROM].decode() for r in copies)
    assert [o.rsplit("@", 1)[0] for o in origins] == [
        f"{source}[0]",
        f"{source}[1]",
        f"{source}[2]",
        f"{source}[3]",
    ]
    assert len(dead) == 1
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert (dead[0].key, dead[0].value) == (b"bad", b"{not json")
    assert (headers["expiry-error"], headers["expiry-source-topic"]) == ("invalid_json", source)
    assert headers["expiry-source-partition"] == "2"
    assert (stats.forwarded, stats.rejected) == (4, 1)


@pytest.mark.timeout(90)
async def test_offsets_are_committed_after_the_copies_and_a_restart_resumes_there(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """What a rekey group committed has reached the target; a second run resumes after it
    and copies only what came since; after the producers' topic is made again, empty, a
    third run copies what is written there (the group's offsets went with the topic)."""
    source = f"{topics.prefix}.chat"
    target = targets_for([source])[source]
    await ensure_topics(broker, [source], partitions=2)
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    t0 = wall_clock_ms()
    first = [(i % 2, None, _body("conversation", f"c{i}", t0)) for i in range(10)]
    with captured_logs() as logs:
        async with running_rekey(config, broker, [source]) as rekeyer:
            await _send(broker, source, first)
            await wait_for(lambda: rekeyer.stats.committed >= 10)
    # Which partitions it copies is said (two processes in one group could not tell).
    assert f"rekey assigned {source}[0], {source}[1]" in logs.both()
    async with consumer(broker, group_id=f"{config.group_id}-rekey") as cons:
        committed = await committed_offsets(cons, [TopicPartition(source, p) for p in (0, 1)])
    assert committed == {TopicPartition(source, 0): 5, TopicPartition(source, 1): 5}
    assert len(await read_all(broker, target)) == 10
    async with running_rekey(config, broker, [source]) as rekeyer:
        await _send(broker, source, [(0, None, _body("conversation", "c99", t0))])
        copies = await read_topic(broker, target, until=lambda recs: len(recs) >= 11)
        assert rekeyer.stats.forwarded == 1
    assert len(copies) == 11
    await _recreate(broker, source)
    async with running_rekey(config, broker, [source]) as rekeyer:
        await _send(broker, source, [(1, None, _body("conversation", "c100", t0))])
        copies = await read_topic(broker, target, until=lambda recs: len(recs) >= 12)
        await wait_for(lambda: rekeyer.stats.committed >= 1)
    assert len(copies) == 12
    assert "c100" in {orjson.loads(r.value)["record_id"] for r in copies}


async def _recreate(broker: str, topic: str) -> None:
    async with admin_client(broker) as admin:
        await admin.delete_topics([topic])
    await ensure_topics(broker, [topic], partitions=2)


@pytest.mark.timeout(60)
async def test_a_source_that_does_not_exist_is_said(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    typo = f"{topics.prefix}.convresations"
    with captured_logs() as logs:
        async with running_rekey(config, broker, [typo]):
            pass
    said = logs.both()
    assert f"{typo} does not exist: rekey copies it once producers write there" in said
    # The topic meant, when one close to it exists (a trial helper's --from sesions).
    assert f"did you mean {topics.conversations!r}?" in said


@pytest.mark.timeout(90)
async def test_a_source_the_broker_made_from_a_typo_is_said_on_every_start(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The first run's subscription makes a broker that creates the topics clients ask for
    (Kafka's auto.create.topics.enable; the test broker always) create the mistyped
    topic: a later run found it, empty, and said nothing, so only the first run's lines
    told of the typo. Every start says an empty --from beside a close topic with data."""
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    typo = f"{topics.prefix}.convresations"
    _, value = event("conversation", "c1")
    await produce(broker, [(topics.conversations, None, value)])
    async with running_rekey(config, broker, [typo]):
        pass
    assert typo in await topic_names(broker), "the broker made no topic: nothing to test"
    with captured_logs() as logs:
        async with running_rekey(config, broker, [typo]):
            pass
    said = logs.both()
    assert (
        f"{typo} exists but nothing was ever written to it, while "
        f"{topics.conversations!r}, a topic of a close name, has data" in said
    )
    assert f"did you mean {topics.conversations!r}?" in said
    # A --from with data is read as it is: no doubt cast on it.
    with captured_logs() as logs:
        async with running_rekey(config, broker, [topics.conversations]):
            pass
    assert "nothing was ever written" not in logs.both()


@pytest.mark.timeout(120)
async def test_a_broker_lost_while_it_runs_is_waited_out_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    """Every connection cut (a proxy the broker advertises) as a batch is about to be
    copied: the sends fail, rekey does not exit; it starts its session again once the
    broker answers, and every event, of that batch and after, is copied."""
    topics = make_topic_set()
    async with proxied_broker() as proxy:
        broker = proxy.address
        source = f"{topics.prefix}.chat"
        target = targets_for([source])[source]
        await ensure_topics(broker, [source, *topics.all], partitions=2)
        config = config_for(topics, str(tmp_path / "state"), RETENTION)
        t0 = wall_clock_ms()
        fast = {"request_timeout_ms": 2_000}
        async with running_rekey(config, broker, [source], producer_options=fast) as rekeyer:
            forward = rekeyer._forward

            async def cut_first(prod: Any, cons: Any, batch: Any) -> None:
                if not proxy.is_cut and rekeyer.stats.outages == 0:
                    proxy.cut()
                await forward(prod, cons, batch)

            rekeyer._forward = cut_first  # type: ignore[method-assign]
            first = [(i % 2, None, _body("error", f"a{i}", t0)) for i in range(5)]
            await _send(broker, source, first)
            await wait_for(lambda: rekeyer.stats.outages >= 1, timeout_s=60)
            proxy.restore()
            await wait_for(lambda: rekeyer.stats.committed >= 5, timeout_s=60)
            then = [(i % 2, None, _body("error", f"b{i}", t0)) for i in range(5)]
            await _send(broker, source, then)
            await wait_for(lambda: rekeyer.stats.committed >= 10, timeout_s=60)
        copies = await read_all(broker, target)
    ids = {orjson.loads(r.value)["record_id"] for r in copies}
    assert ids == {f"a{i}" for i in range(5)} | {f"b{i}" for i in range(5)}


@pytest.mark.timeout(120)
async def test_a_kafka_failure_just_after_a_stall_is_no_outage_as_for_run(
    tmp_path: Path,
) -> None:
    """``run`` takes the first Kafka failure within a minute after the process did not
    run (a request in flight through a SIGSTOP times out on resume) for the stall's: its
    session starts again at once, no outage said or counted. ``rekey`` counted an outage
    and said the broker failed. The stall here is the watch's clocks moved on 10 s (a
    SIGSTOP of the test process would stop the test too); the failure, every connection
    cut as a batch is about to be copied, until the session is started again."""
    topics = make_topic_set()
    clock = [1_000.0]  # the wall and monotonic clocks of the watch: a pause moves both
    stalls = Stalls(wall=lambda: clock[0], monotonic=lambda: clock[0], cpu=lambda: 0.0)
    async with proxied_broker() as proxy:
        broker = proxy.address
        source = f"{topics.prefix}.chat"
        target = targets_for([source])[source]
        await ensure_topics(broker, [source, *topics.all], partitions=2)
        config = config_for(topics, str(tmp_path / "state"), RETENTION)
        t0 = wall_clock_ms()
        fast = {"request_timeout_ms": 2_000}
        with captured_logs() as logs:
            async with running_rekey(config, broker, [source], producer_options=fast) as rekeyer:
                rekeyer.stalls = stalls  # as the command gives it its watch
                forward, session = rekeyer._forward, rekeyer._session

                async def stalled_then_cut(prod: Any, cons: Any, batch: Any) -> None:
                    if clock[0] == 1_000.0:  # once
                        clock[0] += 10.0  # the process did not run for 10 s
                        proxy.cut()
                    await forward(prod, cons, batch)

                async def restored(*args: Any) -> None:
                    proxy.restore()  # the broker was fine: the next session gets through
                    await session(*args)

                rekeyer._forward = stalled_then_cut  # type: ignore[method-assign]
                rekeyer._session = restored  # type: ignore[method-assign,assignment]
                await _send(broker, source, [(i % 2, None, _body("error", f"a{i}", t0)) for i in range(5)])  # fmt: skip
                await wait_for(lambda: rekeyer.stats.committed >= 5, timeout_s=60)
                assert rekeyer.stats.outages == 0
                assert stalls.count == 1
        copies = await read_all(broker, target)
    said = logs.text.getvalue()
    # 10 s late, less the watch's tick (0.25 s) it was due after anyway.
    assert "after the process did not run for 9.8 s (paused, or starved of CPU): not a broker outage; the session is started again" in said, said  # fmt: skip
    assert "starting again in" not in said, said
    assert "the broker failed" not in said, said
    assert {orjson.loads(r.value)["record_id"] for r in copies} == {f"a{i}" for i in range(5)}


@pytest.mark.timeout(120)
async def test_a_partition_the_group_gave_away_before_the_commit_is_not_committed(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A second rekey joins the group while a batch's copies are awaited: the group gives
    it one of the batch's partitions before the batch is committed. That partition's
    offset is left to its new owner (aiokafka refuses it: IllegalStateError, not a commit
    failure, which ended rekey with an error), the one kept is committed, and rekey goes
    on: once the other leaves, it copies the partition again and commits it. With its
    metrics on, as the command runs it, the lag of the partition given away is not asked
    of the consumer (aiokafka asserts the partition is assigned: rekey ended there too)."""
    source = f"{topics.prefix}.chat"
    await ensure_topics(broker, [source], partitions=2)
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    group = f"{config.group_id}-rekey"
    t0 = wall_clock_ms()
    # Written before rekey starts: its first fetch returns both partitions in one batch.
    await _send(
        broker, source, [(i % 2, None, _body("conversation", f"c{i}", t0)) for i in range(10)]
    )
    given_away: list[set[TopicPartition]] = []
    metrics = RekeyMetrics()
    async with (
        contextlib.AsyncExitStack() as stack,
        running_rekey(config, broker, [source], metrics=metrics) as rekeyer,
    ):
        commit = rekeyer._commit

        async def after_a_rebalance(
            cons: Any, offsets: dict[TopicPartition, int]
        ) -> Collection[TopicPartition]:
            if not given_away:
                other = await stack.enter_async_context(
                    consumer(
                        broker,
                        source,
                        group_id=group,
                        session_timeout_ms=2000,
                        heartbeat_interval_ms=500,
                    )
                )
                await wait_for(lambda: bool(other.assignment()), timeout_s=30)
                await wait_for(lambda: bool(set(offsets) - cons.assignment()), timeout_s=30)
                given_away.append(set(offsets) - cons.assignment())
            return await commit(cons, offsets)

        rekeyer._commit = after_a_rebalance  # type: ignore[method-assign]
        await wait_for(lambda: bool(given_away) and rekeyer.stats.commits_lost >= 1, timeout_s=60)
        await stack.aclose()  # the other leaves: its partition comes back
        # The other's partition is copied again once it is back, and committed.
        async with consumer(broker, group_id=group) as reader:
            parts = [TopicPartition(source, p) for p in (0, 1)]
            with anyio.fail_after(60):
                while True:  # polled until committed, within the deadline
                    if await committed_offsets(reader, parts) == {tp: 5 for tp in parts}:
                        break
                    await anyio.sleep(0.05)
    assert len(given_away[0]) == 1
    # The lag gauges were set without asking the consumer for a partition it no longer
    # had (aiokafka asserts a partition is assigned before it tells its end: that ended
    # rekey as well). A rebalance drops the gauges of the partitions it takes away, and
    # those it gives get theirs from the next fetch: at least the one the other member
    # gave back has one.
    lag = [line for line in metrics.exposition().decode().splitlines() if "consumer_lag{" in line]
    assert 1 <= len(lag) <= 2, lag


@pytest.mark.timeout(120)
async def test_a_batch_whose_commit_the_group_refused_is_not_counted_as_committed(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A batch's commit held past ``max_poll_interval_ms`` (acks slow to come): aiokafka
    takes the consumer out of the group, a second member gets both partitions, and the
    broker refuses the commit (CommitFailedError). Those events are not committed (the
    partitions' next owner copies them again), and ``committed`` counts each event whose
    offset the group took, once, as the broker's offsets do. Mutant ``mine = {}`` dropped
    from the refusal's branch counted the refused batch as committed all the same."""
    source = f"{topics.prefix}.chat"
    await ensure_topics(broker, [source], partitions=2)
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    group = f"{config.group_id}-rekey"
    t0 = wall_clock_ms()
    await _send(
        broker, source, [(i % 2, None, _body("conversation", f"c{i}", t0)) for i in range(10)]
    )
    parts = [TopicPartition(source, p) for p in (0, 1)]
    # What rekey's commit returned (the partitions it counts), and the broker's offsets.
    refused: list[tuple[Collection[TopicPartition], dict[TopicPartition, int | None]]] = []
    # Its loop does not fetch while the commit is held: past this, aiokafka leaves the
    # group and does not join again until the loop fetches (its poll timeout).
    impatient = {"max_poll_interval_ms": 2000}
    async with (
        contextlib.AsyncExitStack() as stack,
        running_rekey(config, broker, [source], consumer_options=impatient) as rekeyer,
    ):
        commit = rekeyer._commit

        async def after_the_group_went_on_without_it(
            cons: Any, offsets: dict[TopicPartition, int]
        ) -> Collection[TopicPartition]:
            if refused:
                return await commit(cons, offsets)
            # Its listener told the partitions are taken: the poll timeout took its
            # consumer out of the group, which it joins again only once the loop fetches.
            await wait_for(lambda: not list(rekeyer.owned), timeout_s=30)
            other = await stack.enter_async_context(
                consumer(
                    broker,
                    source,
                    group_id=group,
                    session_timeout_ms=2000,
                    heartbeat_interval_ms=500,
                )
            )
            await wait_for(lambda: len(other.assignment()) == 2, timeout_s=30)
            # Nothing assigned rekey's consumer anything since: it still lists what it
            # had, so the batch's offsets are sent, with its old membership.
            assert set(offsets) <= cons.assignment(), "no commit to refuse: nothing tested"
            counted = await commit(cons, offsets)
            async with consumer(broker, group_id=group) as reader:
                refused.append((counted, await committed_offsets(reader, parts)))
            return counted

        rekeyer._commit = after_the_group_went_on_without_it  # type: ignore[method-assign]
        await wait_for(lambda: bool(refused), timeout_s=90)
        [(counted, taken)] = refused
        assert taken == dict.fromkeys(parts), "the broker took the commit: nothing tested"
        assert not counted, "a batch the group refused was counted as committed"
        assert rekeyer.stats.commits_lost == 1
        # Back in the group beside the other, rekey copies its partition's events again
        # and commits them: ``committed`` is what the broker took, once.
        await wait_for(lambda: rekeyer.stats.committed >= 5, timeout_s=60)
        async with consumer(broker, group_id=group) as reader:
            taken = await committed_offsets(reader, parts)
        assert sorted(taken.values(), key=str) == [5, None]  # the other commits nothing
        assert rekeyer.stats.committed == 5


def _lag_gauges(metrics: RekeyMetrics) -> list[str]:
    """The ``partition`` labels of the lag series ``metrics`` exposes."""
    lines = metrics.exposition().decode().splitlines()
    return sorted(
        line.split('partition="')[1].split('"')[0] for line in lines if "consumer_lag{" in line
    )


@pytest.mark.timeout(120)
async def test_a_partition_given_to_another_member_keeps_no_lag_gauge_here(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Another member joins and the group gives it one of rekey's two partitions. The
    gauge of that partition goes with it (its lag is the other member's to report): the
    revocation dropped it, but the loop set the lag of every partition the consumer
    still listed while the group rebalanced (the old assignment, until the new one is
    given), so the partition given away had its last lag here for good, beside its new
    owner's."""
    source = f"{topics.prefix}.chat"
    await ensure_topics(broker, [source], partitions=2)
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    t0 = wall_clock_ms()
    await _send(broker, source, [(p, None, _body("conversation", f"c{p}", t0)) for p in (0, 1)])
    metrics = RekeyMetrics()
    async with running_rekey(config, broker, [source], metrics=metrics) as rekeyer:
        await wait_for(lambda: _lag_gauges(metrics) == ["0", "1"], timeout_s=30)
        async with consumer(
            broker,
            source,
            group_id=f"{config.group_id}-rekey",
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        ) as other:
            await wait_for(lambda: len(other.assignment()) == 1, timeout_s=30)
            (given,) = other.assignment()
            kept = 1 - given.partition
            # Two batches copied from the kept partition after the rebalance: the loop
            # has set the lags of the new assignment (after the first) since.
            await _send(broker, source, [(kept, None, _body("conversation", "after-1", t0))])
            await wait_for(lambda: rekeyer.stats.committed >= 3, timeout_s=30)
            await _send(broker, source, [(kept, None, _body("conversation", "after-2", t0))])
            await wait_for(lambda: rekeyer.stats.committed >= 4, timeout_s=30)
            assert _lag_gauges(metrics) == [str(kept)]


@pytest.mark.timeout(60)
async def test_a_broker_lost_before_rekey_first_reads_is_its_error_not_waited_out(
    tmp_path: Path,
) -> None:
    """Only a broker lost once rekey has started reading is waited out: one lost before
    its clients start (after it made its topics) ends it with the broker's error, the
    command's one line and status 3, as one not there at all. Mutant ``if stop.is_set()
    or not curable(exc)`` (the ready check dropped) retried every second, without a word
    the operator could act on, for good."""
    topics = make_topic_set()
    async with proxied_broker() as proxy:
        broker, source = proxy.address, f"{topics.prefix}.chat"
        await ensure_topics(broker, [source, *topics.all], partitions=2)
        config = config_for(topics, str(tmp_path / "state"), RETENTION)
        rekeyer = Rekeyer(config, broker, targets_for([source]))
        said = rekeyer._say_missing_sources

        async def then_cut() -> None:
            await said()
            proxy.cut()  # the topics made and looked at: the clients' start fails

        rekeyer._say_missing_sources = then_cut  # type: ignore[method-assign]
        with anyio.fail_after(30), pytest.raises(BrokerError) as raised:
            await rekeyer.run(anyio.Event())
    assert str(raised.value).startswith(f"cannot reach Kafka at {broker} (producer: ")
    assert rekeyer.stats.outages == 0


class _ShiftedClock:
    """The service's clock: the wall clock's milliseconds, ``ahead_ms`` ahead."""

    def __init__(self) -> None:
        self.ahead_ms = 0

    def __call__(self) -> int:
        return wall_clock_ms() + self.ahead_ms


@pytest.mark.timeout(120)
async def test_a_session_touched_after_the_switch_to_the_copies_is_not_deleted_early(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The README's switch: the service stamped a session from the producers' topic, then
    reads rekey's copy with the producers' topic retired. rekey copies the create, so the
    session is stamped again from the copy's partition, and a touch read after the switch
    extends that state only. Before, the retired partition's state fired at the session's
    old expiry, a ttl tombstone naming the life's creation: every store deleted the session
    ten minutes early. It now follows the copy's state and fires beside it."""
    source = f"{topics.prefix}.chat"
    target = targets_for([source])[source]
    await ensure_topics(broker, [source], partitions=SOURCE_PARTITIONS)
    base = config_for(topics, str(tmp_path / "state"), '[retention.defaults]\nsession = "10m"\n')
    before = dataclasses.replace(base, topics=dataclasses.replace(base.topics, inputs=(source,)))
    after = dataclasses.replace(
        base, topics=dataclasses.replace(base.topics, inputs=(target,), retired=(source,))
    )
    key = Identity("acme", "_", "live", "session", "s1").key
    created = wall_clock_ms()
    old_expiry, new_expiry = created + 10 * 60_000, created + 15 * 60_000
    async with running_service(before, broker) as service:
        await _send(broker, source, [(1, b"acme", _body("session", "s1", created))])
        await wait_for(lambda: service.stats.stamped == 1)
    clock = _ShiftedClock()
    async with (
        running_rekey(after, broker, [source]),
        running_service(after, broker, clock=clock) as service,
    ):
        # After the switch: a touch, five minutes in, copied and read from the copy only.
        await _send(
            broker, source, [(3, b"acme", _body("session", "s1", created + 5 * 60_000, "touch"))]
        )
        copy = service.processors[(target, key_partition(key.encode(), 2))]
        retired = service.processors[(source, 1)]
        await wait_for(lambda: (s := copy.state_of(key)) is not None and s.expires_at == new_expiry)
        clock.ahead_ms = old_expiry + 1_000 - wall_clock_ms()  # past the old expiry
        # The retired state either follows the copy's (now) or is tombstoned (before).
        await wait_for(
            lambda: (
                (s := retired.state_of(key)) is not None
                and (not s.live or s.expires_at == new_expiry)
            )
        )
        state = retired.state_of(key)
        assert state is not None
        assert state.live, "tombstoned at the session's old expiry"
        clock.ahead_ms = new_expiry + 1_000 - wall_clock_ms()
        tombstones = await read_topic(
            broker, topics.tombstones, until=lambda recs: len(recs) >= 2, timeout_s=30
        )
    said = [orjson.loads(r.value) for r in tombstones]
    assert [r.key.decode() for r in tombstones] == [key, key]  # the copy's and the retired one's
    for body in said:
        assert body["reason"] == "ttl"
        assert parse_ts(body["expires_at"]) == new_expiry
        assert parse_ts(body["emitted_at"]) >= new_expiry


@pytest.mark.timeout(120)
async def test_partitions_added_to_a_source_while_it_runs_are_assigned_and_copied(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """As the service's (test_scale_out): the group's leader sees the new count in its
    metadata and joins again, and the test broker answered that join, which said what the
    last one said, with the old generation and the old assignment, so the new partitions
    stayed unassigned and their events uncopied until another member came or went. The
    test broker cannot add partitions (no CreatePartitions): the source is deleted and
    made again with 4. A metadata age of 1 s stands for Kafka's 5 minutes."""
    source = f"{topics.prefix}.chat"
    target = targets_for([source])[source]
    await ensure_topics(broker, [source], partitions=2)
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    options = {"metadata_max_age_ms": 1000}
    async with running_rekey(config, broker, [source], consumer_options=options) as rekeyer:
        await wait_for(lambda: len(list(rekeyer.owned)) == 2, timeout_s=30)
        async with admin_client(broker) as admin:
            await admin.delete_topics([source])
        await ensure_topics(broker, [source], partitions=4)
        await _send(broker, source, [(3, None, _body("conversation", "c-new", wall_clock_ms()))])
        await wait_for(lambda: TopicPartition(source, 3) in rekeyer.owned, timeout_s=30)
        copies = await read_topic(broker, target, until=lambda recs: len(recs) >= 1)
    assert [orjson.loads(r.value)["record_id"] for r in copies] == ["c-new"]


class _FirstAssignmentHeld(Rekeyer):
    """Rekey whose loop waits at ``taken`` once the group gave it partitions: the group
    answered the join, and rekey has taken nothing yet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken, self.at_taken = anyio.Event(), anyio.Event()

    async def _observe_lag(self, cons: Any) -> None:
        if cons.assignment() and not self.taken.is_set():
            self.at_taken.set()
            await self.taken.wait()
        await super()._observe_lag(cons)


def _readyz(port: int) -> tuple[int, str]:
    """``/readyz``'s status and the phase it gives, over HTTP."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status, orjson.loads(answer.read())["phase"]
    except urllib.error.HTTPError as refused:
        return refused.code, orjson.loads(refused.read())["phase"]


@pytest.mark.timeout(90)
async def test_readyz_says_joining_until_the_group_assigns_partitions(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """From the subscription until the group's first assignment is taken, ``/readyz`` (over
    HTTP) says 503, phase ``joining``, as ``run``'s does; it said ``rebalancing``, as if
    partitions had been taken away, while the member had never had any. Then 200."""
    source = f"{topics.prefix}.chat"
    await ensure_topics(broker, [source], partitions=2)
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    rekeyer = _FirstAssignmentHeld(
        config,
        broker,
        targets_for([source]),
        group_id=f"{config.group_id}-rekey",
        consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 500},
    )
    health = rekeyer.health = Health()
    metrics = rekeyer.metrics = RekeyMetrics()
    metrics.watch_health(health)
    health.starting()
    listener = await open_listener(free_port(), "127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    stop = anyio.Event()
    async with anyio.create_task_group() as server:
        server.start_soon(serve_http, listener, metrics.exposition, health)
        async with anyio.create_task_group() as tg:
            tg.start_soon(rekeyer.run, stop)
            try:
                with anyio.fail_after(30):
                    await rekeyer.at_taken.wait()
                assert await anyio.to_thread.run_sync(_readyz, port) == (503, "joining")
            finally:
                rekeyer.taken.set()
            await wait_for(lambda: health.ready, timeout_s=30)
            assert await anyio.to_thread.run_sync(_readyz, port) == (200, "running")
            stop.set()
        server.cancel_scope.cancel()


@pytest.mark.timeout(90)
async def test_a_rekey_the_group_gives_no_partitions_is_a_ready_standby(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Two rekeys in one group on a source of one partition, started together: the group
    gives it to one and nothing to the other, which is a standby, ready (phase
    ``running``), and says so once at INFO. It said ``rebalancing`` for good: an
    orchestrator held back, or restarted, a healthy instance."""
    source = f"{topics.prefix}.chat"
    await ensure_topics(broker, [source], partitions=1)
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    rekeyers = [
        Rekeyer(
            config,
            broker,
            targets_for([source]),
            group_id=f"{config.group_id}-rekey",
            consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 500},
        )
        for _ in range(2)
    ]
    healths = [Health(), Health()]
    for rekeyer, health in zip(rekeyers, healths, strict=True):
        rekeyer.health = health
        health.starting()
    stop = anyio.Event()
    with captured_logs() as logs:
        async with anyio.create_task_group() as tg:
            for rekeyer in rekeyers:  # together: both in the group's first assignment
                tg.start_soon(rekeyer.run, stop)
            try:
                await wait_for(lambda: all(h.ready for h in healths), timeout_s=40)
                owned = sorted((list(rekeyer.owned) for rekeyer in rekeyers), key=len)
                assert owned == [[], [TopicPartition(source, 0)]], owned
            finally:
                stop.set()
    said = [line for line in logs.json_lines() if "assigned no partitions" in str(line["msg"])]
    assert [line["level"] for line in said] == ["INFO"], said
    assert said[0]["msg"] == (
        f"rekey assigned no partitions: the group {config.group_id}-rekey has more members "
        f"than {source} (1) has partitions; this rekey waits as a standby (ready, copying "
        "nothing) until a member leaves"
    )

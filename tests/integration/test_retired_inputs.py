"""An input topic taken out of ``[topics] inputs`` (a topic retired, or the producers'
topics swapped for ``rekey``'s copies, as the README's rekey section says to do) leaves
the records it stamped to no one: every instance restores and fires only the stores of the
input partitions it is assigned, and the changelog routes each stamp to the store of the
input partition it names. A trial found those records kept past their expiry with nothing
said anywhere: the service's overdue gauge covers its own partitions, and ``status``
counted them as plain overdue records, "the service is down or behind", while it ran."""

from __future__ import annotations

import re
import shutil
import signal
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stream_expiry.cli import main
from stream_expiry.codec import source_of
from stream_expiry.config import parse_config
from stream_expiry.kafka import ensure_topics, producer
from stream_expiry.service import Service, wall_clock_ms
from stream_expiry.timeutil import parse_ts
from tests.conftest import read_all, read_topic, wait_for
from tests.integration.service_helpers import (
    ArrivalLog,
    config_for,
    config_text,
    event,
    no_orphans,
    produce,
    running_service,
    spawn_service,
)

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process, TaskGroup

    from stream_expiry.config import Config
    from tests.conftest import TopicSet
    from tests.integration.service_helpers import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

RETENTION = '[retention.defaults]\nconversation = "1h"\nanalytics = "5m"\nerror = "20m"\n'
NOT_LISTED = "[topics] lists neither in inputs nor in retired"
# The service's clock is this far behind the wall clock's: what it stamps falls due for
# the commands (status) and never while it runs.
BEHIND_MS = 600_000


def _without_errors(topics: TopicSet, text: str) -> str:
    """The config text with ``errors`` taken out of ``[topics] inputs``."""
    inputs = f'inputs = ["{topics.conversations}", "{topics.sessions}", "{topics.errors}"]'
    assert inputs in text
    return text.replace(inputs, f'inputs = ["{topics.conversations}", "{topics.sessions}"]')


async def _stamp_on_errors(broker: str, topics: TopicSet, tmp_path: Path) -> None:
    """A service reading all three inputs stamps two records read from ``errors``, one
    due 5 minutes after its creation and one an hour after, and stops (for a config
    change) before the first is due by its clock; by the wall clock it is due."""
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    created = wall_clock_ms() - BEHIND_MS
    async with running_service(
        config, broker, clock=lambda: wall_clock_ms() - BEHIND_MS
    ) as service:
        await produce(
            broker,
            [
                (topics.errors, *event("conversation", "kept-1h", ts=created)),
                (topics.errors, *event("analytics", "due-5m", ts=created)),
                (topics.conversations, *event("conversation", "of-an-input", ts=created)),
            ],
        )
        await wait_for(lambda: service.stats.stamped >= 3)
        assert service.stats.tombstones == 0


@pytest.mark.timeout(90)
async def test_status_names_the_records_of_a_topic_no_longer_an_input(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _stamp_on_errors(broker, topics, tmp_path)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(_without_errors(topics, config_text(topics, str(tmp_path / "state"), RETENTION)))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)

    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, ["status", *common, "--json"]) == 0
    got = orjson.loads(capsys.readouterr().out)
    # Both of errors' records (the due one in the overdue count too); not the input's.
    assert got["not_inputs"] == {topics.errors: {"pending": 1, "due": 1}}
    assert got["overdue"] == 1

    assert await anyio.to_thread.run_sync(main, ["status", *common]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^  2 live records stamped from topics that \[topics\] lists neither in inputs nor "
        r"in retired: no instance tombstones them, .*list those topics in \[topics\] retired",
        out,
        re.MULTILINE,
    ), out
    assert f"\n    {topics.errors}: 1 due, 1 pending\n" in out, out

    # With the config that lists it, nothing is said.
    cfg.write_text(config_text(topics, str(tmp_path / "state"), RETENTION))
    assert await anyio.to_thread.run_sync(main, ["status", *common, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["not_inputs"] == {}

    # Retired, they are counted as the instances' to tombstone, by topic.
    cfg.write_text(_retired_config(topics, str(tmp_path / "state")))
    assert await anyio.to_thread.run_sync(main, ["status", *common, "--json"]) == 0
    got = orjson.loads(capsys.readouterr().out)
    assert got["not_inputs"] == {}
    assert got["retired"] == {topics.errors: {"pending": 1, "due": 1}}
    assert await anyio.to_thread.run_sync(main, ["status", *common]) == 0
    out = capsys.readouterr().out
    assert "\n  retired topics (records left, tombstoned at their expiry; never read)\n" in out
    assert f"\n    {topics.errors}: 1 due, 1 pending\n" in out, out


@pytest.mark.timeout(90)
async def test_run_warns_of_the_stores_of_partitions_no_longer_inputs(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The instance that held them has their stores in its state directory: its next
    start says how many records they keep that no instance will tombstone, and where."""
    await _stamp_on_errors(broker, topics, tmp_path)
    state = str(tmp_path / "state")
    narrowed = parse_config(_without_errors(topics, config_text(topics, state, RETENTION)))
    caplog.clear()
    with caplog.at_level("WARNING", logger="stream_expiry"):
        async with running_service(narrowed, broker, clock=lambda: wall_clock_ms() - BEHIND_MS):
            pass
    said = [r.getMessage() for r in caplog.records if NOT_LISTED in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    # Both records from errors, each on the partition its key gave it (2 partitions).
    assert said[0].startswith(
        f"the state directory holds 2 records pending or held of partitions of topics that "
        f"{NOT_LISTED}: "
    ), said
    named = re.findall(rf"{re.escape(topics.errors)}\[(\d)\] (\d)", said[0])
    assert sum(int(n) for _p, n in named) == 2, said
    assert "list their topics in [topics] retired" in said[0]

    # Listed again, the start says nothing of them: they are its records again.
    caplog.clear()
    with caplog.at_level("WARNING", logger="stream_expiry"):
        async with running_service(
            config_for(topics, state, RETENTION), broker, clock=lambda: wall_clock_ms() - BEHIND_MS
        ):
            pass
    assert not [r for r in caplog.records if NOT_LISTED in r.getMessage()]

    # Retired, neither: they are its records again, fired and not read.
    caplog.clear()
    with caplog.at_level("WARNING", logger="stream_expiry"):
        async with running_service(
            parse_config(_retired_config(topics, state)),
            broker,
            clock=lambda: wall_clock_ms() - BEHIND_MS,
        ):
            pass
    assert not [r for r in caplog.records if NOT_LISTED in r.getMessage()]


# -- [topics] retired: the records of a topic taken out of the inputs are still fired ----

MINUTE_MS = 60_000
TTL_MS = {"analytics": 300_000, "error": 1_200_000, "conversation": 3_600_000}
# Records stamped from errors: six due 5 minutes after their creation, four after 20, one
# after an hour (never due in these tests).
ON_ERRORS = [
    *((f"due-5m-{i}", "analytics") for i in range(6)),
    *((f"due-20m-{i}", "error") for i in range(4)),
    ("due-1h", "conversation"),
]


class ShiftedClock:
    """The services' clock: the wall clock's milliseconds, ``ahead_ms`` ahead. Moved, it
    makes what was stamped fall due without waiting for it."""

    def __init__(self) -> None:
        self.ahead_ms = 0

    def __call__(self) -> int:
        return wall_clock_ms() + self.ahead_ms


def _retired_config(topics: TopicSet, state_dir: str) -> str:
    """The config text with ``errors`` moved from ``[topics] inputs`` to ``retired``."""
    return _without_errors(topics, config_text(topics, state_dir, RETENTION)).replace(
        "[topics]\n", f'[topics]\nretired = ["{topics.errors}"]\n', 1
    )


async def _stamp_then_retire(broker: str, topics: TopicSet, state_dir: str) -> dict[str, int]:
    """A service reading all three inputs stamps ``ON_ERRORS`` read from ``errors``, none
    due by its clock, and stops. Returns each record's key -> its expiry."""
    created = wall_clock_ms()
    clock = ShiftedClock()
    async with running_service(
        config_for(topics, state_dir, RETENTION), broker, clock=clock
    ) as service:
        sent = [event(category, rid, ts=created) for rid, category in ON_ERRORS]
        await produce(broker, [(topics.errors, key, value) for key, value in sent])
        await wait_for(lambda: service.stats.stamped >= len(ON_ERRORS))
        assert service.stats.tombstones == 0
    return {
        key.decode(): created + TTL_MS[category]
        for (key, _value), (_rid, category) in zip(sent, ON_ERRORS, strict=True)
    }


def _pending_on(service: Service, topic: str) -> int:
    """The records pending in the stores of ``service``'s partitions of ``topic``."""
    return sum(
        p.store.counts.pending_total for (t, _p), p in service.processors.items() if t == topic
    )


async def _tombstones_once(
    broker: str, topics: TopicSet, expiries: dict[str, int], due_by: int
) -> None:
    """Every record of ``expiries`` due by ``due_by`` has one tombstone on the topic, emitted
    at or after its expiry; the others have none."""
    due = {key for key, at in expiries.items() if at <= due_by}
    records = await read_topic(
        broker, topics.tombstones, until=lambda recs: len(recs) >= len(due), timeout_s=30
    )
    keys = [rec.key.decode() for rec in records]
    assert sorted(keys) == sorted(due), keys  # each once, none not due
    for rec in records:
        body = orjson.loads(rec.value)
        assert body["reason"] == "ttl"
        assert parse_ts(body["emitted_at"]) >= expiries[rec.key.decode()], body


@pytest.mark.timeout(120)
@pytest.mark.parametrize("state", ["kept", "lost"])
async def test_a_retired_topics_records_are_tombstoned_at_their_expiry_and_never_read(
    broker: str,
    topics: TopicSet,
    tmp_path: Path,
    state: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Restarted with ``errors`` retired, the service takes its partitions (restored from
    its state directory, or from the changelog when that is lost), fires their records at
    their expiry, each once, and reads nothing of ``errors``: an event sent to it after the
    retirement is not stamped. Before ``retired``, nothing fired them at all."""
    state_dir = str(tmp_path / "state")
    expiries = await _stamp_then_retire(broker, topics, state_dir)
    if state == "lost":
        shutil.rmtree(state_dir)
    # Sent after the retirement: never read, so never stamped.
    await produce(broker, [(topics.errors, *event("analytics", "after-retired"))])
    clock = ShiftedClock()
    config = parse_config(_retired_config(topics, state_dir))
    async with running_service(config, broker, clock=clock) as service:
        assert {t for t, _p in service.owned} >= {topics.errors}
        assert _pending_on(service, topics.errors) == len(ON_ERRORS)
        assert service.stats.tombstones == 0  # none early
        # An input's event, sent after the one on errors, is read: the errors one was not.
        await produce(broker, [(topics.conversations, *event("conversation", "on-input"))])
        await wait_for(lambda: service.stats.stamped == 1)
        assert service.stats.events == 1
        clock.ahead_ms = 10 * MINUTE_MS  # the 5-minute ones fall due: only those fire
        await _tombstones_once(broker, topics, expiries, clock())
        clock.ahead_ms = 30 * MINUTE_MS  # and then the 20-minute ones
        await _tombstones_once(broker, topics, expiries, clock())
        assert service.stats.tombstones == len(ON_ERRORS) - 1
        assert service.stats.events == 1
    # One record left (due in an hour); once it is fired, status says errors can go.
    common = ("--bootstrap-servers", broker)
    cfg = tmp_path / "retired.toml"
    cfg.write_text(_retired_config(topics, state_dir))
    assert await anyio.to_thread.run_sync(main, ["status", "--config", str(cfg), *common]) == 0
    assert f"\n    {topics.errors}: 0 due, 1 pending\n" in capsys.readouterr().out
    async with running_service(config, broker, clock=clock) as service:
        clock.ahead_ms = 2 * 60 * MINUTE_MS
        # errors' last record, and the input's record stamped above
        await wait_for(lambda: service.stats.tombstones == 2, timeout_s=30)
    assert await anyio.to_thread.run_sync(main, ["status", "--config", str(cfg), *common]) == 0
    out = capsys.readouterr().out
    assert f"\n    {topics.errors}: none left: can be removed from [topics] retired\n" in out


@pytest.mark.timeout(180)
async def test_two_instances_fire_a_retired_topics_records_once_across_rebalances(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Two instances with ``errors`` retired share its partitions as they share the inputs'
    (one of them joining, then the other leaving: two rebalances); every record of it is
    tombstoned once, by the instance that holds its partition when it falls due."""
    expiries = await _stamp_then_retire(broker, topics, str(tmp_path / "state-a"))
    clock = ShiftedClock()
    a = parse_config(_retired_config(topics, str(tmp_path / "state-a")))
    b = parse_config(_retired_config(topics, str(tmp_path / "state-b")))
    async with running_service(a, broker, fast_join=False, clock=clock) as svc_a:
        assert _pending_on(svc_a, topics.errors) == len(ON_ERRORS)
        async with running_service(b, broker, fast_join=False, clock=clock) as svc_b:
            # Both hold a partition of errors, restored (b's from the changelog).
            await wait_for(
                lambda: (
                    _pending_on(svc_a, topics.errors) > 0
                    and _pending_on(svc_b, topics.errors) > 0
                    and _pending_on(svc_a, topics.errors) + _pending_on(svc_b, topics.errors)
                    == len(ON_ERRORS)
                ),
                timeout_s=30,
            )
            # errors[n] goes with the inputs' partition n: each instance has one of each.
            for svc in (svc_a, svc_b):
                assert len({p for _t, p in svc.owned}) == 1, svc.owned
            assert svc_a.stats.tombstones + svc_b.stats.tombstones == 0  # none early
            clock.ahead_ms = 10 * MINUTE_MS  # the 5-minute ones, from both partitions
            await _tombstones_once(broker, topics, expiries, clock())
            assert svc_a.stats.tombstones > 0
            assert svc_b.stats.tombstones > 0
        # b left: a has both partitions of errors again, b's restored from the changelog.
        await wait_for(lambda: len([t for t, _p in svc_a.owned if t == topics.errors]) == 2)
        await wait_for(lambda: _pending_on(svc_a, topics.errors) == len(ON_ERRORS) - 6)
        clock.ahead_ms = 30 * MINUTE_MS  # the 20-minute ones, from both partitions
        await _tombstones_once(broker, topics, expiries, clock())


# -- a crash of the instance holding a retired topic's timers ------------------------------

STARTED: list[Process] = []
_no_orphans = no_orphans(STARTED)

# Real processes run on the wall clock: every timer must still be pending when the second
# instance has restored them (the records stamped, the first instance started and killed,
# its session run out, the broker's join hold, half the session, and the restore). With the
# default 6 s session that was ~20 s idle, and the expiries 60 and 65 s; with a 2 s session
# 9.3 s beside a busy core, and 30 and 35 s keep the same threefold margin.
CRASH_TTL_MS = {"analytics": 30_000, "error": 35_000, "conversation": 3_600_000}
CRASH_RETENTION = '[retention.defaults]\nanalytics = "30s"\nerror = "35s"\nconversation = "1h"\n'


async def _spawn_ready(tg: TaskGroup, broker: str, cfg: Path) -> ServiceProcess:
    svc = await spawn_service(broker, cfg, STARTED)
    tg.start_soon(svc.follow_log)
    with anyio.fail_after(60):
        await svc.ready.wait()
    return svc


@pytest.mark.timeout(180)
async def test_a_retired_topics_timers_survive_a_sigkill_and_a_lost_state_dir(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The instance that holds a retired topic's pending timers is killed (SIGKILL: no
    cleanup) and its state directory lost; the next instance restores them from the
    changelog alone and tombstones each record once, none before its expiry (checked
    against when the tombstone reached the test), the one not due yet never."""
    state = tmp_path / "state"
    created = wall_clock_ms()
    async with running_service(config_for(topics, str(state), CRASH_RETENTION), broker) as svc:
        sent = [event(category, rid, ts=created) for rid, category in ON_ERRORS]
        await produce(broker, [(topics.errors, key, value) for key, value in sent])
        await wait_for(lambda: svc.stats.stamped >= len(ON_ERRORS))
    expiries = {
        key: created + CRASH_TTL_MS[category]
        for (key, _value), (_rid, category) in zip(sent, ON_ERRORS, strict=True)
    }
    due = {key for key, at in expiries.items() if at < created + 3_600_000}
    cfg = tmp_path / "retired.toml"
    text = _without_errors(topics, config_text(topics, str(state), CRASH_RETENTION))
    text = text.replace("[topics]\n", f'[topics]\nretired = ["{topics.errors}"]\n', 1)
    # One member at a time: a 2 s session (the killed one's ends sooner, the join is held
    # less) makes the restart come sooner, and so the expiries can.
    cfg.write_text(text.replace("[service]\n", '[service]\nsession_timeout = "2s"\n', 1))
    tombstones = ArrivalLog(broker, topics.tombstones)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tombstones.follow)
        first = await _spawn_ready(tg, broker, cfg)
        # It holds both partitions of errors, their timers loaded from its state directory.
        assigned = next(line for line in first.lines if "assigned " in line)
        held = assigned.partition("; retired, fired and not read: ")[2]
        assert sorted(held.split(", ")) == [f"{topics.errors}[0]", f"{topics.errors}[1]"], held
        first.process.send_signal(signal.SIGKILL)
        await first.process.wait()
        assert not await read_all(broker, topics.tombstones), "timers fired before the kill"
        shutil.rmtree(state)

        second = await _spawn_ready(tg, broker, cfg)
        assert second.log_has("restored"), second.tail()
        assert wall_clock_ms() < min(expiries.values()), "restored after the expiries"
        with anyio.fail_after(60):
            while not due <= tombstones.keys():  # noqa: ASYNC110 - the log's task fills it
                await anyio.sleep(0.1)
        second.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            assert await second.process.wait() == 0, second.tail()
        tg.cancel_scope.cancel()
    counts = Counter(rec.key for _arrived, rec in tombstones.arrivals)
    assert counts == dict.fromkeys(due, 1), counts  # each once; the 1 h record never
    for arrived, rec in tombstones.arrivals:
        assert arrived >= expiries[rec.key], (
            f"{rec.key!r} arrived {expiries[rec.key] - arrived} ms early"
        )
        assert orjson.loads(rec.value)["reason"] == "ttl"


# -- a retired topic with more partitions than the inputs, or missing on the cluster -------


async def _produce_to_partitions(broker: str, topic: str, sent: list[tuple[bytes, bytes]]) -> None:
    """Send each event to partition i % 4 of ``topic``: every partition stamps records."""
    async with producer(broker) as prod:
        futures = [
            await prod.send(topic, key=key, value=value, partition=i % 4)
            for i, (key, value) in enumerate(sent)
        ]
        for fut in futures:
            await fut


async def _delete_topic(broker: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("on_the_cluster", ["kept", "deleted"])
async def test_every_partition_of_a_retired_topic_wider_than_the_inputs_is_fired(
    broker: str,
    topics: TopicSet,
    tmp_path: Path,
    on_the_cluster: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retired topic of 4 partitions beside inputs of 2 (``[topics] partitions = 2``):
    every partition of it is assigned, restored and fired, those numbered past the inputs'
    too. Deleted from the cluster after its retirement, it is created again with the 4
    partitions its stamps name, and a warning names it; made with ``[topics] partitions``,
    as it was, the records stamped from its partitions 2 and 3 went to no instance, kept
    forever. A mistyped retired topic is created too, the warning saying no stamp names it."""
    wide, typo = f"{topics.prefix}.wide", f"{topics.prefix}.wide-typo"
    await ensure_topics(broker, [wide], partitions=4)
    state_dir = str(tmp_path / "state")
    text = config_text(topics, state_dir, RETENTION)
    inputs = f'inputs = ["{topics.conversations}", "{topics.sessions}", "{topics.errors}"'
    as_input = parse_config(text.replace(inputs, f'{inputs}, "{wide}"'))
    created = wall_clock_ms()
    sent = [event("analytics", f"wide-{i}", ts=created) for i in range(8)]
    async with running_service(as_input, broker) as service:
        await _produce_to_partitions(broker, wide, sent)
        await wait_for(lambda: service.stats.stamped >= len(sent))
    stamped = await read_all(broker, topics.stamped)
    assert {source_of(rec.headers) for rec in stamped} == {(wide, p) for p in range(4)}
    if on_the_cluster == "deleted":
        await _delete_topic(broker, wide)
        shutil.rmtree(state_dir)  # restored from the changelog alone

    retired = parse_config(
        text.replace("[topics]\n", f'[topics]\nretired = ["{wide}", "{typo}"]\n')
    )
    clock = ShiftedClock()
    caplog.clear()
    with caplog.at_level("WARNING", logger="stream_expiry"):
        async with running_service(retired, broker, clock=clock) as service:
            assert {(t, p) for t, p in service.owned if t == wide} == {(wide, p) for p in range(4)}
            assert _pending_on(service, wide) == len(sent)
            clock.ahead_ms = 10 * MINUTE_MS
            expiries = {key.decode(): created + TTL_MS["analytics"] for key, _value in sent}
            await _tombstones_once(broker, topics, expiries, clock())
    said = [r.getMessage() for r in caplog.records if "created retired topic" in r.getMessage()]
    assert said[-1].startswith(
        f"created retired topic {typo}, which did not exist, with 2 partitions: no stamp on "
        "the changelog names it"
    ), said
    if on_the_cluster == "deleted":
        assert said[0].startswith(
            f"created retired topic {wide}, which did not exist, with 4 partitions, as many "
            "as the 8 stamps naming it on the changelog need"
        ), said
    assert len(said) == (2 if on_the_cluster == "deleted" else 1), said


# -- retired topics with more and fewer partitions than the inputs, two instances ---------


async def _stamp_on_partitions(
    broker: str, topics: TopicSet, state_dir: str, counts: dict[str, int]
) -> dict[str, int]:
    """A service reading the inputs and the topics of ``counts`` (made with that many
    partitions) stamps one record due in 5 minutes and one due in 20 on every partition
    of each of those, and stops. Returns each record's key -> its expiry."""
    for topic, count in counts.items():
        await ensure_topics(broker, [topic], partitions=count)
    text = config_text(topics, state_dir, RETENTION)
    inputs = f'inputs = ["{topics.conversations}", "{topics.sessions}", "{topics.errors}"'
    extra = "".join(f', "{topic}"' for topic in counts)
    created = wall_clock_ms()
    sent: list[tuple[str, int, bytes, bytes, str]] = []
    for topic, count in counts.items():
        for p in range(count):
            for category in ("analytics", "error"):
                key, value = event(category, f"{topic}-{p}-{category}", ts=created)
                sent.append((topic, p, key, value, category))
    async with running_service(
        parse_config(text.replace(inputs, inputs + extra)), broker
    ) as service:
        async with producer(broker) as prod:
            futures = [
                await prod.send(topic, key=key, value=value, partition=p)
                for topic, p, key, value, _category in sent
            ]
            for fut in futures:
                await fut
        await wait_for(lambda: service.stats.stamped >= len(sent))
        assert service.stats.tombstones == 0
    stamped = await read_all(broker, topics.stamped)
    assert {source_of(rec.headers) for rec in stamped} == {
        (topic, p) for topic, count in counts.items() for p in range(count)
    }
    return {key.decode(): created + TTL_MS[category] for *_tp, key, _v, category in sent}


def _partitions_held(services: tuple[Service, ...], topic: str) -> list[int]:
    """The partitions of ``topic`` the services hold, each as often as it is held."""
    return sorted(p for svc in services for t, p in svc.owned if t == topic)


@pytest.mark.timeout(180)
async def test_two_instances_fire_retired_topics_wider_and_narrower_than_the_inputs_once(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Retired topics of 4 partitions and of 1 beside inputs of 2, with two instances of
    one group (one joining, then the other leaving: two rebalances): each partition of
    both is held by one instance at a time, and every record stamped from every one of
    them is tombstoned exactly once, none before its expiry, by whichever instance holds
    its partition then (partition n of a retired topic does not always go with the
    inputs' partition n here: the range assignor shares each topic out alone)."""
    wide, narrow = f"{topics.prefix}.wide", f"{topics.prefix}.narrow"
    counts = {wide: 4, narrow: 1}
    expiries = await _stamp_on_partitions(broker, topics, str(tmp_path / "state-a"), counts)
    short = sum(1 for at in expiries.values() if at == min(expiries.values()))
    retire = f'[topics]\nretired = ["{wide}", "{narrow}"]\n'

    def retired_config(state: str) -> Config:
        text = config_text(topics, str(tmp_path / state), RETENTION)
        return parse_config(text.replace("[topics]\n", retire, 1))

    clock = ShiftedClock()
    async with running_service(
        retired_config("state-a"), broker, fast_join=False, clock=clock
    ) as svc_a:
        assert _pending_on(svc_a, wide) + _pending_on(svc_a, narrow) == len(expiries)
        async with running_service(
            retired_config("state-b"), broker, fast_join=False, clock=clock
        ) as svc_b:
            both = (svc_a, svc_b)
            # Shared out, each partition held once, every store restored (b's from the
            # changelog, as it has no state directory).
            await wait_for(
                lambda: (
                    _partitions_held(both, wide) == [0, 1, 2, 3]
                    and _partitions_held(both, narrow) == [0]
                    and all(svc.owned for svc in both)
                    and sum(_pending_on(s, t) for s in both for t in counts) == len(expiries)
                ),
                timeout_s=30,
            )
            assert {t for t, _p in svc_b.owned} >= {wide}, svc_b.owned
            assert svc_a.stats.tombstones + svc_b.stats.tombstones == 0  # none early
            clock.ahead_ms = 10 * MINUTE_MS  # the 5-minute ones, from every partition
            await _tombstones_once(broker, topics, expiries, clock())
            assert svc_a.stats.tombstones + svc_b.stats.tombstones == short
        # b left: a holds every partition again, b's restored with b's tombstones applied.
        await wait_for(
            lambda: (
                _partitions_held((svc_a,), wide) == [0, 1, 2, 3]
                and _partitions_held((svc_a,), narrow) == [0]
                and _pending_on(svc_a, wide) + _pending_on(svc_a, narrow) == len(expiries) - short
            ),
            timeout_s=30,
        )
        clock.ahead_ms = 30 * MINUTE_MS  # the 20-minute ones: every record once, in all
        await _tombstones_once(broker, topics, expiries, clock())
        assert svc_a.stats.tombstones + svc_b.stats.tombstones == len(expiries)


# -- a retired topic made again with fewer partitions than its stamps name -----------------

BEYOND = "partitions, but"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("state", ["kept", "lost"])
async def test_a_retired_topic_made_again_with_fewer_partitions_is_said_at_start(
    broker: str,
    topics: TopicSet,
    tmp_path: Path,
    state: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retired topic of 4 partitions deleted and made again by hand with 2: the records
    stamped from its partitions 2 and 3 are no instance's (the group assigns the 2 it has),
    kept forever. The start says so, naming the topic, those partitions, how many records
    and what to do: from its state directory (``kept``), else from the stamps its restore
    reads on the changelog (``lost``). Nothing said it: those records were kept, data and
    all, without a word. Done as it says (the topic deleted, the service stopped), the next
    start makes it with its 4 partitions and every record is tombstoned, each once."""
    wide = f"{topics.prefix}.wide"
    state_dir = str(tmp_path / "state")
    expiries = await _stamp_on_partitions(broker, topics, state_dir, {wide: 4})
    await _delete_topic(broker, wide)
    await ensure_topics(broker, [wide], partitions=2)
    if state == "lost":
        shutil.rmtree(state_dir)
    text = config_text(topics, state_dir, RETENTION)
    retired = parse_config(text.replace("[topics]\n", f'[topics]\nretired = ["{wide}"]\n', 1))
    kept = {key: at for key, at in expiries.items() if re.search(r"-[01]-", key)}
    assert len(kept) == 4

    clock = ShiftedClock()
    caplog.clear()
    with caplog.at_level("WARNING", logger="stream_expiry"):
        async with running_service(retired, broker, clock=clock) as service:
            assert {(t, p) for t, p in service.owned if t == wide} == {(wide, 0), (wide, 1)}
            clock.ahead_ms = 30 * MINUTE_MS  # all due: those of partitions 0 and 1 fire
            await _tombstones_once(broker, topics, kept, clock())
    said = [r.getMessage() for r in caplog.records if BEYOND in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    found = (
        "this instance's state directory holds 4 records pending or held"
        if state == "kept"
        else "the changelog holds 4 stamps"
    )
    assert said[0].startswith(
        f"retired topic {wide} has 2 {BEYOND} {found} of its partitions {wide}[2] 2, "
        f"{wide}[3] 2, which it no longer has (made again with fewer?): "
    ), said
    assert f"--topic {wide} --partitions 4" in said[0], said
    # Stamps are messages, which a tombstoned record keeps until compaction: status first.
    assert ("`stream-expiry status` counts the live ones" in said[0]) == (state == "lost")

    # As it says: the service stopped, the topic deleted; made again with 4 partitions.
    await _delete_topic(broker, wide)
    caplog.clear()
    with caplog.at_level("WARNING", logger="stream_expiry"):
        async with running_service(retired, broker, clock=clock) as service:
            assert {(t, p) for t, p in service.owned if t == wide} == {(wide, p) for p in range(4)}
            await _tombstones_once(broker, topics, expiries, clock())
    assert not [r for r in caplog.records if BEYOND in r.getMessage()]


@pytest.mark.timeout(120)
async def test_status_names_the_records_of_partitions_a_retired_topic_no_longer_has(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The retired topic of 4 partitions made again with 2: ``status``, which reads the
    whole changelog, names the records stamped from partitions 2 and 3 (no instance is
    assigned those, so none tombstones them) and says what to do, as the service's start
    does (only an instance that held their stores or restores those changelog partitions
    sees them). It said nothing of them: they were in the retired topic's count, which
    the instances are said to fire. Given its 4 partitions again, nothing is said."""
    wide = f"{topics.prefix}.wide"
    await _stamp_on_partitions(broker, topics, str(tmp_path / "state"), {wide: 4})
    await _delete_topic(broker, wide)
    await ensure_topics(broker, [wide], partitions=2)
    text = config_text(topics, str(tmp_path / "state"), RETENTION)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(text.replace("[topics]\n", f'[topics]\nretired = ["{wide}"]\n', 1))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)

    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, ["status", *common, "--json"]) == 0
    got = orjson.loads(capsys.readouterr().out)
    assert got["retired"] == {wide: {"pending": 8, "due": 0}}  # all of them, as before
    assert got["retired_partitions_gone"] == {
        wide: {
            "partitions": 2,
            "needed": 4,
            "pending": 4,
            "due": 0,
            "gone": {f"{wide}[{p}]": {"pending": 2, "due": 0} for p in (2, 3)},
        }
    }
    assert await anyio.to_thread.run_sync(main, ["status", *common]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^  4 live records stamped from partitions that retired topics no longer have "
        r"\(made again with fewer\?\): the group assigns no instance those partitions, so "
        r"none tombstones them, due or not\. .*or stop the instances and delete it",
        out,
        re.MULTILINE,
    ), out
    assert (
        f"\n    {wide}: 2 partitions, its stamps name 4: {wide}[2] 0 due, 2 pending; "
        f"{wide}[3] 0 due, 2 pending\n      kafka-topics.sh --alter --topic {wide} "
        "--partitions 4\n"
    ) in out, out

    await _delete_topic(broker, wide)
    await ensure_topics(broker, [wide], partitions=4)
    assert await anyio.to_thread.run_sync(main, ["status", *common, "--json"]) == 0
    got = orjson.loads(capsys.readouterr().out)
    assert (got["retired"], got["retired_partitions_gone"]) == (
        {wide: {"pending": 8, "due": 0}},
        {},
    )
    assert await anyio.to_thread.run_sync(main, ["status", *common]) == 0
    assert "no longer have" not in capsys.readouterr().out

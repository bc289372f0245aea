"""Archive before purge and redaction, end to end with the real service and archive.

With ``[archive] required = true`` nothing is purged before the archive holds its latest
stamp: purges wait while the archive is stopped and catch up when it starts, and every
purged record is in the archive. Redacted fields appear in no output at all.
"""

from __future__ import annotations

import glob
import logging
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from stream_expiry.archive import read_lines
from stream_expiry.metrics import ServiceMetrics
from stream_expiry.service import Service, wall_clock_ms
from tests.conftest import TopicSet, read_all, wait_for
from tests.integration import sink_helpers
from tests.integration.service_helpers import (
    ArrivalLog,
    archive_running,
    archive_topics,
    config_for,
    event,
    produce,
    running_service,
)
from tests.integration.sink_helpers import (
    MINUTE,
    SQL_KINDS,
    ident,
    open_store,
    running_sink,
    sink_config,
    stamp,
    stamped_msg,
    store_params,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from stream_expiry.sinks.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

SECRET = "do-not-keep@example.com"
HOUR = 60 * MINUTE


@pytest_asyncio.fixture
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(request.param, tmp_path) as s:
        yield s


def _archived_ids(directory: Path) -> set[str]:
    ids: set[str] = set()
    for path in glob.glob(str(directory / "*" / "*.jsonl.gz")):
        if path.endswith("erasures.jsonl.gz"):
            continue
        ids |= {str(line["stamp"]["record_id"]) for line in read_lines(path)}
    return ids


@pytest.mark.timeout(120)
async def test_purges_wait_for_the_archive_and_catch_up_when_it_runs(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    retention = (
        '[retention.defaults]\nconversation = "2s"\n'
        '[archive]\nrequired = true\ngroup_id = "' + topics.prefix + '-archive"\n'
        '[redact]\nconversation = ["user.email"]\n'
    )
    config = config_for(topics, str(tmp_path / "state"), retention)
    archive_dir = tmp_path / "archive"
    tombstones = ArrivalLog(broker, topics.tombstones)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tombstones.follow)
        async with running_service(config, broker) as service:
            t0 = wall_clock_ms()
            await produce(
                broker,
                [(topics.conversations, *event("conversation", f"c{i}", ts=t0, data=_data(i)))
                 for i in range(10)]
                + [(topics.conversations, *event("conversation", "gone", op="delete"))],
            )  # fmt: skip
            # Due after 2 s, but the archive is not running: nothing ttl is purged.
            await wait_for(lambda: service.stats.archive_waiting >= 10, timeout_s=15)
            await wait_for(lambda: bool(tombstones.arrivals))  # the erasure's, read here too
            assert [orjson.loads(r.value)["reason"] for _, r in tombstones.arrivals] == [
                "explicit"  # an erasure request is never delayed
            ]
            stop = anyio.Event()
            started = wall_clock_ms()

            async def archive() -> None:
                await archive_topics(
                    broker, archive_dir, topics, config.archive.group_id, stop=stop
                )

            tg.start_soon(archive)
            await wait_for(lambda: len(tombstones.arrivals) >= 11, timeout_s=20)
            stop.set()
        tg.cancel_scope.cancel()
    ttl = [(at, orjson.loads(r.value)) for at, r in tombstones.arrivals]
    purged = {b["record_id"] for at, b in ttl if b["reason"] == "ttl"}
    assert purged == {f"c{i}" for i in range(10)}
    assert all(at >= started for at, b in ttl if b["reason"] == "ttl")
    assert purged <= _archived_ids(archive_dir)  # every purged record is in the archive
    # The redacted field is nowhere: not on any topic, not in the archive.
    for topic in (topics.stamped, topics.tombstones, topics.audit, topics.receipts):
        for rec in await read_all(broker, topic):
            assert SECRET.encode() not in (rec.value or b""), topic
    for path in glob.glob(str(archive_dir / "*" / "*.jsonl.gz")):
        assert SECRET not in orjson.dumps(read_lines(path)).decode()
    stamps = [orjson.loads(r.value) for r in await read_all(broker, topics.stamped) if r.value]
    # Each names the path as its data spells it (a rule matches keys whatever their case).
    for s in (s for s in stamps if s["data"]):
        user, email = _SPELLINGS[int(s["record_id"][1:]) % len(_SPELLINGS)]
        assert s["redacted"] == [f"{user}.{email}"]
        assert s["data"] == {user: {"name": "Ada"}, "text": "hello"}


# Producers' SDKs differ in key case; [redact]'s "user.email" left these on every stamp, in
# the stores and the archive (a compliance trial).
_SPELLINGS = (("user", "email"), ("User", "Email"), ("user", "EMAIL"))


def _data(i: int) -> dict[str, object]:
    """Record ``c{i}``'s data: personal data under one of the spellings, in turn."""
    user, email = _SPELLINGS[i % len(_SPELLINGS)]
    return {user: {email: SECRET, "name": "Ada"}, "text": "hello"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("store", store_params(SQL_KINDS), indirect=True)
async def test_a_sinks_sweep_never_deletes_what_the_archive_has_not_written(
    broker: str,
    topics: TopicSet,
    store: Store,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The archive is required and has never run: the service holds the ttl tombstones
    back, so rows an hour past their expiry (and far past the sweep's grace) have no
    tombstone coming. The sink's sweep must keep them too (before, it deleted them: data
    purged that the archive never got); once the archive has written them, it sweeps them
    as before."""
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    now = wall_clock_ms()
    rows = [stamp(ident(f"c{n}"), created_at=now - 2 * HOUR, ttl_ms=HOUR) for n in range(6)]
    group = f"{topics.prefix}-archive"
    config = sink_config(broker, topics, sweep_interval_s=0.1, sweep_grace_s=1, archive_group=group)
    idents = [s.identity for s in rows]

    async def present() -> bool:
        return all([await store.get(i) is not None for i in idents])

    async def gone() -> bool:
        return all([await store.get(i) is None for i in idents])

    async with running_sink(store, config) as sink:

        async def kept_or_swept() -> bool:
            kept = any("has not written yet" in r.getMessage() for r in caplog.records)
            return sink.metrics["swept_total"] > 0 or (kept and await present())

        await sink_helpers.produce(
            broker, topics.stamped, [stamped_msg(s, {"text": "keep me"}) for s in rows]
        )
        await wait_until(kept_or_swept, what="a sweep over the overdue rows")
        assert sink.metrics["swept_total"] == 0
        assert await present()

        async with archive_running(broker, tmp_path / "archive", topics, group):
            await wait_until(gone, what="the sweep of the rows the archive wrote")
    assert {r.identity.record_id: r.reason for r in await store.receipts()} == {
        f"c{n}": "sweep" for n in range(6)
    }
    assert {f"c{n}" for n in range(6)} <= _archived_ids(tmp_path / "archive")


@pytest.mark.timeout(120)
async def test_the_metrics_say_purges_are_late_while_records_wait_for_the_archive(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records kept for a stopped archive are due and not purged, but they are off the due
    index (like held records): the gauge to alert on, the oldest overdue, read 0 while
    they waited for hours. It now counts them, beside how many wait."""
    retention = (
        '[retention.defaults]\nconversation = "1s"\n'
        '[archive]\nrequired = true\ngroup_id = "' + topics.prefix + '-archive"\n'
    )
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    service = Service(
        config_for(topics, str(tmp_path / "state"), retention),
        bootstrap_servers=broker,
        environ={},
        consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 500},
        metrics=metrics,
    )
    metrics.watch_stats(service.stats, env_warnings=0)  # as `run` does

    def gauge(name: str) -> float:
        return registry.get_sample_value(f"stream_expiry_{name}") or 0.0

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run, stop)
        with anyio.fail_after(30):
            await service.ready.wait()
        t0 = wall_clock_ms()
        await produce(
            broker,
            [(topics.conversations, *event("conversation", f"c{i}", ts=t0)) for i in range(3)],
        )
        await wait_for(lambda: gauge("archive_waiting_records") == 3, timeout_s=20)
        await wait_for(lambda: gauge("oldest_overdue_seconds") >= 2.0, timeout_s=20)
        assert service.stats.tombstones == 0
        stop.set()

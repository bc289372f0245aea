"""Running the real service against the test broker, from inside a test."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import urllib.error
import urllib.request
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson
import pytest

from stream_expiry.archive import run_archive
from stream_expiry.config import Config, parse_config
from stream_expiry.kafka import producer
from stream_expiry.model import Identity
from stream_expiry.service import Service, ServiceStats, wall_clock_ms
from stream_expiry.state import PartitionStore, RocksKV
from stream_expiry.state.kv import ASIDE
from stream_expiry.testing.processes import ArrivalLog, ServiceProcess, spawn_service

__all__ = [
    "ArrivalLog",
    "ServiceProcess",
    "archive_topics",
    "config_for",
    "config_text",
    "event",
    "http_status",
    "live_expiries",
    "no_orphans",
    "produce",
    "running_service",
    "spawn_service",
    "stores_in",
]

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    from anyio.abc import Process

    from stream_expiry.archive import ArchiveWriter
    from stream_expiry.metrics import ServiceMetrics
    from tests.conftest import TopicSet


def no_orphans(started: list[Process]) -> Callable[[], Iterator[None]]:
    """A test module's autouse fixture: however a test ends, no process it put in
    ``started`` outlives it (``_no_orphans = no_orphans(STARTED)`` at module level)."""

    @pytest.fixture(autouse=True)
    def _no_orphans() -> Iterator[None]:
        yield
        for proc in started:
            if proc.returncode is None:
                proc.kill()
        started.clear()

    return _no_orphans


def http_status(url: str) -> int:
    """The status a GET of ``url`` answers (0: nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def config_text(
    topics: TopicSet, state_dir: str, retention_toml: str = "", *, group_id: str | None = None
) -> str:
    """Config file text for the test's own topics, state directory and (unique) group."""
    return f"""
group_id = "{group_id or topics.prefix + "-group"}"
state_dir = "{state_dir}"

[topics]
inputs = ["{topics.conversations}", "{topics.sessions}", "{topics.errors}"]
policies = "{topics.policies}"
stamped = "{topics.stamped}"
tombstones = "{topics.tombstones}"
dlq = "{topics.dlq}"
receipts = "{topics.receipts}"
holds = "{topics.holds}"
audit = "{topics.audit}"
partitions = 2
replication_factor = 1

[service]
tick_ms = 5

{retention_toml}
"""


def config_for(
    topics: TopicSet, state_dir: str, retention_toml: str = "", **overrides: Any
) -> Config:
    """The parsed :func:`config_text`, with fields replaced by ``overrides``."""
    text = config_text(topics, state_dir, retention_toml)
    return dataclasses.replace(parse_config(text, path="<test>"), **overrides)


# The consumer settings of an instance that shares its group with others (``fast_join=False``
# and these as ``consumer_options``): the test broker holds a join for half the joining
# member's session (measured: 3 s with the service's default 6 s, 2 s with 4 s, 1 s with
# 2 s), so a 4 s session makes each membership change a second shorter, and its 2 s hold
# still leaves a member half its session in hand, where 2 s sessions beside other members
# made rebalance storms.
GROUP_MEMBER: Final[Mapping[str, Any]] = {"session_timeout_ms": 4000, "heartbeat_interval_ms": 1000}


@contextlib.asynccontextmanager
async def running_service(
    config: Config,
    broker: str,
    environ: Mapping[str, str] | None = None,
    *,
    fast_join: bool = True,
    consumer_options: Mapping[str, Any] | None = None,
    producer_options: Mapping[str, Any] | None = None,
    clock: Callable[[], int] | None = None,
    metrics: ServiceMetrics | None = None,
    on_progress: Callable[[ServiceStats], None] | None = None,
) -> AsyncIterator[Service]:
    """The service in a task; stopped (cleanly) when the block ends. ``clock``: the
    service's, instead of the wall clock's milliseconds; ``producer_options``: over its
    producer's (``max_request_size``, say); ``metrics``: the gauges it sets;
    ``on_progress``: what ``run``'s progress line is given."""
    # A short session makes a lone member's (re)join fast on the test broker, which holds a
    # join until the old members time out; with several members it causes rebalance storms,
    # because the broker holds every JoinGroup ~3 s, longer than that session.
    fast = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}
    service = Service(
        config,
        bootstrap_servers=broker,
        environ=environ or {},
        consumer_options={**(fast if fast_join else {}), **(consumer_options or {})},
        producer_options=producer_options,
        clock=clock or wall_clock_ms,
        metrics=metrics,
        on_progress=on_progress,
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run, stop)
        with anyio.fail_after(30):
            await service.ready.wait()
        yield service
        stop.set()


def event(
    category: str,
    record_id: str,
    *,
    org: str = "acme",
    bot: str = "_",
    env: str = "live",
    op: str = "create",
    ts: int | str | None = None,
    **extra: Any,
) -> tuple[bytes, bytes]:
    """(key, value) of an input event keyed by its record, as producers should do."""
    body = {
        "category": category,
        "record_id": record_id,
        "org": org,
        "bot": bot,
        "env": env,
        "op": op,
        "ts": wall_clock_ms() if ts is None else ts,
        **extra,
    }
    return Identity(org, bot, env, category, record_id).key.encode(), orjson.dumps(body)


async def produce(broker: str, messages: Sequence[tuple[str, bytes | None, bytes | None]]) -> None:
    """Send (topic, key, value) messages and wait for every ack."""
    async with producer(broker) as prod:
        futures = [await prod.send(t, key=k, value=v) for t, k, v in messages]
        for fut in futures:
            await fut


@contextlib.contextmanager
def stores_in(state_dir: str) -> Iterator[dict[str, PartitionStore]]:
    """Every partition store a stopped service left in ``state_dir``, by directory name
    (not those it moved aside: damaged, or of a newer version)."""
    stores = {
        entry.name: PartitionStore(RocksKV(entry.path))
        for entry in os.scandir(state_dir)
        if entry.is_dir() and not any(f".{label}-" in entry.name for label in ASIDE)
    }
    try:
        yield stores
    finally:
        for store in stores.values():
            store.close()


def live_expiries(state_dir: str) -> dict[str, int | None]:
    """Record key -> expires_at of every live record in a stopped service's stores."""
    with stores_in(state_dir) as stores:
        return {
            s.identity.key: s.expires_at
            for store in stores.values()
            for s in store.items()
            if s.live
        }


async def archive_topics(
    broker: str, directory: Path, topics: TopicSet, group_id: str, **options: Any
) -> ArchiveWriter:
    """``run_archive`` on the test's own ``expiry.stamped`` and ``expiry.tombstones``."""
    return await run_archive(
        broker,
        str(directory),
        topic=topics.stamped,
        tombstones=topics.tombstones,
        group_id=group_id,
        **options,
    )


@contextlib.asynccontextmanager
async def archive_running(
    broker: str, directory: Path, topics: TopicSet, group_id: str
) -> AsyncIterator[None]:
    """:func:`archive_topics` in a task while the body runs; stopped at its end (what it
    read committed, as ``stream-expiry archive`` does on SIGTERM)."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(archive_topics, broker, directory, topics, group_id, stop=stop))
        try:
            yield
        finally:
            stop.set()

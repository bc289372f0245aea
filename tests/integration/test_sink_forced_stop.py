"""A sink's stop that its store keeps from finishing: forced, as ``run``'s, within the time
it says, and nothing lost.

A review found that SIGTERM only asked the sink's loop to end: with a table another session
had locked (a migration, a DBA's ``LOCK TABLE``), the batch being applied waited on the
lock, and the sink ran on until the lock went (60 s and more in a trial, past any
orchestrator's grace and its SIGKILL). Here a session of the test locks the records table
while stamps arrive; the sink's write waits on the lock (PostgreSQL's ``pg_locks`` says
so), and SIGTERM must end it by the time its line says, with status 130. The batch it was
applying is rolled back and read again by the next start: every record is written then.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import pytest

from stream_expiry import exits
from stream_expiry.broker import free_port
from stream_expiry.kafka import ensure_topics
from stream_expiry.testing.processes import spawn_command
from tests.conftest import make_topic_set
from tests.integration.service_helpers import config_text, http_status, no_orphans
from tests.integration.sink_helpers import PG_DSN, ident, open_store, produce, stamp, stamped_msg

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import Process

    from stream_expiry.sinks.postgres import PostgresStore
    from stream_expiry.testing.processes import ServiceProcess

pytestmark = [pytest.mark.integration, pytest.mark.asyncio, pytest.mark.postgres]

STARTED: list[Process] = []
RECORDS = 10

_no_orphans = no_orphans(STARTED)


async def _waiting_on_lock(conn: Any, table: str) -> bool:
    """Whether a session waits for a lock on ``table`` (the sink's write, here)."""
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::regclass", table
        )
    )


async def _records_table(conn: Any, schema: str) -> str:
    """The sink's records table in ``schema``, quoted for SQL."""
    table = await conn.fetchval(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
        "FROM information_schema.tables WHERE table_schema = $1 AND table_name LIKE '%records'",
        schema,
    )
    assert table is not None, f"no records table in schema {schema}"
    return str(table)


async def _spawn_sink(cfg: Path, broker: str, schema: str, group: str, port: int) -> ServiceProcess:
    return await spawn_command(
        ["sink", "postgres", "--config", str(cfg), "--bootstrap-servers", broker,
         "--dsn", PG_DSN, "--schema", schema, "--group-id", group,
         *(["--metrics-port", str(port)] if port else [])],
        STARTED,
    )  # fmt: skip


async def _ready(sink: ServiceProcess, port: int) -> None:
    """Until the sink's /readyz says ready: its store open, its partitions given."""
    with anyio.fail_after(60):
        while await anyio.to_thread.run_sync(http_status, f"http://127.0.0.1:{port}/readyz") != 200:
            assert sink.process.returncode is None, sink.tail()
            await anyio.sleep(0.1)  # a poll interval: the endpoint decides


@pytest.mark.timeout(150)
async def test_a_stop_the_store_keeps_from_finishing_is_forced_and_loses_nothing(
    broker: str, tmp_path: Path
) -> None:
    topics = make_topic_set()
    await ensure_topics(broker, topics.all, partitions=1)
    cfg = tmp_path / "service.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state")))
    group = f"sink-{uuid.uuid4().hex[:8]}"
    async with open_store("postgres", tmp_path) as opened:
        store: PostgresStore = opened  # type: ignore[assignment]
        schema = store.schema
        conn = await asyncpg.connect(PG_DSN)
        try:
            table = await _records_table(conn, schema)
            port = free_port()
            sink = await _spawn_sink(cfg, broker, schema, group, port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(sink.follow_log)
                await _ready(sink, port)
                lock = conn.transaction()
                await lock.start()
                await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                stamps = [stamp(ident(f"r{i}"), int(time.time() * 1000)) for i in range(RECORDS)]
                await produce(broker, topics.stamped, [stamped_msg(s) for s in stamps])
                with anyio.fail_after(60):
                    while not await _waiting_on_lock(conn, table):
                        assert sink.process.returncode is None, sink.tail()
                        await anyio.sleep(0.1)  # a poll interval: pg_locks decides
                sink.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                with anyio.fail_after(60):
                    code = await sink.process.wait()
                took = time.monotonic() - signalled
                await lock.rollback()
                tg.cancel_scope.cancel()
            line = next((x for x in sink.lines if "received SIGTERM: finishing" in x), None)
            assert line is not None, sink.tail()
            said = max(int(n) for n in re.findall(r"(\d+) s\b", line))
            assert code == exits.INTERRUPTED, sink.tail()
            assert sink.log_has("forced stop"), sink.tail()
            # 3 s for the process' own exit on a busy machine, as test_forced_stop allows.
            assert took < said + 3, f"stopped {took:.1f} s after SIGTERM, said {said} s"
            assert not [x for x in sink.lines if " ERROR " in x], sink.tail()
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0  # rolled back

            # Nothing lost: the next start reads the batch again and writes every record.
            again = await _spawn_sink(cfg, broker, schema, group, port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(again.follow_log)
                with anyio.fail_after(60):
                    while await conn.fetchval(f"SELECT count(*) FROM {table}") < RECORDS:
                        assert again.process.returncode is None, again.tail()
                        await anyio.sleep(0.1)  # a poll interval: the table decides
                again.process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    assert await again.process.wait() == exits.OK, again.tail()
                tg.cancel_scope.cancel()
            written = {r[0] for r in await conn.fetch(f"SELECT record_id FROM {table}")}
            assert written == {s.identity.record_id for s in stamps}
        finally:
            await conn.close()


@pytest.mark.timeout(120)
async def test_a_stop_while_the_store_opens_behind_a_lock_is_at_once_and_clean(
    broker: str, tmp_path: Path
) -> None:
    """The same lock taken before the sink starts: its store's open waits on it, and
    SIGTERM stops it at once (nothing applied yet: status 0). The open's connection, cut
    mid-way, left asyncio's "Future exception was never retrieved ... ConnectionError
    ('unexpected connection_lost() call')" at ERROR in the log of a clean stop."""
    topics = make_topic_set()
    await ensure_topics(broker, topics.all, partitions=1)
    cfg = tmp_path / "service.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state")))
    async with open_store("postgres", tmp_path) as opened:
        store: PostgresStore = opened  # type: ignore[assignment]
        conn = await asyncpg.connect(PG_DSN)
        try:
            table = await _records_table(conn, store.schema)
            lock = conn.transaction()
            await lock.start()
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            sink = await _spawn_sink(cfg, broker, store.schema, f"sink-{uuid.uuid4().hex[:8]}", 0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(sink.follow_log)
                with anyio.fail_after(60):
                    while not await _waiting_on_lock(conn, table):
                        assert sink.process.returncode is None, sink.tail()
                        await anyio.sleep(0.1)  # a poll interval: pg_locks decides
                sink.process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    code = await sink.process.wait()
                await lock.rollback()
                tg.cancel_scope.cancel()
        finally:
            await conn.close()
    assert code == exits.OK, sink.tail()
    assert sink.log_has("received SIGTERM while starting: stopping now"), sink.tail()
    assert not [x for x in sink.lines if " ERROR " in x], sink.tail()

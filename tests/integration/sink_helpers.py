"""Helpers for the sink tests: stores of every kind, messages in the contract's formats,
a sink running in the background, and polling with a deadline (never a sleep).

PostgreSQL is a hard requirement of the ``postgres`` tests: when it cannot be reached they
fail with the command that starts it, rather than skip and look green.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import TYPE_CHECKING, Any, Final

import anyio
import pytest

from stream_expiry.errors import StoreError
from stream_expiry.kafka import producer
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.sinks.framework import Sink, SinkConfig
from stream_expiry.sinks.postgres import PostgresStore
from stream_expiry.sinks.sqlite import SQLiteStore
from stream_expiry.sinks.store import MemoryStore, Store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
    from pathlib import Path

PG_DSN: Final = os.environ.get("STREAM_EXPIRY_TEST_PG_DSN", "postgresql://127.0.0.1:5432/test")
STORE_KINDS: Final = ("memory", "sqlite", "postgres")
SQL_KINDS: Final = ("sqlite", "postgres")

# Epoch milliseconds that read well in failures: 2026-01-01T00:00:00Z and friends.
T0: Final = 1_767_225_600_000
MINUTE: Final = 60_000


def store_params(kinds: Iterable[str] = STORE_KINDS) -> list[Any]:
    """``pytest.param``s for an indirect ``store`` fixture; postgres gets its marker."""
    return [
        pytest.param(k, marks=pytest.mark.postgres, id=k)
        if k == "postgres"
        else pytest.param(k, id=k)
        for k in kinds
    ]


@contextlib.asynccontextmanager
async def open_store(kind: str, tmp_path: Path, *, name: str | None = None) -> AsyncIterator[Store]:
    """A fresh, open store of ``kind``, isolated from every other test, removed afterwards."""
    unique = f"t{uuid.uuid4().hex[:12]}"
    store: Store
    if kind == "memory":
        store = MemoryStore(name or "memory")
    elif kind == "sqlite":
        store = SQLiteStore(
            tmp_path / f"{unique}.db", name=name or "sqlite", table_prefix=f"{unique}_"
        )
    elif kind == "postgres":
        store = PostgresStore(PG_DSN, name=name or "postgres", schema=unique)
    else:
        raise ValueError(f"unknown store kind {kind!r}")
    try:
        await store.open()
    except StoreError as exc:
        if kind == "postgres":
            # The message says PostgreSQL is not reachable, and how to start it.
            pytest.fail(
                f"{exc} (dsn from $STREAM_EXPIRY_TEST_PG_DSN or the default)", pytrace=False
            )
        raise
    try:
        yield store
    finally:
        if isinstance(store, PostgresStore):
            await store.drop_schema()
        await store.close()


def ident(record_id: str = "r1", *, org: str = "acme", bot: str = "_", env: str = "live",
          category: str = "conversation") -> Identity:  # fmt: skip
    return Identity(org, bot, env, category, record_id)


def stamp(i: Identity, created_at: int = T0, ttl_ms: int | None = 10 * MINUTE) -> Stamp:
    """The engine's state for a record created at ``created_at`` with ``ttl_ms``."""
    expires = None if ttl_ms is None else created_at + ttl_ms
    return Stamp(i, created_at, expires, ttl_ms, None if ttl_ms is None else "org")


def stamped_msg(s: Stamp, data: Any = None) -> tuple[bytes, bytes]:
    """(key, value) of ``s`` on ``expiry.stamped``, in the service's own encoding."""
    return s.identity.key.encode(), encode_stamp(s, data)


def tombstone_msg(
    s: Stamp, *, reason: str = "ttl", emitted_at: int | None = None
) -> tuple[bytes, bytes]:
    """(key, value) of the tombstone of ``s`` on ``expiry.tombstones``."""
    if emitted_at is None:
        emitted_at = s.expires_at if s.expires_at is not None else T0
    return s.identity.key.encode(), encode_tombstone(s, reason=reason, emitted_at=emitted_at)  # type: ignore[arg-type]


def null_msg(i: Identity) -> tuple[bytes, None]:
    """A Kafka-native tombstone on ``expiry.stamped``."""
    return i.key.encode(), None


async def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes, bytes | None]],
    *,
    timestamp_ms: int | None = None,
) -> None:
    """Send messages in order and wait for every ack (``timestamp_ms``: their Kafka
    timestamp, instead of the producer's clock)."""
    async with producer(bootstrap) as prod:
        futures = [
            await prod.send(topic, value, key=key, timestamp_ms=timestamp_ms)
            for key, value in messages
        ]
        for f in futures:
            await f


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``check`` every 50 ms until it holds; fail with ``what`` after the deadline."""
    end = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() >= end:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await anyio.sleep(0.05)  # a poll interval, not synchronisation: the check decides


@contextlib.asynccontextmanager
async def running_sink(store: Store, config: SinkConfig, **kwargs: Any) -> AsyncIterator[Sink]:
    """Run a sink in the background for the duration of the block; stop it cleanly after.

    A sink that fails while running makes the block fail with its error.
    """
    sink = Sink(store, config, **kwargs)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sink.run, stop)
        try:
            yield sink
        finally:
            stop.set()


def sink_config(bootstrap: str, topics: Any, **overrides: Any) -> SinkConfig:
    """A SinkConfig on a test's unique topics, with a unique group."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": f"{topics.prefix}.sink.{uuid.uuid4().hex[:6]}",
        "stamped_topic": topics.stamped,
        "tombstones_topic": topics.tombstones,
        "receipts_topic": topics.receipts,
        "holds_topic": topics.holds,
        "audit_topic": topics.audit,
        "poll_timeout_ms": 100,
        # The test broker holds each JoinGroup for about a session; a short session makes a
        # group start in ~1 s and a restart with the same group in ~4 s (BROKER.md).
        "consumer_options": {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500},
    }
    options.update(overrides)
    return SinkConfig(**options)

"""Shared fixtures: one real Tansu broker per test session, unique topic names per test.

Nothing but names isolates tests on one broker (../shared/BROKER.md), so every test asks for
``topics`` and gets its own set. Waiting is always a poll with a deadline, never a sleep.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# hypothesis is loaded up front: its plugin's lazy import at the end of a session that has
# not used it hits a CPython 3.11.7 AST bug ("recursion depth mismatch").
import hypothesis
import pytest
import pytest_asyncio
from aiokafka import TopicPartition
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from stream_expiry.broker import EmbeddedBroker
from stream_expiry.kafka import consumer, ensure_topics, partitions_of, read_to_end
from stream_expiry.logs import _HANDLER_NAME as _LOG_HANDLER
from stream_expiry.policy.sources import ENV_VARIABLES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator


# Property tests check answers, never time: hypothesis' default deadline of 200 ms an
# example failed one of them (the parser's fast path against its slow one) under a busy
# machine, twice in a trial's runs. Each test's own @settings still sets its examples.
#
# The same examples every run (derandomize), so that CI's verdict is the code's, not a
# draw's: random runs found rare failures that were already on main (round 45: 1 run in
# 13, then 1 in 82, of the legal-hold restore property), and a red CI keeps a whole round
# out. Exploring is a run of its own: STREAM_EXPIRY_TEST_HYPOTHESIS=random, or
# --hypothesis-seed=N for one seed (README, "Tests").
hypothesis.settings.register_profile("stream-expiry", deadline=None, derandomize=True)
hypothesis.settings.register_profile("stream-expiry-random", deadline=None)
hypothesis.settings.load_profile(
    "stream-expiry-random"
    if os.environ.get("STREAM_EXPIRY_TEST_HYPOTHESIS") == "random"
    else "stream-expiry"
)

# What a developer's shell may set that the code under test reads: the service's own
# variables (brokers, Kafka security, metrics) and the TTL variables of the contract.
_USER_VARIABLES = frozenset(v for names in ENV_VARIABLES.values() for v in names)


@pytest.fixture(autouse=True)
def _no_user_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from an environment without the user's settings: with
    ``STREAM_EXPIRY_BOOTSTRAP_SERVERS`` set in the shell, ``explain`` asks Kafka and a test of
    its offline answer fails; a TTL variable changes every effective TTL. A test that wants
    one sets it itself. (``STREAM_EXPIRY_TEST_*`` are the harness's own, kept.)"""
    for name in list(os.environ):
        if name in _USER_VARIABLES or (
            name.startswith("STREAM_EXPIRY_") and not name.startswith("STREAM_EXPIRY_TEST_")
        ):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Every test leaves logging as it found it: a test that runs a command's
    ``configure_logging`` (``--log-level ERROR``, say) left the root logger at that level,
    and a later test on the same worker that waited for a WARNING of the service's in
    ``caplog`` never saw it (the clean-stop outage test, 90 s then failed, in full runs
    only: aiokafka's own level is set apart, so its errors were all it captured)."""
    root = logging.getLogger()
    named = ("aiokafka", "aiosqlite", "stream_expiry")
    levels = (root.level, [logging.getLogger(n).level for n in named])
    handlers = list(root.handlers)
    yield
    root.setLevel(levels[0])
    for name, level in zip(named, levels[1], strict=True):
        logging.getLogger(name).setLevel(level)
    for handler in list(root.handlers):  # ours (pytest's own it removes itself)
        if handler not in handlers and handler.get_name() == _LOG_HANDLER:
            root.removeHandler(handler)


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Bootstrap address of a real Kafka-protocol broker (Tansu), shared by the session."""
    external = os.environ.get("STREAM_EXPIRY_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedBroker() as b:
        yield b.bootstrap_servers


@dataclass(frozen=True)
class TopicSet:
    """The contract's topic names, made unique for one test."""

    prefix: str
    conversations: str
    sessions: str
    errors: str
    policies: str
    stamped: str
    tombstones: str
    dlq: str
    receipts: str
    holds: str
    audit: str

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.conversations, self.sessions, self.errors)

    @property
    def all(self) -> tuple[str, ...]:
        return (
            *self.inputs,
            self.policies,
            self.stamped,
            self.tombstones,
            self.dlq,
            self.receipts,
            self.holds,
            self.audit,
        )


def make_topic_set() -> TopicSet:
    p = f"t{uuid.uuid4().hex[:10]}"
    return TopicSet(
        prefix=p,
        conversations=f"{p}.conversations",
        sessions=f"{p}.sessions",
        errors=f"{p}.errors",
        policies=f"{p}.expiry.policies",
        stamped=f"{p}.expiry.stamped",
        tombstones=f"{p}.expiry.tombstones",
        dlq=f"{p}.expiry.dlq",
        receipts=f"{p}.expiry.receipts",
        holds=f"{p}.expiry.holds",
        audit=f"{p}.expiry.audit",
    )


@pytest_asyncio.fixture
async def topics(broker: str) -> AsyncIterator[TopicSet]:
    """Fresh, explicitly created topics (auto-creation would give 4 partitions silently)."""
    ts = make_topic_set()
    await ensure_topics(broker, ts.all, partitions=2)
    yield ts


def deadline(seconds: float) -> Callable[[], bool]:
    """A predicate that turns True once ``seconds`` have passed: for poll loops."""
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool],
    timeout_s: float = 20.0,
) -> list[Any]:
    """Read ``topic`` from the beginning until ``until(records)`` holds or the time runs out.

    Returns the aiokafka ConsumerRecords read so far; the caller asserts on them, so a
    timeout shows up as a failed assertion with what did arrive.
    """
    records: list[Any] = []
    expired = deadline(timeout_s)
    async with consumer(bootstrap, topic) as cons:
        while not until(records) and not expired():
            batch = await cons.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
    return records


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its current end (the high watermark when called)."""
    records: list[Any] = []
    async with consumer(bootstrap) as cons:
        async for batch in read_to_end(cons, topic):
            for recs in batch.values():
                records.extend(recs)
    return records


async def wait_for(predicate: Callable[[], bool], *, timeout_s: float = 20.0) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail the test after ``timeout_s``."""
    import anyio

    with anyio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the predicate reads another task's state
            await anyio.sleep(0.02)


async def record_batch_sizes(broker: str, topic: str) -> list[int]:
    """The size of every record batch the broker holds for ``topic``, as it compares them
    with ``max.message.bytes`` (offset and length fields included): read from the raw
    Fetch answers, which the consumer decodes away."""
    sizes: list[int] = []
    async with consumer(broker) as cons:
        client = cons._client
        for partition in sorted(await partitions_of(cons, topic)):
            tp = TopicPartition(topic, partition)
            node = client.cluster.leader_for_partition(tp)
            offset, end = 0, None
            while end is None or offset < end:
                request = FetchRequest(
                    100, 1, 1 << 24, 0, [(topic, [(partition, offset, 1 << 24)])]
                )
                response = await client.send(node, request)
                [(_topic, [(_part, _code, end, *data)])] = response.topics
                raw = bytes(data[-1] or b"")
                records, pos, before = MemoryRecords(raw), 0, offset
                while (batch := records.next_batch()) is not None:
                    sizes.append(12 + int.from_bytes(raw[pos + 8 : pos + 12], "big"))
                    pos += sizes[-1]
                    offset = batch.next_offset
                assert offset > before or offset >= end, f"no batch at {tp} offset {offset}"
    return sizes

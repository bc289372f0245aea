"""stream-expiry end to end: tombstone lag at a given expiration rate, and RSS against pending.

    python -m bench.e2e_expiry --rate 10000 --seconds 10 [--grace 5] [--pending 0]

The same workload as the peers (``bench.peers.*``): ``R * S`` records whose expiry falls in an
S-second window, R per second (:class:`bench.common.RateSchedule`), all written before the
window opens, so what is measured is the service's timers, not its ingest.

Setup: an embedded Tansu broker (``stream_expiry.broker.EmbeddedBroker``), topics with unique
names, a fresh state directory, and :class:`stream_expiry.service.Service` run in THIS process
under anyio, with the default tick (10 ms) and horizon (1 h), and the GC tuned as
``stream-expiry run`` tunes it (``stream_expiry.collection.tune_gc``; ``extra.gc`` reports its
pauses). In-process rather than
``python -m stream_expiry run``: it is the same code path (the CLI only adds signal handling
and a progress log line), it lets the benchmark see ``service.stats`` (so it knows when ingest
is done and can check that it finished before the window opened) and read the service's RSS
without the noise of a harness; and nothing else runs in this process while the window is
open. The producer of the input events and the reader of ``expiry.tombstones`` are each a
separate process (multiprocessing ``spawn``), so neither takes CPU from the service's event
loop; on 2 cores they still share the machine with the broker.

Lag phase (``--rate R --seconds S``): each record is a ``create`` of category ``error`` with a
10-minute TTL and ``ts = due - ttl``, so ``expires_at`` is its due time (ms). The window opens
``lead`` seconds after the run starts, the lead sized for the producer and for ingest at a
conservative ``--assume-ingest`` events/s (``--lead`` overrides it); the benchmark records how
much slack was left between the end of ingest and the window, and says so when there was none.
``extra.lag.firing`` gives the service process's CPU per tombstone while the window's
timers fire (:func:`firing_cpu`), a figure that an overloaded run's lag does not give.
The reader consumes ``expiry.tombstones`` from the start (``fetch_max_wait_ms`` 5: Tansu does
not answer a waiting fetch when data arrives, so a consumer with Kafka's default 500 ms would
add ~150 ms of its own) and measures lag = wall clock when ``getmany`` handed it the record
minus the record's ``expires_at``. Records not delivered ``--grace`` seconds after the last
due time are missing. It also counts duplicates and any tombstone emitted before its expiry.

Memory phase (``--pending N``): far-future records (category ``conversation``, 30-day TTL,
created now, keys shaped like ``bench.common.record_key``) are produced in steps (N/10, N/4,
N/2, N) and, after each step is ingested, the service process's RSS is read: delta from the
RSS once ready with nothing pending. The stores' size on disk per record is reported beside it.
With both ``--pending`` and ``--rate``, the far-future records are written first and stay
pending during the lag phase.

Prints ONE JSON object (``bench.common.envelope``) on stdout; progress on stderr.

The module also holds the helpers the other stream-expiry benchmarks share (``e2e_ingest``,
``e2e_replay``, ``bench_memory``, ``bench_restart``): config, event shapes, the producer and
tombstone-reader child processes, and the in-process service runner.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from bench.common import (
    NS_PER_MS,
    NS_PER_S,
    RateSchedule,
    base_parser,
    envelope,
    fmt_ms,
    human_count,
    lag_windows,
    log,
    memory_point,
    on_embedded_broker,
    percentile,
    rss_bytes,
    summarize,
    utc_now_iso,
)
from stream_expiry.config import Config, parse_config
from stream_expiry.model import Identity
from stream_expiry.service import Service

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

PARTITIONS = 4  # the service's default for the topics it creates
LAG_CATEGORY = "error"
LAG_TTL_MS = 600_000  # 10 minutes: every lag record is created in the past
FAR_CATEGORY = "conversation"
FAR_TTL_MS = 30 * 86_400_000  # like the peers' far-future keys
READER_FETCH_WAIT_MS = 5
LAG_PREFIX = b"/lag-"
FAR_OFFSET = 2_000_000_000  # record numbers of far-future events produced during a window


# --------------------------------------------------------------------------- shared: setup


@dataclass(frozen=True)
class BenchTopics:
    """The contract's topics under a unique prefix (nothing else isolates runs on a broker)."""

    prefix: str

    @classmethod
    def fresh(cls) -> BenchTopics:
        return cls(f"b{uuid.uuid4().hex[:10]}")

    @property
    def conversations(self) -> str:
        return f"{self.prefix}.conversations"

    @property
    def sessions(self) -> str:
        return f"{self.prefix}.sessions"

    @property
    def errors(self) -> str:
        return f"{self.prefix}.errors"

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.conversations, self.sessions, self.errors)

    @property
    def policies(self) -> str:
        return f"{self.prefix}.expiry.policies"

    @property
    def stamped(self) -> str:
        return f"{self.prefix}.expiry.stamped"

    @property
    def tombstones(self) -> str:
        return f"{self.prefix}.expiry.tombstones"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.expiry.dlq"

    @property
    def holds(self) -> str:
        return f"{self.prefix}.expiry.holds"

    @property
    def audit(self) -> str:
        return f"{self.prefix}.expiry.audit"

    @property
    def all(self) -> list[str]:
        """Every topic of the contract a service's run needs made: a changelog written
        before the service's first start (``bench.changelog``) stands for one a service
        left, and the service refuses to start on it without the holds topic that service
        would have made (``control.refuse_a_lost_holds_topic``)."""
        return [
            *self.inputs,
            self.policies,
            self.stamped,
            self.tombstones,
            self.dlq,
            self.holds,
            self.audit,
        ]

    def input_for(self, category: str) -> str:
        return {"conversation": self.conversations, "session": self.sessions}.get(
            category, self.errors
        )


def config_toml(
    topics: BenchTopics,
    state_dir: str,
    *,
    tick_ms: int | None = None,
    retention: str = "",
    service_extra: str = "",
    defaults: tuple[str, str, str] = ("30d", "30d", "10m"),
    topics_extra: str = "",
) -> str:
    """A service config on ``topics``: by default conversations 30 d, sessions 30 d (sliding),
    errors 10 min (``defaults``); ``service_extra``: more ``[service]`` lines;
    ``topics_extra``: more ``[topics]`` lines."""
    service = f"tick_ms = {tick_ms}\n" if tick_ms is not None else ""
    service = f"[service]\n{service}{service_extra}\n" if service or service_extra else ""
    return f"""
group_id = "{topics.prefix}-group"
state_dir = "{state_dir}"

[topics]
inputs = ["{topics.conversations}", "{topics.sessions}", "{topics.errors}"]
policies = "{topics.policies}"
stamped = "{topics.stamped}"
tombstones = "{topics.tombstones}"
dlq = "{topics.dlq}"
holds = "{topics.holds}"
audit = "{topics.audit}"
{topics_extra}
{service}
[retention.defaults]
conversation = "{defaults[0]}"
session = "{defaults[1]}"
error = "{defaults[2]}"
{retention}
"""


def make_config(
    topics: BenchTopics,
    state_dir: str,
    *,
    tick_ms: int | None = None,
    retention: str = "",
    service_extra: str = "",
    defaults: tuple[str, str, str] = ("30d", "30d", "10m"),
) -> Config:
    text = config_toml(
        topics,
        state_dir,
        tick_ms=tick_ms,
        retention=retention,
        service_extra=service_extra,
        defaults=defaults,
    )
    return parse_config(text, path="<bench>")


def record_identity(i: int, category: str = FAR_CATEGORY, *, prefix: str = "rec") -> Identity:
    """The identity whose key has the shape of ``bench.common.record_key(i)``."""
    return Identity(
        f"org-{i % 997:04d}", f"bot-{i % 13:02d}", "live", category, f"{prefix}-{i:012d}"
    )


def event_value(ident: Identity, ts_ms: int, op: str = "create") -> bytes:
    body: dict[str, Any] = {
        "category": ident.category,
        "record_id": ident.record_id,
        "org": ident.org,
        "bot": ident.bot,
        "ts": ts_ms,
    }
    if op != "create":
        body["op"] = op
    return orjson.dumps(body)


@contextlib.contextmanager
def temp_state_dir(tag: str) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix=f"se-bench-{tag}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def index_file_bytes(state_dir: str) -> int:
    """Every file under the state directory (the partitions' RocksDB stores) right now."""
    total = 0
    for root, _dirs, files in os.walk(state_dir):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
    return total


def quiet_logging() -> None:
    """The service's INFO lines (assignments, stops) to stderr; aiokafka's only on warnings."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="    %(asctime)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- shared: children


def spawn(
    target: Callable[..., None], *args: Any, daemon: bool = True
) -> tuple[BaseProcess, Connection]:
    """Run ``target(*args, conn)`` in a fresh interpreter; return it and our end of a pipe.
    ``daemon=False`` for a child that starts processes of its own (``stop_child`` ends it)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(*args, child), daemon=daemon)
    proc.start()
    child.close()
    return proc, parent


async def receive(conn: Connection, timeout_s: float, what: str) -> Any:
    """The next object a child sends, waiting in a thread so the event loop keeps running."""
    if not await anyio.to_thread.run_sync(conn.poll, timeout_s):
        raise RuntimeError(f"{what}: no answer within {timeout_s:g}s")
    return conn.recv()


def stop_child(proc: BaseProcess) -> None:
    if proc.is_alive():
        proc.kill()
    proc.join(5)


@dataclass(frozen=True)
class ProduceSpec:
    """What a producer child writes.

    ``kind`` ``lag``: records ``lo..hi`` of the rate schedule, category ``error``, created
    at ``due - ttl``. ``far``: records ``lo..hi`` expiring 30 days after ``ts_ms``.
    ``mixed``: the ingest/replay mix (see :func:`mixed_event`).
    """

    kind: str
    lo: int
    hi: int
    ts_ms: int = 0
    rate: int = 1
    start_ns: int = 0


def timers_held(service: Service) -> int:
    """The timers the service's partitions hold now. Its ``stats.pending_in_wheel`` is a
    gauge updated once a second: read right after a lag window, it still counted the
    window's last second (25,838 timers "left" after all 500,000 had fired at 50k/s)."""
    return sum(proc.timers for proc in service.processors.values())


def mixed_event(i: int, ts_ms: int) -> tuple[Identity, str]:
    """The ingest and replay workload: per 20 events, 14 creates of conversations, 3 creates
    of sessions, 2 touches of earlier sessions and 1 error create. Distinct records but for
    the touches; times move forward by 1 ms per 10 events from ``ts_ms``."""
    r = i % 20
    if r < 14:
        return record_identity(i, "conversation"), "create"
    if r < 17:
        return record_identity(i, "session"), "create"
    if r < 19:
        earlier = (i // 20 - 1 if i >= 20 else i // 20) * 20 + 14 + (r - 17)
        return record_identity(earlier, "session"), "touch"
    return record_identity(i, "error"), "create"


def build_messages(spec: ProduceSpec, topics: BenchTopics) -> Iterator[tuple[str, bytes, bytes]]:
    if spec.kind == "lag":
        sched = RateSchedule(spec.rate, spec.hi, spec.start_ns)
        for i in range(spec.lo, spec.hi):
            ident = record_identity(i, LAG_CATEGORY, prefix="lag")
            due = sched.due_ms(i)
            yield topics.errors, ident.key.encode(), event_value(ident, due - LAG_TTL_MS)
    elif spec.kind == "far":
        for i in range(spec.lo, spec.hi):
            ident = record_identity(i, FAR_CATEGORY)
            yield topics.conversations, ident.key.encode(), event_value(ident, spec.ts_ms)
    elif spec.kind == "mixed":
        for i in range(spec.lo, spec.hi):
            ident, op = mixed_event(i, spec.ts_ms)
            yield (
                topics.input_for(ident.category),
                ident.key.encode(),
                event_value(ident, spec.ts_ms + i // 10, op),
            )
    else:
        raise ValueError(f"unknown produce kind {spec.kind!r}")


async def produce_messages(bootstrap: str, messages: Iterator[tuple[str, bytes, bytes]]) -> int:
    """Send messages as record batches per partition (the service's OutputBuffer) and wait for
    every ack; returns how many were sent."""
    from stream_expiry.kafka import OutputBuffer, producer

    n = 0
    async with producer(bootstrap, linger_ms=20) as prod:
        out = OutputBuffer(prod)
        acks: list[Any] = []
        for topic, key, value in messages:
            await out.add(topic, key, value)
            n += 1
            if n % 50_000 == 0:
                acks += await out.flush()
        acks += await out.flush()
        for ack in acks:
            await ack
    return n


def _producer_main(bootstrap: str, spec: ProduceSpec, prefix: str, conn: Connection) -> None:
    t0 = time.perf_counter()
    n = asyncio.run(produce_messages(bootstrap, build_messages(spec, BenchTopics(prefix))))
    conn.send({"sent": n, "seconds": time.perf_counter() - t0})
    conn.close()


async def produce_in_child(
    bootstrap: str, spec: ProduceSpec, topics: BenchTopics, timeout_s: float = 600.0
) -> dict[str, Any]:
    """Produce ``spec`` from a separate process and wait until it is acknowledged."""
    proc, conn = spawn(_producer_main, bootstrap, spec, topics.prefix)
    try:
        result: dict[str, Any] = await receive(conn, timeout_s, "producer")
    finally:
        stop_child(proc)
    return result


async def produce_paced(
    bootstrap: str,
    messages: Iterator[tuple[str, bytes, bytes]],
    count: int,
    rate: int,
    start_ns: int,
    lead_ns: int,
) -> int:
    """Send ``count`` messages, message ``j`` no earlier than ``lead_ns`` before
    ``start_ns + j / rate`` (:class:`bench.common.RateSchedule`), in batches per 10 ms."""
    from stream_expiry.kafka import OutputBuffer, producer

    sched = RateSchedule(rate, count, start_ns)
    sent = 0
    async with producer(bootstrap, linger_ms=2) as prod:
        out = OutputBuffer(prod)
        acks: list[Any] = []
        while sent < count:
            ready = sched.count_due_by(time.time_ns() + lead_ns)
            if ready <= sent:
                wait_ns = sched.due_ns(sent) - lead_ns - time.time_ns()
                await asyncio.sleep(max(min(wait_ns, NS_PER_S), NS_PER_MS) / NS_PER_S)
                continue
            for _ in range(sent, min(ready, sent + 5_000)):
                topic, key, value = next(messages)
                await out.add(topic, key, value)
                sent += 1
            acks += await out.flush()
            while len(acks) > 64:
                await acks.pop(0)
        for ack in acks:
            await ack
    return sent


def _paced_main(
    bootstrap: str,
    spec: ProduceSpec,
    prefix: str,
    rate: int,
    start_ns: int,
    lead_ns: int,
    conn: Connection,
) -> None:
    t0 = time.perf_counter()
    messages = build_messages(spec, BenchTopics(prefix))
    n = asyncio.run(produce_paced(bootstrap, messages, spec.hi - spec.lo, rate, start_ns, lead_ns))
    conn.send({"sent": n, "seconds": time.perf_counter() - t0})
    conn.close()


@contextlib.asynccontextmanager
async def paced_producer(
    bootstrap: str,
    spec: ProduceSpec,
    topics: BenchTopics,
    *,
    rate: int,
    start_ns: int,
    lead_ns: int = 0,
) -> AsyncIterator[Callable[[float], Any]]:
    """A child producing ``spec``'s messages at ``rate`` from ``start_ns`` on (each up to
    ``lead_ns`` early) while the block runs; yields ``result(timeout_s)``."""
    proc, conn = spawn(_paced_main, bootstrap, spec, topics.prefix, rate, start_ns, lead_ns)
    try:

        async def result(timeout_s: float) -> Any:
            return await receive(conn, timeout_s, "paced producer")

        yield result
    finally:
        stop_child(proc)


def _reader_main(
    bootstrap: str,
    topic: str,
    expected: int,
    rate: int,
    start_ns: int,
    deadline_ns: int,
    drain_ns: int,
    conn: Connection,
) -> None:
    result = asyncio.run(
        _read_tombstones(bootstrap, topic, expected, rate, start_ns, deadline_ns, drain_ns, conn)
    )
    conn.send(result)
    conn.close()


async def _read_tombstones(
    bootstrap: str,
    topic: str,
    expected: int,
    rate: int,
    start_ns: int,
    deadline_ns: int,
    drain_ns: int,
    conn: Connection,
) -> dict[str, Any]:
    """Consume the tombstones of the lag records until all came or the deadline passed.

    Lags are ms from each record's due time (from its index in the schedule, equal to its
    ``expires_at``) to the moment ``getmany`` returned it; only arrivals before
    ``deadline_ns`` count as delivered. Until ``drain_ns`` (if later) the reader goes on
    counting late arrivals, to tell late from lost. ``expected`` 0 means: report the arrival
    of the first tombstone of any record and stop.
    """
    from aiokafka import TopicPartition

    from stream_expiry.kafka import consumer, partitions_of
    from stream_expiry.timeutil import parse_ts

    sched = RateSchedule(rate, max(expected, 1), start_ns)
    lags = array.array("d")
    # The lag split in two at the tombstone's ``emitted_at`` (the service's clock when it
    # decided): due -> decided is the service's timers, decided -> here is produce, broker
    # and fetch. Only in-time arrivals, like ``lags``.
    decided = array.array("d")
    dues = array.array("q")  # each in-time arrival's due time, for the lag per tenth
    seen = bytearray(expected)
    got = duplicates = foreign = early = explicit = mismatched = late = 0
    late_max_ms = 0.0
    first_arrival_ns: int | None = None
    last_arrival_ns: int | None = None
    async with consumer(
        bootstrap,
        fetch_max_wait_ms=READER_FETCH_WAIT_MS,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    ) as cons:
        parts = await partitions_of(cons, topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        await cons.getmany(timeout_ms=200)  # first fetch done: positions resolved
        conn.send("ready")
        while (got + late < expected or (expected == 0 and first_arrival_ns is None)) and (
            time.time_ns() < max(deadline_ns, drain_ns)
        ):
            batch = await cons.getmany(timeout_ms=100, max_records=20_000)
            t_ns = time.time_ns()  # when the records were handed to this consumer
            if not batch:
                continue
            if first_arrival_ns is None:
                first_arrival_ns = t_ns
                if expected == 0:
                    break
            last_arrival_ns = t_ns
            in_time = t_ns < deadline_ns
            t_ms = t_ns / NS_PER_MS
            for records in batch.values():
                for rec in records:
                    key: bytes = rec.key or b""
                    cut = key.rfind(LAG_PREFIX)
                    if cut < 0:
                        foreign += 1
                        continue
                    idx = int(key[cut + len(LAG_PREFIX) :])
                    if not 0 <= idx < expected:
                        foreign += 1
                        continue
                    if seen[idx]:
                        duplicates += 1
                        continue
                    body = orjson.loads(rec.value)
                    if body["reason"] != "ttl":
                        explicit += 1
                    if body["emitted_at"] < body["expires_at"]:  # same RFC 3339 format
                        early += 1
                    due_ms = sched.due_ms(idx)
                    if got % 1000 == 0 and parse_ts(body["expires_at"]) != due_ms:
                        mismatched += 1
                    seen[idx] = 1
                    if in_time:
                        got += 1
                        lags.append(t_ms - due_ms)
                        decided.append(parse_ts(body["emitted_at"]) - due_ms)
                        dues.append(due_ms)
                    else:
                        late += 1
                        late_max_ms = max(late_max_ms, t_ms - due_ms)
    return {
        "lags": lags.tobytes(),
        "decided": decided.tobytes(),
        "dues": dues.tobytes(),
        "delivered": got,
        "delivered_after_grace": late,
        "after_grace_max_lag_ms": round(late_max_ms, 3),
        "last_arrival_ns": last_arrival_ns,
        "duplicates": duplicates,
        "foreign": foreign,
        "early": early,
        "explicit": explicit,
        "expires_mismatch_sampled": mismatched,
        "first_arrival_ns": first_arrival_ns,
    }


# The reader's raw arrays (bytes of array.array), which a JSON result leaves out.
READER_ARRAYS = ("lags", "decided", "dues")


def lag_split(res: dict[str, Any], lags: array.array[float]) -> dict[str, Any]:
    """The reader's lags in two parts, at each tombstone's ``emitted_at`` (the clock of
    whoever decided it was due: the service, or a peer's sweeper): due -> decided, and
    decided -> the reader (produce, acks, broker, fetch); and the lag per tenth of the
    window, by due time (``lag_windows``): on the embedded broker the transport slows down
    as the run goes on, whatever decides the tombstones (``bench.bench_transport``)."""
    decided = array.array("d")
    decided.frombytes(res["decided"])
    dues = array.array("q")
    dues.frombytes(res["dues"])
    transport = [lag - d for lag, d in zip(lags, decided, strict=True)]
    # Tenths of the due times' span, widened by a millisecond so the last one is in the tenth.
    tenth_s = (max(dues) - min(dues) + 1) / 10_000 if dues else 0.0
    return {
        "decided_lag_ms": summarize(decided).to_json() if decided else None,
        "transport_lag_ms": summarize(transport).to_json() if transport else None,
        "lag_windows": lag_windows(dues, lags, tenth_s) if dues else [],
    }


@contextlib.asynccontextmanager
async def tombstone_reader(
    bootstrap: str,
    topic: str,
    expected: int,
    rate: int,
    start_ns: int,
    deadline_ns: int,
    drain_ns: int = 0,
) -> AsyncIterator[Callable[[float], Any]]:
    """A reader child subscribed before the block; yields ``result(timeout_s)``."""
    proc, conn = spawn(
        _reader_main, bootstrap, topic, expected, rate, start_ns, deadline_ns, drain_ns
    )
    try:
        if await receive(conn, 60, "tombstone reader") != "ready":
            raise RuntimeError("tombstone reader did not start")

        async def result(timeout_s: float) -> Any:
            return await receive(conn, timeout_s, "tombstone reader")

        yield result
    finally:
        stop_child(proc)


# --------------------------------------------------------------------------- shared: offsets


class CommittedOffsets:
    """Reads a consumer group's committed offsets without joining the group.

    A consumer with the group's id that never subscribes only sends OffsetFetch requests:
    it takes no partition away from the members (the admin client's
    ``list_consumer_group_offsets`` is not answered by Tansu).
    """

    def __init__(self, bootstrap: str, group_id: str, tps: list[Any]) -> None:
        from aiokafka import AIOKafkaConsumer

        self._tps = tps
        self._cons = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
        )

    async def __aenter__(self) -> CommittedOffsets:
        await self._cons.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cons.stop()

    async def total(self) -> int:
        """The sum of the committed offsets (a partition without one counts 0)."""
        total = 0
        for tp in self._tps:
            total += await self._cons.committed(tp) or 0
        return total


def input_partitions(topics: tuple[str, ...], partitions: int = PARTITIONS) -> list[Any]:
    """Every partition of ``topics`` (created by the benchmark with ``partitions`` each)."""
    from aiokafka import TopicPartition

    return [TopicPartition(t, p) for t in topics for p in range(partitions)]


# --------------------------------------------------------------------------- shared: service


class GcWatch:
    """Time spent in the cyclic garbage collector, per generation, and the longest pause."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.max_pause_s = 0.0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        pause = time.perf_counter() - self._t0
        gen = int(info.get("generation", 2))
        self.seconds[gen] += pause
        self.count[gen] += 1
        self.max_pause_s = max(self.max_pause_s, pause)

    def as_dict(self) -> dict[str, Any]:
        return {
            "collections": self.count,
            "seconds": [round(x, 3) for x in self.seconds],
            "max_pause_ms": round(self.max_pause_s * 1000, 1),
        }


GC = GcWatch()


@contextlib.asynccontextmanager
async def running_service(
    config: Config, bootstrap: str, *, ready_timeout_s: float = 60.0
) -> AsyncIterator[Service]:
    """The service in a task of this process, ready (partitions assigned, timers loaded).

    The garbage collector is tuned as ``stream-expiry run`` tunes it
    (``stream_expiry.collection.tune_gc``), so the in-process service collects as the real one
    does; :data:`GC` counts the collections' time from here on.
    """
    import gc

    from stream_expiry.collection import tune_gc

    tune_gc()
    if GC not in gc.callbacks:
        gc.callbacks.append(GC)
    service = Service(config, bootstrap_servers=bootstrap, environ={})
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run, stop)
        with anyio.fail_after(ready_timeout_s):
            await service.ready.wait()
        try:
            yield service
        finally:
            stop.set()


async def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.01
) -> float:
    """Poll ``predicate`` until true; return the ``perf_counter`` when it became true."""
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout_s:g}s")
        await anyio.sleep(poll_s)
    return time.perf_counter()


# --------------------------------------------------------------------------- phases


def _events_reached(service: Service, target: int) -> Callable[[], bool]:
    return lambda: service.stats.events >= target


async def memory_phase(
    bootstrap: str, topics: BenchTopics, service: Service, state_dir: str, pending: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    await anyio.sleep(1.0)  # settle after the group join
    rss0 = rss_bytes(os.getpid())
    disk0 = index_file_bytes(state_dir)
    checkpoints = sorted(
        {max(1, pending // 10), max(1, pending // 4), max(1, pending // 2), pending}
    )
    ts = time.time_ns() // NS_PER_MS
    points: list[dict[str, Any]] = []
    lo = 0
    base_events = service.stats.events
    ingest_s = 0.0
    for mark in checkpoints:
        log(f"e2e memory: producing far-future records {lo:,}..{mark:,}")
        t0 = time.perf_counter()
        await produce_in_child(bootstrap, ProduceSpec("far", lo, mark, ts_ms=ts), topics)
        t1 = await wait_for(
            _events_reached(service, base_events + mark), 600, "ingest of far records"
        )
        ingest_s += t1 - t0
        await anyio.sleep(0.5)  # the last slices settle into the stores
        rss = rss_bytes(os.getpid())
        disk = index_file_bytes(state_dir)
        points.append(
            memory_point(
                mark,
                rss,
                baseline_bytes=rss0,
                what="service process RSS delta (stores on disk)",
                index_file_bytes=disk - disk0,
                index_bytes_per_record=round((disk - disk0) / mark, 1),
                timers_in_wheel=timers_held(service),
            )
        )
        log(
            f"e2e memory: {human_count(mark)} pending: RSS +{(rss - rss0) / 2**20:.1f} MiB, "
            f"stores {disk / 2**20:.0f} MiB, {timers_held(service)} timers in the wheel"
        )
        lo = mark
    extra = {
        "rss_baseline_bytes": rss0,
        "produce_and_ingest_s": round(ingest_s, 2),
        "far_ttl_days": FAR_TTL_MS // 86_400_000,
    }
    return points, extra


async def background_phase(
    bootstrap: str, topics: BenchTopics, service: Service, count: int
) -> dict[str, Any]:
    """``count`` far-future records produced and ingested: pending during the lag phase."""
    base = service.stats.events
    log(f"e2e background: producing {count:,} far-future records")
    t0 = time.perf_counter()
    ts = time.time_ns() // NS_PER_MS
    await produce_in_child(
        bootstrap, ProduceSpec("far", 0, count, ts_ms=ts), topics, timeout_s=600 + count / 5_000
    )
    t1 = await wait_for(
        _events_reached(service, base + count), 600 + count / 2_000, "ingest of background"
    )
    await anyio.sleep(1.0)  # the last slices settle
    pending = sum(p.store.counts.pending_total for p in service.processors.values())
    log(f"e2e background: {pending:,} pending after {t1 - t0:.1f}s")
    return {"records": count, "produce_and_ingest_s": round(t1 - t0, 2), "pending": pending}


async def firing_cpu(
    service: Service, start_ns: int, tombstones: int, out: dict[str, float]
) -> None:
    """The service's CPU per tombstone while the window's timers fire: this process's CPU
    time (every thread: the loop, RocksDB's, the producer's) from the window's opening to
    the service's count of tombstones reaching ``tombstones``. Nothing else runs in this
    process meanwhile (ingest ended before the window opened; see ``slack``). A figure
    that an overloaded run's lag does not give: lag then follows the backlog, and swings
    with it from run to run, while the CPU a tombstone costs does not."""
    await anyio.sleep(max(0.0, (start_ns - time.time_ns()) / NS_PER_S))
    cpu0, wall0, fired0 = time.process_time(), time.perf_counter(), service.stats.tombstones
    loop0 = time.thread_time()  # this thread runs the service's event loop
    while service.stats.tombstones < tombstones:  # noqa: ASYNC110 - the service's own counter
        await anyio.sleep(0.01)
    fired = service.stats.tombstones - fired0
    out["cpu_s"] = round(time.process_time() - cpu0, 3)
    # The loop's own share: what one core must keep up with (the rest is RocksDB's
    # background threads, which another core can take).
    out["loop_cpu_us_per_tombstone"] = round(1e6 * (time.thread_time() - loop0) / max(fired, 1), 2)
    out["wall_s"] = round(time.perf_counter() - wall0, 3)
    out["cpu_us_per_tombstone"] = round(1e6 * out["cpu_s"] / max(fired, 1), 2)
    out["tombstones_per_s"] = round(fired / max(out["wall_s"], 1e-9), 1)


async def lag_phase(
    bootstrap: str,
    topics: BenchTopics,
    service: Service,
    rate: int,
    seconds: float,
    grace: float,
    *,
    assume_ingest: float,
    lead: float | None,
    drain: float,
    ingest_rate: int = 0,
) -> dict[str, Any]:
    count = int(rate * seconds)
    # Producer (~150k/s from a child process) and ingest, with a margin; --lead overrides.
    lead_s = lead if lead is not None else 3.0 + count / 150_000 + 1.3 * count / assume_ingest
    start_ns = time.time_ns() + int(lead_s * NS_PER_S)
    sched = RateSchedule(rate, count, start_ns)
    deadline_ns = sched.end_ns + int(grace * NS_PER_S)
    drain_ns = sched.end_ns + int(max(drain, grace) * NS_PER_S)
    base_events = service.stats.events
    base_tombstones = service.stats.tombstones
    log(
        f"e2e lag: {count:,} records due at {rate:,}/s over {seconds:g}s; window opens in {lead_s:.1f}s"
    )
    async with tombstone_reader(
        bootstrap, topics.tombstones, count, rate, start_ns, deadline_ns, drain_ns
    ) as result:
        t0 = time.perf_counter()
        produced = await produce_in_child(
            bootstrap, ProduceSpec("lag", 0, count, rate=rate, start_ns=start_ns), topics
        )
        t_produced = time.perf_counter()
        await wait_for(
            lambda: service.stats.events >= base_events + count,
            max(lead_s * 3, 60),
            "ingest of the lag records",
        )
        ingested_ns = time.time_ns()
        slack_s = (start_ns - ingested_ns) / NS_PER_S
        log(
            f"e2e lag: produced in {t_produced - t0:.1f}s, ingested {count:,} "
            + (f"{slack_s:.1f}s before" if slack_s >= 0 else f"{-slack_s:.1f}s AFTER")
            + " the window opened"
        )
        wait_s = (drain_ns - time.time_ns()) / NS_PER_S + 30
        log(f"e2e lag: waiting for tombstones (up to {wait_s:.0f}s)")
        far = int(ingest_rate * seconds)
        window_events: list[int] = []
        firing: dict[str, float] = {}
        async with anyio.create_task_group() as watch, contextlib.AsyncExitStack() as stack:
            watch.start_soon(firing_cpu, service, start_ns, base_tombstones + count, firing)
            if far:
                far_spec = ProduceSpec(
                    "far", FAR_OFFSET, FAR_OFFSET + far, ts_ms=time.time_ns() // NS_PER_MS
                )
                log(f"e2e lag: {far:,} far-future events at {ingest_rate:,}/s during the window")
                far_result = await stack.enter_async_context(
                    paced_producer(bootstrap, far_spec, topics, rate=ingest_rate, start_ns=start_ns)
                )
                async with anyio.create_task_group() as tg:

                    async def at_window_edges() -> None:
                        for edge in (start_ns, sched.end_ns):
                            await anyio.sleep(max(0.0, (edge - time.time_ns()) / NS_PER_S))
                            window_events.append(service.stats.events)

                    tg.start_soon(at_window_edges)
                    res: dict[str, Any] = await result(max(wait_s, 5))
                far_produced = await far_result(60)
            else:
                res = await result(max(wait_s, 5))
            watch.cancel_scope.cancel()  # a run that never fired everything has no figure
    with anyio.move_on_after(5):  # let the service finish its last batch before reading stats
        await wait_for(
            lambda: service.stats.tombstones - base_tombstones >= count, 5, "last tombstones"
        )
    lags = array.array("d")
    lags.frombytes(res["lags"])
    delivered = int(res["delivered"])
    summary = summarize(lags)
    sorted_lags = sorted(lags)

    def pct(p: float) -> float | None:
        return round(percentile(sorted_lags, p), 3) if sorted_lags else None

    split = lag_split(res, lags)

    lag = {
        "rate": rate,
        "seconds": seconds,
        "scheduled": count,
        "delivered": delivered,
        "missing": count - delivered,
        "delivered_fraction": round(delivered / count, 6) if count else None,
        "grace_s": grace,
        "lag_ms": summary.to_json(),
    }
    extra = {
        "lag_percentiles_ms": {"p90": pct(90), "p99.9": pct(99.9)},
        **split,
        "firing": firing or None,
        "delivered_after_grace": res["delivered_after_grace"],
        "after_grace_max_lag_ms": res["after_grace_max_lag_ms"],
        "drain_s": max(drain, grace),
        "lost": count - delivered - int(res["delivered_after_grace"]),
        "duplicates": res["duplicates"],
        "foreign_tombstones": res["foreign"],
        "emitted_before_expires_at": res["early"],
        "explicit": res["explicit"],
        "expires_at_mismatch_sampled": res["expires_mismatch_sampled"],
        "lead_s": round(lead_s, 3),
        "ingest_slack_before_window_s": round(slack_s, 3),
        "service_tombstones": service.stats.tombstones - base_tombstones,
        "timers_in_wheel_after": timers_held(service),
        "tick_ms": service.config.tick_ms,
        "reader_fetch_max_wait_ms": READER_FETCH_WAIT_MS,
        "produce_s": round(float(produced["seconds"]), 3),
    }
    if far:
        in_window = window_events[1] - window_events[0] if len(window_events) == 2 else None
        extra["concurrent_ingest"] = {
            "rate": ingest_rate,
            "produced": int(far_produced["sent"]),
            "produce_s": round(float(far_produced["seconds"]), 3),
            "ingested_in_window": in_window,
            "ingested_per_s_in_window": None if in_window is None else round(in_window / seconds),
            "ingested_total": service.stats.events - base_events - count,
        }
    log(
        f"e2e lag: {delivered:,}/{count:,} tombstones, p50 {fmt_ms(summary.p50)}, "
        f"p99 {fmt_ms(summary.p99)}, max {fmt_ms(summary.max)}"
    )
    if split["decided_lag_ms"] is not None:
        decided, transport = split["decided_lag_ms"], split["transport_lag_ms"]
        log(
            f"e2e lag: due -> decided p50 {fmt_ms(decided['p50'])}, p99 {fmt_ms(decided['p99'])}; "
            f"decided -> reader p50 {fmt_ms(transport['p50'])}, p99 {fmt_ms(transport['p99'])}"
        )
    if split["lag_windows"]:
        log(
            "e2e lag: p99 by tenth of the window: "
            + ", ".join(f"{w['p99']:.0f}" for w in split["lag_windows"])
        )
    if firing:
        log(
            f"e2e lag: firing used {firing['cpu_s']:.1f}s of CPU in {firing['wall_s']:.1f}s: "
            f"{firing['cpu_us_per_tombstone']:.1f} us a tombstone "
            f"({firing['loop_cpu_us_per_tombstone']:.1f} in the event loop's thread), "
            f"{firing['tombstones_per_s']:,.0f} tombstones/s"
        )
    return {"lag": lag, "extra": extra}


async def run(args: Any, bootstrap: str) -> dict[str, Any]:
    started = utc_now_iso()
    topics = BenchTopics.fresh()
    lag: dict[str, Any] | None = None
    memory: list[dict[str, Any]] = []
    throughput: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"topics_prefix": topics.prefix, "partitions": PARTITIONS}
    notes = [
        "stream-expiry's Service runs in the benchmark's process (same code as `stream-expiry "
        "run`); the producer and the tombstone reader are separate processes; the broker is "
        "the embedded Tansu (in memory) on loopback.",
        "Lag is from each record's expires_at (its due time) to the moment a consumer of "
        "expiry.tombstones in its own process received the tombstone (fetch_max_wait_ms 5), "
        "so it includes the broker round trips: the service waits for the broker's ack before "
        "marking a record deleted.",
        "Every record was produced and ingested (stamped, stored) before the window opened.",
    ]
    with temp_state_dir("expiry") as state_dir:
        config = make_config(topics, state_dir, tick_ms=args.tick_ms)
        async with running_service(config, bootstrap) as service:
            if args.pending > 0:
                memory, extra["memory"] = await memory_phase(
                    bootstrap, topics, service, state_dir, args.pending
                )
            if args.background > 0:
                extra["background"] = await background_phase(
                    bootstrap, topics, service, args.background
                )
            if args.rate > 0:
                out = await lag_phase(
                    bootstrap,
                    topics,
                    service,
                    args.rate,
                    args.seconds,
                    args.grace,
                    assume_ingest=args.assume_ingest,
                    lead=args.lead,
                    drain=args.drain,
                    ingest_rate=args.ingest_rate,
                )
                lag = out["lag"]
                extra["lag"] = out["extra"]
                if out["extra"]["ingest_slack_before_window_s"] < 0:
                    notes.append(
                        "Ingest ended after the window opened: the first records' lag includes "
                        "ingest (raise --lead)."
                    )
                if lag["missing"]:
                    late = out["extra"]["delivered_after_grace"]
                    notes.append(
                        f"{lag['missing']} of {lag['scheduled']} tombstones had not arrived "
                        f"{args.grace:g}s after the last due time; {late} of them arrived "
                        f"later (within {out['extra']['drain_s']:g}s, worst "
                        f"{out['extra']['after_grace_max_lag_ms'] / 1000:.1f}s late), "
                        f"{out['extra']['lost']} not at all."
                    )
            extra["service_stats"] = service.stats.as_dict()
    extra["gc"] = GC.as_dict()
    system = "stream-expiry" + (f"-tick{args.tick_ms}ms" if args.tick_ms is not None else "")
    if args.background > 0:
        system += f"-bg{human_count(args.background)}"
    if args.ingest_rate > 0:
        system += f"-ingest{human_count(args.ingest_rate)}"
    return envelope(
        "e2e_expiry",
        system,
        params={
            "rate": args.rate,
            "seconds": args.seconds,
            "pending": args.pending,
            "grace": args.grace,
            "tick_ms": args.tick_ms,
            "background": args.background,
            "ingest_rate": args.ingest_rate,
            "partitions": PARTITIONS,
        },
        lag=lag,
        throughput=throughput,
        memory=memory,
        extra=extra,
        notes=notes,
        started_at=started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "e2e expiry")
    parser.add_argument(
        "--tick-ms", type=int, default=None, help="service tick (default: the service's, 10)"
    )
    parser.add_argument(
        "--assume-ingest",
        type=float,
        default=12_000.0,
        help="ingest rate (events/s) assumed when sizing the lead before the window",
    )
    parser.add_argument("--lead", type=float, default=None, help="seconds before the window opens")
    parser.add_argument(
        "--drain",
        type=float,
        default=60.0,
        help="seconds after the last due time to keep counting late tombstones (not delivered)",
    )
    parser.add_argument(
        "--background",
        type=int,
        default=0,
        help="far-future records ingested before the lag phase, pending during it",
    )
    parser.add_argument(
        "--ingest-rate",
        type=int,
        default=0,
        help="far-future events per second produced during the expiry window",
    )
    args = parser.parse_args(argv)
    if args.background < 0 or args.ingest_rate < 0:
        parser.error("--background and --ingest-rate must be >= 0")
    quiet_logging()
    return on_embedded_broker("e2e", lambda servers: anyio.run(run, args, servers))


if __name__ == "__main__":
    sys.exit(main())

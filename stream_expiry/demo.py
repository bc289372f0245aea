"""``stream-expiry demo``: the whole flow on one machine, with nothing to install by hand.

An in-memory broker, the service, a traffic generator and a SQLite store run in one process.
The traffic has several orgs and bots, draft and live, the three categories, touches on
sessions, explicit deletes and a few malformed events (they go to the dead-letter topic).
TTLs are seconds long, so every record expires while you watch. The summary's "early
deletions" counts tombstones that arrived before their record's ``expires_at``: it must be 0.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import orjson

from stream_expiry import exits
from stream_expiry.broker import EmbeddedBroker
from stream_expiry.config import parse_config
from stream_expiry.errors import StoreError
from stream_expiry.kafka import consumer, producer
from stream_expiry.model import Identity
from stream_expiry.service import Service, wall_clock_ms
from stream_expiry.sinks import BatchReport, Sink, SinkConfig, SQLiteStore
from stream_expiry.state.dir_lock import check_state_dir
from stream_expiry.timeutil import parse_ts

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable

__all__ = ["DEMO_CONFIG", "run_demo"]

DEMO_CONFIG = """\
# The demo's retention: seconds, so that you can watch records expire.
group_id = "stream-expiry-demo"

[categories]
sliding = ["session"]

[service]
tick_ms = 5
horizon = "10m"

[retention.defaults]
conversation = "6s"
session = "4s"
error = "3s"

[retention.orgs.acme]
conversation = "5s"

[retention.bots.acme.support.draft]
conversation = "2s"
"""

ORGS = ("acme", "globex", "initech")
# How long the demo's service and store let the broker hold a fetch that finds nothing new.
# The embedded broker answers a waiting fetch up to half its wait after a record arrives
# (``bench.bench_fetch_wait``: read p99 52.9 ms at the consumers' 100 ms, 7.8 at 20), and a
# session fires only once its partition's input is read: the demo's lag p99 from expiry to
# emission was 48-59 ms, 17-23 at 20. Not the service's default: in a 5-minute soak at 5k
# events/s in and out, 20 ms kept the embedded broker busy past its cores (its CPU 119 %),
# and the service read 683k and 763k of 1.5 M events in two runs, all of them at 100 ms.
# Apache Kafka answers the moment a record arrives, whatever the wait.
FETCH_WAIT_MS = 20
BOTS = ("support", "sales")
CATEGORIES = ("conversation", "session", "error")
TOPIC_OF = {"conversation": "conversations", "session": "sessions", "error": "errors"}
MAX_DEMO_TTL_S = 6.0


@dataclass
class Watch:
    """What the demo's own consumer of ``expiry.tombstones`` saw."""

    lags_ms: list[int] = field(default_factory=list)  # expires_at -> arrival at a consumer
    emit_lags_ms: list[int] = field(default_factory=list)  # expires_at -> emitted_at
    early: int = 0
    ttl: int = 0
    explicit: int = 0
    # Records an earlier run with the same --state-dir left pending, due before this run
    # started: tombstoned late by design, so not part of this run's lag.
    started_ms: int = 0
    carried: int = 0


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _traffic(bootstrap: str, duration_s: float, rate: int, counts: dict[str, int]) -> None:
    """Create, touch and delete records at ``rate`` events per second for ``duration_s``."""
    rng = random.Random(7)
    live: list[dict[str, str]] = []
    async with producer(bootstrap) as prod:
        start = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - start) < duration_s:
            target = int(elapsed * rate) + 1
            while sent < target:
                sent += 1
                roll = rng.random()
                key: bytes | None = None
                if roll < 0.01:
                    topic, value = (
                        "conversations",
                        b'{"category": "conversation", "org": "acme"',
                    )  # bad JSON
                    counts["malformed"] += 1
                else:
                    if roll < 0.15 and live:
                        ident = rng.choice(live)
                        op = "touch" if ident["category"] == "session" else "delete"
                        if op == "delete" and rng.random() < 0.8:
                            op = "touch"
                    else:
                        ident = {
                            "org": rng.choice(ORGS),
                            "bot": rng.choice(BOTS),
                            "env": rng.choice(("live", "live", "draft")),
                            "category": rng.choice(CATEGORIES),
                            "record_id": f"r{sent}",
                        }
                        live.append(ident)
                        if len(live) > 500:
                            live.pop(0)
                        op = "create"
                    counts[op] += 1
                    topic = TOPIC_OF[ident["category"]]
                    value = orjson.dumps(
                        {**ident, "op": op, "ts": wall_clock_ms(), "data": {"n": sent}}
                    )
                    key = Identity(
                        **ident
                    ).key.encode()  # keyed by record: its events stay in order
                await prod.send(topic, value=value, key=key)
            await anyio.sleep(0.01)
        await prod.flush()


async def _watch_tombstones(bootstrap: str, topic: str, watch: Watch, stop: anyio.Event) -> None:
    async with consumer(bootstrap, topic, fetch_max_wait_ms=10) as cons:
        while not stop.is_set():
            batch = await cons.getmany(timeout_ms=100)
            arrived = wall_clock_ms()
            for records in batch.values():
                for rec in records:
                    body = orjson.loads(rec.value)
                    if body["reason"] == "explicit":
                        watch.explicit += 1
                        continue
                    expires = parse_ts(body["expires_at"])
                    emitted = parse_ts(body["emitted_at"])
                    if expires < watch.started_ms:
                        watch.carried += 1
                        continue
                    watch.ttl += 1
                    watch.lags_ms.append(arrived - expires)
                    watch.emit_lags_ms.append(emitted - expires)
                    if emitted < expires or arrived < expires:
                        watch.early += 1


def _progress(service: Service, watch: Watch, deleted: int, elapsed: float) -> str:
    s = service.stats
    return (
        f"[{elapsed:5.1f}s] events in {s.events:6d} | stamped {s.stamped:6d} | "
        f"pending {s.pending_in_wheel:5d} | tombstones {watch.ttl:6d} ttl + {watch.explicit} explicit | "
        f"rows deleted {deleted:6d} | dead letters {s.dead_letters:3d}   "
    )


async def _interrupt_on_signals(interrupted: anyio.Event, scope: anyio.CancelScope) -> None:
    """First Ctrl-C (or SIGTERM): stop the traffic and wind everything down cleanly, so the
    summary still prints and every thread is joined. A second one cancels outright."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if interrupted.is_set():
                scope.cancel()
                return
            interrupted.set()
            print("\n  interrupted: stopping (Ctrl-C again to force)", file=sys.stderr)


async def _until(event: anyio.Event, work: Callable[[], Awaitable[None]]) -> None:
    """Run ``work`` until it ends or ``event`` is set, whichever comes first."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        await work()
        tg.cancel_scope.cancel()


async def run_demo(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="stream-expiry-demo-")
    keep = bool(args.state_dir)
    check_state_dir(state_dir, given_as="--state-dir")
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"--state-dir {state_dir!r} cannot be made: {exc.strerror or exc}; give a "
            "directory that exists or can be created"
        ) from exc
    config = parse_config(DEMO_CONFIG, path="<demo config>")
    config = dataclasses.replace(config, state_dir=os.path.join(state_dir, "state"))
    out = sys.stderr
    interrupted = anyio.Event()
    try:
        with EmbeddedBroker() as broker:
            bootstrap = broker.bootstrap_servers
            print(f"stream-expiry demo: broker on {bootstrap}, state in {state_dir}", file=out)
            print(
                "  TTLs: conversation 6s (acme 5s, acme/support/draft 2s), session 4s sliding, error 3s",
                file=out,
            )
            service = Service(
                config,
                bootstrap_servers=bootstrap,
                environ={},
                consumer_options={"fetch_max_wait_ms": FETCH_WAIT_MS},
            )
            store = SQLiteStore(os.path.join(state_dir, "store.sqlite"), synchronous="NORMAL")
            watch = Watch(started_ms=wall_clock_ms())
            counts = {"create": 0, "touch": 0, "delete": 0, "malformed": 0}
            stop_service, stop_sink, stop_watch = anyio.Event(), anyio.Event(), anyio.Event()
            sink_stats = {"written": 0, "deleted": 0, "receipts": 0}

            def on_batch(report: BatchReport) -> None:
                sink_stats["written"] += report.written
                sink_stats["deleted"] += report.deleted
                sink_stats["receipts"] += len(report.receipts)

            sink = Sink(
                store,
                SinkConfig(
                    bootstrap_servers=bootstrap,
                    group_id="demo-sqlite-store",
                    stamped_topic=config.topics.stamped,
                    tombstones_topic=config.topics.tombstones,
                    receipts_topic=config.topics.receipts,
                    session_timeout_ms=config.session_timeout_ms,
                    consumer_options={"fetch_max_wait_ms": FETCH_WAIT_MS},
                ),
                on_batch=on_batch,
            )
            started = time.monotonic()
            await store.open()  # before anything counts its rows
            try:
                signals = anyio.CancelScope()
                async with anyio.create_task_group() as tg:

                    async def on_signals() -> None:
                        with signals:
                            await _interrupt_on_signals(interrupted, tg.cancel_scope)

                    tg.start_soon(on_signals)
                    tg.start_soon(service.run, stop_service)
                    await _until(interrupted, service.ready.wait)
                    tg.start_soon(sink.run, stop_sink)
                    tg.start_soon(
                        _watch_tombstones, bootstrap, config.topics.tombstones, watch, stop_watch
                    )
                    if not interrupted.is_set():
                        print(
                            f"  service ready after {time.monotonic() - started:.1f}s; "
                            f"traffic for {args.duration:g}s at {args.rate}/s",
                            file=out,
                        )

                    async def show() -> None:
                        # A live line on a terminal; a plain line every 2 s in a log or a pipe.
                        tty = out.isatty()
                        while not stop_watch.is_set():
                            line = _progress(
                                service, watch, sink_stats["deleted"], time.monotonic() - started
                            )
                            out.write("\r" + line if tty else line + "\n")
                            out.flush()
                            await anyio.sleep(0.25 if tty else 2.0)

                    tg.start_soon(show)

                    async def drain() -> None:
                        # Let the last records expire (every finite TTL here is at most 6 s)
                        # and the store apply the last tombstones: polled, since both happen
                        # in other tasks.
                        with anyio.move_on_after(MAX_DEMO_TTL_S + 10):
                            while service.stats.pending_in_wheel or await store.count():  # noqa: ASYNC110
                                await anyio.sleep(0.1)

                    await _until(
                        interrupted,
                        functools.partial(_traffic, bootstrap, args.duration, args.rate, counts),
                    )
                    await _until(interrupted, drain)
                    stop_service.set()
                    stop_sink.set()
                    stop_watch.set()
                    signals.cancel()  # the others end by themselves once stopped
                final = _progress(service, watch, sink_stats["deleted"], time.monotonic() - started)
                out.write(("\r" if out.isatty() else "") + final + "\n")
                sink_stats["left"] = await store.count()
            finally:
                with anyio.CancelScope(shield=True):
                    await store.close()
            _summary(service, watch, counts, sink_stats)
    finally:
        if not keep:
            shutil.rmtree(state_dir, ignore_errors=True)
    if interrupted.is_set():
        return exits.INTERRUPTED
    return exits.OK if watch.early == 0 else exits.FAILED


def _summary(
    service: Service, watch: Watch, counts: dict[str, int], sink_stats: dict[str, int]
) -> None:
    s = service.stats

    def lag(values: list[int]) -> str:
        if not values:
            return "no ttl tombstones"
        return f"p50 {_percentile(values, 0.5)} ms, p99 {_percentile(values, 0.99)} ms, max {max(values)} ms"

    lines = [
        "",
        "Summary",
        f"  events produced     {sum(counts.values())} ({counts['create']} create, {counts['touch']} touch, "
        f"{counts['delete']} delete, {counts['malformed']} malformed)",
        f"  events in           {s.events}; dead letters {s.dead_letters}",
        # Stamps, not records: a touch that moves a session's expiry stamps it again, and
        # "records stamped 1790" beside 1693 creates read as records from nowhere (a trial).
        f"  stamps published    {s.stamped} (each create's, and each touch's that moved an expiry)",
        f"  tombstones          {watch.ttl} ttl, {watch.explicit} explicit",
        *(
            [
                f"                      and {watch.carried} of records an earlier run left "
                "pending, overdue when this one started (not in the lag below)"
            ]
            if watch.carried
            else []
        ),
        # Writes, not rows: a touch rewrites its session's row (a trial added the figures up).
        f"  store (SQLite)      {sink_stats['written']} row writes, {sink_stats['deleted']} rows deleted, "
        f"{sink_stats['left']} left; {sink_stats['receipts']} deletion receipts",
        f"  expiry lag          {lag(watch.emit_lags_ms)} (expires_at to emitted_at)",
        f"                      {lag(watch.lags_ms)} (expires_at to arrival at a consumer)",
        f"  early deletions     {watch.early}",
    ]
    print("\n".join(lines))

"""``stream-expiry replay``: re-derive every expiration from the input topics.

Replay is the live engine fed from offset 0, with the given config and the policy history
read from ``expiry.policies``; that is why a replay with the live run's policy reproduces
its stamps exactly (same code, same event times, same policy versions). It then compares
each record's re-derived expiry with its current stamp (the latest value per key on
``expiry.stamped``) and, unless ``--dry-run``, applies the differences: the changed stamps
are published on ``expiry.stamped`` and written to the service's index (``state_dir``),
with a bump of its generation: a running service reloads its timers within a tick, a
(re)started one reads them at start, and either fires the records now due at once.

Records already tombstoned (on ``expiry.tombstones`` or by the replay's own event-time
logic) are neither counted nor resurrected.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from stream_expiry import model
from stream_expiry.engine import Engine
from stream_expiry.kafka import consumer, high_watermarks, partitions_of, producer, read_to_end
from stream_expiry.policy import PolicyBook
from stream_expiry.service import wall_clock_ms
from stream_expiry.store import Index, Slot
from stream_expiry.timeutil import format_ts, parse_ts

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping

    from stream_expiry.config import Config
    from stream_expiry.kafka_settings import Brokers

__all__ = ["ReplayReport", "replay", "run_replay"]


@dataclass
class Change:
    """One record whose expiry moved: for the sample a person reads."""

    key: str
    old_expires_at: int | None
    new_expires_at: int | None
    ttl_source: str | None
    kind: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "old_expires_at": None
            if self.old_expires_at is None
            else format_ts(self.old_expires_at),
            "new_expires_at": None
            if self.new_expires_at is None
            else format_ts(self.new_expires_at),
            "ttl_source": self.ttl_source,
        }


@dataclass
class ReplayReport:
    """The contract's counts, plus a sample of changes and the re-derived states."""

    events: int = 0
    records: int = 0
    unchanged: int = 0
    earlier: int = 0
    later: int = 0
    due_now: int = 0
    never: int = 0
    sample: list[Change] = field(default_factory=list)
    states: dict[str, tuple[model.Stamp, Slot]] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "events": self.events,
            "records": self.records,
            "unchanged": self.unchanged,
            "earlier": self.earlier,
            "later": self.later,
            "due_now": self.due_now,
            "never": self.never,
        }


class _Progress:
    """A one-line progress bar with rate and ETA on stderr (only on a terminal, or forced)."""

    def __init__(self, total: int, out: TextIO | None) -> None:
        self.total, self.out = total, out
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, final: bool = False) -> None:
        if self.out is None:
            return
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        width = 30
        filled = int(width * done / self.total) if self.total else width
        self.out.write(
            f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {done:,}/{self.total:,} events "
            f"{rate:,.0f}/s ETA {eta:,.0f}s   " + ("\n" if final else "")
        )
        self.out.flush()


async def _latest_per_key(bootstrap: Brokers, topic: str) -> dict[bytes, bytes | None]:
    latest: dict[bytes, bytes | None] = {}
    async with consumer(bootstrap) as cons:
        async for batch in read_to_end(cons, topic):
            for records in batch.values():
                for rec in records:
                    if rec.key is not None:
                        latest[rec.key] = rec.value
    return latest


async def replay(
    config: Config,
    bootstrap: Brokers,
    *,
    environ: Mapping[str, str],
    since_ms: int | None = None,
    dry_run: bool = False,
    sample_size: int = 10,
    clock: Callable[[], int] = wall_clock_ms,
    progress: TextIO | None = None,
) -> ReplayReport:
    """Re-derive, compare and (unless ``dry_run``) apply; returns the report."""
    now = clock()
    topics = config.topics
    book = PolicyBook(config, environ)
    async with consumer(bootstrap) as cons:
        async for batch in read_to_end(cons, topics.policies):
            for records in batch.values():
                for rec in records:
                    book.apply_update(rec.key, rec.value, rec.timestamp)
    tombstoned: dict[str, model.Stamp] = {}
    async with consumer(bootstrap) as cons:
        async for batch in read_to_end(cons, topics.tombstones):
            for records in batch.values():
                for rec in records:
                    key = rec.key.decode() if rec.key else None
                    state = model.deletion_from_tombstone(
                        rec.value, tombstoned.get(key) if key else None
                    )
                    if key and state is not None:
                        tombstoned[key] = state
    current = await _latest_per_key(bootstrap, topics.stamped)

    engine: Engine[Slot] = Engine(book.resolve, config.sliding, now_ms=now, horizon_ms=0)
    report = ReplayReport()
    states = report.states
    categories = frozenset(config.categories)
    async with consumer(bootstrap) as cons:
        from aiokafka import TopicPartition

        tps = [
            TopicPartition(t, p)
            for t in topics.inputs
            for p in sorted(await partitions_of(cons, t))
        ]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        total = sum((await high_watermarks(cons, tps)).values())
        bar = _Progress(total, progress)
        for topic in topics.inputs:
            async for batch in read_to_end(cons, topic):
                for tp, records in batch.items():
                    slot = (tp.topic, tp.partition)
                    for rec in records:
                        report.events += 1
                        ev = model.parse_event(
                            rec.value,
                            categories=categories,
                            now_ms=now,
                            max_skew_ms=config.max_clock_skew_ms,
                        )
                        if isinstance(ev, model.Rejection):
                            continue
                        key = ev.identity.key
                        known = states.get(key)
                        prior = known[0] if known else tombstoned.get(key)
                        out = engine.feed(ev, prior, now, slot)
                        for fired in out.fired:
                            states[key] = (fired.after, slot)
                        if out.state is not None:
                            states[key] = (out.state, slot)
                bar(report.events)
        bar(report.events, final=True)

    for key, (state, _slot) in states.items():
        if not state.live or (since_ms is not None and (state.created_at or 0) < since_ms):
            continue
        has_stamp = key.encode() in current
        raw = current.get(key.encode())
        if has_stamp and raw is None:
            continue  # the latest stamp is a Kafka tombstone: deleted, not resurrected
        old = _expires_of(raw) if raw is not None else None
        report.records += 1
        new = state.expires_at
        if has_stamp and new == old:
            report.unchanged += 1
            continue
        if new is None:
            kind = "never"
        elif new <= now:
            kind = "due_now"
        elif not has_stamp or old is None or new < old:
            kind = "earlier"  # a finite expiry is earlier than never (or than no stamp at all)
        else:
            kind = "later"
        setattr(report, kind, getattr(report, kind) + 1)
        report.changed.append(key)
        if len(report.sample) < sample_size:
            report.sample.append(Change(key, old, new, state.ttl_source, kind))

    if not dry_run and report.changed:
        await _apply(config, bootstrap, report)
    return report


def _expires_of(raw: bytes) -> int | None:
    value = orjson.loads(raw).get("expires_at")
    return None if value is None else parse_ts(value)


async def _apply(config: Config, bootstrap: Brokers, report: ReplayReport) -> None:
    """Publish the changed stamps and write them to the service's index."""
    changed = [report.states[k] for k in report.changed]
    async with producer(bootstrap) as prod:
        acks = [
            await prod.send(
                config.topics.stamped,
                key=state.identity.key.encode(),
                value=model.encode_stamp(state),
                headers=[("expiry-replay", b"1")],
            )
            for state, _slot in changed
        ]
        for ack in acks:
            await ack
    index = await Index.open(config.state_dir)
    try:
        await index.write(changed, bump_generation=True)
    finally:
        await index.close()


async def run_replay(config: Config, bootstrap: Brokers, args: argparse.Namespace) -> int:
    since = (
        None
        if args.since is None
        else parse_ts(int(args.since) if args.since.isdigit() else args.since)
    )
    report = await replay(
        config,
        bootstrap,
        environ=os.environ,
        since_ms=since,
        dry_run=args.dry_run,
        sample_size=args.sample,
        progress=sys.stderr,
    )
    if args.json:
        sys.stdout.write(orjson.dumps(report.counts()).decode() + "\n")
        return 0
    counts = report.counts()
    print(
        ("dry run: nothing changed" if args.dry_run else "applied")
        + f" ({counts['events']:,} events)"
    )
    for name in ("records", "unchanged", "earlier", "later", "due_now", "never"):
        print(f"  {name:<10} {counts[name]:>10,}")
    if report.sample:
        print("sample of changed records:")
        for change in report.sample:
            c = change.as_dict()
            print(
                f"  {c['kind']:<8} {c['key']}: {c['old_expires_at']} -> {c['new_expires_at']} ({c['ttl_source']})"
            )
    return 0

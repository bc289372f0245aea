"""SIGKILL the service at random moments while events flow, then check the promise.

The harness behind ``tests/integration/test_crash.py`` (8 kills) and
``python -m bench.soak_kill`` (100 or more). Every run of the service is a real process in
the same consumer group, so each restart resumes at the group's committed offsets after the
killed member's session ran out; the state directory is kept, as on a real host.

The traffic creates records of every kind (a sliding category, fixed ones, one that never
expires), touches sliding records, deletes some records and sends erasure requests for
records never created. The expected expiry of every record is computed here, from what was
produced (``ts`` + ttl, touches included), and :func:`violations` checks, against the
times tombstones *reached the harness*:

* never early: every ``ttl`` tombstone arrives at or after its ``expires_at``, which is one
  the harness computed for the record (the final one, touches included; or the one in force
  when a touch came after the record was already due: the contract's late touch);
* never lost: every record with a finite expiry, and every deletion, has its tombstone;
  no record that never expires has one;
* ``expiry.stamped`` ends with a null for every tombstoned key, and no stamp follows a null;
* a re-sent tombstone (the same key, ``reason``, ``created_at`` and ``expiry-deleted-at``)
  repeats the first but for ``emitted_at`` and ``expiry-late-cause``: the README tells
  consumers to recognise one deletion by those four and to derive a receipt's id from
  them, so anything else that changed on a re-send would make them two deletions;
* the killed runs did work: stamps grew during most runs, and the group's committed
  offsets (the positions each run resumes at) only moved forward, and moved.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Final

import anyio
import orjson
from aiokafka import TopicPartition

from stream_expiry.kafka import consumer, ensure_topics, producer, read_to_end, stable_ends
from stream_expiry.model import Identity
from stream_expiry.testing.processes import ArrivalLog, spawn_service
from stream_expiry.timeutil import parse_ts, wall_clock_ms

if TYPE_CHECKING:
    from pathlib import Path

    from aiokafka import AIOKafkaConsumer
    from anyio.abc import Process, TaskGroup

    from stream_expiry.testing.processes import ServiceProcess

__all__ = ["CrashOutcome", "Produced", "resends_that_differ", "run_crashes", "violations"]

TTL_S = {"conversation": 3, "session": 2, "error": 1}  # "analytics" never expires
SLIDING = "session"
TICK_S = 0.01  # one create per tick: ~100 events per second, with touches and deletes


@dataclasses.dataclass
class Produced:
    """One record as the traffic made it: the facts its expected expiry follows from."""

    org: str
    record_id: str
    category: str
    created_at: int | None  # None: an erasure request for a record never created
    touches: list[int] = dataclasses.field(default_factory=list)
    deleted_at: int | None = None

    def expiries(self) -> list[int]:
        """Every ``expires_at`` the record has had, in order: ``created_at`` + ttl, then
        each touch that moved it (sliding categories only). Empty: it never expires."""
        ttl_s = TTL_S.get(self.category)
        if ttl_s is None or self.created_at is None:
            return []
        ttl = ttl_s * 1000
        out = [self.created_at + ttl]
        if self.category == SLIDING:
            for t in self.touches:
                if t + ttl > out[-1]:
                    out.append(t + ttl)
        return out


@dataclasses.dataclass
class CrashOutcome:
    """What happened; :func:`violations` judges it."""

    records: dict[bytes, Produced]
    tombstones: list[tuple[int, Any]]  # (arrival ms, ConsumerRecord)
    stamped: list[Any]  # expiry.stamped in offset order per partition
    stamps_per_run: list[int]  # new messages on expiry.stamped during each killed run
    resumes: list[dict[tuple[str, int], int]]  # per run: partition -> offset it resumed at
    kills: int
    final_exit: int | None
    seconds: float
    events: int = 0

    def summary(self) -> dict[str, Any]:
        ttl = [r for _, r in self.tombstones if orjson.loads(r.value)["reason"] == "ttl"]
        lags = [
            arrived - parse_ts(orjson.loads(r.value)["expires_at"])
            for arrived, r in self.tombstones
            if orjson.loads(r.value)["reason"] == "ttl"
        ]
        return {
            "kills": self.kills,
            "seconds": round(self.seconds, 1),
            "events": self.events,
            "records": len(self.records),
            "touched": sum(1 for p in self.records.values() if p.touches),
            "deleted": sum(1 for p in self.records.values() if p.deleted_at is not None),
            "tombstones": len(self.tombstones),
            "ttl_tombstones": len(ttl),
            "duplicate_ttl_tombstones": len(ttl) - len({r.key for r in ttl}),
            "max_lag_ms": max(lags, default=0),
            "runs_with_stamps": sum(1 for n in self.stamps_per_run if n > 0),
            "violations": violations(self),
        }


def _topics(prefix: str) -> dict[str, str]:
    names = ["conversations", "sessions", "errors", "policies", "stamped", "tombstones"]
    names += ["dlq", "receipts", "holds", "audit"]
    return {n: f"{prefix}.{n}" for n in names}


def config_text(prefix: str, state_dir: Path) -> str:
    t = _topics(prefix)
    retention = "".join(f'{c} = "{s}s"\n' for c, s in TTL_S.items())
    return f"""
group_id = "{prefix}-group"
state_dir = "{state_dir}"

[topics]
inputs = ["{t["conversations"]}", "{t["sessions"]}", "{t["errors"]}"]
policies = "{t["policies"]}"
stamped = "{t["stamped"]}"
tombstones = "{t["tombstones"]}"
dlq = "{t["dlq"]}"
receipts = "{t["receipts"]}"
holds = "{t["holds"]}"
audit = "{t["audit"]}"
partitions = 2
replication_factor = 1

[service]
tick_ms = 5
# One member at a time: its successor is held until the killed member's session ends.
session_timeout = "2s"

[retention.defaults]
{retention}"""


class _Traffic:
    """Creates, touches, deletes and erasures of never-created records, in a steady flow."""

    def __init__(self, broker: str, topics: dict[str, str], rng: random.Random) -> None:
        self.broker, self.rng = broker, rng
        self.records: dict[bytes, Produced] = {}
        self.events = 0
        self._topic = {
            "conversation": topics["conversations"],
            "session": topics["sessions"],
            "error": topics["errors"],
            "analytics": topics["errors"],
        }
        self._recent: dict[str, list[bytes]] = defaultdict(list)

    def _message(self, key: bytes, p: Produced, op: str, ts: int) -> tuple[str, bytes, bytes]:
        body = {"category": p.category, "org": p.org, "record_id": p.record_id, "op": op}
        self.events += 1
        return self._topic[p.category], key, orjson.dumps({**body, "ts": ts})

    def _next(self, i: int, now: int) -> list[tuple[str, bytes, bytes]]:
        rng = self.rng
        out = []
        category = rng.choice(["conversation", "session", "session", "error", "analytics"])
        org = rng.choice(["acme", "globex"])
        key = Identity(org, "_", "live", category, f"r{i}").key
        p = self.records[key.encode()] = Produced(org, f"r{i}", category, now)
        self._recent[category].append(key.encode())
        out.append(self._message(key.encode(), p, "create", now))
        if i % 3 == 0:  # a touch of a live session, well before its first expiry
            window = (TTL_S[SLIDING] * 1000) - 500
            live = [k for k in self._recent[SLIDING][-200:] if now - self._created(k) < window]
            if live:
                k = rng.choice(live)
                target = self.records[k]
                if target.deleted_at is None and now > (target.created_at or now):
                    target.touches.append(now)
                    out.append(self._message(k, target, "touch", now))
        if i % 7 == 0:  # an erasure of a young conversation, before its expiry
            young = [
                k
                for k in self._recent["conversation"][-100:]
                if now - self._created(k) < 1000 and self.records[k].deleted_at is None
            ]
            if young:
                k = rng.choice(young)
                self.records[k].deleted_at = now
                out.append(self._message(k, self.records[k], "delete", now))
        if i % 50 == 0:  # an erasure request for a record never seen
            ghost = Identity("acme", "_", "live", "conversation", f"ghost{i}").key.encode()
            p = self.records[ghost] = Produced(
                "acme", f"ghost{i}", "conversation", None, deleted_at=now
            )
            out.append(self._message(ghost, p, "delete", now))
        return out

    def _created(self, key: bytes) -> int:
        return self.records[key].created_at or 0

    async def run(self, stop: anyio.Event) -> None:
        async with producer(self.broker) as prod:
            i = 0
            while not stop.is_set():
                i += 1
                for topic, key, value in self._next(i, wall_clock_ms()):
                    await prod.send(topic, key=key, value=value)
                await anyio.sleep(TICK_S)  # the traffic's pace, not synchronisation
            await prod.flush()


# When each run is killed, by its number: 0.1-2.0 s after a moment of its work the harness
# saw (its first commit, its first stamp, or its ready line, which leaves kills during its
# first batch possible), so that the killed runs stamp and commit as violations() wants
# whatever the machine's speed. All were timed from the ready line: on a slow machine fewer
# lived to commit (6 of 20 once, against 4 wanted), and a run killed before its first batch
# stamped nothing (1 of 20 beside a busy core). In this order, any number of kills has
# the share of each that violations() wants.
_AFTER: Final = ("commit", "stamp", "stamp", "ready")


async def _stamped_count(broker: str, topic: str) -> int:
    async with consumer(broker) as cons:
        tps = [TopicPartition(topic, p) for p in range(2)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        return sum((await stable_ends(cons, tps)).values())


async def _read_all(broker: str, topic: str) -> list[Any]:
    records: list[Any] = []
    async with consumer(broker) as cons:
        async for batch in read_to_end(cons, topic):
            for recs in batch.values():
                records.extend(recs)
    return records


async def _work_seen(
    after: str,
    svc: ServiceProcess,
    broker: str,
    topics: dict[str, str],
    stamped: int,
    resumed: dict[tuple[str, int], int],
) -> None:
    """Until the run has done what ``after`` names: ``stamp``, ``expiry.stamped`` holds
    more than the ``stamped`` messages it held before the run; ``commit``, its group
    committed past where the run resumed on one of its partitions (a run resumes at the
    committed offsets); ``ready``, nothing more. A run that exits first, or does not get
    there within a minute, fails the harness: a service that never stamps or never
    commits between kills is what the checks of :func:`violations` are there to catch."""
    if after == "ready":
        return
    group = _group(topics)

    async def done(reader: AIOKafkaConsumer) -> bool:
        if after == "stamp":
            return await _stamped_count(broker, topics["stamped"]) > stamped
        for (topic, partition), offset in resumed.items():
            if (await reader.committed(TopicPartition(topic, partition)) or 0) > offset:
                return True
        return False

    async with consumer(broker, group_id=group) as reader:
        with anyio.move_on_after(60):
            while svc.process.returncode is None:
                if await done(reader):
                    return
                await anyio.sleep(0.05)  # a poll interval: the broker's answer decides
    raise RuntimeError(f"the run's first {after} did not come (60 s):\n{svc.tail()}")


def _group(topics: dict[str, str]) -> str:
    return topics["stamped"].rsplit(".", 1)[0] + "-group"  # config_text's


async def _resume_points(broker: str, topics: dict[str, str]) -> dict[tuple[str, int], int]:
    """Where the next run resumes each input partition: the group's committed offset (0:
    none, the beginning). Read before it starts, the killed run being dead: nothing else
    commits for the group meanwhile. (The run says so itself only at DEBUG, one line a
    partition; at INFO it sums them up.)"""
    names = (topics["conversations"], topics["sessions"], topics["errors"])
    inputs = [TopicPartition(topic, p) for topic in names for p in range(2)]
    async with consumer(broker, group_id=_group(topics)) as reader:
        return {(tp.topic, tp.partition): await reader.committed(tp) or 0 for tp in inputs}


async def run_crashes(
    broker: str,
    workdir: Path,
    *,
    kills: int,
    seed: int = 20261123,
    started: list[Process],
    join_timeout_s: float = 60.0,
    final_timeout_s: float = 90.0,
) -> CrashOutcome:
    """Kill ``kills`` runs of the service at random moments, then let a last run finish.

    ``started`` collects every process, so that the caller can kill what outlives a failure.
    """
    rng = random.Random(seed)
    prefix = f"crash{uuid.uuid4().hex[:8]}"
    topics = _topics(prefix)
    await ensure_topics(broker, list(topics.values()), partitions=2)
    cfg = workdir / "crash.toml"
    cfg.write_text(config_text(prefix, workdir / "state"))
    traffic = _Traffic(broker, topics, rng)
    tombstones = ArrivalLog(broker, topics["tombstones"])
    stop_traffic = anyio.Event()
    stamps_per_run: list[int] = []
    resumes: list[dict[tuple[str, int], int]] = []
    t0 = anyio.current_time()

    async def start(tg: TaskGroup) -> ServiceProcess:
        resumes.append(await _resume_points(broker, topics))
        svc = await spawn_service(broker, cfg, started)
        tg.start_soon(svc.follow_log)
        with anyio.fail_after(join_timeout_s):
            while not svc.ready.is_set():
                if svc.process.returncode is not None:
                    raise RuntimeError(f"the service exited while starting:\n{svc.tail()}")
                await anyio.sleep(0.05)  # a poll interval: the log line decides
        return svc

    async with anyio.create_task_group() as tg:
        tg.start_soon(tombstones.follow)
        tg.start_soon(traffic.run, stop_traffic)
        before = 0
        for n in range(kills):
            svc = await start(tg)
            await _work_seen(_AFTER[n % len(_AFTER)], svc, broker, topics, before, resumes[-1])
            # Kill at a random moment of its work: mid-batch, mid-emit, mid-commit.
            await anyio.sleep(rng.uniform(0.1, 2.0))
            svc.process.send_signal(signal.SIGKILL)
            await svc.process.wait()
            (workdir / f"run{len(resumes):03d}.log").write_text("\n".join(svc.lines))
            after = await _stamped_count(broker, topics["stamped"])
            stamps_per_run.append(after - before)
            before = after
        stop_traffic.set()
        final = await start(tg)
        records = traffic.records
        due_ttl = {k for k, p in records.items() if p.expiries() and p.deleted_at is None}
        erased = {k for k, p in records.items() if p.deleted_at is not None}

        def done() -> bool:
            ttl_keys = set()
            keys = set()
            for _, r in list(tombstones.arrivals):
                keys.add(r.key)
                if orjson.loads(r.value)["reason"] == "ttl":
                    ttl_keys.add(r.key)
            return due_ttl <= ttl_keys and erased <= keys

        with anyio.move_on_after(final_timeout_s):
            while not done():  # another task fills the arrival log
                if final.process.returncode is not None:
                    break
                await anyio.sleep(0.1)
        # Tombstones sent since the last poll are read too: the check sees everything.
        with anyio.move_on_after(1):
            while True:
                await anyio.sleep(0.2)
                if done():
                    break
        final_exit = final.process.returncode
        if final_exit is None:
            final.process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(20):
                final_exit = await final.process.wait()
        (workdir / "final.log").write_text("\n".join(final.lines))
        tg.cancel_scope.cancel()
    return CrashOutcome(
        records=traffic.records,
        tombstones=tombstones.arrivals,
        stamped=await _read_all(broker, topics["stamped"]),
        stamps_per_run=stamps_per_run,
        resumes=resumes,
        kills=kills,
        final_exit=final_exit,
        seconds=anyio.current_time() - t0,
        events=traffic.events,
    )


def violations(out: CrashOutcome) -> list[str]:
    """Every broken promise, one line each (at most 20 of each kind); empty is a pass."""
    found: dict[str, list[str]] = defaultdict(list)
    per_key: dict[bytes, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for arrived, rec in out.tombstones:
        per_key[rec.key].append((arrived, orjson.loads(rec.value)))
    exact = touched = 0
    for key, p in out.records.items():
        expiries = p.expiries()
        got = per_key.get(key, [])
        ttl = [(a, b) for a, b in got if b["reason"] == "ttl"]
        explicit = [b for _, b in got if b["reason"] == "explicit"]
        for arrived, body in ttl:
            expires_at = parse_ts(body["expires_at"])
            if expires_at not in expiries:
                found["wrong expiry"].append(f"{key!r}: {body['expires_at']} not in {expiries}")
            if arrived < expires_at:
                found["early"].append(f"{key!r} arrived {expires_at - arrived} ms early")
            if body["ttl_seconds"] != TTL_S.get(p.category) or (
                p.created_at is not None and parse_ts(body["created_at"]) != p.created_at
            ):
                found["wrong stamp"].append(f"{key!r}: {body}")
        if not expiries and ttl:
            found["never-expiring tombstoned"].append(repr(key))
        if p.deleted_at is None and expiries and not ttl:
            found["lost"].append(f"{key!r} (due {expiries[-1]})")
        if p.deleted_at is not None and not got:
            found["erasure lost"].append(repr(key))
        if p.created_at is None and not explicit:
            found["erasure of a never-seen record lost"].append(repr(key))
        if p.touches and ttl:
            touched += 1
            exact += parse_ts(ttl[-1][1]["expires_at"]) == expiries[-1]
    # Touches must count: most touched records end at their final expiry (the others met
    # a crash that left them due before their touch was read).
    if touched and exact * 2 < touched:
        found["touches ignored"].append(f"only {exact} of {touched} touched records slid")
    last: dict[bytes, bytes | None] = {}
    for rec in out.stamped:
        if rec.key in last and last[rec.key] is None and rec.value is not None:
            found["stamp after a deletion"].append(repr(rec.key))
        last[rec.key] = rec.value
    for key in per_key:  # (an erasure of a record never stamped has nothing to null)
        if key in last and last[key] is not None:
            found["no null on expiry.stamped"].append(repr(key))
    # Three runs in four are killed only after their first commit or stamp was seen
    # (_AFTER): a fourth idle is the most a working service shows, however slow the machine.
    busy = sum(1 for n in out.stamps_per_run if n > 0)
    if busy * 4 < len(out.stamps_per_run) * 3:
        found["idle runs"].append(f"only {busy} of {len(out.stamps_per_run)} runs stamped")
    moved = 0
    for before, after in zip(out.resumes, out.resumes[1:], strict=False):
        for slot, offset in after.items():
            if offset < before.get(slot, 0):
                found["committed offsets went back"].append(f"{slot}: {before[slot]} -> {offset}")
        moved += sum(after.values()) > sum(before.values())
    # Kills fall 0.1-2.0 s after a moment of the run's work and offsets are committed
    # once a second, so about half of the runs live to commit; one in four is killed only
    # after its first commit was seen (_AFTER), so a fifth holds on a slow machine too,
    # and still fails a service that never commits between kills.
    if out.kills and moved * 5 < out.kills:
        found["offsets did not move"].append(f"committed offsets moved in {moved} of {out.kills}")
    if out.final_exit != 0:
        found["final run"].append(f"exit status {out.final_exit}")
    found["re-send differs"].extend(resends_that_differ([rec for _, rec in out.tombstones]))
    return [f"{kind}: {line}" for kind, lines in found.items() for line in lines[:20]]


# What a re-send of one deletion may change: the time it went out again, and so whether it
# went out more than a minute late (the README's "At least once").
_RESEND_MAY_CHANGE: Final = ("emitted_at",)
_RESEND_HEADERS_MAY_CHANGE: Final = ("expiry-late-cause",)


def resends_that_differ(tombstones: list[Any]) -> list[str]:
    """The tombstones that repeat a deletion already sent (same key, ``reason``,
    ``created_at`` and ``expiry-deleted-at`` header) but differ from its first copy in more
    than ``emitted_at`` and ``expiry-late-cause``, one line each."""
    first: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, bytes]]] = {}
    lines: list[str] = []
    for rec in tombstones:
        body = orjson.loads(rec.value)
        headers = dict(rec.headers or ())
        deletion = (rec.key, body["reason"], body["created_at"], headers.get("expiry-deleted-at"))
        seen = first.setdefault(deletion, (body, headers))
        if seen == (body, headers):
            continue
        fields = sorted(
            f for f in body.keys() | seen[0].keys()
            if f not in _RESEND_MAY_CHANGE and body.get(f) != seen[0].get(f)
        )  # fmt: skip
        names = sorted(
            h for h in headers.keys() | seen[1].keys()
            if h not in _RESEND_HEADERS_MAY_CHANGE and headers.get(h) != seen[1].get(h)
        )  # fmt: skip
        if fields or names:
            lines.append(f"{rec.key!r}: fields {fields}, headers {names}")
    return lines

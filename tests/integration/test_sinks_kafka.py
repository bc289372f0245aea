"""The sinks end to end: the real broker, real SQLite and the running PostgreSQL.

Messages are produced in the service's own encodings (model.encode_stamp, encode_tombstone);
every wait is a poll with a deadline. Joining a consumer group takes the test broker 3-5 s,
so each test starts as few sinks as it can and checks several behaviours per run.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import jsonschema
import orjson
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from stream_expiry.codec import encode_hold_audit
from stream_expiry.errors import ConfigurationError
from stream_expiry.history import history, text_lines
from stream_expiry.holds import Hold, encode_hold
from stream_expiry.kafka import admin_client, ensure_topics, missing_topics, producer
from stream_expiry.metrics import SinkMetrics
from stream_expiry.model import Identity, Stamp
from stream_expiry.sinks._messages import NullChange, decode_stamped, decode_tombstone
from stream_expiry.sinks.framework import Sink as SinkRunner
from stream_expiry.sinks.framework import wall_clock_ms
from stream_expiry.sinks.postgres import PostgresStore
from stream_expiry.sinks.sqlite import SQLiteStore
from stream_expiry.sinks.store import REREAD_MARGIN_MS, MemoryStore, StoreUnavailableError
from stream_expiry.testing.proxy import Proxy
from tests.conftest import make_topic_set, read_all, read_topic, record_batch_sizes, wait_for
from tests.integration.service_helpers import config_for, config_text, event, running_service
from tests.integration.sink_helpers import (
    MINUTE,
    PG_DSN,
    ident,
    null_msg,
    open_store,
    produce,
    running_sink,
    sink_config,
    stamp,
    stamped_msg,
    store_params,
    tombstone_msg,
    wait_until,
)
from tests.log_capture import captured_logs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from stream_expiry.sinks.framework import Sink
    from stream_expiry.sinks.store import Store
    from tests.conftest import TopicSet

pytestmark = pytest.mark.integration

HOSTILE = [
    "it's",
    'q"uote',
    "a/b",
    "50%",
    "%2F",
    "ünï ✓ 会话 \U0001f600",
    "x" * 512,
    "'; DROP TABLE records;--",
]
HOUR = 60 * MINUTE


@pytest_asyncio.fixture
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(request.param, tmp_path) as s:
        yield s


async def gone(store: Store, idents: list[Identity]) -> bool:
    return all([await store.get(i) is None for i in idents])


async def present(store: Store, idents: list[Identity]) -> bool:
    return all([await store.get(i) is not None for i in idents])


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_sink_applies_tombstones_end_to_end(
    broker: str, topics: TopicSet, store: Store
) -> None:
    history = f"{topics.prefix}.conversation-history"
    await ensure_topics(
        broker, [history], partitions=2, configs={history: {"cleanup.policy": "compact"}}
    )
    now = wall_clock_ms()
    mk = {
        o: [stamp(ident(h, org=o), created_at=now, ttl_ms=HOUR) for h in HOSTILE]
        for o in ("acme", "globex")
    }
    shared = [
        stamp(ident("shared", org=o), created_at=now, ttl_ms=HOUR) for o in ("acme", "globex")
    ]
    dup = stamp(ident("dup", category="session"), created_at=now, ttl_ms=HOUR)
    nulled = stamp(ident("nulled"), created_at=now, ttl_ms=HOUR)
    early = stamp(ident("early"), created_at=now, ttl_ms=HOUR)
    overdue = stamp(ident("overdue", category="error"), created_at=now - 2 * HOUR, ttl_ms=MINUTE)
    live = [*mk["acme"], *mk["globex"], *shared, dup, nulled]
    # The grace (3 s) lets the sweep take the overdue row (expired ~2 h ago) once it has
    # been in the store that long, but not the null deletion below, whose tombstone event
    # comes a moment after it.
    config = sink_config(
        broker,
        topics,
        compacted={"conversation": history},
        sweep_interval_s=0.2,
        sweep_grace_s=3,
    )

    async with running_sink(store, config) as sink:
        await produce(
            broker,
            topics.stamped,
            [stamped_msg(s, {"secret": "payload"}) for s in [*live, overdue]],
        )
        await produce(broker, topics.tombstones, [tombstone_msg(early, emitted_at=now)])
        await wait_until(
            lambda: present(store, [s.identity for s in live]), what="every stamp written"
        )
        await wait_until(
            lambda: gone(store, [overdue.identity]), what="the sweep of the overdue row"
        )
        await wait_until(
            lambda: _receipt_for(store, early.identity), what="the receipt of the early tombstone"
        )

        await produce(
            broker, topics.stamped, [stamped_msg(early, {"too": "late"}), null_msg(nulled.identity)]
        )
        doomed = [*mk["acme"], shared[0], dup]
        await produce(
            broker,
            topics.tombstones,
            [tombstone_msg(s, emitted_at=now) for s in doomed]
            + [tombstone_msg(dup, emitted_at=now + 1)],
        )
        deleted = [s.identity for s in [*doomed, nulled]]
        await wait_until(lambda: gone(store, deleted), what="the tombstoned rows deleted")
        # Null first (above), tombstone event now: the receipt waited for its rule. And the
        # reverse for a doomed row: its null arrives after the tombstone event deleted it.
        await produce(
            broker, topics.tombstones, [tombstone_msg(nulled, reason="explicit", emitted_at=now)]
        )
        await produce(broker, topics.stamped, [null_msg(shared[0].identity)])
        await wait_until(_metric(sink.metrics, "stale_total", 1), what="the late stamp consumed")
        await wait_until(
            _caught_up(store, sink.metrics, len(live) + len(doomed) + 7),
            what="every message applied and every receipt published",
        )
        await wait_until(_metric(sink.metrics, "swept_total", 1), what="the sweep counted")
        assert sink.metrics["swept_total"] == 1
        assert sink.metrics["invalid_total"] == 0

    # Survivors: the other org's rows with the same ids, and nothing else was touched.
    assert await present(store, [s.identity for s in [*mk["globex"], shared[1]]])
    assert await gone(store, [early.identity, overdue.identity])
    # One receipt per deletion (the duplicate tombstone left none), none carrying the data.
    receipts = await store.receipts()
    by_key = {r.identity: r for r in receipts}
    assert len(receipts) == len(by_key) == len(deleted) + 2  # + early (0 rows) + overdue (sweep)
    assert {(by_key[i].reason, by_key[i].rows_deleted) for i in deleted[:-1]} == {("ttl", 1)}
    n = by_key[nulled.identity]
    assert (n.reason, n.rows_deleted, n.emitted_at, n.created_at) == ("explicit", 1, now, now)
    assert by_key[early.identity].rows_deleted == 0
    assert by_key[overdue.identity].reason == "sweep"
    assert all(r.emitted_at is not None for r in receipts if r.reason != "sweep")

    on_topic = await read_topic(broker, topics.receipts, until=lambda r: len(r) >= len(receipts))
    values = [orjson.loads(r.value) for r in on_topic]
    assert sorted(v["receipt_id"] for v in values) == sorted(r.receipt_id for r in receipts)
    assert all(r.key.decode() == v["key"] for r, v in zip(on_topic, values, strict=True))
    assert not any("payload" in r.value.decode() for r in on_topic)

    conversation_deleted = {
        i.key for i in [*deleted, early.identity] if i.category == "conversation"
    }
    nulls = await read_topic(broker, history, until=lambda r: len(r) >= len(conversation_deleted))
    assert {r.key.decode() for r in nulls} == conversation_deleted
    assert all(r.value is None for r in nulls)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_the_sweep_spares_what_a_legal_hold_keeps(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """A held record has no tombstone coming, on purpose: the sink's own sweep must not
    delete it either, for a hold placed before the sink started or while it runs, until
    the hold is released."""
    now = wall_clock_ms()

    def overdue(name: str, org: str, minutes_ago: int) -> Stamp:
        return stamp(
            ident(name, org=org), created_at=now - 2 * HOUR, ttl_ms=HOUR - minutes_ago * MINUTE
        )

    by_org = overdue("case-file", "lawsuit", 50)  # held rows expire first: the sweep's
    by_record = overdue("c-7", "acme", 40)  # pages pass them before the free ones
    late_held = overdue("c-8", "acme", 30)
    free = [overdue(f"free{n}", "acme", 20 - n) for n in range(3)]
    holds = [
        Hold("h-org", "lawsuit", None, None, None, None, "litigation", now),
        Hold("h-rec", "acme", "_", "live", "conversation", "c-7", "subpoena", now),
    ]
    await produce(broker, topics.holds, [(h.hold_id.encode(), encode_hold(h)) for h in holds])
    # A short grace: a released hold spares its rows for that long after the release.
    config = sink_config(broker, topics, sweep_interval_s=0.1, sweep_grace_s=2)
    async with running_sink(store, config) as sink:
        await produce(
            broker, topics.stamped, [stamped_msg(s) for s in [by_org, by_record, *free[:2]]]
        )
        await wait_until(_swept(store, free[:2]), what="the free rows swept")
        assert await present(store, [by_org.identity, by_record.identity])

        # A hold placed while the sink runs, then a row it keeps behind it in the sweep.
        more = Hold("h-late", "acme", None, None, None, "c-8", "audit", now)
        await produce(broker, topics.holds, [(b"h-late", encode_hold(more))])
        await wait_until(_knows_hold(sink, "h-late"), what="the sink reading the new hold")
        await produce(broker, topics.stamped, [stamped_msg(s) for s in [late_held, free[2]]])
        await wait_until(_swept(store, free[2:]), what="the last free row swept")
        assert await present(store, [by_org.identity, by_record.identity, late_held.identity])

        # Before the release is sent: the sink cannot read it earlier. (Taken after the
        # produce, the time was up to the producer's close later than the sink's reading,
        # and a sweep right at the grace's end looked early: 160-300 ms to spare in a trial.)
        released = wall_clock_ms()
        await produce(broker, topics.holds, [(b"h-rec", None)])  # released
        await wait_until(_swept(store, [by_record]), what="the released row swept")
        assert wall_clock_ms() - released >= 2_000  # its tombstone had the grace to come
        assert await present(store, [by_org.identity, late_held.identity])
    reasons = {r.identity.record_id: r.reason for r in await store.receipts()}
    assert reasons == {"free0": "sweep", "free1": "sweep", "free2": "sweep", "c-7": "sweep"}


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_a_sweep_on_a_holds_topic_that_does_not_exist_stops_the_sink(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """A mistyped --holds-topic (or [topics] holds of --config) with the sweep on: the
    sink made that topic, read no hold from it, and swept a row a hold kept (a compliance
    trial: a held conversation deleted from the store, receipt ``sweep``). On a changelog
    that has messages, the sink stops at its start with what to check, making no topic
    and deleting nothing."""
    now = wall_clock_ms()
    held = stamp(ident("case-file", org="lawsuit"), created_at=now - 2 * HOUR, ttl_ms=HOUR)
    hold = Hold("h-org", "lawsuit", None, None, None, None, "litigation", now)
    await produce(broker, topics.holds, [(b"h-org", encode_hold(hold))])
    await produce(broker, topics.stamped, [stamped_msg(held)])
    typo = f"{topics.holds}.typo"
    config = sink_config(broker, topics, holds_topic=typo, sweep_interval_s=0.1, sweep_grace_s=0)
    with pytest.raises(ConfigurationError) as refused, anyio.fail_after(20):
        await SinkRunner(store, config).run(anyio.Event())
    assert str(refused.value).startswith(
        f"the legal holds topic {typo!r} does not exist, but the changelog "
        f"{topics.stamped!r} has 1 message: this deployment ran with another holds topic, "
        "and started on an empty one the sweep would delete every row a hold keeps. Check "
        "--holds-topic ([topics] holds of --config)"
    )
    assert await missing_topics(broker, [typo]) == [typo]
    assert await store.receipts() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite"]), indirect=True)
async def test_a_sweep_whose_hold_id_has_only_an_unreadable_message_stops_the_sink(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """A sink with its sweep on reads the holds at its start, as the service does. A hold
    id whose only message cannot be read (the state compaction leaves once it removes the
    valid placement before it; or a new id written malformed) was read as "no hold", and
    the sweep deleted the rows it was meant to keep. The sink stops at its start naming
    the id, where the message is and why, deleting nothing; once the hold is placed again
    under that id, the sink starts, and sweeps only what no hold keeps."""
    now = wall_clock_ms()
    held = stamp(ident("case-file", org="lawsuit"), created_at=now - 2 * HOUR, ttl_ms=HOUR)
    free = stamp(ident("free", org="acme"), created_at=now - 2 * HOUR, ttl_ms=HOUR)
    await produce(broker, topics.stamped, [stamped_msg(held), stamped_msg(free)])
    await produce(broker, topics.holds, [(b"h-org", b'{"org": "lawsuit"}')])  # no reason
    config = sink_config(broker, topics, sweep_interval_s=0.1, sweep_grace_s=0)
    with pytest.raises(ConfigurationError) as refused, anyio.fail_after(20):
        await SinkRunner(store, config).run(anyio.Event())
    said = str(refused.value)
    assert said.startswith(
        f"the latest message of 1 legal hold id on {topics.holds!r} cannot be read, so what "
        f"it holds is unknown: 'h-org' at {topics.holds}["
    )
    assert "]@0: missing_field (field 'reason' is required). Started, the sweep would " in said
    assert said.endswith("`stream-expiry hold release ID`; then start")
    assert await store.receipts() == []
    hold = Hold("h-org", "lawsuit", None, None, None, None, "litigation", now)
    await produce(broker, topics.holds, [(b"h-org", encode_hold(hold))])
    async with running_sink(store, config):
        await wait_until(_swept(store, [free]), what="the row no hold keeps swept")
        assert await present(store, [held.identity])
    assert [r.identity.record_id for r in await store.receipts()] == ["free"]


async def _a_held_row_and_an_empty_holds_topic(
    broker: str, topics: TopicSet
) -> tuple[Hold, Stamp, Stamp, str]:
    """A hold on org lawsuit, on the holds topic and (placed) on the audit trail; an overdue
    row it keeps and an overdue row of another org on the changelog; and a holds topic
    that exists and has never had a message, as a mistyped name something made empty."""
    now = wall_clock_ms()
    hold = Hold("h-org", "lawsuit", None, None, None, None, "litigation", now)
    await produce(broker, topics.holds, [(b"h-org", encode_hold(hold))])
    placed = encode_hold_audit("hold_placed", hold.as_dict(), now)
    await produce(broker, topics.audit, [(b"h-org", placed)])
    held = stamp(ident("case-file", org="lawsuit"), created_at=now - 2 * HOUR, ttl_ms=HOUR)
    free = stamp(ident("free", org="acme"), created_at=now - 2 * HOUR, ttl_ms=HOUR)
    await produce(broker, topics.stamped, [stamped_msg(held), stamped_msg(free)])
    typo = f"{topics.holds}.typo"
    await ensure_topics(broker, [typo], partitions=2)
    return hold, held, free, typo


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_a_sweep_on_a_holds_topic_that_never_had_a_message_stops_the_sink(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """A mistyped --holds-topic naming a topic that exists and has never had a message
    (made by hand, or by an earlier sink given the same name): the service refuses it at
    its start, as the audit trail has the holds' entries, but a sink with the sweep on
    read it as "no hold" and swept the rows the holds kept. The sink stops at its start
    as the service does, deleting nothing; once the hold is placed on that topic (which
    then has had a message), the sink starts, and sweeps only what no hold keeps."""
    hold, held, free, typo = await _a_held_row_and_an_empty_holds_topic(broker, topics)
    config = sink_config(broker, topics, holds_topic=typo, sweep_interval_s=0.1, sweep_grace_s=0)
    with pytest.raises(ConfigurationError) as refused, anyio.fail_after(20):
        await SinkRunner(store, config).run(anyio.Event())
    assert str(refused.value).startswith(
        f"the legal holds topic {typo!r} has never had a message, but the audit trail "
        f"{topics.audit!r} has 1 entry (holds placed or released, deletions they deferred): "
        "this deployment placed its holds on another topic, and started on this one the "
        "sweep would delete every row a hold keeps. Check --holds-topic ([topics] holds of "
        "--config)"
    )
    assert await store.receipts() == []
    await produce(broker, typo, [(b"h-org", encode_hold(hold))])
    async with running_sink(store, config):
        await wait_until(_swept(store, [free]), what="the row no hold keeps swept")
        assert await present(store, [held.identity])
    assert [r.identity.record_id for r in await store.receipts()] == ["free"]


@pytest.mark.parametrize("audit_from", ["config file", "option"])
def test_the_sink_command_stops_with_status_2_on_a_holds_topic_that_never_had_a_message(
    broker: str, topics: TopicSet, tmp_path: Path, audit_from: str
) -> None:
    """``stream-expiry sink`` with the sweep on, on an empty holds topic beside an audit
    trail of holds: one line naming both topics and what to check, exit status 2, as the
    service's start; nothing swept. The audit trail comes from the service's config file
    (``[topics] audit``), or from ``--audit-topic``, as the holds topic does."""
    _, _, _, typo = anyio.run(_a_held_row_and_an_empty_holds_topic, broker, topics)
    db = tmp_path / "cli.db"
    if audit_from == "config file":
        cfg = tmp_path / "expiry.toml"
        cfg.write_text(config_text(topics, str(tmp_path / "state")))
        given = ["--config", str(cfg)]
    else:  # no config file: every topic by its option
        given = [
            "--stamped-topic", topics.stamped, "--tombstones-topic", topics.tombstones,
            "--receipts-topic", topics.receipts, "--audit-topic", topics.audit,
        ]  # fmt: skip
    argv = [
        sys.executable, "-m", "stream_expiry", "sink", "sqlite", "--path", str(db),
        "--bootstrap-servers", broker, "--group-id", f"{topics.prefix}.cli", *given,
        "--holds-topic", typo, "--sweep-interval", "0.1", "--sweep-grace", "0",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_EXPIRY_TOPICS_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=45, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        f"stream-expiry sink: the legal holds topic {typo!r} has never had a message, but "
        f"the audit trail {topics.audit!r} has 1 entry"
    ), done.stderr
    assert "Traceback" not in done.stderr
    assert anyio.run(_receipts_in, db) == []


async def _receipts_in(db: Path) -> list[Any]:
    """The receipts the SQLite store in ``db`` has."""
    async with SQLiteStore(db, name="probe") as store:
        return list(await store.receipts())


@pytest.mark.asyncio
async def test_the_sweep_leaves_sessions_to_the_service(broker: str, topics: TopicSet) -> None:
    """A session's expiry moves with each touch, which the store learns only from the
    service's next stamp: swept during a service outage, sessions touched meanwhile were
    deleted before their expiry (a trial: 100 of 100). Rows of the other categories go."""
    store = MemoryStore("sessions-left")
    now = wall_clock_ms()
    overdue = [
        stamp(ident(name, category=category), created_at=now - 2 * HOUR, ttl_ms=HOUR)
        for name, category in (("s1", "session"), ("c1", "conversation"))
    ]
    config = sink_config(broker, topics, sweep_interval_s=0.1, sweep_grace_s=0)
    async with running_sink(store, config):
        await produce(broker, topics.stamped, [stamped_msg(s) for s in overdue])
        await wait_until(_swept(store, overdue[1:]), what="the conversation swept")
        assert await present(store, [overdue[0].identity])


@pytest.mark.asyncio
async def test_a_hold_acknowledged_before_a_sweep_spares_its_rows_in_that_sweep(
    broker: str, topics: TopicSet
) -> None:
    """Before each sweep the sink took the holds its consumer had fetched already: a hold
    acknowledged just before came a sweep late, and a trial's sweeps deleted 37 of 40 held
    rows. Here the consumer has fetched nothing since the start (paused), the state a
    sweep just after the hold's acknowledgement met; the sweep reads the holds to their
    end itself."""
    store = MemoryStore("holds-read-to-end")
    now = wall_clock_ms()
    first = Hold("h-first", "other", None, None, None, None, "before the start", now)
    await produce(broker, topics.holds, [(b"h-first", encode_hold(first))])
    config = sink_config(broker, topics, sweep_interval_s=0.1, sweep_grace_s=0)
    async with running_sink(store, config) as sink:
        await wait_until(_knows_hold(sink, "h-first"), what="the holds read at the start")
        reader = sink._holds_reader
        assert reader is not None
        reader.pause(*reader.assignment())
        held = Hold("h-held", "acme", None, None, None, "held", "subpoena", now)
        await produce(broker, topics.holds, [(b"h-held", encode_hold(held))])
        overdue = [
            stamp(ident(name), created_at=now - 2 * HOUR, ttl_ms=HOUR) for name in ("held", "free")
        ]
        await produce(broker, topics.stamped, [stamped_msg(s) for s in overdue])
        await wait_until(_swept(store, overdue[1:]), what="the free row swept")
        assert await present(store, [overdue[0].identity])
    assert [r.identity.record_id for r in await store.receipts()] == ["free"]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_the_sweep_judges_rows_only_by_what_the_sink_has_read(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """A sink (re)started behind its topics: the store holds a session whose old expiry
    passed, but a touch restamped it while the sink was down, and a row whose ttl
    tombstone waits on the topic; both behind a backlog. Judged by the clock, the first
    sweep (after the first batch) deleted the touched session before its real expiry and
    gave the other a ``sweep`` receipt (a trial: 7,500 of 8,000 sessions, 41 s early).
    Judged by what the store has applied, the sweep waits until the sink has caught up."""
    now = wall_clock_ms()
    old = stamp(ident("touched", category="session"), created_at=now - 2 * HOUR, ttl_ms=HOUR)
    touched = old._replace(expires_at=now + HOUR)
    due = stamp(ident("tombstoned"), created_at=now - 2 * HOUR, ttl_ms=HOUR)
    forgotten = stamp(ident("forgotten"), created_at=now - 2 * HOUR, ttl_ms=HOUR)
    # What an earlier run of the sink applied, before it stopped.
    await store.apply(
        [decode_stamped(*stamped_msg(s)) for s in (old, due, forgotten)], now_ms=now - HOUR
    )
    backlog = [stamp(ident(f"b{n}"), created_at=now, ttl_ms=HOUR) for n in range(3000)]
    await produce(broker, topics.stamped, [*map(stamped_msg, backlog), stamped_msg(touched)])
    await produce(broker, topics.tombstones, [tombstone_msg(due, emitted_at=now)])
    config = sink_config(broker, topics, sweep_interval_s=0.05, sweep_grace_s=1, batch_size=100)
    async with running_sink(store, config) as sink:
        # The forgotten row has no tombstone coming: the sweep takes it once caught up.
        await wait_until(_swept(store, [forgotten]), what="the sweep of the forgotten row")
        await wait_until(
            _metric(sink.metrics, "messages_total", len(backlog) + 2), what="every message"
        )
        # The store's commit is visible before the sweep's coroutine counts it (a CI run
        # under load read 0 here): wait for the count, then check it is the one row.
        await wait_until(_metric(sink.metrics, "swept_total", 1), what="the sweep counted")
        assert sink.metrics["swept_total"] == 1
    row = await store.get(touched.identity)
    assert row is not None
    assert row.expires_at == touched.expires_at
    reasons = {r.identity.record_id: r.reason for r in await store.receipts()}
    assert reasons == {"tombstoned": "ttl", "forgotten": "sweep"}


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_the_sink_forgets_settled_markers_once_it_has_read_what_came_before(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """The sweep off, as by default: the sink still forgets deletion markers a grace
    after they settled, judged, as the sweep is, by what it has read. An earlier run
    deleted a record long ago; a stamp of that life waits behind a backlog (a lagging
    partition). Judged by the clock, the marker went before the stamp was read, and the
    stamp wrote the deleted row back. A deletion still waiting for its tombstone event
    is never forgotten."""
    now = wall_clock_ms()
    old = stamp(ident("old"), created_at=now - 3 * HOUR, ttl_ms=HOUR)
    waiting = stamp(ident("waiting"), created_at=now - 3 * HOUR, ttl_ms=HOUR)
    earlier = [
        decode_stamped(*stamped_msg(s), partition=9, offset=n) for n, s in enumerate([old, waiting])
    ]
    await store.apply(earlier, now_ms=now - 2 * HOUR)
    await store.apply(
        [decode_tombstone(*tombstone_msg(old)), NullChange(waiting.identity, 9, 2)],
        now_ms=now - 2 * HOUR,
    )
    backlog = [stamp(ident(f"b{n}"), created_at=now, ttl_ms=HOUR) for n in range(3000)]
    await produce(broker, topics.stamped, [*map(stamped_msg, backlog), stamped_msg(old)])
    config = sink_config(broker, topics, marker_grace_s=60, prune_interval_s=0.05, batch_size=100)
    async with running_sink(store, config) as sink:
        await wait_until(_metric(sink.metrics, "markers_pruned_total", 1), what="the pruning")
        await wait_until(
            _metric(sink.metrics, "messages_total", len(backlog) + 1), what="every message"
        )
        assert sink.metrics["stale_total"] == 1
        assert sink.metrics["markers_pruned_total"] == 1
    assert await store.get(old.identity) is None
    assert await store.marker(old.identity) is None
    marker = await store.marker(waiting.identity)
    assert marker is not None
    assert marker.pending
    assert await store.count_markers() == 1


@pytest.mark.asyncio
async def test_the_end_offsets_are_the_brokers_now(broker: str, topics: TopicSet) -> None:
    """The sweep's read-complete time rests on them: below the end (the broker's
    ListOffsets answer here), it would sweep rows whose later stamps are unread."""
    from aiokafka import TopicPartition

    from stream_expiry.fetch import end_offsets
    from stream_expiry.kafka import consumer

    await produce(broker, topics.stamped, [(f"k{n}".encode(), b"v") for n in range(500)])
    async with consumer(broker) as cons:
        tps = [TopicPartition(topics.stamped, p) for p in (0, 1)]
        ends = await end_offsets(cons, dict.fromkeys(tps, 0))
        assert sum(ends.values()) == 500
        assert await end_offsets(cons, ends) == ends  # asked at the end: the same answer
        await produce(broker, topics.stamped, [(b"k0", b"v")])
        again = await end_offsets(cons, ends)
        assert sum(again.values()) == 501


@pytest.mark.asyncio
@pytest.mark.postgres
async def test_a_postgres_sink_rides_out_a_lost_connection(
    broker: str, topics: TopicSet, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL away for a while (a proxy cut: every connection reset, every new one
    refused, as when the server stops) and then the sink's backends terminated: the sink
    retries as it does for the broker, says so once and again when the store answers, and
    loses nothing (a trial: the sink exited on a 3-5 s stop of the server, its log full of
    the pool's tracebacks). The PostgreSQL server itself is never stopped: other tests use it."""
    import asyncpg

    caplog.set_level(logging.INFO, logger="stream_expiry.sinks")  # the end is said at INFO
    target = urlsplit(PG_DSN)
    schema = f"t{uuid.uuid4().hex[:12]}"
    now = wall_clock_ms()
    first = [stamp(ident(f"a{n}"), created_at=now, ttl_ms=HOUR) for n in range(100)]
    second = [stamp(ident(f"b{n}"), created_at=now, ttl_ms=HOUR) for n in range(300)]
    async with Proxy(f"{target.hostname}:{target.port or 5432}") as proxy:
        dsn = target._replace(netloc=proxy.address).geturl()
        store = PostgresStore(dsn, name=f"outage-{schema}", schema=schema)
        await store.open()
        try:
            config = sink_config(broker, topics, batch_size=50)
            async with running_sink(store, config) as sink:
                await produce(broker, topics.stamped, [stamped_msg(s) for s in first])
                await wait_until(
                    lambda: present(store, [s.identity for s in first]), what="the first stamps"
                )
                proxy.cut()
                await produce(broker, topics.stamped, [stamped_msg(s) for s in second])
                await produce(
                    broker, topics.tombstones, [tombstone_msg(s, emitted_at=now) for s in first]
                )
                await wait_until(
                    _metric(sink.metrics, "store_errors_total", 3), what="the sink retrying"
                )
                proxy.restore()
                await wait_until(
                    _caught_up(store, sink.metrics, 2 * len(first) + len(second)),
                    what="everything read during the outage applied",
                )
                # Its connections terminated by an administrator, idle or not.
                application = f"stream-expiry sink {store.name}"
                killer = await asyncpg.connect(PG_DSN)
                try:
                    killed = await killer.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = $1",
                        application,
                    )
                finally:
                    await killer.close()
                assert killed >= 1
                await produce(
                    broker, topics.tombstones, [tombstone_msg(s, emitted_at=now) for s in second]
                )
                await wait_until(
                    _caught_up(store, sink.metrics, 2 * len(first) + 2 * len(second)),
                    what="the tombstones read after the termination applied",
                )
            assert await store.count() == 0
            receipts = await store.receipts()
            assert len(receipts) == len({r.identity for r in receipts}) == 400
            assert {(r.reason, r.rows_deleted) for r in receipts} == {("ttl", 1)}
        finally:
            proxy.restore()
            await store.drop_schema()
            await store.close()
    said = [r.getMessage() for r in caplog.records if r.name == "stream_expiry.sinks"]
    # Said once at most (a terminated backend the pool replaces before the next query
    # leaves nothing to retry), and its end said whenever it was.
    retried = [m for m in said if "retrying until the store answers" in m]
    assert len(retried) <= 1, said
    assert not retried or any(m.startswith("the store answers again, ") for m in said), said
    assert "Failed to restore the pool connection floor" not in caplog.text


@pytest.mark.asyncio
@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_a_postgres_sink_rides_out_its_backends_terminated_while_batches_flow(
    broker: str, topics: TopicSet
) -> None:
    """Backends terminated while the sink's transactions run, again and again: a pooled
    connection the server closed mid-way can answer the next query with asyncpg's
    ``InternalClientError`` ("cannot switch to state 15; another operation is in
    progress"), which the sink did not count as a store error: it exited with a traceback
    (a trial: 6 crashes in 6 tries). It retries, and loses nothing."""
    import asyncpg

    schema = f"t{uuid.uuid4().hex[:12]}"
    now = wall_clock_ms()
    stamps = [stamp(ident(f"r{n}"), created_at=now, ttl_ms=HOUR) for n in range(3000)]
    store = PostgresStore(PG_DSN, name=f"flow-{schema}", schema=schema)
    await store.open()
    killer = await asyncpg.connect(PG_DSN)
    terminated = 0
    try:
        config = sink_config(broker, topics, batch_size=20)
        async with running_sink(store, config) as sink:
            await produce(broker, topics.stamped, [stamped_msg(s) for s in stamps])
            await produce(
                broker, topics.tombstones, [tombstone_msg(s, emitted_at=now) for s in stamps]
            )
            done = _caught_up(store, sink.metrics, 2 * len(stamps))
            rounds = 0
            # A guard only: each round that terminates a backend the sink is using costs
            # the sink's 1 s wait before its retry, and 24 rounds took the 30 s this was
            # once under load (a full run beside a busy core, with coverage).
            with anyio.fail_after(120):
                while rounds < 30 and not await done():
                    batches = sink.metrics["batches_total"]
                    if batches > 0:  # working, not joining the group
                        rounds += 1
                        terminated += await killer.fetchval(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = $1",
                            f"stream-expiry sink {store.name}",
                        )
                    while sink.metrics["batches_total"] == batches and not await done():  # noqa: ASYNC110 - the sink's counter
                        await anyio.sleep(0.01)  # until the next batch is applied
            await wait_until(done, what="every stamp and tombstone applied", timeout_s=60)
        assert terminated >= 10, terminated
        assert await store.count() == 0
        receipts = await store.receipts()
        assert len(receipts) == len({r.identity for r in receipts}) == len(stamps)
    finally:
        await killer.close()
        await store.drop_schema()
        await store.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_receipts_kept_in_the_store_only_wait_in_no_outbox(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """``--receipts-topic ""``: nothing is published, so nothing waits to be. Every
    receipt stayed in the outbox (75,755 of 75,755 in a trial), and a later run with a
    topic published them all as left over from a previous run."""
    now = wall_clock_ms()
    records = [stamp(ident(f"r{n}"), created_at=now - 2 * HOUR, ttl_ms=HOUR) for n in range(20)]
    # Left in the outbox by an earlier version (or a run with a topic): not published now.
    await store.apply([_decoded_tombstone(stamp(ident("earlier")), now)], now_ms=now)
    assert len(await store.pending_receipts()) == 1
    await produce(broker, topics.stamped, [stamped_msg(s) for s in records])
    await produce(broker, topics.tombstones, [tombstone_msg(s) for s in records[:10]])
    config = sink_config(
        broker, topics, receipts_topic=None, sweep_interval_s=0.05, sweep_grace_s=1
    )
    async with running_sink(store, config) as sink:
        await wait_until(
            _caught_up(store, sink.metrics, len(records) + 10),
            what="every receipt written, none waiting in the outbox",
        )
        await wait_until(_swept(store, records[10:]), what="the sweep's receipts")
        await wait_until(
            lambda: _outbox_empty(store), what="the sweep's receipts out of the outbox"
        )
        assert sink.metrics["published_total"] == 0
    assert len(await store.receipts()) == len(records) + 1
    assert await store.pending_receipts() == []


async def _outbox_empty(store: Store) -> bool:
    return not await store.pending_receipts()


def _swept(store: Store, stamps: list[Stamp]) -> Any:
    """Each row of ``stamps`` written and then swept (not merely absent: never written)."""

    async def check() -> bool:
        receipts = {r.identity: r.reason for r in await store.receipts()}
        return all(receipts.get(s.identity) == "sweep" for s in stamps) and await gone(
            store, [s.identity for s in stamps]
        )

    return check


def _knows_hold(sink: Sink, hold_id: str) -> Any:
    async def check() -> bool:
        return sink.holds.get(hold_id) is not None

    return check


async def _receipt_for(store: Store, identity: Identity) -> bool:
    return any(r.identity == identity for r in await store.receipts())


def _metric(metrics: dict[str, int], name: str, at_least: int) -> Any:
    async def check() -> bool:
        return metrics.get(name, 0) >= at_least

    return check


def _caught_up(store: Store, metrics: dict[str, int], messages: int) -> Any:
    async def check() -> bool:
        return metrics["messages_total"] >= messages and not await store.pending_receipts()

    return check


@pytest.mark.asyncio
async def test_offsets_commit_after_the_store_and_the_outbox_survives_a_restart(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    now = wall_clock_ms()
    first = [stamp(ident(f"a{n}"), created_at=now, ttl_ms=HOUR) for n in range(5)]
    later = [stamp(ident(f"b{n}"), created_at=now, ttl_ms=HOUR) for n in range(3)]
    async with open_store("sqlite", tmp_path) as store:
        config = sink_config(broker, topics)
        await produce(broker, topics.stamped, [stamped_msg(s) for s in first])
        await produce(
            broker, topics.tombstones, [tombstone_msg(s, emitted_at=now) for s in first[:2]]
        )
        async with running_sink(store, config) as sink:
            await wait_until(_caught_up(store, sink.metrics, 7), what="the first batch")
        # While no sink runs: new messages, and a deletion whose receipt is not published yet
        # (as after a crash between the store commit and the publish).
        await produce(broker, topics.stamped, [stamped_msg(s) for s in later])
        await store.apply([_decoded_tombstone(first[2], now)], now_ms=now)
        [orphan] = await store.pending_receipts()
        async with running_sink(store, config) as again:
            await wait_until(_caught_up(store, again.metrics, 3), what="the second run")
            assert again.metrics["messages_total"] == 3  # nothing committed was read again
        assert await store.count() == len(first) - 3 + len(later)
    published = await read_topic(broker, topics.receipts, until=lambda r: len(r) >= 3)
    assert orphan.receipt_id in {orjson.loads(r.value)["receipt_id"] for r in published}


class _CommitsThenSaysLost(MemoryStore):
    """Once armed, its next batch with receipts commits, then reports the connection lost,
    as :class:`PostgresStore` does when the answer to COMMIT never arrives."""

    def __init__(self) -> None:
        super().__init__("commits-then-says-lost")
        self.armed = False

    async def apply(self, changes: Any, **kwargs: Any) -> Any:
        applied = await super().apply(changes, **kwargs)
        if self.armed and applied.receipts:
            self.armed = False
            raise StoreUnavailableError("could not commit: the connection was lost")
        return applied


@pytest.mark.asyncio
async def test_receipts_of_a_batch_the_store_committed_but_called_lost_are_published(
    broker: str, topics: TopicSet
) -> None:
    """Applied again, such a batch makes no receipt (its deletions are in the store), and
    the receipts it made waited in the outbox until the sink restarted (a review)."""
    store = _CommitsThenSaysLost()
    now = wall_clock_ms()
    s = stamp(ident("r1"), created_at=now - 2 * MINUTE, ttl_ms=MINUTE)
    async with running_sink(store, sink_config(broker, topics)) as sink:
        await produce(broker, topics.stamped, [stamped_msg(s, {"x": 1})])
        await wait_until(_caught_up(store, sink.metrics, 1), what="the stamp written")
        store.armed = True
        await produce(broker, topics.tombstones, [tombstone_msg(s, emitted_at=now)])
        published = await read_topic(broker, topics.receipts, until=lambda r: len(r) >= 1)
        assert sink.metrics["store_errors_total"] == 1
    assert [orjson.loads(r.value)["record_id"] for r in published] == ["r1"]
    assert await store.pending_receipts() == []


class _Gated(MemoryStore):
    """Notes in ``log`` when each of its transactions starts and ends; with ``gate``, a
    transaction holds until the gate opens."""

    def __init__(self, name: str, log: list[tuple[str, str]], gate: anyio.Event | None) -> None:
        super().__init__(name)
        self.log, self.gate = log, gate

    async def apply(self, changes: Any, **kwargs: Any) -> Any:
        if changes:
            self.log.append((self.name, "start"))
            if self.gate is not None:
                await self.gate.wait()
        applied = await super().apply(changes, **kwargs)
        if changes:
            self.log.append((self.name, "end"))
        return applied


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_partition_moves_to_another_sink_only_after_its_transaction_in_flight(
    broker: str, topics: TopicSet
) -> None:
    """Two instances of one store: the group gave a partition to the second while the first
    was still applying a batch of it, and the two transactions, each finding no row and no
    marker to lock, left a deleted record's row in place (a review). The first's
    transaction now ends before the group moves on."""
    now = wall_clock_ms()
    stamps = [stamp(ident(f"r{n}"), created_at=now, ttl_ms=HOUR) for n in range(20)]
    await produce(broker, topics.stamped, [stamped_msg(s) for s in stamps])
    log: list[tuple[str, str]] = []
    gate = anyio.Event()
    config = sink_config(broker, topics)
    first, second = _Gated("first", log, gate), _Gated("second", log, None)
    async with running_sink(first, config):
        await wait_until(_logged(log, ("first", "start")), what="the first's transaction")
        async with running_sink(second, config):
            # The group rebalances; the second applies nothing while the first's
            # transaction holds (a bounded wait: the second would be fast otherwise).
            with anyio.move_on_after(15):
                await wait_until(_logged(log, ("second", "start")), timeout_s=30)
            gate.set()
            # Both own partitions now: stamps for both, and the second applies its own.
            more = [stamp(ident(f"s{n}"), created_at=now, ttl_ms=HOUR) for n in range(20)]
            await produce(broker, topics.stamped, [stamped_msg(s) for s in more])
            await wait_until(_logged(log, ("second", "start")), what="the second's transaction")
    assert log.index(("first", "end")) < log.index(("second", "start")), log


def _logged(log: list[tuple[str, str]], entry: tuple[str, str]) -> Any:
    async def check() -> bool:
        return entry in log

    return check


class _CountedGauges:
    """A sink's lag series (real :class:`SinkMetrics`), with the number of lags set."""

    def __init__(self) -> None:
        self.metrics = SinkMetrics("memory", CollectorRegistry())
        self.set = 0

    def set_lag(self, topic: str, partition: int, records: int) -> None:
        self.set += 1
        self.metrics.set_lag(topic, partition, records)

    def forget_partition(self, topic: str, partition: int) -> None:
        self.metrics.forget_partition(topic, partition)

    def partitions(self) -> set[tuple[str, str]]:
        """The (topic, partition) labels of the lag series exposed."""
        lines = self.metrics.exposition().decode().splitlines()
        return {
            (line.split('topic="')[1].split('"')[0], line.split('partition="')[1].split('"')[0])
            for line in lines
            if line.startswith("stream_expiry_sink_consumer_lag{")
        }


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_partition_moved_to_another_sink_keeps_no_lag_gauge_on_the_first(
    broker: str, topics: TopicSet
) -> None:
    """A second sink joins the group and takes half the partitions: their lag series go
    from the first, which reports its own alone from then on. The sink set the lag of
    every partition ``cons.assignment()`` listed and never dropped one, so a partition
    moved away kept its last lag on the first for good, beside its new owner's (a
    dashboard summing the lag counted it twice)."""
    config = sink_config(broker, topics)
    first, second = _CountedGauges(), _CountedGauges()
    every = {(t, str(p)) for t in (topics.stamped, topics.tombstones) for p in (0, 1)}
    async with running_sink(MemoryStore("first"), config, lag=first):
        await wait_for(lambda: first.partitions() == every, timeout_s=30)
        async with running_sink(MemoryStore("second"), config, lag=second):
            await wait_for(lambda: bool(second.partitions()), timeout_s=30)
            # The second reads its share, so the first was given its own: a lag the first
            # sets from now on is of the new assignment.
            before = first.set
            await wait_for(lambda: first.set > before, timeout_s=30)
            moved, kept = second.partitions(), first.partitions()
            assert kept, moved
            assert not kept & moved, (kept, moved)


class _FailsOnceAfterReceipts(MemoryStore):
    """The transaction after the first that made receipts fails before it does anything
    (the connection lost at BEGIN): the marks of the receipts published meanwhile, which
    ride with it, are not made."""

    def __init__(self) -> None:
        super().__init__("fails-after-receipts")
        self.state = "wait"

    async def apply(self, changes: Any, **kwargs: Any) -> Any:
        if self.state == "fail":
            self.state = "done"
            raise StoreUnavailableError("could not begin: the connection was lost")
        applied = await super().apply(changes, **kwargs)
        if self.state == "wait" and applied.receipts:
            self.state = "fail"
        return applied


@pytest.mark.asyncio
async def test_a_store_outage_publishes_no_receipt_twice(broker: str, topics: TopicSet) -> None:
    """Once the store answered again, the receipts left in its outbox were published,
    and with them those published already whose mark the failed transaction was to make:
    two receipts for one deletion (a review). Two tombstones on one partition, one batch
    each: the second's transaction fails, after the first's receipt went out."""
    store = _FailsOnceAfterReceipts()
    now = wall_clock_ms()
    stamps = [stamp(ident(r), created_at=now - 2 * MINUTE, ttl_ms=MINUTE) for r in ("r1", "r2")]
    async with running_sink(store, sink_config(broker, topics, batch_size=1)) as sink:
        await produce(broker, topics.stamped, [stamped_msg(s, {"x": 1}) for s in stamps])
        await wait_until(_caught_up(store, sink.metrics, 2), what="the stamps written")
        async with producer(broker) as prod:  # one partition: read in this order
            for s in stamps:
                key, value = tombstone_msg(s, emitted_at=now)
                await prod.send_and_wait(topics.tombstones, value, key=key, partition=0)
        await wait_until(_caught_up(store, sink.metrics, 4), what="both tombstones applied")
        assert sink.metrics["store_errors_total"] == 1
    published = await read_all(broker, topics.receipts)
    assert sorted(orjson.loads(r.value)["record_id"] for r in published) == ["r1", "r2"]


def _decoded_tombstone(s: Any, now: int) -> Any:
    from stream_expiry.sinks._messages import decode_tombstone

    key, value = tombstone_msg(s, emitted_at=now)
    return decode_tombstone(key, value)


@pytest.mark.asyncio
async def test_sink_command_runs_until_sigint_and_exits_zero(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    db = tmp_path / "cli.db"
    now = wall_clock_ms()
    s = stamp(ident("via-cli"), created_at=now, ttl_ms=HOUR)
    await produce(broker, topics.stamped, [stamped_msg(s)])
    await produce(broker, topics.tombstones, [tombstone_msg(s, emitted_at=now)])
    argv = [
        sys.executable, "-m", "stream_expiry", "sink", "sqlite", "--path", str(db),
        "--bootstrap-servers", broker, "--group-id", f"{topics.prefix}.cli",
        "--stamped-topic", topics.stamped, "--tombstones-topic", topics.tombstones,
        "--receipts-topic", topics.receipts,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)  # noqa: ASYNC220
    reader = SQLiteStore(db, name="probe")  # the CLI's own file, read alongside it (WAL)

    async def deleted() -> bool:
        if proc.poll() is not None:
            said = proc.stderr.read() if proc.stderr is not None else ""
            pytest.fail(f"the sink exited early with {proc.returncode}: {said}")
        if not db.exists():
            return False
        await reader.open()
        return bool(await reader.receipts()) and not await reader.pending_receipts()

    try:
        await wait_until(deleted, what="the CLI sink to delete and publish")
        await reader.close()
        proc.send_signal(signal.SIGINT)
        _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=15))
    finally:
        await reader.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    # What it reads and writes, said once at start.
    assert (
        f"sink sqlite: reading {topics.stamped} and {topics.tombstones} from {broker} (group "
        f"{topics.prefix}.cli); receipts to {topics.receipts}; sweep off"
    ) in err
    assert "stopped after 2 messages" in err  # tombstone first or stamp first: both right
    assert "1 receipts" in err


def _pg_sink_argv(
    broker: str, topics: TopicSet, dsn: str, schema: str, group: str, port: int
) -> list[str]:
    """``stream-expiry sink postgres`` on ``dsn`` (a proxy's, to cut), in group
    ``<prefix>.<group>``, its endpoints on 127.0.0.1:``port``."""
    return [
        sys.executable, "-m", "stream_expiry", "sink", "postgres", "--dsn", dsn,
        "--schema", schema, "--bootstrap-servers", broker, "--group-id",
        f"{topics.prefix}.{group}", "--stamped-topic", topics.stamped,
        "--tombstones-topic", topics.tombstones, "--receipts-topic", topics.receipts,
        "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
    ]  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.postgres
async def test_the_sink_command_is_not_ready_while_its_store_does_not_answer(
    broker: str, topics: TopicSet
) -> None:
    """``sink postgres --metrics-port``: ``/readyz`` 200 while PostgreSQL answers, 503 naming
    the store while it does not (a proxy cut, the sink idle: nothing to write, so only the
    health check can find it), 200 again once it answers; ``/healthz`` 200 throughout (a
    trial: ``/readyz`` stayed 200 through a store outage, deletions stopped)."""
    import urllib.error
    import urllib.request

    from stream_expiry.broker import free_port

    target = urlsplit(PG_DSN)
    schema = f"t{uuid.uuid4().hex[:12]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as answer:
                return answer.status, orjson.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, orjson.loads(refused.read())
        except OSError:
            return 0, {}  # not listening yet

    async def answered(path: str, status: int, store: str = "") -> bool:
        if proc.poll() is not None:
            said = proc.stderr.read() if proc.stderr is not None else ""
            pytest.fail(f"the sink exited early with {proc.returncode}: {said}")
        code, body = await anyio.to_thread.run_sync(get, path)
        return code == status and str(body.get("store", "")).startswith(store)

    async with Proxy(f"{target.hostname}:{target.port or 5432}") as proxy:
        argv = _pg_sink_argv(
            broker, topics, target._replace(netloc=proxy.address).geturl(), schema, "ready", port
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)  # noqa: ASYNC220
        try:
            await wait_until(lambda: answered("/readyz", 200), what="the sink ready")
            assert await answered("/readyz", 200, "ok")
            proxy.cut()
            await wait_until(
                lambda: answered("/readyz", 503, "unreachable: PostgreSQL store"),
                what="/readyz to say the store does not answer",
            )
            assert await answered("/healthz", 200, "unreachable")  # alive: it waits
            proxy.restore()
            await wait_until(lambda: answered("/readyz", 200, "ok"), what="ready again")
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=15))
            left = PostgresStore(PG_DSN, name="cleanup", schema=schema)
            await left.open()
            await left.drop_schema()
            await left.close()
    assert proc.returncode == 0, err


@pytest.mark.asyncio
@pytest.mark.postgres
@pytest.mark.timeout(120)
async def test_the_sink_command_says_once_that_its_store_answers_again(
    broker: str, topics: TopicSet
) -> None:
    """A PostgreSQL outage found by both the sink's loop (it had stamps to write) and its
    store probe: a trial's sink said its end twice, "the store answers again, 9 s after
    the sink's first try that failed" at WARNING and "the store answers again" at INFO. One
    line, at INFO, with how long the store did not answer."""
    import urllib.error
    import urllib.request

    from stream_expiry.broker import free_port

    target = urlsplit(PG_DSN)
    schema = f"t{uuid.uuid4().hex[:12]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stamps = [stamp(ident(f"o{n}"), created_at=wall_clock_ms(), ttl_ms=HOUR) for n in range(20)]

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()
        except OSError:
            return 0, ""  # not listening yet

    async def answered(path: str, status: int, text: str) -> bool:
        if proc.poll() is not None:
            said = proc.stderr.read() if proc.stderr is not None else ""
            pytest.fail(f"the sink exited early with {proc.returncode}: {said}")
        code, body = await anyio.to_thread.run_sync(get, path)
        return code == status and text in body

    def counter(name: str, at_least: int) -> Callable[[], Awaitable[bool]]:
        async def reached() -> bool:
            _, body = await anyio.to_thread.run_sync(get, "/metrics")
            values = [
                float(line.rsplit(" ", 1)[1])
                for line in body.splitlines()
                if line.startswith(f"stream_expiry_sink_{name}_total{{")
            ]
            return bool(values) and values[0] >= at_least

        return reached

    async with Proxy(f"{target.hostname}:{target.port or 5432}") as proxy:
        argv = _pg_sink_argv(
            broker, topics, target._replace(netloc=proxy.address).geturl(), schema, "again", port
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)  # noqa: ASYNC220
        try:
            await wait_until(lambda: answered("/readyz", 200, "ok"), what="the sink ready")
            proxy.cut()
            await produce(broker, topics.stamped, [stamped_msg(s) for s in stamps])
            await wait_until(counter("store_errors", 2), what="the sink's loop retrying")
            await wait_until(
                lambda: answered("/readyz", 503, "unreachable: PostgreSQL store"),
                what="the store probe finding it",
            )
            proxy.restore()
            await wait_until(counter("messages", len(stamps)), what="the stamps applied")
            await wait_until(lambda: answered("/readyz", 200, "ok"), what="ready again")
        finally:
            proxy.restore()
            proc.send_signal(signal.SIGINT)
            _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=15))
            left = PostgresStore(PG_DSN, name="cleanup", schema=schema)
            await left.open()
            await left.drop_schema()
            await left.close()
    assert proc.returncode == 0, err
    again = [line for line in err.splitlines() if "answers again" in line]
    assert len(again) == 1, err
    assert "the store answers again, " in again[0], err
    assert " s after " in again[0], err
    assert "WARNING" not in again[0], err


@pytest.mark.asyncio
async def test_nulls_reach_records_a_java_producer_wrote_under_the_users_key(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A user's compacted topic with 5 partitions, written by a producer that uses Kafka's
    default partitioner (aiokafka's DefaultPartitioner is the Java client's murmur2) and
    keys records by "{org}:{bot}:{record_id}": every null lands under the record's own key
    on the record's own partition, so compaction removes exactly the deleted records."""
    from aiokafka.partitioner import DefaultPartitioner

    from stream_expiry.key_template import KeyTemplate

    history = f"{topics.prefix}.history"
    await ensure_topics(
        broker, [history], partitions=5, configs={history: {"cleanup.policy": "compact"}}
    )
    template = KeyTemplate("{org}:{bot}:{record_id}")
    now = wall_clock_ms()
    records = [
        stamp(ident(f"c{n}", org=org, bot=bot), created_at=now, ttl_ms=HOUR)
        for n in range(12)
        for org in ("acme", "globex")
        for bot in ("b1", "b2")
    ]
    user_key = {s.identity: template.render(s.identity) for s in records}
    async with producer(broker, partitioner=DefaultPartitioner()) as java_like:
        futures = [
            await java_like.send(history, b'{"transcript": "..."}', key=user_key[s.identity])
            for s in records
        ]
        written = {
            user_key[s.identity]: (await f).partition for s, f in zip(records, futures, strict=True)
        }
    assert len(set(written.values())) > 1  # the records really are spread over partitions
    doomed = records[::3]
    config = sink_config(
        broker, topics, compacted={"conversation": history}, key_templates={history: template}
    )
    async with open_store("sqlite", tmp_path) as store, running_sink(store, config) as sink:
        await produce(broker, topics.stamped, [stamped_msg(s) for s in records])
        await produce(broker, topics.tombstones, [tombstone_msg(s, emitted_at=now) for s in doomed])
        await wait_until(
            _caught_up(store, sink.metrics, len(records) + len(doomed)), what="every deletion"
        )
        assert sink.metrics["compacted_nulls_total"] == len(doomed)
    on_topic = await read_topic(
        broker, history, until=lambda r: len(r) >= len(records) + len(doomed)
    )
    nulls = {(r.key, r.partition) for r in on_topic if r.value is None}
    assert nulls == {(user_key[s.identity], written[user_key[s.identity]]) for s in doomed}
    assert len(on_topic) == len(records) + len(doomed)


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_no_null_erases_a_later_life_from_a_users_compacted_topic(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """A user's compacted topic keyed by record holds one value per record: its latest
    life's. The deletion of an earlier life whose record lives on must not null that key:

    * ``erased``: deleted by an erasure request and created again (a returning user);
    * ``held``: a life a legal hold kept, replaced by the record's next life, tombstoned
      at the release with no null on ``expiry.stamped`` (the record lives on).

    ``gone`` is deleted for good: its null must still come. The tombstones come after
    the later lives' stamps are in the store, as they do whenever the sink reads
    ``expiry.stamped`` first."""
    history = f"{topics.prefix}.history"
    await ensure_topics(
        broker, [history], partitions=3, configs={history: {"cleanup.policy": "compact"}}
    )
    now = wall_clock_ms()
    old = {r: stamp(ident(r), created_at=now - HOUR, ttl_ms=HOUR) for r in ("erased", "held")}
    later = {r: stamp(ident(r), created_at=now, ttl_ms=HOUR) for r in ("erased", "held")}
    gone = stamp(ident("gone"), created_at=now - HOUR, ttl_ms=HOUR)
    config = sink_config(broker, topics, compacted={"conversation": history})
    async with running_sink(store, config) as sink:
        await produce(
            broker,
            topics.stamped,
            [
                stamped_msg(old["erased"], {"life": 1}),
                null_msg(old["erased"].identity),
                stamped_msg(later["erased"], {"life": 2}),
                stamped_msg(old["held"], {"life": 1}),
                stamped_msg(later["held"], {"life": 2}),  # no null: the hold kept life 1
                stamped_msg(gone, {"life": 1}),
            ],
        )
        await wait_until(
            lambda: present(store, [s.identity for s in [*later.values(), gone]]),
            what="the later lives written",
        )
        await produce(
            broker,
            topics.tombstones,
            [
                tombstone_msg(old["erased"], reason="explicit", emitted_at=now - 1),
                tombstone_msg(old["held"], emitted_at=now + 1),
                tombstone_msg(gone, emitted_at=now),
            ],
        )
        await wait_until(
            lambda: _receipts_for(store, [old["erased"], old["held"], gone]),
            what="a receipt for every deletion",
        )
        await wait_until(_metric(sink.metrics, "published_total", 3), what="receipts published")
        assert sink.metrics["compacted_nulls_total"] == 1
    # The later lives stay in the store, and no null for them reached the user's topic.
    assert await present(store, [s.identity for s in later.values()])
    nulls = await read_all(broker, history)  # every null was acknowledged above
    assert [(r.key, r.value) for r in nulls] == [(gone.identity.key.encode(), None)]


async def _receipts_for(store: Store, stamps: list[Stamp]) -> bool:
    mine = {r.identity for r in await store.receipts()}
    return all(s.identity in mine for s in stamps)


@pytest.mark.asyncio
async def test_receipts_go_in_record_batches_the_receipts_topic_takes(
    broker: str, tmp_path: Path
) -> None:
    """A receipts topic made with a smaller ``max.message.bytes`` (64 KiB) than the
    producer's 256 KiB batches: Kafka refused each batch of small receipts over it. The
    sink's batches follow the smallest limit of the topics it writes. (The test broker
    enforces no limit: the batches it holds are measured.)"""
    topics = make_topic_set()
    limit = 64 * 1024
    await ensure_topics(
        broker,
        topics.all,
        partitions=1,
        configs={topics.receipts: {"max.message.bytes": str(limit)}},
    )
    now = wall_clock_ms()
    records = [stamp(ident(f"r{n}"), created_at=now, ttl_ms=HOUR) for n in range(1500)]
    await produce(broker, topics.stamped, [stamped_msg(s) for s in records])
    await produce(broker, topics.tombstones, [tombstone_msg(s, emitted_at=now) for s in records])
    async with (
        open_store("sqlite", tmp_path) as store,
        running_sink(store, sink_config(broker, topics)) as sink,
    ):
        await wait_until(
            _caught_up(store, sink.metrics, 2 * len(records)), what="every receipt published"
        )
    sizes = await record_batch_sizes(broker, topics.receipts)
    assert sum(sizes) > 4 * limit  # room for batches over the limit, had there been any
    assert max(sizes) <= limit


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", store_params(["sqlite", "postgres"]))
async def test_an_empty_store_in_a_group_that_has_read_before_is_warned_about(
    broker: str, topics: TopicSet, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A second store started with the first one's group (the default group is one a store
    type) starts where that group left off and shares its partitions: it got none of the
    stamps before, without a word (a trial). An empty store whose group has committed
    offsets is warned about; the first store, restarted, is not."""
    now = wall_clock_ms()
    stamps = [stamp(ident(f"g{n}"), created_at=now, ttl_ms=HOUR) for n in range(5)]
    group = f"{topics.prefix}.shared"
    config = sink_config(broker, topics, group_id=group)
    warned = "is empty, but the consumer group"
    async with open_store(kind, tmp_path) as first:
        with caplog.at_level("WARNING", logger="stream_expiry.sinks"):
            async with running_sink(first, config) as sink:
                await produce(broker, topics.stamped, [stamped_msg(s) for s in stamps])
                await wait_until(_caught_up(first, sink.metrics, len(stamps)), what="the stamps")
        assert warned not in caplog.text  # an empty store, an unused group
        async with open_store(kind, tmp_path) as second:
            with caplog.at_level("WARNING", logger="stream_expiry.sinks"):
                async with running_sink(second, config):
                    with anyio.fail_after(20):
                        while warned not in caplog.text:  # noqa: ASYNC110 - the sink's log
                            await anyio.sleep(0.05)
        assert f"consumer group {group!r} has read" in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING", logger="stream_expiry.sinks"):
            async with running_sink(first, config) as sink:
                late = stamp(ident("late"), created_at=now, ttl_ms=HOUR)
                await produce(broker, topics.stamped, [stamped_msg(late)])
                # Read after the start's check: the check is done.
                await wait_until(_metric(sink.metrics, "messages_total", 1), what="a message")
        assert warned not in caplog.text  # the store holds what the group read


@pytest.mark.asyncio
@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
async def test_a_sink_says_a_topic_of_the_services_it_had_to_create(
    broker: str, topics: TopicSet, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A mistyped --tombstones-topic was created without a word: the sink read nothing
    there, its rows went by the nulls alone, with no receipt (a trial). A topic the
    service writes that the sink had to create is said; the others, which exist, are not."""
    typo = f"{topics.tombstones}.typo"
    config = sink_config(broker, topics, tombstones_topic=typo, sweep_interval_s=60.0)
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    async with running_sink(store, config):
        await wait_for(lambda: "created topic" in caplog.text)
    said = [r.getMessage() for r in caplog.records if "created topic" in r.getMessage()]
    assert len(said) == 1
    assert said[0].startswith(f"created topic {typo}, which did not exist: the service writes")


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite"]), indirect=True)
async def test_a_sink_reading_an_input_topic_says_so_once_not_once_a_message(
    broker: str, topics: TopicSet, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A trial: a sink given an input topic as its tombstones topic (inputs other than the
    default ones, no --config to refuse them) logged a warning for every event it read,
    without bound. Now the first says what the sink expects there and what to do, and the
    rest are counted: said at most once a minute, and at stop."""
    await produce(broker, topics.conversations, [event("conversation", f"r{i}") for i in range(30)])
    config = sink_config(broker, topics, tombstones_topic=topics.conversations)
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    async with running_sink(store, config) as sink:
        await wait_for(lambda: sink.metrics["invalid_total"] == 30)
    said = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(said) == 2, said
    first, rest = said
    assert first.startswith(f"skipping a malformed message at {topics.conversations}[")
    assert (
        "(it looks like an input event); the sink reads "
        f"{topics.conversations} as its tombstones topic, for the service's tombstone events"
    ) in first
    assert "give the sink the right --tombstones-topic, or the service's --config" in first
    assert rest.startswith(f"skipped 29 more malformed messages on {topics.conversations} in ")


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_the_receipt_of_a_null_whose_tombstone_never_came_gives_the_nulls_reason(
    broker: str, topics: TopicSet, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """An erasure's null deleted the row and its tombstone never came (here: a
    --tombstones-topic that names no topic of the service's): the sweep's receipt said
    ``sweep`` and the log said it swept a row it had not (a trial). The receipt says the
    null's reason, and the log says the tombstones went astray."""
    erased = stamp(ident("erased"), created_at=wall_clock_ms(), ttl_ms=HOUR)
    typo = f"{topics.tombstones}.typo"
    config = sink_config(
        broker, topics, tombstones_topic=typo, sweep_interval_s=0.1, sweep_grace_s=0
    )
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    async with running_sink(store, config) as sink:
        await produce(broker, topics.stamped, [stamped_msg(erased)])
        await wait_until(lambda: present(store, [erased.identity]), what="the row")
        async with producer(broker) as prod:
            key = erased.identity.key.encode()
            sent = await prod.send(
                topics.stamped, None, key=key, headers=[("expiry-reason", b"explicit")]
            )
            await sent

        async def receipted() -> bool:
            return bool(await store.receipts())

        await wait_until(receipted, what="the receipt")
        await wait_for(lambda: sink.metrics["unsettled_total"] == 1)  # counted apart
        assert sink.metrics["swept_total"] == 0
        # Published as the sweep's receipts are, not left in the store's outbox until a
        # restart.
        published = await read_topic(broker, topics.receipts, until=lambda r: len(r) >= 1)
        assert [orjson.loads(r.value)["reason"] for r in published] == ["explicit"]
    assert [(r.reason, r.rows_deleted) for r in await store.receipts()] == [("explicit", 1)]
    assert "whose tombstones never came" in caplog.text
    assert "swept" not in caplog.text


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_an_erasures_null_read_again_after_its_marker_is_forgotten_gets_no_second_receipt(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """An erasure of a record the store never held: its null and its tombstone event are
    applied (one receipt, rows_deleted 0) and the marker is forgotten. Then a new group
    reads ``expiry.stamped`` again (a rewound group: the compacted topic keeps the null;
    the tombstones were read long ago, here a topic with nothing). The re-read null,
    dated by the broker before the pruning's bound, waited for a tombstone event that
    would never come, and the sweep wrote a second receipt. A null of another erasure
    written after the first run is read for the first time: it waits for its tombstone,
    and the sweep answers for it, with its reason; its receipt also says the sweep ran
    after both nulls were applied."""
    unseen, fresh = (Stamp(ident(r), None, None, None, None) for r in ("unseen", "fresh"))
    erased = [("expiry-reason", b"explicit")]

    async def null(s: Stamp, timestamp_ms: int | None = None) -> None:
        async with producer(broker) as prod:
            key = s.identity.key.encode()
            sent = await prod.send(
                topics.stamped, None, key=key, headers=erased, timestamp_ms=timestamp_ms
            )
            await sent

    async def receipts_of(s: Stamp) -> list[tuple[str, int]]:
        return [
            (r.reason, r.rows_deleted) for r in await store.receipts() if r.identity == s.identity
        ]

    # Dated before the bound the pruning keeps for re-reads (an hour below its own:
    # REREAD_MARGIN_MS), as a message read long ago is.
    long_ago = wall_clock_ms() - 2 * REREAD_MARGIN_MS
    await null(unseen, long_ago)
    await produce(
        broker,
        topics.tombstones,
        [tombstone_msg(unseen, reason="explicit", emitted_at=long_ago)],
        timestamp_ms=long_ago,
    )
    config = sink_config(broker, topics, marker_grace_s=0, prune_interval_s=0.05)
    async with running_sink(store, config) as sink:
        await wait_until(_metric(sink.metrics, "markers_pruned_total", 1), what="the pruning")
    assert await receipts_of(unseen) == [("explicit", 0)]
    assert await store.marker(unseen.identity) is None
    await null(fresh)
    again = sink_config(
        broker, topics, tombstones_topic=f"{topics.tombstones}.read-long-ago",
        marker_grace_s=3600, sweep_interval_s=0.05, sweep_grace_s=0,
    )  # fmt: skip

    async def swept() -> bool:
        return bool(await receipts_of(fresh))

    async with running_sink(store, again):
        await wait_until(swept, what="the fresh erasure's receipt")
    assert await receipts_of(fresh) == [("explicit", 0)]
    assert await receipts_of(unseen) == [("explicit", 0)]
    assert await store.marker(unseen.identity) is None


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_a_tombstone_read_again_after_its_marker_is_forgotten_gets_no_second_receipt(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """An erasure of a record the store never held: its tombstone event is applied (one
    receipt, rows_deleted 0) and the marker is forgotten. Then a new group reads
    ``expiry.tombstones`` again (a rewound group): the event, dated by the producer before
    the pruning's bound, was read before, and wrote a second receipt. An erasure written
    after the first run is read for the first time: on record, rows_deleted 0."""
    unseen, fresh = (Stamp(ident(r), None, None, None, None) for r in ("unseen", "fresh"))

    async def receipts_of(s: Stamp) -> list[tuple[str, int]]:
        return [
            (r.reason, r.rows_deleted) for r in await store.receipts() if r.identity == s.identity
        ]

    async def erase(s: Stamp, at: int) -> None:
        msg = tombstone_msg(s, reason="explicit", emitted_at=at)
        await produce(broker, topics.tombstones, [msg], timestamp_ms=at)

    # Dated before the bound the pruning keeps for re-reads (an hour below its own:
    # REREAD_MARGIN_MS), as a message read long ago is.
    await erase(unseen, wall_clock_ms() - 2 * REREAD_MARGIN_MS)
    config = sink_config(broker, topics, marker_grace_s=0, prune_interval_s=0.05)
    async with running_sink(store, config) as sink:
        await wait_until(_metric(sink.metrics, "markers_pruned_total", 1), what="the pruning")
    assert await receipts_of(unseen) == [("explicit", 0)]
    assert await store.marker(unseen.identity) is None
    await erase(fresh, wall_clock_ms())
    again = sink_config(broker, topics, marker_grace_s=3600)
    async with running_sink(store, again) as sink:
        await wait_until(_caught_up(store, sink.metrics, 2), what="both tombstones applied")
    assert await receipts_of(fresh) == [("explicit", 0)]
    assert await receipts_of(unseen) == [("explicit", 0)]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", store_params(["sqlite", "postgres"]), indirect=True)
async def test_a_tombstones_topic_the_sink_never_read_is_read_for_the_first_time(
    broker: str, topics: TopicSet, store: Store
) -> None:
    """A store whose sink read the service's tombstones and pruned its markers; then the
    sink is pointed at another tombstones topic (a copy of the service's, whose messages
    keep the dates they were written at). Its erasure, dated before the pruning's bound,
    was never read by this store: it is on record (rows_deleted 0). Under one bound for
    the whole store it was taken for a re-read, and left no receipt at all. The bound is
    kept for the partitions the pruning's read-complete time covered."""
    read, copied = (Stamp(ident(r), None, None, None, None) for r in ("read", "copied"))
    mirror = f"{topics.tombstones}.mirror"
    await ensure_topics(broker, [mirror], partitions=2)

    async def receipts_of(s: Stamp) -> list[tuple[str, int]]:
        return [
            (r.reason, r.rows_deleted) for r in await store.receipts() if r.identity == s.identity
        ]

    async def erase(topic: str, s: Stamp, at: int) -> None:
        msg = tombstone_msg(s, reason="explicit", emitted_at=at)
        await produce(broker, topic, [msg], timestamp_ms=at)

    # Dated before the bound the pruning keeps for re-reads (an hour below its own:
    # REREAD_MARGIN_MS), as a message written long ago is.
    long_ago = wall_clock_ms() - 2 * REREAD_MARGIN_MS
    await erase(topics.tombstones, read, long_ago)
    config = sink_config(broker, topics, marker_grace_s=0, prune_interval_s=0.05)
    async with running_sink(store, config) as sink:
        await wait_until(_metric(sink.metrics, "markers_pruned_total", 1), what="the pruning")
    assert await receipts_of(read) == [("explicit", 0)]
    await erase(mirror, copied, long_ago)
    again = sink_config(broker, topics, tombstones_topic=mirror, marker_grace_s=3600)
    async with running_sink(store, again) as sink:
        await wait_until(_caught_up(store, sink.metrics, 1), what="the copied erasure applied")
    assert await receipts_of(copied) == [("explicit", 0)]
    assert await receipts_of(read) == [("explicit", 0)]


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_an_erasures_receipt_message_names_its_request_in_its_headers(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The service names an erasure's request on its tombstone event and its null; the
    store's receipt of it carries the same two headers, ``expiry-request`` and
    ``expiry-request-event-id`` (its value stays the contract's schema), and ``history``
    shows them on the receipt. An expiry's receipt has neither; the record already due at
    ingest (produced two hours after its expiry) has its tombstone's
    ``expiry-late-cause: late_event``, and history shows it on the receipt."""
    config = config_for(
        topics, str(tmp_path / "state"), '[retention.defaults]\nconversation = "1h"\n'
    )
    t0 = wall_clock_ms()
    created = event("conversation", "erased", ts=t0)
    erase = event("conversation", "erased", ts=t0 + 1, op="delete", event_id="gdpr-2026-118")
    due = event("conversation", "expired", ts=t0 - 2 * HOUR)  # due at ingest: a ttl tombstone
    async with (
        open_store("sqlite", tmp_path) as store,
        running_sink(store, sink_config(broker, topics)),
        running_service(config, broker),
    ):
        await produce(broker, topics.conversations, [created, erase, due])
        published = await read_topic(broker, topics.receipts, until=lambda r: len(r) >= 2)
        tombs = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 2)
    by_record = {orjson.loads(r.value)["record_id"]: r for r in published}
    assert sorted(by_record) == ["erased", "expired"]
    (tomb,) = [r for r in tombs if orjson.loads(r.value)["reason"] == "explicit"]
    request = dict(tomb.headers)["expiry-request"]
    assert request.decode().startswith(f"{topics.conversations}[")
    erased, expired = by_record["erased"], by_record["expired"]
    assert dict(erased.headers) == {
        "expiry-request": request, "expiry-request-event-id": b"gdpr-2026-118",
    }  # fmt: skip
    (late,) = [r for r in tombs if orjson.loads(r.value)["record_id"] == "expired"]
    assert dict(late.headers)["expiry-late-cause"] == b"late_event"
    assert list(expired.headers) == [("expiry-late-cause", b"late_event")]  # and no request
    schema = orjson.loads(
        (Path(__file__).parents[2] / "stream_expiry/schemas/receipt.schema.json").read_bytes()
    )
    for r in published:
        jsonschema.validate(orjson.loads(r.value), schema)  # no field added to the value
    assert orjson.loads(erased.value)["reason"] == "explicit"
    assert orjson.loads(expired.value)["reason"] == "ttl"

    found = await history(config, broker, Identity("acme", "_", "live", "conversation", "erased"))
    (receipt,) = [e for e in found.events if e["kind"] == "receipt"]
    assert (receipt["request"], receipt["request_event_id"]) == (request.decode(), "gdpr-2026-118")
    lines = text_lines(found.as_dict())
    assert sum("the erasure request event_id 'gdpr-2026-118' at" in line for line in lines) == 3
    found = await history(config, broker, Identity("acme", "_", "live", "conversation", "expired"))
    (receipt,) = [e for e in found.events if e["kind"] == "receipt"]
    assert "request" not in receipt
    assert receipt["late_cause"] == "late_event"
    lines = text_lines(found.as_dict())
    said = [line for line in lines if "; late (late_event: the event that made it due" in line]
    assert len(said) == 3  # the tombstone, its null and the receipt


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_partitions_added_to_the_stamped_topic_while_it_runs_are_assigned_and_read(
    broker: str, topics: TopicSet
) -> None:
    """As the service's (test_scale_out): the group's leader sees the new count in its
    metadata and joins again, and the test broker answered that join, which said what the
    last one said, with the old generation and the old assignment, so the new partitions
    stayed unassigned and their stamps unread until another member came or went. The test
    broker cannot add partitions (no CreatePartitions): the topic is deleted and made again
    with 4. A metadata age of 1 s stands for Kafka's 5 minutes."""
    from aiokafka import TopicPartition

    store = MemoryStore()
    options = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}
    config = sink_config(broker, topics, consumer_options={**options, "metadata_max_age_ms": 1000})
    async with running_sink(store, config) as sink:
        await wait_for(lambda: len(list(sink._owned)) == 4, timeout_s=30)
        async with admin_client(broker) as admin:
            await admin.delete_topics([topics.stamped])
        await ensure_topics(broker, [topics.stamped], partitions=4)
        s = stamp(ident("on-3"), created_at=wall_clock_ms(), ttl_ms=HOUR)
        key, value = stamped_msg(s)
        async with producer(broker) as prod:
            await (await prod.send(topics.stamped, value, key=key, partition=3))
        await wait_for(lambda: TopicPartition(topics.stamped, 3) in sink._owned, timeout_s=30)
        await wait_until(lambda: present(store, [s.identity]), what="the stamp on partition 3")


class _FirstAssignmentHeld(SinkRunner):
    """The sink whose loop waits at ``taken`` once the group gave it partitions: the group
    answered the join, and the sink has taken nothing yet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken, self.at_taken = anyio.Event(), anyio.Event()

    async def _loop(self, stop: anyio.Event, prod: Any, cons: Any) -> None:
        await wait_for(lambda: bool(cons.assignment()), timeout_s=30)
        self.at_taken.set()
        await self.taken.wait()
        await super()._loop(stop, prod, cons)


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_the_sink_command_s_readyz_says_joining_until_its_group_assigns_partitions(
    broker: str, topics: TopicSet
) -> None:
    """``sink --metrics-port``: from its start's end until its group's first assignment is
    taken, ``/readyz`` (over HTTP) says 503, phase ``joining``, as ``run``'s does; it said
    ``starting`` through the whole join, and an operator could not tell a sink still
    connecting from one its group coordinator keeps waiting. Then 200, ``running``."""
    import urllib.error
    import urllib.request

    from stream_expiry.broker import free_port
    from stream_expiry.sinks.command import _serve

    def readyz() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                return answer.status, orjson.loads(answer.read())["phase"]
        except urllib.error.HTTPError as refused:
            return refused.code, orjson.loads(refused.read())["phase"]

    port = free_port()
    sink = _FirstAssignmentHeld(MemoryStore(), sink_config(broker, topics))
    async with anyio.create_task_group() as tg:
        tg.start_soon(_serve, sink, SinkMetrics("memory"), port, "127.0.0.1")
        try:
            with anyio.fail_after(30):
                await sink.at_taken.wait()
            assert await anyio.to_thread.run_sync(readyz) == (503, "joining")
        finally:
            sink.taken.set()

        async def running() -> bool:
            return await anyio.to_thread.run_sync(readyz) == (200, "running")

        await wait_until(running, timeout_s=30, what="/readyz 200, running")
        signal.raise_signal(signal.SIGINT)  # _serve's own receiver takes it: a clean stop


@pytest.mark.asyncio
@pytest.mark.timeout(90)
async def test_a_sink_the_group_gives_no_partitions_is_a_ready_standby(broker: str) -> None:
    """Two sinks in one group on topics of one partition each, started together: the
    group gives both partitions to one and nothing to the other, which is a standby,
    ready (phase ``running``), and says so once at INFO. It waited for partitions and said
    ``joining`` for good: an orchestrator held back, or restarted, a healthy instance."""
    from aiokafka import TopicPartition

    from stream_expiry.health import Health

    topics = make_topic_set()
    await ensure_topics(broker, topics.all, partitions=1)
    config = sink_config(broker, topics)
    sinks = [SinkRunner(MemoryStore(name), config) for name in ("first", "second")]
    healths = [Health(), Health()]
    for sink, health in zip(sinks, healths, strict=True):
        health.starting()
        sink.observe(on_joining=health.joining, on_ready=health.running)
    stop = anyio.Event()
    with captured_logs() as logs:
        async with anyio.create_task_group() as tg:
            for sink in sinks:  # together: both in the group's first assignment
                tg.start_soon(sink.run, stop)
            try:
                await wait_for(lambda: all(h.ready for h in healths), timeout_s=40)
                owned = sorted((list(sink._owned) for sink in sinks), key=len)
                both = sorted(TopicPartition(t, 0) for t in (topics.stamped, topics.tombstones))
                assert owned == [[], both], owned
            finally:
                stop.set()
    standby = next(sink for sink in sinks if not list(sink._owned))
    said = [line for line in logs.json_lines() if "assigned no partitions" in str(line["msg"])]
    assert [line["level"] for line in said] == ["INFO"], said
    assert said[0]["msg"] == (
        f"sink {standby.store.name} assigned no partitions: the group {config.group_id} has "
        f"more members than {topics.stamped} (1) and {topics.tombstones} (1) have partitions; "
        "this sink waits as a standby (ready, reading nothing) until a member leaves"
    )

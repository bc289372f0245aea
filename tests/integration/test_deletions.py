"""``stream-expiry deletions``: what the stores deleted in a period, by rule, category and
lateness, from the receipts a real sink published (a compliance officer's question that
``history``, one record at a time, could not answer: round 45's "no bulk audit command")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry import codec
from stream_expiry.cli import main
from stream_expiry.config import parse_config
from stream_expiry.deletions import Filter, deletions
from stream_expiry.kafka import producer
from stream_expiry.timeutil import format_ts, parse_ts, wall_clock_ms
from tests.conftest import read_topic, wait_for
from tests.integration.service_helpers import config_for, config_text, event, running_service
from tests.integration.service_helpers import produce as service_produce
from tests.integration.sink_helpers import (
    MINUTE,
    ident,
    open_store,
    produce,
    running_sink,
    sink_config,
    stamp,
    stamped_msg,
    tombstone_msg,
    wait_until,
)

if TYPE_CHECKING:
    from pathlib import Path

    from stream_expiry.sinks.store import Store
    from tests.conftest import TopicSet

pytestmark = pytest.mark.integration


async def _receipts_published(broker: str, topics: TopicSet, n: int) -> list[dict[str, object]]:
    on_topic = await read_topic(broker, topics.receipts, until=lambda r: len(r) >= n)
    return [orjson.loads(r.value) for r in on_topic]


async def _holds(store: Store, n: int) -> bool:
    return await store.count() == n


@pytest.mark.asyncio
async def test_deletions_counts_each_stores_receipts_by_rule_category_and_lateness(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = wall_clock_ms()
    expired = now - 5_000  # due 5 s ago: each deleted at least that late
    conversations = [
        stamp(ident(f"c{i}"), created_at=expired - MINUTE, ttl_ms=MINUTE) for i in range(3)
    ]
    session = stamp(ident("s1", category="session"), created_at=now - MINUTE)
    never_held = stamp(ident("ghost"), created_at=expired - MINUTE, ttl_ms=MINUTE)
    other_org = stamp(ident("c0", org="globex"), created_at=expired - MINUTE, ttl_ms=MINUTE)
    held = [*conversations, session, other_org]
    async with (
        open_store("sqlite", tmp_path, name="archive-db") as store,
        running_sink(store, sink_config(broker, topics)),
    ):
        await produce(broker, topics.stamped, [stamped_msg(s) for s in held])
        await wait_until(lambda: _holds(store, len(held)), what="every stamp written")
        tombstones = [tombstone_msg(s) for s in [*conversations[:2], other_org, never_held]]
        await produce(broker, topics.tombstones, tombstones)
        # One fired late, and said so by the service: its receipt carries the cause.
        key, value = tombstone_msg(conversations[2])
        async with producer(broker) as prod:
            late = [(codec.H_LATE_CAUSE, b"catch_up")]
            await (await prod.send(topics.tombstones, value, key=key, headers=late))
        key, value = tombstone_msg(session, reason="explicit", emitted_at=now)
        request = [(codec.H_REQUEST, b"sessions[0]@7"), (codec.H_REQUEST_EVENT_ID, b"ev-1")]
        async with producer(broker) as prod:
            await (await prod.send(topics.tombstones, value, key=key, headers=request))
        published = await _receipts_published(broker, topics, 6)
    # A receipt published twice (a sink that crashed after publishing): counted once.
    again = next(r for r in published if r["record_id"] == "c0" and r["org"] == "acme")
    await produce(broker, topics.receipts, [(str(again["key"]).encode(), orjson.dumps(again))])

    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state")))
    common = ["deletions", "--config", str(cfg), "--bootstrap-servers", broker, "--org", "acme"]
    assert await anyio.to_thread.run_sync(main, [*common, "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert (report["receipts"], report["copies"], report["org"]) == (5, 1, "acme")
    mine = report["stores"]["archive-db"]
    assert mine["deleted"] == 4
    assert mine["by_reason"] == {"explicit": 1, "ttl": 3}
    assert mine["by_category"] == {"conversation": 3, "session": 1}
    assert (mine["found_nothing"], mine["late_causes"]) == (1, {"catch_up": 1})
    waits = mine["after_due_s"]
    assert waits["max"] >= 5.0  # the ttl rows went at least 5 s after their expiry
    assert waits["max_key"] in {s.identity.key for s in conversations}
    assert 0 <= waits["p50"] <= waits["p99"] <= waits["max"]

    assert await anyio.to_thread.run_sync(main, [*common]) == 0
    text = capsys.readouterr().out
    assert "deletions of org acme, the beginning to now (by deleted_at): 5 receipts, 1 copy" in text
    assert "  store archive-db: 4 rows deleted" in text
    assert "    by rule: explicit 1, ttl 3" in text
    assert "    late, by the service's cause: catch_up 1" in text
    # Its erasure is timed from its tombstone: the text says so, not the request's wait.
    assert "      (an erasure from its tombstone's time, not its request's" in text
    assert "    1 tombstone of records it never held (rows_deleted 0)" in text

    # The receipts themselves, for an export; and a period after them all has none.
    assert await anyio.to_thread.run_sync(main, [*common, "--receipts"]) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["record_id"] for r in lines) == ["c0", "c1", "c2", "ghost", "s1"]
    assert all("data" not in r for r in lines)
    # With what the receipt's headers say: the erasure's request, the late one's cause.
    by_id = {r["record_id"]: r for r in lines}
    assert (by_id["s1"]["request"], by_id["s1"]["request_event_id"]) == ("sessions[0]@7", "ev-1")
    assert (by_id["c2"]["late_cause"], by_id["c1"]["late_cause"]) == ("catch_up", None)
    # The export is handed each receipt as it is read; the report keeps none of them (it
    # kept every one, an export or not: 2 GB a million receipts).
    handed: list[dict[str, object]] = []
    config = parse_config(cfg.read_text(), path=str(cfg))
    report = await deletions(config, broker, Filter({"org": "acme"}), handed.append)
    assert sorted(str(r["record_id"]) for r in handed) == ["c0", "c1", "c2", "ghost", "s1"]
    assert report.receipts == len(handed)
    assert not hasattr(report, "matched")
    later = format_ts(wall_clock_ms() + MINUTE)
    assert await anyio.to_thread.run_sync(main, [*common, "--since", later, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["stores"] == {}
    until = format_ts(now)  # before every deletion: the sink ran after it
    assert await anyio.to_thread.run_sync(main, [*common, "--until", until, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["receipts"] == 0
    # A period that ends before it begins is a one-line error, status 2.
    args = [*common, "--since", later, "--until", format_ts(now)]
    assert await anyio.to_thread.run_sync(main, args) == 2
    assert "--until" in capsys.readouterr().err


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_an_erasure_a_hold_deferred_is_timed_from_its_request(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An erasure requested while a legal hold kept the record goes out at the release: its
    tombstone says when it was requested (expiry-erasure-requested-at), the store's receipt
    keeps it (``requested_at``, before the release), and ``deletions`` times the erasure
    from it, where from its tombstone's time it was ~0 s (a compliance audit's "without
    undue delay")."""
    cfg = tmp_path / "expiry.toml"
    retention = '[retention.defaults]\nconversation = "1h"\n'
    cfg.write_text(config_text(topics, str(tmp_path / "state"), retention))
    common = ["--config", str(cfg), "--bootstrap-servers", broker]
    config = config_for(topics, str(tmp_path / "state"), retention)
    place = ["hold", "place", *common, "--org", "acme", "--record-id", "c-1"]
    assert await anyio.to_thread.run_sync(main, [*place, "--reason", "case 11", "--id", "h"]) == 0
    asked = wall_clock_ms() - 10 * MINUTE  # the request's own time: ten minutes ago
    async with (
        open_store("sqlite", tmp_path, name="crm") as store,
        running_sink(store, sink_config(broker, topics)),
        running_service(config, broker) as service,
    ):
        await wait_for(lambda: len(service.holds) == 1)
        created = event("conversation", "c-1", ts=asked - MINUTE)
        erased = event("conversation", "c-1", op="delete", ts=asked, event_id="gdpr-11")
        await service_produce(broker, [(topics.conversations, *created)])
        await service_produce(broker, [(topics.conversations, *erased)])
        await wait_for(lambda: service.stats.verdicts["held"] >= 1)
        released_at = wall_clock_ms()
        assert await anyio.to_thread.run_sync(main, ["hold", "release", *common, "h"]) == 0
        [receipt] = await _receipts_published(broker, topics, 1)
    [tomb] = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 1)
    assert codec.erasure_requested_at_of(tomb.headers) == asked
    assert (receipt["reason"], receipt["rows_deleted"]) == ("explicit", 1)
    assert receipt["requested_at"] == format_ts(asked)  # the request's time, not the release's
    assert asked < released_at <= parse_ts(str(receipt["emitted_at"]))
    waited = (parse_ts(str(receipt["deleted_at"])) - asked) / 1000
    assert waited >= 10 * MINUTE / 1000

    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, ["deletions", *common, "--json"]) == 0
    crm = orjson.loads(capsys.readouterr().out)["stores"]["crm"]
    assert crm["by_reason"] == {"explicit": 1}
    assert crm["after_due_s"]["max"] < 60  # from its tombstone: no delay to speak of
    assert crm["after_request_s"] == {
        "p50": waited, "p99": waited, "max": waited, "max_key": created[0].decode(),
    }  # fmt: skip
    assert crm["request_unknown"] == 0
    assert await anyio.to_thread.run_sync(main, ["deletions", *common]) == 0
    text = capsys.readouterr().out
    assert f"    erasures, request to deletion: p50 {waited:,.3f} s, p99 {waited:,.3f} s" in text
    assert await anyio.to_thread.run_sync(main, ["deletions", *common, "--receipts"]) == 0
    [exported_] = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (exported_["requested_at"], exported_["request_event_id"]) == (
        format_ts(asked), "gdpr-11",
    )  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_rejected_lists_the_erasure_requests_the_service_dead_lettered(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An officer who must show that every erasure request was honoured has to find those
    that were not: an ``op: delete`` event the service dead-lettered (a bad timestamp, an
    unknown category) is carried out nowhere, and no receipt names it. ``deletions
    --rejected`` lists them from ``expiry.dlq``, with the reason and the record as far as
    the event can be read; an accepted erasure and a dead-lettered create are not in it,
    and a letter that is no JSON object (whose op cannot be read) is counted."""
    cfg = tmp_path / "expiry.toml"
    retention = '[retention.defaults]\nconversation = "1h"\n'
    cfg.write_text(config_text(topics, str(tmp_path / "state"), retention))
    config = config_for(topics, str(tmp_path / "state"), retention)
    common = ["deletions", "--config", str(cfg), "--bootstrap-servers", broker]
    before = wall_clock_ms()
    accepted = event("conversation", "c-ok", op="delete", event_id="gdpr-1")
    bad_ts = event("conversation", "c-ts", op="delete", ts="yesterday", event_id="gdpr-2")
    bad_category = event("Conversations", "c-cat", op="delete", bot="b1")
    bad_create = event("conversation", "c-new", ts="yesterday")
    async with running_service(config, broker):
        await service_produce(
            broker,
            [
                (topics.conversations, *m)
                for m in (accepted, bad_ts, bad_category, bad_create, (b"k", b"not json"))
            ],
        )
        letters = await read_topic(broker, topics.dlq, until=lambda r: len(r) >= 4)
        await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 1)
    assert len(letters) == 4
    # A dead letter published twice (rekey sends a batch again after a crash): one request.
    again = next(r for r in letters if r.value == bad_ts[1])
    async with producer(broker) as prod:
        headers = list(again.headers)
        await (await prod.send(topics.dlq, again.value, key=again.key, headers=headers))

    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, [*common, "--rejected", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert (report["dead_letters"], report["copies"], report["unreadable"]) == (5, 1, 1)
    listed = {r["record_id"]: r for r in report["rejected"]}
    assert sorted(listed) == ["c-cat", "c-ts"]  # not the accepted erasure, not the create
    ts = listed["c-ts"]
    assert (ts["error"], ts["org"], ts["bot"], ts["env"], ts["category"]) == (
        "bad_timestamp", "acme", "_", "live", "conversation",
    )  # fmt: skip
    assert (ts["ts"], ts["event_id"], ts["copies"]) == ("yesterday", "gdpr-2", 2)
    assert ts["detail"]
    said = {name: value.decode() for name, value in headers}
    where = f"[{said[codec.H_PARTITION]}]@{said[codec.H_OFFSET]}"
    assert ts["source"] == f"{topics.conversations}{where}"
    assert ts["key"] == bad_ts[0].decode()
    assert before <= parse_ts(ts["at"]) <= wall_clock_ms()
    assert (listed["c-cat"]["error"], listed["c-cat"]["category"]) == (
        "unknown_category", "Conversations",
    )  # fmt: skip

    # The text, oldest first; narrowed like the report (an unknown category is found by
    # the category it stands for, as `history` finds it).
    assert await anyio.to_thread.run_sync(main, [*common, "--rejected"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == (
        "rejected erasure requests, the beginning to now (by the time dead-lettered): "
        "2 of 5 dead letters, 1 copy of them counted once: never carried out"
    )
    assert (
        f"  {ts['at']}  bad_timestamp ({ts['detail']}): org=acme bot=_ env=live "
        "category=conversation record_id=c-ts; ts 'yesterday', event_id 'gdpr-2', at "
        f"{ts['source']} (dead-lettered 2 times, one request)" in text[1:3]
    )
    cat = listed["c-cat"]
    assert (
        f"  {cat['at']}  unknown_category ({cat['detail']}): org=acme bot=b1 env=live "
        f"category=Conversations record_id=c-cat; ts {cat['ts']!r}, at {cat['source']}" in text[1:3]
    )
    assert text[-1] == (
        "  1 dead letter of that period is not a JSON object (not JSON, or cut to fit the "
        "topic): whether it asked an erasure cannot be read"
    )
    narrowed = [*common, "--rejected", "--json", "--category", "conversation", "--bot", "b1"]
    assert await anyio.to_thread.run_sync(main, narrowed) == 0
    [only] = orjson.loads(capsys.readouterr().out)["rejected"]
    assert only["record_id"] == "c-cat"
    later = format_ts(wall_clock_ms() + MINUTE)
    assert await anyio.to_thread.run_sync(main, [*common, "--rejected", "--since", later]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "  none: no erasure request was dead-lettered in that period"
    ]
    # An export of receipts and a listing of rejected requests are two outputs: refused.
    assert await anyio.to_thread.run_sync(main, [*common, "--rejected", "--receipts"]) == 2
    assert "--rejected" in capsys.readouterr().err


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_the_report_says_how_many_erasure_requests_were_rejected_in_its_period(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report of the receipts said nothing of the erasure requests the service
    dead-lettered: an officer who did not know ``--rejected`` read a period with no
    erasure carried out, or every one carried out, as every request honoured. It now says
    how many were rejected in the period and the scope (as ``--rejected`` lists them) and
    points to ``--rejected``; JSON ``rejected_requests``, after the keys it had."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), ""))
    common = ["deletions", "--config", str(cfg), "--bootstrap-servers", broker]
    where = [(codec.H_TOPIC, topics.conversations.encode()), (codec.H_PARTITION, b"0")]
    letters = [
        (event("conversation", "c-ts", op="delete", ts="yesterday"), b"bad_timestamp"),
        (event("conversation", "c-b2", op="delete", ts="yesterday", bot="b2"), b"bad_timestamp"),
        (event("conversation", "c-new", ts="yesterday"), b"bad_timestamp"),  # not an erasure
    ]
    async with producer(broker) as prod:
        for i, ((key, value), error) in enumerate(letters):
            headers = [(codec.H_ERROR, error), *where, (codec.H_OFFSET, str(i).encode())]
            await (await prod.send(topics.dlq, value, key=key, headers=headers))

    assert await anyio.to_thread.run_sync(main, [*common, "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    keys = list(report)
    assert keys[-2:] == ["stores", "rejected_requests"]  # the keys before, in their order
    assert report["rejected_requests"] == 2
    assert await anyio.to_thread.run_sync(main, common) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[-1] == (
        "  2 erasure requests of that period were rejected (dead-lettered, never carried "
        "out): see stream-expiry deletions --rejected"
    )
    # Narrowed as --rejected narrows them; none in the period: nothing said, 0 in JSON.
    assert await anyio.to_thread.run_sync(main, [*common, "--bot", "b2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "  1 erasure request of that period was rejected (dead-lettered, never carried "
        "out): see stream-expiry deletions --rejected"
    )
    later = format_ts(wall_clock_ms() + MINUTE)
    assert await anyio.to_thread.run_sync(main, [*common, "--since", later]) == 0
    assert "rejected" not in capsys.readouterr().out
    assert await anyio.to_thread.run_sync(main, [*common, "--since", later, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["rejected_requests"] == 0

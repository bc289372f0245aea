"""``stream-expiry history`` answers an auditor's "what happened to record X?" from Kafka
alone: the hold on it, its stamps (never its data), the erasure the hold deferred, the
release, the null and the tombstone, and the store's receipt, in time order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from aiokafka import TopicPartition

from stream_expiry.archive import read_lines
from stream_expiry.cli import main
from stream_expiry.history import history, text_lines
from stream_expiry.kafka import consumer, producer
from stream_expiry.logs import record_ref
from stream_expiry.model import Identity
from stream_expiry.service import wall_clock_ms
from stream_expiry.timeutil import format_ts
from tests.conftest import TopicSet, read_topic, wait_for
from tests.integration.service_helpers import (
    archive_running,
    config_for,
    config_text,
    event,
    produce,
    running_service,
)
from tests.integration.sink_helpers import open_store, running_sink, sink_config, wait_until

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

SETTINGS = '[retention.defaults]\nconversation = "1h"\n\n[redact]\nconversation = ["user.email"]\n'
SECRET = "secret@example.com"


async def _cli(*argv: str) -> int:
    return await anyio.to_thread.run_sync(main, list(argv))


@pytest.mark.timeout(120)
async def test_history_tells_a_held_erasure_from_request_to_receipt_without_the_data(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), SETTINGS))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)
    config = config_for(topics, str(tmp_path / "state"), SETTINGS)
    who = ("--org", "acme", "--bot", "b1", "--category", "conversation", "--record-id", "r1")
    assert await _cli("hold", "place", *common, "--org", "acme", "--record-id", "r1",
                      "--reason", "case 7", "--id", "case-7") == 0  # fmt: skip
    data = {"user": {"email": SECRET, "name": "n"}}
    async with (
        open_store("sqlite", tmp_path, name="store-a") as store,
        running_sink(store, sink_config(broker, topics)),
        running_service(config, broker),
    ):
        t0 = wall_clock_ms()
        key, value = event("conversation", "r1", bot="b1", ts=t0, data=data)
        other = event("conversation", "r2", bot="b1", ts=t0, data=data)
        erase = event("conversation", "r1", bot="b1", ts=t0 + 1, op="delete")
        # An erasure request from a producer whose clock is ahead: dead-lettered, not done.
        ahead = event("conversation", "r1", bot="b1", ts=t0 + 3_600_000, op="delete", data=data)
        messages = [(key, value), other, erase, (b"producers-own-key", ahead[1])]
        await produce(broker, [(topics.conversations, *m) for m in messages])
        await read_topic(broker, topics.dlq, until=lambda r: len(r) >= 1)
        await read_topic(broker, topics.audit, until=lambda r: len(r) >= 2)  # placed, deferred
        assert await _cli("hold", "release", *common, "case-7") == 0
        (published,) = await read_topic(broker, topics.receipts, until=lambda r: len(r) >= 1)
    # A sink that crashed after publishing publishes the same receipt again (at least once).
    await produce(broker, [(topics.receipts, published.key, published.value)])
    capsys.readouterr()

    found = await history(config, broker, Identity("acme", "b1", "live", "conversation", "r1"))
    kinds = [e["kind"] for e in found.events]
    assert kinds[0] == "hold_placed"
    for before, after in [
        ("hold_placed", "deletion_deferred"),
        ("deletion_deferred", "hold_released"),
        ("hold_released", "tombstone"),
        ("tombstone", "receipt"),
    ]:
        assert kinds.index(before) < kinds.index(after), kinds
    assert sorted(set(kinds)) == sorted(
        ["hold_placed", "stamp", "deletion_deferred", "hold_released", "deleted",
         "tombstone", "receipt", "dead_letter"]
    )  # fmt: skip
    (dead,) = [e for e in found.events if e["kind"] == "dead_letter"]
    assert (dead["op"], dead["error"]) == ("delete", "future_timestamp")
    (receipt,) = [e for e in found.events if e["kind"] == "receipt"]
    assert receipt["copies"] == 2  # one receipt, published twice
    assert (receipt["store"], receipt["reason"], receipt["rows_deleted"]) == (
        "store-a",
        "explicit",
        1,
    )
    (tombstone,) = [e for e in found.events if e["kind"] == "tombstone"]
    assert tombstone["reason"] == "explicit"
    stamps = [e for e in found.events if e["kind"] == "stamp"]
    assert stamps[0]["redacted"] == ["user.email"]
    assert any(s.get("erase_requested_at") for s in stamps)
    assert "r2" not in orjson.dumps(found.as_dict()).decode()  # its own key only
    assert found.holds == []  # released

    assert await _cli("history", *common, *who) == 0
    text = capsys.readouterr().out
    assert text.splitlines() == text_lines(found.as_dict())
    # How log lines name it (never by its ids): the ref a user greps the logs for.
    assert found.as_dict()["log_ref"] == record_ref(found.key)
    assert f"(in log lines: record={record_ref(found.key)})" in text.splitlines()[0]
    assert "deletion deferred by case-7" in text
    assert "(published 2 times, one receipt)" in text
    assert await _cli("history", *common, *who, "--json") == 0
    printed = capsys.readouterr().out
    assert orjson.loads(printed) == found.as_dict()
    for out in (text, printed):
        assert SECRET not in out
        assert "name" not in out  # no data at all, redacted or not
    assert '"data"' not in printed


@pytest.mark.timeout(90)
async def test_history_names_the_erasure_request_that_deleted_a_record(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Which request deleted it: the tombstone and the null carry the request's event id
    and where it was produced, and history shows them (an auditor matched a request to
    its deletion by times alone)."""
    config = config_for(topics, str(tmp_path / "state"), SETTINGS)
    async with running_service(config, broker):
        t0 = wall_clock_ms()
        created = event("conversation", "r1", ts=t0)
        erase = event("conversation", "r1", ts=t0 + 1, op="delete", event_id="gdpr-2026-118")
        await produce(broker, [(topics.conversations, *m) for m in (created, erase)])
        (tomb,) = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 1)
        stamped = await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 2)
    (null,) = [r for r in stamped if r.value is None]
    for rec in (tomb, null):
        headers = dict(rec.headers)
        assert headers["expiry-request-event-id"] == b"gdpr-2026-118"
        assert headers["expiry-request"].decode().startswith(f"{topics.conversations}[")
    found = await history(config, broker, Identity("acme", "_", "live", "conversation", "r1"))
    said = {e["kind"]: e for e in found.events if e["kind"] in ("tombstone", "deleted")}
    for kind in ("tombstone", "deleted"):
        assert said[kind]["request_event_id"] == "gdpr-2026-118"
        assert said[kind]["request"] == headers["expiry-request"].decode()
    lines = text_lines(found.as_dict())
    assert sum("the erasure request event_id 'gdpr-2026-118' at" in line for line in lines) == 2


@pytest.mark.timeout(90)
async def test_history_shows_an_erasure_rejected_for_how_it_named_the_record(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An erasure request sent with category "Conversation", or with "recordId" for
    record_id, is dead-lettered and carried out nowhere; history of the record showed
    neither, so the record read as one never asked to be erased (a trial). Both are the
    record's, with how they named it; another record's, and an event in another
    (configured) category, are not."""
    config = config_for(topics, str(tmp_path / "state"), SETTINGS)
    t0 = wall_clock_ms()
    erasures = [
        event("Conversation", "r1", ts=t0 + 1, op="delete", event_id="by-category"),
        event("conversations", "r2", ts=t0 + 1, op="delete", event_id="other-record"),
    ]
    by_field = orjson.loads(event("conversation", "r1", ts=t0 + 2, op="delete")[1])
    by_field["recordId"] = by_field.pop("record_id")
    by_field["event_id"] = "by-field"
    session = orjson.loads(event("session", "r1", ts=t0 + 3, op="delete")[1])
    session["recordId"] = session.pop("record_id")
    async with running_service(config, broker):
        sent = [event("conversation", "r1", ts=t0), *erasures]
        sent += [(b"r1", orjson.dumps(by_field)), (b"r1", orjson.dumps(session))]
        await produce(broker, [(topics.conversations, *m) for m in sent])
        await read_topic(broker, topics.dlq, until=lambda r: len(r) >= 4)
    found = await history(config, broker, Identity("acme", "_", "live", "conversation", "r1"))
    letters = [e for e in found.events if e["kind"] == "dead_letter"]
    assert sorted((e["event_id"], e["error"], e["named_as"]) for e in letters) == [
        ("by-category", "unknown_category", {"category": "Conversation"}),
        ("by-field", "missing_field", {"recordId": "r1"}),
    ]
    lines = text_lines(found.as_dict())
    assert sum("it names this record as category 'Conversation'" in line for line in lines) == 1
    assert sum("it names this record as recordId 'r1'" in line for line in lines) == 1


@pytest.mark.timeout(90)
async def test_history_of_the_wrong_bot_names_where_the_record_id_is(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Asked without --bot about a record of bot b1, history found nothing and said only
    "check --bot" (a trial): it now names the bot and env the record id is under."""
    config = config_for(topics, str(tmp_path / "state"), SETTINGS)
    async with running_service(config, broker):
        await produce(broker, [(topics.conversations, *event("conversation", "r9", bot="b1"))])
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 1)
    found = await history(config, broker, Identity("acme", "_", "live", "conversation", "r9"))
    assert found.events == []
    assert found.as_dict()["same_id_elsewhere"] == [
        {"org": "acme", "bot": "b1", "env": "live", "erased": False}
    ]
    lines = text_lines(found.as_dict())
    assert "under --bot 'b1' --env 'live'" in "\n".join(lines)
    right = await history(config, broker, Identity("acme", "b1", "live", "conversation", "r9"))
    assert right.events
    assert right.elsewhere == []


async def test_history_says_why_a_late_deletion_was_late(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An event produced after its record's expiry (the contract's "already due at
    ingest"): its tombstone and null say the cause, ``expiry-late-cause: late_event`` (the
    event came late, not the service), and history shows it; an on-time tombstone says
    none (the values stay the contract's). Its stamp says the life was due on arrival."""
    config = config_for(topics, str(tmp_path / "state"), SETTINGS)
    async with running_service(config, broker):
        t0 = wall_clock_ms()
        late = event("conversation", "late", ts=t0 - 2 * 3_600_000)
        erased = event("conversation", "erased", ts=t0, op="delete")
        await produce(broker, [(topics.conversations, *m) for m in (late, erased)])
        tombs = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 2)
        stamped = await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 3)
    by_id = {orjson.loads(r.value)["record_id"]: r for r in tombs}
    (null,) = [r for r in stamped if r.value is None and r.key == by_id["late"].key]
    for rec in (by_id["late"], null):
        assert dict(rec.headers)["expiry-late-cause"] == b"late_event"
    assert "expiry-late-cause" not in dict(by_id["erased"].headers)
    assert set(orjson.loads(by_id["late"].value)) == {
        "org", "bot", "env", "category", "record_id", "created_at", "expires_at", "emitted_at",
        "reason", "ttl_source", "ttl_seconds",
    }  # fmt: skip
    found = await history(config, broker, Identity("acme", "_", "live", "conversation", "late"))
    said = {e["kind"]: e for e in found.events if e["kind"] in ("tombstone", "deleted")}
    assert said["tombstone"]["late_cause"] == said["deleted"]["late_cause"] == "late_event"
    lines = text_lines(found.as_dict())
    assert sum("; late (late_event: the event that made it due came" in ln for ln in lines) == 2
    # Its stamp says the life was due on arrival (``expiry-due-at-ingest``), as a restore
    # reads it: the header is the stamp's expiry.
    (stamp,) = [e for e in found.events if e["kind"] == "stamp"]
    assert stamp["due_at_ingest"] == stamp["expires_at"]
    assert sum("due on arrival: its life's expiry had passed" in ln for ln in lines) == 1


@pytest.mark.timeout(150)
async def test_history_of_a_hold_placed_after_an_erasure_says_the_archive_kept_its_lines(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record erased, then a hold placed on it: `archive purge` kept the erased line
    under the hold (the README's rule), and `history` said the hold matched the key
    "but no life of the record ran while it held", which an auditor read as a hold that
    kept nothing (a trial). It says the hold kept no life in the service, and that the
    purge keeps an erased record's archive lines while a hold matches it (history does
    not read the archive: which lines it had is the archive's)."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), SETTINGS))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)
    config = config_for(topics, str(tmp_path / "state"), SETTINGS)
    archive_dir = tmp_path / "archive"
    t0 = wall_clock_ms()
    created = event("conversation", "r1", ts=t0, data={"text": "evidence"})
    erased = event("conversation", "r1", ts=t0 + 1, op="delete")

    def archived(kind: str) -> bool:
        paths = archive_dir.glob("*/*.jsonl.gz")
        return any(kind in line for path in paths for line in read_lines(str(path)))

    async with (
        running_service(config, broker),
        archive_running(broker, archive_dir, topics, f"{topics.prefix}-archive"),
    ):
        await produce(broker, [(topics.conversations, *m) for m in (created, erased)])
        await wait_for(lambda: archived("stamp") and archived("erased_at"), timeout_s=60)
    assert await _cli("hold", "place", *common, "--org", "acme", "--record-id", "r1",
                      "--reason", "case 8", "--id", "case-8") == 0  # fmt: skip
    capsys.readouterr()
    assert await _cli("archive", "purge", "--dir", str(archive_dir), *common) == 0
    assert "1 erased line kept under a legal hold" in capsys.readouterr().out
    who = ("--org", "acme", "--category", "conversation", "--record-id", "r1")
    assert await _cli("history", *common, *who) == 0
    (held,) = [x for x in capsys.readouterr().out.splitlines() if "hold case-8" in x]
    assert held.endswith(
        " (its scope matches this key, but no life of the record ran "
        "while it held: it kept no life in the service; the record was erased before, and "
        "`archive purge` keeps an erased record's archive lines while a hold matches it, "
        "so an archive that still had them kept them)"
    )
    assert await _cli("history", *common, *who, "--json") == 0
    (placed,) = [e for e in orjson.loads(capsys.readouterr().out)["events"]
                 if e["kind"] == "hold_placed"]  # fmt: skip
    assert (placed["kept_a_life"], placed["erased_before"]) == (False, True)


@pytest.mark.timeout(120)
async def test_a_held_lifes_data_stays_in_the_store_until_the_release_and_history_says_so(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A life a legal hold kept, then the record's next life. A store keeps one row per
    record, and the next life's stamp replaced the held life's row: its data was gone
    from the store while the hold was in force, and its receipt (written at the release)
    said ``deleted_at`` the time of that write, inside the hold, which `history` showed
    as a replacement (JSON ``replaced_by_next_life``). The store now keeps the held life's
    row aside (``held_lives``) until the release, whose tombstone deletes it: the receipt
    is dated at the release, and `history` shows a plain deletion."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), SETTINGS))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)
    config = config_for(topics, str(tmp_path / "state"), SETTINGS)
    assert await _cli("hold", "place", *common, "--org", "acme", "--record-id", "r1",
                      "--reason", "case 9", "--id", "case-9") == 0  # fmt: skip
    identity = Identity("acme", "_", "live", "conversation", "r1")
    t0 = wall_clock_ms()
    async with (
        open_store("sqlite", tmp_path, name="store-a") as store,
        running_sink(store, sink_config(broker, topics)),
        running_service(config, broker),
    ):
        # Due on arrival (created two hours ago, kept an hour): the hold defers it.
        held = event("conversation", "r1", ts=t0 - 2 * 3_600_000, data={"n": 1})
        other = event("conversation", "r2", ts=t0, data={"n": 1})
        erased = event("conversation", "r2", ts=t0 + 1, op="delete")
        await produce(broker, [(topics.conversations, *m) for m in (held, other, erased)])
        await read_topic(broker, topics.audit, until=lambda r: len(r) >= 2)  # placed, deferred
        await produce(broker, [(topics.conversations, *event("conversation", "r1", ts=t0))])

        async def next_life_written() -> bool:
            row = await store.get(identity)
            return row is not None and row.created_at == t0

        await wait_until(next_life_written, what="the next life's row")
        # While the hold is in force, the held life's data is in the store, beside.
        assert [(r.created_at, r.data) for r in await store.held_lives(identity)] == [
            (t0 - 2 * 3_600_000, '{"n":1}')
        ]
        assert await _cli("hold", "release", *common, "case-9") == 0
        await read_topic(broker, topics.receipts, until=lambda r: len(r) >= 2)
        assert await store.held_lives(identity) == []
        row = await store.get(identity)
        assert row is not None
        assert row.created_at == t0  # the next life stays
    found = await history(config, broker, identity)
    (receipt,) = [e for e in found.events if e["kind"] == "receipt"]
    assert receipt["created_at"] == format_ts(t0 - 2 * 3_600_000)
    assert receipt["deleted_at"] >= receipt["emitted_at"]  # the data went at the release
    assert "replaced_by_next_life" not in receipt
    lines = text_lines(found.as_dict())
    (said,) = [line for line in lines if "  receipt  " in line]
    assert "replaced" not in said
    erased_receipt = await history(
        config, broker, Identity("acme", "_", "live", "conversation", "r2")
    )
    (plain,) = [e for e in erased_receipt.events if e["kind"] == "receipt"]
    assert "replaced_by_next_life" not in plain


@pytest.mark.timeout(90)
async def test_history_shows_an_erasure_request_the_service_has_not_read_yet(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An erasure request still on an input topic (the service stopped or behind) was in
    no evidence topic, and history said nothing of it: a compliance officer who sent it
    could not tell "not read yet" from "lost" (a trial). Now history lists the record's
    unread input events, what each asks and where it waits, never its data; once the
    service reads them they are evidence like any other, and no longer listed as unread."""
    config = config_for(topics, str(tmp_path / "state"), SETTINGS)
    r1 = Identity("acme", "_", "live", "conversation", "r1")
    t0 = wall_clock_ms()
    async with running_service(config, broker):
        await produce(broker, [(topics.conversations, *event("conversation", "r1", ts=t0))])
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 1)
    # The service stopped (its offsets committed): an erasure and another record's event.
    erase = event("conversation", "r1", ts=t0 + 1, op="delete", event_id="gdpr-7")
    other = event("conversation", "r2", ts=t0 + 2, data={"user": {"email": SECRET}})
    await produce(broker, [(topics.conversations, *m) for m in (erase, other)])
    found = await history(config, broker, r1)
    unread = [e for e in found.events if e["kind"] == "unread_input"]
    assert len(unread) == 1, found.events
    (u,) = unread
    assert (u["op"], u["event_id"], u["source"].startswith(f"{topics.conversations}[")) == (
        "delete",
        "gdpr-7",
        True,
    )
    assert u["group_offset"] is not None  # the service read this partition before
    text = "\n".join(text_lines(found.as_dict()))
    assert "an erasure request (ts " in text
    assert "event_id 'gdpr-7') at " in text
    assert "not read by the service yet" in text
    assert SECRET not in orjson.dumps(found.as_dict()).decode()
    # Read by the service, it is carried out, and no longer unread.
    async with running_service(config, broker):
        await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 1)
    found = await history(config, broker, r1)
    assert [e for e in found.events if e["kind"] == "unread_input"] == []
    assert any(e["kind"] == "tombstone" for e in found.events)


@pytest.mark.timeout(60)
async def test_history_of_an_overdue_record_says_whether_the_archive_has_its_stamp(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Why is an overdue record still there? With ``[archive] required`` history said "the
    archive has not written its latest stamp yet, or the service is stopped or behind"
    (a trial), for ``status`` to tell which, where a count of records waiting for the
    archive names none. The archive group's committed offset on the stamp's partition
    says it: not written until the group has committed past the stamp, then the service."""
    group = f"{topics.prefix}-archive"
    settings = f'[archive]\nrequired = true\ngroup_id = "{group}"\n'
    config = config_for(topics, str(tmp_path / "state"), settings)
    identity = Identity("acme", "b1", "live", "conversation", "r1")
    stamp: dict[str, Any] = {"org": "acme", "bot": "b1", "env": "live", "category": "conversation"}
    stamp |= {"record_id": "r1", "created_at": "2026-12-01T00:00:00.000Z"}
    stamp |= {"expires_at": "2026-12-01T01:00:00.000Z", "ttl_seconds": 3600}
    stamp["ttl_source"] = "default"
    async with producer(broker) as prod:
        await prod.send_and_wait(
            topics.stamped, orjson.dumps(stamp), identity.key.encode(), partition=1
        )
        ack = await prod.send_and_wait(
            topics.stamped, orjson.dumps(stamp), identity.key.encode(), partition=1
        )
    waiting = await history(config, broker, identity)
    assert waiting.open_life is not None
    assert waiting.open_life["archive"] == {"group": group, "written": False}
    assert text_lines(waiting.as_dict())[-2].endswith(
        f"no active hold keeps it: it waits for the archive (group '{group}'), which has not "
        "written its latest stamp yet ([archive] required): check that `stream-expiry "
        "archive` runs"
    )
    tp = TopicPartition(topics.stamped, 1)
    async with consumer(broker, group_id=group) as cons:
        cons.assign([tp])
        await cons.commit({tp: ack.offset})  # the first stamp written, not the latest
        first = (await history(config, broker, identity)).open_life
        assert first is not None
        assert first["archive"]["written"] is False
        await cons.commit({tp: ack.offset + 1})
    written = await history(config, broker, identity)
    assert written.open_life is not None
    assert written.open_life["archive"] == {"group": group, "written": True}
    assert text_lines(written.as_dict())[-2].endswith(
        "no active hold keeps it and the archive has it: the service is stopped or behind; "
        "`stream-expiry status` says which (overdue, lag)"
    )
    # Without [archive] required the archive is not asked, and not named as a cause.
    plain = await history(config_for(topics, str(tmp_path / "state")), broker, identity)
    assert plain.open_life is not None
    assert plain.open_life["archive"] is None
    assert (
        "no archive is required: the service is stopped or behind"
        in text_lines(plain.as_dict())[-2]
    )

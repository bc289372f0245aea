"""examples/tombstone_consumer.py, the README's own-consumer rules as code, against the
service on the real broker: what it reads of each tombstone (fields, headers) must be what
the service emits, or an integrator who starts from it deletes the wrong lives or none.

One run covers the README's cases: an expiry of a record whose event gave no ``bot`` or
``env`` (matched by their defaults), an erasure of a record created again just after it
(the new life stays), an erasure of a record never seen (a receipt with 0 rows and the
request's headers), and every tombstone read a second time, as after a crash of the service
(no second receipt, the first stands).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

from stream_expiry.service import wall_clock_ms
from tests.conftest import read_all
from tests.integration.service_helpers import config_for, event, produce, running_service

if TYPE_CHECKING:
    from types import ModuleType

    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tombstone_consumer.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tombstone_consumer", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_life(
    db_path: Path,
    ids: tuple[str, str, str, str, str],
    created_at: int,
    previous_deleted_at: int | None = None,
) -> None:
    """The platform's own write of a life, with the ``ts`` its create event carried and the
    ``previous_deleted_at`` its stamp on ``expiry.stamped`` says (the example's table)."""
    with sqlite3.connect(db_path) as db:
        db.execute(
            "INSERT INTO lives VALUES (?, ?, ?, ?, ?, ?, 'payload', ?)",
            (*ids, created_at, previous_deleted_at),
        )


def lives(db_path: Path) -> set[tuple[str, int]]:
    with sqlite3.connect(db_path) as db:
        return set(db.execute("SELECT record_id, created_at FROM lives").fetchall())


@pytest.mark.timeout(90)
async def test_the_example_consumer_deletes_the_lives_each_tombstone_ends(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    example = load_example()
    db_path = tmp_path / "app.db"
    example.open_store(str(db_path)).close()
    now = wall_clock_ms()
    # An expiry: the producer gave no bot or env; the platform stored their defaults.
    defaults = orjson.dumps(
        {"category": "conversation", "org": "acme", "record_id": "c-ttl", "ts": now - 1_000}
    )
    write_life(db_path, ("acme", "_", "live", "conversation", "c-ttl"), now - 1_000)
    # An erasure, then the record created again: its new life must stay.
    erase = [
        event("error", "e-again", ts=now - 2_000),
        event("error", "e-again", op="delete", ts=now - 1_000, event_id="gdpr-1"),
        event("error", "e-again", ts=now),
    ]
    write_life(db_path, ("acme", "_", "live", "error", "e-again"), now - 2_000)
    # The next life's stamp says the erasure that ended the one before (checked below):
    # the example's table keeps it, which keeps a next life out of an erasure's window
    # (that of a life a create read late moved back; this one has none).
    write_life(db_path, ("acme", "_", "live", "error", "e-again"), now, now - 1_000)
    never = event("conversation", "c-never", op="delete", ts=now, event_id="gdpr-2")
    await produce(
        broker,
        [
            (topics.conversations, b"c-ttl", defaults),
            *((topics.errors, k, v) for k, v in erase),
            (topics.conversations, *never),
        ],
    )
    config = config_for(
        topics,
        str(tmp_path / "state"),
        '[retention.defaults]\nconversation = "2s"\nerror = "1h"\n',
    )
    stop = asyncio.Event()
    receipts: list[Any] = []
    async with running_service(config, broker), anyio.create_task_group() as tg:

        async def consume() -> None:
            await example.run(
                broker,
                str(db_path),
                group=f"{topics.prefix}-mine",
                tombstones=topics.tombstones,
                receipts=topics.receipts,
                stop=stop,
            )

        tg.start_soon(consume)
        with anyio.fail_after(40):
            while len(receipts) < 3:
                await anyio.sleep(0.2)
                receipts = await read_all(broker, topics.receipts)
        stop.set()

    assert lives(db_path) == {("e-again", now)}
    stamps = [orjson.loads(r.value) for r in await read_all(broker, topics.stamped) if r.value]
    again = [s for s in stamps if s["record_id"] == "e-again" and s["created_at"] is not None]
    assert [s.get("previous_deleted_at") is not None for s in again] == [False, True]
    by_id = {orjson.loads(r.value)["record_id"]: (orjson.loads(r.value), dict(r.headers)) for r in receipts}  # fmt: skip
    assert sorted(by_id) == ["c-never", "c-ttl", "e-again"]
    assert by_id["c-ttl"][0]["rows_deleted"] == 1
    assert by_id["c-ttl"][0]["reason"] == "ttl"
    assert by_id["e-again"][0]["rows_deleted"] == 1
    assert by_id["e-again"][1]["expiry-request-event-id"] == b"gdpr-1"
    assert by_id["c-never"][0]["rows_deleted"] == 0
    assert by_id["c-never"][0]["created_at"] is None
    assert by_id["c-never"][1]["expiry-request-event-id"] == b"gdpr-2"
    assert len({body["receipt_id"] for body, _ in by_id.values()}) == 3

    # Every tombstone read again (the service re-sends after a crash, with a new
    # emitted_at): no second receipt, nothing more deleted.
    tombstones = await read_all(broker, topics.tombstones)
    db = example.open_store(str(db_path))
    for rec in tombstones:
        body = orjson.loads(rec.value) | {"emitted_at": "2099-01-01T00:00:00.000Z"}
        example.apply(db, rec.key, orjson.dumps(body), list(rec.headers))
    db.commit()
    assert db.execute("SELECT count(*), sum(published) FROM receipts").fetchone() == (3, 3)
    db.close()
    assert lives(db_path) == {("e-again", now)}

"""Delete what expiry.tombstones names from a store of your own, and publish receipts.

The README's "Consuming `expiry.tombstones` in your own service", as code to start from
(tests/integration/test_example_consumer.py runs it against the service):

* a consumer group of its own, from the earliest offset, auto-commit off: a batch's offsets
  are committed once the store has committed its deletions and the receipts are sent;
* a tombstone deletes the lives it ends, not the record id: those created at or before its
  header ``expiry-deleted-at`` (epoch ms) for an erasure; for an expiry, those created at
  or before its ``created_at``; and, when the tombstone names a life, for an expiry
  those created before that expiry (its header plus one), for an erasure that says
  ``expiry-erasure-read-at`` those created up to its header ``expiry-first-created-at``
  (a life a create read late moved back; none more without it),
  that did not begin after an end of its
  life (their
  ``previous_deleted_at`` none, or before its ``created_at``); before its ``expires_at``
  without that header (a held life let go while the record lives on); matched by the
  five ids as the tombstone gives them
  (``bot`` ``_`` and ``env`` ``live`` when the event gave none);
* one receipt per deletion on ``expiry.receipts``, keyed by the record key, its id derived
  from the deletion (store, key, reason, created_at, the bound), so a re-sent tombstone
  (the service sends again after a crash, with a new ``emitted_at``) is the same receipt;
  kept in the store's transaction and published from there, so a crash between the two
  publishes the receipt of the first reading, not one saying 0 rows; none for an erasure
  naming no life (``created_at`` null) of a record whose deletion is on record already;
* the tombstone's ``expiry-request``, ``expiry-request-event-id`` and ``expiry-late-cause``
  headers passed on with the receipt, where ``stream-expiry history`` reads them.

Your store here is one SQLite table, ``lives``: a row per life of a record, with its
creation time (the ``ts`` of the event that started it, epoch ms) and the
``previous_deleted_at`` of its stamp on ``expiry.stamped`` (epoch ms; NULL when the stamp has
none). Put your own in its place.

    python examples/tombstone_consumer.py --bootstrap-servers 127.0.0.1:9092 --db app.db
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

STORE = "my-store"
PASSED_ON = ("expiry-request", "expiry-request-event-id", "expiry-late-cause")
IDS = "org = ? AND bot = ? AND env = ? AND category = ? AND record_id = ?"

SCHEMA = """
CREATE TABLE IF NOT EXISTS lives (org TEXT, bot TEXT, env TEXT, category TEXT,
    record_id TEXT, created_at INTEGER, data TEXT, previous_deleted_at INTEGER,
    PRIMARY KEY (org, bot, env, category, record_id, created_at));
CREATE TABLE IF NOT EXISTS receipts (receipt_id TEXT PRIMARY KEY, key BLOB, org TEXT,
    bot TEXT, env TEXT, category TEXT, record_id TEXT, body TEXT, headers TEXT,
    published INTEGER DEFAULT 0);
"""


def open_store(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    return db


def epoch_ms(ts: str) -> int:
    """A tombstone's time (RFC 3339 UTC with milliseconds and Z) in epoch milliseconds."""
    return round(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{ms % 1000:03d}Z"
    )


def last_creation_ended(body: dict[str, Any], headers: dict[str, str]) -> int:
    """The latest creation time (epoch ms) of the lives the tombstone ends whatever else
    they say. A ``ttl`` one ends its own life (``created_at``) and those before, and of the
    lives created before its expiry only those :func:`life_window` takes in: a create dated
    after an erasure, both read after the expiry fired, starts the next life before that
    expiry."""
    if "expiry-deleted-at" in headers:
        if body["reason"] == "ttl" and body["created_at"] is not None:
            return epoch_ms(body["created_at"])
        return int(headers["expiry-deleted-at"])
    return epoch_ms(body["expires_at"]) - 1  # a held life: those created before its expiry


def life_window(body: dict[str, Any], headers: dict[str, str]) -> tuple[int, int] | None:
    """The other lives a tombstone with the header that names a life ends, as ``(before,
    floor)``: those created before ``before`` (a ``ttl`` one's expiry, its header plus one;
    an erasure's ``expiry-first-created-at`` plus one, when it says that and
    ``expiry-erasure-read-at``: the versions that write it say every next life's floor)
    whose ``previous_deleted_at`` is none or before its ``created_at`` (``floor``). Not an
    erasure's ``expires_at``: a record created again after the service forgot the
    erasure (a grace after that expiry), by a create dated before it, says no floor, and
    is live. They are its own life's too: a create dated before a
    life's creation, read late, moves that creation back, so data you wrote for the life's
    first create is dated after the ``created_at`` the tombstone names, and after an
    erasure's time when the erasure came between the two. A life that began after an end
    of its life (an erasure, read late or not) says that end, at or after its
    ``created_at``, in its stamp's ``previous_deleted_at``: the next life."""
    if body["created_at"] is None or "expiry-deleted-at" not in headers:
        return None
    if body["reason"] == "ttl":
        return int(headers["expiry-deleted-at"]) + 1, epoch_ms(body["created_at"])
    if "expiry-erasure-read-at" not in headers:
        return None  # an earlier version's erasure: its next life may not say its floor
    first = headers.get("expiry-first-created-at")  # only if a create moved it back
    return None if first is None else (int(first) + 1, epoch_ms(body["created_at"]))


def apply(db: sqlite3.Connection, key: bytes, value: bytes, raw: list[tuple[str, bytes]]) -> str:
    """Delete the lives one tombstone ends and record its receipt, in the open transaction;
    return a line that says what it did, for the consumer's output."""
    body = json.loads(value)
    headers = {name: v.decode("utf-8", "replace") for name, v in raw}
    ids = (body["org"], body["bot"], body["env"], body["category"], body["record_id"])
    bound = last_creation_ended(body, headers)
    deletion = [STORE, key.decode(), body["reason"], body["created_at"], bound]
    receipt_id = hashlib.sha256(json.dumps(deletion).encode()).hexdigest()[:32]
    before, floor = life_window(body, headers) or (bound, bound)  # no window: nothing more
    rows = db.execute(
        f"DELETE FROM lives WHERE {IDS} AND (created_at <= ? OR (created_at < ? "
        "AND (previous_deleted_at IS NULL OR previous_deleted_at < ?)))",
        (*ids, bound, before, floor),
    )
    said = f"{key.decode()}: {body['reason']} tombstone emitted {body['emitted_at']}"
    if db.execute("SELECT 1 FROM receipts WHERE receipt_id = ?", (receipt_id,)).fetchone():
        return f"{said}: read again, its receipt stands"  # from the first reading
    deleted = 1 if rows.rowcount else 0
    on_record = db.execute(f"SELECT 1 FROM receipts WHERE {IDS}", ids).fetchone()
    if not deleted and body["created_at"] is None and on_record:
        # an erasure after the life's end, which this store deleted already
        return f"{said}: deleted already, no receipt"
    receipt = {
        "receipt_id": receipt_id, "store": STORE, "key": key.decode(),
        **{f: body[f] for f in ("org", "bot", "env", "category", "record_id", "reason")},
        "rows_deleted": deleted,
        **{f: body[f] for f in ("created_at", "expires_at", "ttl_seconds", "ttl_source")},
        "emitted_at": body["emitted_at"], "deleted_at": rfc3339(int(time.time() * 1000)),
    }  # fmt: skip
    passed = [[name, headers[name]] for name in PASSED_ON if name in headers]
    db.execute(
        "INSERT INTO receipts (receipt_id, key, org, bot, env, category, record_id, body,"
        " headers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (receipt_id, key, *ids, json.dumps(receipt), json.dumps(passed)),
    )
    return f"{said}: {rows.rowcount} row(s) deleted, receipt {receipt_id}"


async def publish_receipts(db: sqlite3.Connection, producer: AIOKafkaProducer, topic: str) -> None:
    """Send every receipt not sent yet, and mark them sent once the broker has them all."""
    waiting = db.execute(
        "SELECT receipt_id, key, body, headers FROM receipts WHERE published = 0"
    ).fetchall()
    sends = [
        await producer.send(
            topic, body.encode(), key=key, headers=[(n, v.encode()) for n, v in json.loads(hs)]
        )
        for _, key, body, hs in waiting
    ]
    await asyncio.gather(*sends)
    sent = [(receipt_id,) for receipt_id, *_ in waiting]
    db.executemany("UPDATE receipts SET published = 1 WHERE receipt_id = ?", sent)
    db.commit()


async def run(
    bootstrap: str,
    db_path: str,
    *,
    group: str = "my-store",
    tombstones: str = "expiry.tombstones",
    receipts: str = "expiry.receipts",
    stop: asyncio.Event | None = None,
) -> None:
    db = open_store(db_path)
    consumer = AIOKafkaConsumer(
        tombstones, bootstrap_servers=bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    try:
        await publish_receipts(db, producer, receipts)  # what a crash left unsent
        while stop is None or not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for m in messages:
                    print(apply(db, m.key, m.value, list(m.headers)), flush=True)
            db.commit()
            await publish_receipts(db, producer, receipts)
            if batch:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--db", required=True, help="the SQLite file of your store")
    parser.add_argument("--group-id", default="my-store")
    args = parser.parse_args()
    try:
        asyncio.run(run(args.bootstrap_servers, args.db, group=args.group_id))
    except KeyboardInterrupt:  # Ctrl-C: run() closed its clients and the store; no traceback
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()

"""Upstream producers that write in transactions (Kafka Streams, Debezium: exactly-once),
against the real broker: the service acts on committed events and policy updates only.

The transactions are written with confluent-kafka (librdkafka): aiokafka's transactional
producer cannot start on the test broker (../shared/BROKER.md), librdkafka's can. The test
broker keeps a transaction still open out of a ``read_committed`` read (its last stable
offset), which these tests check; it does not list aborted transactions in its fetch
answers, so aborted records reach every client there, aiokafka's and librdkafka's alike:
that part is checked on a constructed answer (tests/unit/test_fetch_ranges.py) and with
aiokafka's own filter on Kafka.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
from confluent_kafka import Producer

from stream_expiry.kafka import consumer, read_to_end
from stream_expiry.policy import scope_key
from tests.conftest import TopicSet, read_topic, wait_for
from tests.integration.service_helpers import config_for, event, produce, running_service

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

RETENTION = '[retention.defaults]\nconversation = "1h"\nerror = "1h"\n'


@contextlib.contextmanager
def transactional(broker: str, name: str) -> Iterator[Producer]:
    """An exactly-once upstream producer, its transactions initialised."""
    prod = Producer({"bootstrap.servers": broker, "transactional.id": name, "linger.ms": 0})
    prod.init_transactions(20)
    try:
        yield prod
    finally:
        prod.flush(10)


async def in_thread(call: Any, *args: Any) -> Any:
    """librdkafka's blocking calls (flush, commit) off the event loop the service runs on."""
    return await anyio.to_thread.run_sync(call, *args)


def stamped_ids(records: list[Any]) -> dict[str, dict[str, Any]]:
    bodies = [orjson.loads(r.value) for r in records if r.value is not None]
    return {b["record_id"]: b for b in bodies}


async def test_events_of_an_open_transaction_are_acted_on_once_it_commits(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A delete and a create in a transaction still open are not data yet: read
    uncommitted, the delete erased the record at once (and a later abort could not take
    it back). Once the transaction commits, both are acted on."""
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    async with running_service(config, broker) as service:
        await produce(broker, [(topics.conversations, *event("conversation", "kept"))])
        await wait_for(lambda: service.stats.stamped >= 1)
        with transactional(broker, f"{topics.prefix}-tx") as upstream:
            upstream.begin_transaction()
            for record_id, op in (("kept", "delete"), ("new", "create")):
                key, value = event("conversation", record_id, op=op)
                upstream.produce(topics.conversations, key=key, value=value)
            assert await in_thread(upstream.flush, 10) == 0  # on the broker, not committed
            # Sent after the open transaction's events, on a topic the transaction does
            # not touch: once it is stamped, the service has fetched past them.
            await produce(broker, [(topics.errors, *event("error", "later"))])
            await wait_for(lambda: service.stats.stamped >= 2)
            assert service.stats.explicit == 0
            seen = await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 2)
            assert set(stamped_ids(seen)) == {"kept", "later"}

            await in_thread(upstream.commit_transaction, 20)
        await wait_for(lambda: service.stats.explicit == 1)
        stamped = await read_topic(broker, topics.stamped, until=lambda r: "new" in stamped_ids(r))
        tombs = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 1)
    assert "new" in stamped_ids(stamped)
    assert [orjson.loads(t.value)["record_id"] for t in tombs] == ["kept"]
    assert orjson.loads(tombs[0].value)["reason"] == "explicit"


async def test_a_policy_update_in_an_open_transaction_applies_once_it_commits(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The policies topic is read to its end before events are decided: its end is the
    last stable offset, so an open transaction neither applies early nor holds the
    service up, and it is applied when it commits (a read that went to the high
    watermark stepped over it for good)."""
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    update = orjson.dumps({"scope": "org", "org": "acme", "ttl": {"conversation": "10m"}})
    async with running_service(config, broker) as service:
        with transactional(broker, f"{topics.prefix}-tx") as upstream:
            upstream.begin_transaction()
            upstream.produce(topics.policies, key=scope_key("org", "acme").encode(), value=update)
            assert await in_thread(upstream.flush, 10) == 0
            await produce(broker, [(topics.conversations, *event("conversation", "before"))])
            await wait_for(lambda: service.stats.stamped >= 1)
            assert service.stats.policy_updates == 0

            await in_thread(upstream.commit_transaction, 20)
        await wait_for(lambda: service.stats.policy_updates == 1)
        await produce(broker, [(topics.conversations, *event("conversation", "after"))])
        stamped = await read_topic(
            broker, topics.stamped, until=lambda r: "after" in stamped_ids(r)
        )
    ttls = {rid: body["ttl_seconds"] for rid, body in stamped_ids(stamped).items()}
    assert ttls == {"before": 3600, "after": 600}


async def test_events_of_an_aborted_transaction_are_never_acted_on(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """An aborted delete erases nothing and an aborted create gets no stamp; the
    committed transaction after them is acted on. Skipped on a broker whose fetch answers
    list no aborted transactions (the test broker: there every client reads them)."""
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    async with running_service(config, broker) as service:
        await produce(broker, [(topics.conversations, *event("conversation", "kept"))])
        await wait_for(lambda: service.stats.stamped >= 1)
        with transactional(broker, f"{topics.prefix}-tx") as upstream:
            for outcome, events in (
                ("abort", (("kept", "delete"), ("ghost", "create"))),
                ("commit", (("real", "create"),)),
            ):
                upstream.begin_transaction()
                for record_id, op in events:
                    key, value = event("conversation", record_id, op=op)
                    # One partition: "real", read, says the aborted ones were read past.
                    upstream.produce(topics.conversations, key=key, value=value, partition=0)
                # On the broker before the end: librdkafka drops what it still holds on abort.
                assert await in_thread(upstream.flush, 10) == 0
                if outcome == "abort":
                    await in_thread(upstream.abort_transaction, 20)
                else:
                    await in_thread(upstream.commit_transaction, 20)
        stamped = await read_topic(broker, topics.stamped, until=lambda r: "real" in stamped_ids(r))
        explicit = service.stats.explicit
    async with consumer(broker, isolation_level="read_committed") as cons:
        async for batch in read_to_end(cons, topics.conversations):
            values = [r.value or b"" for records in batch.values() for r in records]
            if any(b'"ghost"' in value for value in values):
                pytest.skip("the broker lists no aborted transactions in its fetch answers")
    assert explicit == 0
    assert set(stamped_ids(stamped)) == {"kept", "real"}

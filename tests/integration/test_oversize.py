"""Outputs over the producer's size limit, on the real broker: a stamp goes without its data
and its record still expires, a dead letter is cut and says so, and neither stops the
service (at every start, as a refused message did: it was read again each time).

The test broker enforces no size itself (../shared/BROKER.md); the limit these tests meet is
the producer's ``max_request_size``, which aiokafka's ``send`` enforces and the outbox holds
its record batches to. The service's is made small here; replay's is the default.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson
import pytest

from stream_expiry.codec import source_headers
from stream_expiry.kafka import ensure_topics, key_partition, producer
from stream_expiry.kafka_settings import MAX_MESSAGE_BYTES
from stream_expiry.logs import record_ref
from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.oversize import DATA_DROPPED, H_VALUE_TRUNCATED, message_bytes
from stream_expiry.replay import replay
from stream_expiry.service import wall_clock_ms
from tests.conftest import TopicSet, make_topic_set, read_all, read_topic, record_batch_sizes
from tests.integration.service_helpers import config_for, event, produce, running_service
from tests.log_capture import Captured, captured_logs

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

ORG = "org-jane-9c1d"  # ids no log line may give
LIMIT = 64 * 1024  # the service's producer's max_request_size in these tests
SMALL = {"max_request_size": LIMIT}
RETENTION = """
[retention.defaults]
conversation = "2s"
error = "1h"
"""


def _within_limit(rec: object, limit: int = LIMIT) -> bool:
    return message_bytes(rec.key, rec.value, rec.headers) <= limit  # type: ignore[attr-defined]


async def test_a_stamp_over_the_producers_limit_goes_without_its_data_and_still_expires(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A transcript just under the limit makes a stamp over it: published without its data
    (and saying why), and the record is tombstoned at its expiry like any other. A small
    record beside it keeps its data."""
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    big = {"t": "x" * LIMIT}
    with captured_logs() as logs:
        async with running_service(config, broker, producer_options=SMALL) as service:
            await produce(
                broker,
                [
                    (topics.conversations, *event("conversation", "big-7f3a", org=ORG, data=big)),
                    (topics.conversations, *event("conversation", "small", data={"t": "hi"})),
                ],
            )
            tombs = await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 2)
            assert service.stats.stamps_data_dropped == 1
    _says_the_record_by_its_ref_only(logs, Identity(ORG, "_", "live", "conversation", "big-7f3a"))
    assert sorted(orjson.loads(t.value)["record_id"] for t in tombs) == ["big-7f3a", "small"]
    stamps = {
        orjson.loads(r.value)["record_id"]: r
        for r in await read_all(broker, topics.stamped)
        if r.value is not None
    }
    dropped = orjson.loads(stamps["big-7f3a"].value)
    assert dropped["data"] is None
    assert dropped["data_dropped"] == DATA_DROPPED
    assert dropped["expires_at"] is not None
    assert _within_limit(stamps["big-7f3a"])
    small = orjson.loads(stamps["small"].value)
    assert small["data"] == {"t": "hi"}
    assert "data_dropped" not in small


def _says_the_record_by_its_ref_only(logs: Captured, identity: Identity) -> None:
    """The warning names the record by its ref (a log is kept for months, where no erasure
    reaches), in text and in JSON; no line at any level gives its ids."""
    [warning] = [j for j in logs.json_lines() if "producer's limit" in str(j["msg"])]
    assert warning["record"] == record_ref(identity.key)
    assert f"record={record_ref(identity.key)}" in logs.text.getvalue()
    said = logs.both()
    assert identity.record_id not in said
    assert identity.org not in said


async def test_output_topics_that_take_less_than_the_producer_set_the_limit(
    broker: str, tmp_path: Path
) -> None:
    """Topics made beforehand with a smaller ``max.message.bytes`` than the producer's
    limit (Kafka's default is about 1 MiB): the broker refuses what is over it, and a
    refused stamp stopped the service at every start. The service asks the broker for the
    limits of ``expiry.stamped`` and ``expiry.dlq`` and holds its messages to the smaller."""
    topics = make_topic_set()
    small = {"max.message.bytes": str(LIMIT)}
    await ensure_topics(
        broker, topics.all, partitions=2, configs={topics.stamped: small, topics.dlq: small}
    )
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    bad = b"{" + b"q" * LIMIT
    async with running_service(config, broker) as service:
        await produce(
            broker,
            [
                (topics.conversations, *event("conversation", "big", data={"t": "x" * LIMIT})),
                (topics.conversations, b"bad", bad),
            ],
        )
        dead = await read_topic(broker, topics.dlq, until=lambda r: len(r) >= 1)
        await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 1)
        assert service.stats.stamps_data_dropped == 1
    [stamp] = [r for r in await read_all(broker, topics.stamped) if r.value is not None]
    assert orjson.loads(stamp.value)["data_dropped"] == DATA_DROPPED
    assert _within_limit(stamp)
    assert dict(dead[0].headers)[H_VALUE_TRUNCATED] == str(len(bad)).encode()
    assert _within_limit(dead[0])


async def test_record_batches_fit_the_output_topics_max_message_bytes(
    broker: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Kafka holds a whole record batch to a topic's ``max.message.bytes``, and the producer
    packed up to 256 KiB of small stamps and tombstones into one: every batch to a topic
    made with 64 KiB was refused with MESSAGE_TOO_LARGE. The service's batches follow the
    smallest limit of the topics it writes. (The test broker enforces no limit: the
    batches it holds are measured.)"""
    caplog.set_level(logging.WARNING, "stream_expiry.service")  # whatever earlier tests set
    topics = make_topic_set()
    small = {"max.message.bytes": str(LIMIT)}
    await ensure_topics(
        broker,
        topics.all,
        partitions=1,
        configs={topics.stamped: small, topics.tombstones: small},
    )
    count = 1500
    await produce(
        broker,
        [
            (topics.conversations, *event("conversation", f"r{i}", data={"t": "z" * 400}))
            for i in range(count)
        ],
    )
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    async with running_service(config, broker):
        await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= count)
    stamped = await record_batch_sizes(broker, topics.stamped)
    tombstones = await record_batch_sizes(broker, topics.tombstones)
    assert sum(stamped) > 4 * LIMIT  # room for batches over the limit, had there been any
    assert max(stamped) <= LIMIT
    assert max(tombstones) <= LIMIT
    said = [r.getMessage() for r in caplog.records if "take record batches" in r.getMessage()]
    assert said == [
        f"{topics.stamped}, {topics.tombstones} take record batches of at most {LIMIT} bytes "
        "(max.message.bytes): the producer's batches are cut to that from 262144, which "
        "slows ingest; give them at least 262144"
    ]


async def test_an_invalid_input_over_the_producers_limit_is_dead_lettered_cut(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Its dead letter is the original's first bytes with every header, and says how long
    the original was; the service goes on with the next event."""
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    bad = orjson.dumps(
        {"category": "weather", "record_id": "r", "org": "acme", "ts": 1, "pad": "y" * LIMIT}
    )
    async with running_service(config, broker, producer_options=SMALL) as service:
        await produce(broker, [(topics.conversations, b"bad-key", bad)])
        await produce(broker, [(topics.errors, *event("error", "after"))])
        dead = await read_topic(broker, topics.dlq, until=lambda r: len(r) >= 1)
        await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 1)
        assert service.stats.dead_letters_truncated == 1
    [letter] = dead
    headers = dict(letter.headers)
    assert headers["expiry-error"] == b"unknown_category"
    assert headers["expiry-error-detail"]
    assert headers["expiry-source-topic"] == topics.conversations.encode()
    assert headers[H_VALUE_TRUNCATED] == str(len(bad)).encode()
    assert letter.key == b"bad-key"
    assert 0 < len(letter.value) < len(bad)
    assert bad.startswith(letter.value)
    assert _within_limit(letter)


async def test_a_control_message_over_the_producers_limit_does_not_stop_every_start(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """The control topics are read whole at every start: an invalid policy update whose
    dead letter the producer refused stopped the service at each one. Now the service
    starts, and the dead letter is cut (its detail, which quotes the bad value, too)."""
    update = {"scope": "org", "org": "acme", "ttl": {"conversation": "z" * LIMIT}}
    value = orjson.dumps(update)
    await produce(broker, [(topics.policies, b"org/acme", value)])
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    async with running_service(config, broker, producer_options=SMALL) as service:
        dead = await read_topic(broker, topics.dlq, until=lambda r: len(r) >= 1)
        assert service.stats.dead_letters_truncated == 1
    [letter] = dead
    headers = dict(letter.headers)
    assert headers["expiry-error"] == b"invalid_field"
    assert headers[H_VALUE_TRUNCATED] == str(len(value)).encode()
    assert len(headers["expiry-error-detail"]) < LIMIT // 2
    assert value.startswith(letter.value)
    assert _within_limit(letter)


TEN_MINUTES = '[retention.defaults]\nconversation = "10m"\n'


async def _stamp_on_the_changelog(broker: str, topics: TopicSet, data: object) -> None:
    """A stamp of a conversation created a minute ago, expiring in an hour, as an
    earlier version of the service left it on ``expiry.stamped``, with ``data``."""
    created = wall_clock_ms() - 60_000
    identity = Identity(ORG, "_", "live", "conversation", "huge-7f3a")
    key = identity.key.encode()
    value = encode_stamp(Stamp(identity, created, created + 3_600_000, 3_600, "default"), data)
    partition = key_partition(key, 2)
    async with producer(broker, max_request_size=2 * MAX_MESSAGE_BYTES) as prod:
        headers = source_headers(topics.conversations, partition)
        await (
            await prod.send(
                topics.stamped, key=key, value=value, partition=partition, headers=headers
            )
        )


async def test_replay_publishes_a_stamp_over_the_producers_limit_without_its_data(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A stamp an earlier version left on the changelog, larger than replay's producer
    takes (a broker with a larger max.message.bytes accepted it): replay stopped at it
    with MessageSizeTooLargeError; now its re-derived stamp goes without the data."""
    await _stamp_on_the_changelog(broker, topics, {"t": "w" * MAX_MESSAGE_BYTES})
    config = config_for(topics, str(tmp_path / "state"), TEN_MINUTES)
    with captured_logs() as logs:
        report = await replay(config, broker, environ={}, dry_run=False, workers=1)
    assert report.earlier == 1
    _says_the_record_by_its_ref_only(logs, Identity(ORG, "_", "live", "conversation", "huge-7f3a"))
    [published] = [r for r in await read_all(broker, topics.stamped) if r.offset > 0]
    body = orjson.loads(published.value)
    assert body["data"] is None
    assert body["data_dropped"] == DATA_DROPPED
    assert _within_limit(published, MAX_MESSAGE_BYTES)


async def test_replay_holds_its_stamps_to_the_stamped_topics_own_limit(
    broker: str, tmp_path: Path
) -> None:
    """``expiry.stamped`` made with a smaller ``max.message.bytes`` than replay's producer
    takes: the re-derived stamp of a record whose data is over it goes without the data."""
    topics = make_topic_set()
    small = {"max.message.bytes": str(LIMIT)}
    await ensure_topics(broker, topics.all, partitions=2, configs={topics.stamped: small})
    await _stamp_on_the_changelog(broker, topics, {"t": "v" * LIMIT})
    config = config_for(topics, str(tmp_path / "state"), TEN_MINUTES)
    report = await replay(config, broker, environ={}, dry_run=False, workers=1)
    assert report.earlier == 1
    [published] = [r for r in await read_all(broker, topics.stamped) if r.offset > 0]
    assert orjson.loads(published.value)["data_dropped"] == DATA_DROPPED
    assert _within_limit(published)


async def test_replays_record_batches_fit_the_stamped_topics_max_message_bytes(
    broker: str, tmp_path: Path
) -> None:
    """Replay re-publishes every changed stamp, batched by its producer: the batches follow
    ``expiry.stamped``'s own ``max.message.bytes``, as the service's do."""
    topics = make_topic_set()
    small = {"max.message.bytes": str(LIMIT)}
    await ensure_topics(broker, topics.all, partitions=2, configs={topics.stamped: small})
    count, created = 1500, wall_clock_ms() - 60_000
    async with producer(broker, max_batch_size=LIMIT // 4) as prod:
        acks = []
        for i in range(count):
            identity = Identity("acme", "_", "live", "conversation", f"r{i}")
            key = identity.key.encode()
            stamp = Stamp(identity, created, created + 3_600_000, 3_600, "default")
            partition = key_partition(key, 2)
            acks.append(
                await prod.send(
                    topics.stamped,
                    key=key,
                    value=encode_stamp(stamp, {"t": "z" * 400}),
                    partition=partition,
                    headers=source_headers(topics.conversations, partition),
                )
            )
        for ack in acks:
            await ack
    config = config_for(topics, str(tmp_path / "state"), TEN_MINUTES)
    report = await replay(config, broker, environ={}, dry_run=False, workers=1)
    assert report.earlier == count
    sizes = await record_batch_sizes(broker, topics.stamped)
    assert sum(sizes) > 8 * LIMIT  # the original stamps and as many re-published
    assert max(sizes) <= LIMIT

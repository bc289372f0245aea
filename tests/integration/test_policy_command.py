"""``stream-expiry policy`` end to end, the real CLI as a process against the test broker: an
update set is applied by a running service to the next record created (its stamp's TTL and
``ttl_source``), listed as the service reads it, refused when it would take the config
file's values away, and cleared back to the config file's values."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest

from stream_expiry.kafka import producer
from stream_expiry.murmur2 import partition_for
from stream_expiry.outbox import all_acked
from tests.conftest import TopicSet, read_all, read_topic
from tests.integration.service_helpers import (
    config_for,
    config_text,
    event,
    produce,
    running_service,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

RETENTION = '[retention.defaults]\nconversation = "30d"\nsession = "1d"\n'
DAY_S = 86_400


async def _policy(common: tuple[str, ...], *argv: str) -> tuple[int, str, str]:
    """``python -m stream_expiry policy ARGV`` as a process: status, stdout, stderr."""
    done = await anyio.run_process(
        [sys.executable, "-m", "stream_expiry", "policy", *argv, *common], check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def _stamp_of(broker: str, topic: str, record_id: str) -> dict[str, Any]:
    """The stamp of ``record_id`` on ``topic``, once the service has published it."""

    def ids(records: list[Any]) -> set[str]:
        return {orjson.loads(r.value)["record_id"] for r in records if r.value}

    stamped = await read_topic(broker, topic, until=lambda r: record_id in ids(r))
    [body] = [
        b
        for b in (orjson.loads(r.value) for r in stamped if r.value)
        if b["record_id"] == record_id
    ]
    return dict(body)


@pytest.mark.timeout(90)
async def test_set_list_and_clear_a_scope_with_a_service_running(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), RETENTION))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    async with running_service(config, broker):
        # A default update for conversations alone would take the config file's session
        # default away: refused, nothing written, until it is said what is meant.
        status, out, err = await _policy(
            common, "set", "--scope", "default", "--ttl", "conversation=20d"
        )
        assert status == 2, err
        assert "scope default has a value for session=1d, which this one leaves out" in err
        assert "nothing was published" in err
        status, out, err = await _policy(
            common, "set", "--scope", "org", "--org", "acme", "--ttl", "conversaton=2d"
        )
        assert status == 2, err
        assert "did you mean 'conversation'?" in err

        status, out, err = await _policy(
            common, "set", "--scope", "org", "--org", "acme", "--ttl", "conversation=2d", "--json"
        )
        assert status == 0, err
        published = orjson.loads(out)
        assert published["key"] == "org/acme"
        assert published["value"] == {"scope": "org", "org": "acme", "ttl": {"conversation": "2d"}}
        # Sent after the update was acknowledged: decided with it.
        await produce(broker, [(topics.conversations, *event("conversation", "c1"))])
        stamp = await _stamp_of(broker, topics.stamped, "c1")
        assert (stamp["ttl_seconds"], stamp["ttl_source"]) == (2 * DAY_S, "org")

        status, out, err = await _policy(common, "list", "--json")
        assert status == 0, err
        [entry] = orjson.loads(out)
        assert entry["key"] == "org/acme"
        assert entry["ttl_seconds"] == {"conversation": 2 * DAY_S}
        assert entry["effective_from"] == published["effective_from"]
        assert entry["ignored"] is None

        status, out, err = await _policy(common, "clear", "--scope", "org", "--org", "acme")
        assert status == 0, err
        assert out.startswith("cleared org/acme on ")
        await produce(broker, [(topics.conversations, *event("conversation", "c2"))])
        stamp = await _stamp_of(broker, topics.stamped, "c2")
        assert (stamp["ttl_seconds"], stamp["ttl_source"]) == (30 * DAY_S, "default")

        # Nothing left to clear: status 1, as `hold release` of an unknown id.
        status, out, err = await _policy(common, "clear", "--scope", "org", "--org", "acme")
        assert status == 1
        assert "scope org/acme is cleared already" in err
        status, out, err = await _policy(common, "list")
        assert status == 0, err
        assert out.startswith("org/acme  cleared (the config file's values) from ")

        # Said what is meant: the scope's other values are sent again, unchanged.
        status, out, err = await _policy(
            common,
            "set",
            "--scope",
            "default",
            "--ttl",
            "conversation=20d",
            "--keep-others",
            "--json",
        )
        assert status == 0, err
        assert orjson.loads(out)["value"]["ttl"] == {"conversation": "20d", "session": "1d"}


@pytest.mark.timeout(60)
async def test_a_key_on_another_partition_gets_the_update_and_the_null_there_too(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """Another producer's partitioner put the scope's update on a partition murmur2 does not
    pick: services read a key's partitions in no set order, and compaction keeps its latest
    message on each, so an update or a null on one partition alone lost now and then."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), RETENTION))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)
    key = b"org/acme"
    other = 1 - partition_for(key, 2)  # the topics have 2 partitions
    old = orjson.dumps({"scope": "org", "org": "acme", "ttl": {"conversation": "9d"}})
    async with producer(broker) as prod:
        await all_acked([await prod.send(topics.policies, key=key, value=old, partition=other)])

    status, out, err = await _policy(
        common, "set", "--scope", "org", "--org", "acme", "--ttl", "conversation=2d", "--json"
    )
    assert status == 0, err
    assert sorted(orjson.loads(out)["partitions"]) == [0, 1]
    latest = {r.partition: r.value for r in await read_all(broker, topics.policies)}
    assert {p: orjson.loads(v)["ttl"] for p, v in latest.items()} == {
        0: {"conversation": "2d"},
        1: {"conversation": "2d"},
    }

    status, out, err = await _policy(common, "clear", "--scope", "org", "--org", "acme", "--json")
    assert status == 0, err
    assert orjson.loads(out)["partitions"] == [0, 1]
    latest = {r.partition: r.value for r in await read_all(broker, topics.policies)}
    assert latest == {0: None, 1: None}


@pytest.mark.timeout(60)
async def test_a_future_update_over_one_in_force_says_compaction_will_take_that_one(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A trial: `set --effective-from 2030-01-01` over the scope's update in force now said
    "records created before 2030-01-01 keep the scope's values in force before it", and `list`
    then showed the 2030 update alone. True of the running services only: the topic keeps one
    message per scope, so once it is compacted a service that starts, and `replay`, give
    those records the config file's values. Nothing is said where the scope had no update:
    the config file's values before then are what the services apply anyway."""
    cfg = tmp_path / "expiry.toml"
    retention = RETENTION + '[retention.orgs.acme]\nconversation = "7d"\n'
    cfg.write_text(config_text(topics, str(tmp_path / "state"), retention))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)
    org = ("set", "--scope", "org", "--org", "acme")
    status, out, err = await _policy(common, *org, "--ttl", "conversation=5d")
    assert (status, err) == (0, "")
    future = ("--ttl", "conversation=2d", "--effective-from", "2099-01-01")
    status, out, err = await _policy(common, *org, *future)
    assert status == 0, err
    assert out.startswith("published org/acme on ")
    assert err.startswith(
        "warning: scope org/acme has an update in force now (conversation=5d, from "
    )
    assert (
        "which this one replaces on the compacted topic: running services go on applying it "
        "to records created before 2099-01-01T00:00:00.000Z, but once the topic is compacted "
        "it is gone, and a service that starts, and `replay`, give those records the config "
        "file's values (conversation=7d); to keep them, publish this update when it is due "
        "rather than ahead\n"
    ) in err
    # A future update over a future one, or over no update at all: no word.
    status, out, err = await _policy(common, *org, *future)
    assert (status, err) == (0, "")
    status, out, err = await _policy(
        common,
        "set",
        "--scope",
        "org",
        "--org",
        "beta",
        "--ttl",
        "conversation=1d",
        "--effective-from",
        "2099-01-01",
    )
    assert status == 0, err
    assert "in force now" not in err

"""``rekey``'s routing, without a broker: where each input message goes, keyed how."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import orjson
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from stream_expiry.codec import H_PRODUCED_AT
from stream_expiry.config import Config, parse_config
from stream_expiry.errors import ConfigurationError
from stream_expiry.metrics import RekeyMetrics
from stream_expiry.model import Identity
from stream_expiry.oversize import message_bytes
from stream_expiry.rekey import (
    H_REKEYED_FROM,
    Rekeyer,
    _Assignment,
    close_topics,
    fit,
    likely_meant,
    route,
    targets_for,
)

NOW = 1_760_000_000_000
CATEGORIES = ("conversation", "session", "error")


def _record(
    value: bytes | None,
    *,
    key: bytes | None = None,
    topic: str = "conversations",
    partition: int = 3,
    offset: int = 41,
    headers: list[tuple[str, bytes]] | None = None,
) -> Any:
    return ConsumerRecord(topic, partition, offset, NOW, 0, key, value, None, 0, 0, headers or [])


def _routed(rec: Any) -> Any:
    return route(
        rec,
        target="conversations.by-record",
        dlq="expiry.dlq",
        categories=CATEGORIES,
        now_ms=NOW,
        max_skew_ms=300_000,
    )


def _event(**fields: Any) -> bytes:
    body = {"category": "conversation", "record_id": "c1", "org": "acme", "ts": NOW - 5}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def test_a_valid_event_goes_to_the_target_keyed_by_its_record_unchanged() -> None:
    value = _event(bot="b1", env="draft", op="touch", data={"text": "hi"})
    rec = _record(value, key=b"org-acme", headers=[("trace", b"t-1")])
    routed = _routed(rec)
    assert routed.topic == "conversations.by-record"
    assert routed.key == Identity("acme", "b1", "draft", "conversation", "c1").key.encode()
    assert routed.value is value  # the bytes the producer sent, not a re-encoding
    assert routed.headers == [
        ("trace", b"t-1"),
        (H_PRODUCED_AT, b"%d" % NOW),  # the producer's Kafka timestamp, for a late cause
        (H_REKEYED_FROM, b"conversations[3]@41"),
    ]
    assert not routed.rejected


def test_defaults_and_given_defaults_are_one_record() -> None:
    """Keyed by the record the service computes: ``env`` omitted is ``live``, ``bot``
    omitted is ``_``; otherwise one record's events would still be split."""
    implicit = _routed(_record(_event(), key=None))
    explicit = _routed(_record(_event(env="live", bot="_"), key=b"whatever"))
    assert implicit.key == explicit.key
    other_env = _routed(_record(_event(env="draft")))
    assert other_env.key != implicit.key


@given(
    keys=st.lists(st.one_of(st.none(), st.binary(max_size=8)), min_size=2, max_size=6),
    partitions=st.lists(st.integers(0, 63), min_size=2, max_size=6),
    ops=st.lists(st.sampled_from(["create", "touch", "delete"]), min_size=2, max_size=6),
)
def test_every_event_of_a_record_gets_one_key_whatever_the_producer_keyed(
    keys: list[bytes | None], partitions: list[int], ops: list[str]
) -> None:
    routed = {
        _routed(_record(_event(op=op), key=key, partition=partition)).key
        for key, partition, op in zip(keys, partitions, ops, strict=False)
    }
    assert len(routed) == 1


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (orjson.dumps({"category": "conversation", "org": "acme", "ts": NOW}), "missing_field"),
        (_event(category="invoice"), "unknown_category"),
        (_event(ts=NOW + 3_600_000), "future_timestamp"),
        (None, "invalid_json"),
    ],
)
def test_what_the_service_would_reject_is_dead_lettered_naming_the_producers_topic(
    value: bytes | None, code: str
) -> None:
    rec = _record(value, key=b"k", topic="conversations", partition=2, offset=7)
    routed = _routed(rec)
    assert routed.rejected
    assert routed.topic == "expiry.dlq"
    assert (routed.key, routed.value) == (b"k", value)  # unchanged, as the contract says
    headers = dict(routed.headers)
    assert headers["expiry-error"] == code.encode()
    assert headers["expiry-error-detail"]
    assert headers["expiry-source-topic"] == b"conversations"
    assert headers["expiry-source-partition"] == b"2"
    assert headers["expiry-source-offset"] == b"7"


def test_targets_are_the_sources_with_the_suffix() -> None:
    assert targets_for(["conversations", "sessions", "conversations"]) == {
        "conversations": "conversations.by-record",
        "sessions": "sessions.by-record",
    }
    assert targets_for(["a"], ".k") == {"a": "a.k"}


@pytest.mark.parametrize(
    ("sources", "suffix", "said"),
    [
        ([], ".by-record", "at least one --from"),
        (["a"], "", "must not be empty"),
        (["a", "a.by-record"], ".by-record", "a.by-record look like re-keyed copies"),
        (["a.by-record"], ".by-record", "give the producers' topics to --from"),
        (["a", "a.k"], ".k", "a.k look like re-keyed copies"),
    ],
)
def test_targets_that_would_loop_or_mean_nothing_are_refused(
    sources: list[str], suffix: str, said: str
) -> None:
    with pytest.raises(ConfigurationError, match=said):
        targets_for(sources, suffix)


def test_a_copy_within_the_limit_is_the_event_as_produced() -> None:
    routed = _routed(_record(_event(data={"text": "x" * 1000}), key=b"k"))
    assert fit(routed, 1_000_000) == (routed.key, routed.value, routed.headers, False)


def test_a_copy_over_the_limit_goes_without_its_header_then_without_its_data() -> None:
    """An event at its topic's limit no longer fits once keyed by record with the origin
    header: refused, it would stop the partition at every start. Its expiry is what must
    reach the service; its data the service's stamp would drop anyway."""
    value = _event(data={"text": "x" * 200_000}, extra="y" * 1000)
    routed = _routed(_record(value, key=b"k"))
    whole = message_bytes(routed.key, routed.value, routed.headers)
    without_header = message_bytes(routed.key, routed.value, routed.headers[:-1])
    assert without_header < whole
    key, same, headers, changed = fit(routed, without_header)
    assert (key, same, headers, changed) == (routed.key, value, routed.headers[:-1], True)
    key, smaller, headers, changed = fit(routed, without_header - 1)
    assert changed
    assert key == routed.key
    assert smaller is not None
    assert message_bytes(key, smaller, headers) <= without_header - 1
    assert orjson.loads(smaller) == {
        k: v for k, v in orjson.loads(value).items() if k not in ("data", "extra")
    }
    # The service takes it as the same record, at the same time.
    assert _routed(_record(smaller)).key == routed.key


def test_a_copy_without_its_data_keeps_its_origin_header_when_that_fits() -> None:
    """The origin header went with the data, though the copy without its data had room
    for it many times over: the service then named the copy's topic, not the producers',
    as where an erasure request was produced (its ``expiry-request``), and every other
    event lost its ``expiry-rekeyed-from`` (a trial helper's finding, 150 kB events
    through a 100 kB target)."""
    value = _event(op="delete", event_id="gdpr-9", data={"text": "x" * 200_000})
    routed = _routed(_record(value, key=b"acme"))
    without_header = message_bytes(routed.key, routed.value, routed.headers[:-1])
    key, smaller, headers, changed = fit(routed, without_header - 1)
    assert changed
    assert smaller is not None
    assert "data" not in orjson.loads(smaller)
    assert headers == routed.headers
    assert dict(headers)[H_REKEYED_FROM] == b"conversations[3]@41"
    assert message_bytes(key, smaller, headers) <= without_header - 1


def test_a_dead_letter_over_the_limit_is_cut_as_the_service_cuts_one() -> None:
    routed = _routed(_record(b"{" + b"x" * 100_000, key=b"k"))
    assert routed.rejected
    key, value, headers, changed = fit(routed, 10_000)
    assert changed
    assert value is not None
    assert len(value) < 10_000
    assert dict(headers)["expiry-value-truncated"] == b"100001"
    assert message_bytes(key, value, headers) <= 10_000


def test_a_copy_whose_producer_headers_alone_are_over_the_limit_goes_without_them() -> None:
    """Producer headers of 100 KB: without its origin header and its data the copy is
    still over the limit, and a send refused would stop the partition at every start."""
    big = [("trace", b"t" * 100_000)]
    routed = _routed(_record(_event(data={"x": 1}), key=b"k", headers=big))
    key, value, headers, changed = fit(routed, 50_000)
    assert changed
    assert headers == [routed.headers[-1]]  # the origin header only
    assert headers[0][0] == H_REKEYED_FROM
    assert value is not None
    assert message_bytes(key, value, headers) <= 50_000
    assert _routed(_record(value)).key == routed.key


def test_a_partition_the_group_takes_away_loses_its_lag_gauge() -> None:
    """Kept, a partition this member lost showed its last lag for good."""
    rekeyer = Rekeyer(Config(), "127.0.0.1:1", {"a": "a.by-record"})
    metrics = rekeyer.metrics = RekeyMetrics(CollectorRegistry())
    metrics.set_lag("a", 0, 7)
    metrics.set_lag("a", 1, 3)
    assert b'topic="a"} 7.0' in metrics.exposition()
    anyio.run(_Assignment(rekeyer).on_partitions_revoked, [TopicPartition("a", 0)])
    said = metrics.exposition()
    assert b'partition="0",topic="a"' not in said
    assert b'partition="1",topic="a"} 3.0' in said


def test_an_empty_source_is_said_with_the_close_topic_that_has_data() -> None:
    """A mistyped ``--from`` a broker made is empty while the topic meant has data: that
    one is named, the closest with data first; itself is no candidate."""
    topics = ["conversations", "conversation-archive", "sessions", "convresations"]
    close = close_topics("convresations", topics)
    assert close[0] == "conversations"
    assert "convresations" not in close
    assert "sessions" not in close
    ends = {"convresations": 0, "conversations": 12, "conversation-archive": 3}
    assert likely_meant("convresations", close, ends) == "conversations"
    # The closest empty too: the next close one with data.
    assert likely_meant("convresations", close, {**ends, "conversations": 0}) == (
        "conversation-archive"
    )


@pytest.mark.parametrize(
    ("ends", "why"),
    [
        ({"convresations": 5, "conversations": 12}, "the source has data: it is read"),
        ({"convresations": 0, "conversations": 0}, "nothing close has data either"),
    ],
)
def test_a_source_with_data_or_no_close_topic_with_data_is_not_doubted(
    ends: dict[str, int], why: str
) -> None:
    assert likely_meant("convresations", ["conversations"], ends) is None, why
    assert likely_meant("orders", [], {"orders": 0}) is None  # producers yet to write


def test_a_producers_topic_among_the_inputs_is_said_to_be_retired_not_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warning said "list a.by-record there instead" alone: done so, the records the
    service had stamped from ``a`` were in stores no instance is assigned any more, and
    were tombstoned by no instance. It says to move ``a`` to ``[topics] retired``."""
    config = parse_config('[topics]\ninputs = ["a", "b"]\n')
    rekeyer = Rekeyer(config, "127.0.0.1:1", {"a": "a.by-record"})
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        rekeyer._say_plan()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "a is one of the service's [topics] inputs, so the service reads it as its producers "
        "key it: list a.by-record there instead, and move a to [topics] retired, so that the "
        "records already stamped from it are still tombstoned (README: Changing the input "
        "topics)"
    ]

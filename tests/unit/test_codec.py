"""The service's own Kafka encodings read back exactly (``stream_expiry.codec``): where a
record's messages go, the headers that name its input partition, stamps as restore,
replay and ``status`` read them, and the audit entry of a deferred deletion."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_expiry import codec, oversize, replay
from stream_expiry.config import Topics
from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.timeutil import MAX_TS_MS, MIN_TS_MS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

IDENT = Identity("acme", "support", "live", "conversation", "c/1 %é")


@pytest.mark.parametrize(
    ("input_partition", "partitions", "expected"), [(0, 4, 0), (3, 4, 3), (5, 4, 1), (11, 6, 5)]
)
def test_a_records_messages_go_to_its_input_partitions_number_modulo_the_topics(
    input_partition: int, partitions: int, expected: int
) -> None:
    assert codec.output_partition(input_partition, partitions) == expected


def test_the_source_headers_name_the_input_partition_and_nothing_else_does() -> None:
    topic, partition = codec.H_TOPIC, codec.H_PARTITION
    assert codec.source_of(codec.source_headers("sessions", 7)) == ("sessions", 7)
    assert codec.source_of([("other", b"x"), *codec.source_headers("a.b", 0)]) == ("a.b", 0)
    assert codec.source_of([]) is None
    assert codec.source_of([(topic, b"sessions")]) is None
    assert codec.source_of([(partition, b"7")]) is None
    assert codec.source_of([(topic, b"sessions"), (partition, b"seven")]) is None
    # A topic name that is not UTF-8 (not ours) still reads, as a name no store has.
    assert codec.source_of([(topic, b"\xffs"), (partition, b"1")]) == ("\ufffds", 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T04:00:00.123Z", 1_796_097_600_123),  # the service's own form
        ("2026-12-01T05:00:00.123+01:00", 1_796_097_600_123),  # any other RFC 3339
        ("2026-12-01T04:00:00Z", 1_796_097_600_000),
        (1_796_097_600_123, 1_796_097_600_123),
        (None, None),
    ],
)
def test_own_timestamps_parse_fast_and_others_still_parse(
    text: str | int | None, expected: int | None
) -> None:
    assert codec.parse_own_ts(text) == expected


_TIME = st.integers(-62_135_596_800_000, 253_402_300_799_999)  # years 1 to 9999
_MAYBE = st.one_of(st.none(), _TIME)
_SOURCE = st.one_of(st.none(), st.text(max_size=8))
_TTL = st.one_of(st.none(), st.integers(0, 10**13))
_LIVES = st.lists(st.tuples(_MAYBE, _MAYBE, _TTL, _SOURCE, _MAYBE), max_size=3).map(tuple)

stamps = st.builds(
    Stamp,
    st.just(IDENT),
    _MAYBE,  # created_at
    _MAYBE,  # expires_at
    _TTL,
    _SOURCE,
    deleted_at=st.none(),  # a stamp is a live record's
    erase_at=_MAYBE,
    held=st.just(False),  # not in a stamp: the hold book says it
    stamp_offset=st.none(),  # where the stamp sits: not in it either
    previous_deleted_at=_MAYBE,
    held_lives=_LIVES,
    first_created_at=_MAYBE,
)


def _whole_seconds(ttl: int | None) -> int | None:
    """A ttl as a stamp carries it: ``ttl_seconds``."""
    return None if ttl is None else ttl // 1000 * 1000


@settings(max_examples=500)
@given(stamp=stamps)
def test_a_stamp_reads_back_as_it_was_written(stamp: Stamp) -> None:
    """What ``status``, restore and replay read of a stamp is what the service wrote (the
    ttl in whole seconds, as stamps carry it), held lives included."""
    value = encode_stamp(stamp, {"text": "hi"})
    lives = tuple(
        (created, expires, _whole_seconds(ttl), source, erase)
        for created, expires, ttl, source, erase in stamp.held_lives
    )
    expected = stamp._replace(ttl_ms=_whole_seconds(stamp.ttl_ms), held_lives=lives)
    assert codec.decode_stamp(IDENT.key.encode(), value) == expected
    assert codec.decode_stamp(IDENT.key, value, IDENT) == expected
    assert codec.stamp_fields(value) == (
        expected.created_at,
        expected.expires_at,
        expected.ttl_ms,
        expected.ttl_source,
        expected.erase_at,
        expected.previous_deleted_at,
        lives,
        expected.first_created_at,
    )
    body = orjson.loads(value)
    for life, written in zip(stamp.held_lives, body.get("held_lives", []), strict=True):
        assert written["ttl_seconds"] == (None if life[2] is None else life[2] // 1000)
        assert type(written["ttl_seconds"]) in (int, type(None))


def test_a_value_that_is_not_json_is_a_decode_error() -> None:
    with pytest.raises(orjson.JSONDecodeError):  # a ValueError, as restore expects
        codec.stamp_fields(b"not json")


@pytest.mark.parametrize(
    "value",
    [
        b"[1, 2]",
        b'{"created_at": "2026-12-01T04:00:00.000Z", "ttl_source": 5}',
        b'{"held_lives": {"created_at": null}}',
        b'{"held_lives": [{"ttl_source": 5}]}',
    ],
)
def test_a_value_that_is_not_a_stamp_is_a_value_error(value: bytes) -> None:
    with pytest.raises(ValueError, match="not a stamp"):
        codec.stamp_fields(value)


def test_a_deferred_deletion_is_audited_with_what_deferred_it() -> None:
    held = Stamp(IDENT, 1_000, 61_000, 60_000, "org", erase_at=3_000, held=True)
    entry = orjson.loads(codec.encode_deferral(held, "explicit", ["h1", "h2"], 90_000))
    assert entry == {
        "type": "deletion_deferred",
        "at": "1970-01-01T00:01:30.000Z",
        "org": "acme",
        "bot": "support",
        "env": "live",
        "category": "conversation",
        "record_id": "c/1 %é",
        "reason": "explicit",
        "hold_ids": ["h1", "h2"],
        "expires_at": "1970-01-01T00:01:01.000Z",
        "erase_requested_at": "1970-01-01T00:00:03.000Z",
    }
    never = Stamp(IDENT, 1_000, None, None, None)
    entry = orjson.loads(codec.encode_deferral(never, "ttl", [], 0))
    assert [entry[k] for k in ("expires_at", "erase_requested_at", "reason")] == [None, None, "ttl"]


# Stamps as an earlier version (commit 8501475) wrote them on expiry.stamped, byte for byte
# (taken from a trial's topic): what a rolling upgrade's new instance restores from an old
# one's. The stamps only ever gained optional fields, so these read as this version's own.
_OLD_STAMPS = {
    "c-1": (
        b'{"org":"acme","bot":"_","env":"live","category":"conversation","record_id":"c-1",'
        b'"created_at":"2026-12-04T11:35:53.022Z","expires_at":"2026-12-04T11:36:13.022Z",'
        b'"ttl_seconds":20,"ttl_source":"default","last_activity_at":'
        b'"2026-12-04T11:35:53.022Z","data":null}'
    ),
    "r-1": (  # a new life after a delete
        b'{"org":"acme","bot":"_","env":"live","category":"conversation","record_id":"r-1",'
        b'"created_at":"2026-12-04T11:35:53.019Z","expires_at":"2026-12-04T11:36:13.019Z",'
        b'"ttl_seconds":20,"ttl_source":"default","last_activity_at":'
        b'"2026-12-04T11:35:53.019Z","data":null,"previous_deleted_at":'
        b'"2026-12-04T11:35:49.019Z"}'
    ),
}


@pytest.mark.parametrize("record_id", sorted(_OLD_STAMPS))
def test_a_stamp_an_earlier_version_wrote_restores(record_id: str) -> None:
    value = _OLD_STAMPS[record_id]
    created = 1_796_384_153_022 if record_id == "c-1" else 1_796_384_153_019
    floor = 1_796_384_149_019 if record_id == "r-1" else None
    fields = (created, created + 20_000, 20_000, "default", None, floor, (), None)
    assert codec.stamp_fields(value) == fields
    identity = Identity("acme", "_", "live", "conversation", record_id)
    assert codec.decode_stamp(identity.key, value) == Stamp(
        identity, created, created + 20_000, 20_000, "default", previous_deleted_at=floor
    )


def test_a_deletions_headers_read_as_one_text_for_every_reader() -> None:
    """The erasure request and late cause headers as the stores and ``history`` read them:
    bytes that are not UTF-8, and U+0000 (PostgreSQL text cannot hold it), as U+FFFD; the
    last of a request header said twice; an event id without its request names none; a
    late cause cut to 64 bytes (the service's are a word), the first one said."""
    odd = [(codec.H_REQUEST, b"t[0]@1"), (codec.H_REQUEST_EVENT_ID, b"gdpr\x00-7\xff")]
    assert codec.request_of(odd) == ("t[0]@1", "gdpr\ufffd-7\ufffd")
    assert codec.request_of([(codec.H_REQUEST, b"t[0]@1")]) == ("t[0]@1", None)
    assert codec.request_of([(codec.H_REQUEST_EVENT_ID, b"gdpr-7")]) == (None, None)
    assert codec.request_of([*odd, (codec.H_REQUEST, b"t[0]@2")])[0] == "t[0]@2"
    assert codec.request_of([]) == (None, None)
    cause = codec.H_LATE_CAUSE
    assert codec.late_cause_of([(cause, b"catch_up"), (cause, b"hold")]) == "catch_up"
    assert codec.late_cause_of([(codec.H_REQUEST, b"t[0]@1")]) is None
    # Cut inside a character: that character's bytes read as U+FFFD, as any other.
    long = b"\x00" + "é".encode() * 40
    assert codec.late_cause_of([(cause, long)]) == "\ufffd" + "é" * 31 + "\ufffd"
    assert len(codec.late_cause_of([(cause, b"y" * 100)]) or "") == codec.LATE_CAUSE_MAX


def test_the_deferred_requests_header_reads_back_what_it_was_written_with() -> None:
    """``expiry-deferred-requests``: each erasure with its kind and its request, with or
    without an event id, byte for byte (U+0000 and non-ASCII text too); two headers of
    that name add up; a value not written so raises ValueError, naming nothing of it (the
    restore logs it: an event id may say who)."""
    kept = {
        (1_000, True): (
            (codec.H_REQUEST, b"in[0]@2"),
            (codec.H_REQUEST_EVENT_ID, b"gdpr\x00-\xc3\xa9"),
        ),
        (1_000, False): ((codec.H_REQUEST, b"in[0]@3"),),
        (-5, False): ((codec.H_REQUEST, b"in[1]@4"), (codec.H_REQUEST_EVENT_ID, b"")),
    }
    value = codec.encode_deferred_requests(kept)
    assert orjson.loads(value)[1] == [1_000, False, "in[0]@3"]
    header = (codec.H_DEFERRED_REQUESTS, value)
    assert codec.deferred_requests_in([(codec.H_REQUEST, b"x"), header]) == kept
    one = codec.encode_deferred_requests({(7, True): ((codec.H_REQUEST, b"t[0]@1"),)})
    both = [header, (codec.H_DEFERRED_REQUESTS, one)]
    assert codec.deferred_requests_in(both) == {**kept, (7, True): ((codec.H_REQUEST, b"t[0]@1"),)}
    assert codec.deferred_requests_in([(codec.H_REQUEST, b"t[0]@1")]) == {}
    for wrong in (b"{", b"{}", b"[1]", b"[[1, true]]", b'[[1, true, "a", "b", "c"]]',
                  b'[[true, true, "a"]]', b'[[1.5, true, "a"]]', b'[[1, 0, "a"]]',
                  b'[[1, true, 2]]', b'[[-9223372036854775808, true, "a"]]',
                  b'[[1, true, "secret-id"], 7]'):  # fmt: skip
        with pytest.raises(ValueError, match=r"^(?!.*secret)"):  # (its message: not the id)
            codec.deferred_requests_in([(codec.H_DEFERRED_REQUESTS, wrong)])


README = Path(__file__).parents[2] / "README.md"


def _header_names() -> set[str]:
    """Every header the service and its commands write or read: the modules' ``H_*``."""
    return {
        value
        for module in (codec, oversize, replay)
        for name, value in vars(module).items()
        if name.startswith("H_") and isinstance(value, str)
    }


def _named(readme: str, pattern: str) -> set[str]:
    """What the README's code spans name that ``pattern`` matches (a span that is the name,
    or the name and its value: `expiry-reason: explicit`)."""
    return set(re.findall(rf"`({pattern})(?::[^`]*)?`", readme))


def test_the_readme_names_the_headers_and_topics_the_code_uses() -> None:
    """Consumers match headers and topics by name, as the README gives them. It named
    neither `expiry-replay` (on every message replay publishes) nor, whole, the source
    headers of stamps and dead letters (`expiry-source-topic`/`-partition`/`-offset`)."""
    readme = README.read_text()
    headers = _named(readme, r"expiry-[a-z]+(?:-[a-z]+)*")
    assert headers == _header_names()
    assert _named(readme, r"expiry\.[a-z]+") == set(Topics().owned().values())
    assert f"[--suffix {codec.REKEYED_SUFFIX}]" in readme  # rekey's copies: their default name
    # What the check sees: a header misspelt.
    wrong = readme.replace("`expiry-late-cause`", "`expiry-late-reason`")
    assert _named(wrong, r"expiry-[a-z]+(?:-[a-z]+)*") ^ _header_names() == {
        "expiry-late-cause", "expiry-late-reason"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("read", "name"),
    [
        (codec.deleted_at_of, codec.H_DELETED_AT),
        (codec.erasure_requested_at_of, codec.H_ERASURE_REQUESTED_AT),
        (codec.first_created_at_of, codec.H_FIRST_CREATED_AT),
        (codec.due_at_ingest_of, codec.H_DUE_AT_INGEST),
    ],
)
def test_a_time_header_beyond_the_times_a_timestamp_says_is_not_read(
    read: Callable[[Sequence[tuple[str, bytes]]], int | None], name: str
) -> None:
    """These headers are epoch milliseconds. One beyond a 64-bit integer, from another
    producer, went into a sink's store and stopped it at every start (SQLite:
    OverflowError; PostgreSQL: "Integer exceeds 64-bit range"), and so did one just below
    2**63, an erasure's bound one more. A number outside years 1 to 9999 is read as
    nothing, as one that is no number is (tests/integration/test_sinks_stores.py: such a
    tombstone applies in every store)."""
    for beyond in (10**20, 2**63 - 1, MAX_TS_MS + 1, MIN_TS_MS - 1, -(10**20)):
        assert read([(name, str(beyond).encode())]) is None, beyond
    for inside in (MAX_TS_MS, MIN_TS_MS, 0, 1_767_225_600_000):
        assert read([(name, str(inside).encode())]) == inside
    assert read([(name, b"soon")]) is None

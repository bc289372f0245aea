"""Sink message decoding, receipt encoding against its JSON Schema, and the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.codec import LATE_CAUSES
from stream_expiry.errors import ConfigurationError
from stream_expiry.model import DEFAULT_CATEGORIES, Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.sinks import add_sink_parser
from stream_expiry.sinks._messages import (
    _SECONDS,
    REASONS,
    InvalidMessage,
    NullChange,
    Pending,
    Receipt,
    Row,
    StampChange,
    decode_pending,
    decode_stamped,
    decode_tombstone,
    encode_pending,
    encode_receipt,
    receipt_headers,
)
from stream_expiry.sinks.command import build_sink
from stream_expiry.sinks.postgres import PostgresStore
from stream_expiry.sinks.sqlite import SQLiteStore

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
T0 = 1_767_225_600_000
HOSTILE = Identity(
    "o'r\"g; DROP TABLE x;--", "b/o/t", "draft", "conversation", "%2F\u00e9\U0001f600" * 100
)


def validator(name: str) -> Any:
    """A checked Draft 2020-12 validator (jsonschema, as the other schema tests use it)."""
    import jsonschema

    loaded = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(loaded)
    return jsonschema.Draft202012Validator(loaded)


def test_stamp_round_trips_hostile_identities_and_data() -> None:
    s = Stamp(HOSTILE, T0, T0 + 60_000, 60_000, "bot")
    value = encode_stamp(s, {"text": "hi", "n": [1, None]})
    validator("stamped.schema.json").validate(orjson.loads(value))
    change = decode_stamped(HOSTILE.key.encode(), value, partition=1, offset=7)
    assert change == StampChange(
        HOSTILE, T0, T0 + 60_000, 60, "bot", '{"text":"hi","n":[1,null]}', 1, 7
    )


def test_null_value_names_the_record_by_its_key() -> None:
    assert decode_stamped(HOSTILE.key.encode(), None) == NullChange(HOSTILE)
    # ... and keeps its position, which decides whether it deletes a row (Row.applied).
    assert decode_stamped(HOSTILE.key.encode(), None, partition=2, offset=7) == NullChange(
        HOSTILE, 2, 7
    )
    # ... and its reason, the rule of its deletion, for a tombstone that never comes.
    for said, reason in ((b"explicit", "explicit"), (b"ttl", "ttl"), (b"other", None)):
        headers = [("expiry-source-topic", b"conversations"), ("expiry-reason", said)]
        assert decode_stamped(HOSTILE.key.encode(), None, headers=headers) == NullChange(
            HOSTILE, reason=reason
        )
    # ... and its Kafka timestamp, which tells a null read again after its marker was
    # forgotten (sinks/_logic.py, rule 7); Kafka's "none" (-1) is unknown.
    for ts, kept in ((1_767_225_600_000, 1_767_225_600_000), (0, 0), (-1, None), (None, None)):
        assert decode_stamped(HOSTILE.key.encode(), None, timestamp=ts) == NullChange(
            HOSTILE, timestamp=kept
        )


# The erasure request a null names: none, or where it was produced and its event id, if any
# (``_request_of`` gives no event id without a request).
_NAMED = st.one_of(
    st.just((None, None)),
    st.tuples(st.text(max_size=8), st.one_of(st.none(), st.text(max_size=8))),
)


def _named(p: Pending, named: tuple[str | None, str | None], late: str | None) -> Pending:
    return dataclasses.replace(p, request=named[0], request_event_id=named[1], late_cause=late)


@given(
    st.lists(
        st.builds(
            _named,
            st.builds(
                Pending,
                st.one_of(st.none(), st.integers(-(2**62), 2**62)),
                st.one_of(st.none(), st.integers(-(2**62), 2**62)),
                st.one_of(st.none(), st.integers(0, 2**40)),
                st.one_of(st.none(), st.text(max_size=8)),
                st.integers(-(2**62), 2**62),
                superseded=st.booleans(),
                reason=st.one_of(st.none(), st.sampled_from(["ttl", "explicit"])),
                rowless=st.booleans(),
            ),
            _NAMED,
            st.one_of(st.none(), st.sampled_from(LATE_CAUSES)),
        ),
        max_size=4,
    ).map(tuple)
)
def test_pending_deletions_are_kept_as_text_and_read_back(pending: tuple[Pending, ...]) -> None:
    """Every field a pending deletion has comes back as it was: the request a null named
    (with or without an event id) and why it was late are what the sweep's receipt says,
    should the tombstone event never come. Mutant ``if p.request_event_id is not None``
    (in ``encode_pending``) lost a request named without an event id."""
    text = encode_pending(pending)
    assert (text is None) == (not pending)  # NULL in the store when there is none
    assert decode_pending(text) == pending


def test_a_message_at_or_before_a_rows_position_is_already_applied() -> None:
    row = Row(HOSTILE, T0, None, None, None, None, T0, src_partition=1, src_offset=7)
    assert [row.applied(1, offset) for offset in (6, 7, 8)] == [True, True, False]
    assert not row.applied(2, 7)  # another partition's position says nothing
    assert not row.applied(1, None)
    assert not dataclasses.replace(row, src_offset=None).applied(1, 0)  # position unknown


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (None, None, "without a key"),
        (b"only/three/parts", None, "record key"),
        (
            b"k",
            b"{not json",
            "the value is not JSON: 'not' at line 1 column 2 \\(char 1\\), where "
            "a string key should be",
        ),
        (b"k", b'{"org": "\xff"}', r"not valid UTF-8 \(byte 9: invalid start byte\)"),
        (b"k", b"[1]", "not an object"),
        (b"k", b'{"org": "o", "bot": "_", "env": "live", "category": "c"}', "record_id"),
        (
            b"k",
            b'{"org": "o", "bot": "_", "env": "live", "category": "c", "record_id": 5}',
            "record_id",
        ),
    ],
)
def test_malformed_stamped_messages_are_rejected(
    key: bytes | None, value: bytes | None, message: str
) -> None:
    with pytest.raises(InvalidMessage, match=message):
        decode_stamped(key, value)


def test_tombstone_decodes_and_its_bound_follows_the_reason() -> None:
    s = Stamp(HOSTILE, T0, T0 + 60_000, 60_000, "org")
    t = decode_tombstone(None, encode_tombstone(s, reason="ttl", emitted_at=T0 + 61_000))
    assert (t.identity, t.reason, t.emitted_at, t.bound) == (
        HOSTILE,
        "ttl",
        T0 + 61_000,
        T0 + 60_000,
    )
    x = decode_tombstone(None, encode_tombstone(s, reason="explicit", emitted_at=T0 + 5))
    assert x.bound == T0 + 6  # everything created at or before the delete
    exact = orjson.loads(encode_tombstone(s, reason="explicit", emitted_at=T0 + 50_000))
    exact["deleted_at"] = "2026-01-01T00:00:01.000Z"  # a delete event processed late
    assert decode_tombstone(None, orjson.dumps(exact)).bound == T0 + 1_001


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"reason": "whim"}, "reason"),
        ({"emitted_at": None}, "emitted_at"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"ttl_seconds": "60"}, "ttl_seconds"),
        ({"org": ""}, "org"),
    ],
)
def test_malformed_tombstones_are_rejected(patch: dict[str, Any], message: str) -> None:
    s = Stamp(HOSTILE, T0, T0 + 60_000, 60_000, "org")
    body = orjson.loads(encode_tombstone(s, reason="ttl", emitted_at=T0 + 60_000))
    body.update(patch)
    with pytest.raises(InvalidMessage, match=message):
        decode_tombstone(None, orjson.dumps(body))
    with pytest.raises(InvalidMessage, match="must have a value"):
        decode_tombstone(b"k", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:00.000Z", T0),
        ("2026-01-01T00:00:00.999Z", T0 + 999),  # the same second: from the cache
        ("1969-12-31T23:59:59.500Z", -500),
        ("2026-01-01T01:00:00.000+01:00", T0),  # not the service's form: the general parser
        ("2026-01-01T00:00:00.5Z", T0 + 500),
    ],
)
def test_times_decode_alike_with_or_without_the_cache(text: str, expected: int) -> None:
    s = Stamp(HOSTILE, T0, T0 + 60_000, 60_000, "org")
    body = orjson.loads(encode_tombstone(s, reason="ttl", emitted_at=T0 + 60_000))
    body["emitted_at"] = text
    _SECONDS.clear()  # whatever other tests left there
    for _ in range(2):  # parsed, then from the cache
        emitted = decode_tombstone(None, orjson.dumps(body)).emitted_at
        assert emitted == expected
        assert type(emitted) is int  # a store keeps epoch milliseconds as integers


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T00:00:00.0x0Z",
        "2026-01-01T00:00:00.\u00b9\u00b2\u00b3Z",  # digits to isdigit(), not to int()
        "2026-13-01T00:00:00.000Z",
        "2026-01-01T00:00+01.000Z",  # an offset hidden in the seconds' place
        "2026-01-01X00:00:00.000Z",
    ],
)
def test_times_that_only_look_like_the_service_form_are_rejected(text: str) -> None:
    s = Stamp(HOSTILE, T0, T0 + 60_000, 60_000, "org")
    body = orjson.loads(encode_tombstone(s, reason="ttl", emitted_at=T0 + 60_000))
    value = orjson.dumps(body).replace(
        b'"emitted_at":"', b'"emitted_at":"' + text.encode() + b'","x":"'
    )
    with pytest.raises(InvalidMessage, match="emitted_at"):
        decode_tombstone(None, value)


@pytest.mark.parametrize("reason", REASONS)
def test_receipts_match_their_schema_and_never_carry_data(reason: str) -> None:
    r = Receipt("abc", "sqlite", HOSTILE, reason, 1, T0, None, None, None, None, T0 + 1)
    body = orjson.loads(encode_receipt(r))
    validator("receipt.schema.json").validate(body)
    assert body["key"] == HOSTILE.key
    assert body["record_id"] == HOSTILE.record_id
    assert "data" not in body
    assert (body["created_at"], body["deleted_at"]) == (
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:00:00.001Z",
    )
    asked = dataclasses.replace(r, reason="explicit", requested_at=T0 - 1)  # when it was asked
    body = orjson.loads(encode_receipt(asked))
    validator("receipt.schema.json").validate(body)
    assert body["requested_at"] == "2025-12-31T23:59:59.999Z"


def test_a_receipt_says_what_was_deleted_when_and_by_which_rule() -> None:
    ident = Identity("acme", "b", "live", "session", "s1")
    r = Receipt("r-1", "postgres", ident, "ttl", 1, T0, T0 + 60_000, 60, "org", T0 + 60_004,
                T0 + 60_010)  # fmt: skip
    assert orjson.loads(encode_receipt(r)) == {
        "receipt_id": "r-1",
        "store": "postgres",
        "key": "acme/b/live/session/s1",
        "org": "acme",
        "bot": "b",
        "env": "live",
        "category": "session",
        "record_id": "s1",
        "reason": "ttl",
        "rows_deleted": 1,
        "created_at": "2026-01-01T00:00:00.000Z",
        "expires_at": "2026-01-01T00:01:00.000Z",
        "ttl_seconds": 60,
        "ttl_source": "org",
        "emitted_at": "2026-01-01T00:01:00.004Z",
        "deleted_at": "2026-01-01T00:01:00.010Z",
        "requested_at": None,  # not an erasure
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stream-expiry")
    add_sink_parser(p.add_subparsers(dest="command", required=True))
    return p


def test_sink_command_parses_every_option(tmp_path: Path) -> None:
    args = parser().parse_args(
        [
            "sink", "sqlite", "--path", str(tmp_path / "s.db"), "--bootstrap-servers", "h:1",
            "--group-id", "g", "--stamped-topic", "st", "--tombstones-topic", "tb",
            "--receipts-topic", "", "--compacted", "conversation=conversation-history",
            "--compacted", "session=sess=ions", "--sweep-interval", "2.5", "--sweep-grace", "0",
        ]
    )  # fmt: skip
    assert args.func is not None
    sink = build_sink(args)
    c = sink.config
    assert isinstance(sink.store, SQLiteStore)
    assert (c.bootstrap_servers, c.group_id, c.stamped_topic, c.tombstones_topic) == (
        "h:1",
        "g",
        "st",
        "tb",
    )
    assert c.receipts_topic is None
    assert dict(c.compacted) == {"conversation": "conversation-history", "session": "sess=ions"}
    assert (c.sweep_interval_s, c.sweep_grace_s) == (2.5, 0.0)
    assert c.archive_group is None  # no archive required: the sweep waits for none


def test_the_sweep_waits_for_the_archive_the_service_requires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[archive] required`` in the service's config (or its variable), or
    ``--archive-required``: the sweep follows the archive's group, as the service does."""
    monkeypatch.delenv("STREAM_EXPIRY_ARCHIVE_REQUIRED", raising=False)
    config = tmp_path / "service.toml"
    config.write_text('[archive]\nrequired = true\ngroup_id = "vault"\n')
    base = ["sink", "sqlite", "--path", str(tmp_path / "s.db"), "--bootstrap-servers", "h:1"]
    by_file = build_sink(parser().parse_args([*base, "--config", str(config)]))
    assert by_file.config.archive_group == "vault"
    by_flag = build_sink(parser().parse_args([*base, "--archive-required"]))
    assert by_flag.config.archive_group == "stream-expiry-archive"
    monkeypatch.setenv("STREAM_EXPIRY_ARCHIVE_REQUIRED", "true")
    assert build_sink(parser().parse_args(base)).config.archive_group == "stream-expiry-archive"


def test_the_sweep_checks_the_holds_topic_against_the_services_audit_trail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit trail a sweep's start checks the holds topic against (an empty holds
    topic beside an audit trail of holds is a mistyped one): ``--audit-topic``, else the
    environment's, else ``[topics] audit`` of ``--config``, else the default, as the
    holds topic is found."""
    monkeypatch.delenv("STREAM_EXPIRY_TOPICS_AUDIT", raising=False)
    config = tmp_path / "service.toml"
    config.write_text('[topics]\naudit = "from-file"\n')
    base = ["sink", "sqlite", "--path", str(tmp_path / "s.db"), "--bootstrap-servers", "h:1"]
    assert build_sink(parser().parse_args(base)).config.audit_topic == "expiry.audit"
    by_file = build_sink(parser().parse_args([*base, "--config", str(config)]))
    assert by_file.config.audit_topic == "from-file"
    monkeypatch.setenv("STREAM_EXPIRY_TOPICS_AUDIT", "from-env")
    by_env = build_sink(parser().parse_args([*base, "--config", str(config)]))
    assert by_env.config.audit_topic == "from-env"
    by_flag = parser().parse_args([*base, "--config", str(config), "--audit-topic", "flag"])
    assert build_sink(by_flag).config.audit_topic == "flag"


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (
            ["--receipts-topic", "expiry.tombstones"],
            "the sink's receipts topic (--receipts-topic) 'expiry.tombstones' is the "
            "service's tombstones topic",
        ),
        (
            ["--stamped-topic", "st", "--tombstones-topic", "st"],
            "the sink's tombstones topic (--tombstones-topic) 'st' is also its stamped "
            "topic (--stamped-topic)",
        ),
        (
            ["--stamped-topic", "expiry.tombstones", "--tombstones-topic", "expiry.stamped"],
            "the sink's stamped topic (--stamped-topic) 'expiry.tombstones' is the "
            "service's tombstones topic",
        ),
        (
            ["--stamped-topic", "errors"],
            "the sink's stamped topic (--stamped-topic) 'errors' is one of the service's "
            "input topics",
        ),
        (
            ["--holds-topic", "expiry.audit"],
            "the sink's holds topic (--holds-topic) 'expiry.audit' is the service's audit topic",
        ),
        (
            ["--audit-topic", "expiry.holds"],
            "the sink's audit trail (--audit-topic) 'expiry.holds' is the service's holds topic",
        ),
        (
            ["--holds-topic", "h", "--audit-topic", "h"],
            "the sink's audit trail (--audit-topic) 'h' is also its holds topic (--holds-topic)",
        ),
        (
            ["--compacted", "conversation=expiry.stamped"],
            "the sink's compacted topic of conversation (--compacted) 'expiry.stamped' is "
            "the service's stamped topic",
        ),
        (
            ["--receipts-topic", "mine", "--compacted", "conversation=mine"],
            "the sink's compacted topic of conversation (--compacted) 'mine' is also its "
            "receipts topic",
        ),
    ],
)
def test_a_sink_refuses_topics_in_the_wrong_role(
    tmp_path: Path, options: list[str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic flag that names another role's topic stops the sink with one line, as the
    config refuses the same mix in [topics]: ``--receipts-topic expiry.tombstones``
    published every receipt among the tombstones (a trial), ``--stamped-topic
    expiry.tombstones`` read the tombstones twice and no stamp, and an input topic as the
    stamped one warned once per event; the sink started each time."""
    for name in ("RECEIPTS", "STAMPED", "TOMBSTONES", "HOLDS", "AUDIT", "INPUTS"):
        monkeypatch.delenv(f"STREAM_EXPIRY_TOPICS_{name}", raising=False)
    base = ["sink", "sqlite", "--path", str(tmp_path / "s.db"), "--bootstrap-servers", "h:1"]
    with pytest.raises(ConfigurationError) as refused:
        build_sink(parser().parse_args([*base, *options]))
    assert str(refused.value).startswith(says)
    # The service's topics each in their role, and a user's compacted topic that is an
    # input topic or holds two categories, are fine.
    fine = build_sink(
        parser().parse_args(
            [*base, "--compacted", "conversation=conversations", "--compacted", "session=h",
             "--compacted", "error=h"]
        )
    )  # fmt: skip
    assert fine.config.receipts_topic == "expiry.receipts"


def test_the_marker_grace_is_the_services_unless_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store forgets a deleted record when the service does: ``[service]
    marker_grace`` of ``--config`` (or its variable), 7 days without one; ``--marker-grace``
    takes seconds like the sink's other times, or a duration with a unit."""
    monkeypatch.delenv("STREAM_EXPIRY_SERVICE_MARKER_GRACE", raising=False)
    config = tmp_path / "service.toml"
    config.write_text('[service]\nmarker_grace = "2d"\n')
    base = ["sink", "sqlite", "--path", str(tmp_path / "s.db"), "--bootstrap-servers", "h:1"]

    def grace(*extra: str) -> float:
        return build_sink(parser().parse_args([*base, *extra])).config.marker_grace_s

    assert grace() == 7 * 24 * 3600
    assert grace("--config", str(config)) == 2 * 24 * 3600
    assert grace("--config", str(config), "--marker-grace", "90") == 90
    assert grace("--marker-grace", "36h") == 36 * 3600
    assert grace("--marker-grace", "0") == 0
    monkeypatch.setenv("STREAM_EXPIRY_SERVICE_MARKER_GRACE", "3d")
    assert grace("--config", str(config)) == 3 * 24 * 3600
    for bad in ("-1", "soon", "inf", "5 parsecs"):
        with pytest.raises(SystemExit):
            parser().parse_args([*base, "--marker-grace", bad])
    # Its error says what a bare number is here: seconds, not the policies' minutes.
    with pytest.raises(SystemExit):
        parser().parse_args([*base, "--marker-grace", "7x"])
    said = capsys.readouterr().err
    assert "'7x' has an unknown unit 'x'; expected seconds as a number, or a number" in said
    assert "minutes" not in said


def test_postgres_defaults_and_bootstrap_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", "env:9092")
    sink = build_sink(parser().parse_args(["sink", "postgres"]))
    assert isinstance(sink.store, PostgresStore)
    assert sink.store.dsn == "postgresql://127.0.0.1:5432/test"
    assert sink.config.bootstrap_servers == "env:9092"
    assert sink.config.group_id == "stream-expiry-sink-postgres"
    assert sink.config.receipts_topic == "expiry.receipts"
    assert sink.config.sweep_interval_s is None
    assert sink.store.parallel == 2
    one = build_sink(parser().parse_args(["sink", "postgres", "--parallel", "1"]))
    assert one.store.parallel == 1


def test_missing_brokers_and_bad_options_are_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    args = parser().parse_args(["sink", "postgres"])
    with pytest.raises(ConfigurationError, match="--bootstrap-servers"):
        build_sink(args)
    assert args.func(args) == 2
    assert "STREAM_EXPIRY_BOOTSTRAP_SERVERS" in capsys.readouterr().err
    for bad in (["--compacted", "nope"], ["--sweep-interval", "-1"]):
        with pytest.raises(SystemExit):
            parser().parse_args(["sink", "postgres", *bad])
    with pytest.raises(ConfigurationError, match="parallel transactions must be at least 1"):
        build_sink(
            parser().parse_args(
                ["sink", "postgres", "--bootstrap-servers", "h:1", "--parallel", "0"]
            )
        )
    with pytest.raises(ConfigurationError) as typo:  # a file's [sink.compacted] is refused too
        build_sink(
            parser().parse_args(
                [
                    "sink",
                    "sqlite",
                    "--path",
                    "s.db",
                    "--bootstrap-servers",
                    "h:1",
                    "--compacted",
                    "conversatoin=h",
                ]
            )
        )
    assert str(typo.value) == (
        f"--compacted conversatoin=h: 'conversatoin' is not a configured category "
        f"({', '.join(DEFAULT_CATEGORIES)}), so nothing would ever be deleted from h; did you "
        "mean 'conversation'?"
    )
    with pytest.raises(ConfigurationError, match="table prefix"):
        build_sink(
            parser().parse_args(
                ["sink", "postgres", "--bootstrap-servers", "h:1", "--table-prefix", "x; DROP"]
            )
        )


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--sweep-grace", "-5", "expected 0 or more seconds, got '-5'"),
        ("--sweep-grace", "nan", "expected 0 or more seconds, got 'nan'"),
        ("--sweep-grace", "inf", "expected 0 or more seconds, got 'inf'"),
        ("--sweep-grace", "soon", "'soon' is not a duration; expected seconds as a number"),
        ("--sweep-interval", "inf", "expected a positive number of seconds, got 'inf'"),
        ("--sweep-interval", "nan", "expected a positive number of seconds, got 'nan'"),
    ],
)
def test_a_bad_sweep_time_is_one_line_and_status_2(
    option: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative grace swept rows before they expired; nan and inf failed with a traceback."""
    from stream_expiry.cli import main

    argv = ["sink", "sqlite", "--path", "x.db", "--bootstrap-servers", "h:1", option, value]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"argument {option}: {says}" in err
    assert "Traceback" not in err


def test_a_grace_of_zero_is_accepted() -> None:
    args = parser().parse_args(["sink", "sqlite", "--path", "x.db", "--sweep-grace", "0"])
    assert args.sweep_grace == 0.0


def test_the_sinks_times_take_units_as_the_marker_grace_does() -> None:
    """``--marker-grace 7d`` was taken and ``--sweep-grace 1m`` refused (a trial)."""
    args = parser().parse_args(
        ["sink", "sqlite", "--path", "x.db", "--sweep-interval", "30s", "--sweep-grace", "2m",
         "--marker-grace", "7d"]
    )  # fmt: skip
    assert (args.sweep_interval, args.sweep_grace, args.marker_grace) == (30.0, 120.0, 604800.0)


def test_help_explains_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["sink", "sqlite", "--help"])
    out = capsys.readouterr().out
    for option in ("--path", "--compacted", "--sweep-interval", "--receipts-topic", "--group-id"):
        assert option in out


def test_stamped_reason_is_gone_from_the_schema() -> None:
    schema = json.loads((Path(__file__).parents[2] / "schemas/receipt.schema.json").read_text())
    assert schema["properties"]["reason"]["enum"] == list(REASONS) == ["ttl", "explicit", "sweep"]


def test_stamps_with_fields_unknown_to_the_sink_are_accepted() -> None:
    """The service may add fields (last_activity_at, redacted): a sink ignores them."""
    s = Stamp(HOSTILE, T0, T0 + 60_000, 60_000, "org")
    body = orjson.loads(encode_stamp(s, {"x": 1}))
    body.update(last_activity_at="2026-01-01T00:00:30.000Z", redacted=["user.email"], new=[1])
    change = decode_stamped(HOSTILE.key.encode(), orjson.dumps(body), partition=3, offset=7)
    assert isinstance(change, StampChange)
    assert (change.identity, change.expires_at, change.data) == (HOSTILE, T0 + 60_000, '{"x":1}')
    tomb = orjson.loads(encode_tombstone(s, reason="ttl", emitted_at=T0 + 60_000))
    tomb.update(deleted_at=None, extra={"a": 1})
    assert decode_tombstone(None, orjson.dumps(tomb)).identity == HOSTILE


def test_receipt_ids_are_distinct_across_random_chunks_and_forks() -> None:
    import os

    from stream_expiry.sinks.store import _new_receipt_id

    ids = [_new_receipt_id() for _ in range(10_000)]  # beyond one 4,096-id chunk of bytes
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)  # time first
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must not hand out the bytes its parent will use next
        os.write(write, _new_receipt_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child[12:] != _new_receipt_id()[12:]


def test_the_messages_faster_init_keeps_the_dataclass_they_were() -> None:
    """``_slot_init`` replaces the generated ``__init__`` of the sink's message classes (a
    sixth of the sink's CPU at a deletion): the same signature, defaults and fields set,
    still frozen, still equal to what the generated one built."""
    import dataclasses
    import inspect

    from stream_expiry.sinks import _messages as m

    classes: tuple[type[Any], ...] = (m.StampChange, m.TombstoneChange, m.NullChange,
                                      m.SweepChange, m.Row, m.Pending, m.Marker, m.Receipt)  # fmt: skip
    for cls in classes:
        fields = dataclasses.fields(cls)
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        assert [(p.name, p.default) for p in params] == [
            (f.name, inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
            for f in fields
        ], cls
        values = {f.name: f"v-{f.name}" for f in fields}
        built = cls(**values)
        assert {f.name: getattr(built, f.name) for f in fields} == values
        assert built == cls(*values.values())
        assert hash(built) == hash(cls(**values))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(built, fields[0].name, "x")
        required = {f.name: 1 for f in fields if f.default is dataclasses.MISSING}
        defaulted = cls(**required)
        assert all(
            getattr(defaulted, f.name) == f.default
            for f in fields
            if f.default is not dataclasses.MISSING
        )


def test_a_late_cause_is_read_from_ttl_deletions_and_erasures_and_a_strangers_is_cut() -> None:
    """``expiry-late-cause`` says why a deletion was late: an expiry, or an erasure (a hold
    deferred it, or the service read it late); a header some other producer wrote is cut
    to 64 bytes, as text."""
    s = Stamp(Identity("o", "b", "live", "conversation", "r"), 0, 1_000, 1_000, "org")
    key, ttl = s.identity.key.encode(), encode_tombstone(s, reason="ttl", emitted_at=90_000)
    said = [("expiry-late-cause", b"catch_up")]
    assert decode_tombstone(key, ttl, said).late_cause == "catch_up"
    assert decode_tombstone(key, ttl).late_cause is None
    erased = encode_tombstone(s, reason="explicit", emitted_at=90_000)
    held = [("expiry-late-cause", b"hold")]
    assert decode_tombstone(key, erased, held).late_cause == "hold"
    ttl_null = [("expiry-reason", b"ttl"), *said]
    assert decode_stamped(key, None, headers=ttl_null).late_cause == "catch_up"  # type: ignore[union-attr]
    erased_null = [("expiry-reason", b"explicit"), *held]
    assert decode_stamped(key, None, headers=erased_null).late_cause == "hold"  # type: ignore[union-attr]
    odd = [("expiry-late-cause", b"x\x00" + b"y" * 100)]
    assert decode_tombstone(key, ttl, odd).late_cause == "x\ufffd" + "y" * 62
    receipt = Receipt("id", "st", s.identity, "ttl", 1, 0, 1_000, 1, "org", 90_000, 90_001)
    assert receipt_headers(dataclasses.replace(receipt, late_cause="hold")) == [
        ("expiry-late-cause", b"hold")
    ]
    assert receipt_headers(receipt) == []


def test_the_decoders_fill_every_field_from_its_own_source_when_given_by_position() -> None:
    """The decoders build their changes by position (a keyword call costs their
    ``__init__`` twice as much) and the sink calls them by position: every field of the
    result is pinned here against the change built by keyword, with a distinct value per
    field, so that two fields swapped in either order would show."""
    from stream_expiry.sinks._messages import TombstoneChange

    ident = Identity("o", "b", "live", "conversation", "r")
    body = {
        "org": "o", "bot": "b", "env": "live", "category": "conversation", "record_id": "r",
        "created_at": "2026-01-01T00:00:01.001Z", "expires_at": "2026-01-01T00:00:02.002Z",
        "emitted_at": "2026-01-01T00:00:03.003Z", "reason": "explicit", "ttl_seconds": 4,
        "ttl_source": "bot",
    }  # fmt: skip
    headers = [
        ("expiry-deleted-at", b"5005"), ("expiry-request", b"req-6"),
        ("expiry-request-event-id", b"ev-7"), ("expiry-late-cause", b"hold"),
    ]  # fmt: skip
    got = decode_tombstone(b"k", orjson.dumps(body), headers, 8008, "tombs", 9)
    assert got == TombstoneChange(
        identity=ident, created_at=T0 + 1_001, expires_at=T0 + 2_002, emitted_at=T0 + 3_003,
        reason="explicit", ttl_seconds=4, ttl_source="bot", deleted_at=5_005,
        timestamp=8_008, topic="tombs", partition=9, request="req-6",
        request_event_id="ev-7", late_cause="hold",
    )  # fmt: skip
    stamp = {**body, "data": {"n": 1}}
    got_stamp = decode_stamped(b"k", orjson.dumps(stamp), 3, 11, (), 12, "stamped")
    assert got_stamp == StampChange(
        identity=ident, created_at=T0 + 1_001, expires_at=T0 + 2_002, ttl_seconds=4,
        ttl_source="bot", data='{"n":1}', partition=3, offset=11,
    )  # fmt: skip
    null = decode_stamped(ident.key.encode(), None, 3, 11, [("expiry-reason", b"ttl")], 12, "s")
    assert null == NullChange(
        identity=ident, partition=3, offset=11, reason="ttl", timestamp=12, topic="s"
    )
    with pytest.raises(InvalidMessage, match="'emitted_at' is required"):
        decode_tombstone(None, orjson.dumps({**body, "emitted_at": None}))


@pytest.mark.parametrize("reason", [["ttl"], {"ttl": 1}, 1, None])
def test_a_tombstone_whose_reason_is_no_string_is_an_invalid_message(reason: Any) -> None:
    """A reason the sink cannot hash (a list, an object) was looked up in a frozenset and
    raised TypeError, which the sink does not catch: one such message stopped it, and
    again at every start, as it reads the message again. It is invalid, counted and
    skipped, as any other reason is."""
    body = {
        "org": "o", "bot": "b", "env": "live", "category": "conversation", "record_id": "r",
        "emitted_at": "2026-01-01T00:00:03.003Z", "reason": reason,
    }  # fmt: skip
    with pytest.raises(InvalidMessage, match="field 'reason' must be 'ttl' or 'explicit'"):
        decode_tombstone(None, orjson.dumps(body))


@pytest.mark.parametrize("ttl_seconds", [2**63, 2**64 - 1])  # JSON decodes larger ones as floats
def test_a_ttl_beyond_a_64_bit_integer_is_an_invalid_message(ttl_seconds: int) -> None:
    """Every store keeps ``ttl_seconds`` in a 64-bit column: one beyond it was decoded and
    then refused by the store (SQLite: OverflowError, a traceback and status 1; PostgreSQL:
    "out of range for type bigint", status 4), again at every start as the sink read the
    message again. It is invalid, counted and skipped, as a ``ttl_seconds`` that is no
    integer is; the largest 64-bit one is taken (tests/integration/test_sinks_stores.py:
    every store holds it)."""
    s = Stamp(HOSTILE, T0, T0 + 60_000, 60_000, "org")
    stamp = {**orjson.loads(encode_stamp(s, None)), "ttl_seconds": ttl_seconds}
    tomb = {
        **orjson.loads(encode_tombstone(s, reason="ttl", emitted_at=T0 + 60_000)),
        "ttl_seconds": ttl_seconds,
    }
    said = f"field 'ttl_seconds' is {ttl_seconds}, beyond a 64-bit integer"
    with pytest.raises(InvalidMessage, match=said):
        decode_stamped(b"k", orjson.dumps(stamp))
    with pytest.raises(InvalidMessage, match=said):
        decode_tombstone(None, orjson.dumps(tomb))
    largest = 2**63 - 1
    taken = decode_stamped(b"k", orjson.dumps({**stamp, "ttl_seconds": largest}))
    assert isinstance(taken, StampChange)
    assert taken.ttl_seconds == largest

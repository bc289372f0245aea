"""Log lines: JSON with stable keys and extras, text without reprs, one record per line."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from stream_expiry.errors import ConfigurationError
from stream_expiry.logs import (
    LibraryRepeats,
    TextFormatter,
    configure_logging,
    counted,
    named,
    resolve_log_options,
)


def _emit(fmt: str, emit: object) -> list[str]:
    out = io.StringIO()
    configure_logging("INFO", fmt, stream=out)
    try:
        assert callable(emit)
        emit(logging.getLogger("stream_expiry.test"))
    finally:
        configure_logging("WARNING", "text")
    return out.getvalue().splitlines()


def test_json_has_the_stable_keys_and_the_extras() -> None:
    lines = _emit(
        "json",
        lambda log: log.info("assigned %d partitions", 3, extra={"topic": "sessions", "n": 3}),
    )
    assert len(lines) == 1
    body = orjson.loads(lines[0])
    assert list(body)[:4] == ["ts", "level", "logger", "msg"]
    assert body["level"] == "INFO"
    assert body["logger"] == "stream_expiry.test"
    assert body["msg"] == "assigned 3 partitions"
    assert body["ts"].endswith("Z")
    assert body["ts"][10] == "T"
    assert (body["topic"], body["n"]) == ("sessions", 3)


def test_an_exception_stays_on_one_json_line() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.exception("failed")

    lines = _emit("json", emit)
    assert len(lines) == 1
    body = orjson.loads(lines[0])
    assert body["level"] == "ERROR"
    assert "ValueError: bad" in body["exc"]


def test_extras_cannot_overwrite_the_fixed_keys() -> None:
    lines = _emit("json", lambda log: log.warning("real", extra={"level": "fake", "ts": 1}))
    body = orjson.loads(lines[0])
    assert (body["level"], body["msg"]) == ("WARNING", "real")
    assert isinstance(body["ts"], str)


def test_text_shows_extras_as_key_value_and_indents_continuations() -> None:
    lines = _emit(
        "text",
        lambda log: log.info("first\nsecond", extra={"org": "acme", "note": "two words"}),
    )
    assert lines[0].endswith('INFO    stream_expiry.test: first org=acme note="two words"')
    assert lines[1] == "    second"


def test_text_lines_escape_control_characters_but_keep_their_own_layout() -> None:
    """A reason or an id from the bus logged in text: its escape sequences reached the
    terminal that tails the log; its newline is indented like any continuation."""
    lines = _emit("text", lambda log: log.info("hold %s placed\tok\nnext", "h\x1b[2J\r\x00"))
    assert lines[0].endswith("stream_expiry.test: hold h\\x1b[2J\\r\\x00 placed\tok")
    assert lines[1] == "    next"


def test_flags_beat_the_environment_which_beats_the_default() -> None:
    env = {"STREAM_EXPIRY_LOG_LEVEL": "debug", "STREAM_EXPIRY_LOG_FORMAT": "JSON"}
    assert resolve_log_options(None, None, env) == ("DEBUG", "json")
    assert resolve_log_options("ERROR", "text", env) == ("ERROR", "text")
    assert resolve_log_options(None, None, {}, default_level="ERROR") == ("ERROR", "text")
    assert resolve_log_options(None, None, {"STREAM_EXPIRY_LOG_FORMAT": " "}) == ("INFO", "text")


def test_an_invalid_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="STREAM_EXPIRY_LOG_FORMAT='yaml'"):
        resolve_log_options(None, None, {"STREAM_EXPIRY_LOG_FORMAT": "yaml"})
    with pytest.raises(ConfigurationError, match="STREAM_EXPIRY_LOG_LEVEL"):
        resolve_log_options(None, None, {"STREAM_EXPIRY_LOG_LEVEL": "loud"})


def test_the_kafka_clients_repeats_are_thinned_and_counted() -> None:
    """An outage: aiokafka says the same thing hundreds of times a second."""
    now = [0.0]
    repeats = LibraryRepeats(window_s=10.0, clock=lambda: now[0])
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter())
    handler.addFilter(repeats)
    kafka, ours = logging.getLogger("aiokafka.conn"), logging.getLogger("stream_expiry.x")
    for log in (kafka, ours):
        log.addHandler(handler)
        log.propagate = False
    try:
        for second in range(25):
            now[0] = float(second)
            for node in range(100):
                kafka.error("Unable connect to node with id %s: %s", node, "refused")
            kafka.warning("Unable to update metadata")
            ours.warning("Kafka unreachable")
    finally:
        for log in (kafka, ours):
            log.removeHandler(handler)
            log.propagate = True
    lines = out.getvalue().splitlines()
    connect = [line for line in lines if "Unable connect" in line]
    assert len(connect) == 3  # at 0 s, 10 s and 20 s
    assert connect[0].endswith("id 0: refused")
    assert connect[1].endswith("id 0: refused suppressed=999")  # 0-9 s: 1,000, one shown
    assert connect[2].endswith("suppressed=999")
    assert [line.endswith("suppressed=9") for line in lines if "metadata" in line] == [
        False, True, True
    ]  # fmt: skip
    assert sum("Kafka unreachable" in line for line in lines) == 25  # ours: every one


def test_the_kafka_clients_warning_at_every_rebalance_is_not_shown() -> None:
    """A trial's rolling restart: every instance logged aiokafka's WARNING "Heartbeat failed
    ... because it is rebalancing" at each step, the normal protocol, beside the service's
    own INFO line saying what moved. Other warnings of the client still show."""

    def emit(_ours: logging.Logger) -> None:
        coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
        coordinator.warning("Heartbeat failed for group %s because it is rebalancing", "g")
        coordinator.warning("Marking the coordinator dead (node %s)for group %s.", 111, "g")

    lines = _emit("text", emit)
    assert len(lines) == 1, lines
    assert "Marking the coordinator dead" in lines[0]


def test_the_kafka_clients_error_for_a_commit_refused_by_a_routine_rebalance_is_not_shown() -> None:
    """An instance added: aiokafka logs an ERROR in every other instance when the group
    refuses a commit with RebalanceInProgressError, beside the service's INFO line (a
    rebalance this member is in). A member the group dropped still shows it."""
    from aiokafka.errors import RebalanceInProgressError, UnknownMemberIdError

    def emit(_ours: logging.Logger) -> None:
        coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
        said = "OffsetCommit failed for group %s due to group error (%s), will rejoin"
        coordinator.error(said, "g", RebalanceInProgressError("g"))
        coordinator.error(said, "g", UnknownMemberIdError("g"))

    lines = _emit("text", emit)
    assert len(lines) == 1, lines
    assert "UnknownMemberIdError" in lines[0]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_sasl_login_is_not_written_to_a_debug_log(fmt: str) -> None:
    """aiokafka logs every request at DEBUG: a PLAIN login carries the password in clear
    (a trial found it in a log at --log-level DEBUG). Its bytes are left out; other
    requests are logged as they were."""
    from aiokafka.protocol.admin import SaslAuthenticateRequest_v0
    from aiokafka.protocol.metadata import MetadataRequest_v0

    def logged(request: object) -> str:
        out = io.StringIO()
        configure_logging("DEBUG", fmt, stream=out)
        try:
            conn = logging.getLogger("aiokafka.conn")
            conn.debug("Request to %s:%d %d: %s", "127.0.0.1", 9092, 3, request)
        finally:
            configure_logging("WARNING", "text")
        return out.getvalue()

    login = logged(SaslAuthenticateRequest_v0(sasl_auth_bytes=b"alice\x00alice\x00Pw-Zebra-991"))
    assert "Pw-Zebra-991" not in login
    assert "Request to 127.0.0.1:9092 3: SaslAuthenticateRequest_v0(... not shown ...)" in login
    assert "MetadataRequest_v0(topics=[])" in logged(MetadataRequest_v0([]))


@pytest.mark.parametrize(
    ("level", "fmt", "logged", "printed"),
    [
        ("WARNING", "text", [], ["warning: a variable is negative"]),
        ("INFO", "json", ["a variable is negative"], []),
        ("ERROR", "text", [], []),
        ("ERROR", "json", [], []),
    ],
)
def test_a_commands_warning_follows_the_log_options(
    level: str,
    fmt: str,
    logged: list[str],
    printed: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``explain``'s warnings (a policy update, a variable) were plain lines whatever
    ``--log-format json`` and ``--log-level ERROR`` said (a trial)."""
    from stream_expiry.logs import say_warning

    out = io.StringIO()
    configure_logging(level, fmt, stream=out)
    try:
        say_warning("a variable is negative")
    finally:
        configure_logging("WARNING", "text")
    assert [orjson.loads(line)["msg"] for line in out.getvalue().splitlines()] == logged
    assert capsys.readouterr().err.splitlines() == printed


def test_text_lines_give_their_time_in_utc_as_every_other_output() -> None:
    """RFC 3339 with milliseconds and ``Z``, as the JSON lines and the messages: logging's
    default was the machine's local time with no zone (a trial could not line a log line
    up with an event's time)."""
    record = logging.LogRecord("stream_expiry.x", logging.INFO, "", 0, "hello", None, None)
    record.created = 1_767_225_600.25  # 2026-01-01T00:00:00.250Z
    assert TextFormatter().format(record) == (
        "2026-01-01T00:00:00.250Z INFO    stream_expiry.x: hello"
    )


def test_counted_takes_the_nouns_number() -> None:
    assert [counted(n, "line") for n in (0, 1, 2)] == ["0 lines", "1 line", "2 lines"]
    assert counted(1, "entry", "entries") == "1 entry"
    assert counted(3, "entry", "entries") == "3 entries"


def test_named_shows_the_first_few_and_counts_the_rest() -> None:
    """A rebalance's lines name its partitions so: all 144 of an instance's made one
    line a screenful."""
    assert named([]) == ""
    assert named(["a[0]", "a[1]"]) == "a[0], a[1]"
    assert named([f"a[{p}]" for p in range(8)]) == ", ".join(f"a[{p}]" for p in range(8))
    assert named([f"a[{p}]" for p in range(48)], at_most=3) == "a[0], a[1], a[2], and 45 more"

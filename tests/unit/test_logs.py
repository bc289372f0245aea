"""Log lines: JSON with stable keys and extras, text without reprs, one record per line."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from stream_expiry.errors import ConfigurationError
from stream_expiry.logs import configure_logging, resolve_log_options


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

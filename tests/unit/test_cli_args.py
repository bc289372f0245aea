"""Bad arguments: one line, exit status 2, never a traceback; --version; the port checks
that need no broker."""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from stream_expiry import exits, native
from stream_expiry.broker import free_port
from stream_expiry.cli import build_parser, main
from stream_expiry.cliargs import (
    audit_text,
    metrics_host,
    metrics_port,
    port,
    positive_int,
    seconds,
    timestamp,
)
from stream_expiry.config import parse_config
from stream_expiry.errors import ConfigurationError
from stream_expiry.kafka_settings import check_bootstrap
from stream_expiry.logs import configure_logging
from stream_expiry.metrics import version
from stream_expiry.runner import embedded_port, embedded_port_for

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping


def _exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's way out
        return int(exc.code or 0)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_status(["--version"]) == 0
    assert capsys.readouterr().out == f"stream-expiry {version()}, {native.describe()}\n"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["nope"], "invalid choice: 'nope'"),
        (["run", "--metrics-port", "99999"], "from 1 to 65535, got 99999"),
        (["run", "--metrics-port", "http"], "expected a port number"),
        (["demo", "--rate", "0"], "at least 1, got 0"),
        (["demo", "--rate", "-5"], "at least 1, got -5"),
        (["demo", "--duration", "-1"], "0 or more seconds"),
        (["demo", "--duration", "nan"], "0 or more seconds"),
        (["explain", "--org", "a", "--category", "session", "--at", "yesterday"], "'yesterday'"),
        (["replay", "--since", "yesterday"], "--since: 'yesterday' is not a time: give an RFC"),
        (["replay", "--sample", "-1"], "at least 1"),
        (["hold", "release", ""], "argument ID: a hold id is 1 to 512 characters, got ''"),
        (["hold", "release", "h" * 513], "a hold id is 1 to 512 characters, got 'hhh"),
        (["hold", "release", "--key-hex", "zz"], "--key-hex: expected a hold's key as hex"),
        (["hold", "release", "--key-hex", ""], "--key-hex: expected a hold's key as hex"),
        (["hold", "release"], "one of the arguments ID --key-hex is required"),
        (["hold", "release", "h", "--key-hex", "68"], "not allowed with argument"),
        (
            ["hold", "place", "--org", "a", "--reason", "x", "--id", ""],
            "--id: a hold id is 1 to 512 characters, got '': leave --id out for a new random one",
        ),
        (
            ["hold", "place", "--org", "a", "--reason", "x", "--id", "case-\udcff"],
            "--id: a hold id is text (UTF-8), got bytes that are not",
        ),
        (["run", "--log-level", "LOUD"], "invalid choice: 'LOUD'"),
        (["sink", "sqlite", "--path", "x", "--metrics-port", "0"], "from 1 to 65535"),
    ],
)
def test_a_bad_argument_is_one_line_and_status_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _exit_status(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert says in err
    assert "--help" in err
    assert "Traceback" not in err


_FORMS = (
    ": give an RFC 3339 time with an offset, a date (its midnight UTC) or epoch milliseconds, "
    "e.g. 2026-01-31T12:00:00Z, 2026-01-31 or 1769860800000"
)


@pytest.mark.parametrize(
    ("given", "wrong"),
    [
        ("99999999999999999", "is out of range (years 1 to 9999)"),
        ("2026-13-01T00:00:00Z", "is not a real date and time (month must be in 1..12)"),
        ("2026-01-01T00:00:00+24:00", "is a time with an impossible UTC offset"),
        ("yesterday", "is not a time"),
    ],
)
def test_a_bad_time_is_one_sentence_with_the_value_the_forms_and_an_example(
    given: str, wrong: str
) -> None:
    """A user trial read "epoch milliseconds 99999999999999999 are out of range, or epoch
    milliseconds" and "... month must be in 1..12, or epoch milliseconds": the parser's
    message with the other form tacked on. Now: the value, what is wrong, the forms."""
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        timestamp(given)
    assert str(exc.value) == f"{given!r} {wrong}{_FORMS}"


def test_a_metrics_port_in_use_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(
            ["run", "--bootstrap-servers", "127.0.0.1:1", "--metrics-port", str(port),
             "--state-dir", str(tmp_path)]
        )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"stream-expiry run: --metrics-port {port}: cannot listen on 0.0.0.0:")
    assert "choose a free port" in err
    assert err.count("\n") == 1, err


def test_replay_without_brokers_does_not_suggest_an_option_it_rejects(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    assert main(["replay", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--bootstrap-servers" in err
    assert "--embedded-broker" not in err
    assert main(["run"]) == 2
    assert "--embedded-broker" in capsys.readouterr().err


def test_an_invalid_environment_value_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAM_EXPIRY_LOG_FORMAT", "yaml")
    assert main(["explain", "--org", "a", "--category", "session"]) == 2
    assert "STREAM_EXPIRY_LOG_FORMAT" in capsys.readouterr().err
    monkeypatch.delenv("STREAM_EXPIRY_LOG_FORMAT")
    monkeypatch.setenv("STREAM_EXPIRY_CATEGORIES_NAMES", "conversation")
    assert main(["explain", "--org", "a", "--category", "session"]) == 2
    assert "--category 'session' is not a configured category (conversation)" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("STREAM_EXPIRY_CATEGORIES_NAMES", "conversation,session")
    assert main(["explain", "--org", "a", "--category", "sesion", "--offline"]) == 2
    assert "did you mean 'session'" in capsys.readouterr().err


def test_explain_names_the_org_a_misspelt_one_is_close_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An org no setting names gets the defaults, and so did a misspelt --org (acmee for
    acme, a trial): the answer looked right and was another org's. A warning now names
    the close one; the JSON stays the contract's, and an org no setting is close to (or
    one a setting names) gets no word."""
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        '[retention.orgs.acme]\nconversation = "7d"\n'
        '[retention.bots.globex.b1.live]\nconversation = "1d"\n'
    )
    base = ["explain", "--config", str(cfg), "--offline", "--category", "conversation"]
    assert main([*base, "--org", "acmee", "--json"]) == 0
    out = capsys.readouterr()
    assert orjson.loads(out.out)["source"] is None
    assert (
        "warning: no org or bot setting (config file) names org 'acmee', so it gets what "
        "every such org gets; did you mean 'acme'?"
    ) in out.err
    assert main([*base, "--org", "globx"]) == 0
    assert "did you mean 'globex'?" in capsys.readouterr().err
    for org in ("acme", "globex", "initech"):
        assert main([*base, "--org", org]) == 0
        assert "did you mean" not in capsys.readouterr().err


def test_explain_names_the_bot_a_misspelt_one_is_close_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--bot Support-Bot`` where the config names ``support-bot`` of that org gets the
    org's values, none of the bot's, and explain said so without a word where ``hold
    place`` warned (a compliance trial). Said on stderr now, against the org meant; the
    JSON is the one a bot no setting names gets; ``_`` (no bot given), a bot the org's
    settings name, and another org's bot get no word."""
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        '[retention.orgs.acme]\nconversation = "7d"\n'
        '[retention.bots.acme.support-bot.live]\nconversation = "1d"\n'
        '[retention.bots.acme.b1.draft]\nconversation = "2d"\n'
        '[retention.bots.globex.sales-bot.live]\nconversation = "1d"\n'
    )
    base = ["explain", "--config", str(cfg), "--offline", "--category", "conversation"]
    assert main([*base, "--org", "acme", "--bot", "nobody", "--json"]) == 0
    unnamed = capsys.readouterr()
    assert "warning" not in unnamed.err
    for bot, meant, note in [
        ("Support-Bot", "support-bot", " (bot ids are case-sensitive)"),
        ("suport-bot", "support-bot", ""),
        ("B1", "b1", " (bot ids are case-sensitive)"),
    ]:
        assert main([*base, "--org", "acme", "--bot", bot, "--json"]) == 0
        out = capsys.readouterr()
        assert out.out == unnamed.out  # the contract's JSON, as any unnamed bot's
        assert (
            f"warning: no bot setting (config file) of org 'acme' names bot {bot!r}, so it "
            f"gets what every bot no setting names gets; did you mean {meant!r}?{note}\n"
        ) in out.err
    for org, bot in (("acme", "_"), ("acme", "support-bot"), ("acme", "sales-bt")):
        assert main([*base, "--org", org, "--bot", bot]) == 0
        assert "did you mean" not in capsys.readouterr().err
    # A misspelt org and bot: each said, the bot against the org meant.
    assert main([*base, "--org", "acmee", "--bot", "B1"]) == 0
    err = capsys.readouterr().err
    assert "names org 'acmee', so it gets what every such org gets; did you mean 'acme'?\n" in err
    assert "of org 'acme' names bot 'B1'" in err


def test_explain_lists_the_ttl_variables_of_the_category_that_none_sets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt TTL variable (``MAX_CONVERSATIONS_TTL_IN_MINUTES``) is warned about with
    "`stream-expiry explain` lists the TTL variables each category reads", but explain
    listed only the variables that were set: the one meant, unset, was nowhere in its
    answer ("no value is configured for this record anywhere", a newcomer's trial). The
    table now ends with the category's variables that give it no candidate; the JSON stays
    the contract's, and a category no variable sets (``error``) gets no line."""
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("MAX_CONVERSATIONS_TTL_IN_MINUTES", "60")
    monkeypatch.delenv("MAX_CONVERSATION_TTL_IN_MINUTES", raising=False)
    monkeypatch.delenv("INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES", raising=False)
    base = ["explain", "--offline", "--org", "acme"]
    assert main([*base, "--category", "conversation"]) == 0
    out = capsys.readouterr()
    assert "`stream-expiry explain` lists the TTL variables each category reads" in out.err
    assert (
        "TTL variables conversation reads, not set: MAX_CONVERSATION_TTL_IN_MINUTES, "
        "INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES"
    ) in out.out
    # One set: it is in the table, the other is still named.
    monkeypatch.setenv("MAX_CONVERSATION_TTL_IN_MINUTES", "60")
    assert main([*base, "--category", "conversation"]) == 0
    out = capsys.readouterr()
    assert "env     MAX_CONVERSATION_TTL_IN_MINUTES" in out.out
    assert (
        "TTL variables conversation reads, not set: INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES"
    ) in out.out
    assert main([*base, "--category", "conversation", "--json"]) == 0
    assert set(orjson.loads(capsys.readouterr().out)) == {"ttl_seconds", "source", "candidates"}
    assert main([*base, "--category", "error"]) == 0
    assert "TTL variables" not in capsys.readouterr().out


def test_explain_and_hold_place_name_the_org_given_in_another_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--org ACME`` (or ``AB``) where the config names ``acme`` (``ab``) matches nothing,
    org ids being case-sensitive, and got no warning: difflib, comparing case too, found
    no org close to it (a compliance trial). Both commands that check orgs against the
    config now name the org meant and say why; the explain JSON stays the contract's."""
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        '[retention.orgs.acme]\nconversation = "7d"\n[retention.orgs.ab]\nerror = "1d"\n'
    )
    explain = ["explain", "--config", str(cfg), "--offline", "--category", "conversation"]
    hold = ["hold", "place", "--config", str(cfg), "--bootstrap-servers", "127.0.0.1:1"]
    for org, meant in (("ACME", "acme"), ("AB", "ab")):
        assert main([*explain, "--org", org, "--json"]) == 0
        out = capsys.readouterr()
        assert orjson.loads(out.out)["source"] is None
        assert (
            f"warning: no org or bot setting (config file) names org {org!r}, so it gets what "
            f"every such org gets; did you mean {meant!r}? (org ids are case-sensitive)\n"
        ) in out.err
        assert main([*hold, "--org", org, "--reason", "case 7"]) == 3
        assert (
            f"names org {org!r}: did you mean {meant!r}? (org ids are case-sensitive) The "
            f"hold keeps the records of {org!r} only"
        ) in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["hold", "list"],
        ["replay", "--dry-run"],
        ["archive", "--dir", "{tmp}"],
        ["run", "--state-dir", "{tmp}"],
        ["sink", "sqlite", "--path", "{tmp}/s.db"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize(
    ("servers", "says"),
    [
        ("127.0.0.1:abc", "'127.0.0.1:abc' has port 'abc', not a number from 1 to 65535"),
        ("k1:9092,k2:99999", "'k2:99999' has port '99999', not a number from 1 to 65535"),
        ("k1:9092,,k2:9092", "'' has no host"),
        ("k1:", "'k1:' has no port after its ':'"),
        (
            "SASL_SSL://k1:9096",
            "'SASL_SSL://k1:9096' starts with SASL_SSL://, which the clients take for part of"
            " the host (the protocol is [kafka] security_protocol)",
        ),
    ],
)
def test_bad_bootstrap_servers_are_one_line_and_status_2_in_every_command(
    command: list[str], servers: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The clients failed on them with a traceback: int('abc'), or a port out of range."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command]
    assert main([*argv, "--bootstrap-servers", servers]) == 2
    err = capsys.readouterr().err
    assert f"bootstrap servers {servers!r}: {says}; give HOST:PORT" in err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    "servers", ["k:9092", "k1:9092, k2:9093", "kafka", "[::1]:9092", "[::1]", "::1", "10.0.0.1:1"]
)
def test_bootstrap_servers_kafka_clients_take_are_taken(servers: str) -> None:
    assert check_bootstrap(servers) == servers


GIVE_STATE_DIR = (
    "give a directory, created if missing (--state-dir, $STREAM_EXPIRY_STATE_DIR, or "
    "state_dir in the config file)\n"
)


@pytest.mark.parametrize("given", ["--state-dir", "STREAM_EXPIRY_STATE_DIR"])
@pytest.mark.parametrize("under_it", [False, True])
def test_a_file_as_the_state_directory_is_status_2_before_kafka(
    given: str,
    under_it: bool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the user gave is wrong, as a file given as the archive's ``--dir`` (status 2):
    it was status 4 (a state directory that failed), said after the health check had
    warned that Kafka was unreachable. Nothing listens on the broker's port: the file is
    found first, in one line."""
    a_file = tmp_path / "state"
    a_file.write_text("")
    state = a_file / "sub" / "dir" if under_it else a_file
    argv = ["run", "--bootstrap-servers", "127.0.0.1:1"]
    if given == "--state-dir":
        argv += ["--state-dir", str(state)]
    else:
        monkeypatch.setenv(given, str(state))
    code = main(argv)
    err = capsys.readouterr().err
    assert code == exits.USAGE
    if under_it:
        said = f"{str(state)!r} cannot be made: {str(a_file)!r} is a file, not a directory; "
    else:
        said = f"{str(state)!r} is a file, not a directory: "
    assert err == f"stream-expiry run: the state directory {said}{GIVE_STATE_DIR}"


def test_a_directory_as_a_sinks_sqlite_path_is_said_before_kafka(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial: SQLite's own "unable to open database file", with status 4 (a store that
    failed), for what the user gave wrong. Nothing listens on the broker's port: the
    directory is found first."""
    code = main(["sink", "sqlite", "--path", str(tmp_path), "--bootstrap-servers", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == exits.USAGE
    assert err == (
        f"stream-expiry sink: --path {tmp_path} is a directory, not a SQLite database file: "
        f"give --path a file, e.g. {tmp_path / 'sink.db'} (created if missing)\n"
    )


@pytest.mark.parametrize("uri", [False, True], ids=["path", "file-uri"])
def test_a_sinks_sqlite_path_in_a_missing_directory_is_said_before_kafka(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], uri: bool
) -> None:
    """A trial: ``--path /no/such/dir/x.db`` stopped with status 4 (a store that failed)
    once the sink opened its store, for what the user gave wrong. Nothing listens on the
    broker's port: the directory is found first, and named (a ``file:`` URI's too, not the
    working directory with the URI under it)."""
    missing = tmp_path / "no" / "such"
    path = f"file:{missing / 'x.db'}" if uri else str(missing / "x.db")
    code = main(["sink", "sqlite", "--path", path, "--bootstrap-servers", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == exits.USAGE
    assert err == (
        f"stream-expiry sink: --path {path}: the directory {missing} does not exist (create "
        "it first); the database file is created if missing, its directory is not\n"
    )
    assert not missing.exists()


def test_a_state_directory_run_makes_is_its_owners_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its stores hold every record's identity: under the usual umask (022) it was 0755."""
    state = tmp_path / "state"
    old = os.umask(0o022)
    try:
        code = main(["run", "--bootstrap-servers", "127.0.0.1:1", "--state-dir", str(state)])
    finally:
        os.umask(old)
    capsys.readouterr()
    assert code == 3  # nothing listens there; the directory was made before that was found
    assert state.stat().st_mode & 0o777 == 0o700


def test_with_json_logs_the_last_word_is_a_json_line_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        code = main(["status", "--log-format", "json", "--bootstrap-servers", "k:abc"])
    finally:
        configure_logging("WARNING", "text")
    lines = capsys.readouterr().err.splitlines()
    assert code == 2
    last = orjson.loads(lines[-1])
    assert (last["level"], last["logger"]) == ("ERROR", "stream_expiry")
    assert last["msg"].startswith("stream-expiry status: bootstrap servers 'k:abc'")


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        (port, "1", 1),
        (port, "65535", 65535),
        (positive_int, "1", 1),
        (seconds, "0", 0.0),
        (seconds, "0.25", 0.25),
        (timestamp, "1700000000000", "1700000000000"),  # epoch milliseconds
        (timestamp, "2026-12-03T10:00:00Z", "2026-12-03T10:00:00Z"),
    ],
)
def test_argument_types_take_their_edges(kind: Any, text: str, value: object) -> None:
    assert kind(text) == value


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (port, "0", "a port is a number from 1 to 65535, got 0"),
        (port, "65536", "a port is a number from 1 to 65535, got 65536"),
        (positive_int, "0", "must be at least 1, got 0"),
        (positive_int, "1.5", "expected a whole number, got '1.5'"),
        (seconds, "inf", "expected 0 or more seconds, got 'inf'"),
        (seconds, "soon", "expected a number of seconds, got 'soon'"),
    ],
)
def test_argument_types_refuse_past_their_edges(kind: Any, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as err:
        kind(text)
    assert str(err.value) == message


def test_log_options_take_any_case_and_the_metrics_port_its_variable() -> None:
    args = build_parser().parse_args(["explain", "--org", "a", "--category", "session",
                                      "--log-level", "debug", "--log-format", "JSON"])  # fmt: skip
    assert (args.log_level, args.log_format) == ("DEBUG", "json")
    assert metrics_port(None, {"STREAM_EXPIRY_METRICS_PORT": " 9400 "}) == 9400
    assert metrics_port(9500, {"STREAM_EXPIRY_METRICS_PORT": "9400"}) == 9500
    assert metrics_port(None, {}) is None
    with pytest.raises(
        ConfigurationError, match=r"^environment variable STREAM_EXPIRY_METRICS_PORT: "
    ):
        metrics_port(None, {"STREAM_EXPIRY_METRICS_PORT": "http"})


def test_the_metrics_host_is_the_flag_else_its_variable_else_every_interface() -> None:
    assert metrics_host(None, {}) == "0.0.0.0"  # what probes, the manifests and compose need
    assert metrics_host(None, {"STREAM_EXPIRY_METRICS_HOST": " 127.0.0.1 "}) == "127.0.0.1"
    assert metrics_host(None, {"STREAM_EXPIRY_METRICS_HOST": ""}) == "0.0.0.0"
    assert metrics_host("::1", {"STREAM_EXPIRY_METRICS_HOST": "127.0.0.1"}) == "::1"
    for argv in (["run"], ["sink", "sqlite", "--path", "x"]):
        args = build_parser().parse_args([*argv, "--metrics-host", "127.0.0.1"])
        assert args.metrics_host == "127.0.0.1"


def test_a_hold_the_service_would_refuse_is_refused_before_kafka(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listens at this address: the answer comes before any connection."""
    common = ["hold", "place", "--bootstrap-servers", f"127.0.0.1:{_closed_port()}"]
    assert main([*common, "--org", "", "--reason", "x"]) == 2
    assert "--org must be a string of 1 to 512 characters" in capsys.readouterr().err
    assert main([*common, "--org", "a", "--reason", "x", "--category", "conversations"]) == 2
    assert "did you mean 'conversation'?" in capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _ClosedPipe(io.StringIO):
    """stdout whose reader went away (``stream-expiry status | head``)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_output_whose_reader_went_away_ends_quietly_with_141(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It printed a BrokenPipeError traceback (a user trial: ``status | head``)."""
    with capsys.disabled():
        monkeypatch.setattr(sys, "stdout", _ClosedPipe())
        code = main(["explain", "--org", "acme", "--category", "conversation"])
    assert code == exits.OUTPUT_CLOSED == 141


@pytest.mark.parametrize("given", [None, "", "127.0.0.1:{port}", "localhost:{port}"])
def test_the_embedded_broker_listens_where_bootstrap_servers_says(given: str | None) -> None:
    """`run --embedded-broker --bootstrap-servers 127.0.0.1:P` listens on P: the flag was
    ignored for a random port, so the user's producers and sinks, pointed at P, reached
    nothing and each restart moved the broker."""
    port = free_port()
    expected = port if given else None
    assert embedded_port(None if given is None else given.format(port=port)) == expected


def test_the_embedded_broker_listens_where_the_config_file_or_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run --config F --embedded-broker` with `bootstrap_servers = "127.0.0.1:P"` in F
    listens on P, as every other command given F connects there: it took a free port, so a
    first trial's `status --config F`, `hold --config F` and `sink --config F` reached
    nothing (a user trial). The flag beats the file, the file the environment."""
    port, other = free_port(), free_port()
    run = argparse.Namespace(bootstrap_servers=None, embedded_broker=True)
    in_file = parse_config(f'bootstrap_servers = "127.0.0.1:{port}"')
    assert embedded_port_for(run, in_file) == port
    flag = argparse.Namespace(bootstrap_servers=f"localhost:{other}", embedded_broker=True)
    assert embedded_port_for(flag, in_file) == other
    monkeypatch.setenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", f"127.0.0.1:{other}")
    assert embedded_port_for(run, parse_config("")) == other
    assert embedded_port_for(run, in_file) == port
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS")
    assert embedded_port_for(run, parse_config("")) is None
    with pytest.raises(ConfigurationError) as refused:
        embedded_port_for(run, parse_config('bootstrap_servers = "kafka:9092"'))
    assert str(refused.value).startswith(
        "bootstrap_servers in the config file 'kafka:9092' with --embedded-broker: the "
        "embedded broker listens on 127.0.0.1 only; give 127.0.0.1:PORT to choose its port, "
        "or remove bootstrap_servers from the config file for a free one"
    )
    # The way to a free port follows the address's source (runner._leave_out reads it).
    remote = argparse.Namespace(bootstrap_servers="kafka:9092", embedded_broker=True)
    with pytest.raises(ConfigurationError, match="or leave the flag out for a free one"):
        embedded_port_for(remote, parse_config(""))
    monkeypatch.setenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", "kafka:9092")
    with pytest.raises(
        ConfigurationError, match="or unset STREAM_EXPIRY_BOOTSTRAP_SERVERS for a free one"
    ):
        embedded_port_for(run, parse_config(""))


def test_a_port_in_use_for_the_embedded_broker_is_the_arguments_matter() -> None:
    """Another process on the port: it said "did not start on port P (is it in use?) (exit
    code 0)" with status 3, as if Kafka were unreachable (a trial)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=rf"cannot listen on port {port} .*another"):
            embedded_port(f"127.0.0.1:{port}")


@pytest.mark.parametrize("given", ["10.0.0.5:9092", "127.0.0.1:1,127.0.0.1:2", "127.0.0.1", "h:x"])
def test_an_address_the_embedded_broker_cannot_serve_is_refused(given: str) -> None:
    with pytest.raises(ConfigurationError, match=r"listens on 127\.0\.0\.1 only"):
        embedded_port(given)


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--sasl-password=Hunter2Secret"],
        ["status", "--sasl-password", "Hunter2Secret"],
        ["sink", "sqlite", "--path", "x.db", "--password", "Hunter2Secret"],
    ],
)
def test_an_unknown_option_is_named_without_what_was_typed_after_it(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A password typed as a flag (no command takes one: secrets come from the config file
    or the environment) was printed back on stderr with the error (a trial)."""
    assert _exit_status(argv) == 2
    err = capsys.readouterr().err
    assert "Hunter2Secret" not in err
    assert "unrecognized arguments: --" in err
    assert "password" in err  # the option is named


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["run", "--confg", "x.toml"],
            "stream-expiry run: unrecognized arguments: --confg ... (values not shown); "
            "--confg: did you mean --config? (see stream-expiry run --help)",
        ),
        (
            ["sink", "sqlite", "--path", "x.db", "--sweep-intervall", "5"],
            "stream-expiry sink sqlite: unrecognized arguments: --sweep-intervall ... (values "
            "not shown); --sweep-intervall: did you mean --sweep-interval? (see stream-expiry "
            "sink sqlite --help)",
        ),
        (
            ["sink", "sqlite", "--path", "x.db", "--parallel", "2"],
            "stream-expiry sink sqlite: unrecognized arguments: --parallel ... (values not "
            "shown); --parallel is an option of stream-expiry sink postgres (see "
            "stream-expiry sink sqlite --help)",
        ),
        (
            ["status", "--state-dir", "x"],
            "stream-expiry status: unrecognized arguments: --state-dir ... (values not "
            "shown); --state-dir is an option of stream-expiry run and stream-expiry demo "
            "(see stream-expiry status --help)",
        ),
        (
            ["status", "extra"],
            "stream-expiry status: unrecognized arguments: ... (values not shown) (see "
            "stream-expiry status --help)",
        ),
        # A sibling's option close to one of this command's: said as the sibling's only,
        # not also as a typo of --config.
        (
            ["status", "--org", "acme"],
            "stream-expiry status: unrecognized arguments: --org ... (values not shown); "
            "--org is an option of stream-expiry explain, stream-expiry history and "
            "stream-expiry deletions (see stream-expiry status --help)",
        ),
        # An option of the sub-command given before it (a review).
        (
            ["sink", "--parallel=2", "postgres", "--dsn", "x"],
            "stream-expiry sink postgres: unrecognized arguments: --parallel=... (values not "
            "shown); --parallel: give it after the command it belongs to (see stream-expiry "
            "sink postgres --help)",
        ),
        # An option's value after "=" is not shown, nor taken for part of its name.
        (
            ["status", "--sasl-password=Hunter2Secret"],
            "stream-expiry status: unrecognized arguments: --sasl-password=... (values not "
            "shown) (see stream-expiry status --help)",
        ),
        (
            ["run", "--confg=secret.toml"],
            "stream-expiry run: unrecognized arguments: --confg=... (values not shown); "
            "--confg: did you mean --config? (see stream-expiry run --help)",
        ),
        # No value given: none said to be hidden; a single-dash option is named too.
        (
            ["status", "--jsn"],
            "stream-expiry status: unrecognized arguments: --jsn; --jsn: did you mean --json? "
            "(see stream-expiry status --help)",
        ),
        (
            ["status", "-x"],
            "stream-expiry status: unrecognized arguments: -x (see stream-expiry status --help)",
        ),
        # Two letters swapped is a typo too.
        (
            ["run", "--cofnig", "x.toml"],
            "stream-expiry run: unrecognized arguments: --cofnig ... (values not shown); "
            "--cofnig: did you mean --config? (see stream-expiry run --help)",
        ),
    ],
)
def test_an_unknown_argument_is_said_by_its_command_with_the_nearest_option(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The top level said them, pointed at `stream-expiry --help`, and had no "did you
    mean" for `run --confg` (a trial)."""
    assert _exit_status(argv) == 2
    assert capsys.readouterr().err == said + "\n"


def test_a_port_left_in_time_wait_is_free_to_the_embedded_broker() -> None:
    """A broker just stopped leaves its port in TIME_WAIT where it closed connections; the
    broker binds it again (SO_REUSEADDR), so the check must too (a review: a restart on
    the same --bootstrap-servers within a minute was refused as "in use")."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: TIME_WAIT is on its port
        client.recv(1)  # its close is seen before the client closes
        client.close()
    assert embedded_port(f"127.0.0.1:{port}") == port


@pytest.mark.parametrize("verb", ["place", "release"])
def test_hold_place_and_release_say_what_they_do_what_is_audited_and_an_example(
    verb: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their --help had no description, and release's ID no help (a user trial)."""
    monkeypatch.setenv("COLUMNS", "80")
    assert _exit_status(["hold", verb, "--help"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"hold_{verb}d entry" in said
    assert "expiry.audit" in said
    assert f"Example: stream-expiry hold {verb} " in said  # not cut at the hyphen
    if verb == "release":
        assert "ID the id of the hold to release" in said


def test_explain_help_says_0_is_no_value_as_the_code_resolves_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It said "0 means never", but a 0 is no value: an org's 0 leaves the default's 30d."""
    assert _exit_status(["explain", "--help"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "0 means never" not in said
    no_value = "a value of 0 (negative or empty too) is no value, so the other sources, caps"
    assert f"{no_value} and defaults still apply" in said
    config = tmp_path / "zero.toml"
    config.write_text(
        '[retention.defaults]\nconversation = "30d"\n[retention.orgs.acme]\nconversation = 0\n'
    )
    argv = ["explain", "--offline", "--config", str(config), "--org", "acme",
            "--category", "conversation", "--json"]  # fmt: skip
    assert _exit_status(argv) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert (answer["ttl_seconds"], answer["source"]) == (30 * 86400, "default")


def _leaf_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command a user runs (``hold list``, ``sink sqlite``) with its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _leaf_parsers(child, (*path, name))


def test_every_command_help_says_what_it_does() -> None:
    """``hold list --help`` showed its options and not a word of what it prints (the ids
    in doubt, the keys to release by hex) nor that it stops on a missing holds topic, where
    every other command's help says what it does: a newcomer's trial."""
    bare = [" ".join(path) for path, leaf in _leaf_parsers(build_parser()) if not leaf.description]
    assert bare == []
    listing = dict(_leaf_parsers(build_parser()))[("hold", "list")]
    said = " ".join(listing.format_help().split())
    assert "in doubt" in said
    assert "--key-hex" in said
    assert "Example: stream-expiry hold list --config expiry.toml" in said


def test_every_option_and_argument_of_every_command_says_what_it_is() -> None:
    """``explain --env {live,draft}`` said nothing, not even its default, and ``archive``'s
    ``{run,purge}`` neither what each does nor which one runs when none is given."""
    silent = [
        f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
        for path, leaf in _leaf_parsers(build_parser())
        for action in leaf._actions
        if action.help is None and not isinstance(action, argparse._HelpAction)
    ]
    assert silent == []


def test_every_command_help_ends_with_an_example_that_parses() -> None:
    """A newcomer copies the example of a command's help. Only ``hold place`` and ``hold
    release`` gave one (a trial): each command's help now ends with at least one, and each
    is a command line this parser takes, so none goes stale as options change."""
    missing = []
    for path, leaf in _leaf_parsers(build_parser()):
        examples = (leaf.description or "").split("Example: ")[1:]
        if not examples:
            missing.append(" ".join(path))
        for example in examples:
            argv = shlex.split(example)
            assert argv[: 1 + len(path)] == ["stream-expiry", *path], example
            build_parser().parse_args(argv[1:])
    assert missing == []


def test_an_audited_reason_or_name_is_1_to_512_characters() -> None:
    """An empty --reason or --by for a release would say nothing on the evidence."""
    assert audit_text("case closed") == "case closed"
    assert audit_text("x" * 512) == "x" * 512
    for bad in ("", "   ", "x" * 513):
        with pytest.raises(argparse.ArgumentTypeError, match="give 1 to 512 characters"):
            audit_text(bad)


def test_a_tls_file_that_does_not_load_stops_run_before_its_state_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file was loaded only by the first Kafka client: `run` had made its state
    directory and logged "Kafka unreachable" (its health probe's client failed on the file)
    before it said what was wrong. One line naming the config line, status 2, nothing made."""
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    config = tmp_path / "expiry.toml"
    config.write_text(f'[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "{not_pem}"\n')
    state = tmp_path / "state"
    argv = ["run", "--config", str(config), "--bootstrap-servers", "127.0.0.1:1"]
    code = main([*argv, "--state-dir", str(state), "--metrics-port", str(free_port())])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith(
        f"stream-expiry run: {config} line 3 ([kafka] ssl_cafile): ssl_cafile "
        f"{str(not_pem)!r} does not load: "
    )
    assert "unreachable" not in err
    assert not state.exists()


@pytest.mark.parametrize("given", ["1796369399", "2026", "1"])
def test_a_time_that_reads_as_epoch_seconds_or_a_year_is_refused(given: str) -> None:
    """``replay --since 1796369399`` (epoch seconds) was read as milliseconds, January
    1970, and re-derived every record instead of those of the last day; ``explain --at
    2026`` answered for 1970. Both without a word."""
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        timestamp(given)
    assert "as epoch milliseconds is 1970-" in str(exc.value)
    assert f"{given}000 for those seconds" in str(exc.value)


@pytest.mark.parametrize("given", ["0", "100000000000", "1796369399000"])
def test_zero_and_times_from_1973_on_are_taken_as_epoch_milliseconds(given: str) -> None:
    assert timestamp(given) == given


def test_a_date_alone_is_its_midnight_utc_and_a_bad_one_is_said_as_given() -> None:
    """``deletions --since 2026-11-01`` was refused: a compliance officer's period is
    days (a trial). A date alone is its midnight UTC; one that is no date is said as
    typed, not with the time added to it."""
    assert timestamp("2026-11-01") == "2026-11-01T00:00:00Z"
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        timestamp("2026-02-30")
    assert str(exc.value).startswith("'2026-02-30' is not a real date and time")


def test_run_help_names_the_state_directory_it_falls_back_to(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It named the variable and the config file's key, and not ``./state``, which ``run``
    takes when neither is set: a service started from another directory restores again."""
    assert _exit_status(["run", "--help"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "else ./state in the directory it is started from" in said


def test_a_hold_placed_for_a_blank_reason_is_refused_as_a_blank_release_reason_is() -> None:
    """``hold place --reason '   '`` placed a hold (and its hold_placed entry on the audit
    trail) whose reason says nothing, where ``hold release --reason '   '`` is refused:
    a compliance officer reads that reason as why the records were kept."""
    from stream_expiry.config import parse_config
    from stream_expiry.hold_command import _checked_hold

    given = {"id": None, "org": "acme", "bot": None, "env": None, "category": None}
    args = argparse.Namespace(**given, record_id=None, reason=" \t ")
    with pytest.raises(ConfigurationError, match="--reason must say why the hold is placed"):
        _checked_hold(parse_config(""), args, 1_796_369_399_212)
    assert _checked_hold(parse_config(""), argparse.Namespace(**given, record_id=None,
                         reason="case 42"), 1_796_369_399_212).reason == "case 42"  # fmt: skip


def test_archive_purge_that_cannot_read_the_holds_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It printed aiokafka's own "ERROR aiokafka: Unable connect to ..." line before its
    own, as the other one-shot commands (status, hold, replay) no longer do."""
    argv = ["archive", "--dir", str(tmp_path), "purge", "--bootstrap-servers", "127.0.0.1:1"]
    assert _exit_status(argv) == 3
    err = capsys.readouterr().err
    assert err.startswith("stream-expiry archive: cannot reach Kafka at 127.0.0.1:1")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["--group-id", "stream-expiry"],
            "--group-id stream-expiry is the service's consumer group",
        ),
        (["--suffix", ""], "--suffix must not be empty"),
        (["--from", "a.by-record"], "a.by-record look like re-keyed copies"),
        (["--from", "expiry.dlq"], "--from expiry.dlq: the service's own topic"),
    ],
)
def test_rekey_refuses_what_would_share_the_service_s_partitions_or_loop(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before any client starts: one line, status 2 (unusable options)."""
    code = main(["rekey", "--bootstrap-servers", "127.0.0.1:1", "--from", "a", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("stream-expiry rekey: ")
    assert says in err
    assert err.count("\n") == 1, err


def test_rekey_without_a_broker_says_so_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rekey", "--bootstrap-servers", "127.0.0.1:1", "--from", "a"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.startswith("stream-expiry rekey: cannot reach Kafka at 127.0.0.1:1"), err
    assert err.count("\n") == 1, err


def test_hold_place_names_the_org_a_misspelt_one_is_close_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A hold on a misspelt org (acmee for acme) keeps nothing, and ``status``'s "0
    matched" was the only sign (a trial): said before anything is sent (here the broker is
    not there, and the hold is not placed)."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('[retention.orgs.acme]\nconversation = "7d"\n')
    base = ["hold", "place", "--config", str(cfg), "--bootstrap-servers", "127.0.0.1:1"]
    assert main([*base, "--org", "acmee", "--reason", "case 7"]) == 3
    err = capsys.readouterr().err
    assert "names org 'acmee': did you mean 'acme'? The hold keeps the records of" in err
    assert main([*base, "--org", "acme", "--reason", "case 7"]) == 3
    assert "did you mean" not in capsys.readouterr().err


def test_hold_place_names_the_bot_a_misspelt_one_is_close_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--bot B1`` where the config names bot ``b1`` of that org: the hold keeps nothing
    (ids are case-sensitive), and where a misspelt ``--org`` was said, a bot was not (a
    trial). Said the same way, before anything is sent; a bot of another org, or one
    the org's settings name, is not."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        '[retention.bots.acme.b1.live]\nconversation = "7d"\n'
        '[retention.bots.acme.support-bot.draft]\nconversation = "1d"\n'
        '[retention.bots.globex.sales-bot.live]\nconversation = "1d"\n'
    )
    base = ["hold", "place", "--config", str(cfg), "--bootstrap-servers", "127.0.0.1:1"]
    place = [*base, "--org", "acme", "--reason", "case 7"]
    # The case note only where case is the difference (it followed 'suport-bot' too).
    case = " (bot ids are case-sensitive)"
    for bot, meant, note in (
        ("B1", "b1", case),
        ("suport-bot", "support-bot", ""),
        ("Support-Bot", "support-bot", case),
    ):
        assert main([*place, "--bot", bot]) == 3
        err = capsys.readouterr().err
        assert (
            f"no bot setting of the config file for org 'acme' names bot {bot!r}: did you "
            f"mean {meant!r}?{note} The hold keeps the records of bot {bot!r} only; release"
        ) in err
    assert main([*place, "--bot", "b1"]) == 3
    assert "did you mean" not in capsys.readouterr().err
    assert main([*place, "--bot", "sales-bt"]) == 3  # globex's
    assert "did you mean" not in capsys.readouterr().err
    # A misspelt org and bot: each said, the bot against the org meant.
    assert main([*base, "--org", "acmee", "--bot", "B1", "--reason", "case 7"]) == 3
    err = capsys.readouterr().err
    assert "names org 'acmee': did you mean 'acme'?" in err
    assert "for org 'acme' names bot 'B1': did you mean 'b1'?" in err


# --- the README's options against the parser --------------------------------------------------

README = Path(__file__).parents[2] / "README.md"
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# Options of other programs the README names in a code span of their own: the test broker's.
_FOREIGN_FLAGS = frozenset({"--authentication"})
# Sections that document one command's options in prose (`--sweep-grace`, ...).
_SECTIONS = {("sink",): "### Downstream stores", ("archive",): "## Archive"}
Command = tuple[str, ...]


def _parser_options() -> dict[Command, frozenset[str]]:
    """Every command the parser runs (``("hold", "place")``), with its long options."""
    found: dict[Command, frozenset[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: Command) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if path and not subs:
            flags = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
            found[path] = frozenset(flags)
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, (*path, name))

    walk(build_parser(), ())
    return found


def _spans(text: str) -> Iterator[str]:
    """Code spans, and the lines of code blocks (comments cut), of ``text``."""
    yield from re.findall(r"`([^`\n]+)`", text)
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S):
        yield from (line.split("#")[0].strip() for line in block.splitlines())
    yield from (line.strip() for line in text.splitlines() if line.startswith("    stream-expiry"))


def _command(text: str, options: Mapping[Command, frozenset[str]]) -> Command | None:
    """The command a usage starts with (``sink`` for both stores), else None."""
    words = text.split("&&")[-1].split()
    words = words[1:] if words[:1] == ["stream-expiry"] else words
    for n in (2, 1):
        if any(c[:n] == tuple(words[:n]) for c in options) and len(words) >= n:
            return tuple(words[:n])
    return None


def _under(commands: list[Command], options: Mapping[Command, frozenset[str]]) -> list[Command]:
    """The commands the parser runs under ``commands`` (``sink``: both stores)."""
    return [leaf for c in commands for leaf in options if leaf[: len(c)] == c]


def _commands_table(readme: str) -> str:
    """The Commands table and the paragraphs under it, up to the exit statuses."""
    start = readme.index("## Commands\n")
    return readme[start : readme.index("\n\n| status |", start)]


def _given(
    readme: str, options: Mapping[Command, frozenset[str]]
) -> Iterator[tuple[list[Command], str, str]]:
    """``(commands, option, where)`` for each option the README gives a command: in a usage
    (``hold release ID --reason TEXT``, ``sink --stamped-topic``), in the Commands table's
    row of the command (given to any of the row's commands) or in the command's own
    subsection under it (``#### `stream-expiry history```, given to each of its commands)."""
    for span in _spans(readme):
        if (command := _command(span, options)) is not None:
            yield from (([command], flag, repr(span)) for flag in _FLAG.findall(span))
    for row in re.findall(r"^\| (`stream-expiry .*) \|$", _commands_table(readme), re.M):
        usages, _, text = row.partition(" | ")
        commands = [c for u in re.findall(r"`([^`]+)`", usages) if (c := _command(u, options))]
        yield from (
            (commands, flag, f"the row of {commands[0][0]}") for flag in _FLAG.findall(text)
        )
    subsections = r"^#### `(stream-expiry [^`]+)`\n(.*?)(?=^#{1,4} )"
    for usage, text in re.findall(subsections, readme, re.M | re.S):
        command = _command(usage, options)
        assert command is not None, usage
        yield from (
            ([command], flag, f"the details of {command[0]}") for flag in _FLAG.findall(text)
        )


def _said_in_prose(
    readme: str, options: Mapping[Command, frozenset[str]]
) -> dict[Command, set[str]]:
    """The options the paragraph under the Commands table gives every command, and those a
    command's own section names (`--sweep-grace` in the sink's)."""
    table = _commands_table(readme)
    common = set(_FLAG.findall(table.rpartition("|\n")[2].strip().split("\n\n")[0]))
    said = {leaf: common | {"--help"} for leaf in options}
    for group, heading in _SECTIONS.items():
        start = readme.index(heading)
        section = readme[start : readme.index("\n## ", start + 1)]
        flags = {
            f for span in _spans(section) if span.startswith("--") for f in _FLAG.findall(span)
        }
        for leaf in _under([group], options):
            said[leaf] |= flags
    return said


def _option_drift(readme: str, options: Mapping[Command, frozenset[str]]) -> list[str]:
    """What the README says of the options that the parser does not, and the reverse: an
    option given to a command that the command does not take, an option of no command, an
    option of a command that the README names nowhere for it, and a row of the Commands
    table cut over lines."""
    drift: list[str] = []
    told = _said_in_prose(readme, options)
    for commands, flag, where in _given(readme, options):
        leaves = [leaf for leaf in _under(commands, options) if flag in options[leaf]]
        if not leaves:
            drift.append(f"{where}: {' / '.join(' '.join(c) for c in commands)} has no {flag}")
        for leaf in leaves:
            told[leaf].add(flag)
    everywhere = {f for leaf in options for f in options[leaf]} | _FOREIGN_FLAGS
    for span in _spans(readme):
        if span.startswith("--"):
            drift += [
                f"{span!r}: no command has {f}" for f in _FLAG.findall(span) if f not in everywhere
            ]
    for line in _commands_table(readme).split("\n\n")[1].splitlines():
        if not line.startswith("|"):  # Markdown makes each line a row of its own
            drift.append(f"the Commands table: a row cut before {line[:40]!r}")
    for leaf, flags in sorted(options.items()):
        drift += [
            f"{' '.join(leaf)} {flag}: not in the README" for flag in sorted(flags - told[leaf])
        ]
    return drift


def test_the_readme_gives_each_command_the_options_it_takes_and_names_them_all() -> None:
    """A newcomer runs what the README shows: an option it gives a command must be that
    command's, and every option a command takes must be said somewhere for it (``hold`` and
    ``history`` take ``--config``, which the README never gave them). The replay row of the
    Commands table was cut over four lines, which Markdown shows as four rows."""
    readme, options = README.read_text(), _parser_options()
    assert len(options) == 17  # hold, policy and sink have 3, 3 and 2
    assert _option_drift(readme, options) == []
    # What the check sees: an option renamed in the README, one added to the parser.
    renamed = readme.replace("[--sample N]", "[--samples N]")
    assert _option_drift(renamed, options) == [
        "'stream-expiry replay [--config FILE] [--since TS] [--dry-run] [--from-inputs] "
        "[--workers N] [--samples N] [--json]': replay has no --samples"
    ]
    # An option a command does not take, in that command's subsection under the table.
    misplaced = readme.replace("so a left-out `--bot` is", "so a left-out `--sink-group` is")
    assert _option_drift(misplaced, options) == [
        "the details of history: history has no --sink-group"
    ]
    stray = readme + "\nA `--dry-runs` that no command takes.\n"
    assert _option_drift(stray, options) == ["'--dry-runs': no command has --dry-runs"]
    added = {**options, ("status",): options[("status",)] | {"--watch"}}
    assert _option_drift(readme, added) == ["status --watch: not in the README"]
    cut = readme.replace(
        " [--json]` | the instances running:", " [--json]` | the\ninstances running:"
    )
    assert _option_drift(cut, options) == [
        "the Commands table: a row cut before 'instances running: the members of the se'"
    ]


# --- the README's exit statuses against exits.py ----------------------------------------------

# The commands that exit FAILED on their own (not by an error's kind), by their module.
_FAILS: dict[str, str] = {
    "demo": "`demo`",
    "hold_command": "`hold release`",
    "policy_command": "`policy clear`",
}


def _status_rows(text: str) -> dict[int, str]:
    """``{status: meaning}`` of the exit status table in ``text``."""
    return {int(n): meaning for n, meaning in re.findall(r"^\| (\d+) \| (.*) \|$", text, re.M)}


def test_the_readme_gives_every_exit_status_and_the_commands_that_fail_with_1() -> None:
    """Scripts read the number. The README's table, exits.py's own and its constants name
    the same statuses (entry.py keeps a copy of 130, to load fast); every command that
    exits 1 itself is named in the row of 1 (``hold release`` of an id with no active hold
    was not)."""
    from stream_expiry import entry

    statuses = {v for k, v in vars(exits).items() if k.isupper() and isinstance(v, int)}
    readme = _status_rows(README.read_text())
    assert set(readme) == statuses == set(_status_rows(exits.__doc__ or ""))
    assert entry.INTERRUPTED == exits.INTERRUPTED
    package = Path(exits.__file__).parent
    failing = sorted(p.stem for p in package.rglob("*.py") if "exits.FAILED" in p.read_text())
    assert failing == sorted(_FAILS)
    assert [_FAILS[m] for m in failing if _FAILS[m] not in readme[exits.FAILED]] == []


def test_explain_says_a_sliding_category_s_touches_move_its_expiry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "effective TTL: 30m" read as a session's life, and a session touched all day lives
    all day: the table now says that a sliding category's touches move its expiry by the
    TTL (a trial). A category that does not slide, one that never expires, and the JSON
    (the contract's) get no such line."""
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('[retention.defaults]\nsession = "30m"\nconversation = "7d"\n')
    base = ["explain", "--config", str(cfg), "--offline", "--org", "acme"]
    assert main([*base, "--category", "session"]) == 0
    assert (
        "session slides ([categories] sliding): each touch moves its expiry to the touch's "
        "time + 30m, the TTL fixed at its creation"
    ) in capsys.readouterr().out
    for category in ("conversation", "error"):  # error: no value, never expires
        assert main([*base, "--category", category]) == 0
        assert "slides" not in capsys.readouterr().out
    assert main([*base, "--category", "session", "--json"]) == 0
    assert "slides" not in capsys.readouterr().out

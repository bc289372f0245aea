"""The config file: defaults, every table, and errors that point at the line and say the fix."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_expiry.config import (
    Config,
    ConfigError,
    Topics,
    _key_lines,
    load_config,
    parse_config,
)
from stream_expiry.errors import ConfigurationError, StreamExpiryError
from stream_expiry.model import DEFAULT_CATEGORIES

MIN = 60_000
DAY = 1440 * MIN

FULL = """\
preset = "avaamo"
bootstrap_servers = "k1:9092,k2:9092"
group_id = "expiry-eu"
state_dir = "/var/lib/expiry"
max_clock_skew = "10m"

[topics]
inputs = ["conv", "sess"]
policies = "p"
stamped = "s"
tombstones = "t"
dlq = "d"
receipts = "r"
holds = "h"
audit = "a"

[categories]
names = ["conversation", "session", "audit"]
sliding = ["session", "audit"]

[service]
tick_ms = 50
horizon = "2h"
session_timeout = "10s"
workers = 3
marker_grace = "3d"

[archive]
required = true
group_id = "archive-eu"
marker_margin = "12h"

[retention.defaults]
session = "30d"

[retention.cap]
max = "1y"
audit = 0

[retention.orgs.acme]
conversation = "30d"

[retention.orgs."acme corp"]
conversation = 1440

[retention.bots.acme."bot/1".draft]
session = "1h"

[retention.bots.acme]
b2 = { live = { conversation = "2d" } }
"""


def test_no_file_means_defaults() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.topics == Topics()
    assert config.categories == DEFAULT_CATEGORIES
    assert config.sliding == frozenset({"session"})
    assert config.max_clock_skew_ms == 300_000
    assert config.path is None


def test_empty_text_means_defaults_too() -> None:
    assert parse_config("") == Config(path="<string>")


def test_full_file() -> None:
    c = parse_config(FULL, path="full.toml")
    assert c.preset == "avaamo"
    assert c.retention.preset == "avaamo"
    assert c.bootstrap_servers == "k1:9092,k2:9092"
    assert c.group_id == "expiry-eu"
    assert c.state_dir == "/var/lib/expiry"
    assert c.max_clock_skew_ms == 10 * MIN
    assert c.tick_ms == 50
    assert c.horizon_ms == 120 * MIN
    assert c.session_timeout_ms == 10_000
    assert c.workers == 3
    assert c.marker_grace_ms == 3 * DAY
    assert (c.archive.required, c.archive.group_id) == (True, "archive-eu")
    assert c.archive.marker_margin_ms == 12 * 60 * MIN
    assert c.topics == Topics(("conv", "sess"), "p", "s", "t", "d", "r", "h", "a")
    assert c.categories == ("conversation", "session", "audit")
    assert c.sliding == frozenset({"session", "audit"})
    r = c.retention
    assert r.defaults["session"].ttl_ms == 30 * DAY
    assert r.cap["max"].ttl_ms == 365 * DAY
    assert r.cap["audit"].ttl_ms is None  # 0: valid, no value
    assert r.orgs["acme"]["conversation"].name == "retention.orgs.acme.conversation"
    assert r.orgs["acme corp"]["conversation"].ttl_ms == DAY
    assert (
        r.bots[("acme", "bot/1", "draft")]["session"].name
        == 'retention.bots.acme."bot/1".draft.session'
    )
    assert r.bots[("acme", "b2", "live")]["conversation"].ttl_ms == 2 * DAY
    assert c.path == "full.toml"


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("[service]\nmarker_grace = '0s'\n", "marker_grace_ms", 0),  # markers go at once
        ("[service]\nhorizon = '1s'\n", "horizon_ms", 1_000),
        ("[service]\nsession_timeout = '1s'\n", "session_timeout_ms", 1_000),
        ("max_clock_skew = '0s'\n", "max_clock_skew_ms", 0),
        ("[service]\nworkers = 1\n", "workers", 1),
    ],
)
def test_the_smallest_values_a_setting_allows_are_taken(text: str, field: str, value: int) -> None:
    assert getattr(parse_config(text), field) == value


def test_the_archive_defaults_to_not_required() -> None:
    archive = parse_config("[archive]\n").archive
    assert (archive.required, archive.group_id) == (False, "stream-expiry-archive")
    assert archive.marker_margin_ms == 2 * DAY  # a daily purge and a day of archive lag


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "expiry.toml"
    path.write_text(FULL, encoding="utf-8")
    assert load_config(path).path == str(path)
    assert load_config(str(path)).group_id == "expiry-eu"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read the config file .*--config"):
        load_config(tmp_path / "missing.toml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.toml"
    path.write_bytes(b'group_id = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_a_byte_order_mark_is_read_past_and_lines_keep_their_numbers(tmp_path: Path) -> None:
    """Notepad saves UTF-8 with a byte-order mark: the file was refused with "line 1,
    column 1: invalid TOML: Invalid statement", of a line that looked right."""
    path = tmp_path / "bom.toml"
    path.write_bytes(
        b'\xef\xbb\xbfgroup_id = "expiry-eu"\n[retention.defaults]\nconversation = "30x"\n'
    )
    with pytest.raises(ConfigError, match=r"bom\.toml line 3: invalid duration"):
        load_config(path)
    path.write_bytes(b'\xef\xbb\xbfgroup_id = "expiry-eu"\n')
    assert load_config(path).group_id == "expiry-eu"


def test_config_error_is_a_stream_expiry_error() -> None:
    assert issubclass(ConfigError, ConfigurationError)
    assert issubclass(ConfigError, StreamExpiryError)


def test_sliding_defaults_to_session_only_when_configured() -> None:
    assert parse_config('[categories]\nnames = ["chat"]\n').sliding == frozenset()
    assert parse_config("[categories]\nsliding = []\n").sliding == frozenset()


ERRORS = [
    # (id, text, expected fragments: line, key, suggestion or value)
    (
        "sink topic name",
        '[sink.compacted."bad topic"]\ncategories = ["conversation"]\n',
        "line 1: 'bad topic' in [sink.compacted] is not a Kafka topic name",
    ),
    (
        "sink categories empty",
        "[sink.compacted.users]\ncategories = []\n",
        "line 2: key 'categories' in [sink.compacted.users] must be a non-empty array, got an array []",
    ),
    (
        "sink category unknown",
        '[sink.compacted.users]\ncategories = ["invoice"]\n',
        "line 2: category 'invoice' in [sink.compacted.users] is not a configured category",
    ),
    (
        "sink categories missing",
        "[sink.compacted.users]\n",
        "line 1: [sink.compacted.users] needs categories = [...] to delete from it",
    ),
    (
        "kafka value not a string",
        "[kafka]\nsecurity_protocol = 5\n",
        "line 2: key 'security_protocol' in [kafka] must be a string, got an integer 5",
    ),
    (
        "kafka protocol unknown",
        '[kafka]\nsecurity_protocol = "TLS"\n',
        "line 2: key 'security_protocol' in [kafka] must be one of PLAINTEXT, SSL, SASL_PLAINTEXT",
    ),
    (
        "empty bot id",
        '[retention.bots.acme.""]\nlive = {conversation = "1d"}\n',
        "line 1: a bot id in [retention.bots.acme] must be 1 to 512 characters long",
    ),
    (
        "empty org id under bots",
        '[retention.bots.""]\n',
        "line 1: an org id in [retention.bots] must be 1 to 512 characters long",
    ),
    (
        "no category names",
        "[categories]\nnames = []\n",
        "line 2: key 'names' in [categories] must be a non-empty array of strings, got an array []",
    ),
    (
        "sliding category not named",
        '[categories]\nnames = ["conversation"]\nsliding = ["session"]\n',
        "line 3: key 'sliding' in [categories] names category 'session', which is not in names; "
        "add it to names first",
    ),
    (
        "input topic name",
        '[topics]\ninputs = ["bad topic"]\n',
        "line 2: key 'inputs' in [topics] must be a Kafka topic name",
    ),
    (
        "unknown category key with suggestion",
        'preset = "none"\n\n[retention.orgs.acme]\nsession = "1d"\nconversaton = "30d"\n',
        "config.toml line 5: unknown key 'conversaton' in [retention.orgs.acme]; did you mean 'conversation'?",
    ),
    (
        "unknown top-level key",
        'group_id = "g"\nprest = "cognigy"\n',
        "line 2: unknown key 'prest' at the top level; did you mean 'preset'?",
    ),
    (
        "unknown table",
        "[topic]\ndlq = 'x'\n",
        "line 1: unknown key 'topic' at the top level; did you mean 'topics'?",
    ),
    (
        "unknown key, no close match",
        "[service]\nzzz = 1\n",
        "line 2: unknown key 'zzz' in [service]; valid: tick_ms, horizon",
    ),
    (
        "unknown retention table",
        "[retention.capp]\nmax = 1\n",
        "line 1: unknown key 'capp' in [retention]; did you mean 'cap'?",
    ),
    (
        "unknown cap key",
        "[retention.cap]\nmaxx = 1\n",
        "line 2: unknown key 'maxx' in [retention.cap]; did you mean 'max'?",
    ),
    (
        "quoted org",
        '[retention.orgs."acme corp"]\n\n\nsesion = 1\n',
        "line 4: unknown key 'sesion' in [retention.orgs.\"acme corp\"]; did you mean 'session'?",
    ),
    (
        "dotted key",
        "[retention]\norgs.acme.convrsation = 3\n",
        "line 2: unknown key 'convrsation' in [retention.orgs.acme]",
    ),
    (
        "inline table",
        "[retention.orgs]\nacme = { conversation = 1 }\nbeta = { sesion = 2 }\n",
        "line 3: unknown key 'sesion' in [retention.orgs.beta]",
    ),
    (
        "bad env",
        "[retention.bots.acme.b1.life]\nconversation = 1\n",
        "line 1: unknown key 'life' in [retention.bots.acme.b1]; did you mean 'live'?",
    ),
    (
        "invalid duration",
        '# c\n[retention.orgs.acme]\nconversation = "30 days"\n',
        "config.toml line 3: invalid duration for key 'conversation' in [retention.orgs.acme]: '30 days'",
    ),
    (
        "invalid unit says what to do",
        '[retention.defaults]\nsession = "3x"\n',
        "line 2: invalid duration for key 'session' in [retention.defaults]: '3x' has an unknown unit 'x'; expected minutes as a number, or a number with a unit s, m, h, d, w, mo, y (e.g. \"30d\")",
    ),
    (
        "boolean duration",
        "[retention.cap]\nmax = true\n",
        "line 2: invalid duration for key 'max' in [retention.cap]: true is a boolean",
    ),
    ("array as duration", "[retention.cap]\nmax = [1]\n", "line 2: invalid duration for key 'max'"),
    (
        "skew negative",
        'max_clock_skew = "-1m"\n',
        "line 1: key 'max_clock_skew' at the top level must be a duration, 0 or more, got a string '-1m'",
    ),
    (
        "skew invalid",
        "max_clock_skew = 'soon'\n",
        "line 1: invalid duration for key 'max_clock_skew' at the top level: 'soon'",
    ),
    (
        "archive required not a boolean",
        "[archive]\nrequired = 'yes'\n",
        "line 2: key 'required' in [archive] must be true or false, got a string 'yes'",
    ),
    (
        "archive typo",
        "[archive]\ngroup = 'x'\n",
        "line 2: unknown key 'group' in [archive]; did you mean 'group_id'?",
    ),
    (
        "archive marker margin negative",
        "[archive]\nmarker_margin = '-1h'\n",
        "line 2: key 'marker_margin' in [archive] must be a duration, 0 or more, got a string '-1h'",
    ),
    (
        "marker grace negative",
        "[service]\nmarker_grace = '-1d'\n",
        "line 2: key 'marker_grace' in [service] must be a duration, 0 or more, got a string '-1d'",
    ),
    (
        "horizon zero",
        "[service]\nhorizon = 0\n",
        "line 2: key 'horizon' in [service] must be a duration, positive, got an integer 0",
    ),
    (
        "session timeout zero",
        "[service]\nsession_timeout = '0s'\n",
        "line 2: key 'session_timeout' in [service] must be a duration from 1s to 30m, got a string '0s'",
    ),
    (  # it crashed the start with aiokafka's struct.error, exit 3 (a user trial)
        "session timeout past what a broker takes",
        "[service]\nsession_timeout = '2y'\n",
        "line 2: key 'session_timeout' in [service] must be a duration from 1s to 30m, got a string '2y'",
    ),
    (  # not "0 gives no TTL ... the other sources", which is for ttls
        "session timeout under half a second",
        "[service]\nsession_timeout = '0.3s'\n",
        "line 2: invalid duration for key 'session_timeout' in [service]: '0.3s' is under half a second",
    ),
    (
        "a ttl under half a second still says what 0 is",
        "[retention.defaults]\nconversation = '0.3s'\n",
        "line 2: invalid duration for key 'conversation' in [retention.defaults]: '0.3s' is under half"
        " a second, which rounds to 0, and 0 gives no TTL (the other sources decide, or the record"
        " never expires); give 1s or more, or 0 to leave the TTL to the other sources",
    ),
    (
        "workers zero",
        "[service]\nworkers = 0\n",
        "line 2: key 'workers' in [service] must be a positive number of processes, got an integer 0",
    ),
    (
        "tick_ms float",
        "[service]\ntick_ms = 1.5\n",
        "line 2: key 'tick_ms' in [service] must be a positive integer (milliseconds), got a float 1.5",
    ),
    (
        "tick_ms bool",
        "[service]\ntick_ms = true\n",
        "key 'tick_ms' in [service] must be a positive integer",
    ),
    (
        "preset typo",
        'preset = "chatlyer"\n',
        "line 1: unknown preset 'chatlyer'; did you mean 'chatlayer'?",
    ),
    (
        "preset far off",
        'preset = "zzz"\n',
        "unknown preset 'zzz'; use one of none, cognigy, chatlayer, avaamo",
    ),
    (
        "preset not a string",
        "preset = 1\n",
        "key 'preset' at the top level must be one of none, cognigy, chatlayer, avaamo",
    ),
    (
        "group_id empty",
        'group_id = ""\n',
        "line 1: key 'group_id' at the top level must be a non-empty string",
    ),
    (
        "servers not a string",
        "bootstrap_servers = 9092\n",
        "key 'bootstrap_servers' at the top level must be a non-empty string, got an integer 9092",
    ),
    (
        "topic name",
        '[topics]\ndlq = "my dlq"\n',
        "line 2: key 'dlq' in [topics] must be a Kafka topic name",
    ),
    (
        "topic reused",
        '[topics]\ninputs = ["a"]\n\ndlq = "a"\n',
        "line 4: topic 'a' of key 'dlq' in [topics] is also used by 'inputs'",
    ),
    (
        "outputs reused",
        '[topics]\nstamped = "x"\ntombstones = "x"\n',
        "topic 'x' of key 'tombstones' in [topics] is also used by 'stamped'",
    ),
    (
        "inputs empty",
        "[topics]\ninputs = []\n",
        "key 'inputs' in [topics] must be a non-empty array of topic names",
    ),
    (
        "inputs duplicated",
        '[topics]\ninputs = ["a", "a"]\n',
        "must be an array without duplicates (repeated: a)",
    ),
    (
        "names not array",
        '[categories]\nnames = "conversation"\n',
        "line 2: key 'names' in [categories] must be an array of strings",
    ),
    ("names max", '[categories]\nnames = ["max"]\n', "a name other than 'max'"),
    (
        "sliding not in names",
        '[categories]\nnames = ["chat"]\nsliding = ["chta"]\n',
        "line 3: key 'sliding' in [categories] names category 'chta', which is not in names; did you mean 'chat'?",
    ),
    (
        "category not configured",
        '[categories]\nnames = ["chat"]\n[retention.defaults]\nsession = 1\n',
        "line 4: unknown key 'session' in [retention.defaults]; valid: chat (categories are set by [categories] names)",
    ),
    (
        "org table not a table",
        "[retention.orgs]\nacme = 5\n",
        "line 2: key 'acme' in [retention.orgs] must be a table, got an integer 5",
    ),
    (
        "retention not a table",
        "retention = 5\n",
        "line 1: key 'retention' at the top level must be a table",
    ),
    (
        "empty org id",
        '[retention.orgs.""]\nconversation = 1\n',
        "an org id in [retention.orgs] must be 1 to 512 characters long",
    ),
]


@pytest.mark.parametrize(("text", "fragment"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="config.toml")
    message = str(info.value)
    assert message.startswith("config.toml")
    assert fragment in message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a = 1\nb = = 2\n", "config.toml line 2, column 5: invalid TOML: Invalid value"),
        ("[x]\n[x]\n", "config.toml line 2, column 3: invalid TOML"),
        ("a = [1,\n", "config.toml: invalid TOML: Invalid value (at end of document)"),
    ],
)
def test_toml_syntax_errors_keep_the_position(text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=r"see toml\.io") as info:
        parse_config(text, path="config.toml")
    assert str(info.value).startswith(where)


def test_lines_survive_multiline_strings_and_arrays() -> None:
    text = '[topics]\ninputs = [\n  "a",\n  "b = c",\n]\ndlq = """\nx = 1\n"""\nstamped = "s"\nzzz = 1\n'
    with pytest.raises(ConfigError, match=r"config\.toml line 10: unknown key 'zzz'"):
        parse_config(text, path="config.toml")


def test_a_key_that_cannot_be_placed_names_the_table() -> None:
    # an invalid name inside an array has no line of its own: the error points at its key
    text = '[categories]\nnames = [\n  "ok",\n  "",\n]\n'
    with pytest.raises(ConfigError, match=r"config\.toml line 2: key 'names' in \[categories\]"):
        parse_config(text, path="config.toml")


def _schema_validator() -> Any:
    import jsonschema

    schema_path = Path(__file__).parents[2] / "schemas" / "config.schema.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_accepts_what_the_loader_accepts() -> None:
    validator = _schema_validator()
    for text in (FULL, "", 'preset = "chatlayer"\n[retention.cap]\nmax = ""\n'):
        parse_config(text)
        validator.validate(tomllib.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        "zzz = 1\n",
        'preset = "x"\n',
        "[service]\ntick_ms = 0\n",
        '[retention.cap]\nmax = "3x"\n',
        "[retention.cap]\nmax = true\n",
        "[retention.bots.a.b.prod]\nconversation = 1\n",
        '[topics]\ndlq = "a b"\n',
    ],
)
def test_schema_rejects_what_the_loader_rejects(text: str) -> None:
    validator = _schema_validator()
    with pytest.raises(ConfigError):
        parse_config(text)
    assert not validator.is_valid(tomllib.loads(text))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab=\"'#[]{}.,=\n \\3")), max_size=60))
def test_line_scanner_never_fails_on_any_text(text: str) -> None:
    lines = _key_lines(text)
    assert all(isinstance(n, int) and n >= 1 for n in lines.values())


def test_config_is_hashable_and_comparable() -> None:
    a, b = parse_config(FULL), parse_config(FULL)
    assert a == b
    assert hash(a) == hash(b)
    assert a != parse_config(FULL.replace('"30d"', '"31d"'))


def test_ids_and_counts_are_taken_up_to_their_limits_and_not_beyond() -> None:
    """The edges of what the file accepts: ids of 1 and 512 characters, a topic count of
    10,000; one more is refused with the line."""
    longest = "x" * 512
    orgs = parse_config(
        f'[retention.orgs.a]\nconversation = "1d"\n[retention.orgs."{longest}"]\n'
        'conversation = "1d"\n'
    ).retention.orgs
    assert sorted(orgs) == ["a", longest]
    names = parse_config(f'[categories]\nnames = ["{"c" * 512}"]\nsliding = []\n').categories
    assert names == ("c" * 512,)
    assert (
        parse_config("[topics]\nreplication_factor = 10000\n").topic_settings.replication_factor
        == 10_000
    )
    for text, message in [
        (f'[retention.orgs."{longest}x"]\nconversation = "1d"\n', "line 1: an org id"),
        ("[topics]\nreplication_factor = 10001\n", "line 2: key 'replication_factor'"),
        ("[categories]\nslidng = ['session']\n", "did you mean 'sliding'?"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config(text)


def test_a_capital_m_unit_is_minutes_with_a_warning_naming_the_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ "1M" is one minute (units are case-insensitive), though M usually means a month:
    the value stands, and the log names the line to look at."""
    text = '[retention.defaults]\nconversation = "30d"\nsession = "1M"\n'
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        config = parse_config(text, path="expiry.toml")
    session = config.retention.defaults["session"]
    assert session.ttl_ms == 60_000
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("expiry.toml line 3: key 'session' in [retention.defaults]")
    assert '"1mo"' in warning


def test_a_negative_ttl_is_ignored_with_a_warning_naming_the_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A negative TTL is ignored, as the contract says (like 0), and that is said with its
    line: ``conversation = "-5d"`` made the records never expire without a word (a trial).
    0 is a value people mean ("this scope gives none"): no warning for it."""
    text = '[retention.orgs.acme]\nconversation = "-5d"\nsession = -30\nerror = 0\n'
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        config = parse_config(text, path="expiry.toml")
    assert {c.ttl_ms for c in config.retention.orgs["acme"].values()} == {None}
    said = [r.getMessage() for r in caplog.records]
    assert [w.split(": key ")[0] for w in said] == ["expiry.toml line 2", "expiry.toml line 3"]
    assert "key 'conversation' in [retention.orgs.acme] is negative ('-5d'): ignored" in said[0]


@pytest.mark.parametrize("value", ["-1.5", '" -5d"', '"-5M"'])
def test_a_negative_ttl_written_any_way_is_warned_about(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A negative float (minutes), a string with blanks before its sign (a valid
    duration), a capital M beside its own note: each is negative, ignored, and said."""
    text = f"[retention.orgs.acme]\nconversation = {value}\n"
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        config = parse_config(text, path="expiry.toml")
    assert config.retention.orgs["acme"]["conversation"].ttl_ms is None
    negative = [r.getMessage() for r in caplog.records if "is negative" in r.getMessage()]
    assert [w.split(" is negative")[0] for w in negative] == [
        "expiry.toml line 2: key 'conversation' in [retention.orgs.acme]"
    ]


@pytest.mark.parametrize("value", ["1m", "1mo", "1MO", "2h", "1", 5])
def test_other_units_are_not_warned_about(value: object, caplog: pytest.LogCaptureFixture) -> None:
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        parse_config(f"[retention.defaults]\nconversation = {shown}\n")
    assert caplog.records == []


def test_retired_topics_are_read_and_none_may_be_an_input() -> None:
    """``[topics] retired``: the topics taken out of the inputs whose records the service
    still fires (none by default, an environment variable too); one listed in both is
    refused at its line, as it would be read and not read at once."""
    assert parse_config("").topics.retired == ()
    text = '[topics]\ninputs = ["a", "b"]\nretired = ["old"]\n'
    assert parse_config(text).topics.retired == ("old",)
    env = {"STREAM_EXPIRY_TOPICS_RETIRED": "old, older"}
    assert parse_config(text, environ=env).topics.retired == ("old", "older")
    both = '[topics]\ninputs = ["a", "b"]\n\nretired = ["c", "b"]\n'
    with pytest.raises(
        ConfigError,
        match=r"^x\.toml line 4: topic 'b' is in both \[topics\] inputs and retired: an input "
        r"is read, a retired topic only has its records tombstoned",
    ):
        parse_config(both, path="x.toml")
    with pytest.raises(ConfigError, match=r"also used by 'retired'"):
        parse_config('[topics]\nretired = ["expiry.dlq"]\n')


@pytest.mark.parametrize(("mode", "password", "warned"), [
    (0o644, True, True),
    (0o640, True, True),
    (0o600, True, False),
    (0o644, False, False),
])  # fmt: skip
def test_a_password_in_a_file_others_can_read_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, password: bool, warned: bool
) -> None:
    """A security trial: a config file holding ``sasl_password`` at the usual 0644 was
    read without a word, though every user of the machine could read the password."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\n'
        'sasl_username = "svc"\n' + ('sasl_password = "S3cr3tPW"\n' if password else "")
    )
    cfg.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="stream_expiry.config"):
        load_config(cfg, environ={})
    said = [r.getMessage() for r in caplog.records]
    assert len([s for s in said if "other users can read it" in s]) == int(warned), said
    assert not [s for s in said if "S3cr3tPW" in s]

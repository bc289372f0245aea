"""The environment layer of the config: STREAM_EXPIRY_<KEY> beats the file, errors name
the variable, the file's own errors keep their line."""

from __future__ import annotations

import json
import logging
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from stream_expiry.config import (
    ENV_SETTINGS,
    ConfigError,
    env_name,
    load_config,
    parse_config,
    unknown_variables,
)
from stream_expiry.policy import ENV_VARIABLES

ConfigPath = tuple[str, ...]

FILE = """\
group_id = "from-file"
state_dir = "/file/state"
max_clock_skew = "1m"

[service]
tick_ms = 20

[topics]
inputs = ["a", "b"]
stamped = "file.stamped"

[categories]
names = ["conversation", "session"]
"""


def test_the_environment_beats_the_file_key_by_key() -> None:
    env = {
        "STREAM_EXPIRY_GROUP_ID": "from-env",
        "STREAM_EXPIRY_SERVICE_TICK_MS": "5",
        "STREAM_EXPIRY_SERVICE_HORIZON": "2h",
        "STREAM_EXPIRY_TOPICS_INPUTS": "x, y,z",
        "STREAM_EXPIRY_TOPICS_TOMBSTONES": "env.tombstones",
        "STREAM_EXPIRY_CATEGORIES_SLIDING": "",  # empty: unset
        "STREAM_EXPIRY_MAX_CLOCK_SKEW": "90s",
        "STREAM_EXPIRY_SERVICE_SESSION_TIMEOUT": "2s",
        "STREAM_EXPIRY_SERVICE_WORKERS": "1",
    }
    config = parse_config(FILE, path="f.toml", environ=env)
    assert config.group_id == "from-env"
    assert config.state_dir == "/file/state"  # not in the environment: the file's
    assert (config.tick_ms, config.horizon_ms, config.max_clock_skew_ms) == (5, 7_200_000, 90_000)
    assert config.session_timeout_ms == 2_000
    assert config.workers == 1
    assert parse_config(FILE, path="f.toml").workers is None  # one per CPU
    assert config.topics.inputs == ("x", "y", "z")
    assert config.topics.stamped == "file.stamped"
    assert config.topics.tombstones == "env.tombstones"
    assert config.sliding == frozenset({"session"})
    assert config.path == "f.toml"


def test_without_environ_only_the_file_counts() -> None:
    assert parse_config(FILE).group_id == "from-file"


def test_without_a_file_the_environment_beats_the_defaults() -> None:
    config = load_config(None, environ={"STREAM_EXPIRY_STATE_DIR": "/env/state"})
    assert config.state_dir == "/env/state"
    assert config.group_id == "stream-expiry"
    assert config.path is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STREAM_EXPIRY_SERVICE_TICK_MS", "fast", "must be a positive integer"),
        ("STREAM_EXPIRY_TOPICS_STAMPED", "has space", "Kafka topic name"),
        ("STREAM_EXPIRY_PRESET", "cognigi", "did you mean 'cognigy'"),
        ("STREAM_EXPIRY_MAX_CLOCK_SKEW", "5x", "invalid duration"),
        ("STREAM_EXPIRY_TOPICS_DLQ", "a", "also used by 'inputs'"),
        ("STREAM_EXPIRY_CATEGORIES_SLIDING", "error", "not in names"),
    ],
)
def test_an_invalid_value_names_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(FILE, path="f.toml", environ={name: value})
    text = str(caught.value)
    assert text.startswith(f"environment variable {name}: ")
    assert message in text
    assert "line" not in text


def test_the_files_own_mistake_keeps_its_line() -> None:
    with pytest.raises(ConfigError, match=r"f.toml line 6: key 'tick_ms'"):
        parse_config(
            FILE.replace("tick_ms = 20", "tick_ms = -1"),
            path="f.toml",
            environ={"STREAM_EXPIRY_GROUP_ID": "g"},
        )


def test_every_setting_outside_retention_has_a_variable() -> None:
    names = {env_name(path) for path in ENV_SETTINGS}
    assert "STREAM_EXPIRY_BOOTSTRAP_SERVERS" not in names  # the commands' business (contract)
    assert {
        "STREAM_EXPIRY_GROUP_ID",
        "STREAM_EXPIRY_STATE_DIR",
        "STREAM_EXPIRY_PRESET",
        "STREAM_EXPIRY_TOPICS_STAMPED",
        "STREAM_EXPIRY_TOPICS_RECEIPTS",
        "STREAM_EXPIRY_TOPICS_INPUTS",
    } <= names


def test_the_archive_gate_can_be_set_from_the_environment() -> None:
    """A compliance switch set in a Deployment's env must not be dropped silently."""
    env = {
        "STREAM_EXPIRY_ARCHIVE_REQUIRED": "TRUE",
        "STREAM_EXPIRY_ARCHIVE_GROUP_ID": "arch-2",
        "STREAM_EXPIRY_ARCHIVE_MARKER_MARGIN": "3d",
    }
    archive = parse_config("", environ=env).archive
    assert (archive.required, archive.group_id) == (True, "arch-2")
    assert archive.marker_margin_ms == 3 * 86_400_000
    off = parse_config(
        "[archive]\nrequired = true\n", environ={"STREAM_EXPIRY_ARCHIVE_REQUIRED": "false"}
    )
    assert off.archive.required is False
    with pytest.raises(ConfigError, match="STREAM_EXPIRY_ARCHIVE_REQUIRED") as err:
        parse_config("", environ={"STREAM_EXPIRY_ARCHIVE_REQUIRED": "yes"})
    assert "true or false" in str(err.value)


def test_a_variable_no_setting_reads_is_warned_about_with_the_closest_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A typo was ignored without a word (a user trial's STREAM_EXPIRY_SERVICE_TICKMS),
    while the same typo in the file stops the start. Warned, not fatal: the start goes on."""
    env = {
        "STREAM_EXPIRY_SERVICE_TICKMS": "5",
        "STREAM_EXPIRY_KAFKA_SASL_PASWORD": "s3cret",
        "STREAM_EXPIRY_NOTHING_LIKE_IT": "1",
        "STREAM_EXPIRY_GROUP_ID": "g",  # read: no warning for these
        "STREAM_EXPIRY_KAFKA_SASL_USERNAME": "u",
        "STREAM_EXPIRY_LOG_LEVEL": "INFO",
        "STREAM_EXPIRY_METRICS_PORT": "9400",
        "STREAM_EXPIRY_METRICS_HOST": "127.0.0.1",
        "STREAM_EXPIRY_BOOTSTRAP_SERVERS": "k:9092",
        "STREAM_EXPIRY_TEST_BOOTSTRAP": "k:9092",  # the test harness's
        "PATH": "/bin",
    }
    with caplog.at_level(logging.WARNING, logger="stream_expiry.config"):
        config = load_config(None, environ=env)
    assert config.group_id == "g"
    assert [r.getMessage() for r in caplog.records] == [
        "$STREAM_EXPIRY_KAFKA_SASL_PASWORD is not a setting stream-expiry reads, so it is "
        "ignored; did you mean $STREAM_EXPIRY_KAFKA_SASL_PASSWORD?",
        "$STREAM_EXPIRY_NOTHING_LIKE_IT is not a setting stream-expiry reads, so it is "
        "ignored; the README's 'Settings from the environment' lists them",
        "$STREAM_EXPIRY_SERVICE_TICKMS is not a setting stream-expiry reads, so it is "
        "ignored; did you mean $STREAM_EXPIRY_SERVICE_TICK_MS?",
    ]
    assert "s3cret" not in caplog.text


def test_every_variable_the_deployment_files_set_is_one_stream_expiry_reads() -> None:
    root = Path(__file__).parents[2]
    texts = [root / "docker-compose.yml", root / "Dockerfile", *(root / "deploy").rglob("*.y*ml")]
    names = {n for p in texts for n in re.findall(r"STREAM_EXPIRY_[A-Z0-9_]+", p.read_text())}
    assert len(names) >= 5
    assert unknown_variables(dict.fromkeys(names, "1")) == []


README = Path(__file__).parents[2] / "README.md"
SCHEMA = Path(__file__).parents[2] / "stream_expiry" / "schemas" / "config.schema.json"
# The tables whose keys the loader checks; a table of names (orgs, categories, topics of
# [sink.compacted]) is a key of its own, "t" standing for any one of [sink.compacted].
_TABLES: tuple[ConfigPath, ...] = (
    (), ("service",), ("topics",), ("categories",), ("kafka",), ("retention",), ("archive",),
    ("sink",), ("sink", "compacted", "t"),
)  # fmt: skip


def _loader_keys() -> set[ConfigPath]:
    """Every key the loader takes, as it says it when given one it does not."""
    keys: set[ConfigPath] = set()
    for table in _TABLES:
        head = f"[{'.'.join(table)}]\n" if table else ""
        with pytest.raises(ConfigError) as err:
            parse_config(f"{head}no_such_key = 1\n")
        valid = re.search(r"; valid: (.*)$", str(err.value))
        assert valid is not None, err.value
        keys |= {(*table, key) for key in valid[1].split(", ")}
    return keys


def _schema_keys() -> dict[ConfigPath, dict[str, Any]]:
    """Every key of the config schema, with its node (``$ref`` followed)."""
    schema = json.loads(SCHEMA.read_text())

    def node(raw: dict[str, Any]) -> dict[str, Any]:
        ref = raw.get("$ref", "").rpartition("/")[2]
        return {**schema["$defs"][ref], **raw} if ref else raw

    found: dict[ConfigPath, dict[str, Any]] = {}

    def walk(raw: dict[str, Any], path: ConfigPath) -> None:
        for key, child in node(raw).get("properties", {}).items():
            found[(*path, key)] = node(child)
            walk(child, (*path, key))
        if path == ("sink", "compacted"):
            walk(node(raw)["additionalProperties"], (*path, "t"))

    walk(schema, ())
    return found


def _name(path: ConfigPath) -> str:
    """A key as the README names it: ``[service] tick_ms``, ``group_id``."""
    return f"[{'.'.join(path[:-1])}] {path[-1]}" if path[:-1] else path[-1]


def _as_variable(value: object) -> str:
    """A TOML value as its environment variable would spell it."""
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(value) if isinstance(value, list) else str(value)


def test_the_config_schema_has_the_keys_and_the_defaults_of_the_loader() -> None:
    """schemas/config.schema.json is what editors and the README point to for the file:
    the same keys as the loader, and each default it gives is the loader's."""
    schema = _schema_keys()
    assert set(schema) == _loader_keys()
    bare = parse_config("")
    for path, node in schema.items():
        if "default" in node:
            head = f"[{'.'.join(path[:-1])}]\n" if path[:-1] else ""
            text = f"{head}{path[-1]} = {json.dumps(node['default'])}\n"
            assert parse_config(text) == bare, path


def _env_rows(readme: str) -> list[list[str]]:
    """The cells of the rows of "Settings from the environment"."""
    start = readme.index("### Settings from the environment")
    table = readme[start : readme.index("\n## ", start)]
    header, _rule, *rows = [line for line in table.splitlines() if line.startswith("|")]
    assert header == "| setting | environment variable | default | flag |"
    return [[cell.strip() for cell in row.strip()[1:-1].split("|")] for row in rows]


def _readme_defaults(readme: str) -> dict[ConfigPath, str]:
    """Each config key of the table, with its default as the table says it: a code span is
    a value (as its variable would spell it), other words say what the loader works out."""
    defaults: dict[ConfigPath, str] = {}
    for setting, _variable, default, _flag in _env_rows(readme):
        table: ConfigPath = ()
        paths: list[ConfigPath] = []
        for span in re.findall(r"`([^`]+)`", setting):
            table_key = re.fullmatch(r"\[([a-z_]+)\] ([a-z_]+)", span)
            table = (table_key[1],) if table_key else table
            paths.append((*table, table_key[2] if table_key else span))
        said = default.split(", ")
        assert len(said) == len(paths) or not paths, (setting, default)
        defaults |= dict(zip(paths, said, strict=False))
    return defaults


def _default_drift(readme: str) -> list[str]:
    """Where the README's default of a setting is not the loader's (set as its variable,
    that value changes nothing) or the schema's, or where it has none."""
    drift: list[str] = []
    said, schema, bare = _readme_defaults(readme), _schema_keys(), load_config(None, environ={})
    for path in sorted(ENV_SETTINGS.keys() - said.keys()):
        drift.append(f"{_name(path)}: no default in the table")
    for path, text in said.items():
        value = re.match(r"`([^`]*)`", text)
        if "default" not in schema[path]:
            if value is not None:
                drift.append(f"{_name(path)}: {text} is said, the loader works it out")
        elif schema[path]["default"] == [] and text.startswith("none"):
            continue  # an empty list: "none", in words (an empty code span reads as nothing)
        elif value is None or value[1] != _as_variable(schema[path]["default"]):
            drift.append(f"{_name(path)}: {text} is said, the schema has "
                         f"{_as_variable(schema[path]['default'])!r}")  # fmt: skip
        elif load_config(None, environ={env_name(path): value[1]}) != bare:
            drift.append(f"{_name(path)}: {text} is said, the loader differs")
    return drift


def test_the_readme_names_every_variable_of_the_config_file() -> None:
    """Its table "Settings from the environment" is where an operator looks them up: ten
    of them were missing (compose set one of those, STREAM_EXPIRY_TOPICS_REPLICATION_FACTOR),
    so they read as not settable (a trial). It gives each one's default too (state_dir's,
    ./state, and the categories' were nowhere in the README), checked against the loader
    and the schema."""
    readme = README.read_text()
    start = readme.index("### Settings from the environment")
    table = readme[start : readme.index("\n## ", start)]
    assert [env_name(path) for path in ENV_SETTINGS if env_name(path) not in table] == []
    assert _default_drift(readme) == []
    wrong = readme.replace("| `10`, `1h`, `7d`, `6s`,", "| `10`, `1h`, `7d`, `10s`,")
    assert _default_drift(wrong) == [
        "[service] session_timeout: `10s` is said, the schema has '6s'"
    ]
    guessed = readme.replace("`6s`, one per CPU the service may use", "`6s`, `2`")
    assert _default_drift(guessed) == ["[service] workers: `2` is said, the loader works it out"]


def _readme_keys(readme: str) -> set[ConfigPath]:
    """Every config key the README names: in its TOML examples (a commented-out key too),
    as `[table] key` and in the table of settings."""
    keys: set[ConfigPath] = set(_readme_defaults(readme))

    def add(table: dict[str, Any], path: ConfigPath) -> None:
        for key, value in table.items():
            keys.add((*path, key))
            if isinstance(value, dict):
                add(value, (*path, key))

    for block in re.findall(r"^```toml\n(.*?)^```", readme, re.M | re.S):
        add(tomllib.loads(block), ())
        table: ConfigPath = ()
        for line in block.splitlines():
            if header := re.match(r"\[(.+)\]", line):
                table = tuple(header[1].replace('"', "").split("."))
            elif commented := re.match(r"#\s*([a-z_]+)\s*[=:]", line):
                keys.add((*table, commented[1]))
    keys |= {(table, key) for table, key in re.findall(r"`\[([a-z_]+)\] ([a-z_]+)`", readme)}
    return keys


def _as_loader_key(path: ConfigPath, loader: set[ConfigPath]) -> ConfigPath:
    """``path`` as the loader names it: the topic of [sink.compacted] as "t", and what is
    under a key whose value is a table of names (an org, a category) dropped."""
    if path[:2] == ("sink", "compacted") and len(path) > 2:
        path = ("sink", "compacted", "t", *path[3:])
    leaves = _leaves(loader)
    return next((path[:end] for end in range(1, len(path)) if path[:end] in leaves), path)


def _leaves(keys: set[ConfigPath]) -> set[ConfigPath]:
    """The keys that are not tables of other keys."""
    return {k for k in keys if not any(o[: len(k)] == k and o != k for o in keys)}


def test_the_readme_names_every_key_of_the_config_file_and_none_it_does_not_take(
    tmp_path: Path,
) -> None:
    """A key the README names must be one the loader takes (a newcomer copies it into the
    file, which then does not start), every TOML example must load, and every key the
    loader takes must be named."""
    readme, loader = README.read_text(), _loader_keys()
    tables = {k[:end] for k in loader for end in range(1, len(k))}
    said = {_as_loader_key(path, loader) for path in _readme_keys(readme)}
    assert sorted(said - loader - tables) == []
    assert sorted(_leaves(loader) - said) == []
    ca = tmp_path / "ca.pem"  # Security's example names a CA file, which must exist
    ca.write_text("")
    for block in re.findall(r"^```toml\n(.*?)^```", readme, re.M | re.S):
        parse_config(block.replace("/etc/kafka/ca.pem", str(ca)), path="README.md")
    # What the check sees: a key misspelt.
    misspelt = readme.replace('marker_margin = "2d"', 'marker_margins = "2d"')
    said = {_as_loader_key(path, loader) for path in _readme_keys(misspelt)}
    assert said - loader - tables == {("archive", "marker_margins")}


def test_every_variable_the_readme_names_is_one_stream_expiry_reads() -> None:
    """The README's `STREAM_EXPIRY_*` names, and its list of the platform's TTL variables,
    against those the commands read."""
    readme = README.read_text()
    names = set(re.findall(r"\bSTREAM_EXPIRY_[A-Z0-9_]*[A-Z0-9]\b", readme))
    assert len(names) >= 30
    assert unknown_variables(dict.fromkeys(names, "1")) == []
    start = readme.index("Environment variables of the service are candidates too")
    listed = re.findall(r"`([A-Z_]+)`", readme[start : readme.index("Each command reads", start)])
    assert listed == [name for names in ENV_VARIABLES.values() for name in names]


def test_a_misspelt_ttl_variable_is_warned_about_with_the_name_meant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`MAX_CONVERSATIONS_TTL_IN_MINUTES=60` (the insights variable beside it is plural,
    this one is not) gave no TTL and no word: conversations were kept 30 days, not an hour,
    while the operator thought otherwise (a trial). Each command warns of a variable whose
    name is close to one the service reads, naming that one; a platform's other TTL
    variables, unlike any the service reads, are passed over in silence."""
    env = {
        "MAX_CONVERSATIONS_TTL_IN_MINUTES": "60",
        "MAX_SESSION_TTL_IN_MINUTES": "30",  # the session's is INSIGHTS_MAX_SESSIONS_...
        "max_contact_profile_ttl_in_minutes": "60",
        "INSIGHTS_MAX_CONVERSATION_TTL_IN_MINUTES": "60",
        "INSIGHTS_MAX_STEPS_TTL_IN_MINUTES": "60",  # one it reads
        "MAX_SESSION_STATE_TTL_IN_MINUTES": "5",  # the platform's own, not a category's
        "MAX_ERROR_TTL_IN_MINUTES": "5",  # errors have no variable: [retention] sets them
        "REDIS_TTL": "5",
        "MAX_STEP_EVENT_TTL_IN_MINUTES": "",  # empty: unset
    }
    with caplog.at_level(logging.WARNING, logger="stream_expiry.config"):
        load_config(None, environ=env)
    tail = "`stream-expiry explain` lists the TTL variables each category reads"
    assert [r.getMessage() for r in caplog.records] == [
        "$INSIGHTS_MAX_CONVERSATION_TTL_IN_MINUTES gives no TTL (no such variable), so it is "
        f"ignored; did you mean $INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES? {tail}",
        "$MAX_CONVERSATIONS_TTL_IN_MINUTES gives no TTL (no such variable), so it is "
        f"ignored; did you mean $MAX_CONVERSATION_TTL_IN_MINUTES? {tail}",
        "$MAX_SESSION_TTL_IN_MINUTES gives no TTL (no such variable), so it is ignored; "
        f"did you mean $INSIGHTS_MAX_SESSIONS_TTL_IN_MINUTES? {tail}",
        "$max_contact_profile_ttl_in_minutes gives no TTL (names are case-sensitive), so it "
        f"is ignored; did you mean $MAX_CONTACT_PROFILE_TTL_IN_MINUTES? {tail}",
    ]

"""The environment layer of the config: STREAM_EXPIRY_<KEY> beats the file, errors name
the variable, the file's own errors keep their line."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from stream_expiry.config import (
    ENV_SETTINGS,
    ConfigError,
    env_name,
    load_config,
    parse_config,
    unknown_variables,
)

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


def test_the_readme_names_every_variable_of_the_config_file() -> None:
    """Its table "Settings from the environment" is where an operator looks them up: ten
    of them were missing (compose set one of those, STREAM_EXPIRY_TOPICS_REPLICATION_FACTOR),
    so they read as not settable (a trial)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("### Settings from the environment")
    table = readme[start : readme.index("\n## ", start)]
    assert [env_name(path) for path in ENV_SETTINGS if env_name(path) not in table] == []


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

"""Key templates of users' compacted topics (stream_expiry/key_template.py) and the config
file's [sink.compacted] section that holds them."""

from __future__ import annotations

import pytest

from stream_expiry.config import ConfigError, parse_config
from stream_expiry.errors import ConfigurationError
from stream_expiry.key_template import KeyTemplate
from stream_expiry.model import Identity

REC = Identity("acme", "bot 1", "draft", "conversation", "r/1:ü")


@pytest.mark.parametrize(
    ("template", "key"),
    [
        ("{record_id}", "r/1:ü"),
        ("{org}:{bot}:{record_id}", "acme:bot 1:r/1:ü"),
        ("conv-{env}-{category}-{record_id}", "conv-draft-conversation-r/1:ü"),
        ("{{{record_id}}}", "{r/1:ü}"),
        ("{key}", REC.key),
    ],
)
def test_render_puts_raw_values_in_utf8(template: str, key: str) -> None:
    assert KeyTemplate(template).render(REC) == key.encode("utf-8")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{recordid}", "unknown placeholder {recordid}"),
        ("{record_id!r}", "unknown placeholder {record_id!r}"),
        ("{record_id:>5}", "unknown placeholder {record_id:>5}"),
        ("{org.x}", "unknown placeholder"),
        ("{0}", "unknown placeholder {0}"),
        ("{}", "unknown placeholder {}"),
        ("{record_id", "write a literal brace as {{ or }}"),
        ("fixed", "no placeholder"),
        ("", "non-empty"),
    ],
)
def test_bad_templates_are_refused_with_a_reason(template: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        KeyTemplate(template)


def test_config_file_maps_topics_to_categories_and_keys() -> None:
    config = parse_config(
        '[sink.compacted."conversation-history"]\n'
        'categories = ["conversation", "session"]\n'
        'key = "{org}:{bot}:{record_id}"\n'
        "[sink.compacted.errors_by_id]\n"
        'categories = ["error"]\n'
    )
    first, second = config.sink.compacted
    assert (first.topic, first.categories, first.key) == (
        "conversation-history",
        ("conversation", "session"),
        KeyTemplate("{org}:{bot}:{record_id}"),
    )
    assert (second.topic, second.categories, second.key) == ("errors_by_id", ("error",), None)
    assert parse_config("").sink.compacted == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[sink.compacted.t]\nkey = "{record_id}"\n', "needs categories"),
        ('[sink.compacted.t]\ncategories = ["nope"]\n', "'nope' .* not a configured category"),
        (
            '[sink.compacted.t]\ncategories = ["error"]\n[sink.compacted.u]\ncategories = ["error"]\n',
            "already deleted from topic 't'",
        ),
        (
            '[sink.compacted.t]\ncategories = ["error"]\nkey = "{rid}"\n',
            "line 3: .*unknown placeholder",
        ),
        ('[sink.compacted."a b"]\ncategories = ["error"]\n', "not a Kafka topic name"),
        ('[sink.compacted.t]\ncategories = ["error"]\nkeys = "x"\n', "did you mean 'key'"),
        ("[sink]\ncompact = 1\n", "did you mean 'compacted'"),
    ],
)
def test_config_file_mistakes_are_fatal_and_located(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, path="c.toml")


def test_the_config_schema_knows_the_sink_section() -> None:
    import json
    import tomllib
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).parents[2] / "schemas/config.schema.json").read_text())
    good = '[sink.compacted."conversation-history"]\ncategories = ["conversation"]\nkey = "{org}:{record_id}"\n'
    parse_config(good)
    jsonschema.validate(tomllib.loads(good), schema)
    for bad in (good.replace("categories", "cats"), good.replace("{org}:{record_id}", "fixed")):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(tomllib.loads(bad), schema)


def test_templates_are_equal_by_their_text() -> None:
    assert KeyTemplate("{org}:{record_id}") == KeyTemplate("{org}:{record_id}")
    assert KeyTemplate("{org}") != KeyTemplate("{bot}")
    assert hash(KeyTemplate("{org}")) == hash(KeyTemplate("{org}"))
    assert repr(KeyTemplate("{key}")) == "KeyTemplate('{key}')"

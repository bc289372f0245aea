"""A name an event gives for an optional field it lacks (``environment`` for ``env``,
``bot_id`` for ``bot``): the event is valid and goes on as the contract says (the name is
ignored, the field takes its default), and the service says so once per name. A misspelt
required field is a dead letter already, whose detail names the producer's spelling."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.config import parse_config
from stream_expiry.event_fields import FIELDS, meant, misspelt_fields
from stream_expiry.model import InputEvent, Rejection, parse_event
from stream_expiry.policy import Resolution
from stream_expiry.service import Service
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

if TYPE_CHECKING:
    from collections.abc import Mapping

NOW = 1_796_369_399_212
BASE = {"category": "conversation", "org": "acme", "record_id": "r1", "ts": NOW - 1_000}
CATEGORIES = frozenset({"conversation"})


def _parse(**extra: Any) -> InputEvent | Rejection:
    body = {**BASE, **extra}
    return parse_event(orjson.dumps(body), categories=CATEGORIES, now_ms=NOW, max_skew_ms=0)


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("environment", "env"),
        ("Env", "env"),
        ("bot_id", "bot"),
        ("botId", "bot"),
        ("bot-id", "bot"),
        ("evnt_id", "event_id"),
        ("eventId", "event_id"),
        ("operation", "op"),
        ("payload", "data"),
        ("recordId", "record_id"),
        ("timestamp", "ts"),
    ],
)
def test_a_name_close_to_a_field_or_its_usual_other_name_means_that_field(
    name: str, field: str
) -> None:
    assert meant(name) == field


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("stage", "env"),
        ("organization", "org"),
        ("tenant_id", "org"),
        ("tenantId", "org"),
        ("TenantID", "org"),
        ("message_id", "event_id"),
        ("messageId", "event_id"),
        ("time", "ts"),
        ("createdAt", "ts"),
        ("time-stamp", "ts"),
        ("id", "record_id"),
    ],
)
def test_another_schemas_name_means_the_field_however_it_is_cased_or_joined(
    name: str, field: str
) -> None:
    """Names a spelling check cannot find (too far from every field), in snake, camel or
    kebab case: ``tenantId``, ``messageId`` and ``createdAt`` meant nothing, while their
    snake-case spellings and ``botId`` and ``orgId`` were said."""
    assert meant(name) == field


@pytest.mark.parametrize("name", [*sorted(FIELDS), "channel", "locale", "user_agent", "x"])
def test_the_fields_and_a_producers_own_extras_mean_nothing_else(name: str) -> None:
    assert meant(name) is None


def test_a_misspelt_optional_field_is_ignored_as_the_contract_says_and_named() -> None:
    got = _parse(environment="draft", bot_id="b7", channel="web")
    assert isinstance(got, InputEvent)
    assert (got.identity.env, got.identity.bot) == ("live", "_")  # the defaults: unchanged
    assert got.misspelt == (("environment", "env"), ("bot_id", "bot"))


def test_an_extra_beside_the_field_it_resembles_is_the_producers_own() -> None:
    got = _parse(env="draft", Env="eu", data={"a": 1}, payload="p")
    assert isinstance(got, InputEvent)
    assert got.identity.env == "draft"
    assert got.misspelt == ()
    assert misspelt_fields({**BASE, "bot": "b", "bot_id": "b"}) == ()


def test_a_misspelt_required_field_is_a_dead_letter_naming_the_producers_spelling() -> None:
    body = {k: v for k, v in BASE.items() if k != "record_id"} | {"recordId": "r1"}
    got = parse_event(orjson.dumps(body), categories=CATEGORIES, now_ms=NOW, max_skew_ms=0)
    assert got == Rejection(
        "missing_field", "field 'record_id' is required; the event has 'recordId': is that it?"
    )
    plain = {k: v for k, v in BASE.items() if k != "record_id"} | {"channel": "web"}
    got = parse_event(orjson.dumps(plain), categories=CATEGORIES, now_ms=NOW, max_skew_ms=0)
    assert got == Rejection("missing_field", "field 'record_id' is required")


def _record(offset: int, body: Mapping[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(
        topic="conversations", partition=1, offset=offset, key=b"k", value=orjson.dumps(body)
    )


def test_the_service_says_each_such_name_once_with_the_default_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proc = PartitionProcessor(
        "conversations",
        1,
        PartitionStore(MemoryKV()),
        resolve=lambda _i, _t: Resolution(86_400_000, "org"),
        sliding=frozenset(),
        categories=CATEGORIES,
        max_skew_ms=0,
        now_ms=NOW,
    )
    first = _record(7, {**BASE, "environment": "draft"})
    second = _record(8, {**BASE, "record_id": "r2", "environment": "draft", "botId": "b1"})
    plain = _record(9, {**BASE, "record_id": "r3", "channel": "web"})
    effects = proc.process([first, second, plain], NOW)
    assert effects.misspelt == [
        (first, (("environment", "env"),)),
        (second, (("environment", "env"), ("botId", "bot"))),
    ]
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        service._count(effects)
        service._count(proc.process([_record(10, {**BASE, "environment": "x"})], NOW))
    assert [r.getMessage() for r in caplog.records] == [
        "events carry 'environment', which no event field is: is it 'env'? It is ignored, so "
        "they take env's default, 'live' (first seen at conversations[1]@7; said once)",
        "events carry 'botId', which no event field is: is it 'bot'? It is ignored, so they "
        "take bot's default, '_' (first seen at conversations[1]@8; said once)",
    ]


_OPTIONAL: dict[str, list[Any]] = {
    "bot": ["_", "b1"],
    "env": ["live", "draft"],
    "op": ["create", "touch"],
    "event_id": [None, "e1", 7],
    "data": [None, {"a": 1}, "x"],
}


@given(
    given_fields=st.dictionaries(
        st.sampled_from(sorted(_OPTIONAL)), st.integers(min_value=0, max_value=2)
    ),
    misspelt=st.sampled_from(["evnt_id", "environment", "bot_id", "payload", "Op"]),
    own_extra=st.booleans(),
)
def test_a_misspelt_name_is_found_whatever_optional_fields_the_event_gives(
    given_fields: dict[str, int], misspelt: str, own_extra: bool
) -> None:
    """The parse counts an event's names against the fields it gives, by the objects
    ``get`` hands back (a default's own object means "not given"): explicit defaults, nulls
    and extras of the producer's own must never hide a misspelt name."""
    body: dict[str, Any] = {**BASE}
    for name, pick in given_fields.items():
        choices = _OPTIONAL[name]
        body[name] = choices[pick % len(choices)]
    if own_extra:
        body["channel"] = "web"
    body[misspelt] = "x"
    got = parse_event(orjson.dumps(body), categories=CATEGORIES, now_ms=NOW, max_skew_ms=0)
    field = meant(misspelt)
    assert field is not None
    assert isinstance(got, InputEvent)
    # Beside the field it resembles, the name is the producer's own extra: nothing to say.
    assert got.misspelt == (() if field in body else ((misspelt, field),))

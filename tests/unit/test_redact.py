"""Redaction (CONTRACT "Redaction"): removed values appear nowhere in the output, nothing else
changes, the input is never mutated, and the stamp lists the paths that removed something."""

from __future__ import annotations

import copy
import logging
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.config import ConfigError, parse_config
from stream_expiry.model import Identity, InputEvent, Stamp, encode_stamp, parse_event
from stream_expiry.redact import ALL, InvalidRedactPath, Redactor, parse_path

SECRET = "SECRET-VALUE"
# Keys and leaves drawn from small alphabets so that paths hit often; leaves never contain
# the secret marker, so any marker in the output comes from a field that should be gone.
# Keys differ in case too: a path matches keys whatever their case (producers' SDKs differ).
KEYS = st.sampled_from(["a", "A", "b", "c", "user", "User", "email", "EMAIL"])
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text("xyz", max_size=3)
)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)
PATHS = st.lists(KEYS, min_size=1, max_size=3).map(".".join)


def matching(value: dict[str, Any], segment: str) -> list[str]:
    """The keys of ``value`` that ``segment`` names: every one equal to it but for case."""
    return [k for k in value if k.casefold() == segment.casefold()]


def values_at(value: Any, path: tuple[str, ...]) -> list[Any]:
    """A reference reader: every value the path names (lists are transparent)."""
    if isinstance(value, list):
        return [v for item in value for v in values_at(item, path)]
    if not isinstance(value, dict):
        return []
    if len(path) == 1:
        return [value[k] for k in matching(value, path[0])]
    return [v for k in matching(value, path[0]) for v in values_at(value[k], path[1:])]


def found_at(value: Any, path: tuple[str, ...]) -> list[str]:
    """A reference: the paths, as the data spells them, of every value ``path`` names."""
    if isinstance(value, list):
        return [p for item in value for p in found_at(item, path)]
    if not isinstance(value, dict):
        return []
    if len(path) == 1:
        return matching(value, path[0])
    return [f"{k}.{p}" for k in matching(value, path[0]) for p in found_at(value[k], path[1:])]


def plant(value: Any, path: tuple[str, ...]) -> Any:
    """A copy of ``value`` with the secret marker wherever ``path`` names a field."""
    if isinstance(value, list):
        return [plant(item, path) for item in value]
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for k in matching(out, path[0]):
        out[k] = SECRET if len(path) == 1 else plant(out[k], path[1:])
    return out


@given(JSON, st.lists(PATHS, min_size=1, max_size=3, unique=True))
def test_redacted_values_never_appear_and_the_input_is_untouched(
    data: Any, paths: list[str]
) -> None:
    for p in paths:
        data = plant(data, parse_path(p))
    before = copy.deepcopy(data)
    out, removed = Redactor.from_config({"conversation": paths}).redact("conversation", data)
    assert data == before  # never mutated
    assert SECRET.encode() not in orjson.dumps(out)
    for p in paths:
        assert values_at(out, parse_path(p)) == []
    # As the data spells them, once each, in the order of the configuration, then the data's.
    found = [f for p in paths for f in found_at(before, parse_path(p))]
    assert list(removed) == list(dict.fromkeys(found))


@given(JSON, st.lists(PATHS, min_size=1, max_size=3))
def test_output_is_the_input_when_nothing_matches(data: Any, paths: list[str]) -> None:
    missing = [p + ".absent" if values_at(data, parse_path(p)) else p for p in paths]
    missing = [p for p in missing if not values_at(data, parse_path(p))]
    out, removed = Redactor.from_config({"conversation": missing}).redact("conversation", data)
    assert out == data
    assert out is data  # nothing copied either
    assert removed == ()


@given(JSON, st.lists(PATHS, min_size=1, max_size=3))
def test_redaction_is_idempotent_and_only_removes(data: Any, paths: list[str]) -> None:
    r = Redactor.from_config({"conversation": paths})
    once, _ = r.redact("conversation", data)
    twice, removed = r.redact("conversation", once)
    assert twice == once
    assert removed == ()
    assert len(orjson.dumps(once)) <= len(orjson.dumps(data))


def test_nested_fields_and_lists() -> None:
    data = {
        "user": {"email": "a@b.c", "name": "Ann"},
        "transcript": [{"text": "hi", "ts": 1}, {"text": "bye", "ts": 2}, "raw line"],
        "keep": 1,
    }
    r = Redactor.from_config({"conversation": ["user.email", "transcript.text", "nope.x"]})
    out, removed = r.redact("conversation", data)
    assert out == {
        "user": {"name": "Ann"},
        "transcript": [{"ts": 1}, {"ts": 2}, "raw line"],
        "keep": 1,
    }
    assert removed == ("user.email", "transcript.text")
    assert out["transcript"][2] is data["transcript"][2]  # type: ignore[index]


def test_a_key_with_dots_that_spells_the_path_is_removed() -> None:
    """A producer that flattens its payload sends ``{"user.email": ...}``: the rule
    ``user.email`` left it on the stamp, in the stores and the archive, and the stamp
    listed nothing redacted, so nobody was told (a compliance trial). A key whose dotted
    segments spell the next segments of a path is that path's field, whatever its case,
    at any depth and for the rest of the path; a key with dots that spells something else
    stays."""
    data = {
        "user.email": "flat@x",
        "User.EMAIL": "flat2@x",
        "user": {"email": "nested@x", "name": "n"},
        "transcript": [{"msg.text": "hi", "msg.ts": 1}],
        "a.b": {"c": "deep@x", "d": 1},
        "user.emails": "kept",
        "x.user.email": "kept too",
    }
    rules = ["user.email", "transcript.msg.text", "a.b.c"]
    out, removed = Redactor.from_config({"conversation": rules}).redact("conversation", data)
    assert out == {
        "user": {"name": "n"},
        "transcript": [{"msg.ts": 1}],
        "a.b": {"d": 1},
        "user.emails": "kept",
        "x.user.email": "kept too",
    }
    assert "@x" not in orjson.dumps(out).decode()
    assert removed == ("user.email", "User.EMAIL", "transcript.msg.text", "a.b.c")


def test_paths_match_keys_whatever_their_case() -> None:
    """Producers' SDKs differ in key case: ``user.email`` left ``{"User": {"Email": ...}}``
    on the stamp, in the stores and the archive (a compliance trial). Every key equal to a
    segment but for case is followed or removed, and the stamp names the paths as the
    data spells them; a configured path in capitals matches lower-case keys too."""
    r = Redactor.from_config({"conversation": ["user.email", "Transcript.TEXT"]})
    assert r.redact("conversation", {"User": {"Email": "a@b.c", "n": 1}}) == (
        {"User": {"n": 1}},
        ("User.Email",),
    )
    assert r.redact("conversation", {"user": {"EMAIL": "a@b.c"}}) == ({"user": {}}, ("user.EMAIL",))
    data = {
        "user": {"email": "a@b.c", "Email": "d@e.f", "name": "Ann"},
        "USER": {"eMail": "g@h.i"},
        "transcript": [{"text": "hi", "ts": 1}, {"Text": "bye", "ts": 2}, {"text": "ok"}],
    }
    out, removed = r.redact("conversation", data)
    assert out == {
        "user": {"name": "Ann"},
        "USER": {},
        "transcript": [{"ts": 1}, {"ts": 2}, {}],
    }
    assert removed == (
        "user.email",
        "user.Email",
        "USER.eMail",
        "transcript.text",
        "transcript.Text",
    )


def test_an_event_with_keys_in_other_case_leaves_no_trace_on_its_stamp() -> None:
    """From the event's bytes to the stamp's, as the service writes it."""
    value = (
        b'{"org":"acme","category":"conversation","record_id":"r1","ts":1000,"data":'
        b'{"User":{"Email":"ann@example.com","Phone":"1"},"user":{"EMAIL":"bob@example.com"}}}'
    )
    event = parse_event(value, categories=("conversation",), now_ms=1000, max_skew_ms=0)
    assert isinstance(event, InputEvent)
    data, removed = Redactor.from_config({"conversation": ["user.email"]}).redact(
        "conversation", event.data
    )
    written = orjson.loads(encode_stamp(Stamp(event.identity, 1, None, None, None), data, removed))
    assert "@example.com" not in orjson.dumps(written).decode()
    assert written["data"] == {"User": {"Phone": "1"}, "user": {}}
    assert written["redacted"] == ["User.Email", "user.EMAIL"]


def test_paths_through_non_objects_are_ignored() -> None:
    r = Redactor.from_config({"conversation": ["user.email"]})
    for data in ({"user": "a string"}, {"user": None}, {"user": 3}, "text", 7, [1, "x"]):
        assert r.redact("conversation", data) == (data, ())


def test_star_drops_all_of_data_and_other_categories_pass() -> None:
    r = Redactor.from_config({"session": ["user", ALL], "error": []})
    assert r.redact("session", {"user": 1, "x": 2}) == (None, (ALL,))
    assert r.redact("session", None) == (None, ())  # nothing there, nothing removed
    assert r.redact("conversation", {"user": 1}) == ({"user": 1}, ())
    assert r.redact("error", {"user": 1}) == ({"user": 1}, ())
    assert not Redactor.from_config({})
    assert Redactor.from_config({"session": ["a"]})


@pytest.mark.parametrize("path", ["", ".", "a.", ".a", "a..b"])
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidRedactPath):
        parse_path(path)


def test_the_stamp_lists_removed_paths_only_when_there_are_some() -> None:
    stamp = Stamp(Identity("o", "_", "live", "conversation", "1"), 1000, None, None, None)
    plain = orjson.loads(encode_stamp(stamp, {"a": 1}))
    assert "redacted" not in plain
    marked = orjson.loads(encode_stamp(stamp, {"a": 1}, ("user.email", "x")))
    assert marked["redacted"] == ["user.email", "x"]
    assert marked["data"] == {"a": 1}


def test_config_reads_redact() -> None:
    config = parse_config(
        '[categories]\nnames = ["conversation", "session"]\n\n'
        '[redact]\nconversation = ["user.email", "transcript"]\nsession = ["*"]\n'
    )
    assert config.redact == {"conversation": ("user.email", "transcript"), "session": ("*",)}
    assert parse_config("").redact == {}


def test_config_warns_of_paths_that_differ_only_in_case(caplog: pytest.LogCaptureFixture) -> None:
    """``user.email`` and ``User.Email``, written for producers that spell keys differently,
    are one rule now that paths match keys whatever their case: said, with the line; the
    config stands, and the stamp names what it finds once. Paths of another category, or
    that differ in more than case, are not warned about."""
    text = (
        '[categories]\nnames = ["conversation", "session"]\n\n[redact]\n'
        'session = ["user.email"]\n'
        'conversation = ["user.email", "transcript", "User.Email", "user.phone", "USER.EMAIL"]\n'
    )
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        config = parse_config(text, path="expiry.toml")
    assert config.redact["conversation"][2] == "User.Email"
    assert [r.getMessage() for r in caplog.records] == [
        "expiry.toml line 6: key 'conversation' in [redact] has paths that differ only in "
        "case ('user.email', 'User.Email', 'USER.EMAIL'): a path matches keys whatever their "
        "case, so 'user.email' alone removes them all; the others can go"
    ]
    redactor = Redactor.from_config(config.redact)
    data = {"user": {"email": 1, "Email": 2}}
    assert redactor.redact("conversation", data) == ({"user": {}}, ("user.email", "user.Email"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        parse_config(text.replace("User.Email", "User.Mail").replace("USER.EMAIL", "u.email"))
    assert caplog.records == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[redact]\nconversaton = ["a"]\n', "line 2: unknown key 'conversaton' in [redact]; did"),
        ('\n[redact]\nconversation = ["a..b"]\n', "line 3: key 'conversation' in [redact]: 'a..b'"),
        ('[redact]\nconversation = "a"\n', "line 2: key 'conversation' in [redact] must be an"),
        ('[redact]\nconversation = ["a", "a"]\n', "line 2: key 'conversation' in [redact] must"),
        ('[redact]\nconversation = [""]\n', "line 2: key 'conversation' in [redact] must be a"),
        ("redact = 3\n", "line 1: key 'redact' at the top level must be a table"),
    ],
)
def test_config_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert message in str(err.value)


def test_a_flattened_key_within_the_field_a_path_names_goes_with_it() -> None:
    """A rule naming an object (``user``) removed ``{"user": {...}}`` but kept the
    flattened ``{"user.email": ...}`` of a producer that flattens its payload, an email on
    the stamp, in the stores and the archive, under a rule written to drop all of
    ``user``, and the stamp said only ``user`` was removed. A key whose segments spell the
    rest of a path and go on is a field within it, at any depth and whatever its case; a
    key that only begins like the path (``username``) or spells something else stays."""
    data = {
        "user.email": "flat@x",
        "User.Phone.Home": "flat2@x",
        "user": {"email": "nested@x"},
        "a": {"b.c": "deep@x", "bx.c": "kept"},
        "username": "kept",
        "x.user": "kept too",
        "users.email": "kept three",
    }
    r = Redactor.from_config({"conversation": ["user", "a.b"]})
    out, removed = r.redact("conversation", data)
    assert out == {
        "a": {"bx.c": "kept"},
        "username": "kept",
        "x.user": "kept too",
        "users.email": "kept three",
    }
    assert "@x" not in orjson.dumps(out).decode()
    assert removed == ("user.email", "User.Phone.Home", "user", "a.b.c")


def test_a_path_names_fields_from_the_top_of_data_only() -> None:
    """A key with dots that spells nothing of the path is not followed with the path as
    it stands: ``user.email`` names ``data.user.email``, not one under another key.
    (Mutant ``_spelt(...) >= depth``: the path was matched again inside every dotted key,
    removing ``{"meta.x": {"user": {"email": ...}}}``'s field, which no rule names.)"""
    data = {"meta.x": {"user": {"email": "kept"}}, "user": {"email": "gone"}}
    out, removed = Redactor.from_config({"conversation": ["user.email"]}).redact(
        "conversation", data
    )
    assert out == {"meta.x": {"user": {"email": "kept"}}, "user": {}}
    assert removed == ("user.email",)


def test_a_category_with_no_paths_has_no_rules() -> None:
    """``conversation = []`` removes nothing: the redactor has no rules and is false, so
    the replay does not call it for every stamp. (Mutant keeping an empty rule list: it
    was true, and ``rules`` named the category.)"""
    r = Redactor.from_config({"conversation": []})
    assert not r
    assert r.rules == {}


def test_a_flattened_key_with_list_indices_is_named_as_nested_lists_are() -> None:
    """Lists are transparent to a path (``transcript.text`` drops ``text`` from every
    message of a transcript list), but a producer flattening that list sent
    ``{"transcript.0.text": ...}``, which the rule kept (a mutation-testing helper). Its
    indices are read as the list they stand for; a path naming an object's digit key
    (``scores.2024``) still matches that key as it is."""
    data = {
        "transcript.0.text": "hello, I am x@y",
        "Transcript.1.Text": "my card is 4111",
        "transcript.0.at": "kept",
        "transcript.0.texts": "kept too",
        "scores.2024": 3,
        "scores.2025": 4,
    }
    r = Redactor.from_config({"conversation": ["transcript.text", "scores.2024"]})
    out, removed = r.redact("conversation", data)
    assert out == {"transcript.0.at": "kept", "transcript.0.texts": "kept too", "scores.2025": 4}
    assert removed == ("transcript.0.text", "Transcript.1.Text", "scores.2024")

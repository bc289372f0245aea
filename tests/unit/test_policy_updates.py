"""Policy updates on expiry.policies: keys, values, and every way a message can be rejected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.config import parse_config
from stream_expiry.model import DEFAULT_CATEGORIES, DETAIL_MAX, Identity, Rejection
from stream_expiry.policy import (
    Candidate,
    PolicyBook,
    PolicyUpdate,
    Scope,
    parse_scope_key,
    scope_key,
)
from stream_expiry.policy.updates import parse_update
from stream_expiry.timeutil import parse_ts

DAY = 86_400_000
T = 1_700_000_000_000


def update(value: Any, key: str | None = None, ts: int = T) -> PolicyUpdate | Rejection:
    raw = None if value is None else (value if isinstance(value, bytes) else orjson.dumps(value))
    return parse_update(None if key is None else key.encode(), raw, ts, DEFAULT_CATEGORIES)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("org", "acme"), "org/acme"),
        (("org", "acme corp/eu"), "org/acme%20corp%2Feu"),
        (("bot", "acme", "b1", "live"), "bot/acme/b1/live"),
        (("bot", "a/b", "ü", "draft"), "bot/a%2Fb/%C3%BC/draft"),
        (("cap",), "cap"),
        (("default",), "default"),
    ],
)
def test_scope_key(args: tuple[str, ...], key: str) -> None:
    assert scope_key(*args) == key
    assert parse_scope_key(key).key == key


@pytest.mark.parametrize(
    "args",
    [
        ("org",),
        ("bot", "acme"),
        ("bot", "acme", "b1", "prod"),
        ("cap", "acme"),
        ("tenant", "x"),
        ("org", ""),
    ],
)
def test_scope_key_rejects_incomplete_scopes(args: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"scope|env"):
        scope_key(*args)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "org",
        "org/a/b",
        "bot/a/b",
        "cap/x",
        "tenant/a",
        "bot/a/b/prod",
        "org/%ZZ",
        "org/a%2fb",
        "org/%61",
    ],
)
def test_bad_scope_keys(key: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  # each shape has its own message
        parse_scope_key(key)


_ID = st.text(min_size=1, max_size=20)


@given(_ID, _ID, st.sampled_from(["live", "draft"]))
def test_scope_keys_are_injective_and_round_trip(org: str, bot: str, env: str) -> None:
    for scope in (Scope("org", org), Scope("bot", org, bot, env)):
        assert parse_scope_key(scope.key) == scope
        assert scope.key.count("/") == (1 if scope.kind == "org" else 3)


def test_valid_update_with_defaults() -> None:
    u = update(
        {"scope": "org", "org": "acme", "ttl": {"conversation": "30d", "session": 0}}, "org/acme"
    )
    assert isinstance(u, PolicyUpdate)
    assert u.scope == Scope("org", "acme")
    assert u.effective_from == T  # defaults to the Kafka timestamp
    assert u.ttl is not None
    assert u.ttl["conversation"].ttl_ms == 30 * DAY
    assert u.ttl["conversation"].name == "policy update org/acme"
    assert u.ttl["session"].ttl_ms is None  # 0: valid, no value


@pytest.mark.parametrize(
    ("value", "effective_from"),
    [
        ({"effective_from": "2024-01-01T00:00:00Z"}, 1_704_067_200_000),
        ({"effective_from": "2024-01-01T01:00:00+01:00"}, 1_704_067_200_000),
        ({"effective_from": 1_704_067_200_000}, 1_704_067_200_000),
        ({"effective_from": None}, T),
    ],
)
def test_effective_from(value: dict[str, Any], effective_from: int) -> None:
    u = update({"scope": "cap", "ttl": {"max": "1y"}, **value})
    assert isinstance(u, PolicyUpdate)
    assert u.effective_from == effective_from


def test_bot_scope_env_defaults_to_live_and_key_is_optional() -> None:
    u = update({"scope": "bot", "org": "acme", "bot": "b1", "ttl": {}})
    assert isinstance(u, PolicyUpdate)
    assert u.key == "bot/acme/b1/live"
    assert u.ttl == {}


def test_null_value_clears_the_keyed_scope() -> None:
    u = update(None, "bot/acme/b1/draft", ts=5)
    assert u == PolicyUpdate(Scope("bot", "acme", "b1", "draft"), None, 5)


def test_null_ttl_entries_are_skipped() -> None:
    u = update({"scope": "default", "ttl": {"session": None, "error": "1d"}})
    assert isinstance(u, PolicyUpdate)
    assert u.ttl is not None
    assert set(u.ttl) == {"error"}


REJECTIONS: list[tuple[str, Any, str | None, str, str]] = [
    # (id, value, key, code, words in the detail)
    ("not json", b"{nope", "org/a", "invalid_json", "JSON"),
    ("not utf-8", b"\xff\xfe", "org/a", "invalid_json", "not valid UTF-8 (byte 0: invalid start"),
    ("array", [1], "org/a", "not_an_object", "array"),
    ("string", "x", "org/a", "not_an_object", "string"),
    ("no scope", {"ttl": {}}, None, "missing_field", "scope"),
    ("bad scope", {"scope": "tenant", "ttl": {}}, None, "invalid_field", "scope"),
    ("scope not a string", {"scope": 1, "ttl": {}}, None, "invalid_field", "scope"),
    ("org scope without org", {"scope": "org", "ttl": {}}, None, "missing_field", "org"),
    (
        "bot scope without bot",
        {"scope": "bot", "org": "a", "ttl": {}},
        None,
        "missing_field",
        "bot",
    ),
    (
        "bot scope bad env",
        {"scope": "bot", "org": "a", "bot": "b", "env": "prod", "ttl": {}},
        None,
        "invalid_field",
        "env",
    ),
    ("org not a string", {"scope": "org", "org": 5, "ttl": {}}, None, "invalid_field", "org"),
    ("org empty", {"scope": "org", "org": "", "ttl": {}}, None, "invalid_field", "org"),
    ("org too long", {"scope": "org", "org": "x" * 513, "ttl": {}}, None, "invalid_field", "org"),
    (
        "stray bot in org scope",
        {"scope": "org", "org": "a", "bot": "b", "ttl": {}},
        None,
        "invalid_field",
        "bot",
    ),
    (
        "stray org in cap scope",
        {"scope": "cap", "org": "a", "ttl": {}},
        None,
        "invalid_field",
        "org",
    ),
    ("no ttl", {"scope": "cap"}, None, "missing_field", "ttl"),
    ("ttl not an object", {"scope": "cap", "ttl": "30d"}, None, "invalid_field", "ttl"),
    (
        "unknown category",
        {"scope": "default", "ttl": {"conversaton": 1}},
        None,
        "invalid_field",
        "did you mean 'conversation'",
    ),
    ("max outside cap", {"scope": "default", "ttl": {"max": 1}}, None, "invalid_field", "max"),
    (
        "bad effective_from",
        {"scope": "cap", "ttl": {}, "effective_from": "yesterday"},
        None,
        "bad_timestamp",
        "effective_from",
    ),
    (
        "effective_from without offset",
        {"scope": "cap", "ttl": {}, "effective_from": "2024-01-01T00:00:00"},
        None,
        "bad_timestamp",
        "effective_from",
    ),
    (
        "effective_from boolean",
        {"scope": "cap", "ttl": {}, "effective_from": True},
        None,
        "bad_timestamp",
        "effective_from",
    ),
    (
        "key does not match",
        {"scope": "org", "org": "a", "ttl": {}},
        "org/b",
        "invalid_field",
        "key",
    ),
    ("key of other kind", {"scope": "cap", "ttl": {}}, "default", "invalid_field", "key"),
    ("bad key", {"scope": "cap", "ttl": {}}, "caps", "invalid_field", "key"),
    ("null value, no key", None, None, "missing_field", "key"),
    ("null value, bad key", None, "org", "invalid_field", "key"),
]


@pytest.mark.parametrize(
    ("value", "key", "code", "words"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_rejections(value: Any, key: str | None, code: str, words: str) -> None:
    result = update(value, key)
    assert isinstance(result, Rejection)
    assert result.code == code
    assert words in result.detail


def test_non_utf8_key_is_rejected() -> None:
    result = parse_update(b"org/\xff", None, T, DEFAULT_CATEGORIES)
    assert isinstance(result, Rejection)
    assert result.code == "invalid_field"


def test_a_rejected_update_leaves_the_book_unchanged() -> None:
    book = PolicyBook(parse_config('[retention.orgs.acme]\nconversation = "30d"\n'), {})
    ident = Identity("acme", "_", "live", "conversation", "r")
    before = book.resolve(ident, T)
    bad = orjson.dumps({"scope": "org", "org": "acme", "ttl": {"conversation": "1d", "x": 1}})
    assert isinstance(book.apply_update(b"org/acme", bad, T), Rejection)
    assert book.resolve(ident, T) == before
    assert book.resolve(ident, T + 1) == before
    assert book.updates_applied == 0


def test_an_update_says_which_values_of_its_scope_it_takes_away() -> None:
    """An update replaces its scope's whole map: the categories the scope's newest version
    had a positive value for and the update leaves out are named (the config file's, or an
    earlier update's); a scope that had nothing, and a clear, take nothing away."""
    book = PolicyBook(
        parse_config(
            '[retention.defaults]\nconversation = "1d"\nsession = "90s"\nerror = "45s"\n'
            "analytics = 0\n"
        ),
        {},
    )

    def dropped(value: Any, key: str) -> tuple[str, ...]:
        result = book.apply_update(key.encode(), orjson.dumps(value), T)
        assert isinstance(result, PolicyUpdate)
        return result.dropped

    assert dropped({"scope": "default", "ttl": {"conversation": "3m"}}, "default") == (
        "session",
        "error",
    )
    assert dropped({"scope": "default", "ttl": {"conversation": "5m"}}, "default") == ()
    assert dropped({"scope": "org", "org": "acme", "ttl": {"session": "1h"}}, "org/acme") == ()
    assert dropped({"scope": "org", "org": "acme", "ttl": {"error": "1h"}}, "org/acme") == (
        "session",
    )
    cleared = book.apply_update(b"default", None, T)
    assert isinstance(cleared, PolicyUpdate)
    assert cleared.dropped == ()


def test_what_an_update_took_away_is_still_missing_until_a_later_version_gives_it() -> None:
    """What a start warns of: the categories an update took away that its scope's newest
    version still lacks; a value given again, 0 included, or a clear, mends them."""
    book = PolicyBook(
        parse_config('[retention.defaults]\nconversation = "1d"\nsession = "90s"\nerror = "1m"\n'),
        {},
    )

    def apply(value: Any, at: int) -> PolicyUpdate:
        result = book.apply_update(b"default", None if value is None else orjson.dumps(value), at)
        assert isinstance(result, PolicyUpdate)
        return result

    took = apply({"scope": "default", "ttl": {"conversation": "3m"}}, T)
    assert book.still_dropped(took) == took.dropped == ("session", "error")
    apply({"scope": "default", "ttl": {"conversation": "3m", "session": "0"}}, T + 1)
    assert book.still_dropped(took) == ("error",)
    apply(None, T + 2)
    assert book.still_dropped(took) == ()


def test_a_clear_mends_what_an_update_took_away_even_where_the_file_lacks_it() -> None:
    """A newest clear gives the scope the config file's values back, the file's absence
    of a category included: nothing is still missing then, though the file never had the
    category the update took away. A book that never saw the update's scope says nothing
    is missing either."""
    toml = '[retention.orgs.acme]\nconversation = "1d"\n'
    book = PolicyBook(parse_config(toml), {})

    def apply(value: Any, at: int) -> PolicyUpdate:
        result = book.apply_update(b"org/acme", None if value is None else orjson.dumps(value), at)
        assert isinstance(result, PolicyUpdate)
        return result

    apply({"scope": "org", "org": "acme", "ttl": {"conversation": "3m", "session": "1h"}}, T)
    took = apply({"scope": "org", "org": "acme", "ttl": {"conversation": "3m"}}, T + 1)
    assert book.still_dropped(took) == took.dropped == ("session",)
    apply(None, T + 2)
    assert book.still_dropped(took) == ()
    assert PolicyBook(parse_config(""), {}).still_dropped(took) == ()


def test_the_book_counts_the_updates_it_applied() -> None:
    book = PolicyBook(parse_config(""), {})
    body = orjson.dumps({"scope": "org", "org": "acme", "ttl": {"conversation": "1d"}})
    for n in range(3):
        assert isinstance(book.apply_update(b"org/acme", body, T + n), PolicyUpdate)
    assert isinstance(book.apply_update(b"org/acme", b"[]", T + 3), Rejection)
    assert isinstance(book.apply_update(b"org/acme", None, T + 4), PolicyUpdate)
    assert book.updates_applied == 4


def test_a_bot_or_cap_update_says_the_values_of_its_own_scope_it_takes_away() -> None:
    """A bot's update is judged against that bot's newest version (not another bot's, not
    its org's), and a cap update against the cap (not the defaults): each scope kind finds
    its own history."""
    book = PolicyBook(
        parse_config(
            '[retention.defaults]\nconversation = "1d"\n[retention.cap]\nmax = "2y"\nerror = "7d"\n'
        ),
        {},
    )

    def dropped(value: Any, key: str) -> tuple[str, ...]:
        result = book.apply_update(key.encode(), orjson.dumps(value), T)
        assert isinstance(result, PolicyUpdate)
        return result.dropped

    bot = {"scope": "bot", "org": "acme", "bot": "b1", "env": "draft"}
    assert dropped({**bot, "ttl": {"session": "1h", "error": "2h"}}, "bot/acme/b1/draft") == ()
    other = {**bot, "bot": "b2"}
    assert dropped({**other, "ttl": {"conversation": "1h"}}, "bot/acme/b2/draft") == ()
    assert dropped({**bot, "ttl": {"session": "3h"}}, "bot/acme/b1/draft") == ("error",)
    assert dropped({"scope": "cap", "ttl": {"max": "1y"}}, "cap") == ("error",)


def test_a_cap_updates_values_are_named_with_their_key() -> None:
    """``explain`` listed a cap update's ``max`` and ``error`` both as "policy update cap"."""
    u = update({"scope": "cap", "ttl": {"max": "1y", "error": "7d", "session": "x"}})
    assert isinstance(u, PolicyUpdate)
    assert u.ttl is not None
    assert [c.name for c in u.ttl.values()] == [
        "policy update cap max",
        "policy update cap error",
        "policy update cap session",
    ]


def test_unknown_extra_fields_are_ignored() -> None:
    u = update({"scope": "cap", "ttl": {"max": "1y"}, "author": "ui", "comment": {"x": 1}})
    assert isinstance(u, PolicyUpdate)


def _schema_validator() -> Any:
    import jsonschema

    path = Path(__file__).parents[2] / "schemas" / "policy-update.schema.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(
    "value",
    [
        {"scope": "org", "org": "acme", "ttl": {"conversation": "30d", "session": 0}},
        {"scope": "bot", "org": "a", "bot": "b", "ttl": {"conversation": None}},
        {"scope": "cap", "ttl": {"max": "2y"}, "effective_from": 1_704_067_200_000},
        {"scope": "default", "ttl": {}, "effective_from": "2024-01-01T00:00:00Z", "extra": 1},
    ],
)
def test_schema_accepts_valid_updates(value: dict[str, Any]) -> None:
    assert isinstance(update(value), PolicyUpdate)
    _schema_validator().validate(value)


# Values that are not durations: the schema refuses them, the service ignores them alone
# (the rest of the update applies; see test_an_invalid_value_is_ignored_and_the_rest_applies).
INVALID_VALUES: list[tuple[str, Any, str | None, str, str]] = [
    ("bad duration", {"scope": "cap", "ttl": {"max": "forever"}}, None, "invalid_field", "ttl.max"),
    ("boolean duration", {"scope": "cap", "ttl": {"max": True}}, None, "invalid_field", "ttl.max"),
]

SCHEMA_REJECTS = [
    r
    for r in REJECTIONS + INVALID_VALUES
    if isinstance(r[1], dict)
    and r[0]
    not in {
        "unknown category",
        "max outside cap",
        "key does not match",
        "key of other kind",
        "bad key",
        "effective_from without offset",
        "bad effective_from",
    }
]


@pytest.mark.parametrize(
    "value", [r[1] for r in SCHEMA_REJECTS], ids=[r[0] for r in SCHEMA_REJECTS]
)
def test_schema_rejects_invalid_updates(value: dict[str, Any]) -> None:
    assert not _schema_validator().is_valid(value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("org", "acme", None, "live"), "scope 'org' takes no env"),
        (("org", "acme", "b1"), "scope 'org' takes no bot"),
        (("cap", None, "b1"), "scope 'cap' takes no org, bot or env"),
        (("default", None, None, "live"), "scope 'default' takes no org, bot or env"),
        (("bot", "acme", None, "live"), "scope 'bot' needs bot, 1 to 512 characters"),
        (("bot", "acme", "b1"), "scope 'bot' needs env, 1 to 512 characters"),
        (("org", "x" * 513), "scope 'org' needs org, 1 to 512 characters"),
        (("bot", "a", "b", "x" * 513), "scope 'bot' needs env, 1 to 512 characters"),
    ],
)
def test_scope_key_says_what_a_scope_lacks_or_cannot_take(
    args: tuple[str | None, ...], message: str
) -> None:
    with pytest.raises(ValueError) as err:  # noqa: PT011  # the message is checked whole
        scope_key(*args)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_ids_of_512_characters_make_scopes_and_updates() -> None:
    long = "x" * 512
    assert scope_key("bot", long, long, "live") == f"bot/{long}/{long}/live"
    ok = update({"scope": "bot", "org": long, "bot": long, "ttl": {"session": "1d"}})
    assert isinstance(ok, PolicyUpdate)
    too_long = update({"scope": "bot", "org": long, "bot": long + "x", "ttl": {}})
    assert isinstance(too_long, Rejection)
    assert too_long.detail == "field 'bot' must be a string of 1 to 512 characters"


def test_a_key_whose_escapes_are_not_utf8_is_refused_as_such() -> None:
    """Not "use org/%EF%BF%BD": no replacement character is offered as the org's name."""
    with pytest.raises(ValueError, match="utf-8") as err:
        parse_scope_key("org/%FF")
    assert "%EF%BF%BD" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ({"scope": "cap", "ttl": True}, "field 'ttl' must be an object, got boolean"),
        ({"scope": "cap", "ttl": 30}, "field 'ttl' must be an object, got number"),
        ({"scope": "cap", "ttl": 1.5}, "field 'ttl' must be an object, got number"),
        ({"scope": "cap", "ttl": ["30d"]}, "field 'ttl' must be an object, got array"),
        ({"scope": "cap", "ttl": "30d"}, "field 'ttl' must be an object, got string"),
        ({"scope": "cap"}, "field 'ttl' is required (an object of category: duration)"),
        ({"scope": "cap", "ttl": None}, "field 'ttl' is required (an object of category: duration)"),
        ({"ttl": {}}, "field 'scope' is required"),
        (None, "a null value clears the scope named by the key, but there is no key"),
        (b"null", "the value is a JSON null, not an object"),
        ({"scope": "cap", "ttl": {"sesion": 1}}, "ttl key 'sesion' is not a configured "
         "category; did you mean 'session'?"),
        ({"scope": "cap", "ttl": {"zzz": 1}}, "ttl key 'zzz' is not a configured category"),
    ],
)  # fmt: skip
def test_rejections_say_exactly_what_is_wrong(value: Any, detail: str) -> None:
    result = update(value)
    assert isinstance(result, Rejection)
    assert result.detail == detail


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("org/a/b", "'org/a/b' is not a policy scope (org/ORG, bot/ORG/BOT/ENV, cap, default)"),
        ("org/%61", "'org/%61' is not percent-encoded canonically; use 'org/a'"),
    ],
)
def test_bad_scope_keys_say_what_a_key_looks_like(key: str, message: str) -> None:
    with pytest.raises(ValueError) as err:  # noqa: PT011  # the message is checked whole
        parse_scope_key(key)
    assert str(err.value) == message


def test_a_capital_m_duration_is_minutes_with_a_note_naming_its_field() -> None:
    """A policy update's "1M" is one minute (units are case-insensitive), but M usually
    means a month: the update is valid and carries a note the service logs."""
    u = update({"scope": "org", "org": "acme", "ttl": {"conversation": "1M", "session": "2mo"}})
    assert isinstance(u, PolicyUpdate)
    assert u.ttl is not None
    assert u.ttl["conversation"].ttl_ms == 60_000
    assert len(u.notes) == 1
    assert u.notes[0].startswith("ttl.conversation: '1M' means 1 minute(s)")
    plain = update({"scope": "org", "org": "acme", "ttl": {"conversation": "1m"}})
    assert isinstance(plain, PolicyUpdate)
    assert plain.notes == ()


def test_an_effective_from_in_epoch_seconds_applies_as_milliseconds_with_a_note() -> None:
    """`"effective_from": 1796525154` (seconds, as many producers send) is January 1970
    read as the contract's milliseconds: the update then covers every record created
    since, so a replay or a late event gives it to records created long before its
    producer meant. It applied without a word (an event's `ts` in seconds is warned of);
    it still applies, as the contract reads it, with a note the service logs. A
    deliberate 0, and milliseconds or RFC 3339, say nothing."""
    u = update({"scope": "org", "org": "acme", "ttl": {"conversation": "2d"},
                "effective_from": 1_796_525_154})  # fmt: skip
    assert isinstance(u, PolicyUpdate)
    assert u.effective_from == 1_796_525_154
    assert u.notes == (
        "effective_from 1796525154 is 1970-01-21T19:02:05.154Z as epoch milliseconds, so the "
        "update applies to records created since then; if 2026-12-06T02:45:54.000Z was "
        "meant, the producer sends epoch seconds: send milliseconds or an RFC 3339 time",
    )
    for meant in (0, 1_796_525_154_000, "2026-12-06T02:45:54Z"):
        plain = update({"scope": "org", "org": "acme", "ttl": {"conversation": "2d"},
                        "effective_from": meant})  # fmt: skip
        assert isinstance(plain, PolicyUpdate)
        assert plain.notes == ()


def test_a_misspelt_field_is_ignored_with_a_note_naming_the_field_meant() -> None:
    """`"efective_from": "2027-01-01T00:00:00Z"` was ignored like any extra field, without a
    word: the update applied from its Kafka timestamp, a month before the date it named (a
    trial). `"Env": "draft"` in a bot update likewise changed the live bot. Still ignored
    (extra fields are), now with a note the service logs, naming the field meant."""
    u = update({"scope": "org", "org": "acme", "ttl": {"conversation": "2d"},
                "efective_from": "2027-01-01T00:00:00Z"}, ts=T)  # fmt: skip
    assert isinstance(u, PolicyUpdate)
    assert u.effective_from == T
    assert u.notes == (
        "field 'efective_from' is not one a policy update has, so it is ignored and the "
        "update applies from its Kafka timestamp; did you mean 'effective_from'?",
    )
    bot = update({"scope": "bot", "org": "acme", "bot": "b1", "Env": "draft",
                  "ttl": {"conversation": "2d"}})  # fmt: skip
    assert isinstance(bot, PolicyUpdate)
    assert bot.key == "bot/acme/b1/live"
    assert bot.notes == (
        "field 'Env' is not one a policy update has, so it is ignored and the update is "
        "read without 'env'; did you mean 'env'?",
    )
    extra = update({"scope": "org", "org": "acme", "ttl": {"conversation": "2d"},
                    "author": "ops", "ticket": "OPS-1"})  # fmt: skip
    assert isinstance(extra, PolicyUpdate)
    assert extra.notes == ()


def test_a_misspelt_field_beside_the_field_meant_says_the_update_is_read_with_that_one() -> None:
    """`"effective_from"` and `"effective-from"` both (a producer's two spellings): the
    update applies from its `effective_from`, as the contract reads it, yet the note said
    it applied from its Kafka timestamp; `"env": "draft"` beside `"Env": "live"` was said
    to be read without 'env', while the draft bot's scope is the one it sets. The note
    now says the update is read with the field meant; a null field meant is absent."""
    u = update({"scope": "org", "org": "acme", "ttl": {"conversation": "2d"},
                "effective_from": "2027-01-01T00:00:00Z",
                "effective-from": "2027-02-01T00:00:00Z"}, ts=T)  # fmt: skip
    assert isinstance(u, PolicyUpdate)
    assert u.effective_from == parse_ts("2027-01-01T00:00:00Z")
    assert u.notes == (
        "field 'effective-from' is not one a policy update has, so it is ignored and the "
        "update is read with its 'effective_from'; did you mean 'effective_from'?",
    )
    bot = update({"scope": "bot", "org": "acme", "bot": "b1", "env": "draft", "Env": "live",
                  "ttl": {"conversation": "2d"}})  # fmt: skip
    assert isinstance(bot, PolicyUpdate)
    assert bot.key == "bot/acme/b1/draft"
    assert bot.notes == (
        "field 'Env' is not one a policy update has, so it is ignored and the update is "
        "read with its 'env'; did you mean 'env'?",
    )
    null = update({"scope": "org", "org": "acme", "ttl": {"conversation": "2d"},
                   "effective_from": None, "efective_from": "2027-01-01T00:00:00Z"}, ts=T)  # fmt: skip
    assert isinstance(null, PolicyUpdate)
    assert null.effective_from == T
    assert null.notes == (
        "field 'efective_from' is not one a policy update has, so it is ignored and the "
        "update applies from its Kafka timestamp; did you mean 'effective_from'?",
    )


def test_an_invalid_value_is_ignored_and_the_rest_applies() -> None:
    """One value that is not a duration costs that value alone (as an invalid environment
    variable does), not the valid values typed beside it: they apply, it is an invalid
    candidate, and the update says which field was ignored and why."""
    u = update(
        {"scope": "org", "org": "acme", "ttl": {"conversation": "30d", "session": "banana"}},
        "org/acme",
    )
    assert isinstance(u, PolicyUpdate)
    assert u.ttl is not None
    assert u.ttl["conversation"].ttl_ms == 30 * DAY
    assert u.ttl["session"] == Candidate("org", "policy update org/acme", None, valid=False)
    assert [i.category for i in u.ignored] == ["session"]
    assert u.ignored[0].detail.startswith("ttl.session: 'banana' is not a duration")
    why = u.ignored_rejection()
    assert why is not None
    assert why.code == "invalid_field"
    assert "ttl.session: 'banana' is not a duration" in why.detail
    assert "session=invalid (ignored)" in u.describe()


@pytest.mark.parametrize(
    ("value", "fields"),
    [
        ({"scope": "cap", "ttl": {"max": "forever", "session": "1d"}}, ["max"]),
        ({"scope": "cap", "ttl": {"max": True}}, ["max"]),
        ({"scope": "default", "ttl": {"error": [1], "session": {"d": 1}}}, ["error", "session"]),
        ({"scope": "bot", "org": "a", "bot": "b", "ttl": {"conversation": "1 day"}}, ["conversation"]),
        ({"scope": "org", "org": "a", "ttl": {"conversation": "1d", "error": 0}}, []),
    ],
)  # fmt: skip
def test_every_value_that_is_not_a_duration_is_named(value: Any, fields: list[str]) -> None:
    u = update(value)
    assert isinstance(u, PolicyUpdate)
    assert [i.category for i in u.ignored] == fields
    why = u.ignored_rejection()
    if not fields:
        assert why is None
        return
    assert why is not None
    for category in fields:
        assert f"ttl.{category}: " in why.detail


def test_a_wrong_structure_still_rejects_the_whole_update_even_beside_an_invalid_value() -> None:
    """An unknown category says the update was meant for something else: nothing of it
    applies, whatever its other values (an invalid duration beside it changes nothing)."""
    book = PolicyBook(parse_config('[retention.orgs.acme]\nconversation = "30d"\n'), {})
    bad = orjson.dumps(
        {"scope": "org", "org": "acme", "ttl": {"conversation": "1d", "session": "x", "sesion": 1}}
    )
    result = book.apply_update(b"org/acme", bad, T)
    assert isinstance(result, Rejection)
    assert "'sesion' is not a configured category" in result.detail
    assert book.updates_applied == 0


def test_the_book_applies_the_valid_value_and_keeps_the_one_before_for_the_ignored_one() -> None:
    """The update's valid value wins; its ignored one changes nothing for that category: the
    org keeps the value it had before (here the config file's 7 d), not the default's 2 d
    (a typo must neither lengthen nor shorten a retention)."""
    book = PolicyBook(
        parse_config(
            '[retention.orgs.acme]\nsession = "7d"\n[retention.defaults]\nsession = "2d"\n'
        ),
        {},
    )
    value = {"scope": "org", "org": "acme", "ttl": {"conversation": "30d", "session": "banana"}}
    result = book.apply_update(b"org/acme", orjson.dumps(value), T)
    assert isinstance(result, PolicyUpdate)
    conv = book.resolve(Identity("acme", "_", "live", "conversation", "r"), T)
    assert (conv.ttl_ms, conv.source) == (30 * DAY, "org")
    session = book.resolve(Identity("acme", "_", "live", "session", "r"), T)
    assert (session.ttl_ms, session.source) == (7 * DAY, "org")
    # explain lists the update's invalid value too (the contract: every value found), then
    # the one kept in force in its place; a trial found it left out, the typo unseen.
    assert book.explain(category="session", org="acme")["candidates"] == [
        {"source": "org", "name": "policy update org/acme", "ttl_seconds": None,
         "valid": False},
        {"source": "org", "name": "retention.orgs.acme.session", "ttl_seconds": 604_800,
         "valid": True},
        {"source": "default", "name": "retention.defaults.session", "ttl_seconds": 172_800,
         "valid": True},
    ]  # fmt: skip


def test_an_ignored_value_keeps_the_value_of_the_version_before_it_even_one_back_dated() -> None:
    """The version before may arrive later (a back-dated update): the ignored value then
    keeps that one's value; a category the version before did not have gets none."""
    book = PolicyBook(parse_config('[retention.defaults]\nsession = "2d"\n'), {})
    late = {"scope": "org", "org": "acme", "ttl": {"session": "banana", "error": "x"},
            "effective_from": T + 1000}  # fmt: skip
    assert isinstance(book.apply_update(b"org/acme", orjson.dumps(late), T), PolicyUpdate)
    session = Identity("acme", "_", "live", "session", "r")
    assert (book.resolve(session, T + 2000).ttl_ms, book.resolve(session, T + 2000).source) == (
        2 * DAY,
        "default",
    )
    # Nothing in force for it, the invalid value is still listed: the default answers.
    listed = book.explain(category="session", org="acme", at_ms=T + 2000)
    assert [(c["source"], c["valid"]) for c in listed["candidates"]] == [
        ("org", False),
        ("default", True),
    ]
    assert listed["ttl_seconds"] == 2 * 86_400
    early = {"scope": "org", "org": "acme", "ttl": {"session": "3d"}, "effective_from": T}
    assert isinstance(book.apply_update(b"org/acme", orjson.dumps(early), T), PolicyUpdate)
    after = book.resolve(session, T + 2000)
    assert (after.ttl_ms, after.source) == (3 * DAY, "org")
    error = book.resolve(Identity("acme", "_", "live", "error", "r"), T + 2000)
    assert error.source != "org"


def test_a_rejection_quoting_a_huge_field_is_cut_for_the_log_and_the_header() -> None:
    """A 64 KiB category name was quoted whole into the warning and the dead letter's
    detail header; the detail keeps its first 1,000 characters."""
    huge = "x" * 65_536
    result = update({"scope": "org", "org": "acme", "ttl": {huge: "1d"}}, "org/acme")
    assert isinstance(result, Rejection)
    assert len(result.detail) == DETAIL_MAX
    assert result.detail.endswith("...")
    assert result.detail.startswith("ttl key 'xxx")


def test_an_empty_map_is_said_to_empty_the_scope_which_it_does() -> None:
    """A user trial read "scope cap: , effective from ...". An empty map is no clear: the
    scope gives nothing from then on, its config file's values included, until a null."""
    book = PolicyBook(
        parse_config(
            '[retention.defaults]\nconversation = "30d"\n[retention.cap]\nconversation = "7d"\n'
        ),
        {},
    )
    ident = Identity("acme", "_", "live", "conversation", "r")
    emptied = book.apply_update(b"cap", orjson.dumps({"scope": "cap", "ttl": {}}), T)
    assert isinstance(emptied, PolicyUpdate)
    assert emptied.describe() == (
        "scope cap: emptied (no value from this scope for any category, the config file's "
        "included; a null value brings the config file's back), effective from "
        "2023-11-14T22:13:20.000Z"
    )
    assert book.resolve(ident, T + 1).source == "default"  # the cap of 7d is gone
    book.apply_update(b"cap", None, T + 2)
    assert book.resolve(ident, T + 3).source == "cap"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (
            b'{"scope": "org", "org": "acme", "ttl": {"conversation": "30d",'
            b' "conversation": "1d"}}',
            "key 'conversation' is given twice (at 'ttl.conversation')",
        ),
        (
            b'{"scope": "org", "org": "acme", "ttl": {"conversation": "1d"}, "org": "other"}',
            "key 'org' is given twice (at the top level)",
        ),
        (
            b'{"scope": "org", "org": "acme", "ttl": {"conversation": "1d"}, "ttl": {}}',
            "key 'ttl' is given twice (at the top level)",
        ),
    ],
)
def test_an_update_giving_a_key_twice_is_rejected_whole_naming_it(raw: bytes, named: str) -> None:
    """orjson keeps a repeated key's last value without a word: the scope got the second
    TTL, or the update another org, than the one written first, and which was meant is
    unknown. Rejected whole (``invalid_field``), the book keeps what it had."""
    book = PolicyBook(parse_config('[retention.orgs.acme]\nconversation = "30d"\n'), {})
    ident = Identity("acme", "_", "live", "conversation", "r")
    other = Identity("other", "_", "live", "conversation", "r")
    before, other_before = book.resolve(ident, T), book.resolve(other, T)
    result = book.apply_update(b"org/acme", raw, T)
    assert isinstance(result, Rejection)
    assert result.code == "invalid_field"
    assert result.detail.startswith(named)
    assert book.resolve(ident, T) == before
    assert book.resolve(other, T) == other_before
    assert book.updates_applied == 0


def test_an_update_is_described_in_the_units_policy_set_prints() -> None:
    """The service's "policy update applied" line, read after `policy set` printed
    conversation=14d: it said conversation=1209600s, and a zero (no value from the scope)
    as "none", which reads as "kept forever" in a retention service's log."""
    update = parse_update(
        b"org/acme",
        orjson.dumps(
            {"scope": "org", "org": "acme", "ttl": {"conversation": "14d", "session": "0"}}
        ),
        T,
        DEFAULT_CATEGORIES,
    )
    assert isinstance(update, PolicyUpdate)
    assert update.describe() == (
        "scope org/acme: conversation=14d, session=0 (no value), effective from "
        "2023-11-14T22:13:20.000Z"
    )

"""``stream-expiry policy``: the update built as the contract says, checked by the service's
own parser before anything is written, and the policies topic listed as the service reads it
(a user trial: operators wrote their own producer, guessed the key, and learnt of a typo only
from the service's log, while the bad update replaced the good one on the compacted topic)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream_expiry import exits
from stream_expiry.cli import main
from stream_expiry.config import Config, parse_config
from stream_expiry.errors import ConfigurationError
from stream_expiry.policy import PolicyBook, PolicyUpdate, Scope
from stream_expiry.policy.updates import parse_update
from stream_expiry.policy_command import (
    Message,
    TopicView,
    _check_names,
    build_update,
    kept_values,
    listed,
    policy_lines,
    stamped_note,
)
from stream_expiry.timeutil import parse_ts

NOW = parse_ts("2026-12-07T12:00:00Z")
DAY = 86_400_000

CONFIG_TEXT = """
[retention.defaults]
conversation = "30d"
session = "1d"
error = "7d"

[retention.orgs.acme]
conversation = "14d"
"""


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG_TEXT, path="<test>")


@pytest.mark.parametrize(
    ("flags", "key", "fields"),
    [
        ({"scope": "org", "org": "acme"}, "org/acme", {"org": "acme"}),
        ({"scope": "org", "org": "acme corp/eu"}, "org/acme%20corp%2Feu", {"org": "acme corp/eu"}),
        (
            {"scope": "bot", "org": "acme", "bot": "b1"},
            "bot/acme/b1/live",  # the contract's default env
            {"org": "acme", "bot": "b1", "env": "live"},
        ),
        (
            {"scope": "bot", "org": "acme", "bot": "b1", "env": "draft"},
            "bot/acme/b1/draft",
            {"org": "acme", "bot": "b1", "env": "draft"},
        ),
        ({"scope": "cap"}, "cap", {}),
        ({"scope": "default"}, "default", {}),
    ],
)
def test_the_update_is_keyed_by_its_scope_and_read_by_the_service_as_built(
    config: Config, flags: dict[str, Any], key: str, fields: dict[str, str]
) -> None:
    built = build_update(config, **flags, ttl=[("conversation", "14d")], now_ms=NOW)
    assert built.key == key.encode()
    assert orjson.loads(built.value) == {
        "scope": flags["scope"],
        **fields,
        "ttl": {"conversation": "14d"},
    }
    # What the service makes of the message: the scope and value the flags named.
    again = parse_update(built.key, built.value, NOW, config.categories)
    assert isinstance(again, PolicyUpdate)
    assert again.key == key
    assert again.effective_from == NOW  # no effective_from: the Kafka timestamp
    assert again.ttl is not None
    assert again.ttl["conversation"].ttl_ms == 14 * DAY


def test_effective_from_is_sent_as_rfc_3339_and_a_zero_is_no_value(config: Config) -> None:
    at = parse_ts("2027-01-01T00:00:00Z")
    built = build_update(
        config,
        scope="default",
        ttl=[("conversation", "30d"), ("session", "0"), ("error", "7d")],
        effective_from=at,
        now_ms=NOW,
    )
    assert orjson.loads(built.value)["effective_from"] == "2027-01-01T00:00:00.000Z"
    assert built.update.effective_from == at
    assert built.update.ttl is not None
    assert built.update.ttl["session"].ttl_ms is None  # valid, "no value from this scope"


@pytest.mark.parametrize(
    ("flags", "ttl", "says"),
    [
        # The service's own reason, with its did-you-mean.
        (
            {"scope": "org", "org": "acme"},
            [("conversaton", "3d")],
            "the service would reject this update (invalid_field): ttl key 'conversaton' is "
            "not a configured category; did you mean 'conversation'?",
        ),
        ({"scope": "cap"}, [("mx", "90d")], "did you mean 'max'?"),
        (
            {"scope": "org", "org": "acme"},
            [("session", "banana")],
            "--ttl session=banana: the service would ignore it (ttl.session: 'banana' is not a "
            "duration",
        ),
        ({"scope": "org", "org": "acme"}, [("session", "true")], "would ignore it"),
        ({"scope": "org", "org": "acme"}, [("session", "1M")], "'1M' means 1 minute(s)"),
        ({"scope": "org", "org": "acme"}, [("session", "8000y")], "would ignore it"),
        ({"scope": "org"}, [("session", "1d")], "--scope org: scope 'org' needs --org"),
        ({"scope": "org", "org": ""}, [("session", "1d")], "needs --org, 1 to 512 characters"),
        (
            {"scope": "org", "org": "acme", "env": "live"},
            [("session", "1d")],
            "scope 'org' takes no --env",
        ),
        ({"scope": "bot", "org": "acme"}, [("session", "1d")], "scope 'bot' needs --bot"),
        (
            {"scope": "cap", "org": "acme"},
            [("max", "1d")],
            "scope 'cap' takes no --org, --bot or --env",
        ),
        (
            {"scope": "org", "org": "acme"},
            [("session", "1d"), ("session", "2d")],
            "--ttl session= is given twice ('1d', '2d')",
        ),
    ],
)
def test_what_the_service_would_reject_or_ignore_is_refused_with_its_reason(
    config: Config, flags: dict[str, Any], ttl: list[tuple[str, str]], says: str
) -> None:
    with pytest.raises(ConfigurationError) as exc:
        build_update(config, **flags, ttl=ttl, now_ms=NOW)
    assert says in str(exc.value)
    if "would" in says:
        assert str(exc.value).endswith("nothing was published")


@pytest.mark.parametrize(
    ("duration", "says"),
    [
        # A number alone is minutes to the service (the config file's and the platform
        # variables' unit): "14" meant as days would delete those records after 14 minutes.
        (
            "14",
            "--ttl session=14: a number alone is minutes (14m here): write 14m if minutes are "
            "meant, 14d for days; nothing was published",
        ),
        ("1.5", "--ttl session=1.5: a number alone is minutes (90s here)"),
        ("+7", "--ttl session=+7: a number alone is minutes"),
        # Below zero the service takes it as 0, no value from this scope, without a word.
        (
            "-1d",
            "--ttl session=-1d is below zero, which the service takes as 0, no value from this "
            "scope: write session=0 if that is meant; nothing was published",
        ),
        ("-30", "--ttl session=-30 is below zero"),
    ],
)
def test_a_number_without_a_unit_or_below_zero_is_refused(
    config: Config, duration: str, says: str
) -> None:
    """A trial: ``--ttl conversation=14`` was published as 14 minutes, and ``-1d`` as no
    value, with exit status 0 and the values shown as 14m and 0 only after the fact."""
    with pytest.raises(ConfigurationError) as exc:
        build_update(config, scope="org", org="acme", ttl=[("session", duration)], now_ms=NOW)
    assert says in str(exc.value)
    assert str(exc.value).endswith("nothing was published")


@pytest.mark.parametrize("zero", ["0", "0d", " 0 ", "0.0"])
def test_zero_with_or_without_a_unit_is_no_value_from_the_scope(config: Config, zero: str) -> None:
    built = build_update(config, scope="org", org="acme", ttl=[("session", zero)], now_ms=NOW)
    assert built.update.ttl is not None
    assert built.update.ttl["session"].ttl_ms is None


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--scope", "org", "--org", "acme", "--ttl", "conversaton=3d"], "did you mean"),
        (["--scope", "org", "--ttl", "conversation=3d"], "needs --org"),
        (["--scope", "org", "--org", "a", "--ttl", "session=1M"], "'1M' means 1 minute(s)"),
        (["--scope", "org", "--org", "a", "--ttl", "session=14"], "a number alone is minutes"),
    ],
)
def test_a_refused_update_is_status_2_before_any_broker_is_asked(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 1: nothing listens there, so a command that asked a broker would fail otherwise.
    assert main(["policy", "set", "--bootstrap-servers", "127.0.0.1:1", *argv]) == exits.USAGE
    err = capsys.readouterr().err
    assert err.startswith("stream-expiry policy: ")
    assert says in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("given", ["conversation", "=3d", "conversation=", " = "])
def test_a_ttl_that_is_not_category_equals_duration_is_one_line_and_status_2(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["policy", "set", "--scope", "cap", "--ttl", given])
    assert exc.value.code == exits.USAGE
    err = capsys.readouterr().err
    assert "argument --ttl: expected CATEGORY=DURATION" in err
    assert err.count("\n") == 1


def test_an_update_that_leaves_categories_out_drops_them_and_keep_others_sends_them_again(
    config: Config,
) -> None:
    """An update replaces the scope's whole map: a ``default`` update for conversations
    alone takes the config file's session and error defaults away (the trial the service's
    warning comes from). ``--keep-others`` sends the scope's newest values again."""
    book = PolicyBook(config, {})
    built = build_update(config, scope="default", ttl=[("conversation", "20d")], now_ms=NOW)
    assert book.dropped_by(built.update) == ("session", "error")
    assert kept_values(book, built.update) == {"session": "1d", "error": "7d"}
    # From the topic's newest version too, not only the config file's.
    newer = build_update(config, scope="org", org="acme", ttl=[("session", "2d")], now_ms=NOW)
    assert book.dropped_by(newer.update) == ("conversation",)
    book.apply(newer.update)
    assert {c: v.ttl_ms for c, v in book.newest_of(Scope("org", "acme")).items()} == {
        "session": 2 * DAY
    }
    again = build_update(config, scope="org", org="acme", ttl=[("error", "1d")], now_ms=NOW)
    assert kept_values(book, again.update) == {"session": "2d"}
    # A scope no update nor the config file names has nothing to drop.
    fresh = build_update(config, scope="org", org="new", ttl=[("error", "1d")], now_ms=NOW)
    assert book.dropped_by(fresh.update) == ()
    assert book.newest_of(fresh.update.scope) == {}


def _view(config: Config, messages: list[tuple[bytes | None, bytes | None]]) -> TopicView:
    """The view :func:`read_policies` builds, from messages on partition 0 in this order."""
    view = TopicView(PolicyBook(config, {}))
    for offset, (key, value) in enumerate(messages):
        msg = Message(key, value, NOW + offset, 0, offset)
        slot: bytes | tuple[int, int] = key if key is not None else (0, offset)
        view.latest.pop(slot, None)
        view.latest[slot] = (msg, view.book.apply_update(key, value, msg.timestamp))
        if key is not None:
            view.partitions.setdefault(key, {})[0] = value
    return view


def test_list_shows_each_keys_latest_message_and_why_the_service_ignores_one(
    config: Config,
) -> None:
    good = orjson.dumps({"scope": "org", "org": "acme", "ttl": {"conversation": "14d"}})
    view = _view(
        config,
        [
            (b"org/acme", good),
            (b"org/acme", b"not json"),  # replaces the good one on the compacted topic
            (b"org/a c", orjson.dumps({"scope": "org", "org": "a c", "ttl": {}})),
            (b"default", orjson.dumps({"scope": "default", "ttl": {"session": "banana"}})),
            (b"cap", orjson.dumps({"scope": "cap", "ttl": {"max": "90d"}})),
            (b"cap", None),
        ],
    )
    entries = {e["key"]: e for e in listed(view, "expiry.policies")}
    assert list(entries) == ["cap", "default", "org/a c", "org/acme"]
    assert entries["cap"]["cleared"] is True
    assert entries["cap"]["offset"] == 5
    assert entries["org/acme"]["ignored"]["error"] == "invalid_json"
    assert entries["org/acme"]["offset"] == 1
    assert (
        "not percent-encoded canonically; use 'org/a%20c'"
        in (entries["org/a c"]["ignored"]["detail"])
    )
    assert entries["default"]["ttl"] == {"session": "banana"}
    assert entries["default"]["ignored_values"][0]["category"] == "session"
    lines = policy_lines(listed(view, "expiry.policies"), "expiry.policies")
    text = "\n".join(lines)
    assert "cap  cleared (the config file's values) from " in text
    assert "org/acme  IGNORED by the service: invalid_json" in text
    # A bad value under a scope's key is all compaction leaves of the scope.
    assert "once the topic is compacted this message is all that is left of the scope" in text
    # A bad key names no scope: it replaces nothing.
    assert "org/a c  IGNORED by the service: invalid_field" in text
    assert "it changes no scope" in text
    assert "session=invalid (ignored)" in text
    assert lines[-1] == "2 of 4 keys' latest message is ignored by the service (IGNORED above)"


def test_list_of_an_empty_topic_says_the_config_files_values_apply(config: Config) -> None:
    assert policy_lines(listed(_view(config, []), "p"), "p") == [
        "no policy updates on p: the config file's values apply"
    ]


def test_the_json_entry_has_the_scope_the_ttl_as_sent_and_in_seconds(config: Config) -> None:
    value = orjson.dumps(
        {"scope": "bot", "org": "acme", "bot": "b1", "ttl": {"conversation": "2d"}}
    )
    [entry] = listed(_view(config, [(b"bot/acme/b1/live", value)]), "p")
    assert entry == {
        "key": "bot/acme/b1/live",
        "topic": "p",
        "partition": 0,
        "offset": 0,
        "partitions": [0],
        "partitions_differ": False,
        "scope": "bot",
        "org": "acme",
        "bot": "b1",
        "env": "live",
        "ttl": {"conversation": "2d"},
        "ttl_seconds": {"conversation": 172_800},
        "effective_from": "2026-12-07T12:00:00.000Z",
        "cleared": False,
        "ignored": None,
        "ignored_values": [],
        "notes": [],
    }


def test_what_is_said_of_records_already_stamped() -> None:
    assert "keep the expiry they were given" in stamped_note(NOW, NOW)
    assert "replay" not in stamped_note(NOW, NOW)
    back = stamped_note(NOW - DAY, NOW)
    assert "`stream-expiry replay --since 2026-12-06T12:00:00.000Z` re-derives them" in back
    ahead = stamped_note(NOW + DAY, NOW)
    assert ahead.startswith("records created before 2026-12-08T12:00:00.000Z keep")


def test_a_key_whose_partitions_disagree_is_said(config: Config) -> None:
    """Another producer's partitioner put a scope's messages on two partitions: the
    services apply them in the order they read them, so which one wins is not fixed."""
    old = orjson.dumps({"scope": "org", "org": "acme", "ttl": {"conversation": "9d"}})
    new = orjson.dumps({"scope": "org", "org": "acme", "ttl": {"conversation": "2d"}})
    view = _view(config, [(b"org/acme", new)])
    view.partitions[b"org/acme"][1] = old
    [entry] = listed(view, "p")
    assert (entry["partitions"], entry["partitions_differ"]) == ([0, 1], True)
    assert (
        "WARNING: the latest messages of this key on partitions 0, 1 differ"
        in (policy_lines([entry], "p")[0])
    )
    view.partitions[b"org/acme"][1] = new  # what `policy set` writes to both
    [entry] = listed(view, "p")
    assert (entry["partitions"], entry["partitions_differ"]) == ([0, 1], False)
    assert "WARNING" not in policy_lines([entry], "p")[0]


@pytest.mark.parametrize(
    ("org", "bot", "says"),
    [
        (
            "acmee",
            None,
            "warning: no org or bot setting (config file, policy update) names org 'acmee': "
            "did you mean 'acme'? The update is published for 'acmee' only: if 'acme' was "
            "meant, clear it (stream-expiry policy clear --scope org --org acmee) and set "
            "'acme'\n",
        ),
        ("ACME", None, "did you mean 'acme'? (org ids are case-sensitive) The update"),
        (
            "acme",
            "suport-bot",
            "warning: no bot setting of org 'acme' names bot 'suport-bot': did you mean "
            "'support-bot'? The update is published for 'suport-bot' only: if 'support-bot' "
            "was meant, clear it (stream-expiry policy clear --scope bot --org acme --bot "
            "suport-bot --env draft) and set 'support-bot'\n",
        ),
        ("acme", "Support-Bot", "(bot ids are case-sensitive)"),
    ],
)
def test_a_misspelt_org_or_bot_is_warned_of_with_how_to_undo_it(
    org: str, bot: str | None, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial: `set --org acmee` was published with a warning that said so, but not what to
    do: the scope meant keeps its values, and the update for the typo stays on the topic
    (`policy list` shows it) until it is cleared. Case differences are said, as `hold place`
    says them."""
    config = parse_config(
        CONFIG_TEXT + '\n[retention.bots.acme."support-bot".draft]\nconversation = "1d"\n',
        path="<test>",
    )
    scope = Scope(kind="bot" if bot else "org", org=org, bot=bot, env="draft" if bot else None)
    _check_names(PolicyBook(config, {}), scope)
    assert says in capsys.readouterr().err


def test_set_without_a_config_file_warns_that_the_services_values_are_not_checked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial: `policy set --bootstrap-servers B --scope org --org acme --ttl session=1d`,
    without --config, was published with status 0 and nothing said, though the services'
    config gave acme conversation=7d: the update took it away (acme's conversations got the
    30d default), the refusal that the same command with --config gives never came. The
    warning is said before any broker is asked (port 1: nothing listens)."""
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    argv = ["--scope", "org", "--org", "acme", "--ttl", "session=1d"]
    assert main(["policy", "set", "--bootstrap-servers", "127.0.0.1:1", *argv]) == exits.BROKER
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("warning: no --config given: ")
    assert "values the services' config file gives scope org/acme" in first
    assert "pass the services' config file (--config FILE)" in first


def test_set_with_a_config_file_says_nothing_of_it(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(CONFIG_TEXT)
    argv = ["--scope", "org", "--org", "acme", "--ttl", "conversation=1d"]
    code = main(
        ["policy", "set", "--config", str(cfg), "--bootstrap-servers", "127.0.0.1:1", *argv]
    )
    assert code == exits.BROKER
    assert "--config" not in capsys.readouterr().err.splitlines()[0]


def test_list_says_which_update_is_not_in_force_yet(config: Config) -> None:
    """A trial: after `set --effective-from 2030-01-01`, `list` showed that update as the
    scope's, which read as what the scope has now; until then the services apply what it
    had before (set warns, when there was an update in force, that compaction takes it)."""
    ahead = orjson.dumps(
        {
            "scope": "org",
            "org": "acme",
            "ttl": {"conversation": "9d"},
            "effective_from": "2030-01-01T00:00:00Z",
        }
    )
    now = orjson.dumps({"scope": "org", "org": "beta", "ttl": {"conversation": "2d"}})
    entries = listed(_view(config, [(b"org/acme", ahead), (b"org/beta", now)]), "p")
    acme, beta = policy_lines(entries, "p", now_ms=NOW + 10)
    assert acme == (
        "org/acme  conversation=9d  from 2030-01-01T00:00:00.000Z (not in force yet)  at p[0]@0"
    )
    assert beta == "org/beta  conversation=2d  from 2026-12-07T12:00:00.001Z  at p[0]@1"

"""Presets: base settings that the file's keys (and set variables) override one by one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from stream_expiry.config import parse_config
from stream_expiry.model import Identity
from stream_expiry.policy import NEVER, PolicyBook, Resolution

if TYPE_CHECKING:
    from collections.abc import Mapping

MIN = 60_000
DAY = 1440 * MIN
YEAR = 525_600 * MIN


def book(toml: str = "", env: Mapping[str, str] | None = None) -> PolicyBook:
    return PolicyBook(parse_config(toml, path="test.toml"), env or {})


def resolve(b: PolicyBook, category: str) -> Resolution:
    return b.resolve(Identity("acme", "_", "live", category, "r"), 0)


COGNIGY = 'preset = "cognigy"\n'
CASES = [
    # (id, toml, env, category, expected)
    ("none adds nothing", "", {}, "conversation", NEVER),
    (
        "cognigy: conversation 43200 min",
        COGNIGY,
        {},
        "conversation",
        Resolution(43200 * MIN, "env"),
    ),
    (
        "cognigy: contact_profile 43200",
        COGNIGY,
        {},
        "contact_profile",
        Resolution(43200 * MIN, "env"),
    ),
    ("cognigy: session 0 never", COGNIGY, {}, "session", NEVER),
    ("cognigy: analytics 0 never", COGNIGY, {}, "analytics", NEVER),
    ("cognigy: error has no variable", COGNIGY, {}, "error", NEVER),
    (
        "cognigy: a set variable overrides the preset",
        COGNIGY,
        {"MAX_CONVERSATION_TTL_IN_MINUTES": "100000"},
        "conversation",
        Resolution(100000 * MIN, "env"),
    ),
    (
        "cognigy: a variable set to 0 switches the preset value off",
        COGNIGY,
        {"MAX_CONVERSATION_TTL_IN_MINUTES": "0"},
        "conversation",
        NEVER,
    ),
    (
        "cognigy: a variable set empty counts as unset (a template's VAR=)",
        COGNIGY,
        {"MAX_CONVERSATION_TTL_IN_MINUTES": ""},
        "conversation",
        Resolution(43200 * MIN, "env"),
    ),
    (
        "cognigy: a variable set to blanks counts as unset",
        COGNIGY,
        {"MAX_CONVERSATION_TTL_IN_MINUTES": "  "},
        "conversation",
        Resolution(43200 * MIN, "env"),
    ),
    (
        "cognigy: the other variable still counts",
        COGNIGY,
        {"INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES": "60"},
        "conversation",
        Resolution(60 * MIN, "env"),
    ),
    (
        "cognigy: an org value smaller than the preset wins",
        COGNIGY + '[retention.orgs.acme]\nconversation = "7d"\n',
        {},
        "conversation",
        Resolution(7 * DAY, "org"),
    ),
    (
        "cognigy: preset env values keep default out",
        COGNIGY + '[retention.defaults]\nconversation = "1d"\n',
        {},
        "conversation",
        Resolution(43200 * MIN, "env"),
    ),
    (
        "chatlayer: session 30d",
        'preset = "chatlayer"\n',
        {},
        "session",
        Resolution(30 * DAY, "default"),
    ),
    (
        "chatlayer: others 365d",
        'preset = "chatlayer"\n',
        {},
        "error",
        Resolution(365 * DAY, "default"),
    ),
    (
        "chatlayer: file default overrides one key",
        'preset = "chatlayer"\n[retention.defaults]\nsession = "7d"\n',
        {},
        "session",
        Resolution(7 * DAY, "default"),
    ),
    (
        "chatlayer: other keys keep the preset",
        'preset = "chatlayer"\n[retention.defaults]\nsession = "7d"\n',
        {},
        "conversation",
        Resolution(365 * DAY, "default"),
    ),
    (
        "chatlayer: default set to 0 means never",
        'preset = "chatlayer"\n[retention.defaults]\nsession = 0\n',
        {},
        "session",
        NEVER,
    ),
    (
        "chatlayer: an org value replaces the default",
        'preset = "chatlayer"\n[retention.orgs.acme]\nsession = "400d"\n',
        {},
        "session",
        Resolution(400 * DAY, "org"),
    ),
    ("avaamo: cap 2y", 'preset = "avaamo"\n', {}, "step", Resolution(2 * YEAR, "cap")),
    (
        "avaamo: cap limits an org",
        'preset = "avaamo"\n[retention.orgs.acme]\nconversation = "3y"\n',
        {},
        "conversation",
        Resolution(2 * YEAR, "cap"),
    ),
    (
        "avaamo: file max overrides",
        'preset = "avaamo"\n[retention.cap]\nmax = "1y"\n',
        {},
        "step",
        Resolution(YEAR, "cap"),
    ),
    (
        "avaamo: max = 0 switches the cap off",
        'preset = "avaamo"\n[retention.cap]\nmax = 0\n',
        {},
        "step",
        NEVER,
    ),
    (
        "avaamo: a category cap is added, max kept",
        'preset = "avaamo"\n[retention.cap]\nstep = "3y"\n',
        {},
        "step",
        Resolution(2 * YEAR, "cap"),
    ),
]


@pytest.mark.parametrize(
    ("toml", "env", "category", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_presets(toml: str, env: dict[str, str], category: str, expected: Resolution) -> None:
    assert resolve(book(toml, env), category) == expected


def test_preset_candidates_are_named_after_the_preset() -> None:
    names = [
        c["name"] for c in book(COGNIGY).explain(category="conversation", org="acme")["candidates"]
    ]
    assert names == [
        "preset cognigy: MAX_CONVERSATION_TTL_IN_MINUTES",
        "preset cognigy: INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES",
    ]
    e = book('preset = "avaamo"\n').explain(category="step", org="a")
    assert e["candidates"] == [
        {
            "source": "cap",
            "name": "preset avaamo: retention.cap.max",
            "ttl_seconds": 2 * YEAR // 1000,
            "valid": True,
        }
    ]
    e = book('preset = "chatlayer"\n').explain(category="session", org="a")
    assert e["candidates"] == [
        {
            "source": "default",
            "name": "preset chatlayer: retention.defaults.session",
            "ttl_seconds": 30 * 86400,
            "valid": True,
        }
    ]


def test_a_file_value_replaces_the_preset_candidate_in_explain() -> None:
    e = book('preset = "avaamo"\n[retention.cap]\nmax = "1y"\n').explain(category="step", org="a")
    assert e["candidates"] == [
        {"source": "cap", "name": "retention.cap.max", "ttl_seconds": YEAR // 1000, "valid": True}
    ]


def test_chatlayer_defaults_follow_configured_categories() -> None:
    b = book('preset = "chatlayer"\n[categories]\nnames = ["chat", "session"]\n')
    assert resolve(b, "chat") == Resolution(365 * DAY, "default")
    assert b.categories == ("chat", "session")


def test_sessions_slide_under_chatlayer() -> None:
    assert parse_config('preset = "chatlayer"\n').sliding == frozenset({"session"})

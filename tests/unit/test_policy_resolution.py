"""Effective TTL: every rule of the contract, table-driven, and the rules as properties."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.config import parse_config
from stream_expiry.model import Identity
from stream_expiry.policy import NEVER, Candidate, PolicyBook, Resolution
from stream_expiry.policy.resolution import choose
from stream_expiry.policy.sources import SOURCES, Source

if TYPE_CHECKING:
    from collections.abc import Mapping

MIN = 60_000
DAY = 1440 * MIN
CONV = "MAX_CONVERSATION_TTL_IN_MINUTES"
CONV2 = "INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES"


def book(toml: str = "", env: Mapping[str, str] | None = None) -> PolicyBook:
    return PolicyBook(parse_config(toml, path="test.toml"), env or {})


def resolve(
    b: PolicyBook,
    category: str = "conversation",
    org: str = "acme",
    bot: str = "_",
    env: str = "live",
) -> Resolution:
    return b.resolve(Identity(org, bot, env, category, "r1"), 0)


ORG_30D = '[retention.orgs.acme]\nconversation = "30d"\n'
BOT_7D = '[retention.bots.acme.b1.live]\nconversation = "7d"\n'
CAP_1Y = '[retention.cap]\nmax = "1y"\n'
DEFAULT_90D = '[retention.defaults]\nconversation = "90d"\n'

RULES = [
    # (id, toml, env, bot, expected ttl_ms, expected source)
    ("nothing configured: never", "", {}, "_", None, None),
    ("org alone", ORG_30D, {}, "_", 30 * DAY, "org"),
    ("bot alone, matching bot", BOT_7D, {}, "b1", 7 * DAY, "bot"),
    ("bot of another bot is no candidate", BOT_7D, {}, "b2", None, None),
    ("env alone", "", {CONV: "1440"}, "_", DAY, "env"),
    ("cap alone (max)", CAP_1Y, {}, "_", 365 * DAY, "cap"),
    ("cap by category", '[retention.cap]\nconversation = "2d"\n', {}, "_", 2 * DAY, "cap"),
    (
        "cap of another category is no candidate",
        '[retention.cap]\nsession = "2d"\n',
        {},
        "_",
        None,
        None,
    ),
    ("default alone", DEFAULT_90D, {}, "_", 90 * DAY, "default"),
    ("smallest wins: bot < org", ORG_30D + BOT_7D, {}, "b1", 7 * DAY, "bot"),
    ("smallest wins: org < bot", ORG_30D.replace("30d", "1d") + BOT_7D, {}, "b1", DAY, "org"),
    ("smallest wins: env < org", ORG_30D, {CONV: "60"}, "_", 60 * MIN, "env"),
    ("cap limits org", ORG_30D + '[retention.cap]\nmax = "10d"\n', {}, "_", 10 * DAY, "cap"),
    ("cap larger than org", ORG_30D + CAP_1Y, {}, "_", 30 * DAY, "org"),
    (
        "category cap smaller than max",
        '[retention.cap]\nmax = "1y"\nconversation = "3d"\n',
        {},
        "_",
        3 * DAY,
        "cap",
    ),
    (
        "default ignored when org positive",
        ORG_30D + DEFAULT_90D.replace("90d", "1d"),
        {},
        "_",
        30 * DAY,
        "org",
    ),
    (
        "default ignored when bot positive",
        BOT_7D + DEFAULT_90D.replace("90d", "1d"),
        {},
        "b1",
        7 * DAY,
        "bot",
    ),
    (
        "default ignored when env positive",
        DEFAULT_90D.replace("90d", "1d"),
        {CONV: "2880"},
        "_",
        2 * DAY,
        "env",
    ),
    (
        "default joins when org is 0",
        ORG_30D.replace('"30d"', "0") + DEFAULT_90D,
        {},
        "_",
        90 * DAY,
        "default",
    ),
    (
        "default joins when org negative",
        ORG_30D.replace('"30d"', '"-1d"') + DEFAULT_90D,
        {},
        "_",
        90 * DAY,
        "default",
    ),
    (
        "default joins when org empty",
        ORG_30D.replace('"30d"', '""') + DEFAULT_90D,
        {},
        "_",
        90 * DAY,
        "default",
    ),
    (
        "default joins with cap, cap smaller",
        DEFAULT_90D + '[retention.cap]\nmax = "10d"\n',
        {},
        "_",
        10 * DAY,
        "cap",
    ),
    ("default joins with cap, default smaller", DEFAULT_90D + CAP_1Y, {}, "_", 90 * DAY, "default"),
    ("cap does not stop default joining", CAP_1Y + DEFAULT_90D, {}, "_", 90 * DAY, "default"),
    ("env 0 is ignored", ORG_30D, {CONV: "0"}, "_", 30 * DAY, "org"),
    ("env empty is ignored", ORG_30D, {CONV: ""}, "_", 30 * DAY, "org"),
    ("env negative is ignored", ORG_30D, {CONV: "-5"}, "_", 30 * DAY, "org"),
    ("env invalid is ignored", ORG_30D, {CONV: "soon"}, "_", 30 * DAY, "org"),
    (
        "env invalid does not make default join early",
        DEFAULT_90D,
        {CONV: "soon"},
        "_",
        90 * DAY,
        "default",
    ),
    ("both conversation variables count", "", {CONV: "600", CONV2: "300"}, "_", 300 * MIN, "env"),
    ("second variable alone", "", {CONV2: "2h"}, "_", 120 * MIN, "env"),
    ("env variable with a unit", "", {CONV: "1d"}, "_", DAY, "env"),
    (
        "tie goes to the first listed",
        ORG_30D + '[retention.cap]\nmax = "30d"\n',
        {},
        "_",
        30 * DAY,
        "org",
    ),
    (
        "tie of cap and default goes to the cap, listed first",
        DEFAULT_90D + '[retention.cap]\nmax = "90d"\n',
        {},
        "_",
        90 * DAY,
        "cap",
    ),
    (
        "all non-positive: never",
        ORG_30D.replace('"30d"', "0") + "[retention.cap]\nmax = 0\n",
        {CONV: "0"},
        "_",
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("toml", "env", "bot", "ttl_ms", "source"), [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_rules(
    toml: str, env: dict[str, str], bot: str, ttl_ms: int | None, source: str | None
) -> None:
    b = book(toml, env)
    assert resolve(b, bot=bot) == Resolution(ttl_ms, source)
    # explain must agree with resolve, always
    e = b.explain(category="conversation", org="acme", bot=bot)
    assert (e["ttl_seconds"], e["source"]) == (None if ttl_ms is None else ttl_ms // 1000, source)


def test_a_larger_org_value_still_beats_a_smaller_default() -> None:
    # rule 2 makes the effective TTL not monotonic in the candidates: that is the contract
    assert resolve(book(DEFAULT_90D)).ttl_ms == 90 * DAY
    assert (
        resolve(book(DEFAULT_90D + '[retention.orgs.acme]\nconversation = "1y"\n')).ttl_ms
        == 365 * DAY
    )


def test_draft_and_live_are_separate() -> None:
    b = book(
        '[retention.bots.acme.b1.draft]\nconversation = "1d"\n[retention.bots.acme.b1.live]\nconversation = "9d"\n'
    )
    assert resolve(b, bot="b1", env="draft").ttl_ms == DAY
    assert resolve(b, bot="b1", env="live").ttl_ms == 9 * DAY
    # explain answers for the env asked about, as resolve does
    for env, seconds in (("draft", DAY // 1000), ("live", 9 * DAY // 1000)):
        e = b.explain(category="conversation", org="acme", bot="b1", env=env)
        assert e["ttl_seconds"] == seconds
        assert [c["name"] for c in e["candidates"]] == [
            f"retention.bots.acme.b1.{env}.conversation"
        ]


def test_other_org_gets_nothing_from_acme() -> None:
    b = book(ORG_30D)
    assert resolve(b, org="globex") == NEVER


def test_env_variables_only_apply_to_their_category() -> None:
    b = book("", {"INSIGHTS_MAX_SESSIONS_TTL_IN_MINUTES": "30"})
    assert resolve(b, category="session") == Resolution(30 * MIN, "env")
    assert resolve(b, category="conversation") == NEVER


def test_custom_categories() -> None:
    b = book(
        '[categories]\nnames = ["chat", "audit"]\nsliding = []\n[retention.defaults]\naudit = "7y"\n'
    )
    assert resolve(b, category="audit") == Resolution(7 * 525_600 * MIN, "default")
    assert resolve(b, category="chat") == NEVER


def test_invalid_env_variables_are_warnings_not_errors() -> None:
    b = book("", {CONV: "forever", "INSIGHTS_MAX_STEPS_TTL_IN_MINUTES": "12", "UNRELATED": "x"})
    assert len(b.env_warnings) == 1
    assert CONV in b.env_warnings[0]
    assert "forever" in b.env_warnings[0]


def test_a_negative_variable_is_ignored_with_a_warning_naming_it() -> None:
    """As a negative value in the config file is (with its line): ignored, as 0 is, and
    said. Silent, a sign slipped into a deployment kept the category's records forever
    with nobody told (a trial)."""
    b = book("", {CONV: "-5", CONV2: "30"})
    assert resolve(b) == Resolution(30 * MIN, "env")
    assert len(b.env_warnings) == 1
    assert f"{CONV} is negative ('-5'): ignored" in b.env_warnings[0]


def test_a_capital_m_in_a_variable_is_minutes_with_a_warning_naming_it() -> None:
    """A "1M" is one minute, as everywhere (units are case-insensitive), but M usually means
    a month: the person is told, naming the variable, and the value still counts."""
    b = book("", {CONV: "1M", CONV2: "2mo"})
    assert resolve(b) == Resolution(MIN, "env")
    assert len(b.env_warnings) == 1
    assert CONV in b.env_warnings[0]
    assert '"1mo"' in b.env_warnings[0]


def test_env_read_once() -> None:
    env = {CONV: "10"}
    b = book("", env)
    env[CONV] = "1"
    assert resolve(b).ttl_ms == 10 * MIN


# -- the rules as properties of `choose` ------------------------------------------------------

_SOURCES = st.sampled_from(SOURCES)
_NOT_DEFAULT = st.sampled_from([s for s in SOURCES if s != "default"])
_TTL = st.one_of(st.none(), st.integers(min_value=1, max_value=10**6).map(lambda s: s * 1000))
_CANDIDATE = st.builds(
    lambda src, ttl, valid: Candidate(src, f"n-{src}", ttl if valid else None, valid),
    _SOURCES,
    _TTL,
    st.booleans(),
)
_ORDER = {"org": 0, "bot": 1, "env": 2, "cap": 3, "default": 4}


def _ordered(cands: list[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: _ORDER[c.source])


def _primary_positive(cands: list[Candidate]) -> bool:
    return any(c.ttl_ms is not None and c.source in ("org", "bot", "env") for c in cands)


@given(st.lists(_CANDIDATE, max_size=8))
def test_result_is_a_positive_candidate_or_never(cands: list[Candidate]) -> None:
    cands = _ordered(cands)
    winner = choose(cands).winner
    positive = [c for c in cands if c.ttl_ms is not None]
    if winner is None:
        non_default = [c for c in positive if c.source != "default"]
        assert not non_default
        assert not positive or _primary_positive(cands)
    else:
        assert winner in positive
        eligible = [c for c in positive if c.source != "default" or not _primary_positive(cands)]
        assert winner.ttl_ms == min(c.ttl_ms for c in eligible if c.ttl_ms is not None)


@given(st.lists(_CANDIDATE, max_size=8), _SOURCES, st.integers(min_value=1, max_value=10**6))
def test_adding_a_larger_candidate_changes_nothing(
    cands: list[Candidate], source: Source, extra: int
) -> None:
    cands = _ordered(cands)
    before = choose(cands).resolution
    if before.ttl_ms is None or source == "default":
        return
    if before.source == "default" and source != "cap":
        # the one exception, by rule 2: a positive org/bot/env value sends default away
        return
    bigger = Candidate(source, "extra", before.ttl_ms + extra * 1000)
    assert choose(_ordered([*cands, bigger])).resolution.ttl_ms == before.ttl_ms


@given(st.lists(_CANDIDATE, max_size=8), _NOT_DEFAULT, st.integers(min_value=1, max_value=10**3))
def test_adding_a_smaller_candidate_always_wins(
    cands: list[Candidate], source: Source, ttl_s: int
) -> None:
    cands = [c for c in _ordered(cands) if c.source != "default"]
    before = choose(cands).resolution
    smaller_ms = ttl_s * 1000 if before.ttl_ms is None else max(1000, before.ttl_ms - ttl_s * 1000)
    if before.ttl_ms is not None and smaller_ms >= before.ttl_ms:
        return
    smaller = Candidate(source, "extra", smaller_ms)
    assert choose(_ordered([*cands, smaller])).resolution == Resolution(smaller_ms, source)


@given(st.lists(_CANDIDATE, max_size=8))
def test_order_of_equal_sources_does_not_change_the_ttl(cands: list[Candidate]) -> None:
    a = choose(_ordered(cands)).resolution
    b = choose(_ordered(list(reversed(cands)))).resolution
    assert a.ttl_ms == b.ttl_ms
    assert a.source == b.source


def test_equal_ttls_from_different_sources_each_name_their_own_source() -> None:
    """The tombstone's ``ttl_source`` is the winning source of *that* record: two records
    whose TTLs are equal but come from different scopes (acme's org value, the cap for
    everyone else) must not share one answer, whichever is resolved first."""
    b = book(
        ORG_30D + '[retention.cap]\nmax = "30d"\n' + '[retention.orgs.globex]\nsession = "1d"\n'
    )
    assert resolve(b, org="acme") == Resolution(30 * DAY, "org")
    assert resolve(b, org="globex") == Resolution(30 * DAY, "cap")
    assert resolve(b, org="initech") == Resolution(30 * DAY, "cap")

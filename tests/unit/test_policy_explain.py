"""explain: the contract's JSON exactly, candidates in order with their names, and the table."""

from __future__ import annotations

import orjson
import pytest

from stream_expiry.config import parse_config
from stream_expiry.errors import StreamExpiryError
from stream_expiry.model import Identity
from stream_expiry.policy import PolicyBook, UnknownCategory, apply_updates, render_explain_table

FULL = """
preset = "cognigy"
[retention.defaults]
conversation = "365d"
[retention.cap]
max = "2y"
conversation = "400d"
[retention.orgs."acme corp"]
conversation = "30d"
[retention.bots."acme corp".b1.live]
conversation = 0
"""


def make_book(toml: str = FULL, env: dict[str, str] | None = None) -> PolicyBook:
    return PolicyBook(parse_config(toml, path="x.toml"), env or {})


def test_explain_is_exactly_the_contract_object() -> None:
    env = {"MAX_CONVERSATION_TTL_IN_MINUTES": "nope"}
    e = make_book(env=env).explain(category="conversation", org="acme corp", bot="b1")
    assert e == {
        "ttl_seconds": 30 * 86400,
        "source": "org",
        "candidates": [
            {
                "source": "org",
                "name": 'retention.orgs."acme corp".conversation',
                "ttl_seconds": 2592000,
                "valid": True,
            },
            {
                "source": "bot",
                "name": 'retention.bots."acme corp".b1.live.conversation',
                "ttl_seconds": None,
                "valid": True,
            },
            {
                "source": "env",
                "name": "MAX_CONVERSATION_TTL_IN_MINUTES",
                "ttl_seconds": None,
                "valid": False,
            },
            {
                "source": "env",
                "name": "preset cognigy: INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES",
                "ttl_seconds": None,
                "valid": True,
            },
            {"source": "cap", "name": "retention.cap.max", "ttl_seconds": 63072000, "valid": True},
            {
                "source": "cap",
                "name": "retention.cap.conversation",
                "ttl_seconds": 34560000,
                "valid": True,
            },
            {
                "source": "default",
                "name": "retention.defaults.conversation",
                "ttl_seconds": 31536000,
                "valid": True,
            },
        ],
    }
    text = orjson.dumps(e)  # JSON-serialisable as is, with whole seconds as integers
    assert b".0" not in text
    assert all(
        type(c["ttl_seconds"]) is int for c in e["candidates"] if c["ttl_seconds"] is not None
    )


def test_explain_never() -> None:
    e = make_book("").explain(category="session", org="x")
    assert e == {"ttl_seconds": None, "source": None, "candidates": []}


def test_unknown_category_and_env_are_errors_not_never() -> None:
    book = make_book()
    with pytest.raises(UnknownCategory, match="did you mean 'conversation'"):
        book.explain(category="conversaton", org="a")
    with pytest.raises(StreamExpiryError):
        book.explain(category="nope", org="a")
    with pytest.raises(ValueError, match="env"):
        book.explain(category="conversation", org="a", env="prod")


def test_table_names_every_candidate_and_the_reason() -> None:
    table = render_explain_table(
        make_book().explain(category="conversation", org="acme corp", bot="b1")
    )
    for needle in [
        'retention.orgs."acme corp".conversation',
        "WINS: smallest positive value",
        "ignored: 0, negative or empty",
        "larger than the winner",
        "not used: org, bot or env gives a positive value",
        "effective TTL: 30d (2592000 s) from org",
    ]:
        assert needle in table, table


def test_table_default_used() -> None:
    e = make_book('[retention.defaults]\nsession = "7d"\n').explain(category="session", org="x")
    table = render_explain_table(e)
    assert "default used because org, bot and env give no positive value" in table


def test_table_default_joined_but_cap_won() -> None:
    toml = '[retention.defaults]\nsession = "7d"\n[retention.cap]\nmax = "1d"\n'
    table = render_explain_table(make_book(toml).explain(category="session", org="x"))
    assert "WINS: smallest positive value (default joined" in table
    assert "larger than the winner" in table


def test_table_never_and_invalid() -> None:
    e = make_book("", {"INSIGHTS_MAX_SESSIONS_TTL_IN_MINUTES": "x"}).explain(
        category="session", org="x"
    )
    table = render_explain_table(e)
    assert "ignored: not a valid duration" in table
    assert "never expires: no positive candidate" in table
    assert "no value is configured" in render_explain_table(
        {"ttl_seconds": None, "source": None, "candidates": []}
    )


def test_table_tie_goes_to_the_first() -> None:
    toml = '[retention.orgs.a]\nerror = "1d"\n[retention.cap]\nmax = "1d"\n'
    table = render_explain_table(make_book(toml).explain(category="error", org="a"))
    assert "equal to the winner, which is listed first" in table


def test_names_quote_keys_as_a_person_types_them() -> None:
    """A key that TOML must quote is quoted, and its letters are shown as written."""
    book = make_book('[retention.orgs."Zürich AG"]\nconversation = "30d"\n')
    e = book.explain(category="conversation", org="Zürich AG", bot="b")
    names = [c["name"] for c in e["candidates"]]
    assert 'retention.orgs."Zürich AG".conversation' in names


def test_the_org_meant_is_found_whatever_the_case_of_the_org_given() -> None:
    """``ACME`` or ``AB`` where the config names ``acme`` or ``ab``: matching nothing (org
    ids stay case-sensitive), and found by no warning, as difflib compared case too (a
    compliance trial); ``Acme`` only was, by three letters in four. An org named, or one
    close to none, still gives None; two named alike but for case give the first sorted."""
    book = make_book(
        '[retention.orgs.acme]\nconversation = "30d"\n[retention.orgs.ab]\nerror = "1d"\n'
        '[retention.bots.Globex.b1.live]\nerror = "1d"\n'
    )
    for given, meant in [("ACME", "acme"), ("Acme", "acme"), ("AB", "ab"), ("aB", "ab"),
                         ("globex", "Globex"), ("ACMEE", "acme")]:  # fmt: skip
        assert book.org_meant(given) == meant, given
    for given in ("acme", "ab", "Globex", "initech", "X"):
        assert book.org_meant(given) is None, given
    assert book.explain(category="conversation", org="ACME")["source"] is None  # still its own
    alike = make_book('[retention.orgs.Acme]\nerror = "1d"\n[retention.orgs.acme]\nerror = "1d"\n')
    assert alike.org_meant("ACME") == "Acme"


def test_the_bot_meant_is_one_of_that_orgs_bots_whatever_the_case_of_the_bot_given() -> None:
    """As :meth:`PolicyBook.org_meant`, for the bots an org's bot scopes name: a bot of
    another org is never meant, a bot named is none misspelt, and one close to none gives
    None."""
    book = make_book(
        '[retention.bots.acme.b1.live]\nerror = "1d"\n'
        '[retention.bots.acme.support-bot.draft]\nerror = "1d"\n'
        '[retention.bots.globex.sales-bot.live]\nerror = "1d"\n'
    )
    assert book.bot_meant("acme", "B1") == "b1"
    assert book.bot_meant("acme", "suport-bot") == "support-bot"
    assert book.bot_meant("acme", "b1") is None
    assert book.bot_meant("acme", "sales-bot") is None  # globex's
    assert book.bot_meant("globex", "Sales-Bot") == "sales-bot"
    assert book.bot_meant("initech", "b1") is None


def test_candidates_are_every_value_found_in_the_contracts_order() -> None:
    book = make_book(
        FULL.replace('preset = "cognigy"', ""), {"MAX_CONVERSATION_TTL_IN_MINUTES": "60"}
    )
    found = book.candidates(category="conversation", org="acme corp", bot="b1")
    assert [(c.source, c.ttl_ms) for c in found] == [
        ("org", 30 * 86_400_000),
        ("bot", None),
        ("env", 3_600_000),
        ("cap", 730 * 86_400_000),
        ("cap", 400 * 86_400_000),
        ("default", 365 * 86_400_000),
    ]


def test_explain_says_an_update_giving_a_key_twice_is_ignored_naming_the_key() -> None:
    """``explain`` and ``replay`` apply the topic's updates as the service does and print
    what it warns of: an update with ``ttl.conversation`` twice was applied with its last
    value, and its answer said one day where the update's author wrote 30 first."""
    book = PolicyBook(parse_config('[retention.orgs.acme]\nconversation = "7d"\n'), {})
    twice = b'{"scope": "org", "org": "acme", "ttl": {"conversation": "30d", "conversation": "1d"}}'
    said = apply_updates(book, [(b"org/acme", twice, 0)], "expiry.policies")
    assert said == [
        "a policy update on expiry.policies (key 'org/acme') is ignored: invalid_field (key "
        "'conversation' is "
        "given twice (at 'ttl.conversation'): which of its values was meant is unknown, so "
        "the document is refused; give each key once)"
    ]
    # A message without a key is said so (the service rejects it for that).
    assert apply_updates(book, [(None, twice, 0)], "expiry.policies")[0].startswith(
        "a policy update on expiry.policies (no key) is ignored: "
    )
    resolved = book.resolve(Identity("acme", "_", "live", "conversation", "r"), 1)
    assert resolved.ttl_ms == 7 * 86_400_000

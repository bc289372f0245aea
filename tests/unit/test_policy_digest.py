"""The policy digest that instances of any version compare when they join one group: the
SHA-256 of a canonical document (``PolicyBook.canonical``), never of ``repr``, so equal
policies written otherwise name alike and what decides a TTL names differently."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from stream_expiry.config import parse_config
from stream_expiry.model import DEFAULT_CATEGORIES
from stream_expiry.policy import PolicyBook


def _book(text: str, environ: dict[str, str] | None = None) -> tuple[PolicyBook, frozenset[str]]:
    config = parse_config(text)
    return PolicyBook(config, environ or {}), config.sliding


def _digest(text: str, environ: dict[str, str] | None = None) -> str:
    book, sliding = _book(text, environ)
    return book.digest(sliding)


POLICY = """\
[categories]
names = ["conversation", "session"]
[retention.defaults]
conversation = "30d"
[retention.cap]
max = "2y"
[retention.orgs."zürich"]
session = "1d"
[retention.orgs."\U0001fae8"]
session = "2d"
[retention.bots.acme.b1.draft]
conversation = 60
"""
ENVIRON = {"MAX_CONVERSATION_TTL_IN_MINUTES": "90", "INSIGHTS_MAX_SESSIONS_TTL_IN_MINUTES": "x"}
# The document the docstring of PolicyBook.canonical describes, written out by hand: a
# change of its form changes every deployment's digest, and must be one made on purpose.
CANONICAL = (
    '{"bots":{"acme":{"b1":{"draft":{"conversation":[3600000,true]}}}},'
    '"cap":{"max":[63072000000,true]},'
    '"categories":["conversation","session"],'
    '"default":{"conversation":[2592000000,true]},'
    '"env":{"conversation":[[5400000,true]],"session":[[null,false]]},'
    '"orgs":{"zürich":{"session":[86400000,true]},"\U0001fae8":{"session":[172800000,true]}},'
    '"sliding":["session"]}'
).encode()


def test_the_digest_is_the_sha256_of_the_documented_canonical_document() -> None:
    """Before, the digest hashed ``repr`` of tuples, whose escaping of a string follows
    the running Python's Unicode tables: an org named with a character of Unicode 15
    (U+1FAE8, or CJK extension H) is ``'\\U0001fae8'`` to Python 3.11 and the character
    itself to 3.12, so two instances could name one policy apart. JSON writes it as its
    UTF-8 bytes on every version."""
    book, sliding = _book(POLICY, ENVIRON)
    assert book.digest(sliding) == hashlib.sha256(CANONICAL).hexdigest()[:12]
    assert book.canonical(sliding) == CANONICAL


BASE = """\
[retention.defaults]
conversation = "30d"
session = "1d"
[retention.orgs.acme]
conversation = "7d"
[retention.orgs.globex]
error = "2h"
[retention.bots.acme.b1.live]
session = "1h"
[retention.bots.acme.b2.live]
session = "2h"
"""


@pytest.mark.parametrize(
    ("text", "environ"),
    [
        pytest.param(
            f"[categories]\nnames = {list(reversed(DEFAULT_CATEGORIES))}\n" + BASE,
            {},
            id="categories-in-another-order",
        ),
        pytest.param(
            """\
[retention.bots.acme.b2.live]
session = 120
[retention.orgs.globex]
error = "120m"
[retention.bots.acme.b1.live]
session = "3600s"
[retention.orgs."acme"]
conversation = "1w"
[retention.defaults]
session = "24h"
conversation = "720h"
""",
            {},
            id="tables-keys-and-durations-written-otherwise",
        ),
        pytest.param(
            """\
retention.defaults = { session = 1440, conversation = "43200" }
retention.orgs.acme.conversation = "168H"
retention.orgs.globex.error = 120.0
retention.bots.acme.b1.live.session = "1h"
retention.bots.acme.b2.live.session = "2h"
""",
            {},
            id="dotted-keys-and-inline-tables",
        ),
        pytest.param(
            BASE + "[retention.orgs.initech]\n[retention.bots.acme.b3.draft]\n",
            {},
            id="a-scope-without-values",
        ),
    ],
)
def test_equal_policies_written_otherwise_give_equal_digests(
    text: str, environ: dict[str, str]
) -> None:
    """Categories in another order gave another digest before (the tuple as configured),
    so two instances that stamp alike were said to differ."""
    assert _digest(text, environ) == _digest(BASE)


def test_the_sliding_categories_in_either_order_alike() -> None:
    one = '[categories]\nsliding = ["conversation", "session"]\n' + BASE
    other = '[categories]\nsliding = ["session", "conversation"]\n' + BASE
    assert _digest(one) == _digest(other)


def test_the_environment_values_of_a_category_in_either_variable_name_alike() -> None:
    """Both variables of conversations are ``env`` candidates, and the smallest positive
    counts whichever holds it. Before, the values went in in the variables' order."""
    one = {
        "MAX_CONVERSATION_TTL_IN_MINUTES": "60",
        "INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES": "90",
    }
    other = {
        "MAX_CONVERSATION_TTL_IN_MINUTES": "90",
        "INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES": "1h",
    }
    assert _digest(BASE, one) == _digest(BASE, other)
    assert _digest(BASE, one) != _digest(BASE, {"MAX_CONVERSATION_TTL_IN_MINUTES": "60"})


def test_a_categorys_environment_values_are_listed_null_last_in_the_document() -> None:
    """The canonical order of a category's environment values (``PolicyBook.canonical``):
    by ``ttl_ms``, a null (a value not positive, or not a duration) last. Another order
    names the same policy differently on instances of another version."""
    for environ in (
        {"MAX_CONVERSATION_TTL_IN_MINUTES": "x", "INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES": "90"},
        {"MAX_CONVERSATION_TTL_IN_MINUTES": "90", "INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES": "x"},
    ):
        book, sliding = _book(BASE, environ)
        env = orjson.loads(book.canonical(sliding))["env"]
        assert env["conversation"] == [[5_400_000, True], [None, False]], environ


CHANGED: dict[str, tuple[str, dict[str, str]]] = {
    "base": (BASE, {}),
    "a-ttl-one-second-longer": (BASE.replace('"30d"', '"2592001s"'), {}),
    "an-orgs-ttl": (BASE.replace('"7d"', '"8d"'), {}),
    "a-bots-ttl": (BASE.replace('"1h"', '"61m"'), {}),
    "another-category": (BASE.replace('error = "2h"', 'session = "2h"'), {}),
    "another-org": (BASE.replace("orgs.globex", "orgs.initech"), {}),
    "another-bot": (BASE.replace("acme.b1.live", "acme.b3.live"), {}),
    "draft-not-live": (BASE.replace("acme.b1.live", "acme.b1.draft"), {}),
    "a-value-more-as-default": (BASE + 'error = "2d"\n', {}),
    "as-cap": (BASE + '[retention.cap]\nerror = "2d"\n', {}),
    "as-cap-of-all": (BASE + '[retention.cap]\nmax = "2d"\n', {}),
    "as-org": (BASE + '[retention.orgs.initech]\nerror = "2d"\n', {}),
    "as-bot": (BASE + '[retention.bots.initech._.live]\nerror = "2d"\n', {}),
    "as-env": (BASE, {"MAX_CONVERSATION_TTL_IN_MINUTES": "2880"}),
    "env-zero": (BASE, {"MAX_CONVERSATION_TTL_IN_MINUTES": "0"}),
    "env-invalid": (BASE, {"MAX_CONVERSATION_TTL_IN_MINUTES": "soon"}),
    "another-sliding": ('[categories]\nsliding = ["error"]\n' + BASE, {}),
    "a-category-more": (
        '[categories]\nnames = ["conversation", "session", "error", "step"]\n' + BASE,
        {},
    ),
    "a-preset": ('preset = "chatlayer"\n' + BASE, {}),
}


def test_any_change_of_a_ttl_scope_or_source_gives_another_digest() -> None:
    """Each variant of the base changes one thing that decides a TTL (a value, the scope
    or category it is for, the source it comes from, which categories exist or slide):
    every one has a digest of its own."""
    digests = {name: _digest(text, environ) for name, (text, environ) in CHANGED.items()}
    alike = {d for d in digests.values() if list(digests.values()).count(d) > 1}
    assert not alike, {name: d for name, d in digests.items() if d in alike}

"""Policy history and the cache: the right version at every creation time, updates at once."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_expiry.config import parse_config
from stream_expiry.model import Identity
from stream_expiry.policy import PolicyBook, PolicyUpdate, Resolution, history, scope_key
from stream_expiry.policy.history import AFTER_ALL, BEFORE_ALL, ScopeHistory
from stream_expiry.policy.sources import Candidate, TtlMap

MIN = 60_000
DAY = 1440 * MIN
ACME = Identity("acme", "b1", "live", "conversation", "r")
CONFIG = '[retention.orgs.acme]\nconversation = "30d"\n[retention.defaults]\nconversation = "90d"\n'


def make_book(toml: str = CONFIG, cache_size: int = 1 << 18) -> PolicyBook:
    return PolicyBook(parse_config(toml), {}, cache_size=cache_size)


def send(book: PolicyBook, ts: int, key: str, value: dict[str, Any] | None) -> PolicyUpdate:
    result = book.apply_update(key.encode(), None if value is None else orjson.dumps(value), ts)
    assert isinstance(result, PolicyUpdate), result
    return result


def org_update(ttl: dict[str, Any], effective_from: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"scope": "org", "org": "acme", "ttl": ttl}
    if effective_from is not None:
        body["effective_from"] = effective_from
    return body


def test_scope_history_intervals() -> None:
    base = {"c": Candidate("org", "base", 1000)}
    v1 = {"c": Candidate("org", "v1", 2000)}
    v2 = {"c": Candidate("org", "v2", 3000)}
    h = ScopeHistory(base)
    assert h.at(0) == (base, BEFORE_ALL, AFTER_ALL)
    h.add(100, v1)
    h.add(200, v2)
    h.add(300, None)
    assert h.at(99) == (base, BEFORE_ALL, 100)
    assert h.at(100) == (v1, 100, 200)
    assert h.at(250) == (v2, 200, 300)
    assert h.at(300) == (base, 300, AFTER_ALL)
    assert h.at(None) == (base, 300, AFTER_ALL)
    assert len(h) == 3
    assert h.gen == 3


def test_same_effective_from_the_last_applied_wins() -> None:
    h = ScopeHistory({})
    first, second = {"c": Candidate("org", "1", 1000)}, {"c": Candidate("org", "2", 2000)}
    h.add(100, first)
    h.add(100, second)
    assert h.at(100)[0] is second


def test_update_takes_effect_for_the_very_next_record() -> None:
    book = make_book()
    assert book.resolve(ACME, 1_000) == Resolution(30 * DAY, "org")  # now cached
    send(book, 2_000, "org/acme", org_update({"conversation": "1d"}))
    assert book.resolve(ACME, 2_000) == Resolution(DAY, "org")
    # a record created before the update keeps the old policy (history)
    assert book.resolve(ACME, 1_999) == Resolution(30 * DAY, "org")


def test_effective_from_overrides_the_kafka_timestamp() -> None:
    book = make_book()
    send(book, 5_000, "org/acme", org_update({"conversation": "1d"}, effective_from=10_000))
    assert book.resolve(ACME, 9_999).ttl_ms == 30 * DAY
    assert book.resolve(ACME, 10_000).ttl_ms == DAY


def test_backdated_update_governs_only_until_the_next_version() -> None:
    book = make_book()
    send(book, 100, "org/acme", org_update({"conversation": "2d"}, effective_from=100))
    send(book, 200, "org/acme", org_update({"conversation": "1d"}, effective_from=50))
    assert book.resolve(ACME, 49).ttl_ms == 30 * DAY
    assert book.resolve(ACME, 75).ttl_ms == DAY
    assert book.resolve(ACME, 150).ttl_ms == 2 * DAY


def test_update_replaces_the_whole_map() -> None:
    book = make_book('[retention.orgs.acme]\nconversation = "30d"\nsession = "1d"\n')
    send(book, 100, "org/acme", org_update({"conversation": "10d"}))
    session = Identity("acme", "_", "live", "session", "s")
    assert book.resolve(session, 99).ttl_ms == DAY
    assert book.resolve(session, 100).ttl_ms is None


def test_null_value_clears_back_to_the_config_file() -> None:
    book = make_book()
    send(book, 100, "org/acme", org_update({"conversation": "1d"}))
    send(book, 200, "org/acme", None)
    assert book.resolve(ACME, 150).ttl_ms == DAY
    assert book.resolve(ACME, 200) == Resolution(30 * DAY, "org")


def test_clearing_a_scope_the_file_never_had_removes_it() -> None:
    book = make_book()
    send(
        book,
        100,
        "bot/acme/b1/live",
        {"scope": "bot", "org": "acme", "bot": "b1", "ttl": {"conversation": "1h"}},
    )
    assert book.resolve(ACME, 100) == Resolution(60 * MIN, "bot")
    send(book, 200, "bot/acme/b1/live", None)
    assert book.resolve(ACME, 200) == Resolution(30 * DAY, "org")


def test_cap_and_default_updates_invalidate_every_cached_answer() -> None:
    book = make_book()
    other = Identity("globex", "_", "live", "conversation", "r")
    assert book.resolve(other, 0) == Resolution(90 * DAY, "default")
    assert book.resolve(ACME, 0) == Resolution(30 * DAY, "org")
    send(book, 10, "cap", {"scope": "cap", "ttl": {"max": "7d"}})
    assert book.resolve(other, 10) == Resolution(7 * DAY, "cap")
    assert book.resolve(ACME, 10) == Resolution(7 * DAY, "cap")
    send(book, 20, "default", {"scope": "default", "ttl": {"conversation": "1d"}})
    assert book.resolve(other, 20) == Resolution(DAY, "default")
    assert book.resolve(ACME, 20) == Resolution(7 * DAY, "cap")


def test_new_org_scope_invalidates_a_cached_absence() -> None:
    book = make_book("")
    ident = Identity("new-org", "_", "live", "conversation", "r")
    assert book.resolve(ident, 0).ttl_ms is None
    send(
        book,
        1,
        scope_key("org", "new-org"),
        {"scope": "org", "org": "new-org", "ttl": {"conversation": 5}},
    )
    assert book.resolve(ident, 1) == Resolution(5 * MIN, "org")


def test_explain_at_a_time_and_at_the_newest_version() -> None:
    book = make_book()
    send(book, 100, "org/acme", org_update({"conversation": "1d"}, effective_from=10**12))
    now = book.explain(category="conversation", org="acme", at_ms=100)
    later = book.explain(category="conversation", org="acme")
    assert now["ttl_seconds"] == 30 * 86400
    assert later["ttl_seconds"] == 86400
    assert later["candidates"][0]["name"] == "policy update org/acme"


def test_cache_is_bounded() -> None:
    book = make_book("", cache_size=10)
    for i in range(100):
        book.resolve(Identity(f"o{i}", "_", "live", "conversation", "r"), 0)
        assert len(book._cache) <= 10
    assert book.resolve(Identity("o1", "_", "live", "conversation", "r"), 0).ttl_ms is None


def test_cache_hits_do_not_recompute() -> None:
    book = make_book()
    for t in range(100):
        book.resolve(ACME, t)
    assert book.cache_misses == 1


# -- against a reference model: a list of versions per scope, scanned in full -----------------

_ORGS = ["a", "b"]
_SCOPES = [("org", "a"), ("org", "b"), ("bot", "a"), ("cap", None), ("default", None)]
_TIMES = st.integers(min_value=0, max_value=50)
_TTL = st.dictionaries(
    st.sampled_from(["conversation", "max"]), st.integers(min_value=-1, max_value=5), max_size=2
)
_OP = st.tuples(
    st.sampled_from(_SCOPES), _TIMES, st.one_of(st.none(), _TIMES), st.one_of(st.none(), _TTL)
)
_QUERY = st.tuples(st.sampled_from(_ORGS), st.sampled_from(["b1", "b2"]), _TIMES)


def _reference(
    base: dict[str, dict[str, int]],
    log: list[tuple[str, int, dict[str, int] | None]],
    scope: str,
    t: int,
) -> dict[str, int]:
    """Newest by effective_from <= t, ties by arrival; a clear means the base."""
    current, best = base.get(scope, {}), None
    for order, (s, eff, ttl) in enumerate(log):
        if s == scope and eff <= t and (best is None or (eff, order) >= best):
            best = (eff, order)
            current = base.get(scope, {}) if ttl is None else ttl
    return current


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(_OP.map(lambda o: ("op", o)), _QUERY.map(lambda q: ("q", q))), max_size=40)
)
def test_book_matches_reference_model(steps: list[tuple[str, Any]]) -> None:
    toml = "[retention.orgs.a]\nconversation = 3\n[retention.cap]\nmax = 4\n"
    book = make_book(toml)
    base = {"org/a": {"conversation": 3}, "cap": {"max": 4}}
    log: list[tuple[str, int, dict[str, int] | None]] = []
    for kind, step in steps:
        if kind == "op":
            (scope_kind, org), kafka_ts, eff, ttl = step
            parts = (
                {"org": org}
                if scope_kind == "org"
                else {"org": "a", "bot": "b1"}
                if scope_kind == "bot"
                else {}
            )
            key = scope_key(scope_kind, *parts.values(), *(["live"] if scope_kind == "bot" else []))
            if scope_kind != "cap":
                ttl = None if ttl is None else {k: v for k, v in ttl.items() if k != "max"}
            body = (
                None
                if ttl is None
                else {"scope": scope_kind, **parts, "ttl": ttl, "effective_from": eff}
            )
            send(book, kafka_ts, key, body)
            log.append((key, kafka_ts if ttl is None or eff is None else eff, ttl))
            continue
        org, bot, t = step
        values = [
            _reference(base, log, f"org/{org}", t).get("conversation", 0),
            _reference(base, log, f"bot/{org}/{bot}/live", t).get("conversation", 0),
        ]
        cap = _reference(base, log, "cap", t)
        default = _reference(base, log, "default", t).get("conversation", 0)
        positive = [v for v in values if v > 0]
        pool = positive + [v for v in (cap.get("max", 0), cap.get("conversation", 0)) if v > 0]
        if not positive and default > 0:
            pool.append(default)
        expected = min(pool) * MIN if pool else None
        got = book.resolve(Identity(org, bot, "live", "conversation", "r"), t)
        assert got.ttl_ms == expected, (step, log)
        assert book.explain(category="conversation", org=org, bot=bot, at_ms=t)["ttl_seconds"] == (
            None if expected is None else expected // 1000
        )


_SPAN_SCOPES = {
    "org/acme": {"scope": "org", "org": "acme"},
    "bot/acme/b1/live": {"scope": "bot", "org": "acme", "bot": "b1"},
    "cap": {"scope": "cap"},
    "default": {"scope": "default"},
}
_SPAN_UPDATE = st.tuples(
    st.sampled_from(sorted(_SPAN_SCOPES)),
    st.integers(0, 40).map(lambda d: d * DAY),
    st.sampled_from(["1d", "5d", "10d", "60d", None]),
)
_SPAN_IDENTITIES = (
    ACME,  # its org's and its bot's policies
    Identity("acme", "b2", "live", "conversation", "r"),  # its org's only
    Identity("globex", "_", "live", "conversation", "r"),  # neither
)


@settings(max_examples=200, deadline=None)
@given(
    updates=st.lists(_SPAN_UPDATE, max_size=8),
    times=st.lists(st.integers(min_value=0, max_value=40 * DAY), min_size=1, max_size=20),
)
def test_an_answer_holds_over_the_span_resolve_span_gives(
    updates: list[tuple[str, int, str | None]], times: list[int]
) -> None:
    """``replay`` keeps one answer per scope for the creation times of its span, and the
    service's cache keeps one per scope over the same span: under org, bot, cap and default
    versions, every time inside a span gets the span's answer from an uncached book, and a
    cached book answers every question as the uncached one."""
    book, cached = make_book(cache_size=0), make_book()
    for n, (key, effective, ttl) in enumerate(updates):
        scope = _SPAN_SCOPES[key]
        if ttl is None:
            body = None
        else:
            kind = "max" if scope["scope"] == "cap" else "conversation"
            body = {**scope, "ttl": {kind: ttl}, "effective_from": effective}
        for b in (book, cached):
            send(b, effective + n, key, body)
    for t in times:
        for identity in _SPAN_IDENTITIES:
            answer, lo, hi = book.resolve_span(identity, t)
            assert lo <= t < hi
            assert answer == book.resolve(identity, t)
            assert cached.resolve(identity, t) == answer, (identity, t)
            for inside in (lo, (lo + hi) // 2, hi - 1):
                if 0 <= inside <= 40 * DAY:
                    assert book.resolve(identity, inside) == answer, (identity, inside)
                    assert cached.resolve(identity, inside) == answer, (identity, inside)


def test_a_span_ends_where_a_version_begins() -> None:
    book = make_book(cache_size=0)
    send(book, 1, "org/acme", org_update({"conversation": "10d"}, effective_from=10 * DAY))
    send(book, 2, "org/acme", org_update({"conversation": "5d"}, effective_from=20 * DAY))
    assert book.resolve_span(ACME, 15 * DAY)[1:] == (10 * DAY, 20 * DAY)


def test_an_invalid_value_dated_before_every_version_keeps_the_config_files() -> None:
    """A back-dated update that lands first (before every later version) and whose value is
    not a duration falls back on the config file's value, not on a later version's (which
    is not in force yet at its time). Found by mutation testing."""
    file = {"conversation": Candidate("org", "conversation", 30 * DAY)}
    h = ScopeHistory(file)
    h.add(100 * DAY, {"conversation": Candidate("org", "conversation", 7 * DAY)})
    h.add(50 * DAY, {"conversation": Candidate("org", "conversation", None, valid=False)})
    assert h.at(60 * DAY)[0]["conversation"].ttl_ms == 30 * DAY
    assert h.at(120 * DAY)[0]["conversation"].ttl_ms == 7 * DAY


def test_a_back_dated_version_recomputes_only_the_versions_that_fall_back_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A busy scope has a long history; a back-dated update must not walk all of it (2,000
    back-dated updates into a history of 100,000 versions took 51 s)."""
    h = ScopeHistory({"conversation": Candidate("org", "conversation", 30 * DAY)})
    for n in range(1, 1001):
        h.add(n * DAY, {"conversation": Candidate("org", "conversation", n * MIN)})
    calls = [0]
    real = history._in_force

    def counted(given: TtlMap, before: TtlMap) -> TtlMap:
        calls[0] += 1
        return real(given, before)

    monkeypatch.setattr(history, "_in_force", counted)
    h.add(DAY // 2, {"conversation": Candidate("org", "conversation", 7 * MIN)})
    assert calls[0] <= 2
    assert h.at(DAY // 2)[0]["conversation"].ttl_ms == 7 * MIN
    assert h.at(DAY)[0]["conversation"].ttl_ms == MIN


_ttls = st.sampled_from([None, 0, 5, 7]).map(
    lambda v: Candidate("org", "conversation", v * MIN if v else None, valid=v is not None)
)
_versions = st.lists(
    st.tuples(st.integers(0, 6), st.none() | st.dictionaries(st.just("conversation"), _ttls)),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(versions=_versions)
def test_a_history_in_force_is_what_recomputing_every_version_gives(
    versions: list[tuple[int, TtlMap | None]],
) -> None:
    """The walk that stops at the first version unchanged ends where a full walk would
    change nothing more: invalid values fall back along the whole chain."""
    base = {"conversation": Candidate("org", "conversation", 30 * MIN)}
    h = ScopeHistory(base)
    placed: list[tuple[int, TtlMap]] = []  # (effective_from, given), in force order
    for at, ttl in versions:
        h.add(at * DAY, ttl)
        i = sum(1 for f, _ in placed if f <= at * DAY)
        placed.insert(i, (at * DAY, base if ttl is None else ttl))
        before: TtlMap = base
        for j, (f, values) in enumerate(placed):
            before = history._in_force(values, before)
            if j + 1 == len(placed) or placed[j + 1][0] != f:  # the last of its time wins
                assert h.at(f)[0] == before


def test_a_new_bot_scope_invalidates_a_cached_absence() -> None:
    """As a new org's: an answer cached while no scope named the bot must not outlive the
    update that names it (found by mutation testing: the bot's branch could drop its bump
    of the global generation unseen)."""
    book = make_book("")
    ident = Identity("new-org", "b9", "live", "conversation", "r")
    assert book.resolve(ident, 0).ttl_ms is None
    key = scope_key("bot", "new-org", "b9", "live")
    body = {"scope": "bot", "org": "new-org", "bot": "b9", "ttl": {"conversation": 5}}
    send(book, 1, key, body)
    assert book.resolve(ident, 1) == Resolution(5 * MIN, "bot")


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("org", "cap", Resolution(5 * MIN, "org")),
        ("bot", "cap", Resolution(7 * MIN, "bot")),
        ("cap", "bot", Resolution(7 * MIN, "bot")),
    ],
)
def test_a_cached_answer_never_comes_back_once_later_updates_changed_it(
    first: str, second: str, expected: Resolution
) -> None:
    """Each update that invalidates every cached answer (a new org or bot scope, a cap or
    default update) moves the book to a generation it was never at: an answer cached
    before two of them is not taken for current after them (a generation stepped back by
    one and forward by the next was)."""
    book = make_book('[retention.defaults]\nconversation = "90d"\n')
    ident = Identity("new-org", "b9", "live", "conversation", "r")
    assert book.resolve(ident, 0) == Resolution(90 * DAY, "default")
    updates = {
        "org": ("org/new-org", {"scope": "org", "org": "new-org", "ttl": {"conversation": 5}}),
        "bot": (
            scope_key("bot", "new-org", "b9", "live"),
            {"scope": "bot", "org": "new-org", "bot": "b9", "ttl": {"conversation": 7}},
        ),
        "cap": ("cap", {"scope": "cap", "ttl": {"max": "1d"}}),
    }
    for n, kind in enumerate((first, second), start=1):
        send(book, n, *updates[kind])
    assert book.resolve(ident, 3) == expected


def test_a_bot_update_keeps_the_config_files_version_before_it() -> None:
    """An update for a bot the config file names adds a version to that bot's history:
    before the update's effective time the file's value still holds (a new, empty history
    in its place lost it)."""
    book = make_book(CONFIG + '[retention.bots.acme.b1.live]\nconversation = "1h"\n')
    body = {"scope": "bot", "org": "acme", "bot": "b1", "ttl": {"conversation": "2h"}}
    send(book, 100, "bot/acme/b1/live", {**body, "effective_from": 10 * DAY})
    assert book.resolve(ACME, 0) == Resolution(60 * MIN, "bot")
    assert book.resolve(ACME, 10 * DAY) == Resolution(120 * MIN, "bot")


def test_the_default_cache_size_caches() -> None:
    book = PolicyBook(parse_config(CONFIG), {})
    for t in range(3):
        book.resolve(ACME, t)
    assert book.cache_misses == 1


@pytest.mark.parametrize(("cache_size", "misses"), [(0, 3), (1, 1)])
def test_a_cache_of_no_keys_keeps_nothing_and_one_of_one_key_keeps_it(
    cache_size: int, misses: int
) -> None:
    book = make_book(cache_size=cache_size)
    for t in range(3):
        book.resolve(ACME, t)
    assert (book.cache_misses, len(book._cache)) == (misses, min(cache_size, 1))


def test_cache_hits_hold_for_a_bots_record_from_the_first_millisecond_of_a_version() -> None:
    """A hit needs the entry's own scopes unchanged and its creation time within the
    version: from its first millisecond (the interval is closed below), with a bot scope
    as without, and with other keys cached beside it."""
    book = make_book(CONFIG + '[retention.bots.acme.b1.live]\nconversation = "1h"\n')
    send(book, 1, "org/acme", org_update({"conversation": "1d"}, effective_from=5 * DAY))
    other = Identity("globex", "_", "live", "conversation", "r")
    for t in (5 * DAY, 5 * DAY, 5 * DAY + 1, 6 * DAY):
        assert book.resolve(ACME, t) == Resolution(60 * MIN, "bot")
        assert book.resolve(other, t) == Resolution(90 * DAY, "default")
    assert book.cache_misses == 2


def test_equal_answers_are_one_shared_resolution() -> None:
    """Misses allocate nothing new: records of different orgs with the same answer share
    one :class:`Resolution`, whatever the cache holds."""
    book = make_book(cache_size=0)
    first = book.resolve(Identity("o1", "_", "live", "conversation", "r"), 0)
    second = book.resolve(Identity("o2", "_", "live", "conversation", "r"), 0)
    assert first == Resolution(90 * DAY, "default")
    assert second is first

"""The policy book: every scope's history, resolved in O(1) amortised per record.

Rules this module keeps:

* The book is pure: it reads the environment mapping once, in ``__init__``, and never a clock;
  the caller passes each record's creation time and each update's Kafka timestamp.
* The config file (merged with its preset) is the first version of every scope; updates from
  ``expiry.policies`` add versions (:mod:`~stream_expiry.policy.history`).
* A resolution depends on four scopes only: the record's org, its (org, bot, env), the cap and
  the default. The cache keeps, per (org, bot, env, category), the answer, the interval of
  creation times over which it holds, and the org and bot histories with their generations.
  An update bumps the generation of its scope; cap and default updates, and the creation of a
  scope that did not exist, bump a global one. So the next resolution that depends on an
  update recomputes (updates take effect for the very next record), the rare global changes
  cost one recomputation per cached key, and a hit never looks at the scope tables, so its
  cost does not grow with the number of orgs or bots configured.
* The cache is bounded (``cache_size`` keys, about 200 bytes each): when full it is emptied,
  which keeps memory flat under any number of distinct keys and costs one recomputation per
  entry, amortised over the fill. A hit is one dict lookup and a few comparisons.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from typing import TYPE_CHECKING, Final

import orjson

from stream_expiry.errors import ConfigurationError, suggestion
from stream_expiry.model import ENVS, Identity, Rejection
from stream_expiry.policy.history import AFTER_ALL, BEFORE_ALL, ScopeHistory
from stream_expiry.policy.presets import base_cap, base_defaults, env_fallbacks, preset_label
from stream_expiry.policy.resolution import (
    NEVER,
    Explanation,
    Resolution,
    explanation,
    gather,
    winner,
)
from stream_expiry.policy.sources import CAP_ALL, Candidate, TtlMap, env_candidates
from stream_expiry.policy.updates import PolicyUpdate, Scope, parse_update

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping

    from stream_expiry.config import Config

__all__ = ["DEFAULT_CACHE_SIZE", "PolicyBook", "UnknownCategory"]

DEFAULT_CACHE_SIZE: Final = 1 << 18
_EMPTY: Final[TtlMap] = {}
_NO_ENV: Final[tuple[Candidate, ...]] = ()

# (global gen, lo, hi, org history, its gen, bot history, its gen, answer)
_Entry = tuple[int, int, int, ScopeHistory | None, int, ScopeHistory | None, int, Resolution]
_BotKey = tuple[str, str, str]
# A value in the digest's canonical document: [ttl_ms, valid] (see PolicyBook.canonical).
_ValueJson = tuple[int | None, bool]
_ScopeJson = dict[str, _ValueJson]


def _value_json(candidate: Candidate) -> _ValueJson:
    return (candidate.ttl_ms, candidate.valid)


def _value_order(value: _ValueJson) -> tuple[bool, int, bool]:
    """A total order on values (null ``ttl_ms`` last), which ``sorted`` cannot give alone."""
    ttl_ms, valid = value
    return (ttl_ms is None, ttl_ms or 0, valid)


def _scope_json(ttls: TtlMap) -> _ScopeJson:
    return {category: _value_json(c) for category, c in ttls.items()}


class UnknownCategory(ConfigurationError, ValueError):
    """Raised by :meth:`PolicyBook.explain` for a category that is not configured.

    An operator asking about a typo must hear so, not read "never expires".
    """


def _closest_but_for_case(name: str, named: Collection[str]) -> str | None:
    """The one of ``named`` closest to ``name`` with case set aside (the first in sorted
    order of those alike but for case), or None when none is close."""
    folded: dict[str, str] = {}
    for each in sorted(named):
        folded.setdefault(each.casefold(), each)
    close = difflib.get_close_matches(name.casefold(), list(folded), n=1)
    return folded[close[0]] if close else None


class PolicyBook:
    """Every policy in force, over time, and the TTL a record gets from them."""

    def __init__(
        self,
        config: Config,
        environ: Mapping[str, str],
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        r = config.retention
        self._categories = tuple(config.categories)
        self._category_set = frozenset(self._categories)
        self._env, self._env_warnings = env_candidates(
            self._categories, environ, env_fallbacks(r.preset), preset_label(r.preset)
        )
        self._cap = ScopeHistory(base_cap(r.preset, r.cap))
        self._default = ScopeHistory(base_defaults(r.preset, self._categories, r.defaults))
        self._orgs: dict[str, ScopeHistory] = {o: ScopeHistory(m) for o, m in r.orgs.items()}
        self._bots: dict[_BotKey, ScopeHistory] = {k: ScopeHistory(m) for k, m in r.bots.items()}
        self._global_gen = 0
        self._answers: dict[tuple[int | None, str], Resolution] = {}
        self._cache: dict[tuple[str, str, str, str], _Entry] = {}
        self._cache_size = cache_size
        self.cache_misses = 0
        self.updates_applied = 0

    @property
    def env_warnings(self) -> list[str]:
        """One sentence per invalid environment variable, for the service to log and count."""
        return list(self._env_warnings)

    @property
    def categories(self) -> tuple[str, ...]:
        return self._categories

    @property
    def named_orgs(self) -> frozenset[str]:
        """The orgs an org or bot scope names, in the config file or a policy update."""
        return frozenset(self._orgs) | frozenset(key[0] for key in self._bots)

    def org_meant(self, org: str) -> str | None:
        """The named org ``org`` most likely stands for, when no scope names ``org`` itself
        and one that is named is close to it, case aside (``acmee`` or ``ACME`` for
        ``acme``); else None. A misspelt org gets every such org's defaults, and a hold on
        it keeps nothing, both without a word: the commands that take an org say this one.
        Org ids stay case-sensitive: this only finds the org a caller likely meant
        (``ACME`` for ``acme`` was found by no warning, as difflib compares case too)."""
        named = self.named_orgs
        if org in named:
            return None
        return _closest_but_for_case(org, named)

    def bot_meant(self, org: str, bot: str) -> str | None:
        """The bot a bot scope of ``org`` names (``[retention.bots.ORG.BOT.ENV]``, or a
        policy update) that ``bot`` most likely stands for, when none names ``bot``
        itself and one is close to it, case aside (``B1`` for ``b1``, ``suport-bot`` for
        ``support-bot``); else None. A hold on a misspelt bot keeps nothing, and a record
        of it gets none of that bot's values, without a word: :meth:`org_meant` for bots.
        Only ``org``'s bots: a bot id means something only within its org."""
        named = {key[1] for key in self._bots if key[0] == org}
        if bot in named:
            return None
        return _closest_but_for_case(bot, named)

    def digest(self, sliding: Iterable[str]) -> str:
        """Twelve hex characters that name the config's policy: the first version of
        every scope (the file merged with its preset), the environment's values, the
        categories and which of them slide. Two instances with the same digest stamp a
        record alike; a different one means a different config or environment, whose
        records get other TTLs depending on the instance that holds their partition.
        Updates from ``expiry.policies`` are left out: every instance reads them all.
        Only what decides a TTL counts, not where a value was written.

        Instances of different versions compare it, so it is the SHA-256 of a canonical
        document (:meth:`canonical`), never of ``repr``, which is no serialisation: its
        escaping of a string follows the Unicode tables of the Python that runs it."""
        return hashlib.sha256(self.canonical(sliding)).hexdigest()[:12]

    def canonical(self, sliding: Iterable[str]) -> bytes:
        """The policy :meth:`digest` names, as one canonical JSON document.

        Plain JSON of objects, arrays, strings, integers, booleans and null, as orjson
        writes it: UTF-8, no whitespace, object keys sorted by code point, sets as sorted
        arrays, durations as integer milliseconds (``"30d"`` and ``"720h"`` alike), and a
        value as ``[ttl_ms, valid]`` (``ttl_ms`` null when not positive or not valid).
        Its keys::

            {"bots": {ORG: {BOT: {ENV: SCOPE}}}, "cap": SCOPE, "categories": [...],
             "default": SCOPE, "env": {CATEGORY: [[ttl_ms, valid], ...]},
             "orgs": {ORG: SCOPE}, "sliding": [...]}

        where SCOPE is ``{CATEGORY: [ttl_ms, valid]}`` (the cap's ``max`` too). An org or
        bot scope with no value of its own (an empty table, or one an update made) decides
        nothing and is left out; a category's environment values are sorted, since the
        smallest positive one counts whichever variable holds it."""
        bots: dict[str, dict[str, dict[str, _ScopeJson]]] = {}
        for (org, bot, env), history in self._bots.items():
            if history.base:
                bots.setdefault(org, {}).setdefault(bot, {})[env] = _scope_json(history.base)
        document = {
            "bots": bots,
            "cap": _scope_json(self._cap.base),
            "categories": sorted(self._category_set),
            "default": _scope_json(self._default.base),
            "env": {
                category: sorted((_value_json(c) for c in found), key=_value_order)
                for category, found in self._env.items()
            },
            "orgs": {org: _scope_json(h.base) for org, h in self._orgs.items() if h.base},
            "sliding": sorted(frozenset(sliding) & self._category_set),
        }
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)

    def resolve(self, identity: Identity, at_ms: int) -> Resolution:
        """The TTL of a record of ``identity`` created at ``at_ms``, under the policy then."""
        key = (identity.org, identity.bot, identity.env, identity.category)
        e = self._cache.get(key)
        # A hit touches no scope table: the entry holds its scopes' histories and checks their
        # generations, so its cost does not grow with the orgs and bots configured.
        if (
            e is not None
            and e[0] == self._global_gen
            and e[1] <= at_ms < e[2]
            and (e[3] is None or e[3].gen == e[4])
            and (e[5] is None or e[5].gen == e[6])
        ):
            return e[7]
        self.cache_misses += 1
        oh = self._orgs.get(identity.org)
        bh = self._bots.get((identity.org, identity.bot, identity.env))
        answer, lo, hi = self._resolved(identity.category, oh, bh, at_ms)
        if self._cache_size > 0:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            og = 0 if oh is None else oh.gen
            bg = 0 if bh is None else bh.gen
            self._cache[key] = (self._global_gen, lo, hi, oh, og, bh, bg, answer)
        return answer

    def resolve_span(self, identity: Identity, at_ms: int) -> tuple[Resolution, int, int]:
        """:meth:`resolve`, uncached, with the creation times ``[lo, hi)`` over which its
        answer holds for ``identity``'s scope while the book does not change (a caller
        that keeps answers per scope, such as ``replay``, needs no cache here)."""
        oh = self._orgs.get(identity.org)
        bh = self._bots.get((identity.org, identity.bot, identity.env))
        return self._resolved(identity.category, oh, bh, at_ms)

    def _resolved(
        self,
        category: str,
        oh: ScopeHistory | None,
        bh: ScopeHistory | None,
        at_ms: int,
    ) -> tuple[Resolution, int, int]:
        cands, lo, hi = self._candidates(category, oh, bh, at_ms)
        return self._answer(winner(cands)), lo, hi

    def _candidates(
        self,
        category: str,
        oh: ScopeHistory | None,
        bh: ScopeHistory | None,
        at_ms: int | None,
    ) -> tuple[list[Candidate], int, int]:
        """Candidates at ``at_ms`` and the interval of creation times they hold for."""
        # Unrolled: this is the cost of every cache miss.
        org = bot = _EMPTY
        lo, hi = BEFORE_ALL, AFTER_ALL
        if oh is not None:
            org, lo, hi = oh.at(at_ms)
        if bh is not None:
            bot, v_lo, v_hi = bh.at(at_ms)
            lo, hi = (v_lo if v_lo > lo else lo), (v_hi if v_hi < hi else hi)
        cap, v_lo, v_hi = self._cap.at(at_ms)
        lo, hi = (v_lo if v_lo > lo else lo), (v_hi if v_hi < hi else hi)
        default, v_lo, v_hi = self._default.at(at_ms)
        lo, hi = (v_lo if v_lo > lo else lo), (v_hi if v_hi < hi else hi)
        env = self._env.get(category, _NO_ENV)
        return gather(category, org, bot, env, cap, default), lo, hi

    def _answer(self, best: Candidate | None) -> Resolution:
        """One shared :class:`Resolution` per distinct answer: misses allocate nothing new."""
        if best is None:
            return NEVER
        key = (best.ttl_ms, best.source)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = Resolution(best.ttl_ms, best.source)
        return answer

    def apply_update(
        self, key: bytes | None, value: bytes | None, kafka_timestamp_ms: int
    ) -> PolicyUpdate | Rejection:
        """Apply one message of ``expiry.policies``; a rejection leaves the book unchanged."""
        update = parse_update(key, value, kafka_timestamp_ms, self._category_set)
        if isinstance(update, Rejection):
            return update
        dropped = self.dropped_by(update)
        self.apply(update)
        return dataclasses.replace(update, dropped=dropped) if dropped else update

    def dropped_by(self, update: PolicyUpdate) -> tuple[str, ...]:
        """The categories with a positive value in the scope's newest version that
        ``update`` leaves out: an update replaces the scope's whole map, so they lose it (a
        trial: a ``default`` update for conversations took the config file's defaults of
        sessions and errors away, and those records never expired, without a word)."""
        if update.ttl is None:
            return ()  # a clear: back to the config file, said as such
        history = self._history_of(update.scope)
        if history is None:
            return ()
        newest = history.at(None)[0]
        return tuple(
            category
            for category, candidate in newest.items()
            if candidate.ttl_ms is not None and category not in update.ttl
        )

    def still_dropped(self, update: PolicyUpdate) -> tuple[str, ...]:
        """Of the categories ``update`` took away (its ``dropped``), those its scope's
        newest version still has no value for. A start reads every update the topic keeps
        and warned of each that took values away, also when a later version of its scope
        had given them back (a review: warned at every start); what is still missing is
        what the scope does now. A newest clear gives the config file's values back: none."""
        history = self._history_of(update.scope)
        if history is None or history.newest_is_config():
            return ()
        newest = history.at(None)[0]
        return tuple(c for c in update.dropped if c not in newest)

    def newest_of(self, scope: Scope) -> TtlMap:
        """The values in force in ``scope``'s newest version (the config file's where no
        update named it; an invalid value replaced by the one kept in its place): what
        :meth:`dropped_by` compares an update with, and what ``policy set --keep-others``
        sends again for the categories it is not given."""
        history = self._history_of(scope)
        return _EMPTY if history is None else history.at(None)[0]

    def _history_of(self, scope: Scope) -> ScopeHistory | None:
        """The history of ``scope``, or None for an org or bot no update has named."""
        if scope.kind == "org":
            return self._orgs.get(scope.org or "")
        if scope.kind == "bot":
            return self._bots.get((scope.org or "", scope.bot or "", scope.env or ""))
        return self._cap if scope.kind == "cap" else self._default

    def apply(self, update: PolicyUpdate) -> None:
        """Apply an update already parsed (e.g. by a replay that keeps them)."""
        scope = update.scope
        history: ScopeHistory | None
        if scope.kind == "org":
            assert scope.org is not None
            history = self._orgs.get(scope.org)
            if history is None:
                history = self._orgs[scope.org] = ScopeHistory(_EMPTY)
                self._global_gen += 1  # cached answers that found no such scope are stale
        elif scope.kind == "bot":
            assert scope.org is not None
            assert scope.bot is not None
            assert scope.env is not None
            bot_key = (scope.org, scope.bot, scope.env)
            history = self._bots.get(bot_key)
            if history is None:
                history = self._bots[bot_key] = ScopeHistory(_EMPTY)
                self._global_gen += 1  # cached answers that found no such scope are stale
        else:
            history = self._cap if scope.kind == "cap" else self._default
            self._global_gen += 1
        history.add(update.effective_from, update.ttl)
        self.updates_applied += 1

    def candidates(
        self,
        *,
        category: str,
        org: str,
        bot: str = "_",
        env: str = "live",
        at_ms: int | None = None,
    ) -> list[Candidate]:
        """Every value found for a record, in the contract's order; ``at_ms=None``: newest."""
        oh, bh = self._scopes(category, org, bot, env)
        return self._candidates(category, oh, bh, at_ms)[0]

    def _scopes(
        self, category: str, org: str, bot: str, env: str
    ) -> tuple[ScopeHistory | None, ScopeHistory | None]:
        """The org's and the bot's histories, once the category and env are known good: a
        typo raises rather than being answered "never"."""
        if category not in self._category_set:
            hint = suggestion(category, self._categories)
            configured = ", ".join(self._categories)
            raise UnknownCategory(
                f"category {category!r} is not configured (configured: {configured}){hint}"
            )
        if env not in ENVS:
            raise ValueError(f"env must be 'live' or 'draft', got {env!r}")
        return self._orgs.get(org), self._bots.get((org, bot, env))

    def explain(
        self,
        *,
        category: str,
        org: str,
        bot: str = "_",
        env: str = "live",
        at_ms: int | None = None,
    ) -> Explanation:
        """The contract's ``explain`` JSON for a record created at ``at_ms``.

        ``at_ms=None`` uses the newest version of every scope, future-dated ones included:
        the policy a record gets once every known update is in force. Raises
        :class:`UnknownCategory` or ``ValueError`` (bad env) so a typo is not answered "never".
        """
        oh, bh = self._scopes(category, org, bot, env)
        found: list[Candidate] = []
        slots = ((oh, category), (bh, category), None, (self._cap, CAP_ALL),
                 (self._cap, category), (self._default, category))  # fmt: skip
        for slot in slots:  # gather's order (resolution.gather), with the invalid values
            if slot is None:
                found.extend(self._env.get(category, _NO_ENV))
                continue
            history, key = slot
            if history is None:
                continue
            in_force = history.at(at_ms)[0].get(key)
            given = history.given_at(at_ms).get(key)
            # The contract lists every value found: a policy update's invalid value too,
            # before the one kept in force in its place (the one before it, if any).
            if given is not None and not given.valid:
                found.append(given)
            if in_force is not None:
                found.append(in_force)
        return explanation(found)

"""Policy history: the versions of one scope's values along effective time.

Rules this module keeps (see the contract, "Policy updates"):

* The config file is the first version, in force from the beginning of time.
* A record created at ``t`` sees the version with the latest ``effective_from <= t``; among
  versions with the same ``effective_from``, the one applied last. So a back-dated update only
  governs the stretch of time up to the next later version, as a timeline would.
* A clear (``ttl is None``) is a version whose values are the config file's again.
* A value of an update that is not a duration (ignored, reported where it is read) changes
  nothing for its category: the version keeps the value the one before it had (or none).
  One typo in the management UI must neither lengthen nor shorten a retention.
* Adding a version costs the versions after it whose values in force it changes (those
  falling back on it), not the whole tail: the history grows with every update.
* :meth:`ScopeHistory.at` also returns the half-open interval ``[lo, hi)`` over which the
  answer holds, and every change bumps ``gen``, so a cache can tell when an answer is stale
  without looking at the versions again.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING, Final

from stream_expiry.timeutil import MAX_TS_MS, MIN_TS_MS

if TYPE_CHECKING:
    from stream_expiry.policy.sources import TtlMap

__all__ = ["AFTER_ALL", "BEFORE_ALL", "ScopeHistory"]

# Bounds beyond every valid timestamp, for "from the beginning" and "until further notice".
BEFORE_ALL: Final = MIN_TS_MS - 1
AFTER_ALL: Final = MAX_TS_MS + 1


class ScopeHistory:
    """The versions of one scope, sorted by ``(effective_from, order applied)``."""

    __slots__ = ("_froms", "_given", "_maps", "base", "gen")

    def __init__(self, base: TtlMap) -> None:
        self.base = base
        self.gen = 0
        self._froms: list[int] = []
        self._given: list[TtlMap] = []  # each version as given, invalid values included
        self._maps: list[TtlMap] = []  # as in force: an invalid value keeps the one before

    def add(self, effective_from: int, ttl: TtlMap | None) -> None:
        """Record a version; ``None`` reverts to the config file's values from then on."""
        i = bisect_right(self._froms, effective_from)
        self._froms.insert(i, effective_from)
        self._given.insert(i, self.base if ttl is None else ttl)
        maps, given = self._maps, self._given
        maps.insert(i, _in_force(given[i], maps[i - 1] if i else self.base))
        # A back-dated version may be what later ones' invalid values fall back on. Each
        # version in force depends only on its own and the one before, so the first later
        # one that comes out as it was ends the walk: a back-dated update into a scope with
        # 100,000 versions recomputed them all (2,000 such took 51 s), now one or two.
        for j in range(i + 1, len(given)):
            now_in_force = _in_force(given[j], maps[j - 1])
            if now_in_force == maps[j]:
                break
            maps[j] = now_in_force
        self.gen += 1

    def at(self, t: int | None) -> tuple[TtlMap, int, int]:
        """The values in force at ``t`` (``None``: the newest version), and ``[lo, hi)``."""
        froms = self._froms
        if not froms:  # most scopes: the config file's values, never updated
            return self.base, BEFORE_ALL, AFTER_ALL
        if t is None:
            return self._maps[-1], froms[-1], AFTER_ALL
        i = bisect_right(froms, t)
        if i == 0:
            return self.base, BEFORE_ALL, froms[0]
        return self._maps[i - 1], froms[i - 1], froms[i] if i < len(froms) else AFTER_ALL

    def given_at(self, t: int | None) -> TtlMap:
        """The version :meth:`at` answers from, as it was given: an invalid value is still
        there (``explain`` lists it beside the value kept in force in its place)."""
        froms = self._froms
        if not froms:
            return self.base
        if t is None:
            return self._given[-1]
        i = bisect_right(froms, t)
        return self._given[i - 1] if i else self.base

    def newest_is_config(self) -> bool:
        """Whether the newest version is the config file's values: none was added, or the
        newest is a clear (:meth:`add` keeps :attr:`base` itself for one)."""
        return not self._given or self._given[-1] is self.base

    def __len__(self) -> int:
        """Number of versions after the config file's."""
        return len(self._froms)


def _in_force(given: TtlMap, before: TtlMap) -> TtlMap:
    """``given`` with each invalid value replaced by what ``before`` had for its category
    (dropped where ``before`` had nothing)."""
    if all(c.valid for c in given.values()):
        return given
    return {
        cat: c if c.valid else before[cat] for cat, c in given.items() if c.valid or cat in before
    }

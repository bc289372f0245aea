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
        self._maps.insert(i, self.base)
        # A back-dated version may be what a later one's invalid values fall back on.
        for j in range(i, len(self._given)):
            self._maps[j] = _in_force(self._given[j], self._maps[j - 1] if j else self.base)
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

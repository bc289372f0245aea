"""Policy history: the versions of one scope's values along effective time.

Rules this module keeps (see the contract, "Policy updates"):

* The config file is the first version, in force from the beginning of time.
* A record created at ``t`` sees the version with the latest ``effective_from <= t``; among
  versions with the same ``effective_from``, the one applied last. So a back-dated update only
  governs the stretch of time up to the next later version, as a timeline would.
* A clear (``ttl is None``) is a version whose values are the config file's again.
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

    __slots__ = ("_froms", "_maps", "base", "gen")

    def __init__(self, base: TtlMap) -> None:
        self.base = base
        self.gen = 0
        self._froms: list[int] = []
        self._maps: list[TtlMap] = []

    def add(self, effective_from: int, ttl: TtlMap | None) -> None:
        """Record a version; ``None`` reverts to the config file's values from then on."""
        i = bisect_right(self._froms, effective_from)
        self._froms.insert(i, effective_from)
        self._maps.insert(i, self.base if ttl is None else ttl)
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

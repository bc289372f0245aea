"""Resolution: the smallest positive candidate wins, and ``default`` only fills a gap.

Rules this module keeps (see the contract, "Effective TTL"):

1. Candidates are ``org``, ``bot``, ``env`` and ``cap``.
2. ``default`` joins them only when none of ``org``, ``bot``, ``env`` is positive: a default
   is a floor for the unconfigured, never a second cap on the configured.
3. The effective TTL is the smallest positive candidate; with none, the record never expires.

Ties go to the candidate listed first (order: org, bot, env, cap, default), so the reported
source is deterministic. The same function serves :meth:`PolicyBook.resolve` and ``explain``,
so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypedDict

from stream_expiry.policy.sources import CAP_ALL, Candidate, CandidateJson, TtlMap

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "NEVER",
    "Choice",
    "Explanation",
    "Resolution",
    "choose",
    "explanation",
    "gather",
    "winner",
]

_PRIMARY: Final = frozenset({"org", "bot", "env"})


class Explanation(TypedDict):
    """The contract's ``explain --json`` object (``ttl_seconds`` null: never expires)."""

    ttl_seconds: int | None
    source: str | None
    candidates: list[CandidateJson]


@dataclass(frozen=True, slots=True)
class Resolution:
    """A record's TTL and the source it came from; ``(None, None)`` means it never expires."""

    ttl_ms: int | None
    source: str | None


NEVER: Final = Resolution(None, None)


@dataclass(frozen=True, slots=True)
class Choice:
    """The winning candidate (``None``: never expires), and whether ``default`` took part."""

    winner: Candidate | None
    default_joined: bool

    @property
    def resolution(self) -> Resolution:
        w = self.winner
        return NEVER if w is None else Resolution(w.ttl_ms, w.source)


def gather(
    category: str,
    org: TtlMap,
    bot: TtlMap,
    env: Sequence[Candidate],
    cap: TtlMap,
    default: TtlMap,
) -> list[Candidate]:
    """Every candidate for ``category``, in the contract's order (cap: ``max`` first)."""
    found: list[Candidate] = []
    for single in (org.get(category), bot.get(category)):
        if single is not None:
            found.append(single)
    found.extend(env)
    for single in (cap.get(CAP_ALL), cap.get(category), default.get(category)):
        if single is not None:
            found.append(single)
    return found


def winner(candidates: Sequence[Candidate]) -> Candidate | None:
    """Apply the three rules to candidates listed in the contract's order; ``None``: never."""
    return _pick(candidates)[0]


def choose(candidates: Sequence[Candidate]) -> Choice:
    """Like :func:`winner`, and say whether ``default`` took part (for the explain table)."""
    best, joined = _pick(candidates)
    return Choice(best, joined)


def _pick(candidates: Sequence[Candidate]) -> tuple[Candidate | None, bool]:
    best: Candidate | None = None
    best_ms = 0
    primary = False
    for c in candidates:
        ms = c.ttl_ms
        if ms is None or c.source == "default":
            continue
        primary = primary or c.source in _PRIMARY
        if best is None or ms < best_ms:
            best, best_ms = c, ms
    if primary:
        return best, False
    for c in candidates:
        ms = c.ttl_ms
        if ms is not None and c.source == "default" and (best is None or ms < best_ms):
            best, best_ms = c, ms
    return best, True


def explanation(candidates: Sequence[Candidate]) -> Explanation:
    """The contract's ``explain`` JSON object, exactly its fields and nothing more."""
    best = winner(candidates)
    return {
        "ttl_seconds": None if best is None or best.ttl_ms is None else best.ttl_ms // 1000,
        "source": None if best is None else best.source,
        "candidates": [c.as_json() for c in candidates],
    }

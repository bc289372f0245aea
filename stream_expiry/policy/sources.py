"""Where TTL values come from: candidates, the settings of a config file, and env variables.

Rules this module keeps (see the contract, "Effective TTL"):

* Every value found becomes a :class:`Candidate` that remembers its source (``org``, ``bot``,
  ``env``, ``cap``, ``default``) and its name (the variable, or the config key path), because
  ``explain`` must show every one of them, including the ignored ones.
* A candidate's ``ttl_ms`` is ``None`` unless the value is a valid *positive* duration: zero,
  negative, empty and invalid values take part in nothing, but are still reported.
* Environment variables are read once. Every variable set for a category is a candidate; an
  invalid one is a warning (never fatal), because a typo in a deployment must not stop the
  enforcement of every other policy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypedDict

from stream_expiry.durations import InvalidDuration, is_negative, parse_duration

__all__ = [
    "CAP_ALL",
    "ENV_VARIABLES",
    "SOURCES",
    "Candidate",
    "CandidateJson",
    "RetentionSettings",
    "Source",
    "TtlMap",
    "capital_m_note",
    "config_key",
    "env_candidates",
    "make_candidate",
]

Source = Literal["org", "bot", "env", "cap", "default"]
SOURCES: Final[tuple[Source, ...]] = ("org", "bot", "env", "cap", "default")
# The key of ``[retention.cap]`` that caps every category.
CAP_ALL: Final = "max"

# The contract's variables, in the order ``explain`` lists them. The names are those of the
# well-known bot platform, so that a deployment can pass its existing settings unchanged.
ENV_VARIABLES: Final[Mapping[str, tuple[str, ...]]] = {
    "conversation": (
        "MAX_CONVERSATION_TTL_IN_MINUTES",
        "INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES",
    ),
    "contact_profile": ("MAX_CONTACT_PROFILE_TTL_IN_MINUTES",),
    "analytics": ("INSIGHTS_MAX_RAW_ANALYTICS_TTL_IN_MINUTES",),
    "step_event": ("INSIGHTS_MAX_STEP_EVENTS_TTL_IN_MINUTES",),
    "step": ("INSIGHTS_MAX_STEPS_TTL_IN_MINUTES",),
    "session": ("INSIGHTS_MAX_SESSIONS_TTL_IN_MINUTES",),
}


class CandidateJson(TypedDict):
    """A candidate as ``explain --json`` prints it (the contract's field names)."""

    source: str
    name: str
    ttl_seconds: int | None
    valid: bool


@dataclass(frozen=True, slots=True)
class Candidate:
    """One value found for a category, whether or not it can win.

    ``ttl_ms`` is the positive duration in milliseconds, or ``None`` when the value is not
    positive (``valid``) or not a duration at all (``not valid``).
    """

    source: Source
    name: str
    ttl_ms: int | None
    valid: bool = True

    def as_json(self) -> CandidateJson:
        """The contract's ``explain`` form of a candidate."""
        return {
            "source": self.source,
            "name": self.name,
            "ttl_seconds": None if self.ttl_ms is None else self.ttl_ms // 1000,
            "valid": self.valid,
        }


def make_candidate(source: Source, name: str, value: object) -> Candidate:
    """A candidate from a raw value; raises :class:`InvalidDuration` for a non-duration.

    Raising (rather than returning an invalid candidate) lets each caller apply its own
    rule: fatal for a config file, a rejection for a policy update, a warning for a variable.
    """
    ms = parse_duration(value)
    return Candidate(source, name, ms if ms > 0 else None)


_MONTH_AS_MINUTES = re.compile(r"^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*M\s*$")


def capital_m_note(value: object) -> str | None:
    """A warning for a duration written with the unit ``M`` (``"1M"``), else None.

    Units are case-insensitive (the contract), so ``M`` is minutes; but ``M`` is the usual
    abbreviation of a month, and one who meant a month gets data deleted about 43,800 times
    too early. The value stays minutes: only the person is told, to write ``mo`` or ``m``.
    """
    if not isinstance(value, str) or _MONTH_AS_MINUTES.match(value) is None:
        return None
    minutes = value.strip()[:-1].strip()
    return (
        f"{value!r} means {minutes} minute(s) (units are case-insensitive: M is m, minutes); "
        f'for months write "{minutes}mo", for minutes "{minutes}m" to say so'
    )


TtlMap = Mapping[str, Candidate]
"""Candidates of one scope, by category (and by ``max`` for the cap)."""


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def config_key(*parts: str) -> str:
    """A dotted TOML key path, quoting the parts that need it, as users would type it."""
    return ".".join(p if _BARE_KEY.match(p) else json.dumps(p, ensure_ascii=False) for p in parts)


@dataclass(frozen=True)
class RetentionSettings:
    """What the ``[retention.*]`` tables of a config file say, before any preset is merged.

    Kept separate from the preset's values so that ``explain`` can name which one a value came
    from; :mod:`stream_expiry.policy.presets` merges them key by key.
    """

    preset: str = "none"
    # hash=False: mappings are not hashable, and a frozen Config should still be usable as a key.
    defaults: TtlMap = field(default_factory=dict, hash=False)
    cap: TtlMap = field(default_factory=dict, hash=False)
    orgs: Mapping[str, TtlMap] = field(default_factory=dict, hash=False)
    bots: Mapping[tuple[str, str, str], TtlMap] = field(default_factory=dict, hash=False)


def env_candidates(
    categories: tuple[str, ...],
    environ: Mapping[str, str],
    fallbacks: Mapping[str, str],
    fallback_label: str,
) -> tuple[dict[str, tuple[Candidate, ...]], list[str]]:
    """The ``env`` candidates of each category, and a warning for each invalid variable.

    ``fallbacks`` holds a preset's value for a variable that is unset; such a candidate is
    named ``"<fallback_label>: <VARIABLE>"`` so that ``explain`` shows where it came from.
    A variable set to the empty string (or blanks) counts as unset, as every empty variable
    does (README, "Settings from the environment"): a deployment template that renders a
    value it was not given as ``VAR=`` kept every conversation forever under the cognigy
    preset instead of its 30 days (a trial). ``0`` is the way to switch a preset value off.
    """
    found: dict[str, tuple[Candidate, ...]] = {}
    warnings: list[str] = []
    for category in categories:
        cands: list[Candidate] = []
        for var in ENV_VARIABLES.get(category, ()):
            if environ.get(var, "").strip():
                raw, name = environ[var], var
            elif var in fallbacks:
                raw, name = fallbacks[var], f"{fallback_label}: {var}"
            else:
                continue
            if (note := capital_m_note(raw)) is not None:
                warnings.append(f"environment variable {var}: {note}")
            try:
                cands.append(make_candidate("env", name, raw))
            except InvalidDuration as exc:
                warnings.append(f"environment variable {var} ignored: {exc}")
                cands.append(Candidate("env", name, None, valid=False))
                continue
            if is_negative(raw):
                # Ignored as 0 is, as in the config file, which says so with its line: a
                # sign is likely a slip, and the variable's records may then never expire
                # with nobody told (a trial).
                warnings.append(
                    f"environment variable {var} is negative ({raw.strip()!r}): ignored, as "
                    f"0 is; {category} takes its TTL from the other sources, or never expires"
                )
        if cands:
            found[category] = tuple(cands)
    return found, warnings

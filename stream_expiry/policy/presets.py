"""Presets: base settings of well-known platforms, which a config file overrides key by key.

Rules this module keeps (see the contract, "Presets"):

* ``none`` adds nothing; ``cognigy`` gives the contract's values to *unset* environment
  variables; ``chatlayer`` sets defaults (session 30 days, every other configured category
  365 days; sessions slide, which is the default anyway); ``avaamo`` caps everything at 2 years.
* The merge is per key: ``[retention.defaults] session = "7d"`` under ``chatlayer`` replaces
  only the preset's session default, and ``[retention.cap] max = 0`` switches off the
  ``avaamo`` cap (0 is a valid value that never wins).
* A preset's candidate is named ``"preset NAME: KEY"`` so ``explain`` tells it from the file's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from stream_expiry.policy.sources import CAP_ALL, Candidate, TtlMap, config_key, make_candidate

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "COGNIGY_ENV_VALUES",
    "PRESETS",
    "base_cap",
    "base_defaults",
    "env_fallbacks",
    "preset_label",
]

PRESETS: Final = ("none", "cognigy", "chatlayer", "avaamo")

# The contract's table: values of the variables when unset, with ``preset = "cognigy"`` only.
COGNIGY_ENV_VALUES: Final[Mapping[str, str]] = {
    "MAX_CONVERSATION_TTL_IN_MINUTES": "43200",
    "INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES": "0",
    "MAX_CONTACT_PROFILE_TTL_IN_MINUTES": "43200",
    "INSIGHTS_MAX_RAW_ANALYTICS_TTL_IN_MINUTES": "0",
    "INSIGHTS_MAX_STEP_EVENTS_TTL_IN_MINUTES": "0",
    "INSIGHTS_MAX_STEPS_TTL_IN_MINUTES": "0",
    "INSIGHTS_MAX_SESSIONS_TTL_IN_MINUTES": "0",
}
_CHATLAYER_SESSION: Final = "30d"
_CHATLAYER_OTHER: Final = "365d"
_AVAAMO_CAP: Final = "2y"


def preset_label(preset: str) -> str:
    return f"preset {preset}"


def env_fallbacks(preset: str) -> Mapping[str, str]:
    """Values for unset environment variables under ``preset``."""
    return COGNIGY_ENV_VALUES if preset == "cognigy" else {}


def base_defaults(preset: str, categories: tuple[str, ...], file: TtlMap) -> dict[str, Candidate]:
    """The ``default`` scope before any policy update: the preset's, overridden by the file's."""
    merged: dict[str, Candidate] = {}
    if preset == "chatlayer":
        for category in categories:
            value = _CHATLAYER_SESSION if category == "session" else _CHATLAYER_OTHER
            name = f"{preset_label(preset)}: {config_key('retention', 'defaults', category)}"
            merged[category] = make_candidate("default", name, value)
    merged.update(file)
    return merged


def base_cap(preset: str, file: TtlMap) -> dict[str, Candidate]:
    """The ``cap`` scope before any policy update: the preset's, overridden by the file's."""
    merged: dict[str, Candidate] = {}
    if preset == "avaamo":
        name = f"{preset_label(preset)}: {config_key('retention', 'cap', CAP_ALL)}"
        merged[CAP_ALL] = make_candidate("cap", name, _AVAAMO_CAP)
    merged.update(file)
    return merged

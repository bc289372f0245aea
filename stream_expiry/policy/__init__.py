"""Retention policy: where TTL values come from and which one a record gets (pure, no IO).

The modules, one job each: :mod:`.sources` (candidates, env variables, file settings),
:mod:`.presets`, :mod:`.updates` (messages on ``expiry.policies``), :mod:`.history`
(versions over effective time), :mod:`.resolution` (the rules), :mod:`.book` (all of it,
cached) and :mod:`.explain` (the human table).
"""

from stream_expiry.policy.book import DEFAULT_CACHE_SIZE, PolicyBook, UnknownCategory
from stream_expiry.policy.explain import (
    apply_updates,
    render_explain_table,
    unset_variables,
    updates_left_out,
)
from stream_expiry.policy.presets import PRESETS
from stream_expiry.policy.resolution import NEVER, Explanation, Resolution
from stream_expiry.policy.sources import (
    CAP_ALL,
    ENV_VARIABLES,
    SOURCES,
    Candidate,
    CandidateJson,
    RetentionSettings,
    config_key,
)
from stream_expiry.policy.updates import (
    IgnoredValue,
    PolicyUpdate,
    Scope,
    parse_scope_key,
    scope_key,
)

__all__ = [
    "CAP_ALL",
    "DEFAULT_CACHE_SIZE",
    "ENV_VARIABLES",
    "NEVER",
    "PRESETS",
    "SOURCES",
    "Candidate",
    "CandidateJson",
    "Explanation",
    "IgnoredValue",
    "PolicyBook",
    "PolicyUpdate",
    "Resolution",
    "RetentionSettings",
    "Scope",
    "UnknownCategory",
    "apply_updates",
    "config_key",
    "parse_scope_key",
    "render_explain_table",
    "scope_key",
    "unset_variables",
    "updates_left_out",
]

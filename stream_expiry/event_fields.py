"""The input event's field names, and the one a producer most likely meant by a name that
is none of them.

The contract keeps unknown fields and ignores them, which is right for a producer's own
extras (a channel, a locale) and silent for a misspelt optional field: a trial's producer
sent ``environment`` for ``env`` and ``bot_id`` for ``bot``, and every draft record of every
bot was stamped under the policy of bot ``_`` in ``live``, with no word. A name close to a
field (``evnt_id``, ``Env``) or a usual name of another schema for it (``bot_id``,
``environment``) is said, once, by the service; the event itself goes on as the contract
says. A misspelt required field is already a dead letter, whose detail then names it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Final

from stream_expiry.errors import misspelt

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DEFAULTS", "FIELDS", "meant", "misspelt_fields"]

#: The contract's fields of an input event.
FIELDS: Final = frozenset(
    ("category", "record_id", "org", "bot", "env", "op", "ts", "event_id", "data")
)
_ORDERED: Final = tuple(sorted(FIELDS))
#: What an optional field is when it is left out.
DEFAULTS: Final[Mapping[str, str]] = {
    "bot": "'_'",
    "env": "'live'",
    "op": "'create'",
    "event_id": "none",
    "data": "null",
}
# Names other schemas give these fields, too far from ours for a spelling check to find;
# looked up without case, ``-`` or ``_`` (:data:`_BY_LETTERS`), so that ``tenantId``,
# ``Tenant-ID`` and ``tenant_id`` are one name.
_OTHER_NAMES: Final[Mapping[str, str]] = {
    "environment": "env",
    "stage": "env",
    "bot_id": "bot",
    "org_id": "org",
    "organisation": "org",
    "organization": "org",
    "tenant": "org",
    "tenant_id": "org",
    "operation": "op",
    "action": "op",
    "timestamp": "ts",
    "time": "ts",
    "created_at": "ts",
    "id": "record_id",
    "recordid": "record_id",
    "payload": "data",
    "eventid": "event_id",
    "message_id": "event_id",
}
_BY_LETTERS: Final[Mapping[str, str]] = {k.replace("_", ""): v for k, v in _OTHER_NAMES.items()}


@functools.lru_cache(maxsize=4096)
def meant(name: str) -> str | None:
    """The field ``name`` most likely stands for, or None: a name of the contract's own,
    or one far from all of them, means nothing else. Cached: a producer sends the same few
    names in every event, and the spelling check is slow (tens of microseconds)."""
    if name in FIELDS:
        return None
    other = _BY_LETTERS.get(name.replace("-", "").replace("_", "").lower())
    if other is not None:
        return other
    close = misspelt([name], _ORDERED)
    return close[0][1] if close else None


def misspelt_fields(obj: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``(name, the field it stands for)`` for each name of ``obj`` that is not a field
    but most likely means one that ``obj`` does not have (``env`` given, ``Env`` is an
    extra of the producer's, not a second ``env``)."""
    return tuple(
        (name, field)
        for name in obj
        if name not in FIELDS and (field := meant(name)) is not None and field not in obj
    )

"""Policy updates: messages on ``expiry.policies``, parsed without ever raising.

Rules this module keeps (see the contract, "Policy updates"):

* A message's key names its scope: ``org/ORG``, ``bot/ORG/BOT/ENV``, ``cap`` or ``default``,
  each part percent-encoded like a record key, so any id is safe and the topic can be compacted
  (the newest update of a scope is the one compaction keeps).
* A value is ``{"scope", "org", "bot", "env", "ttl": {CATEGORY: DURATION}, "effective_from"}``.
  ``scope`` and ``ttl`` are required, ``org`` for ``org`` and ``bot`` scopes, ``bot`` for the
  ``bot`` scope (whose ``env`` defaults to ``live``, like an input event's). A field that
  belongs to another scope must be absent or null, because a stray ``bot`` in an ``org`` update
  is far more likely a mistake than a wish. Unknown extra fields are ignored, with a note (the
  service logs it) when one's name is close to a field's: ``efective_from``, ``Env``.
* ``ttl`` replaces the scope's whole map; its keys must be configured categories (and ``max``
  for the cap), its values durations (0 or negative: valid, "no value"; null: no key).
* A value that is not a duration (``"banana"``, ``true``) is ignored, as the contract has an
  invalid environment variable ignored: the update's other values still apply, and the
  category gets an invalid candidate from this scope, which never wins: the scope's
  history (:mod:`.history`) keeps the value the version before had for it. The
  update carries an :class:`IgnoredValue` for each, which the service logs and dead-letters a
  copy of: one typo in the management UI must not throw away the values typed right beside it.
  A wrong *structure* (not JSON, an unknown scope or category, ``ttl`` not an object, a key
  naming another scope) still rejects the whole update: what it was meant to change is unknown.
* ``effective_from`` (RFC 3339 or epoch ms) defaults to the Kafka record's timestamp.
* A null value clears the scope named by the key from the Kafka timestamp on: the scope falls
  back to the config file's values, exactly what a restart would see once compaction has
  removed the scope's updates.
* When both key and value name a scope, they must agree; otherwise compaction and clears
  would act on a scope other than the one the value changes.
* A key given twice in one object (``"ttl": {"session": "30d", "session": "1d"}``, two
  ``org``) rejects the whole update (``invalid_field``, naming the key and its path): JSON
  readers keep the last value without a word, so the scope would get a TTL, or the update a
  scope, other than the one written first, and which one was meant is unknown
  (:mod:`stream_expiry.repeated_keys`).
* Invalid input gives a :class:`~stream_expiry.model.Rejection` with a dead-letter code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import quote, unquote

import orjson

from stream_expiry.durations import InvalidDuration, format_duration
from stream_expiry.errors import misspelt, not_json, suggestion
from stream_expiry.model import ENVS, MAX_ID_CHARS, SECONDS_LIKE_BEFORE_MS, Rejection
from stream_expiry.policy.sources import (
    CAP_ALL,
    Candidate,
    Source,
    capital_m_note,
    make_candidate,
)
from stream_expiry.repeated_keys import repeated_key
from stream_expiry.timeutil import InvalidTimestamp, format_ts, parse_ts

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

__all__ = [
    "SCOPES",
    "IgnoredValue",
    "PolicyUpdate",
    "Scope",
    "ScopeKind",
    "parse_scope_key",
    "parse_update",
    "scope_key",
]

ScopeKind = Literal["org", "bot", "cap", "default"]
SCOPES: Final[tuple[ScopeKind, ...]] = ("org", "bot", "cap", "default")


@dataclass(frozen=True, slots=True)
class Scope:
    """Which set of values an update replaces; ``org``/``bot``/``env`` only where they apply."""

    kind: ScopeKind
    org: str | None = None
    bot: str | None = None
    env: str | None = None

    @property
    def key(self) -> str:
        """The message key on ``expiry.policies``."""
        parts: list[str] = [self.kind]
        if self.kind in ("org", "bot"):
            parts.append(quote(self.org or "", safe=""))
        if self.kind == "bot":
            parts += [quote(self.bot or "", safe=""), quote(self.env or "", safe="")]
        return "/".join(parts)


def scope_key(
    scope: str, org: str | None = None, bot: str | None = None, env: str | None = None
) -> str:
    """The key of a policy update for a scope; raises ``ValueError`` for an incomplete scope."""
    return _make_scope(scope, org, bot, env).key


def _make_scope(kind: str, org: str | None, bot: str | None, env: str | None) -> Scope:
    if kind in ("cap", "default"):
        if org is not None or bot is not None or env is not None:
            raise ValueError(f"scope {kind!r} takes no org, bot or env")
        return Scope(kind)  # type: ignore[arg-type]  # checked just above
    if kind not in ("org", "bot"):
        raise ValueError(f"scope must be one of org, bot, cap, default, got {kind!r}")
    for name, part in (("org", org), ("bot", bot), ("env", env)):
        if kind == "org" and name != "org":
            if part is not None:
                raise ValueError(f"scope 'org' takes no {name}")
            continue
        if part is None or not 1 <= len(part) <= MAX_ID_CHARS:
            raise ValueError(f"scope {kind!r} needs {name}, 1 to {MAX_ID_CHARS} characters")
    if env is not None and env not in ENVS:
        raise ValueError(f"env must be 'live' or 'draft', got {env!r}")
    return Scope(kind, org, bot, env)  # type: ignore[arg-type]  # checked above


def parse_scope_key(key: str) -> Scope:
    """Inverse of :attr:`Scope.key`; raises ``ValueError`` for a key of another shape."""
    head, *rest = key.split("/")
    sizes = {"org": 1, "bot": 3, "cap": 0, "default": 0}
    if head not in sizes or len(rest) != sizes[head]:
        raise ValueError(f"{key!r} is not a policy scope (org/ORG, bot/ORG/BOT/ENV, cap, default)")
    parts = [unquote(p, errors="strict") for p in rest] + [None] * (3 - len(rest))
    scope = _make_scope(head, parts[0], parts[1], parts[2])
    if scope.key != key:
        # Two spellings of one scope would defeat compaction and make clears miss.
        raise ValueError(f"{key!r} is not percent-encoded canonically; use {scope.key!r}")
    return scope


@dataclass(frozen=True, slots=True)
class IgnoredValue:
    """A value of an update's ``ttl`` that is not a duration: ignored, the rest applies.

    ``detail`` names the field (``ttl.session: ...``), for the log and the dead-letter copy.
    """

    category: str
    detail: str


@dataclass(frozen=True, slots=True)
class PolicyUpdate:
    """A valid update: ``ttl`` replaces the scope's values from ``effective_from`` on.

    ``ttl`` is ``None`` for a clear (a null value): the scope reverts to its config values.
    """

    scope: Scope
    ttl: Mapping[str, Candidate] | None
    effective_from: int
    # What a person should be told of a value that is valid but likely not what was meant
    # (a duration written "1M", minutes, when a month was meant): logged where it applies.
    notes: tuple[str, ...] = ()
    # The values that are not durations: ignored (an invalid candidate in ``ttl``), reported.
    ignored: tuple[IgnoredValue, ...] = ()
    # The categories the scope had a value for that this update leaves out, so takes away
    # (:meth:`PolicyBook.dropped_by`): said when the update arrives.
    dropped: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.scope.key

    def ignored_rejection(self) -> Rejection | None:
        """What the dead-letter copy of a partly applied update says: ``invalid_field`` and
        every ignored field, or None when nothing was ignored."""
        if not self.ignored:
            return None
        fields = "; ".join(i.detail for i in self.ignored)
        return Rejection(
            "invalid_field",
            f"ignored, the update's other values apply: {fields}",
        )

    def describe(self) -> str:
        """One line for a person: ``scope org/acme: conversation=30d, session=0 (no value),
        effective from ...``.

        An empty map is said in words (it read ``scope cap: , effective from ...``): it is
        not a clear; the scope gives no value for any category from then on, not even the
        config file's, which only a null value brings back (:class:`ScopeHistory`)."""
        from stream_expiry.timeutil import format_ts

        if self.ttl is None:
            values = "cleared (back to the config file's values)"
        elif not self.ttl:
            values = (
                "emptied (no value from this scope for any category, the config file's "
                "included; a null value brings the config file's back)"
            )
        else:
            values = ", ".join(f"{cat}={_shown(c)}" for cat, c in sorted(self.ttl.items()))
        return f"scope {self.scope.key}: {values}, effective from {format_ts(self.effective_from)}"


def _shown(c: Candidate) -> str:
    """A value as ``policy set`` and ``policy list`` print it (``14d``, ``0 (no value)``):
    an operator reads this log line beside their output."""
    if not c.valid:
        return "invalid (ignored)"
    return "0 (no value)" if c.ttl_ms is None else format_duration(c.ttl_ms)


def _json_type(value: object) -> str:
    kinds = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _reject(code: str, detail: str) -> Rejection:
    return Rejection(code, detail)


def _scope_of(obj: dict[str, Any]) -> Scope | Rejection:
    kind = obj.get("scope")
    if kind is None:
        return _reject("missing_field", "field 'scope' is required")
    if kind not in SCOPES:
        return _reject(
            "invalid_field", f"field 'scope' must be one of org, bot, cap, default, got {kind!r}"
        )
    allowed = {"org": ("org",), "bot": ("org", "bot", "env"), "cap": (), "default": ()}[kind]
    parts: dict[str, str | None] = {}
    for name in ("org", "bot", "env"):
        value = obj.get(name)
        if value is None:
            if name in allowed and name != "env":
                return _reject("missing_field", f"field {name!r} is required for scope {kind!r}")
            parts[name] = "live" if name in allowed else None
            continue
        if name not in allowed:
            return _reject("invalid_field", f"field {name!r} does not belong to scope {kind!r}")
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
            return _reject(
                "invalid_field",
                f"field {name!r} must be a string of 1 to {MAX_ID_CHARS} characters",
            )
        if name == "env" and value not in ENVS:
            return _reject("invalid_field", f"field 'env' must be 'live' or 'draft', got {value!r}")
        parts[name] = value
    return Scope(kind, parts["org"], parts["bot"], parts["env"])


def _ttl_of(
    obj: dict[str, Any], scope: Scope, categories: Collection[str]
) -> tuple[dict[str, Candidate], list[IgnoredValue]] | Rejection:
    if obj.get("ttl") is None:
        return _reject("missing_field", "field 'ttl' is required (an object of category: duration)")
    ttl = obj["ttl"]
    if not isinstance(ttl, dict):
        return _reject("invalid_field", f"field 'ttl' must be an object, got {_json_type(ttl)}")
    allowed = set(categories) | ({CAP_ALL} if scope.kind == "cap" else set())
    source: Source = scope.kind
    name = f"policy update {scope.key}"
    result: dict[str, Candidate] = {}
    ignored: list[IgnoredValue] = []
    for category, value in ttl.items():
        if category not in allowed:
            hint = suggestion(category, allowed)
            return _reject(
                "invalid_field", f"ttl key {category!r} is not a configured category{hint}"
            )
        if value is None:
            continue
        # A cap's values apply to other categories (max: all of them), so each names its
        # key, as "[retention.cap] max" does: explain showed two "policy update cap" (a trial).
        named = f"{name} {category}" if scope.kind == "cap" else name
        try:
            result[category] = make_candidate(source, named, value)
        except InvalidDuration as exc:
            # Ignored, not fatal: the update's other values are still what was meant.
            result[category] = Candidate(source, named, None, valid=False)
            ignored.append(IgnoredValue(category, f"ttl.{category}: {exc}"))
    return result, ignored


def parse_update(
    key: bytes | None,
    value: bytes | None,
    kafka_timestamp_ms: int,
    categories: Collection[str],
) -> PolicyUpdate | Rejection:
    """Validate one message of ``expiry.policies``; never raises on bad input."""
    key_scope: Scope | None = None
    if key is not None:
        try:
            key_scope = parse_scope_key(key.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return _reject("invalid_field", f"the message key is not a policy scope: {exc}")
    if value is None:
        if key_scope is None:
            return _reject(
                "missing_field",
                "a null value clears the scope named by the key, but there is no key",
            )
        return PolicyUpdate(key_scope, None, kafka_timestamp_ms)
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return _reject("invalid_json", not_json(value, exc))
    if not isinstance(obj, dict):
        return _reject("not_an_object", f"the value is a JSON {_json_type(obj)}, not an object")
    if (repeated := repeated_key(value)) is not None:
        return _reject("invalid_field", repeated.detail())
    scope = _scope_of(obj)
    if isinstance(scope, Rejection):
        return scope
    if key_scope is not None and key_scope != scope:
        return _reject(
            "invalid_field",
            f"the key names scope {key_scope.key!r} but the value scope {scope.key!r}",
        )
    found = _ttl_of(obj, scope, categories)
    if isinstance(found, Rejection):
        return found
    ttl, ignored = found
    effective_from = kafka_timestamp_ms
    if obj.get("effective_from") is not None:
        try:
            effective_from = parse_ts(obj["effective_from"])
        except InvalidTimestamp as exc:
            return _reject("bad_timestamp", f"field 'effective_from': {exc}")
    notes = tuple(
        f"ttl.{category}: {note}"
        for category, value in obj["ttl"].items()
        if (note := capital_m_note(value)) is not None
    )
    if (seconds_note := _seconds_like_note(obj.get("effective_from"))) is not None:
        notes += (seconds_note,)
    notes += _misspelt_field_notes(obj)
    return PolicyUpdate(scope, ttl, effective_from, notes, tuple(ignored))


_FIELDS: Final = ("scope", "org", "bot", "env", "ttl", "effective_from")


def _misspelt_field_notes(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """A note for each unknown field whose name is close to one an update reads
    (``efective_from``, ``effective-from``): ignored like any extra field, so the update
    applied from its Kafka timestamp, not from the time it named, without a word. Beside
    the field meant (``Env`` and ``env``), the note says the update is read with that one:
    it is, and not from its Kafka timestamp nor without it."""
    notes = []
    for name, meant in misspelt(obj, _FIELDS):
        if obj.get(meant) is not None:
            what = f"the update is read with its {meant!r}"
        elif meant == "effective_from":
            what = "the update applies from its Kafka timestamp"
        else:
            what = f"the update is read without {meant!r}"
        notes.append(
            f"field {name!r} is not one a policy update has, so it is ignored and {what}; "
            f"did you mean {meant!r}?"
        )
    return tuple(notes)


#: Epoch seconds of 2001-09-09 on: an integer ``effective_from`` from here up to
#: SECONDS_LIKE_BEFORE_MS reads, as the milliseconds it is taken for, as January 1970.
_SECONDS_FROM: Final = 1_000_000_000


def _seconds_like_note(raw: object) -> str | None:
    """What to tell of an integer ``effective_from`` that looks like epoch seconds: read as
    milliseconds (the contract's unit) it is a day in January 1970, so the update applies to
    every record created since, not from the time its producer meant (a replay, and late
    events, then take it for records created long before). Valid, so applied, and said, as
    an event's ``ts`` in seconds is; 0 (from the beginning, on purpose) is not said."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None
    if not _SECONDS_FROM <= raw < SECONDS_LIKE_BEFORE_MS:
        return None
    return (
        f"effective_from {raw} is {format_ts(raw)} as epoch milliseconds, so the update "
        f"applies to records created since then; if {format_ts(raw * 1000)} was meant, the "
        "producer sends epoch seconds: send milliseconds or an RFC 3339 time"
    )

"""Redaction: fields of an event's ``data`` that must never leave the service.

``[redact]`` in the config file maps a category to dotted paths inside ``data``
(``conversation = ["user.email", "transcript"]``; ``"*"`` drops all of ``data``). The service
removes them before anything is written, so they never reach ``expiry.stamped``, a store or
the archive, and the stamp lists the paths it removed (``"redacted"``).

Rules this module keeps:

* Pure: no IO, and the input is never mutated. Only the dicts on the way to a removed field
  are copied; everything else in the result is shared with the input (callers must not mutate
  it either, which the service never does: it encodes and forgets).
* A path is split on ``.``; each segment names a key of a JSON object. A key that itself
  contains a ``.`` cannot be named: redact its parent instead.
* Lists are transparent: when a segment meets a list, the rest of the path applies inside
  every element of the list (``"transcript.text"`` drops ``text`` from every message of a
  transcript list; ``"transcript"`` drops the whole list). Lists nested in lists likewise.
* A path that meets anything else (a string, a number, null, a missing key) matches nothing
  there and is ignored: events differ in shape, and a redaction rule is not a schema.
* The removed paths are reported as configured (not per list index), once each, in the
  order of the configuration: the stamp says which rules removed something, never the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["ALL", "InvalidRedactPath", "Redactor", "parse_path"]

ALL: Final = "*"  # the path that drops all of ``data``

_Path = tuple[str, ...]


class InvalidRedactPath(ValueError):
    """Raised by :func:`parse_path` for a path that names no field (empty, or an empty
    segment such as ``"user..email"``); the config loader turns it into a ``ConfigError``."""


def parse_path(path: str) -> _Path:
    """``"user.email"`` -> ``("user", "email")``; ``"*"`` -> ``("*",)``."""
    if path == ALL:
        return (ALL,)
    segments = tuple(path.split("."))
    if not path or any(not s for s in segments):
        raise InvalidRedactPath(
            f"{path!r} is not a dotted path of field names (e.g. 'user.email', or '*' for all)"
        )
    return segments


def _remove(value: Any, path: _Path) -> tuple[Any, bool]:
    """``value`` without what ``path`` names, and whether anything was removed.

    Returns ``value`` itself (not a copy) when nothing matched.
    """
    if isinstance(value, list):
        out: list[Any] | None = None
        for i, item in enumerate(value):
            new, hit = _remove(item, path)
            if hit:
                if out is None:
                    out = list(value)
                out[i] = new
        return (value, False) if out is None else (out, True)
    if not isinstance(value, dict) or path[0] not in value:
        return value, False
    head, rest = path[0], path[1:]
    if not rest:
        return {k: v for k, v in value.items() if k != head}, True
    child, hit = _remove(value[head], rest)
    if not hit:
        return value, False
    copy = dict(value)
    copy[head] = child
    return copy, True


@dataclass(frozen=True)
class Redactor:
    """The redaction rules of every category; a category without rules passes unchanged."""

    rules: Mapping[str, tuple[tuple[str, _Path], ...]]

    @classmethod
    def from_config(cls, redact: Mapping[str, Sequence[str]]) -> Redactor:
        """From ``Config.redact`` (category -> dotted paths, already validated by the loader).

        Raises :class:`InvalidRedactPath` for a malformed path (the loader never passes one).
        """
        rules: dict[str, tuple[tuple[str, _Path], ...]] = {}
        for category, paths in redact.items():
            unique = [ALL] if ALL in paths else list(dict.fromkeys(paths))
            if unique:
                rules[category] = tuple((p, parse_path(p)) for p in unique)
        return cls(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def redact(self, category: str, data: Any) -> tuple[Any, tuple[str, ...]]:
        """``data`` without the category's redacted fields, and the paths that removed some.

        ``data`` itself is returned when nothing matched (the common case costs one lookup).
        """
        rules = self.rules.get(category)
        if not rules or data is None:
            return data, ()
        removed: list[str] = []
        if rules[0][0] == ALL:  # from_config keeps "*" alone
            return None, (ALL,)
        for text, path in rules:
            data, hit = _remove(data, path)
            if hit:
                removed.append(text)
        return data, tuple(removed)

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
  contains ``.`` is named by the segments it spells: ``user.email`` removes a flattened
  ``{"user.email": ...}`` as well as ``{"user": {"email": ...}}`` (a producer that
  flattens its payload left the field on the stamp, and the stamp said nothing was
  removed: a compliance trial). A key whose segments go on past the path is a field
  within the one the path names, and goes with it: ``user`` removes ``{"user.email":
  ...}`` as well as ``{"user": {...}}``.
* A segment matches keys whatever their case (``str.casefold``): producers' SDKs differ in
  key case (``User.Email``, ``user.EMAIL``), and for a privacy rule removing too much is
  safer than leaking. Every key of an object that matches is followed or removed, not only
  the first. The segments are folded once, by :meth:`Redactor.from_config`; an event costs
  one ``casefold`` per key of each object a path reaches, not one dict lookup as before.
* Lists are transparent: when a segment meets a list, the rest of the path applies inside
  every element of the list (``"transcript.text"`` drops ``text`` from every message of a
  transcript list; ``"transcript"`` drops the whole list). Lists nested in lists likewise,
  and so are the indices of a flattened key: ``"transcript.text"`` removes
  ``{"transcript.0.text": ...}`` too.
* A path that meets anything else (a string, a number, null, a missing key) matches nothing
  there and is ignored: events differ in shape, and a redaction rule is not a schema.
* The removed paths are reported as found in the data (``User.Email`` for the rule
  ``user.email``; not per list index), once each, in the order of the configuration and,
  within one rule, of the data: the stamp says which fields were removed, never the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["ALL", "InvalidRedactPath", "Redactor", "fold_path", "parse_path"]

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


def fold_path(path: _Path) -> _Path:
    """``path`` as :meth:`Redactor.redact` matches it: each segment case-folded."""
    return tuple(segment.casefold() for segment in path)


def _spelt(folded: str, path: _Path, depth: int) -> int:
    """Where ``path`` goes on after a key (case-folded) that contains dots, when its
    segments spell ``path[depth:]``'s next ones (``"user.email"`` for ``user.email``),
    else ``depth``; ``len(path)`` (the key goes) when they spell all of them and go on,
    a field inside the one the path names (``"user.email"`` for ``user``). A producer
    that flattens its payload sends such keys; left alone, the field the rule names was
    kept, and the stamp said nothing was removed (for a rule naming an object, every
    flattened field of it stayed: ``user`` kept ``{"user.email": ...}``)."""
    segments = tuple(folded.split("."))
    after = _spelt_by(segments, path, depth)
    if after == depth and any(s.isdigit() for s in segments):
        # "transcript.0.text": a flattened list's index, which the path does not name
        # (lists are transparent, as in nested data); tried after the key as it is, which
        # a path naming an object's digit key ("scores.2024") matches.
        after = _spelt_by(tuple(s for s in segments if not s.isdigit()), path, depth)
    return after


def _spelt_by(segments: _Path, path: _Path, depth: int) -> int:
    """:func:`_spelt` for a key's segments."""
    rest = len(path) - depth
    if len(segments) >= rest:  # the rest of the path, or a field within it
        return len(path) if segments[:rest] == path[depth:] else depth
    end = depth + len(segments)
    return end if path[depth:end] == segments else depth


def _remove(value: Any, path: _Path, depth: int, at: _Path, found: dict[_Path, None]) -> Any:
    """``value`` without what the folded ``path[depth:]`` names; each removed field's path
    as found in the data (``at``: the keys that led to ``value``) is added to ``found``.

    Returns ``value`` itself (not a copy) when nothing matched, so ``is`` tells a hit.
    """
    if isinstance(value, list):
        out: list[Any] | None = None
        for i, item in enumerate(value):
            new = _remove(item, path, depth, at, found)
            if new is not item:
                if out is None:
                    out = list(value)
                out[i] = new
        return value if out is None else out
    if not isinstance(value, dict):
        return value
    head = path[depth]
    copy: dict[str, Any] | None = None
    for key in value:
        folded = key.casefold()  # keys of decoded JSON are strings
        if folded == head:
            after = depth + 1
        elif "." in key and (after := _spelt(folded, path, depth)) > depth:
            pass  # a flattened key, "user.email": the field the path names
        else:
            continue
        if after == len(path):
            if copy is None:
                copy = dict(value)
            del copy[key]
            found[(*at, key)] = None
            continue
        child = value[key]
        new = _remove(child, path, after, (*at, key), found)
        if new is not child:
            if copy is None:
                copy = dict(value)
            copy[key] = new
    return value if copy is None else copy


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
            if ALL in paths:
                rules[category] = ((ALL, (ALL,)),)
                continue
            # Paths that differ only in case are one rule, the first (the loader warns).
            folded: dict[_Path, str] = {}
            for path in paths:
                folded.setdefault(fold_path(parse_path(path)), path)
            if folded:
                rules[category] = tuple((text, path) for path, text in folded.items())
        return cls(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def redact(self, category: str, data: Any) -> tuple[Any, tuple[str, ...]]:
        """``data`` without the category's redacted fields, and their paths as found in it.

        ``data`` itself is returned when nothing matched; a category without rules costs
        one lookup.
        """
        rules = self.rules.get(category)
        if not rules or data is None:
            return data, ()
        if rules[0][0] == ALL:  # from_config keeps "*" alone
            return None, (ALL,)
        found: dict[_Path, None] = {}
        for _, path in rules:
            data = _remove(data, path, 0, (), found)
        if not found:
            return data, ()
        # One entry per path as spelt: a flattened "user.email" and a nested one read alike.
        return data, tuple(dict.fromkeys(".".join(p) for p in found))

"""Repeated keys in a control document (a policy update, a legal hold): found and named.

orjson, like most JSON readers, keeps the *last* value of a key an object gives twice, and
says nothing: ``{"org": "acme", ..., "org": "other"}`` read as a hold of org ``other``, and
``{"ttl": {"session": "30d", "session": "1d"}}`` as a one-day session TTL. For a legal hold
or a retention policy that is a scope or a TTL other than the one a person wrote, and which
of the two was meant is unknown, so the parsers refuse such a document (RFC 8259 says names
SHOULD be unique; I-JSON, RFC 7493, that they MUST).

Rules kept here:

* Only control documents are checked: they are rare (a few a day), and read whole at a start
  (a platform's 100,000 policies and 10,000 holds, say), where a second parse costs a few
  microseconds each.
  Input events are not (README, "Events": a second pass would cost every event).
* The document has already been parsed by orjson: what orjson refuses is refused as it was
  (``invalid_json``, with its position), so this second parse, by the standard library with
  ``object_pairs_hook``, sees valid JSON only and answers one question.
* A key given again with the same value is no question: both readings are one (an upgrade
  trial: a hold an earlier version kept, written with ``"reason"`` twice alike, was refused
  by this one and its records let go). Only a key whose values differ is refused.
* The first such key is named with its path (``ttl.session``, ``tags[2].org``), so the
  person who wrote the document can find it; deeper than the standard library's recursion
  allows (orjson reads 1,024 levels), the document is refused too, as it cannot be checked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from stream_expiry.errors import quoted

__all__ = ["RepeatedKey", "repeated_key"]

# A key written bare in a path (``ttl.session``); any other is quoted (``["a.b"]``).
_PLAIN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


class _Object(list[tuple[str, Any]]):
    """An object's members as the parser met them, repeats kept (``object_pairs_hook``)."""


@dataclass(frozen=True, slots=True)
class RepeatedKey:
    """The first key a document gives twice in one object, or why it could not be checked.

    ``path`` leads to the key itself (``ttl.session``); ``key`` is None when the document
    nests too deep to be checked."""

    key: str | None
    path: str

    def detail(self) -> str:
        """A sentence for a person: which key, where, and why it is refused."""
        if self.key is None:
            return (
                "the document nests too deep to be checked for repeated keys; a control "
                "document is refused unless each of its objects gives every key once"
            )
        where = "the top level" if self.path == _step("", self.key) else quoted(self.path, 200)
        return (
            f"key {quoted(self.key, 80)} is given twice (at {where}): which of its values "
            "was meant is unknown, so the document is refused; give each key once"
        )


_TOO_DEEP: Final = RepeatedKey(None, "")


def _step(path: str, key: str) -> str:
    named = key if _PLAIN.match(key) else f"[{json.dumps(key)}]"
    if not path:
        return named
    return f"{path}.{named}" if not named.startswith("[") else f"{path}{named}"


class _Repeated(Exception):
    """Raised by :func:`_unique` at the first object giving a key twice."""


def _same(one: Any, other: Any) -> bool:
    """Whether two parsed JSON values are one JSON value: objects alike in any member
    order, and numbers and booleans told apart as JSON tells them (Python's ``==`` has
    ``1 == 1.0 == True`` and ``0 == False``: ``"effective_from": true`` given again as
    ``1`` was taken as alike, and the reader kept 1, a time in 1970). Called for a repeated
    key alone, which is rare."""
    return json.dumps(one, sort_keys=True) == json.dumps(other, sort_keys=True)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs) and not all(_same(members[k], v) for k, v in pairs):
        raise _Repeated  # (a value given again alike leaves ``members`` as the pairs say)
    return members


def repeated_key(value: bytes) -> RepeatedKey | None:
    """The first key of the JSON document ``value`` (valid JSON: orjson read it) that an
    object gives twice with different values, outer objects before the ones they hold, or
    None when no object does.

    One parse whose hook compares each object's size with its members' count answers for
    nearly every document (6 to 9 us for a hold of 160 bytes on a busy 2-core machine, where
    a walk of the parsed tree in Python took 18 to 21); a document with a repeat is parsed
    again to find where it is."""
    try:
        json.loads(value, object_pairs_hook=_unique)
    except _Repeated:
        pass
    except (RecursionError, ValueError):  # orjson's depth, beyond the standard library's
        return _TOO_DEEP
    else:
        return None
    try:
        root = json.loads(value, object_pairs_hook=_Object)
    except (RecursionError, ValueError):  # deep, past the repeat the first parse met
        return _TOO_DEEP
    return _first_repeat(root)


def _plain(node: Any) -> Any:
    """``node`` (objects as :class:`_Object`) as plain JSON values, to compare two values
    of one key as :func:`_unique` does (:func:`_same`; its last value of a key repeated
    alike)."""
    if isinstance(node, _Object):
        return {key: _plain(child) for key, child in node}
    if isinstance(node, list):
        return [_plain(child) for child in node]
    return node


def _first_repeat(root: Any) -> RepeatedKey | None:
    """The first key of ``root`` (objects as :class:`_Object`) given again with another
    value, outer first."""
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        children: list[tuple[Any, str]] = []
        if isinstance(node, _Object):
            seen: dict[str, Any] = {}
            for key, child in node:
                if key in seen and not _same(_plain(seen[key]), _plain(child)):
                    return RepeatedKey(key, _step(path, key))
                seen.setdefault(key, child)
                children.append((child, _step(path, key)))
        elif isinstance(node, list):
            children = [(child, f"{path}[{i}]") for i, child in enumerate(node)]
        stack.extend(reversed(children))
    return None

"""The key a user's own topic gives a record, built from the record's identity.

A compacted topic forgets a record only when a null value arrives under *its* key, the key
the user's producer chose, which is rarely our record key: a Java service may key its
``conversation-history`` topic by ``{record_id}`` alone, or by ``{org}:{bot}:{record_id}``.
A template says how, per topic; without one the record key (:attr:`Identity.key`) is used.

Rules this module keeps:

* The placeholders are the identity's parts, ``{org}``, ``{bot}``, ``{env}``, ``{category}``,
  ``{record_id}``, and ``{key}`` (our record key); ``{{`` and ``}}`` are literal braces.
  Anything else (an unknown name, a format spec, ``!r``, an attribute or an index) is
  refused when the template is read, never at the first deletion.
* Values go in as they are (no escaping): the user's producer did not escape them either.
  The key is the UTF-8 encoding of the result, as a Java ``StringSerializer`` writes it.
* Pure: no IO, no Kafka client; the config reader and the sink both use it.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Final

from stream_expiry.errors import ConfigurationError

if TYPE_CHECKING:
    from stream_expiry.model import Identity

__all__ = ["FIELDS", "KeyTemplate"]

FIELDS: Final = ("org", "bot", "env", "category", "record_id", "key")


class KeyTemplate:
    """A parsed key template; :meth:`render` gives the key bytes of one record."""

    __slots__ = ("_parts", "text")

    def __init__(self, text: str) -> None:
        """Parse ``text``; raises :class:`ConfigurationError` naming what is wrong."""
        if not isinstance(text, str) or not text:
            raise ConfigurationError("a key template must be a non-empty string")
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigurationError(
                f"key template {text!r}: {exc}; write a literal brace as {{{{ or }}}}"
            ) from None
        for literal, name, spec, conversion in parsed:
            if name is not None and (name not in FIELDS or spec or conversion):
                raise ConfigurationError(
                    f"key template {text!r}: unknown placeholder {{{name}"
                    f"{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}; "
                    f"use {', '.join('{' + f + '}' for f in FIELDS)}"
                )
            parts.append((literal, name))
        if all(name is None for _, name in parts):
            raise ConfigurationError(
                f"key template {text!r} has no placeholder: every record would get the same "
                "key; use for example {record_id}"
            )
        self.text = text
        self._parts = tuple(parts)

    def render(self, identity: Identity) -> bytes:
        """The key of ``identity``'s record in the user's topic."""
        out: list[str] = []
        for literal, name in self._parts:
            out.append(literal)
            if name == "key":
                out.append(identity.key)
            elif name is not None:
                out.append(getattr(identity, name))
        return "".join(out).encode("utf-8")

    def __repr__(self) -> str:
        return f"KeyTemplate({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyTemplate) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

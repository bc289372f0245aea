"""One exception root, grouped by cause; each says when it is raised and what to do."""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import json
    from collections.abc import Collection, Iterable, Sequence

__all__ = [
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "CorruptStoreError",
    "InputError",
    "NewerStoreError",
    "StoreError",
    "StreamExpiryError",
    "leaves",
    "misspelt",
    "not_json",
    "quoted",
    "suggestion",
]


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``, nested exception groups (an anyio task group's)
    opened, in order; ``[exc]`` for a plain one."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


class StreamExpiryError(Exception):
    """Root of every error stream-expiry raises on purpose; catch this at the edge."""


class ConfigurationError(StreamExpiryError):
    """A config file, option or environment value is unusable; the message names it and the fix."""


class InputError(StreamExpiryError):
    """An input message cannot be processed. The service routes these to the dead-letter topic."""


class StoreError(StreamExpiryError):
    """The durable index or a downstream store failed; the service stops without committing."""


class CorruptStoreError(StoreError):
    """RocksDB found a state store's files damaged (a checksum mismatch, say). The store is
    a cache of the changelog, so the service moves it aside and restores it instead of
    stopping; ``path`` is the store's directory."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self) -> tuple[type[CorruptStoreError], tuple[str, str]]:
        # A restore's worker process sends its error to the service: keep the path.
        return (type(self), (str(self), self.path))


class NewerStoreError(StoreError):
    """A state store was written by a newer version of stream-expiry, in a store format this
    version does not know (a rollback): read, it would be misread. Raised when the store is
    opened, before anything else of it is read; the service sets the store aside and
    restores it from the changelog. ``found`` is the store's format."""

    def __init__(self, message: str, found: int) -> None:
        super().__init__(message)
        self.found = found

    def __reduce__(self) -> tuple[type[NewerStoreError], tuple[str, int]]:
        return (type(self), (str(self), self.found))


class BrokerError(StreamExpiryError):
    """Kafka (or the embedded broker) is unreachable or refused a request; check the brokers."""


class BrokerUnavailableError(BrokerError):
    """Kafka did not answer in time, or a connection or the group membership was lost.

    Retrying may succeed: long-running loops (the sink) wait and go on instead of exiting.
    """


def suggestion(word: str, choices: Collection[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to a mistyped ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def misspelt(names: Iterable[str], known: Sequence[str]) -> list[tuple[str, str]]:
    """``(name, the known name it is close to)`` for each of ``names`` that is not in
    ``known`` but close to one of them, ``-`` for ``_`` and case aside (``record-id``,
    ``efective_from``): a message's field that would be ignored, said with the one meant."""
    out = []
    for name in names:
        if name in known:
            continue
        close = difflib.get_close_matches(name.replace("-", "_").lower(), known, n=1, cutoff=0.8)
        if close:
            out.append((name, close[0]))
    return out


# Longer text is cut before its repr is built: a producer's value of megabytes is quoted
# in a few dozen characters, without a repr of megabytes first.
_QUOTED_TEXT_MAX = 1_000


def quoted(value: object, limit: int) -> str:
    """``value``'s repr for a message, cut to ``limit`` characters (the last three ``...``):
    an error's text goes into log lines and dead letters' headers, whatever its size."""
    if isinstance(value, str) and len(value) > _QUOTED_TEXT_MAX:
        value = value[:_QUOTED_TEXT_MAX]
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def not_json(value: bytes, exc: json.JSONDecodeError) -> str:
    """The detail of a message value the JSON parser (orjson) refused with ``exc``.

    Bytes that are not UTF-8 are said as such, with the first bad byte's offset: orjson
    says ``str is not valid UTF-8: surrogates not allowed ... (char 0)`` wherever they are,
    which sent a reader looking for surrogates (and at the start). Decoding again costs
    only on this path, a refused value. Other refusals say in words what the parser met
    where (:func:`_json_fault`). Short whatever the value: it quotes a word of it at most."""
    try:
        value.decode()
    except UnicodeDecodeError as bad:
        return (
            f"the value is not valid UTF-8 (byte {bad.start}: {bad.reason}); "
            "send JSON encoded as UTF-8"
        )
    return f"the value is not JSON: {_json_fault(exc)}"


# What a refusal quotes of the value: the word it met (``hello``, ``tru``), at most this
# many characters, else the one character.
_WORD: Final = re.compile(r"\w{1,20}")


def _met(doc: str, pos: int) -> str:
    """The word (cut, ending ``...``) or the character at ``pos`` of ``doc``; "" at its end."""
    word = _WORD.match(doc, pos)
    if word is None:
        return doc[pos : pos + 1]
    more = word.end() < len(doc) and (doc[word.end()].isalnum() or doc[word.end()] == "_")
    return word.group() + ("..." if more else "")


def _json_fault(exc: json.JSONDecodeError) -> str:
    """What orjson met and where, in words: its own ("unexpected character, expected a
    JSON value: line 1 column 1 (char 0)") said neither that the value is not JSON nor what
    character it met (a trial). The position is orjson's: line and column from 1, and
    ``char``, the offset in characters from 0."""
    where = f"line {exc.lineno} column {exc.colno} (char {exc.pos})"
    met = _met(exc.doc, exc.pos)
    if not exc.doc:
        return "it is empty"
    if not exc.doc.strip(" \t\n\r"):  # JSON's whitespace
        return "it is only whitespace"
    if exc.msg.startswith("unexpected end of data"):
        return f"it ends at {where} before the JSON does (a bracket, brace or quote left open?)"
    if exc.msg.startswith("unexpected content after document") and met:
        return f"{met!r} at {where} follows a whole JSON value; send one value per message"
    if exc.msg.startswith("unexpected character") and met:
        expected = exc.msg.partition(", expected ")[2]
        return f"{met!r} at {where}" + (f", where {expected} should be" if expected else "")
    if exc.msg.startswith("invalid literal") and met:  # a word, not true, false or null
        return f"{met!r} at {where}, where a JSON value should be"
    if exc.msg.startswith("trailing comma") and met:
        return f"{met!r} at {where} is a comma with no value after it"
    return f"{exc.msg} at {where}"

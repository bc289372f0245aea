"""The per-record path's common cases, compiled, when the package was built with them.

Reading an event's fields and writing its stamp cost a quarter of an ingested event's CPU
in Python, building a fired timer's states a quarter of a tombstone's (docs/BENCHMARKS.md,
round 53). ``_native.c`` does the common case of each in C and leaves every other input
to the Python function it stands in for, so the rules stay in Python and the C code only
repeats the fast path's checks: where it answers, it answers what the Python code does
(``tests/unit/test_native.py`` checks that on generated inputs).

The extension is optional: without a C compiler at install time the package installs
without it, and :data:`compiled` is None. ``STREAM_EXPIRY_PURE_PYTHON=1`` turns it off at
run time (to compare, or to rule it out when something looks wrong).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from stream_expiry.engine import Fired
    from stream_expiry.model import Identity, InputEvent, Stamp

__all__ = ["PURE_PYTHON_ENV", "Codec", "compiled", "describe"]

PURE_PYTHON_ENV = "STREAM_EXPIRY_PURE_PYTHON"


class Codec(Protocol):
    """What ``_native.c`` offers. Each answer of None means "not the common case": the
    Python code takes the input as it always did."""

    def bind(
        self,
        identity: type[Identity],
        input_event: type[InputEvent],
        stamp: type[Stamp],
        dumps: Callable[[Any], bytes],
        /,
    ) -> None:
        """The classes to build and read, and the JSON writer for ``data``: once, at
        :mod:`stream_expiry.model`'s import (it raises if their shape is not the one the C
        code was written for)."""

    def event(
        self, obj: dict[str, Any], value: bytes, categories: Collection[str], max_ts: int, /
    ) -> InputEvent | None:
        """``model.parse_event``'s result for ``value``, which orjson read as ``obj``."""

    def stamp(self, stamp: Stamp, data: Any, /) -> bytes | None:
        """``model.encode_stamp(stamp, data)``."""

    def tombstone(self, stamp: Stamp, reason: str, emitted_at: int, /) -> bytes | None:
        """``model.encode_tombstone(stamp, reason=reason, emitted_at=emitted_at)``."""

    def format_ts(self, ms: int, /) -> str | None:
        """``timeutil.format_ts(ms)``, None out of range."""

    def state_packer(
        self, fallback: Callable[[Stamp, int | None], bytes], /
    ) -> Callable[[Stamp, int | None], bytes]:
        """``state.codec.encode_state`` compiled: ``fallback`` (the Python function) packs
        the states it does not (those with more than a ttl source in their tail)."""

    def timer_packer(self, fallback: Callable[[Stamp], bytes], /) -> Callable[[Stamp], bytes]:
        """``engine._pack_timer`` compiled, likewise."""

    def stamp_reader(self, fallback: Callable[[Any], Any], /) -> Callable[[Any], Any]:
        """``codec.stamp_body_fields`` compiled: the commonest stamp read back in C (restore
        and replay read millions), any other by ``fallback``."""

    def stamp_scanner(self, fallback: Callable[[bytes], Any], /) -> Callable[[bytes], Any]:
        """``codec.stamp_fields`` compiled: the commonest stamp's fields read from its
        bytes without parsing the rest into objects (restore reads millions), any other
        (or anything the scan is not sure of) by ``fallback``."""

    def seen_keys(self, bits: bytearray, keys: list[bytes], /) -> list[int]:
        """``state.key_filter._seen_in_python``: the same bits, the same answer."""

    def replay_fields(self, value: bytes, /) -> tuple[int, int | None, int | None] | None:
        """What ``replay``'s verdict reads of a stamp, ``(created_at, expires_at,
        last_activity_at)``, for the commonest stamp (a creation time, no rare field, as
        ``stamp_scanner`` reads it); None for any other, which it reads with orjson."""

    def key_category(self, key: bytes, /) -> bytes | None:
        """The fourth of a key's five parts, when every part is of ``[A-Za-z0-9_.~-]``
        only (``state.restore._PLAIN_KEY``'s match), else None."""

    def own_time(self, text: Any, /) -> int | None:
        """``codec.parse_own_ts`` of the service's own form, None for any other text."""

    def timer_firer(
        self, fallback: Callable[[str, bytes, int], Fired], fired: type[Fired], /
    ) -> Callable[[str, bytes, int], Fired]:
        """``engine._fire_timer`` compiled: the commonest timer (an expiry, a key with
        nothing quoted, a tail of the ttl source alone) fired in C, any other by
        ``fallback``."""


def _load() -> Codec | None:
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:
        return cast("Codec", importlib.import_module("stream_expiry._native"))
    except ImportError:
        return None


compiled: Codec | None = _load()


def describe() -> str:
    """Which codec runs, for ``run``'s first line and ``--version``."""
    if compiled is not None:
        return "compiled codec"
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return f"pure-Python codec ({PURE_PYTHON_ENV} is set)"
    return "pure-Python codec (the compiled one was not built: a C compiler at install builds it)"

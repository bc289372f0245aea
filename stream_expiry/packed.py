"""The variable tail of a packed record (a stored state, a timer in the wheel).

After a record's fixed-width fields come, when a create read late moved the record's
creation back, the creation its life's first stamp said (``first_created_at``) behind a
0xFD byte; when the record has lives a legal hold keeps (nearly never), those lives behind
a 0xFE byte and their length; then, when the record has a previous life, that life's
deletion time (``previous_deleted_at``) behind a 0xFF byte; then the ttl source as UTF-8.
UTF-8 text never holds the bytes 0xFD, 0xFE or 0xFF, so no marker can be mistaken for a
source, and a record with none (nearly all) is packed as it was before the fields existed:
stores written then read unchanged.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from stream_expiry.model import HeldLife

__all__ = ["first_created", "pack_tail", "unpack_tail"]

_FLOOR = struct.Struct(">Bq")
_LIVES = struct.Struct(">BI")
_FIRST = struct.Struct(">Bq")


def pack_tail(
    source: str | None,
    previous_deleted_at: int | None,
    held_lives: tuple[HeldLife, ...] = (),
    first_created_at: int | None = None,
) -> bytes:
    text = (source or "").encode()
    if previous_deleted_at is not None:
        text = _FLOOR.pack(0xFF, previous_deleted_at) + text
    if held_lives:
        blob = orjson.dumps(held_lives)
        text = _LIVES.pack(0xFE, len(blob)) + blob + text
    if first_created_at is not None:
        text = _FIRST.pack(0xFD, first_created_at) + text
    return text


def first_created(packed: bytes, at: int) -> int | None:
    """The ``first_created_at`` of a tail packed from ``at`` on (None: none)."""
    if len(packed) > at and packed[at] == 0xFD:
        return int(_FIRST.unpack_from(packed, at)[1])
    return None


def unpack_tail(packed: bytes, at: int) -> tuple[str | None, int | None, tuple[HeldLife, ...]]:
    """The ttl source, the previous deletion and the held lives packed from ``at`` on
    (:func:`first_created` reads the field before them, if any)."""
    lives: tuple[HeldLife, ...] = ()
    if len(packed) > at and packed[at] == 0xFD:
        at += _FIRST.size
    if len(packed) > at and packed[at] == 0xFE:
        size = _LIVES.unpack_from(packed, at)[1]
        at += _LIVES.size
        lives = tuple(tuple(life) for life in orjson.loads(packed[at : at + size]))
        at += size
    if len(packed) > at and packed[at] == 0xFF:
        floor = _FLOOR.unpack_from(packed, at)[1]
        return packed[at + _FLOOR.size :].decode() or None, floor, lives
    return packed[at:].decode() or None, None, lives

"""The variable tail of a packed record (a stored state, a timer in the wheel).

After a record's fixed-width fields come, when the record has a previous life, that life's
deletion time (``previous_deleted_at``) behind a 0xFF byte, then the ttl source as UTF-8.
UTF-8 text never holds the byte 0xFF, so the marker cannot be mistaken for a source, and a
record without a previous life (nearly all) is packed as it was before the field existed:
stores written then read unchanged.
"""

from __future__ import annotations

import struct

__all__ = ["pack_tail", "unpack_tail"]

_FLOOR = struct.Struct(">Bq")


def pack_tail(source: str | None, previous_deleted_at: int | None) -> bytes:
    text = (source or "").encode()
    if previous_deleted_at is None:
        return text
    return _FLOOR.pack(0xFF, previous_deleted_at) + text


def unpack_tail(packed: bytes, at: int) -> tuple[str | None, int | None]:
    """The ttl source and the previous deletion packed from offset ``at`` on."""
    if len(packed) > at and packed[at] == 0xFF:
        return packed[at + _FLOOR.size :].decode() or None, _FLOOR.unpack_from(packed, at)[1]
    return packed[at:].decode() or None, None

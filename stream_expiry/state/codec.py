"""How a record state is stored: fixed-width integers, then the ttl source.

Identity is not stored in the value: the key is the record key, which decodes to it (and
the processor, which has the event's identity at hand, never decodes at all). Absent times
are a sentinel, so the value is one ``struct`` call each way. A record with a previous
life keeps its ``previous_deleted_at`` between the fixed fields and the source, after a
0xFF byte (which UTF-8 text never holds): values without one are unchanged, so stores
written before it existed read as they were.
"""

from __future__ import annotations

import struct

from stream_expiry.model import Identity, Stamp

__all__ = ["decode_state", "encode_fields", "encode_state"]

_FIXED = struct.Struct(">qqqqqqqB")
_FLOOR = struct.Struct(">Bq")
_NONE = -(1 << 63)


def encode_state(stamp: Stamp, prune_at: int | None) -> bytes:
    # Unpacked once, the fields tested inline (encode_fields): this runs for every state
    # written, each event's and each tombstone's, and a helper call per field was a third
    # of it.
    _, created, expires, ttl, source, deleted, erase, held, offset, floor = stamp
    return encode_fields(
        created, expires, ttl, deleted, prune_at, erase, offset, source, held, floor
    )


def decode_state(identity: Identity, value: bytes) -> tuple[Stamp, int | None]:
    """The stored state and its marker's prune time (None for a live record)."""
    created, expires, ttl, deleted, prune, erase, offset, held = _FIXED.unpack_from(value)
    at = _FIXED.size
    if len(value) > at and value[at] == 0xFF:
        floor: int | None = _FLOOR.unpack_from(value, at)[1]
        at += _FLOOR.size
    else:
        floor = None
    source = value[at:].decode() or None
    stamp = Stamp(
        identity,
        None if created == _NONE else created,
        None if expires == _NONE else expires,
        None if ttl == _NONE else ttl,
        source,
        None if deleted == _NONE else deleted,
        None if erase == _NONE else erase,
        bool(held),
        None if offset == _NONE else offset,
        floor,
    )
    return stamp, None if prune == _NONE else prune


def encode_fields(
    created: int | None,
    expires: int | None,
    ttl_ms: int | None,
    deleted: int | None,
    prune_at: int | None,
    erase: int | None,
    offset: int | None,
    source: str | None,
    held: bool = False,
    previous_deleted_at: int | None = None,
) -> bytes:
    """:func:`encode_state` from a state's fields (what a restore has at hand, without
    building a :class:`Stamp` first). Same bytes."""
    n = _NONE
    fixed = _FIXED.pack(
        n if created is None else created,
        n if expires is None else expires,
        n if ttl_ms is None else ttl_ms,
        n if deleted is None else deleted,
        n if prune_at is None else prune_at,
        n if erase is None else erase,
        n if offset is None else offset,
        held,
    )
    if previous_deleted_at is not None:
        fixed += _FLOOR.pack(0xFF, previous_deleted_at)
    return fixed + (source or "").encode()

"""How a record state is stored: fixed-width integers, then the ttl source.

Identity is not stored in the value: the key is the record key, which decodes to it (and
the processor, which has the event's identity at hand, never decodes at all). Absent times
are a sentinel, so the value is one ``struct`` call each way. The tail (the source, and a
previous life's deletion) is :mod:`stream_expiry.packed`'s.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from stream_expiry import native
from stream_expiry.model import HeldLife, Identity, Stamp
from stream_expiry.packed import first_created, pack_tail, unpack_tail

__all__ = ["decode_state", "encode_fields", "encode_state", "timer_bytes", "timer_of_state"]

_FIXED = struct.Struct(">qqqqqqqB")
_NONE = -(1 << 63)


def _encode_state(stamp: Stamp, prune_at: int | None) -> bytes:
    # Unpacked once, the fields tested inline (encode_fields): this runs for every state
    # written, each event's and each tombstone's, and a helper call per field was a third
    # of it.
    _, created, expires, ttl, source, deleted, erase, held, offset, floor, lives, first = stamp
    return encode_fields(
        created, expires, ttl, deleted, prune_at, erase, offset, source, held, floor, lives, first
    )


if TYPE_CHECKING:
    from collections.abc import Callable

encode_state: Callable[[Stamp, int | None], bytes] = (
    _encode_state if native.compiled is None else native.compiled.state_packer(_encode_state)
)
"""A state as the store keeps it, with its marker's prune time (None: a live record). Compiled
where :mod:`stream_expiry.native` is built (it packs what has no tail but its ttl source,
nearly every state, and calls the Python function for the rest)."""


def decode_state(identity: Identity, value: bytes) -> tuple[Stamp, int | None]:
    """The stored state and its marker's prune time (None for a live record)."""
    created, expires, ttl, deleted, prune, erase, offset, held = _FIXED.unpack_from(value)
    size = _FIXED.size
    source, floor, lives = unpack_tail(value, size)
    first = first_created(value, size) if len(value) > size and value[size] == 0xFD else None
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
        lives,
        first,
    )
    return stamp, None if prune == _NONE else prune


def timer_of_state(value: bytes) -> tuple[int, bytes] | None:
    """A stored live, unheld state's due time and its timer as the wheel holds it
    (``stream_expiry.engine._pack_timer``: created, expires, ttl, erase and offset, then
    the same tail), cut from the stored bytes; None for a deleted or held state, or one
    never due. Loading a horizon decoded each state into a :class:`Stamp` and packed it
    again, ~11 us a timer: 0.4 s for the 40,000 timers of 24 partitions assigned."""
    _, expires, _, deleted, _, erase, _, held = _FIXED.unpack_from(value)
    if deleted != _NONE or held:
        return None
    due = expires if erase == _NONE else erase
    if due == _NONE:
        return None
    return due, timer_bytes(value)


def timer_bytes(value: bytes) -> bytes:
    """The timer of a stored live, unheld state with a due time (:func:`timer_of_state`
    without the checks): what the store keeps beside it in its due index."""
    return value[:24] + value[40:56] + value[57:]


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
    held_lives: tuple[HeldLife, ...] = (),
    first_created_at: int | None = None,
) -> bytes:
    """:func:`encode_state` from a state's fields (what a restore has at hand, without
    building a :class:`Stamp` first). Same bytes."""
    n = _NONE
    return _FIXED.pack(
        n if created is None else created,
        n if expires is None else expires,
        n if ttl_ms is None else ttl_ms,
        n if deleted is None else deleted,
        n if prune_at is None else prune_at,
        n if erase is None else erase,
        n if offset is None else offset,
        held,
    ) + pack_tail(source, previous_deleted_at, held_lives, first_created_at)

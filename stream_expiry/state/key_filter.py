"""Which keys a restore into an empty store has written: a Bloom filter of two bits a key.

A restore does not know what a store holds, so it looked up every stamp's key before
writing it (:meth:`~stream_expiry.state.store.PartitionStore.write_restored` replaces the
state it finds, and moves its index entries). A store restored from empty holds only what
this restore wrote, and nearly every key is new: those look-ups found nothing, and cost a
tenth of a restored stamp's CPU (``bench.bench_restore``, round 55). The filter answers
"never written" for most keys for a few nanoseconds each; the few it is not sure of (a key
written before, or a false positive) are looked up as before, so an answer is never wrong,
only sometimes slower.

Sized for the keys the restore may write, at 16 bits a key (false positives ~1.4 %), up to
16 MiB a store; a restore of more keys than that is sized for still works, with more false
positives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream_expiry import native

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["KeyFilter"]

_BITS_A_KEY = 16
_LEAST_BYTES = 1 << 13  # 8 KiB
_MOST_BYTES = 1 << 24  # 16 MiB


def _seen_in_python(bits: bytearray, keys: list[bytes]) -> list[int]:
    """The indexes of ``keys`` whose two bits were both set; sets every key's bits."""
    mask = len(bits) * 8 - 1
    found: list[int] = []
    for i, key in enumerate(keys):
        h = hash(key)
        one, two = h & mask, (h >> 32) & mask
        if bits[one >> 3] >> (one & 7) & 1 and bits[two >> 3] >> (two & 7) & 1:
            found.append(i)
        bits[one >> 3] |= 1 << (one & 7)
        bits[two >> 3] |= 1 << (two & 7)
    return found


_seen: Callable[[bytearray, list[bytes]], list[int]] = (
    _seen_in_python if native.compiled is None else native.compiled.seen_keys
)


class KeyFilter:
    """The keys given to :meth:`seen` so far, as a Bloom filter."""

    def __init__(self, expected: int) -> None:
        wanted = max(_LEAST_BYTES, min(_MOST_BYTES, expected * _BITS_A_KEY // 8))
        self._bits = bytearray(1 << (wanted - 1).bit_length())  # a power of two

    @property
    def size(self) -> int:
        """Bytes it takes."""
        return len(self._bits)

    def seen(self, keys: list[bytes]) -> list[int]:
        """The indexes of ``keys`` that may have been given before (to this call or an
        earlier one); all others certainly were not. Notes every key."""
        return _seen(self._bits, keys)

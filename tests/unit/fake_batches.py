"""A stand-in for the outbox's batches (``outbox._Batches``) in tests that drive the
outbox's own encoding of tombstones (``Outbox._put_tombstones``) without a producer.

The outbox appends a tombstone's event and null straight into the open batch's builder
(``outbox._Appender``); a fake that only had ``try_add`` no longer saw them. This mixin
turns those appends into the fake's own ``try_add``, so a test keeps one record of what
was written, in order."""

from __future__ import annotations

from typing import Any


class AppendsLikeBatches:
    """Mixed into a fake with ``try_add(slot, key, value, timestamp_ms, headers)``."""

    held_topic: str | None = None  # no topic of held messages: nothing waits on tombstones
    held_keys: list[bytes]

    def try_add(
        self,
        slot: tuple[str, int],
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: list[tuple[str, bytes]],
    ) -> bool:
        raise NotImplementedError

    def open_batch(self, slot: tuple[str, int]) -> Any:
        return _Batch(self, slot)

    def note_last(self, slot: tuple[str, int], last: Any) -> None:
        del slot, last

    async def add(
        self,
        slot: tuple[str, int],
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        self.try_add(slot, key, value, timestamp_ms, headers)


class _Batch:
    """An open batch whose builder's ``append`` is the fake's ``try_add`` (never full)."""

    def __init__(self, out: AppendsLikeBatches, slot: tuple[str, int]) -> None:
        self._relative_offset = 0
        self._builder = self
        self._out, self._slot = out, slot

    def append(
        self,
        offset: int,
        timestamp: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> bool:
        del offset
        return self._out.try_add(self._slot, key, value, timestamp, headers)

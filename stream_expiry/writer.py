"""Index writes that keep the order of writes without stalling the service's loop.

The rule (../shared/DESIGN.md): a batch's states reach the index only after the broker
acknowledged the batch's outputs, and its offsets are committed to Kafka only after that.
Waiting for each ack and each SQLite transaction in the loop would make every batch (and
every tick of due timers) pay a broker round trip plus a commit before the next one starts.

So each batch is *submitted*: a task awaits the previous submission, then the batch's acks,
then writes. Submissions therefore reach the index in program order, each after its own
outputs are durable, and a crash anywhere loses nothing (the index is behind, never ahead).
Until a submission is written, its states shadow the index for lookups, so the next batch
sees them; its offsets become committable only once it is written.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from stream_expiry.errors import BrokerError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterable, Mapping

    from stream_expiry.model import Stamp
    from stream_expiry.store import Index, Slot

__all__ = ["OrderedWriter", "all_acked"]

MAX_IN_FLIGHT = 4  # submissions not yet written; the loop waits beyond this (backpressure)


async def all_acked(acks: Iterable[Awaitable[Any]]) -> None:
    """Wait for every ack; a refusal is a :class:`BrokerError`."""
    try:
        for ack in acks:
            await ack
    except KafkaError as exc:
        raise BrokerError(f"the broker did not acknowledge an output message: {exc!r}") from exc


class OrderedWriter:
    """Write-behind for the index, in submission order, each write after its acks."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._tasks: deque[asyncio.Future[None]] = deque()
        self._shadow: dict[str, tuple[Stamp, Slot, int]] = {}
        self._seq = 0
        self.committable: dict[Slot, int] = {}  # offsets whose states are in the index

    def get(self, key: str) -> Stamp | None:
        """The latest submitted state of ``key`` not yet in the index, if any."""
        hit = self._shadow.get(key)
        return None if hit is None else hit[0]

    async def lookup(self, keys: Iterable[str]) -> dict[str, Stamp]:
        """States as the index will hold them: submitted ones first, then the index."""
        found: dict[str, Stamp] = {}
        missing: list[str] = []
        for key in keys:
            hit = self.get(key)
            if hit is None:
                missing.append(key)
            else:
                found[key] = hit
        if missing:
            found.update(await self._index.get_many(missing))
        return found

    async def submit(
        self,
        states: list[tuple[Stamp, Slot]],
        acks: list[Awaitable[Any]],
        offsets: Mapping[Slot, int] | None = None,
    ) -> None:
        """Queue a write of ``states`` (and ``offsets``) once ``acks`` are in."""
        self._check()
        self._seq += 1
        seq = self._seq
        for stamp, slot in states:
            self._shadow[stamp.identity.key] = (stamp, slot, seq)
        previous = self._tasks[-1] if self._tasks else None
        task = asyncio.ensure_future(self._write(previous, seq, states, acks, dict(offsets or {})))
        self._tasks.append(task)
        while len(self._tasks) > MAX_IN_FLIGHT:
            await self._tasks.popleft()

    async def _write(
        self,
        previous: asyncio.Future[None] | None,
        seq: int,
        states: list[tuple[Stamp, Slot]],
        acks: list[Awaitable[Any]],
        offsets: dict[Slot, int],
    ) -> None:
        if previous is not None:
            await asyncio.shield(previous)  # order; its own failure is reported by settle()
        await all_acked(acks)
        await self._index.write(states, offsets)
        shadow = self._shadow
        for stamp, _slot in states:
            key = stamp.identity.key
            hit = shadow.get(key)
            if hit is not None and hit[2] == seq:
                del shadow[key]
        self.committable.update(offsets)

    def _check(self) -> None:
        """Surface a failed write now rather than at the next settle."""
        while self._tasks and self._tasks[0].done():
            self._tasks.popleft().result()

    async def settle(self) -> None:
        """Wait until everything submitted is in the index, or raise the first failure
        (the writes after a failed one fail with it: they are never written)."""
        failure: BaseException | None = None
        while self._tasks:
            task = self._tasks.popleft()
            try:
                await task
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

"""After replay's publish: what a running instance wrote meanwhile stays the latest word.

Replay derives each changed stamp from what it read of ``expiry.stamped``, up to each
partition's end at the time. An instance still running may write a record's null (its
tombstone fired) or a newer stamp (an event moved it) after that read and before replay's
stamp lands. Replay's stamp, later on the partition, is then the record's latest message:
compaction keeps it, the next restore takes the record as live, and a deleted record comes
back with its data (a trial: 75 of 3,000 conversations expiring while `replay` ran were
tombstoned a second time after the next restart).

So once its stamps are acknowledged, replay reads each partition it wrote from where its
read ended: a record whose replay stamp follows a message another writer put there since,
with no such message after it, gets that message published again, so that it is the
latest once more (a null ends the record; a newer stamp keeps the service's expiry, as an
event after a replay does: README, "After replay"). Every replay's messages carry the
replay header, copies included: a concurrent replay's stamp is as stale as this one's, so
it never counts as the other writer's message (which would have this replay publish it
again over the null). The next round, over what came since, tells this round's copies
from the writer's own: a message the writer put between a round's read and the copy makes
the copy stale in turn, and is published again by that round. Rounds go on until one finds
nothing to mend.

Memory stays bounded: the scan notes only the keys this replay published (kept on disk, in
``published``) that another writer wrote too, and no values.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from stream_expiry.fetch import read_ranges
from stream_expiry.kafka import consumer
from stream_expiry.outbox import all_acked

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from stream_expiry.kafka_settings import Brokers
    from stream_expiry.state import KeyValue

__all__ = ["MAX_ROUNDS", "Superseded", "mend_superseded"]

log = logging.getLogger("stream_expiry.replay")

# (partition, key, value, headers, timestamp) of a message to publish again
_Message = tuple[TopicPartition, bytes, bytes | None, list[tuple[str, bytes | None]], int]

MAX_ROUNDS = 10  # rounds of checks before replay gives up and says so (each mends what it found)


@dataclass
class Superseded:
    """One partition's messages after replay's read, in log order: which of replay's
    messages another writer's message precedes (in this window) and none follows. Keeps
    an offset for every key it is shown another writer's message of, no values."""

    others: dict[bytes, int] = field(default_factory=dict)  # key -> its latest other message
    stale: dict[bytes, int] = field(default_factory=dict)  # key -> the message to publish again

    def see(self, key: bytes, offset: int, ours: bool) -> None:
        if ours:
            at = self.others.get(key)
            if at is not None:
                self.stale[key] = at
        else:
            self.others[key] = offset
            self.stale.pop(key, None)


def _replays(headers: Iterable[tuple[str, bytes | None]], name: str) -> bool:
    return any(h[0] == name for h in headers)


async def mend_superseded(
    bootstrap: Brokers,
    prod: Any,
    topic: str,
    read_ends: Mapping[int, int],
    mark: tuple[str, bytes],
    published: KeyValue,
) -> int:
    """Publish again, on ``topic``, each message another writer put after ``read_ends``
    (partition -> the offset replay's read stopped at) that a replay's message (one with
    a header named as ``mark``'s) followed, for the keys in ``published``; the copies get
    ``mark``. Returns how many records were mended."""
    starts = {TopicPartition(topic, p): end for p, end in read_ends.items()}
    mended: set[tuple[int, bytes]] = set()
    for _ in range(MAX_ROUNDS):
        async with consumer(bootstrap) as cons:
            scans, ends = await _scan(cons, starts, mark[0], published)
            wanted = {tp: set(s.stale.values()) for tp, s in scans.items() if s.stale}
            if not wanted:
                return len(mended)
            copies = await _messages_at(cons, {tp: starts[tp] for tp in wanted}, ends, wanted)
        missing = sum(len(offsets) for offsets in wanted.values()) - len(copies)
        if missing:
            log.warning(
                "%d messages of %s to publish again after replay's stamps were not found "
                "again (compacted meanwhile?): run replay again once the instances are "
                "stopped (README, After replay)",
                missing,
                topic,
            )
        acks = []
        for tp, key, value, headers, timestamp in copies:
            mended.add((tp.partition, key))
            acks.append(
                await prod.send(
                    topic,
                    key=key,
                    value=value,
                    partition=tp.partition,
                    timestamp_ms=timestamp,
                    headers=[*(h for h in headers if h[0] != mark[0]), mark],
                )
            )
        await all_acked(acks)
        starts = ends
    log.warning(
        "instances kept writing the records replay changed: after %d rounds of mending, "
        "stop the instances and run replay again (README, After replay)",
        MAX_ROUNDS,
    )
    return len(mended)


async def _scan(
    cons: Any, starts: Mapping[TopicPartition, int], header: str, published: KeyValue
) -> tuple[dict[TopicPartition, Superseded], dict[TopicPartition, int]]:
    scans = {tp: Superseded() for tp in starts}
    ends: dict[TopicPartition, int] = dict(starts)
    reader = read_ranges(cons, starts)
    async with contextlib.aclosing(reader):
        async for fetched in reader:
            for part in fetched:
                ends[part.tp] = part.end
                seen = [
                    (rec.key, rec.offset, _replays(rec.headers, header))
                    for rec in part
                    if rec.key is not None
                ]
                others = list({key for key, _, replays in seen if not replays})
                found = published.multi_get(others)
                mine = {k for k, v in zip(others, found, strict=True) if v is not None}
                scan = scans[part.tp]
                for key, offset, replays in seen:
                    if replays or key in mine:
                        scan.see(key, offset, replays)
    return scans, ends


async def _messages_at(
    cons: Any,
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
    wanted: Mapping[TopicPartition, set[int]],
) -> list[_Message]:
    """The messages at the ``wanted`` offsets (read again: the scan kept no values)."""
    found: list[_Message] = []
    reader = read_ranges(cons, starts, ends={tp: ends[tp] for tp in starts})
    async with contextlib.aclosing(reader):
        async for fetched in reader:
            for part in fetched:
                offsets = wanted[part.tp]
                for rec in part:
                    if rec.offset in offsets and rec.key is not None:
                        found.append(
                            (part.tp, rec.key, rec.value, list(rec.headers), rec.timestamp)
                        )
    return found

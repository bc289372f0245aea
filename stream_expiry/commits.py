"""The consumer group's offsets, committed from what the outbox settled, and the stores'
changelog positions checkpointed beside them.

An input offset is committed only once every effect of the records before it is settled
(acknowledged by the broker and written to its store): the outbox says which
(``Outbox.committable``). Each commit also marks, in the partition's store, the message
before the committed offset (its key and timestamp), so that an offset committed into a
cluster rebuilt meanwhile is found out at the next assignment
(:func:`stream_expiry.reading.resume_point`), not trusted to skip the new cluster's
messages.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError

from stream_expiry.state.store import input_position_name, position_marks

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from aiokafka import AIOKafkaConsumer

    from stream_expiry.outbox import Outbox
    from stream_expiry.state import PartitionProcessor

__all__ = ["CHECKPOINT_ALL_EVERY_S", "COMMIT_EVERY_S", "COMMIT_TIMEOUT_S", "OffsetCommits"]

log = logging.getLogger("stream_expiry.commits")

Slot = tuple[str, int]

COMMIT_EVERY_S = 1.0
CHECKPOINT_ALL_EVERY_S = 10.0  # the positions of stores not written since the last commit
COMMIT_TIMEOUT_S = 10.0  # an offset commit given up after this (retried with the next)
INPUT_MARKS = 1024  # slices remembered per partition for the marks of commits


class OffsetCommits:
    """Commits for the partitions in ``processors`` (the service's own mapping, read at
    each commit: a partition revoked meanwhile is not committed)."""

    def __init__(
        self,
        processors: Mapping[Slot, PartitionProcessor],
        describe: Callable[[BaseException], str] = str,
        on_rebalance: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._processors = processors
        self._describe = describe
        # Told when a commit was refused because the group rebalanced: the partitions may
        # be another member's already (stream_expiry.fence). The flag: routine, the group
        # is rebalancing with this member in it (not dropped from it).
        self._on_rebalance = on_rebalance
        self.committed_at = 0.0  # monotonic
        self._checkpointed_at = 0.0  # every store's positions (monotonic)
        # Per input partition: the next offset after each slice decided -> the key and
        # timestamp of its last message, for the mark of the offset a commit saves.
        self._marks: dict[Slot, dict[int, tuple[bytes | None, int]]] = {}
        # Per input partition: the offset last committed with its mark (in its store).
        self._committed: dict[Slot, int] = {}

    @property
    def due(self) -> bool:
        """Time for the loop's commit (once every ``COMMIT_EVERY_S``)."""
        return time.monotonic() - self.committed_at >= COMMIT_EVERY_S

    def decided(self, slot: Slot, last: Any) -> None:
        """A slice of ``slot`` ending with the record ``last`` was decided."""
        marks = self._marks.setdefault(slot, {})
        marks[last.offset + 1] = (last.key, last.timestamp)
        if len(marks) > INPUT_MARKS:
            del marks[next(iter(marks))]

    def forget(self, slot: Slot) -> None:
        self._marks.pop(slot, None)
        self._committed.pop(slot, None)

    def resumed(self, slot: Slot, offset: int) -> None:
        """The partition resumes at ``offset``, the group's committed offset, and its
        store holds the mark of that commit (the positioning checked it): the offset a
        commit with no slice end below it may commit again, marked. Without it, a
        partition given back by a rebalance, or kept over a restart, with a create parked
        before its first slice end committed that create's offset unmarked for as long as
        it stayed parked (a review)."""
        self._committed[slot] = offset

    def marked(self, slot: Slot, offset: int) -> int:
        """``offset``, or the greatest offset below it that a slice ended at, which a
        commit can mark (:meth:`_mark_committed`). A partition with a create parked (its
        record's running life not expired yet) is settled up to that create, where no
        slice ends: its commits went unmarked, and the check for a cluster rebuilt
        meanwhile passed them over (a review). Reading a few more events again after a
        crash is all it costs. With none left below it (the commit drops the marks it
        passes, and a partition keeps the last ``INPUT_MARKS``), the offset last committed
        with its mark: a create parked for minutes is committed at again and again, and
        from the second commit on they went unmarked (a review)."""
        marks = self._marks.get(slot)
        if marks and offset in marks:
            return offset
        below = [m for m in marks or () if m <= offset]
        if below:
            return max(below)
        last = self._committed.get(slot)
        return last if last is not None and last <= offset else offset

    async def commit(
        self, cons: AIOKafkaConsumer, outbox: Outbox, *, every_store: bool = True
    ) -> bool:
        """Commit the settled input offsets of the partitions owned, and checkpoint their
        stores' changelog positions, one store write per partition. Returns False when the
        commit failed (said; the offsets wait for the next one).

        ``every_store=False`` (the loop's commit, once a second): only the stores written
        since the last commit are checkpointed, the others every ``CHECKPOINT_ALL_EVERY_S``.
        With 144 partitions on one instance every commit wrote each store twice (its
        positions, then its input offset's mark), and those 288 writes stalled the loop
        and the timers for ~0.1 s a second (bench.e2e_partitions, py-spy: 11 % of the
        service's samples). An idle store's position only lags behind others' messages on
        the changelog partition it shares: a crash costs re-reading them, no more."""
        metas = self._checkpoints(outbox, every_store)
        committable = outbox.committable
        owned = {
            TopicPartition(t, p): self.marked((t, p), o)
            for (t, p), o in committable.items()
            if (t, p) in self._processors
        }
        committable.clear()
        self.committed_at = time.monotonic()
        committed = not owned or await self._commit_offsets(cons, outbox, owned)
        if owned and committed:
            self._mark_committed(owned, metas)
        for slot, meta in metas.items():
            proc = self._processors.get(slot)
            if proc is not None:
                proc.store.set_meta(meta)
        return committed

    def _checkpoints(self, outbox: Outbox, every_store: bool) -> dict[Slot, dict[str, int]]:
        """The changelog positions to save, per input partition (see :meth:`commit`)."""
        written = outbox.take_written()
        now = time.monotonic()
        if every_store or now - self._checkpointed_at >= CHECKPOINT_ALL_EVERY_S:
            self._checkpointed_at = now
            slots = list(self._processors)
        else:
            slots = [slot for slot in written if slot in self._processors]
        metas: dict[Slot, dict[str, int]] = {}
        for slot in slots:
            proc = self._processors[slot]
            moved = proc.checkpoint_meta(outbox.runs(proc))
            if moved:
                metas[slot] = moved
        return metas

    async def _commit_offsets(
        self, cons: AIOKafkaConsumer, outbox: Outbox, owned: dict[TopicPartition, int]
    ) -> bool:
        """Commit ``owned``; on a failure keep the offsets for the next commit, say so and
        return False."""
        failed: str | None = None
        level = logging.WARNING
        try:
            # Bounded: aiokafka retries a commit without end while the cluster does not know
            # the topic (one rebuilt after a loss), and the loop, a revocation and a stop
            # all waited on it while /readyz said ready.
            with anyio.fail_after(COMMIT_TIMEOUT_S):
                await cons.commit(owned)
        except CommitFailedError as exc:
            # Its text is several lines of advice about slow processing; here the group
            # moved on. aiokafka raises it from the group's answer: RebalanceInProgressError
            # while a rebalance this member is in goes on (an instance added or leaving),
            # routine; UnknownMemberIdError or IllegalGenerationError once the group has
            # dropped the member or gone on without it (a zombie: it did not heartbeat).
            routine = isinstance(exc.__cause__, RebalanceInProgressError)
            failed = "the group is rebalancing" if routine else "the group rebalanced meanwhile"
            level = logging.INFO if routine else logging.WARNING
            if self._on_rebalance is not None:
                self._on_rebalance(f"an offset commit was refused: {failed}", routine)
        except KafkaError as exc:
            failed = self._describe(exc)
        except TimeoutError:
            failed = f"no answer within {COMMIT_TIMEOUT_S:.0f} s"
        if failed is None:
            return True
        # Only re-reading is at stake: the offsets come again with the next commit.
        log.log(level, "offset commit failed, retried with the next one: %s", failed)
        committable = outbox.committable
        for tp, offset in owned.items():
            slot = (tp.topic, tp.partition)
            committable[slot] = max(committable.get(slot, 0), offset)
        return False

    def _mark_committed(
        self, owned: dict[TopicPartition, int], metas: dict[Slot, dict[str, int]]
    ) -> None:
        """Mark the message before each committed offset, in the meta its partition's
        store is written with."""
        for tp, offset in owned.items():
            slot = (tp.topic, tp.partition)
            marks = self._marks.get(slot, {})
            mark = marks.get(offset)
            if mark is not None and slot in self._processors:
                meta = metas.setdefault(slot, {})
                meta.update(position_marks(input_position_name(*slot), offset - 1, *mark))
                self._committed[slot] = offset
            for seen in [o for o in marks if o <= offset]:
                del marks[seen]

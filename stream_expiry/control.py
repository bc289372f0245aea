"""The control topics the service follows beside its inputs: policy updates
(``expiry.policies``) and legal holds (``expiry.holds``).

Both are compacted and small. At start each is read whole before any input event is taken,
so the first record decided already sees every policy and every hold; afterwards they are
polled, without waiting, at every turn of the loop. A message that cannot be applied goes to
the dead-letter topic with its reason, like a bad input event, and the service goes on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from stream_expiry import model
from stream_expiry.codec import dead_letter_headers
from stream_expiry.holds import apply_hold_message
from stream_expiry.kafka import read_to_end
from stream_expiry.outbox import all_acked

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from stream_expiry.config import Topics
    from stream_expiry.holds import HoldBook
    from stream_expiry.policy import PolicyBook
    from stream_expiry.stats import ServiceStats

__all__ = ["ControlTopics"]

log = logging.getLogger("stream_expiry.service")


class ControlTopics:
    """Keeps the policy book and the hold book in step with their topics."""

    def __init__(
        self,
        topics: Topics,
        book: PolicyBook,
        holds: HoldBook,
        stats: ServiceStats,
        *,
        policies: AIOKafkaConsumer,
        holds_reader: AIOKafkaConsumer,
        prod: AIOKafkaProducer,
    ) -> None:
        self._topics = topics
        self._book = book
        self._holds = holds
        self._stats = stats
        self._policies = policies
        self._holds_reader = holds_reader
        self._prod = prod

    async def read_all(self) -> None:
        """Both topics from their beginning to their end (at the start of a session)."""
        async for batch in read_to_end(self._policies, self._topics.policies):
            await self._apply_policies(batch)
        async for batch in read_to_end(self._holds_reader, self._topics.holds):
            await self._apply_holds(batch)
        if len(self._holds):
            log.info("%d legal holds active", len(self._holds))

    async def poll(self) -> None:
        """Whatever arrived since the last look; never waits."""
        await self._apply_policies(await self._policies.getmany(timeout_ms=0))
        await self._apply_holds(await self._holds_reader.getmany(timeout_ms=0))

    async def _apply_policies(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        for records in batch.values():
            for rec in records:
                result = self._book.apply_update(rec.key, rec.value, rec.timestamp)
                if isinstance(result, model.Rejection):
                    await self._reject(rec, result, "policy update")
                else:
                    self._stats.policy_updates += 1
                    log.info("policy update applied: %s", result.describe())

    async def _apply_holds(self, batch: Mapping[TopicPartition, list[Any]]) -> None:
        for records in batch.values():
            for rec in records:
                hold = apply_hold_message(self._holds, rec.key, rec.value)
                if isinstance(hold, model.Rejection):
                    await self._reject(rec, hold, "legal hold")
                elif hold is None:
                    pass  # the release of a hold not active: nothing to say
                elif rec.value is None:
                    log.info("legal hold %s released", hold.hold_id)
                else:
                    log.info(
                        "legal hold %s placed on %s: %s", hold.hold_id, hold.scope(), hold.reason
                    )

    async def _reject(self, rec: Any, why: model.Rejection, what: str) -> None:
        self._stats.dead_letters += 1
        self._stats.dead_letter_codes[why.code] += 1
        log.warning("%s rejected: %s (%s)", what, why.code, why.detail)
        ack = await self._prod.send(
            self._topics.dlq, key=rec.key, value=rec.value, headers=dead_letter_headers(rec, why)
        )
        await all_acked([ack])

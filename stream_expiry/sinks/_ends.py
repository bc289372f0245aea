"""The end offsets of partitions as the broker has them now, from a Fetch's high watermark.

The sweep needs a time before which every message on its topics is in the store: the wall
clock just before asking the broker where each partition ends, once the store has applied
that far (:meth:`~stream_expiry.sinks.framework.Sink.read_complete_ms`). So the answer
must be fresh, from a request sent after that clock was read:

* ``AIOKafkaConsumer.end_offsets`` (ListOffsets) gives wrong answers on some
  Kafka-protocol brokers (../shared/BROKER.md: Tansu answers below the end);
* ``AIOKafkaConsumer.highwater`` is right everywhere, but it is the high watermark of the
  consumer's last fetch response, which may have been sent before that clock.

Every Fetch answer carries the partition's high watermark, on every broker. This sends one
Fetch per leader, through the consumer's client (aiokafka's private API, as
:mod:`stream_expiry.fetch` does), that asks for at most one byte per partition and waits for
no data: the broker answers at once, with at most one record batch per partition,
which is dropped here.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, NoError, OffsetOutOfRangeError, for_code
from aiokafka.protocol.fetch import FetchRequest

from stream_expiry.errors import BrokerError, BrokerUnavailableError
from stream_expiry.kafka import mapped

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiokafka import AIOKafkaConsumer

__all__ = ["end_offsets"]

_READ_UNCOMMITTED = 0
# Kafka answers a Fetch with min_bytes 0 at once; Tansu waits max_wait_ms whatever it
# holds, and answers nothing at all to a max_wait_ms of 0 (measured).
_WAIT_MS = 1


async def end_offsets(
    cons: AIOKafkaConsumer, at: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """The high watermark of each partition of ``at``, from a Fetch sent now at the offset
    ``at`` gives (what the caller has read: the answer then holds little or nothing).

    Raises :class:`~stream_expiry.errors.BrokerUnavailableError` for what retrying may cure
    (no leader, a connection lost), else :class:`~stream_expiry.errors.BrokerError`.
    """
    if not at:
        return {}
    client = cons._client
    cluster = client.cluster  # the consumer's metadata: it subscribes to these topics
    if any(_no_leader(cluster.leader_for_partition(tp)) for tp in at):
        try:
            cluster = await client.fetch_all_metadata()
        except KafkaError as exc:
            raise mapped(exc, "reading the partitions' leaders failed") from exc
    by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for tp, offset in at.items():
        leader = cluster.leader_for_partition(tp)
        if _no_leader(leader):
            # A leader being elected, as the consumer's own fetches would wait for.
            raise BrokerUnavailableError(f"{tp.topic}[{tp.partition}] has no leader now")
        assert leader is not None
        by_node[leader][tp.topic].append((tp.partition, offset, 1))
    requests = [
        client.send(node, FetchRequest(_WAIT_MS, 0, 1, _READ_UNCOMMITTED, list(topics.items())))
        for node, topics in by_node.items()
    ]
    ends: dict[TopicPartition, int] = {}
    # Every request is waited for, failed or not: none is left running behind a failure.
    for result in await asyncio.gather(*requests, return_exceptions=True):
        if isinstance(result, KafkaError):
            raise mapped(result, "asking for the partitions' ends failed") from result
        if isinstance(result, BaseException):
            raise result
        _take(result, ends)
    missing = set(at) - ends.keys()
    if missing:
        raise BrokerError(f"the broker gave no end for {sorted(missing)}")
    return ends


def _no_leader(leader: int | None) -> bool:
    return leader is None or leader < 0


def _take(response: Any, ends: dict[TopicPartition, int]) -> None:
    for topic, partitions in response.topics:
        for partition, code, highwater, *_ in partitions:
            tp = TopicPartition(topic, partition)
            error = for_code(code)
            if error is not NoError and error is not OffsetOutOfRangeError:
                raise mapped(error(), f"asking for the end of {tp.topic}[{tp.partition}] failed")
            ends[tp] = highwater

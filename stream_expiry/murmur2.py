"""Kafka's default partitioner, exactly as the Java client computes it.

A record in a user's compacted topic is removed only by a null value under the same key *on
the same partition*. Java producers (and librdkafka with ``murmur2_random``, and aiokafka's
``DefaultPartitioner``) place a keyed record on ``toPositive(murmur2(key)) % partitions``,
so a deletion that uses any other hash (our own topics use CRC-32) lands on a partition
Kafka never compacts together with the record: the record stays while a receipt says it is
gone. This module is that hash and nothing else: pure, no IO, no import of a Kafka client.

The algorithm is ``org.apache.kafka.common.utils.Utils.murmur2`` (seed ``0x9747b28c``) and
``Utils.toPositive`` (``n & 0x7fffffff``, not ``abs``); tests/unit/test_murmur2.py checks it
against the vectors of Kafka's own ``UtilsTest``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["murmur2", "partition_for", "to_positive"]

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash of ``data`` as Java's signed ``int``."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length % 4
    if tail == 3:
        h ^= data[end + 2] << 16
    if tail >= 2:
        h ^= data[end + 1] << 8
    if tail >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def to_positive(n: int) -> int:
    """Java's ``Utils.toPositive``: clear the sign bit (``abs`` would differ on MIN_VALUE)."""
    return n & 0x7FFFFFFF


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for a keyed record."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    return to_positive(murmur2(key)) % partitions

"""Kafka's default partitioner (stream_expiry/murmur2.py) against Kafka's own test vectors."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner

from stream_expiry.murmur2 import murmur2, partition_for, to_positive

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (clients/src/test/java/...), values as
# Java's signed int.
KAFKA_UTILS_TEST = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]
# Akka's Murmur2Spec, "expected correct hash values from the kafka murmur2 impl": every
# length of tail (1 to 3 bytes, and none).
KAFKA_SHORT = [
    (b"1", -1993445489),
    (b"12", 126087238),
    (b"123", -267702483),
    (b"1234", -1614185708),
    (b"12345", -1188365604),
]


@pytest.mark.parametrize(("data", "expected"), KAFKA_UTILS_TEST + KAFKA_SHORT)
def test_murmur2_matches_the_java_client(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_is_to_positive_of_the_hash_modulo_the_count() -> None:
    # By hand: toPositive(-790332482) = 2**31 - 790332482 = 1357151166; % 4 = 2, % 7 = 0 (7 * 193878738).
    assert to_positive(-790332482) == 1_357_151_166
    assert (partition_for(b"foobar", 4), partition_for(b"foobar", 7)) == (2, 0)
    # toPositive(479470107) = 479470107 (already positive); % 10 = 7.
    assert partition_for(b"abc", 10) == 7
    assert partition_for(b"abc", 1) == 0
    # toPositive is a mask, not abs: abs(Integer.MIN_VALUE) would stay negative in Java.
    assert to_positive(-(2**31)) == 0
    assert to_positive(-1) == 2**31 - 1


def test_no_partitions_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(b"k", 0)


def test_agrees_with_aiokafkas_default_partitioner_on_random_keys() -> None:
    """aiokafka's default partitioner is the Java client's murmur2: the test producer that
    stands in for a Java application uses it, so the two must agree on every key."""
    rng = random.Random(12)
    partitioner = DefaultPartitioner()
    for _ in range(2000):
        key = rng.randbytes(rng.randint(0, 40))
        n = rng.randint(1, 64)
        assert partition_for(key, n) == partitioner(key, list(range(n)), list(range(n)))

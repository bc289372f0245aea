"""A committed read (``stream_expiry.fetch``) of Fetch answers holding transactions, built
byte for byte as Kafka sends them: aborted transactions' batches are passed over, a
transaction still open ends the read at the last stable offset, and what is not
transactional, or committed, is read. (The test broker lists no aborted transactions in its
answers, so this part cannot be seen end to end there: tests/integration/test_transactions.py.)
"""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.protocol.fetch import FetchResponse_v4, FetchResponse_v5, FetchResponse_v11
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from stream_expiry.fetch import _answers, _Partition, _take

TP = TopicPartition("inputs", 0)
ABORT, COMMIT = 0, 1
UPSTREAM, OTHER = 7, 9  # producer ids
# Kafka's record batch header (v2): where the CRC and the attributes are, the control bit.
CRC_AT, ATTRIBUTES_AT, CONTROL = struct.calcsize(">qiib"), struct.calcsize(">qiibI"), 0x20


def raw_batch(
    base: int,
    values: list[bytes],
    *,
    producer: int = -1,
    marker: int | None = None,
) -> bytes:
    """One record batch at offset ``base``: plain (no producer), transactional
    (``producer``), or ``producer``'s transaction marker (``marker``: ABORT or COMMIT)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=producer >= 0,
        producer_id=producer,
        producer_epoch=0 if producer >= 0 else -1,
        base_sequence=0 if producer >= 0 else -1,
        batch_size=1 << 20,
    )
    if marker is not None:
        values = [b"\x00" * 6]
    for i, value in enumerate(values):
        key = struct.pack(">HH", 0, marker) if marker is not None else b"k"
        builder.append(i, timestamp=1_000, key=key, value=value, headers=[])
    buf = builder.build()
    struct.pack_into(">q", buf, 0, base)
    if marker is not None:  # only brokers write control batches: set its bit, then the CRC
        (attributes,) = struct.unpack_from(">h", buf, ATTRIBUTES_AT)
        struct.pack_into(">h", buf, ATTRIBUTES_AT, attributes | CONTROL)
        struct.pack_into(">I", buf, CRC_AT, calc_crc32c(bytes(buf[ATTRIBUTES_AT:])))
    return bytes(buf)


def response(
    version: int, records: bytes, *, high: int, stable: int, aborted: list[tuple[int, int]]
) -> Any:
    """A Fetch answer of ``version`` for one partition, encoded and decoded as it comes."""
    if version == 4:
        part: tuple[Any, ...] = (0, 0, high, stable, aborted, records)
        built: Any = FetchResponse_v4(0, [(TP.topic, [part])])
    elif version == 5:
        part = (0, 0, high, stable, 0, aborted, records)
        built = FetchResponse_v5(0, [(TP.topic, [part])])
    else:
        part = (0, 0, high, stable, 0, aborted, -1, records)
        built = FetchResponse_v11(0, 0, 0, [(TP.topic, [part])])
    return type(built).decode(io.BytesIO(built.encode()))


def read(answer: Any, start: int = 0) -> tuple[list[bytes | None], int, int]:
    """What a read of the partition from ``start`` takes: values, its position, its end."""
    part = _Partition(start)
    fetched = _take(part, TP, _answers([answer])[TP], False)
    return [rec.value for rec in fetched], fetched.position, fetched.end


# The log of an upstream with exactly-once producers: a plain event, an aborted transaction
# (an erasure and a create) interleaved with another producer's committed one, a committed
# transaction of the same upstream, and then a transaction still open.
LOG = b"".join(
    (
        raw_batch(0, [b"plain"]),
        raw_batch(1, [b"aborted delete", b"aborted create"], producer=UPSTREAM),
        raw_batch(3, [b"other committed"], producer=OTHER),
        raw_batch(4, [b"aborted again"], producer=UPSTREAM),
        raw_batch(5, [], producer=UPSTREAM, marker=ABORT),
        raw_batch(6, [], producer=OTHER, marker=COMMIT),
        raw_batch(7, [b"committed create"], producer=UPSTREAM),
        raw_batch(8, [], producer=UPSTREAM, marker=COMMIT),
        raw_batch(9, [b"after"]),
    )
)


@pytest.mark.parametrize("version", [4, 5, 11])
def test_aborted_transactions_are_passed_over_and_the_rest_is_read(version: int) -> None:
    answer = response(version, LOG, high=10, stable=10, aborted=[(UPSTREAM, 1)])
    values, position, end = read(answer)
    assert values == [b"plain", b"other committed", b"committed create", b"after"]
    assert (position, end) == (10, 10)


def test_an_answer_that_ends_inside_an_aborted_transaction_moves_past_it() -> None:
    """The position moves past the aborted batches (as past a control batch): the next
    fetch neither asks for them again nor takes the rest for a compacted tail."""
    head = raw_batch(0, [b"plain"]) + raw_batch(1, [b"delete", b"create"], producer=UPSTREAM)
    answer = response(11, head, high=10, stable=10, aborted=[(UPSTREAM, 1)])
    values, position, _end = read(answer)
    assert (values, position) == ([b"plain"], 3)


def test_a_producer_aborted_later_keeps_its_earlier_committed_transaction() -> None:
    """An aborted transaction starts at its first offset: the same producer's batches
    before it are another, committed transaction."""
    log = b"".join(
        (
            raw_batch(0, [b"committed"], producer=UPSTREAM),
            raw_batch(1, [], producer=UPSTREAM, marker=COMMIT),
            raw_batch(2, [b"aborted"], producer=UPSTREAM),
            raw_batch(3, [], producer=UPSTREAM, marker=ABORT),
        )
    )
    answer = response(11, log, high=4, stable=4, aborted=[(UPSTREAM, 2)])
    assert read(answer)[0] == [b"committed"]


def test_a_transaction_still_open_ends_the_read_at_the_last_stable_offset() -> None:
    """The broker hands a committed read nothing from the last stable offset on; the read
    ends there, not at the high watermark it could only reach by stepping over the open
    transaction once the empty answers made it look compacted away."""
    log = b"".join((raw_batch(0, [b"plain"]), raw_batch(1, [b"committed"], producer=OTHER)))
    answer = response(
        11, log + raw_batch(2, [], producer=OTHER, marker=COMMIT), high=9, stable=3, aborted=[]
    )
    values, position, end = read(answer)
    assert (values, position, end) == ([b"plain", b"committed"], 3, 3)


def test_an_answer_without_a_last_stable_offset_ends_at_the_high_watermark() -> None:
    answer = response(11, raw_batch(0, [b"plain"]), high=1, stable=-1, aborted=[])
    assert read(answer) == ([b"plain"], 1, 1)

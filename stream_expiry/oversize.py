"""Messages over the producer's size limit: what is left out, and how that is said.

A stamp carries its input's ``data`` and a dead letter its input's bytes, each plus a few
hundred bytes of fields and headers, so an input just under the limit makes an output just
over it. Refused (by aiokafka's own check in ``send``, by the broker for the record batches
the outbox sends), such a message stopped the service, and stopped it again at every start,
since the input that made it is read again: one producer's message halted deletion for its
partition, or (a control topic is read whole at every start) the whole service, for good.

Rules this module keeps:

* The limit is the producer's own ``max_request_size`` (:func:`producer_limit`), measured as
  aiokafka measures it (:func:`message_bytes`): whatever the producer was built with, a
  message this module lets through is one the producer accepts.
* A stamp too large is published without its ``data`` (``data`` null and ``data_dropped``
  ``"message_too_large"``): its expiry is what must not be lost (a record never stamped
  would never be tombstoned, data kept for good), and the data is what the stores already
  have from their own source.
* A dead letter too large keeps its headers and as much of its key and value as fits, and
  says the original length of each part it cut, and only of those, in
  ``expiry-value-truncated`` / ``expiry-key-truncated``: the partition goes on, and a
  person learns that the original must be found at its source (``expiry-source-*``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from aiokafka.record.default_records import DefaultRecordBatchBuilder

from stream_expiry import model
from stream_expiry.codec import H_DETAIL

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DATA_DROPPED",
    "DETAIL_BYTES",
    "H_KEY_TRUNCATED",
    "H_VALUE_TRUNCATED",
    "fit_dead_letter",
    "message_bytes",
    "output_limit",
    "producer_limit",
    "say_cut",
    "stamp_within",
]

log = logging.getLogger("stream_expiry.oversize")

# A dead letter cut to fit: the original value's (key's) length in bytes, in decimal.
H_VALUE_TRUNCATED: Final = "expiry-value-truncated"
H_KEY_TRUNCATED: Final = "expiry-key-truncated"
# The longest ``expiry-error-detail`` a cut dead letter keeps, in bytes.
DETAIL_BYTES: Final = 1024
# ``data_dropped`` of a stamp published without its data.
DATA_DROPPED: Final = "message_too_large"

Headers = list[tuple[str, bytes]]
# Within this of the limit a stamp is measured exactly: more than the record's framing and
# any headers the service gives a stamp.
_NEAR: Final = 64 * 1024


def producer_limit(prod: Any) -> int:
    """The largest message ``prod`` accepts: its ``max_request_size`` (aiokafka keeps it
    private; its upper bound is pinned, and the tests read it through here)."""
    return int(prod._max_request_size)


def output_limit(prod: Any, topic_limit: int | None) -> int:
    """The largest message to publish with ``prod`` to topics that take at most
    ``topic_limit`` bytes (their ``max.message.bytes``, None: unknown)."""
    limit = producer_limit(prod)
    return limit if topic_limit is None else min(limit, topic_limit)


def message_bytes(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """A message's size as aiokafka's producer compares it with ``max_request_size``: one
    record in a batch of its own, with the batch's header."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers)))


def stamp_within(
    limit: int,
    state: model.Stamp,
    data: Any,
    redacted: Sequence[str],
    key: bytes,
    headers: Sequence[tuple[str, bytes]],
    *,
    dropped_before: str | None = None,
) -> tuple[bytes, bool]:
    """The stamp's value, and whether its data had to be dropped to fit in ``limit``.
    ``dropped_before``: the ``data_dropped`` of the stamp this one re-publishes (replay),
    kept, so that the data's absence is still explained.

    Measured only when near the limit: a stamp is encoded per event, and aiokafka's
    estimate costs more than the rest of a stamp's way out. ``headers`` are the service's
    own (where the record came from), far below :data:`_NEAR`."""
    value = model.encode_stamp(state, data, redacted, data_dropped=dropped_before)
    if data is None or len(value) + len(key) < limit - _NEAR:
        return value, False
    if message_bytes(key, value, headers) <= limit:
        return value, False
    return model.encode_stamp(state, None, redacted, data_dropped=DATA_DROPPED), True


def fit_dead_letter(
    key: bytes | None, value: bytes | None, headers: Headers, limit: int
) -> tuple[bytes | None, bytes | None, Headers, bool]:
    """``(key, value, headers, truncated)`` of a dead letter that fits in ``limit``.

    Unchanged when it fits (the contract's "original bytes, unchanged"). Otherwise the
    value is cut, and the key too when it takes more than half the room, each cut said by
    a header with its original length, and only a cut: a header on an intact value (a
    message too large for its key alone) would send a person to the source for bytes the
    dead letter already has. The headers say why the message was rejected and where the
    original is, and stay whole, except a detail longer than :data:`DETAIL_BYTES` (it may
    quote a field of the message, which may be the large part)."""
    if message_bytes(key, value, headers) <= limit:
        return key, value, headers, False
    key_len, value_len = len(key or b""), len(value or b"")
    said = [
        (
            name,
            text[:DETAIL_BYTES] + b"..." if name == H_DETAIL and len(text) > DETAIL_BYTES else text,
        )
        for name, text in headers
    ]
    cuts = [(H_VALUE_TRUNCATED, b"%d" % value_len), (H_KEY_TRUNCATED, b"%d" % key_len)]
    # Room for key and value, with both cuts said, and the length varints they may need.
    room = limit - message_bytes(b"", b"", [*said, *cuts]) - 16
    if room < 0:
        raise ValueError(f"a dead letter's headers alone exceed the limit of {limit} bytes")
    if key is not None and key_len > room // 2:
        key = key[: room // 2]
    if value is not None:
        value = value[: room - len(key or b"")]
    was_cut = (len(value or b"") < value_len, len(key or b"") < key_len)
    said.extend(header for header, cut in zip(cuts, was_cut, strict=True) if cut)
    return key, value, said, True


def say_cut(rec: Any, limit: int, key: bytes | None, value: bytes | None) -> None:
    """The warning of a dead letter of ``rec`` cut to ``key`` and ``value`` to fit ``limit``
    (:func:`fit_dead_letter`): the input's and the control topics' dead letters alike. It
    names only what was cut, as the headers do, so that log and message agree."""
    log.warning(
        "the dead letter of %s[%d]@%d is over the producer's limit of %d bytes: published with %s",
        rec.topic,
        rec.partition,
        rec.offset,
        limit,
        _cuts_said(rec, key, value),
    )


def _cuts_said(rec: Any, key: bytes | None, value: bytes | None) -> str:
    """What :func:`say_cut` reports cut: key and value each named only if shorter than
    ``rec``'s, with the header that gives the original length."""
    said = [
        f"its {part} cut to {len(now or b'')} of {len(was or b'')} bytes (header {header})"
        for part, now, was, header in (
            ("value", value, rec.value, H_VALUE_TRUNCATED),
            ("key", key, rec.key, H_KEY_TRUNCATED),
        )
        if len(now or b"") < len(was or b"")
    ]
    return " and ".join(said) or "only its error detail shortened"

"""What replay keeps of each record's latest message on ``expiry.stamped``
(:class:`stream_expiry.changelog.Current`): where it goes back, its value, and the
requests of the erasures a legal hold deferred that the stamp names."""

from __future__ import annotations

import pytest

from stream_expiry.changelog import Current, Latest
from stream_expiry.codec import H_DEFERRED_REQUESTS, source_headers

DEFERRED = b'[[1700000000000,true,"conversations[0]@1","gdpr-2"]]'


@pytest.mark.parametrize(
    ("headers", "value", "deferred"),
    [
        (source_headers("conversations", 3), None, None),
        (source_headers("conversations", 3), b'{"created_at":1}', None),
        (
            [*source_headers("conversations", 3), (H_DEFERRED_REQUESTS, DEFERRED)],
            b'{"created_at":1}',
            DEFERRED,
        ),
        ([(H_DEFERRED_REQUESTS, DEFERRED)], b"", DEFERRED),  # no source, an empty value
    ],
    ids=["null", "stamp", "stamp-deferred", "no-source"],
)
def test_a_kept_message_unpacks_to_what_was_packed(
    headers: list[tuple[str, bytes]], value: bytes | None, deferred: bytes | None
) -> None:
    source = ("conversations", 3) if len(headers) > 1 else None
    raw = Current.pack(7, headers, value)
    assert Current.unpack(raw) == Latest(7, source, value, deferred)


def test_a_null_keeps_no_deferred_requests() -> None:
    """A null ends the record, and its erasures with it: nothing to carry."""
    headers = [*source_headers("conversations", 3), (H_DEFERRED_REQUESTS, DEFERRED)]
    assert Current.unpack(Current.pack(0, headers, None)).deferred is None

"""What replay keeps of each record's latest message on ``expiry.stamped``
(:class:`stream_expiry.changelog.Current`): where it goes back, its value, the requests
of the erasures a legal hold deferred that the stamp names, and the expiry it says was due
when its event arrived; and which of those headers a stamp replay publishes in its place
keeps."""

from __future__ import annotations

import pytest

from stream_expiry.changelog import Current, Latest
from stream_expiry.codec import H_DEFERRED_REQUESTS, H_DUE_AT_INGEST, source_headers
from stream_expiry.model import Identity, Stamp
from stream_expiry.replay import _carried_headers

DEFERRED = b'[[1700000000000,true,"conversations[0]@1","gdpr-2"]]'
DUE = 1_700_000_600_000


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
        (
            [*source_headers("conversations", 3), (H_DUE_AT_INGEST, b"%d" % DUE)],
            b'{"created_at":1}',
            None,
        ),
        (
            [
                *source_headers("conversations", 3),
                (H_DUE_AT_INGEST, b"%d" % DUE),
                (H_DEFERRED_REQUESTS, DEFERRED),
            ],
            b'{"created_at":1}',
            DEFERRED,
        ),
    ],
    ids=["null", "stamp", "stamp-deferred", "no-source", "stamp-due", "stamp-due-deferred"],
)
def test_a_kept_message_unpacks_to_what_was_packed(
    headers: list[tuple[str, bytes]], value: bytes | None, deferred: bytes | None
) -> None:
    source = ("conversations", 3) if any(n == "expiry-source-topic" for n, _ in headers) else None
    due = DUE if value is not None and (H_DUE_AT_INGEST, b"%d" % DUE) in headers else None
    raw = Current.pack(7, headers, value)
    assert Current.unpack(raw) == Latest(7, source, value, deferred, due)


def test_an_unreadable_due_at_ingest_is_not_kept() -> None:
    """As a restore reads it (``codec.due_at_ingest_of``): not a number, not a header."""
    headers = [*source_headers("conversations", 3), (H_DUE_AT_INGEST, b"soon")]
    assert Current.unpack(Current.pack(0, headers, b"{}")) == Latest(
        0, ("conversations", 3), b"{}", None, None
    )


def _stamp(expires_at: int | None) -> Stamp:
    identity = Identity("acme", "_", "live", "conversation", "late")
    return Stamp(identity, DUE - 3_600_000, expires_at, 3_600_000, "default")


def test_a_stamp_published_with_the_same_expiry_keeps_its_due_at_ingest() -> None:
    """Published again only to redact its data: its life was due on arrival as before,
    and a restore from it says its late tombstone's cause (``late_event``)."""
    assert _carried_headers(_stamp(DUE), None, DUE) == [(H_DUE_AT_INGEST, b"%d" % DUE)]
    assert _carried_headers(_stamp(DUE), DEFERRED, DUE) == [
        (H_DEFERRED_REQUESTS, DEFERRED),
        (H_DUE_AT_INGEST, b"%d" % DUE),
    ]


@pytest.mark.parametrize("expires_at", [DUE - 60_000, DUE + 60_000, None])
def test_a_stamp_published_with_another_expiry_drops_its_due_at_ingest(
    expires_at: int | None,
) -> None:
    """The expiry moved (or never comes): the header named the life's old end."""
    assert _carried_headers(_stamp(expires_at), None, DUE) == []
    assert _carried_headers(_stamp(expires_at), DEFERRED, DUE) == [(H_DEFERRED_REQUESTS, DEFERRED)]


def test_a_null_keeps_no_deferred_requests() -> None:
    """A null ends the record, and its erasures with it: nothing to carry."""
    headers = [*source_headers("conversations", 3), (H_DEFERRED_REQUESTS, DEFERRED)]
    assert Current.unpack(Current.pack(0, headers, None)).deferred is None

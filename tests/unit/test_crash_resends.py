"""The crash harness's check of re-sent tombstones (``resends_that_differ``).

The README tells a consumer of ``expiry.tombstones`` that a re-sent tombstone repeats the
first but for ``emitted_at`` (and an ``expiry-late-cause`` it may gain), so that one
deletion is its key, ``reason``, ``created_at`` and ``expiry-deleted-at``, and a receipt's
id can be derived from them. The SIGKILL test holds the service to that through this check;
these tests hold the check to what it must find and what it must let pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from stream_expiry.testing.crash import resends_that_differ

KEY = b"acme/_/live/conversation/c1"
BODY: dict[str, Any] = {
    "org": "acme", "bot": "_", "env": "live", "category": "conversation", "record_id": "c1",
    "created_at": "2026-12-06T10:00:00.000Z", "expires_at": "2026-12-06T10:00:03.000Z",
    "emitted_at": "2026-12-06T10:00:03.000Z", "reason": "ttl", "ttl_seconds": 3,
    "ttl_source": "default",
}  # fmt: skip
HEADERS = [
    ("expiry-source-topic", b"conversations"),
    ("expiry-source-partition", b"0"),
    ("expiry-deleted-at", b"1796551202999"),
]


@dataclass
class Rec:
    """What the check reads of a consumed tombstone (aiokafka's records fit)."""

    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: list(HEADERS))
    key: bytes = KEY


def tombstone(headers: list[tuple[str, bytes]] | None = None, **changes: Any) -> Rec:
    return Rec(orjson.dumps(BODY | changes), list(HEADERS) if headers is None else headers)


def test_a_resend_later_and_late_is_the_same_deletion() -> None:
    late = [*HEADERS, ("expiry-late-cause", b"catch_up")]
    resend = tombstone(late, emitted_at="2026-12-06T10:02:00.000Z")
    assert resends_that_differ([tombstone(), resend]) == []


def test_a_resend_with_another_expiry_or_source_is_reported() -> None:
    moved = tombstone(expires_at="2026-12-06T10:00:04.000Z", ttl_seconds=4)
    other_source = tombstone([*HEADERS[:1], ("expiry-source-partition", b"1"), HEADERS[2]])
    found = resends_that_differ([tombstone(), moved, other_source])
    assert found == [
        f"{KEY!r}: fields ['expires_at', 'ttl_seconds'], headers []",
        f"{KEY!r}: fields [], headers ['expiry-source-partition']",
    ]


def test_another_life_or_another_erasure_is_another_deletion() -> None:
    next_life = tombstone(created_at="2026-12-06T10:00:05.000Z", ttl_seconds=9)
    erasure = tombstone(
        [*HEADERS[:2], ("expiry-deleted-at", b"1796551201000"), ("expiry-request", b"c[0]@1")],
        reason="explicit",
    )
    assert resends_that_differ([tombstone(), next_life, erasure]) == []

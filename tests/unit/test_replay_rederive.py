"""Replay's re-derivation keeps one answer per scope for the creation times it holds for:
records of one scope on both sides of a policy update get each their own TTL."""

from __future__ import annotations

import orjson

from stream_expiry.config import parse_config
from stream_expiry.model import Identity
from stream_expiry.policy import PolicyBook
from stream_expiry.replay import _Rederive

DAY = 86_400_000
CONFIG = '[retention.defaults]\nconversation = "90d"\nsession = "1d"\n'


def key(record_id: str, category: str = "conversation") -> bytes:
    return Identity("acme", "b1", "live", category, record_id).key.encode()


def test_records_of_one_scope_either_side_of_an_update_get_their_own_ttl() -> None:
    book = PolicyBook(parse_config(CONFIG), {})
    update = {"scope": "org", "org": "acme", "ttl": {"conversation": "10d"}}
    book.apply_update(b"org/acme", orjson.dumps({**update, "effective_from": 10 * DAY}), 1)
    rederive = _Rederive(book, frozenset({"session"}))
    # Alternate sides, so that a kept answer is asked about the other side's times too.
    for created, ttl in [(DAY, 90), (11 * DAY, 10), (2 * DAY, 90), (12 * DAY, 10)]:
        expires, ttl_ms, _source = rederive.expiry(key(f"r{created}"), {}, created)
        assert (expires, ttl_ms) == (created + ttl * DAY, ttl * DAY), created


def test_a_sliding_record_counts_from_its_last_activity() -> None:
    rederive = _Rederive(PolicyBook(parse_config(CONFIG), {}), frozenset({"session"}))
    body = {"last_activity_at": "1970-01-03T00:00:00.000Z"}
    assert rederive.expiry(key("s", "session"), body, DAY)[0] == 2 * DAY + DAY
    assert rederive.expiry(key("c"), body, DAY)[0] == DAY + 90 * DAY  # not sliding

"""Repeated keys in control documents: found at any depth, named with their path."""

from __future__ import annotations

import pytest

from stream_expiry.repeated_keys import RepeatedKey, repeated_key


@pytest.mark.parametrize(
    ("document", "key", "path"),
    [
        (b'{"org": "acme", "reason": "r", "org": "other"}', "org", "org"),
        (b'{"ttl": {"session": "30d", "session": "1d"}}', "session", "ttl.session"),
        (b'{"a": [1, {"b": {"c": 1, "c": 2}}]}', "c", "a[1].b.c"),
        (b'[{"x": 1}, {"y": 1, "y": 2}]', "y", "[1].y"),
        (b'{"t": {"a.b": 1, "a.b": 2}}', "a.b", 't["a.b"]'),
        # Values alike but deep inside: they differ, so the key is named.
        (b'{"n": {"a": [1, {"b": 1}], "a": [1, {"b": 2}]}}', "a", "n.a"),
        # An inner repeat that differs, under an outer key repeated alike.
        (b'{"o": {"x": 1, "x": 2}, "o": {"x": 1, "x": 2}}', "x", "o.x"),
        # Equal in Python, not in JSON (1 == True == 1.0): other values, so refused. Taken
        # as alike, the reader kept the last (``effective_from`` 1, a time in 1970, where
        # ``true`` was written first), while the rule says a key given twice with
        # different values is refused.
        (b'{"effective_from": true, "effective_from": 1}', "effective_from", "effective_from"),
        (b'{"n": 0, "n": false}', "n", "n"),
        (b'{"n": 1, "n": 1.0}', "n", "n"),
        (b'{"t": {"a": [1], "a": [true]}}', "a", "t.a"),
        (b'{"t": {"a": {"b": 0}, "a": {"b": false}}}', "a", "t.a"),
    ],
)
def test_the_first_repeated_key_is_named_with_its_path(
    document: bytes, key: str, path: str
) -> None:
    found = repeated_key(document)
    assert found == RepeatedKey(key, path)
    assert repr(key) in found.detail()


def test_the_detail_says_where_the_key_is_and_why_the_document_is_refused() -> None:
    top = repeated_key(b'{"org": "a", "org": "b"}')
    inner = repeated_key(b'{"ttl": {"session": "30d", "session": "1d"}}')
    assert top is not None
    assert inner is not None
    assert top.detail() == (
        "key 'org' is given twice (at the top level): which of its values was meant is "
        "unknown, so the document is refused; give each key once"
    )
    assert inner.detail().startswith("key 'session' is given twice (at 'ttl.session'):")


@pytest.mark.parametrize(
    "document",
    [
        b"{}",
        b'{"org": "acme", "ttl": {"org": "1d", "session": "2d"}}',  # a key again, elsewhere
        b'[{"a": 1}, {"a": 2}]',  # one key in two objects
        # Given again alike: both readings are one (an earlier version's hold, kept).
        b'{"org": "acme", "reason": "r", "reason": "r"}',
        b'{"ttl": {"a": "1d", "b": "2d"}, "ttl": {"b": "2d", "a": "1d"}}',
        b'"a string"',
        b"12",
    ],
)
def test_documents_giving_each_key_once_pass(document: bytes) -> None:
    assert repeated_key(document) is None


def test_a_document_nested_beyond_the_standard_librarys_reach_is_refused() -> None:
    """orjson reads 1,024 levels; the standard library's recursion stops sooner, so such a
    document cannot be checked, and is refused with a reason rather than let through."""
    deep = b"[" * 1_020 + b"]" * 1_020
    found = repeated_key(deep)
    assert found is not None
    assert found.key is None
    assert "nests too deep" in found.detail()

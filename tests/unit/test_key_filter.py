"""The restore's filter of the keys it wrote (stream_expiry.state.key_filter): it may say a
key was written when it was not, never the other way round, and the compiled test-and-set
is the Python one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_expiry import native
from stream_expiry.model import Identity, Stamp
from stream_expiry.state import MemoryKV, PartitionStore
from stream_expiry.state.key_filter import KeyFilter, _seen_in_python

KEY_LISTS = st.lists(st.lists(st.binary(max_size=12), max_size=30), max_size=6)


@settings(max_examples=300)
@given(KEY_LISTS, st.sampled_from([1, 2, 64]))
def test_a_key_given_before_is_always_said_to_be_seen(calls: list[list[bytes]], size: int) -> None:
    bits = bytearray(size)
    given_before: set[bytes] = set()
    for keys in calls:
        seen = set(_seen_in_python(bits, keys))
        for i, key in enumerate(keys):
            if key in given_before or key in keys[:i]:
                assert i in seen
        given_before.update(keys)


@settings(max_examples=300)
@given(KEY_LISTS, st.sampled_from([1, 8, 1024]))
def test_the_compiled_filter_answers_and_sets_as_the_python_one(
    calls: list[list[bytes]], size: int
) -> None:
    if native.compiled is None:
        pytest.skip("the compiled codec is not built (or turned off)")
    ours, theirs = bytearray(size), bytearray(size)
    for keys in calls:
        assert native.compiled.seen_keys(ours, keys) == _seen_in_python(theirs, keys)
        assert ours == theirs


def test_the_compiled_filter_refuses_what_it_cannot_read() -> None:
    if native.compiled is None:
        pytest.skip("the compiled codec is not built (or turned off)")
    with pytest.raises(ValueError, match="power of two"):
        native.compiled.seen_keys(bytearray(3), [b"a"])
    with pytest.raises(TypeError, match="bytes"):
        native.compiled.seen_keys(bytearray(8), ["a"])  # type: ignore[list-item]


def test_a_filter_is_sized_for_the_keys_expected_within_bounds() -> None:
    assert KeyFilter(0).size == 8 * 1024
    assert KeyFilter(1_000_000).size == 2 * 1024 * 1024  # 16 bits a key, a power of two
    assert KeyFilter(10**9).size == 16 * 1024 * 1024
    keys = [b"org/_/live/session/%d" % i for i in range(100_000)]
    sized = KeyFilter(len(keys))
    assert len(sized.seen(keys)) < 0.03 * len(keys)  # new keys: false positives only, few
    assert sized.seen(keys) == list(range(len(keys)))  # given again: every one


def test_a_store_written_while_it_filters_looks_every_key_up_again() -> None:
    """A state written by ``write`` (the service's path) is one the filter never saw: a
    restore's row for that key must still find it, and move its timer."""
    store = PartitionStore(MemoryKV())
    assert store.start_key_filter(10)
    first = Stamp(Identity("o", "_", "live", "session", "r"), 1_000, 5_000, 4_000, "default")
    store.write([(None, first)], now_ms=0)
    row = (first.identity.key.encode(), "session", 1_000, 9_000, 8_000, "default",
           None, None, 3, None, (), None)  # fmt: skip
    store.write_restored([row], now_ms=0, meta={})
    assert [due for _, due, _ in store.due_timers(0, 10_000)] == [9_000]

"""Record keys: ``Identity.key`` and the two ways back from it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.model import Identity, decode_key, identity_of_key

PART = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.~-]{1,12}", fullmatch=True),  # the common, plain part
    st.text(min_size=1, max_size=12),  # anything: '/', '%', spaces, any script
)


@given(st.tuples(PART, PART, PART, PART, PART))
def test_both_decoders_give_back_the_identity_of_a_key(parts: tuple[str, ...]) -> None:
    identity = Identity(*parts)
    for decode in (decode_key, identity_of_key):
        back = decode(identity.key)
        assert back.parts() == identity.parts()
        assert back.key == identity.key


@pytest.mark.parametrize("key", ["a/b/c/d", "a/b/c/d/e/f", ""])
def test_a_key_without_five_parts_is_refused(key: str) -> None:
    for decode in (decode_key, identity_of_key):
        with pytest.raises(ValueError, match="5 parts"):
            decode(key)


@pytest.mark.parametrize("key", ["o/b/live/conversation/%FF", "o/%C3/live/conversation/r"])
def test_a_key_whose_escapes_are_not_utf8_is_refused(key: str) -> None:
    """Not a key an identity makes: decoding it with replacement characters would name
    another record (two such keys would even share one)."""
    for decode in (decode_key, identity_of_key):
        with pytest.raises(UnicodeDecodeError):  # a ValueError, which callers expect
            decode(key)

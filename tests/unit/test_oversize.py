"""Outputs held to the producer's size limit (``stream_expiry.oversize``): what fits is
unchanged, what does not is cut or left without its data, and the result always fits, as
aiokafka's producer measures it."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_expiry import oversize
from stream_expiry.codec import H_DETAIL, H_ERROR, source_headers
from stream_expiry.model import Identity, Stamp

LIMIT = 4096
STAMP = Stamp(Identity("acme", "_", "live", "conversation", "c1"), 1_000, 61_000, 60_000, "org")
KEY = STAMP.identity.key.encode()
SOURCE = source_headers("conversations", 3)


def _headers(detail: bytes = b"category 'weather' is not configured") -> oversize.Headers:
    return [(H_ERROR, b"unknown_category"), (H_DETAIL, detail), *SOURCE]


def test_a_dead_letter_that_fits_is_the_original_unchanged() -> None:
    headers = _headers()
    assert oversize.fit_dead_letter(b"k", b"v" * 100, headers, LIMIT) == (
        b"k",
        b"v" * 100,
        headers,
        False,
    )


@settings(max_examples=200, deadline=None)
@given(
    key_len=st.one_of(st.none(), st.integers(0, 3 * LIMIT)),
    value_len=st.one_of(st.none(), st.integers(0, 3 * LIMIT)),
    detail_len=st.integers(1, 3 * LIMIT),
)
def test_a_dead_letter_is_cut_to_fit_and_says_what_was_cut(
    key_len: int | None, value_len: int | None, detail_len: int
) -> None:
    key = None if key_len is None else b"k" * key_len
    value = None if value_len is None else b"v" * value_len
    headers = _headers(b"d" * detail_len)
    out_key, out_value, out_headers, cut = oversize.fit_dead_letter(key, value, headers, LIMIT)
    assert oversize.message_bytes(out_key, out_value, out_headers) <= LIMIT
    if not cut:
        assert (out_key, out_value, out_headers) == (key, value, headers)
        return
    said = dict(out_headers)
    assert said[H_ERROR] == b"unknown_category"
    assert (key is None) == (out_key is None)
    assert (value is None) == (out_value is None)
    if out_value != value:
        assert said[oversize.H_VALUE_TRUNCATED] == b"%d" % (value_len or 0)
    else:
        assert oversize.H_VALUE_TRUNCATED not in said
    if out_key != key:
        assert key is not None
        assert out_key is not None
        assert key.startswith(out_key)
        assert said[oversize.H_KEY_TRUNCATED] == b"%d" % len(key)
    else:
        assert oversize.H_KEY_TRUNCATED not in said
    assert value is None or out_value is None or value.startswith(out_value)
    assert len(said[H_DETAIL]) <= oversize.DETAIL_BYTES + 3


def test_a_stamp_too_large_goes_without_its_data_and_says_why() -> None:
    value, dropped = oversize.stamp_within(LIMIT, STAMP, {"t": "x" * LIMIT}, (), KEY, SOURCE)
    body = orjson.loads(value)
    assert dropped
    assert body["data"] is None
    assert body["data_dropped"] == oversize.DATA_DROPPED
    assert body["expires_at"] == "1970-01-01T00:01:01.000Z"
    assert oversize.message_bytes(KEY, value, SOURCE) <= LIMIT


def test_a_stamp_that_fits_keeps_its_data_and_a_replayed_one_keeps_its_reason() -> None:
    value, dropped = oversize.stamp_within(LIMIT, STAMP, {"t": "hi"}, (), KEY, SOURCE)
    assert not dropped
    assert orjson.loads(value)["data"] == {"t": "hi"}
    assert "data_dropped" not in orjson.loads(value)
    again, dropped = oversize.stamp_within(
        LIMIT, STAMP, None, (), KEY, SOURCE, dropped_before=oversize.DATA_DROPPED
    )
    assert not dropped
    assert orjson.loads(again)["data_dropped"] == oversize.DATA_DROPPED


def test_a_stamp_just_over_the_limit_is_measured_not_guessed() -> None:
    """Within the fast path's margin the size is measured exactly: a stamp that fits by a
    byte keeps its data, one over by a byte loses it."""
    data = {"t": ""}
    base = oversize.message_bytes(
        KEY, oversize.stamp_within(LIMIT, STAMP, data, (), KEY, SOURCE)[0], SOURCE
    )
    fits = {"t": "x" * (LIMIT - base)}
    value, dropped = oversize.stamp_within(LIMIT, STAMP, fits, (), KEY, SOURCE)
    assert not dropped
    assert oversize.message_bytes(KEY, value, SOURCE) == LIMIT
    over = {"t": "x" * (LIMIT - base + 1)}
    assert oversize.stamp_within(LIMIT, STAMP, over, (), KEY, SOURCE)[1]


# -- what mutation testing found unchecked (scripts/mutation.sh stream_expiry/oversize.py)


def test_a_stamp_keeps_its_redacted_paths_with_or_without_its_data() -> None:
    """The paths ``[redact]`` removed say why a field is missing: a stamp that lost its
    data to the limit still names them."""
    redacted = ("user.email",)
    for data, dropped in (({"t": "hi"}, False), ({"t": "x" * LIMIT}, True)):
        value, was_dropped = oversize.stamp_within(LIMIT, STAMP, data, redacted, KEY, SOURCE)
        assert was_dropped is dropped
        assert orjson.loads(value)["redacted"] == ["user.email"]


def test_a_stamp_whose_key_takes_it_over_the_limit_is_measured() -> None:
    """The fast path counts the key too: a small value under a key of the limit's size."""
    limit = 200 * 1024
    key = b"k" * (limit - 1024)
    value, dropped = oversize.stamp_within(limit, STAMP, {"t": "x" * 2048}, (), key, SOURCE)
    assert dropped
    assert oversize.message_bytes(key, value, SOURCE) <= limit


def test_a_message_is_measured_with_its_key() -> None:
    assert (
        oversize.message_bytes(b"k" * 1000, b"", []) >= oversize.message_bytes(None, b"", []) + 1000
    )


def test_a_dead_letter_cut_keeps_half_the_room_for_a_long_key() -> None:
    """Key and value both over the limit: the key keeps half the room, the value the rest
    (a key cut shorter would waste room, a longer one leave too little of the value)."""
    key, value, _, cut = oversize.fit_dead_letter(
        b"k" * 3 * LIMIT, b"v" * 3 * LIMIT, _headers(), LIMIT
    )
    assert cut
    assert key is not None
    assert value is not None
    assert abs(len(key) - len(value)) <= 1
    assert len(key) + len(value) >= LIMIT - 512  # the headers' and framing's share


def test_a_detail_of_exactly_the_kept_length_stays_whole() -> None:
    detail = b"d" * oversize.DETAIL_BYTES
    _, _, headers, cut = oversize.fit_dead_letter(None, b"v" * 3 * LIMIT, _headers(detail), LIMIT)
    assert cut
    assert dict(headers)[H_DETAIL] == detail


def test_headers_alone_over_the_limit_are_an_error_that_says_so() -> None:
    with pytest.raises(ValueError, match="headers alone exceed the limit of 512 bytes"):
        oversize.fit_dead_letter(None, b"v" * 4096, [*_headers(), ("x", b"h" * 600)], 512)


def test_a_dead_letter_cut_for_its_key_alone_does_not_say_its_value_was_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen in a user trial: a 25 000-byte key and a 96-byte value gave a dead letter with
    its whole value and ``expiry-value-truncated: 96``, and a warning "value cut to 96 of
    96 bytes". Only the key is said cut, in the header and in the log."""
    key, value = b"k" * 3 * LIMIT, b"v" * 96
    out_key, out_value, headers, cut = oversize.fit_dead_letter(key, value, _headers(), LIMIT)
    assert cut
    assert out_value == value
    assert out_key is not None
    assert len(out_key) < len(key)
    said = dict(headers)
    assert oversize.H_VALUE_TRUNCATED not in said
    assert said[oversize.H_KEY_TRUNCATED] == b"%d" % len(key)
    rec = SimpleNamespace(topic="in", partition=0, offset=7, key=key, value=value)
    with caplog.at_level("WARNING", logger="stream_expiry.oversize"):
        oversize.say_cut(rec, LIMIT, out_key, out_value)
    assert "value cut" not in caplog.text
    assert f"its key cut to {len(out_key)} of {len(key)} bytes" in caplog.text


def test_the_warning_of_a_value_cut_names_the_value_only() -> None:
    rec = SimpleNamespace(topic="in", partition=0, offset=7, key=b"k", value=b"v" * 3 * LIMIT)
    said = oversize._cuts_said(rec, b"k", b"v" * 10)
    assert said == f"its value cut to 10 of {3 * LIMIT} bytes (header expiry-value-truncated)"

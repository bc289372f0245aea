"""Bugs a review of round 38's changes found: each test fails on the code reviewed."""

from __future__ import annotations

import argparse

import pytest

from stream_expiry.cliargs import timestamp
from stream_expiry.sinks.dsn import as_uri


@pytest.mark.parametrize(
    "dsn", ["postgresql://u@h:\u00b2/db", "postgresql://u@h/db?port=\u00b9", "host=h port=\u00b3"]
)
def test_a_port_of_superscript_digits_is_said_in_words(dsn: str) -> None:
    """``str.isdigit`` takes superscripts, ``int`` does not: the port check let Python's
    ``invalid literal for int() with base 10`` through, the message it was made to
    replace."""
    with pytest.raises(ValueError, match="is not a number from 1 to 65535") as caught:
        as_uri(dsn)
    assert "invalid literal" not in str(caught.value)


def test_a_time_of_superscript_digits_is_one_sentence_too() -> None:
    """``--at ²``: ``isdigit`` sent it to ``int``, whose ValueError argparse turned into
    'invalid timestamp value', not the sentence every other bad time gets."""
    with pytest.raises(argparse.ArgumentTypeError, match="give an RFC 3339 time"):
        timestamp("\u00b2")


def test_an_unbracketed_ipv6_host_is_refused_in_words() -> None:
    """asyncpg reads a host's port after its first colon (``fe80::1`` has the port
    ``:1``) and said ``invalid literal for int() with base 10: ':1'``; the check read it
    after the last (``1``) and let the DSN through to that message."""
    with pytest.raises(ValueError, match="is not a number from 1 to 65535"):
        as_uri("postgresql://u@fe80::1/db")

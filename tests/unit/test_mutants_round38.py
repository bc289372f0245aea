"""Tests that kill mutants of rounds 37-38's changes the unit suite let through: each passes
on the code and fails on the mutant named in its docstring (a one-token change to the
module: a comparison flipped, a constant moved by one, a statement of an ``if`` left out)."""

from __future__ import annotations

import argparse
import logging
import time

import orjson
import pytest

from stream_expiry.cliargs import hold_id
from stream_expiry.config import ConfigError, parse_config
from stream_expiry.durations import UnderHalfSecond, parse_duration
from stream_expiry.history import text_lines as history_text
from stream_expiry.holds import Hold, parse_hold
from stream_expiry.logs import JsonFormatter
from stream_expiry.model import MAX_ID_CHARS, Rejection
from stream_expiry.sinks.dsn import as_uri, hide_secrets, is_local, redact
from stream_expiry.status import text_lines as status_text
from stream_expiry.timeutil import (
    MAX_TS_MS,
    MIN_TS_MS,
    InvalidTimestamp,
    parse_ts,
    wall_clock_ms,
)
from tests.unit.test_dsn import parsed

AT = "2026-12-05T05:00:00.000Z"


def _history(*events: dict[str, object]) -> list[str]:
    return history_text(
        {"key": "acme/b1/live/conversation/c1", "log_ref": "r-1", "events": list(events),
         "active_holds": []}
    )  # fmt: skip


# --- cliargs -------------------------------------------------------------------------------


def test_a_hold_id_of_one_character_is_taken() -> None:
    """1 to ``MAX_ID_CHARS`` characters, as the service reads an id: ``hold place --id h``
    was refused with ``1 < len`` (or ``2 <=``), and the 512-character test alone let it."""
    assert hold_id("h") == "h"
    with pytest.raises(argparse.ArgumentTypeError, match="a hold id is 1 to"):
        hold_id("")


# --- holds --------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["org", "reason"])
def test_a_hold_without_its_org_or_reason_is_a_missing_field(missing: str) -> None:
    """The contract's hold has ``org`` and ``reason`` (no ``?``): one without either is
    dead-lettered ``missing_field``. No test sent one; taken as optional (a mutant), the
    parser then failed its own ``assert`` on an input, where it must never raise."""
    body = {"hold_id": "h1", "org": "acme", "reason": "case 7"}
    del body[missing]
    got = parse_hold(b"h1", orjson.dumps(body))
    assert isinstance(got, Rejection)
    assert (got.code, got.detail) == ("missing_field", f"field '{missing}' is required")


def test_a_hold_keyed_by_an_id_of_the_longest_length_is_a_hold() -> None:
    """``hold place --id`` takes 1 to ``MAX_ID_CHARS`` characters; the service must take the
    hold it publishes under that key. With ``>=`` for ``>`` (a mutant no test killed) such
    a legal hold was dead-lettered, the placement said done and nothing held."""
    body = orjson.dumps({"org": "acme", "reason": "case 7"})
    longest = "h" * MAX_ID_CHARS
    got = parse_hold(longest.encode(), body)
    assert isinstance(got, Hold)
    assert got.hold_id == longest
    too_long = parse_hold(longest.encode() + b"h", body)
    assert isinstance(too_long, Rejection)
    assert too_long.code == "invalid_field"


# --- logs ---------------------------------------------------------------------------------


def test_json_lines_give_the_records_time_in_utc_as_text_lines_do() -> None:
    """The JSON line's ``ts`` is the record's time, as the text line's (test_logs checks
    that one); the JSON test only checked its shape, so ``created * 1001`` (20 days late)
    passed."""
    record = logging.LogRecord("stream_expiry.x", logging.INFO, "", 0, "hello", None, None)
    record.created = 1_767_225_600.25  # 2026-01-01T00:00:00.250Z
    assert orjson.loads(JsonFormatter().format(record))["ts"] == "2026-01-01T00:00:00.250Z"


# --- sinks/dsn -----------------------------------------------------------------------------


@pytest.mark.parametrize("dsn", ["postgresql://u@h:65536/db", "host=h port=65536"])
def test_a_port_past_65535_is_refused_in_words(dsn: str) -> None:
    """The upper bound itself: 65535 is taken (test_review_round38), 65536 is not a port,
    whatever ``<= 65536`` would have let the client try."""
    with pytest.raises(ValueError, match="the port '65536' is not a number from 1 to 65535"):
        as_uri(dsn)


def test_a_password_in_a_uris_query_is_hidden_from_a_clients_message() -> None:
    """``?password=`` (or ``sslpassword=``) is a password as much as ``user:password@``: a
    client message quoting it must not reach the user (without the query's passwords in
    :func:`_secrets`, it did)."""
    dsn = "postgresql://u@h/d?password=S3cr3tPW&sslpassword=k3yPass"
    said = hide_secrets("rejected 'S3cr3tPW' and 'k3yPass' for u", dsn)
    assert said == "rejected '***' and '***' for u"


@pytest.mark.parametrize(
    ("dsn", "environ", "local"),
    [
        # libpq's default host is $PGHOST of the environment given, not the process's.
        ("dbname=test", {"PGHOST": "db.example"}, False),
        ("dbname=test", {"PGHOST": "/var/run/postgresql"}, True),
        # A URI may name its hosts in the query (``?host=``), as libpq reads it.
        ("postgresql:///test?host=db.example", {}, False),
        ("postgresql://localhost/test?host=db.example", {}, False),
    ],
)
def test_the_hosts_a_dsn_points_at_include_pghost_and_a_query_host(
    dsn: str, environ: dict[str, str], local: bool
) -> None:
    """Whether the server is this machine decides the hint of an unreachable server (how
    to start a local one, or check the host): ``?host=`` in a URI was ignored, and the
    environment given was not the one read, by mutants the suite let through."""
    assert is_local(dsn, environ=environ) is local


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        # An empty user name: the password starts right after the ``://``.
        ("postgresql://:s3cret@h/d", "postgresql://:***@h/d"),
        # No ``@``, so no password: the port is not one (it was cut as if it were).
        ("postgresql://h:5432/d", "postgresql://h:5432/d"),
    ],
)
def test_a_uris_password_is_found_at_the_edges_of_its_authority(dsn: str, shown: str) -> None:
    """Mutants of :func:`_uri_userinfo` the suite let through: the search started a
    character late (the password shown), or went on without an ``@`` (a DSN with a port
    garbled in every message that shows it)."""
    assert redact(dsn) == shown


def test_a_password_cut_in_pieces_is_hidden_whole_and_single_characters_are_left() -> None:
    """The longest piece first, so that the whole password is one ``***`` and not
    ``***/***`` (its delimiters shown); a piece of one character is left, or every such
    letter of the message would be hidden (as the docstring says; a mutant hid them)."""
    dsn = "postgresql://u:S3cr/etPW@h/d"
    said = hide_secrets("password S3cr/etPW refused, S3cr at a", dsn)
    assert said == "password *** refused, *** at a"
    assert hide_secrets("a/b: a or b", "postgresql://u:a/b@h/d") == "***: a or b"


def test_an_empty_quoted_value_reaches_the_client_empty() -> None:
    """libpq reads ``password=''`` as no password; with ``len(raw) > 2`` the two quotes
    themselves were sent as the password."""
    _addrs, params = parsed(as_uri("host=h password='' dbname=d"))
    assert (params.password, params.database) == (None, "d")


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_clock_skew = '0.3s'\n", "'max_clock_skew' at the top level"),
        ("[service]\nmarker_grace = '0.3s'\n", "'marker_grace' in [service]"),
        ("[archive]\nmarker_margin = '0.3s'\n", "'marker_margin' in [archive]"),
        ("[service]\nsession_timeout = '0.3s'\n", "'session_timeout' in [service]"),
    ],
)
def test_a_setting_that_is_not_a_ttl_under_half_a_second_does_not_speak_of_ttls(
    text: str, key: str
) -> None:
    """A surviving mutant (``minimum != 0`` for ``== 0``) showed the test of this message
    passed either way: the settings that take 0 (a clock skew, a grace, a margin) were told
    "0 gives no TTL (the other sources decide, or the record never expires)", the TTLs'
    text, as session_timeout was before ace31c9 (test_config: "which is for ttls")."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="c.toml")
    assert str(info.value).endswith(
        f": invalid duration for key {key}: '0.3s' is under half a second"
    )


def test_a_duration_that_is_not_one_names_its_key_and_table() -> None:
    """The table a key sits in, not the top level: every test of this message was of a
    top-level key, where ``where[:-2]`` (a mutant) names the same place."""
    with pytest.raises(ConfigError) as info:
        parse_config("[service]\nsession_timeout = 'soon'\n", path="c.toml")
    assert str(info.value).startswith(
        "c.toml line 2: invalid duration for key 'session_timeout' in [service]: 'soon' is not"
    )


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0.0004s", "0.00001m", 0.000001])
def test_a_duration_under_a_millisecond_is_refused_as_under_half_a_second(
    value: object,
) -> None:
    """Positive but under a millisecond is still under half a second: refused, not a silent
    0 (no TTL). ``exact_ms > 1`` for ``> 0`` (a mutant) let these through as 0."""
    with pytest.raises(UnderHalfSecond, match="is under half a second"):
        parse_duration(value)


# --- history -------------------------------------------------------------------------------


def test_a_stamps_line_shows_its_erasure_request_and_redacted_paths() -> None:
    """The README's ``history``: a record's stamps with the paths ``[redact]`` removed, and
    erasure requests a hold deferred. Neither was checked: leaving either clause out of
    the line passed every unit and integration test."""
    lines = _history(
        {
            "at": AT,
            "kind": "stamp",
            "created_at": AT,
            "expires_at": "2026-12-06T05:00:00.000Z",
            "ttl_seconds": 86400,
            "ttl_source": "default",
            "erase_requested_at": "2026-12-05T06:00:00.000Z",
            "redacted": ["user.email", "user.phone"],
        }
    )
    assert lines[1].endswith(
        "(ttl 1d, 86400 s, from default), erasure asked at 2026-12-05T06:00:00.000Z (deferred),"
        " redacted user.email, user.phone"
    )


def test_a_receipt_says_how_many_times_it_was_published_only_when_more_than_once() -> None:
    """Receipts are published at least once; ``history`` shows one with its copies (the
    README). A receipt published once says nothing of copies; one published twice says so.
    Only an integration test read a receipt's line, and none one published once."""
    receipt = {"at": AT, "kind": "receipt", "store": "sq", "reason": "ttl",
               "rows_deleted": 1, "deleted_at": AT}  # fmt: skip
    once, twice = _history(receipt | {"copies": 1}, receipt | {"copies": 2})[1:3]
    assert once.endswith(f"store sq: reason ttl, rows deleted 1, deleted {AT}")
    assert twice.endswith(f"deleted {AT} (published 2 times, one receipt)")


def test_a_tombstones_line_says_its_times_and_a_dash_for_those_it_has_not() -> None:
    """The README's ``history`` lists the record's tombstones: no unit or integration test
    read their line, and leaving it out (the fields' dump instead) or ``None`` for a
    missing time passed."""
    tombstone: dict[str, object] = {
        "at": AT, "kind": "tombstone", "reason": "explicit", "emitted_at": AT
    }  # fmt: skip
    (line,) = _history(tombstone | {"expires_at": AT, "created_at": AT})[1:2]
    # (then: its request is unknown, as it names none)
    assert f"reason explicit, emitted {AT}, expires_at {AT}, created_at {AT}; " in line
    (line,) = _history(tombstone)[1:2]
    assert (
        f"emitted {AT}, expires_at -, created_at - (a record never seen, or an ended life); "
        in line
    )


# --- status --------------------------------------------------------------------------------


def test_nothing_pending_has_no_next_due_time_and_says_so_with_a_dash() -> None:
    """With nothing pending there is no next due time (``next_due`` null in the JSON): the
    line shows ``-``, not Python's ``None``."""
    d = {"at": AT, "pending": {}, "pending_total": 0, "never": 0, "next_due": None,
         "overdue": 0, "oldest_overdue": None, "holds": [], "lag": {}}  # fmt: skip
    (pending,) = [line for line in status_text(d) if line.startswith("  pending")]
    assert pending.endswith("0   next due -")
    assert "None" not in "\n".join(status_text(d))


# --- timeutil ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-31T12:00:00.1234",  # no offset: a local time, whose instant is unknown
        "2026-01-31T12:00:00,123Z",  # ISO 8601's decimal comma, not RFC 3339
    ],
)
def test_a_time_of_the_fast_paths_length_is_still_rfc_3339_or_refused(text: str) -> None:
    """The 24-character form (``toISOString()``'s) goes to :meth:`datetime.fromisoformat`,
    which takes ISO 8601 at large: these two, read with the guard's ``Z`` or ``.`` test
    flipped, were taken (the first as the machine's local time). The contract's times are
    RFC 3339 with an offset."""
    with pytest.raises(InvalidTimestamp, match="is not RFC 3339 with an offset"):
        parse_ts(text)


def test_the_first_and_last_millisecond_of_years_1_to_9999_are_times() -> None:
    """Out of range is outside years 1 to 9999, not at their edges (``MIN_TS_MS < ms``, a
    mutant, refused the first millisecond; forms that are not the fast path's, so that the
    general parser's bound is the one checked)."""
    assert parse_ts("0001-01-01T00:00:00Z") == MIN_TS_MS
    assert parse_ts("9999-12-31T23:59:59.999+00:00") == MAX_TS_MS
    for outside in ("0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59.999-00:01"):
        with pytest.raises(InvalidTimestamp, match="out of range"):
            parse_ts(outside)


def test_the_wall_clock_is_now_in_epoch_milliseconds() -> None:
    """The processing time of every stamp, tombstone and deletion; every unit test injects
    its own clock, so none read this one (``// 1_000_001`` put it 28 minutes early). Not
    a timed assertion: the value is bracketed by two readings of the system clock."""
    before = time.time_ns() // 1_000_000
    now = wall_clock_ms()
    assert before <= now <= time.time_ns() // 1_000_000

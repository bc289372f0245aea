"""Tests from a review of round 38's changes: each fails on the code reviewed."""

from __future__ import annotations

import argparse
import getpass
from types import SimpleNamespace
from typing import Any

import pytest

from stream_expiry import oversize
from stream_expiry.cliargs import hold_id
from stream_expiry.history import _mark_holds_that_kept_nothing
from stream_expiry.history import text_lines as history_text
from stream_expiry.hold_command import _by
from stream_expiry.model import MAX_ID_CHARS
from stream_expiry.sinks.dsn import as_uri
from stream_expiry.status import text_lines as status_text

STATUS = {
    "at": "2026-01-01T00:00:00.000Z",
    "pending": {"conversation": 1_234},
    "pending_total": 1_234,
    "never": 7,
    "next_due": "2026-01-01T01:00:00.000Z",
    "overdue": 2,
    "oldest_overdue": "2025-12-31T23:59:00.000Z",
    "holds": [],
    "lag": {},
}


# --- killing tests for mutants of round 38's changes that the suite let through ----------


def _ev(kind: str, hold_id: str | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"kind": kind, "topic": "t", "partition": 0, "offset": 0, "at": "x"}
    if hold_id is not None:
        e["hold_id"] = hold_id
    return e


def _kept(events: list[dict[str, Any]]) -> dict[tuple[str, str], bool]:
    _mark_holds_that_kept_nothing(events)
    return {(e["hold_id"], e["kind"]): e["kept_a_life"] for e in events if "hold_id" in e}


def test_a_hold_placed_before_a_life_it_outlasted_kept_it() -> None:
    """Placed before the record's first stamp, released after its deletion: the life ran
    while it held, though none ran at its placement or its release."""
    events = [
        _ev("hold_placed", "h"),
        _ev("stamp"),
        _ev("deleted"),
        _ev("hold_released", "h"),
        _ev("hold_placed", "active"),
        _ev("stamp"),
        _ev("deleted"),
    ]
    assert _kept(events) == {
        ("h", "hold_placed"): True,
        ("h", "hold_released"): True,
        ("active", "hold_placed"): True,
    }


def test_a_hold_that_deferred_a_deletion_kept_a_life() -> None:
    events = [_ev("hold_placed", "h"), _ev("deletion_deferred"), _ev("hold_released", "h")]
    assert _kept(events) == {("h", "hold_placed"): True, ("h", "hold_released"): True}


def test_a_key_with_nothing_on_record_names_no_holds() -> None:
    lines = history_text(
        {"key": "acme/_/live/c/r", "log_ref": "r", "events": [], "active_holds": []}
    )
    assert lines[1] == (
        "  nothing on the evidence topics for this key"
        " (check --org, --bot, --env, --category and --record-id)"
    )


def test_who_places_or_releases_a_hold_is_the_flag_else_the_account_else_nobody(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    assert _by(argparse.Namespace(by="j.doe (legal)")) == "j.doe (legal)"
    assert _by(argparse.Namespace(by=None)) == "alice"

    def nobody() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(getpass, "getuser", nobody)
    assert _by(argparse.Namespace(by=None)) is None


def test_input_events_not_read_yet_leave_out_a_partition_committed_past_its_end() -> None:
    lag = {
        "conversations[0]": {"end": 54, "committed": 72, "lag": -18},
        "conversations[1]": {"end": 13, "committed": 10, "lag": 3},
    }
    lines = status_text(STATUS | {"lag": lag})
    assert any(line.startswith("    3 input events not read") for line in lines)


def test_one_input_event_not_read_yet_is_said_in_the_singular() -> None:
    one = {"conversations[0]": {"end": 5, "committed": 4, "lag": 1}}
    assert status_text(STATUS | {"lag": one})[-1] == (
        "    1 input event not read by the service yet: what it creates or ends is not in "
        "the counts above (a lag that stays or grows: is the service running?)"
    )


def test_a_dead_letter_cut_only_in_its_detail_is_said_so() -> None:
    rec = SimpleNamespace(topic="in", partition=0, offset=7, key=b"k", value=b"v")
    assert oversize._cuts_said(rec, b"k", b"v") == "only its error detail shortened"


@pytest.mark.parametrize(("port", "taken"), [("0", False), ("1", True), ("65535", True)])
def test_a_port_is_1_to_65535(port: str, taken: bool) -> None:
    for dsn in (f"postgresql://u@h:{port}/db", f"host=h port={port}"):
        if taken:
            as_uri(dsn)
        else:
            with pytest.raises(ValueError, match=f"the port '{port}' is not a number"):
                as_uri(dsn)


def test_a_hold_id_of_512_characters_is_taken() -> None:
    assert hold_id("h" * MAX_ID_CHARS) == "h" * MAX_ID_CHARS
    with pytest.raises(argparse.ArgumentTypeError):
        hold_id("h" * (MAX_ID_CHARS + 1))

"""``history`` for a person: what it prints of messages a producer wrote, and the record it
agrees to look up."""

from __future__ import annotations

import argparse
import dataclasses
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from stream_expiry import codec
from stream_expiry.config import parse_config
from stream_expiry.errors import ConfigurationError
from stream_expiry.history import _describe, _SameId, checked_identity, open_life, text_lines
from stream_expiry.model import MAX_ID_CHARS, Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.sinks._messages import (
    Receipt,
    decode_tombstone,
    encode_receipt,
    receipt_headers,
)
from stream_expiry.timeutil import parse_ts

AT = "2026-12-05T05:00:00.000Z"
KEY = Identity("acme", "_", "live", "conversation", "c1").key.encode()


def _history(
    *events: dict[str, object], holds: list[dict[str, object]] | None = None
) -> dict[str, object]:
    return {
        "key": "acme/b1/live/conversation/c1",
        "log_ref": "r-1",
        "events": list(events),
        "active_holds": holds or [],
    }


def test_what_a_producer_wrote_cannot_drive_the_terminal_or_forge_a_line() -> None:
    """A hold's reason, a rejected event's ts and a receipt's store come from whoever can
    write to the bus; seen in a trial: an ESC sequence and a line reading like a receipt."""
    forged = "\x1b[2J\nFAKE 2026 receipt store sq: reason explicit"
    d = _history(
        {"at": AT, "kind": "hold_placed", "hold_id": "h1", "reason": "evil\x1b[31m\nline"},
        {
            "at": AT,
            "kind": "dead_letter",
            "op": "delete",
            "ts": forged,
            "error": "e",
            "detail": "d",
        },
        {"at": AT, "kind": "receipt", "store": "s\r\u202e", "reason": "ttl", "rows_deleted": 1},
        holds=[{"hold_id": "h1", "reason": "evil\x1b[31m\nline"}],
    )
    lines = text_lines(d)
    assert len(lines) == 5  # the record, three events, the active holds: none split
    assert not any(c < " " or c == "\u202e" for c in "".join(lines))
    assert "hold h1: evil\\x1b[31m\\nline" in lines[1]
    assert "(ts \\x1b[2J\\nFAKE 2026 receipt store sq: reason explicit)" in lines[2]
    assert lines[-1] == "  active legal holds on it: h1 (evil\\x1b[31m\\nline)"


def test_a_stamp_with_no_life_and_a_deferral_with_no_expiry_read_as_words() -> None:
    """An erasure asked after a life ended is stamped with no life; its deferral has no
    expiry: neither is a record never seen, nor a Python ``None``."""
    lines = text_lines(
        _history(
            {"at": AT, "kind": "stamp", "created_at": None, "erase_requested_at": AT},
            {"at": AT, "kind": "deletion_deferred", "reason": "explicit", "hold_ids": ["h"]},
        )
    )
    assert "no life (a record never seen, or one whose life had ended)" in lines[1]
    assert "explicit deletion deferred by h (expires_at -); " in lines[2]  # (no request)
    assert "None" not in "\n".join(lines)


CONFIG = parse_config("")  # the default categories: conversation, session, error


def _args(**given: str) -> argparse.Namespace:
    named = {"org": "acme", "bot": "_", "env": "live", "category": "conversation"}
    return argparse.Namespace(**(named | {"record_id": "c1"} | given))


def test_the_record_asked_for_is_checked_as_the_service_checks_ids() -> None:
    assert checked_identity(CONFIG, _args()) == Identity("acme", "_", "live", "conversation", "c1")
    with pytest.raises(
        ConfigurationError,
        match=r"--category 'conversations' is not a .*"
        r"did you mean 'conversation'\?",
    ):
        checked_identity(CONFIG, _args(category="conversations"))
    for flag, name in (("--org", "org"), ("--bot", "bot"), ("--record-id", "record_id")):
        for bad in ("", "x" * (MAX_ID_CHARS + 1)):
            with pytest.raises(ConfigurationError, match=f"^{flag} must be 1 to 512"):
                checked_identity(CONFIG, _args(**{name: bad}))
    assert checked_identity(CONFIG, _args(record_id="x" * MAX_ID_CHARS)).record_id == "x" * 512


def test_a_null_reads_as_the_lives_it_ends_not_as_a_deletion_time() -> None:
    """A ttl null's ``expiry-deleted-at`` is its life's end, a millisecond before the
    expiry: printed as "life ended" and given as ``deleted_at``, an auditor read every
    ttl deletion as early (a trial). It is the bound of the lives the null ends."""
    lines = text_lines(
        _history(
            {
                "at": AT,
                "kind": "deleted",
                "reason": "ttl",
                "ends_lives_created_by": "2026-12-05T04:59:59.999Z",
            }
        )
    )
    assert lines[1].endswith(
        "null on the changelog (reason ttl): the lives created at or before "
        "2026-12-05T04:59:59.999Z are deleted"
    )


def test_a_release_says_why_and_by_whom_apart_from_why_the_hold_was_placed() -> None:
    """The release entry repeats the placement's reason, which read as the release's own
    (a trial: 'hold_released hold hold-rec: CASE-2 record hold'); who placed or released
    a hold was nowhere."""
    stamp: dict[str, object] = {"at": AT, "kind": "stamp", "created_at": AT}
    placed: dict[str, object] = {
        "at": AT, "kind": "hold_placed", "hold_id": "h1", "reason": "case 7", "by": "ann"
    }  # fmt: skip
    released: dict[str, object] = {
        "at": AT,
        "kind": "hold_released",
        "hold_id": "h1",
        "reason": "case 7",
        "release_reason": "case closed",
        "by": "bob",
    }
    lines = text_lines(_history(stamp, placed, released))
    assert lines[2].endswith("hold h1: case 7, by ann")
    assert lines[3].endswith("hold h1 (placed for: case 7), released because: case closed, by bob")
    plain = {k: v for k, v in released.items() if k not in ("release_reason", "by")}
    assert text_lines(_history(stamp, plain))[2].endswith("hold h1 (placed for: case 7)")


def test_a_stamp_or_null_a_replay_published_says_so() -> None:
    """After ``replay --config NEW``, history showed the record's expiry moved and its TTL's
    source changed (``ttl 60 s from cap``) with nothing to say an operator's replay did
    it, though the message carries the replay's mark (a trial)."""
    stamp = {"created_at": AT, "expires_at": AT, "ttl_seconds": 60, "ttl_source": "cap"}
    marked = [("expiry-source-topic", b"conversations"), ("expiry-replay", b"run1")]

    def rec(value: bytes | None, headers: list[tuple[str, bytes]]) -> SimpleNamespace:
        return SimpleNamespace(
            timestamp=0, partition=0, offset=1, key=KEY, value=value, headers=headers
        )

    events = [
        _describe(CONFIG, "expiry.stamped", rec(orjson.dumps(stamp), marked)),
        _describe(CONFIG, "expiry.stamped", rec(None, [("expiry-reason", b"ttl"), *marked])),
        _describe(CONFIG, "expiry.stamped", rec(orjson.dumps(stamp), marked[:1])),
    ]
    assert [e.get("replay") for e in events] == ["run1", "run1", None]
    lines = text_lines(_history(*events))
    assert lines[1].endswith("(ttl 1m, 60 s, from cap), published by replay run1")
    assert lines[2].endswith("are deleted, published by replay run1")
    assert "replay" not in lines[3]


def test_a_stamp_due_on_arrival_says_so_as_a_restore_reads_it() -> None:
    """A stamp whose life was already due when its event was read carries
    ``expiry-due-at-ingest`` (its expiry): its tombstone says ``late_event``. History did
    not say it, so an auditor saw a late tombstone with nothing on the stamp to explain it.
    Read as a restore reads it: only a header equal to the stamp's ``expires_at`` counts."""
    stamp = {"created_at": AT, "expires_at": AT, "ttl_seconds": 60, "ttl_source": "cap"}
    expires = b"%d" % parse_ts(AT)
    source = ("expiry-source-topic", b"conversations")

    def described(headers: list[tuple[str, bytes]]) -> dict[str, Any]:
        rec = SimpleNamespace(
            timestamp=0, partition=0, offset=1, key=KEY, value=orjson.dumps(stamp), headers=headers
        )
        return _describe(CONFIG, "expiry.stamped", rec)

    events = [
        described([source, (codec.H_DUE_AT_INGEST, expires)]),
        described([source, (codec.H_DUE_AT_INGEST, b"%d" % (parse_ts(AT) - 1))]),
        described([source]),
    ]
    assert [e.get("due_at_ingest") for e in events] == [AT, None, None]
    lines = text_lines(_history(*events))
    assert lines[1].endswith(
        "(ttl 1m, 60 s, from cap), due on arrival: its life's expiry had passed when the event "
        "was read"
    )
    assert "due on arrival" not in "\n".join(lines[2:])


def test_a_rejected_events_op_takes_its_article() -> None:
    """ "a erase event (ts ...) rejected" on an audit's evidence (a trial: a producer's
    ``op: erase``, dead-lettered as unknown_op)."""
    rejected = {"at": AT, "kind": "dead_letter", "ts": 1, "error": "e", "detail": "d"}
    lines = text_lines(_history({**rejected, "op": "erase"}, {**rejected, "op": "delete"}))
    assert f"  {AT}  dead_letter       an erase event (ts 1) rejected: e (d)" in lines
    assert f"  {AT}  dead_letter       a delete event (ts 1) rejected: e (d)" in lines


def _stamped(stamp: Stamp) -> dict[str, Any]:
    """``stamp`` as history reads it from ``expiry.stamped``."""
    return _stamped_value(stamp.identity.key.encode(), encode_stamp(stamp))


def _stamped_value(key: bytes, value: bytes) -> dict[str, Any]:
    """A message of ``expiry.stamped`` as history reads it."""
    rec = SimpleNamespace(timestamp=0, partition=0, offset=1, key=key, value=value, headers=[])
    return _describe(CONFIG, "expiry.stamped", rec)


def test_the_life_an_old_erasure_under_a_hold_names_not_is_not_shown_as_held() -> None:
    """An erasure dated before the creation of the record's last life, read again under a
    hold after that life expired, is deferred naming no life, its stamp keeping that life
    (``Stamp.ended_life``) for the release to give back. ``history`` listed it under
    ``held_lives``: a life the hold kept, its deletion to come, though its tombstone went
    out before the hold and the release sends none for it. It is ``ended_life``; an
    erasure read while that one waits is still held, and a life a hold keeps while the
    record's next life runs is still listed as held."""
    i = Identity("acme", "_", "live", "conversation", "c1")
    t = 1_800_000_000_000
    ended = (t + 200, t + 60_200, 60_000, "default", None)
    deferral = Stamp(i, None, None, None, None, None, t + 100, True, None, t + 60_199, (ended,))
    assert deferral.ended_life == ended  # the processor's shape
    shown = _stamped(deferral)
    assert "held_lives" not in shown
    assert shown["ended_life"] == {
        "created_at": "2027-01-15T08:00:00.200Z",
        "expires_at": "2027-01-15T08:01:00.200Z",
        "ttl_seconds": 60,
        "ttl_source": "default",
        "erase_requested_at": None,
    }
    line = text_lines(_history(shown))[1]
    assert line.endswith(
        "no life (a record never seen, or one whose life had ended), erasure asked at "
        "2027-01-15T08:00:00.100Z (deferred), dated before the creation "
        "(2027-01-15T08:00:00.200Z) of the life that expired 2027-01-15T08:01:00.200Z, "
        "tombstoned before the hold"
    )
    another = deferral._replace(held_lives=(ended, (None, None, None, None, t + 50)))
    shown = _stamped(another)
    assert shown["ended_life"]["created_at"] == "2027-01-15T08:00:00.200Z"
    assert [life["erase_requested_at"] for life in shown["held_lives"]] == [
        "2027-01-15T08:00:00.050Z"
    ]
    running = Stamp(i, t + 90_000, t + 150_000, 60_000, "default", held_lives=(ended,))
    shown = _stamped(running)
    assert "ended_life" not in shown
    assert [life["created_at"] for life in shown["held_lives"]] == ["2027-01-15T08:00:00.200Z"]


def _message(topic: str, value: bytes | None, headers: list[tuple[str, bytes]]) -> dict[str, Any]:
    """A message of ``topic`` keyed by the record, as history reads it."""
    rec = SimpleNamespace(timestamp=0, partition=0, offset=1, key=KEY, value=value, headers=headers)
    return _describe(CONFIG, topic, rec)


def test_history_shows_a_deletions_headers_as_the_stores_keep_them() -> None:
    """An erasure's request and a late deletion's cause are read by one reader
    (``codec.request_of``, ``codec.late_cause_of``) for the stores and for ``history``.
    History read them apart: U+0000 shown as ``\\x00`` on the tombstone's line where the
    receipt's (the store's text, U+FFFD) said U+FFFD, so one request read as two; and a
    cause no version of the service writes shown whole and bare, as a word of its own."""
    s = Stamp(Identity("acme", "_", "live", "conversation", "c1"), 0, 60_000, 60_000, "org")
    erased = encode_tombstone(s, reason="explicit", emitted_at=90_000)
    asked = [
        (codec.H_REQUEST, b"conversations[2]@1041"),
        (codec.H_REQUEST_EVENT_ID, b"g\x00-7\xff"),
    ]
    sink = decode_tombstone(KEY, erased, asked)
    shown = _message("expiry.tombstones", erased, asked)
    said = (shown["request"], shown["request_event_id"])
    assert (
        said
        == (sink.request, sink.request_event_id)
        == ("conversations[2]@1041", "g\ufffd-7\ufffd")
    )
    kept = Receipt("r1", "sq", s.identity, "explicit", 1, 0, 60_000, 60, "org", 90_000, 90_001)
    kept = dataclasses.replace(kept, request=sink.request, request_event_id=sink.request_event_id)
    receipt = _message("expiry.receipts", encode_receipt(kept), receipt_headers(kept))
    assert (receipt["request"], receipt["request_event_id"]) == said
    lines = text_lines(_history(shown, receipt))
    assert all(
        line.endswith("the erasure request event_id 'g\ufffd-7\ufffd' at conversations[2]@1041")
        for line in lines[1:3]
    )

    expired = encode_tombstone(s, reason="ttl", emitted_at=190_000)
    late = [(codec.H_LATE_CAUSE, b"x\x00" + b"y" * 100)]
    shown = _message("expiry.tombstones", expired, late)
    assert (
        shown["late_cause"]
        == decode_tombstone(KEY, expired, late).late_cause
        == "x\ufffd" + "y" * 62
    )
    line = text_lines(_history(shown))[1]
    assert line.endswith(
        f"; late ('x\ufffd{'y' * 62}': a cause this version does not know, shown up to 64 bytes)"
    )
    known = _message("expiry.tombstones", expired, [(codec.H_LATE_CAUSE, b"hold")])
    assert text_lines(_history(known))[1].endswith(
        "; late (hold: a legal hold kept it until its release)"
    )
    # An event id without its request names no request, for history as for the stores.
    alone = [(codec.H_REQUEST_EVENT_ID, b"gdpr-7")]
    assert decode_tombstone(KEY, erased, alone).request_event_id is None
    assert "request_event_id" not in _message("expiry.tombstones", erased, alone)


def test_an_erasure_that_names_no_request_says_its_request_is_unknown() -> None:
    """An erasure deferred by an earlier version is carried out at the release by a
    tombstone (and null, and receipts) naming no request: history said nothing of a
    request there, which read as an erasure no one asked for. It says the request is
    unknown, and why it may be; an expiry's deletion says nothing of requests."""
    s = Stamp(Identity("acme", "_", "live", "conversation", "c1"), 0, 60_000, 60_000, "org")
    erased = _message("expiry.tombstones", encode_tombstone(s, reason="explicit", emitted_at=1), [])
    expired = _message("expiry.tombstones", encode_tombstone(s, reason="ttl", emitted_at=1), [])
    kept = Receipt("r1", "sq", s.identity, "explicit", 1, 0, 60_000, 60, "org", 90_000, 90_001)
    receipt = _message("expiry.receipts", encode_receipt(kept), receipt_headers(kept))
    deferred: dict[str, object] = {"at": AT, "kind": "deletion_deferred", "reason": "explicit"}
    lines = text_lines(_history(erased, receipt, deferred, expired))
    unknown = "; the erasure request unknown (not named: an earlier version sent or deferred it"
    assert [unknown in line for line in lines[1:5]] == [True, True, True, False]
    assert "request" not in lines[4]
    assert "request" not in erased  # the JSON as it was: no request said


_ERASED = "2027-01-15T08:00:00.100Z"
_LIFE = {
    "created_at": "2027-01-15T08:00:00.200Z",
    "expires_at": "2027-01-15T08:01:00.200Z",
    "ttl_seconds": 60,
    "ttl_source": "default",
    "erase_requested_at": None,
}


@pytest.mark.parametrize(
    ("given", "apart"),
    [
        pytest.param({}, True, id="no-life-an-erasure-an-ended-life-first"),
        pytest.param(
            {"held_lives": [_LIFE, {**_LIFE, "created_at": None, "erase_requested_at": _ERASED}]},
            True,
            id="and-an-erasure-read-while-it-waited",
        ),
        pytest.param({"created_at": _ERASED, "expires_at": _ERASED}, False, id="a-life-runs"),
        pytest.param({"created_at": 0}, False, id="a-life-created-at-epoch-0-as-a-number"),
        pytest.param({"created_at": ""}, False, id="a-creation-that-is-no-time"),
        pytest.param({"erase_requested_at": None}, False, id="no-erasure"),
        pytest.param({"erase_requested_at": 0}, True, id="an-erasure-at-epoch-0-as-a-number"),
        pytest.param({"erase_requested_at": ""}, False, id="an-empty-erasure"),
        pytest.param({"erase_requested_at": "soon"}, False, id="an-erasure-that-is-no-time"),
        pytest.param({"held_lives": []}, False, id="no-held-lives"),
        pytest.param({"held_lives": {}}, False, id="held-lives-an-empty-object"),
        pytest.param(
            {"held_lives": [{**_LIFE, "created_at": None}]}, False, id="held-erasures-only"
        ),
        pytest.param(
            {"held_lives": [{**_LIFE, "created_at": 0}]}, True, id="a-life-created-at-epoch-0"
        ),
        pytest.param(
            {"held_lives": [{**_LIFE, "created_at": "soon"}]}, False, id="a-life-no-time-made"
        ),
        pytest.param(
            {"held_lives": [{**_LIFE, "expires_at": "soon"}]}, False, id="a-life-no-time-ends"
        ),
        pytest.param({"held_lives": [[1, 2, 3, 4, 5]]}, False, id="a-life-not-an-object"),
    ],
)
def test_history_gives_a_life_apart_exactly_when_the_processor_reads_it_as_ended(
    given: dict[str, Any], apart: bool
) -> None:
    """``history`` shows an ``ended_life`` for the stamps whose :attr:`Stamp.ended_life`
    the service reads (``codec.decode_stamp``), and for no other: it checked the shape
    again on the JSON, and the two drifted (an erasure at epoch 0 given as a number was
    one for the processor and not for history; an ended life or an erasure that is no
    time was one for history, whose stamp the service cannot read)."""
    body = {
        "org": "acme", "bot": "_", "env": "live", "category": "conversation",
        "record_id": "c1", "created_at": None, "expires_at": None, "ttl_seconds": None,
        "ttl_source": None, "erase_requested_at": _ERASED, "held_lives": [_LIFE],
    } | given  # fmt: skip
    value = orjson.dumps(body)
    try:
        ended = codec.decode_stamp(KEY, value).ended_life
    except ValueError:
        ended = None
    shown = _stamped_value(KEY, value)
    assert ("ended_life" in shown) == (ended is not None) == apart
    if ended is not None:
        assert shown["ended_life"] == body["held_lives"][0]
        assert shown.get("held_lives", []) == body["held_lives"][1:]
    else:
        assert shown.get("held_lives") == body["held_lives"]


def test_a_stamp_says_the_earlier_lives_a_hold_keeps_beside_the_running_one() -> None:
    """A record erased under a hold and created again: the new life's stamp carries the
    held life (``held_lives``), its data and its deferred erasure, until the release. The
    text said only "created ..., expires ..." of the new life (a trial), so an officer read
    the held life as gone, or the erasure as dropped; the JSON had it. Each held life is
    said, oldest first: its creation and expiry, and its erasure when one was asked; an
    erasure kept with no life of its own (created null) as that."""
    i = Identity("acme", "_", "live", "conversation", "c1")
    t = 1_800_000_000_000
    expired = (t, t + 60_000, 60_000, "default", None)
    erased = (t + 70_000, t + 130_000, 60_000, "default", t + 71_000)
    alone = (None, None, None, None, t + 72_000)
    running = Stamp(
        i, t + 90_000, t + 150_000, 60_000, "default", held_lives=(expired, erased, alone)
    )
    line = text_lines(_history(_stamped(running)))[1]
    assert line.endswith(
        "created 2027-01-15T08:01:30.000Z, expires 2027-01-15T08:02:30.000Z (ttl 1m, 60 s, "
        "from default); a legal hold keeps its earlier lives: created 2027-01-15T08:00:00.000Z, "
        "expires 2027-01-15T08:01:00.000Z; created 2027-01-15T08:01:10.000Z, expires "
        "2027-01-15T08:02:10.000Z, erasure asked at 2027-01-15T08:01:11.000Z; an erasure "
        "asked at 2027-01-15T08:01:12.000Z"
    )
    one = text_lines(_history(_stamped(running._replace(held_lives=(expired,)))))[1]
    assert one.endswith(
        "; a legal hold keeps its earlier life: created 2027-01-15T08:00:00.000Z, expires "
        "2027-01-15T08:01:00.000Z"
    )
    assert "keeps" not in text_lines(_history(_stamped(running._replace(held_lives=()))))[1]


def test_a_life_no_null_has_ended_is_said_due_or_overdue_and_what_may_keep_it() -> None:
    """A record past its expiry and not deleted (a stopped archive under `[archive]
    required`, a hold, a stopped service): history listed its stamp and nothing after, so
    an officer could not tell "not deleted yet" from a listing that left the deletion
    out (a trial). The running life is said: due when, or overdue since when as of when,
    and that a hold keeps it or what else may; a life a null ended is not."""
    created, expires = "2027-01-15T08:00:00.000Z", "2027-01-15T08:01:00.000Z"
    stamp: dict[str, Any] = {"at": created, "kind": "stamp", "created_at": created}
    stamp["expires_at"] = expires
    null: dict[str, Any] = {
        "at": expires,
        "kind": "deleted",
        "reason": "ttl",
        "ends_lives_created_by": expires,
    }
    before, after = 1_800_000_030_000, 1_800_000_090_000  # 08:00:30, 08:01:30
    assert open_life([stamp, null], after) is None
    running = open_life([stamp], before)
    assert running == {
        "created_at": created,
        "due_at": expires,
        "erasure": False,
        "as_of": "2027-01-15T08:00:30.000Z",
        "overdue": False,
    }
    lines = text_lines(_history(stamp) | {"open_life": running})
    assert (
        lines[-2] == "  not deleted: due 2027-01-15T08:01:00.000Z (as of 2027-01-15T08:00:30.000Z)"
    )
    overdue = open_life([stamp], after)
    assert overdue is not None
    assert overdue["overdue"] is True
    lines = text_lines(_history(stamp) | {"open_life": overdue})
    assert lines[-2].startswith(
        "  not deleted, due since 2027-01-15T08:01:00.000Z (as of 2027-01-15T08:01:30.000Z): "
        "no active hold keeps it: the archive has not written its latest stamp yet"
    )
    held = _history(stamp, holds=[{"hold_id": "h1", "reason": "case"}]) | {"open_life": overdue}
    assert text_lines(held)[-2].endswith(
        "(as of 2027-01-15T08:01:30.000Z): a legal hold keeps it (below)"
    )
    # A next life after the deletion runs; an erasure deferred is due at its request.
    later = "2027-01-15T08:02:00.000Z"
    again: dict[str, Any] = {"at": later, "kind": "stamp", "created_at": later, "expires_at": None}
    assert open_life([stamp, null, again], after) == {
        "created_at": later, "due_at": None, "erasure": False,
        "as_of": "2027-01-15T08:01:30.000Z", "overdue": False,
    }  # fmt: skip
    erased = stamp | {"erase_requested_at": "2027-01-15T08:00:10.000Z"}
    due = open_life([stamp, erased], before)
    assert due is not None
    assert (due["due_at"], due["overdue"]) == ("2027-01-15T08:00:10.000Z", True)


def test_an_overdue_erasure_is_not_said_to_wait_for_the_archive() -> None:
    """An erasure a hold deferred, due at its request and overdue once the hold is
    released: the text gave the archive as a cause ("the archive has not written its
    latest stamp yet"), which an erasure never waits for (the contract: not delayed);
    only a service stopped or behind leaves it. JSON ``erasure`` says whose ``due_at``."""
    created = "2027-01-15T08:00:00.000Z"
    stamp: dict[str, Any] = {"at": created, "kind": "stamp", "created_at": created}
    stamp |= {"expires_at": "2027-01-15T09:00:00.000Z"}
    erased = stamp | {"erase_requested_at": "2027-01-15T08:00:10.000Z"}
    life = open_life([erased], 1_800_000_090_000)  # 08:01:30
    assert life is not None
    assert (life["due_at"], life["erasure"], life["overdue"]) == (
        "2027-01-15T08:00:10.000Z", True, True,
    )  # fmt: skip
    line = text_lines(_history(erased) | {"open_life": life})[-2]
    assert line == (
        "  not deleted, due since 2027-01-15T08:00:10.000Z (as of 2027-01-15T08:01:30.000Z): "
        "no active hold keeps it, and an erasure waits for no archive: the service is stopped "
        "or behind; `stream-expiry status` says which (overdue, lag)"
    )


def test_a_late_erasure_says_why_in_words_of_an_erasure() -> None:
    """An erasure a hold deferred, or one the service read late, is late after its
    request, not after an expiry: its words say so; an expiry's keep theirs."""
    tomb = {"at": AT, "kind": "tombstone", "emitted_at": AT, "created_at": AT}
    lines = text_lines(
        _history(
            {**tomb, "reason": "explicit", "late_cause": "hold"},
            {**tomb, "reason": "explicit", "late_cause": "catch_up"},
            {**tomb, "reason": "ttl", "late_cause": "late_event"},
        )
    )
    assert "; late (hold: a legal hold deferred it until its release)" in lines[1]
    assert "; late (catch_up: the service read the request late" in lines[2]
    assert "; late (late_event: the event that made it due came after its expiry)" in lines[3]


def test_a_receipt_names_the_life_it_deleted() -> None:
    """A record with two lives (a life a hold kept and the next one, or a record created
    again after an erasure) has a receipt for each from every store: the text said the
    store, the reason and when, not which life, so an auditor could not tell whether the
    held life's deletion was among them (a trial; the JSON has ``created_at``). A receipt
    that names no life (an erasure of a record never seen) says nothing of one."""
    later = "2026-12-05T06:00:00.000Z"
    receipt = {"at": AT, "kind": "receipt", "store": "sq", "reason": "ttl", "rows_deleted": 0,
               "deleted_at": later}  # fmt: skip
    lines = text_lines(_history(receipt | {"created_at": AT}, receipt | {"created_at": None}))
    assert lines[1].endswith(f"store sq: reason ttl, rows deleted 0 of the life created {AT}, "
                             f"deleted {later}")  # fmt: skip
    assert lines[2].endswith(f"store sq: reason ttl, rows deleted 0, deleted {later}")


def test_an_erasure_rejected_for_an_id_of_another_type_or_an_env_in_capitals_is_the_records() -> (
    None
):
    """Erasure requests with ``"record_id": 123`` (a number) or ``"env": "Live"`` are
    dead-lettered (``invalid_field``) and carried out nowhere; `history` of record
    ``123`` showed neither, so the record read as one never asked to be erased (a
    trial). Each is the record's, with how it named it (``named_as``): a number whose
    JSON text is the id, an env that is the record's but for case. Another id, a
    ``true`` for ``1``, or an env rejected for something else, is not."""
    from stream_expiry.history import _named_as

    record = Identity("acme", "_", "live", "conversation", "123")

    def letter(error: str, **body: object) -> SimpleNamespace:
        value = {"org": "acme", "category": "conversation", "op": "delete", "ts": 1} | body
        return SimpleNamespace(value=orjson.dumps(value), headers=[(codec.H_ERROR, error.encode())])

    assert _named_as(letter("invalid_field", record_id=123), record) == {"record_id": "123"}
    assert _named_as(letter("invalid_field", record_id="123", env="Live"), record) == {
        "env": "Live"
    }
    assert _named_as(letter("invalid_field", record_id=124), record) is None
    one = Identity("acme", "_", "live", "conversation", "1")
    assert _named_as(letter("invalid_field", record_id=True), one) is None
    assert _named_as(letter("invalid_field", record_id="123", env="Draft"), record) is None
    assert _named_as(letter("unknown_op", record_id=123), record) is None
    assert _named_as(letter("invalid_field", record_id="123", env=1), record) is None


def test_a_life_due_before_the_erasure_asked_of_it_is_due_since_its_expiry() -> None:
    """A life a hold kept past its expiry, then asked to be erased: `history` said it was
    due since the erasure request, not since its expiry, so an auditor asking how long a
    hold had kept a record past its deletion got the shorter answer (a trial, by the
    time between the two: 24 s there, months where a request comes late). Its
    ``due_at`` is the earlier of the two; ``erasure`` still says an erasure is asked,
    which waits for no archive."""
    created = "2027-01-15T08:00:00.000Z"
    stamp: dict[str, Any] = {"at": created, "kind": "stamp", "created_at": created}
    stamp |= {"expires_at": "2027-01-15T08:00:30.000Z"}
    erased = stamp | {"erase_requested_at": "2027-01-15T08:01:00.000Z"}
    life = open_life([stamp, erased], 1_800_000_090_000)  # 08:01:30
    assert life is not None
    assert (life["due_at"], life["erasure"], life["overdue"]) == (
        "2027-01-15T08:00:30.000Z", True, True,
    )  # fmt: skip


def test_a_stamps_ttl_reads_as_the_policy_writes_it() -> None:
    """``ttl 2592000 s from default`` (a trial): an auditor asking what TTL a record got had
    to divide to see the 30 days the policy and ``explain`` say. The unit comes first, the
    seconds beside it; a TTL of whole seconds alone reads as it did."""

    def line(ttl: int) -> str:
        stamp = {"created_at": AT, "expires_at": AT, "ttl_seconds": ttl, "ttl_source": "org"}
        rec = SimpleNamespace(
            timestamp=0, partition=0, offset=1, key=KEY, value=orjson.dumps(stamp), headers=[]
        )
        return text_lines(_history(_describe(CONFIG, "expiry.stamped", rec)))[1]

    assert line(2_592_000).endswith("(ttl 30d, 2592000 s, from org)")
    assert line(180).endswith("(ttl 3m, 180 s, from org)")
    assert line(90).endswith("(ttl 90 s from org)")


def test_an_erasure_under_another_bot_is_said_beside_the_record_it_did_not_erase() -> None:
    """An erasure request that left out the bot (``bot`` ``_``) went out as a tombstone
    naming no life and deleted nothing, while the record of bot ``b1`` lived on; that
    record's history said only "also on the changelog under --bot '_': another record"
    (a trial), an auditor left to guess that the request meant it. The explicit null under
    the other key says an erasure was asked there; an expiry's null does not."""
    me = Identity("acme", "b1", "live", "conversation", "c-q")
    near = _SameId(me)

    def null(bot: str, reason: bytes) -> SimpleNamespace:
        other = Identity("acme", bot, "live", "conversation", "c-q").key.encode()
        return SimpleNamespace(key=other, value=None, headers=[(codec.H_REASON, reason)])

    near.look([null("_", b"explicit"), null("b2", b"ttl")])
    found = near.found()
    assert found == [
        {"org": "acme", "bot": "_", "env": "live", "erased": True},
        {"org": "acme", "bot": "b2", "env": "live", "erased": False},
    ]
    lines = text_lines(_history() | {"same_id_elsewhere": found})
    assert lines[2:4] == [
        "  this org, category and record id are also on the changelog under --bot '_' --env "
        "'live': another record, erased there on request (an erasure under another bot or env "
        "does not erase this one: check the ids the request gave)",
        "  this org, category and record id are also on the changelog under --bot 'b2' --env "
        "'live': another record",
    ]


def test_the_same_record_id_under_the_org_in_another_case_is_named() -> None:
    """A trial: ``history --org Omega`` of a record of ``omega`` said only "nothing on the
    evidence topics": ids are case-sensitive, and the hint named other bots and envs of
    the same org only. An org in another case is named too; another org is not."""
    me = Identity("Omega", "_", "live", "conversation", "c-1")
    near = _SameId(me)

    def stamp_of(org: str, record_id: str = "c-1") -> SimpleNamespace:
        key = Identity(org, "_", "live", "conversation", record_id).key.encode()
        return SimpleNamespace(key=key, value=b"{}", headers=[])

    near.look([stamp_of("omega"), stamp_of("other"), stamp_of("omega", "c-2")])
    found = near.found()
    assert found == [{"org": "omega", "bot": "_", "env": "live", "erased": False}]
    history = _history() | {"key": me.key, "same_id_elsewhere": found}
    assert text_lines(history)[2] == (
        "  this category and record id are, with the org in another case (ids are "
        "case-sensitive), also on the changelog under --org 'omega' --bot '_' --env 'live': "
        "another record"
    )

"""How ``history`` orders a record's events and finds its dead letters (pure parts)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson

from stream_expiry.codec import H_REKEYED_FROM, dead_letter_headers
from stream_expiry.history import (
    _in_order,
    _mark_holds_that_kept_nothing,
    _names,
    _one_per_receipt,
    dead_letter_event,
    text_lines,
)
from stream_expiry.model import Identity, Rejection


def _e(kind: str, topic: str, partition: int, offset: int, at: str) -> dict[str, Any]:
    return {"kind": kind, "topic": topic, "partition": partition, "offset": offset, "at": at}


def test_a_partitions_log_order_stands_against_an_earlier_timestamp_after_it() -> None:
    """A stamp timestamped 3 ms after the null that follows it in the log was listed after
    the null: the record read as created again after its deletion (a trial)."""
    events = [
        _e("stamp", "stamped", 0, 5, "2026-12-05T10:00:00.003Z"),
        _e("deleted", "stamped", 0, 6, "2026-12-05T10:00:00.000Z"),
        _e("tombstone", "tombstones", 0, 9, "2026-12-05T10:00:00.000Z"),
        _e("receipt", "receipts", 1, 2, "2026-12-05T10:00:01.000Z"),
        _e("stamp", "stamped", 1, 0, "2026-12-05T09:59:59.000Z"),
    ]
    ordered = [(e["topic"], e["partition"], e["offset"]) for e in _in_order(events)]
    assert ordered == [
        ("stamped", 1, 0),
        ("tombstones", 0, 9),
        ("stamped", 0, 5),
        ("stamped", 0, 6),
        ("receipts", 1, 2),
    ]


def test_a_dead_letter_with_a_null_bot_or_env_names_the_default_one() -> None:
    """The service reads ``"bot": null`` as the default bot ``_`` (and a null env as
    live); history looked for a bot named None and missed the rejected erasure."""
    identity = Identity("acme", "_", "live", "conversation", "r1")
    body = {"org": "acme", "bot": None, "env": None, "category": "conversation",
            "record_id": "r1", "op": "delete"}  # fmt: skip
    assert _names(SimpleNamespace(value=orjson.dumps(body)), identity)
    assert _names(SimpleNamespace(value=orjson.dumps({**body, "bot": "_"})), identity)
    del body["bot"]
    assert _names(SimpleNamespace(value=orjson.dumps(body)), identity)
    assert not _names(SimpleNamespace(value=orjson.dumps({**body, "bot": "b2"})), identity)


def _letter(body: dict[str, Any], *, rekeyed_from: str | None = None) -> dict[str, Any]:
    """``body`` rejected from ``conversations[0]@6`` (by rekey when ``rekeyed_from`` is
    None, by the service reading rekey's copy otherwise), as history lists it."""
    topic = "conversations" if rekeyed_from is None else "conversations.by-record"
    rec = SimpleNamespace(topic=topic, partition=0, offset=6)
    headers = dead_letter_headers(rec, Rejection("bad_timestamp", "not a date"))
    if rekeyed_from is not None:
        headers.append((H_REKEYED_FROM, rekeyed_from.encode()))
    letter = SimpleNamespace(
        timestamp=0, partition=1, offset=0, value=orjson.dumps(body), headers=headers
    )
    return dead_letter_event(letter, "expiry.dlq")


def test_a_rejected_erasure_request_names_its_event_id_and_where_it_was_produced() -> None:
    """A compliance officer matches requests to deletions by id: a carried-out erasure's
    tombstone and receipt say "the erasure request event_id 'gdpr-1' at T[p]@o", but a
    rejected one (a bad ts, say) said "a delete event (ts ...) rejected" with neither its
    event_id nor where it was produced (a trial helper's finding)."""
    body = {"org": "acme", "category": "conversation", "record_id": "r1", "op": "delete",
            "ts": "2026-13-01T00:00:00Z", "event_id": "gdpr-1"}  # fmt: skip
    entry = _letter(body)
    assert (entry["event_id"], entry["source"]) == ("gdpr-1", "conversations[0]@6")
    (line,) = [x for x in text_lines(_history(entry)) if "dead_letter" in x]
    assert line.endswith(
        "a delete event (ts 2026-13-01T00:00:00Z; event_id 'gdpr-1' at conversations[0]@6)"
        " rejected: bad_timestamp (not a date)"
    )
    # Dead-lettered by the service from rekey's copy: where the producer wrote it.
    copied = _letter(body, rekeyed_from="conversations[2]@9")
    assert copied["source"] == "conversations[2]@9"
    # No event id (or one of the wrong type, maybe why it was rejected): said as it is.
    assert "event_id" not in _letter({**body, "event_id": None})
    assert _letter({**body, "event_id": 12345})["event_id"] == "12345"
    assert len(_letter({**body, "event_id": "x" * 5000})["event_id"]) == 512


def test_an_event_dead_lettered_again_is_one_event_with_its_copies() -> None:
    """rekey dead-letters at least once (a crash or a rebalance before its commit, or a new
    --group-id, sends a batch again): history listed one rejected erasure three times, as
    three requests (a trial helper's finding). The same event (where it was produced) is
    one, saying how many letters it got; another event stays one of its own."""
    body = {"org": "acme", "category": "conversation", "record_id": "r1", "op": "delete",
            "ts": "2026-13-01T00:00:00Z", "event_id": "gdpr-1"}  # fmt: skip
    again = _letter(body) | {"offset": 1}
    other = _letter(body, rekeyed_from="conversations[2]@9")
    one = _one_per_receipt([_letter(body), again, other])
    assert [(e["source"], e.get("copies")) for e in one] == [
        ("conversations[0]@6", 2),
        ("conversations[2]@9", 1),
    ]
    (line, _) = [x for x in text_lines(_history(*one)) if "dead_letter" in x]
    assert line.endswith("(not a date) (dead-lettered 2 times, one event)")


def _history(*events: dict[str, Any]) -> dict[str, Any]:
    return {"key": "k", "log_ref": "r", "events": list(events), "active_holds": []}


def _hold(kind: str, hold_id: str) -> dict[str, Any]:
    return {**_e(kind, "audit", 0, 0, "2026-12-05T10:00:00.000Z"), "hold_id": hold_id}


def test_a_hold_that_matched_the_key_while_no_life_ran_is_said_to_have_kept_nothing() -> None:
    """The audit trail lists every hold whose scope matches the key (an org's too): one
    placed after the record's deletion, or placed and released before its creation, kept
    nothing of it, and an auditor read it as a hold that had covered the record (a
    trial). One placed while a life ran, one a life began under, and one placed before
    the deletion and released after it did keep a life."""
    events = [
        _hold("hold_placed", "before"),
        _hold("hold_released", "before"),
        _hold("hold_placed", "across-creation"),
        _e("stamp", "stamped", 0, 0, "2026-12-05T10:00:01.000Z"),
        _hold("hold_released", "across-creation"),
        _hold("hold_placed", "during"),
        _e("deleted", "stamped", 0, 1, "2026-12-05T10:00:02.000Z"),
        _hold("hold_released", "during"),
        _hold("hold_placed", "after"),
        _hold("hold_released", "after"),
        _hold("hold_placed", "still-active"),
    ]
    _mark_holds_that_kept_nothing(events)
    kept = {(e["hold_id"], e["kind"]): e["kept_a_life"] for e in events if "hold_id" in e}
    assert kept == {
        ("before", "hold_placed"): False,
        ("before", "hold_released"): False,
        ("across-creation", "hold_placed"): True,
        ("across-creation", "hold_released"): True,
        ("during", "hold_placed"): True,
        ("during", "hold_released"): True,
        ("after", "hold_placed"): False,
        ("after", "hold_released"): False,
        ("still-active", "hold_placed"): False,
    }


def test_a_key_with_only_holds_on_record_says_so_and_what_to_check() -> None:
    """A wrong --bot gave a key that never existed, and the output listed the org's holds
    as if they were the record's evidence (a trial)."""
    events = [{**_hold("hold_placed", "h1"), "reason": "case 7"}]
    _mark_holds_that_kept_nothing(events)
    lines = text_lines(
        {"key": "acme/_/live/conversation/c1", "log_ref": "r", "events": events, "active_holds": []}
    )
    assert (
        "nothing on the evidence topics for this key but holds whose scope matches it" in (lines[1])
    )
    assert "check --org, --bot" in lines[1]
    assert lines[2].endswith(
        "hold h1: case 7 (its scope matches this key, but no life of the record ran while it held)"
    )


def _null(reason: str) -> dict[str, Any]:
    deleted = _e("deleted", "stamped", 0, 1, "2026-12-05T10:00:02.000Z")
    return {**deleted, "reason": reason, "ends_lives_created_by": "2026-12-05T10:00:01.000Z"}


def test_a_hold_placed_after_an_erasure_is_said_to_keep_the_archive_s_erased_lines() -> None:
    """`archive purge` keeps an erased record's archive lines while a hold matches it: a
    hold placed after the record's erasure kept no life, but kept those lines, and
    history said only that no life ran while it held (a trial). After an expiry (a ttl
    null: the archive keeps those lines anyway), or before any erasure, it is as before."""
    stamp = _e("stamp", "stamped", 0, 0, "2026-12-05T10:00:01.000Z")
    for ending, erased in ((_null("explicit"), True), (_null("ttl"), False)):
        events = [
            _hold("hold_placed", "before"),
            _hold("hold_released", "before"),
            stamp,
            ending,
            _hold("hold_placed", "after"),
            _hold("hold_released", "after"),
            {**_hold("hold_placed", "active"), "reason": "case 8"},
        ]
        _mark_holds_that_kept_nothing(events)
        said = {(e["hold_id"], e["kind"]): e["erased_before"] for e in events if "hold_id" in e}
        assert said == {
            ("before", "hold_placed"): False,
            ("before", "hold_released"): False,
            ("after", "hold_placed"): erased,
            ("after", "hold_released"): erased,
            ("active", "hold_placed"): erased,
        }
        (line,) = [x for x in text_lines(_history(*events)) if "hold active:" in x]
        assert line.endswith(
            "hold active: case 8 (its scope matches this key, but no life of the record ran "
            "while it held: it kept no life in the service; the record was erased before, "
            "and `archive purge` keeps an erased record's archive lines while a hold matches "
            "it, so an archive that still had them kept them)"
            if erased
            else "hold active: case 8 (its scope matches this key, but no life of the record "
            "ran while it held)"
        )
    # An erasure's tombstone alone (a life marker in an archive) counts as one too.
    events = [{**_e("tombstone", "tombstones", 0, 0, "x"), "reason": "explicit"},
              _hold("hold_placed", "h")]  # fmt: skip
    _mark_holds_that_kept_nothing(events)
    assert events[-1]["erased_before"] is True


def _deferral(offset: int, at: str, hold_ids: list[str]) -> dict[str, Any]:
    return {
        **_e("deletion_deferred", "audit", 0, offset, at),
        "reason": "ttl",
        "hold_ids": hold_ids,
        "expires_at": "2026-12-05T10:00:00.000Z",
        "erase_requested_at": None,
    }


def test_a_deferral_written_again_after_a_restore_is_one_deferral() -> None:
    """The service writes a deferral again when a restart or a lost state directory makes
    it again; the README counts such entries as one deferral, and history listed each (a
    trial: one held record read as deferred twice). One naming other holds, after one of
    them was released, stays its own event."""
    events = [
        _deferral(0, "2026-12-05T10:00:00.000Z", ["h1", "h2"]),
        _deferral(1, "2026-12-05T10:05:00.000Z", ["h2", "h1"]),
        _deferral(2, "2026-12-05T10:06:00.000Z", ["h2"]),
        _deferral(3, "2026-12-05T10:07:00.000Z", ["h2"]),
    ]
    one = _one_per_receipt(events)
    assert [(e["offset"], e["copies"]) for e in one] == [(0, 2), (2, 2)]
    lines = text_lines({"key": "k", "log_ref": "r", "events": one, "active_holds": []})
    assert lines[1].endswith("deferred by h1, h2 (expires_at 2026-12-05T10:00:00.000Z)"
                             " (written 2 times, one deferral)")  # fmt: skip

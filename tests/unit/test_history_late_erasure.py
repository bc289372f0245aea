"""What `history` says of an erasure read after its record's life had ended (a late erasure).

The service (engine ``_erase_ended``): a conversation created at 0 s (expires at 20 s) is
tombstoned at its expiry (``ttl``); an erasure dated 5 s, read after that, goes out once,
naming no life, its tombstone and null saying the request's time (``expiry-deleted-at``,
``expiry-erasure-requested-at``). `history` said of that tombstone "a record never seen, or
an ended life", and of its null that "the lives created at or before" the request "are
deleted", after the expiry's null that had deleted them, and nowhere when the erasure was
asked for. The messages are the service's own: the processor's decisions, written by the
outbox's code, read by history's own reader of a message.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from stream_expiry.config import load_config
from stream_expiry.history import (
    History,
    _describe,
    _in_order,
    _mark_erasures_of_deleted_lives,
    text_lines,
)
from stream_expiry.state import MemoryKV, PartitionStore
from stream_expiry.timeutil import format_ts
from tests.unit.test_engine import BASE, ev
from tests.unit.test_restore_model import harness
from tests.unit.test_sinks_late_erasure_life import STAMPED, TOMBS, _write, _Written, erased_late


def _history_of(written: _Written) -> list[dict[str, Any]]:
    """The record's events as `history` lists them (each topic's messages in log order,
    timestamped as read), marked as it marks them."""
    config = load_config(None)
    events = []
    for slot, topic in ((STAMPED, config.topics.stamped), (TOMBS, config.topics.tombstones)):
        for n, (key, value, headers) in enumerate(written.msgs[slot]):
            rec = SimpleNamespace(
                key=key, value=value, headers=headers, timestamp=BASE + n, partition=0, offset=n
            )
            events.append(_describe(config, topic, rec))
    events = _in_order(events)
    _mark_erasures_of_deleted_lives(events)
    return events


def _late_erasure_then_next_life_erased() -> _Written:
    h, out = erased_late("a", 5_000)
    _write(out, h.process(ev("conversation", "a", "create", 30_000)))  # the next life
    h.now = 31_000
    _write(out, h.process(ev("conversation", "a", "delete", 31_000)))  # erased in time
    return out


def test_a_late_erasure_says_when_it_was_asked_and_that_its_life_was_deleted_before() -> None:
    events = _history_of(_late_erasure_then_next_life_erased())
    erasures = [e for e in events if e.get("reason") == "explicit"]
    late = [e for e in erasures if e.get("requested_at") == format_ts(BASE + 5_000)]
    assert sorted(e["kind"] for e in late) == ["deleted", "tombstone"]
    expiry_bound = format_ts(BASE + 19_999)  # the expiry's null: created by 19.999 s
    assert all(e["already_deleted_by"] == expiry_bound for e in late)
    lines = text_lines(History("k", events).as_dict())
    said = [line for line in lines if f"asked at {format_ts(BASE + 5_000)}" in line]
    assert len(said) == 2
    for line in said:
        assert (
            "(every life it erases was deleted before it: a null above ended the lives "
            f"created at or before {expiry_bound})"
        ) in line
        assert "a record never seen, or an ended life" not in line
    # The next life's erasure, read in time, deleted that life: its null and tombstone
    # say when it was asked, and nothing of a deletion before.
    in_time = [e for e in erasures if e.get("requested_at") == format_ts(BASE + 31_000)]
    assert sorted(e["kind"] for e in in_time) == ["deleted", "tombstone"]
    assert not any("already_deleted_by" in e for e in in_time)


def test_an_erasure_of_a_record_never_seen_reads_as_before() -> None:
    """No null before it: nothing was deleted before, and the words stay."""
    h = harness(PartitionStore(MemoryKV()), 0)
    out = _Written()
    h.now = 1_000
    _write(out, h.process(ev("conversation", "b", "delete", 1_000)))
    events = _history_of(out)
    (tomb,) = [e for e in events if e["kind"] == "tombstone"]
    assert tomb["requested_at"] == format_ts(BASE + 1_000)
    assert "already_deleted_by" not in tomb
    (line,) = [ln for ln in text_lines(History("k", events).as_dict()) if "tombstone" in ln]
    assert "(a record never seen, or an ended life), erasure asked at " in line


def test_a_late_erasure_dated_at_the_expirys_own_bound_was_deleted_before_too() -> None:
    """The boundary: an erasure dated 19.999 s reaches the lives created by then, exactly
    those the expiry's null (created by 19.999 s) had ended: already deleted as well."""
    _h, out = erased_late("c", 19_999)
    events = _history_of(out)
    late = [e for e in events if e.get("requested_at") == format_ts(BASE + 19_999)]
    assert sorted(e["kind"] for e in late) == ["deleted", "tombstone"]
    assert all(e["already_deleted_by"] == format_ts(BASE + 19_999) for e in late)


def _null(reason: str, bound_ms: int, request: str | None = None) -> dict[str, Any]:
    at = format_ts(BASE + bound_ms)
    said = {} if request is None else {"request": request, "requested_at": at}
    return {"kind": "deleted", "reason": reason, "ends_lives_created_by": at} | said


def _tombstone(request: str, at_ms: int, created_at: str | None = None) -> dict[str, Any]:
    at = format_ts(BASE + at_ms)
    return {"kind": "tombstone", "reason": "explicit", "request": request, "requested_at": at} | (
        {} if created_at is None else {"created_at": created_at}
    )


def test_the_marking_takes_the_latest_bound_and_marks_erasures_only() -> None:
    """The marking alone, on events as `history` describes them: the bound kept is the
    latest of the nulls before (an erasure's null below it does not lower it), only
    erasures are marked (a `ttl` null under an earlier bound is a life's own end), and a
    tombstone that names a life is that life's deletion, whatever its null says."""
    expiry = format_ts(BASE + 19_999)
    events = [
        _null("ttl", 19_999),
        _null("explicit", 5_000, "req-a"),
        _null("explicit", 10_000, "req-b"),
        _tombstone("req-b", 10_000),
        _tombstone("req-a", 5_000, created_at=format_ts(BASE)),
        _null("ttl", 3_000),
    ]
    _mark_erasures_of_deleted_lives(events)
    assert [e.get("already_deleted_by") for e in events] == [
        None,
        expiry,
        expiry,  # 10 s is under 19.999 s, the latest bound, not under 5 s, the last
        expiry,
        None,  # it names a life
        None,  # not an erasure
    ]

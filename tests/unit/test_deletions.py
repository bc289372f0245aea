"""``stream-expiry deletions``' counting, without a broker: due times, quantiles, filter."""

from __future__ import annotations

from stream_expiry import codec
from stream_expiry.deletions import (
    Deletions,
    Filter,
    _admitted,
    _asks_erasure,
    _due_at,
    _read_as,
    _wait,
    exported,
    text_lines,
)
from stream_expiry.timeutil import format_ts

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _receipt(n: int, **fields: object) -> dict[str, object]:
    return {
        "receipt_id": f"r{n}",
        "store": "pg",
        "key": f"acme/_/live/conversation/c{n}",
        "org": "acme",
        "bot": "_",
        "env": "live",
        "category": "conversation",
        "record_id": f"c{n}",
        "reason": "ttl",
        "rows_deleted": 1,
        "expires_at": format_ts(T),
        "emitted_at": format_ts(T + 100),
        "deleted_at": format_ts(T + 1_000 * n),
    } | fields


def test_an_erasure_is_due_at_its_tombstone_an_expiry_at_itself() -> None:
    erasure = _receipt(1, reason="explicit", expires_at=format_ts(T + 600_000))
    assert _due_at(erasure) == T + 100
    assert _due_at(_receipt(1)) == T
    assert _due_at(_receipt(1, reason="sweep", emitted_at=None)) == T
    assert _due_at(_receipt(1, expires_at=None)) is None  # never expiring: no due time
    assert _due_at(_receipt(1, expires_at="yesterday")) is None


def test_quantiles_are_waits_that_occurred_and_the_longest_names_its_record() -> None:
    report = Deletions(Filter({}))
    for n in range(1, 101):  # deleted 1 s .. 100 s after the expiry
        report.add(_receipt(n), ())
    waits = report.as_dict()["stores"]["pg"]["after_due_s"]
    assert waits == {
        "p50": 50.0,
        "p99": 99.0,
        "max": 100.0,
        "max_key": "acme/_/live/conversation/c100",
    }


def test_of_rows_that_waited_longest_alike_the_smallest_key_is_named_in_any_order() -> None:
    """Two rows tied for the longest wait: the first read was named, and partitions are
    read in no fixed order, so two runs named ``s-bob`` and ``c-bob`` (a trial)."""
    named = []
    for order in (("s-bob", "c-bob"), ("c-bob", "s-bob")):
        report = Deletions(Filter({}))
        for rid in order:
            erasure = _receipt(
                1, reason="explicit", key=f"acme/_/live/conversation/{rid}", receipt_id=rid
            )
            report.add(erasure | {"requested_at": format_ts(T - 5_000)}, ())
        pg = report.as_dict()["stores"]["pg"]
        named.append((pg["after_due_s"]["max_key"], pg["after_request_s"]["max_key"]))
    assert named == [("acme/_/live/conversation/c-bob",) * 2] * 2


def test_the_filter_takes_parts_and_a_half_open_period() -> None:
    f = Filter({"org": "acme", "category": "conversation"}, since=T, until=T + 10)
    r = _receipt(1)
    assert [f.admits(r, at) for at in (T - 1, T, T + 9, T + 10)] == [False, True, True, False]
    assert not f.admits(r | {"org": "globex"}, T)
    assert Filter({}).admits(r | {"org": "globex"}, 0)


def test_the_text_says_a_period_with_nothing_deleted() -> None:
    report = Deletions(Filter({"org": "acme"}, since=T))
    report.named = {"org": {"acme"}}  # receipts of acme, all before the period
    lines = text_lines(report.as_dict())
    assert lines == [
        f"deletions of org acme, {format_ts(T)} to now (by deleted_at): 0 receipts",
        "  no store deleted anything in that period",
    ]


def test_an_org_no_receipt_names_is_said_with_the_one_meant() -> None:
    """``--org Acme`` (the records carry ``acme``) answered "0 receipts ... no store
    deleted anything in that period": an audit's clean period for a typo. The values
    every receipt names, of any time, tell it: said in the text and the JSON."""
    report = Deletions(Filter({"org": "Acme", "env": "live", "bot": "zzz"}))
    report.named = {"org": {"acme", "globex"}, "env": {"live"}, "bot": {"support"}}
    d = report.as_dict()
    assert d["never_named"] == {
        "org": {"given": "Acme", "closest": "acme"},
        "bot": {"given": "zzz", "closest": None},
    }
    lines = text_lines(d)
    assert lines[1:] == [
        "  no receipt of any time names org 'Acme': did you mean 'acme'? (org ids are "
        "case-sensitive)",
        "  no receipt of any time names bot 'zzz'",
        "  no store deleted anything in that period",
    ]


def test_a_value_close_but_for_more_than_case_gets_no_case_note() -> None:
    """``--category sessions`` for ``session`` was answered "did you mean 'session'? (ids
    are case-sensitive)": a plural, not a case slip, and every line said the note, also
    one naming no close value. The note is for a value that differs only in case."""
    report = Deletions(Filter({"category": "sessions", "env": "Live"}))
    report.named = {"category": {"session", "conversation"}, "env": {"live"}}
    assert text_lines(report.as_dict())[1:] == [
        "  no receipt of any time names category 'sessions': did you mean 'session'?",
        "  no receipt of any time names env 'Live': did you mean 'live'? (env ids are "
        "case-sensitive)",
        "  no store deleted anything in that period",
    ]


def test_an_exported_receipt_says_the_request_it_carried_out_and_why_it_was_late() -> None:
    """``--receipts`` printed the value alone: an erasure's export lacked the request it
    carried out (``expiry-request``, ``expiry-request-event-id``) and a late deletion's
    cause (``expiry-late-cause``), which the receipt message carries as headers and the
    stores' receipts tables as columns."""
    erasure = _receipt(1, reason="explicit")
    headers = [
        (codec.H_REQUEST, b"conversations[2]@1041"),
        (codec.H_REQUEST_EVENT_ID, b"ev-7"),
        (codec.H_LATE_CAUSE, b"hold"),
    ]
    assert exported(erasure, headers) == erasure | {
        "requested_at": None,  # an older store's receipt: said null
        "request": "conversations[2]@1041",
        "request_event_id": "ev-7",
        "late_cause": "hold",
    }
    plain = _receipt(2)
    assert exported(plain, []) == plain | {
        "requested_at": None,
        "request": None,
        "request_event_id": None,
        "late_cause": None,
    }


def test_the_totals_have_thousands_separators_as_the_counts_under_them() -> None:
    """``200000 receipts`` and ``store pg: 100000 rows deleted`` stood over ``ttl
    100,000``: a total and its parts in two forms (a trial of 200,000 receipts)."""
    report = Deletions(Filter({}))
    for n in range(1, 1_202):
        report.add(_receipt(n, rows_deleted=0 if n > 1_200 else 1), ())
    lines = text_lines(report.as_dict())
    assert lines[0] == "deletions, the beginning to now (by deleted_at): 1,201 receipts"
    assert lines[1:3] == ["  store pg: 1,200 rows deleted", "    by rule: ttl 1,200"]
    assert lines[-1] == "    1 tombstone of records it never held (rows_deleted 0)"


def test_an_erasure_is_timed_from_its_request_too() -> None:
    """An erasure a legal hold deferred a week went out a week after its request: timed from
    its tombstone (``after_due_s``) it was 0.1 s, the delay an audit asks about nowhere.
    The receipt's ``requested_at`` times it; one without (an older version's) is counted
    apart, never as 0 s; an expiry is in neither."""
    week = 7 * 24 * 3600 * 1000
    report = Deletions(Filter({}))
    report.add(_receipt(1, reason="explicit", requested_at=format_ts(T - week)), ())
    report.add(_receipt(2, reason="explicit", requested_at=format_ts(T)), ())
    report.add(_receipt(3, reason="explicit"), ())  # an older store's receipt
    report.add(_receipt(4, requested_at=None), ())
    pg = report.as_dict()["stores"]["pg"]
    assert pg["after_request_s"] == {
        "p50": 2.0,
        "p99": week / 1000 + 1,
        "max": week / 1000 + 1,
        "max_key": "acme/_/live/conversation/c1",
    }
    assert pg["request_unknown"] == 1
    lines = text_lines(report.as_dict())
    assert (
        "    erasures, request to deletion: p50 2.000 s, p99 604,801.000 s (7.0 d), max "
        "604,801.000 s (7.0 d): acme/_/live/conversation/c1"
    ) in lines
    assert (
        "    1 erasure whose receipt says no request time (sent or stored by an older "
        "version): not in those times"
    ) in lines
    exported_ = exported(_receipt(1, reason="explicit", requested_at=format_ts(T)), [])
    assert exported_["requested_at"] == format_ts(T)
    assert Deletions(Filter({})).as_dict()["stores"] == {}


def test_a_wait_of_an_hour_or_more_is_said_in_hours_or_days_too() -> None:
    """``after its due time: ... max 101,759.057 s`` (a trial: a day-old event deleted at
    once): an auditor had to divide to see 28 hours. Under an hour, seconds alone."""
    assert _wait(599.5) == "599.500 s"
    assert _wait(101_759.057) == "101,759.057 s (1.2 d)"
    assert _wait(5_400) == "5,400.000 s (1.5 h)"


def test_a_rejected_erasure_is_read_as_far_as_it_can_be_and_matched_as_meant() -> None:
    """``--rejected``: a request sent with ``recordId`` (dead-lettered, missing_field) or
    ``DELETE`` (unknown_op) is an erasure request of its record all the same; one whose
    category was unknown counts under the category it stands for, not under another."""
    body = {"org": "acme", "category": "conversation", "recordId": "c-9", "op": "DELETE"}
    read, named_as = _read_as(body)
    assert read == {
        "op": "DELETE", "org": "acme", "bot": "_", "env": "live",
        "category": "conversation", "record_id": "c-9",
    }  # fmt: skip
    assert named_as == {"recordId": "c-9"}
    assert _asks_erasure(read["op"])
    assert not _asks_erasure("create")
    assert not _asks_erasure(None)
    conversations = {**read, "category": "Conversations", "error": "unknown_category"}
    assert _admitted(Filter({"category": "conversation", "org": "acme"}), conversations)
    assert not _admitted(Filter({"category": "session"}), conversations)
    # Only a category rejected as unknown: a known one is the record's own.
    assert not _admitted(Filter({"category": "conversation"}), {**conversations, "error": "x"})
    assert not _admitted(Filter({"org": "Acme"}), read)  # ids are case-sensitive

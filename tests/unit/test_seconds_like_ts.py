"""An integer ``ts`` in epoch seconds: valid (the contract reads epoch milliseconds, so it
is January 1970 and the record is tombstoned at once), but the service says so."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING

import orjson

from stream_expiry.config import parse_config
from stream_expiry.policy import Resolution
from stream_expiry.service import Service
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore

if TYPE_CHECKING:
    import pytest

NOW = 1_796_369_399_212  # 2026-12-04T07:29:59.212Z
DAY_MS = 86_400_000


def _record(offset: int, record_id: str, ts: int) -> SimpleNamespace:
    body = {"category": "error", "org": "platco", "record_id": record_id, "ts": ts}
    return SimpleNamespace(
        topic="errors", partition=2, offset=offset, key=record_id.encode(),
        value=orjson.dumps(body),
    )  # fmt: skip


def _processor() -> PartitionProcessor:
    """Partition 2 of ``errors``, every record given 30 days."""
    return PartitionProcessor(
        "errors",
        2,
        PartitionStore(MemoryKV()),
        resolve=lambda _i, _t: Resolution(30 * DAY_MS, "org"),
        sliding=frozenset(),
        categories=frozenset({"error"}),
        max_skew_ms=300_000,
        now_ms=NOW,
    )


def test_a_ts_in_epoch_seconds_is_taken_as_the_contract_says_and_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proc = _processor()
    seconds, millis = _record(5, "e-seconds", NOW // 1000), _record(6, "e-millis", NOW)
    effects = proc.process([seconds, millis], NOW)
    # The contract's reading is kept: a valid event of January 1970, due at once.
    due = {st.identity.record_id: st.expires_at for st, _data in effects.stamps}
    assert due == {"e-seconds": NOW // 1000 + 30 * DAY_MS, "e-millis": NOW + 30 * DAY_MS}
    assert proc.next_due_ms() == NOW // 1000 + 30 * DAY_MS
    assert effects.seconds_like == [(seconds, NOW // 1000, None)]
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        service._count(effects)
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "1 event with a ts before 1973 as epoch milliseconds, e.g. errors[2]@5: ts 1796369399 "
        "is 1970-01-21T18:59:29.399Z: does the producer send seconds? Such records with a "
        "TTL are long expired, so they are tombstoned at once"
    ]  # one line a batch, whatever the number of such events


def test_a_ts_string_dated_before_1973_is_not_taken_for_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user trial: ``"ts": "0001-01-01T00:00:00+00:00"`` (.NET's DateTimeOffset.MinValue,
    a producer's unset date) was warned of as "ts -62135596800000 ... does the producer send
    seconds?", a number the producer never sent and a cause it could not have: an RFC 3339
    string is no count of seconds. The line quotes the string and asks about an unset date;
    integers keep their own line."""
    proc = _processor()
    unset = SimpleNamespace(
        topic="errors", partition=2, offset=7, key=b"e-unset",
        value=orjson.dumps({"category": "error", "org": "platco", "record_id": "e-unset",
                            "ts": "0001-01-01T00:00:00+00:00"}),
    )  # fmt: skip
    effects = proc.process([_record(5, "e-seconds", NOW // 1000), unset], NOW)
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        service._count(effects)
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "1 event with a ts before 1973 as epoch milliseconds, e.g. errors[2]@5: ts 1796369399 "
        "is 1970-01-21T18:59:29.399Z: does the producer send seconds? Such records with a "
        "TTL are long expired, so they are tombstoned at once",
        "1 event with an RFC 3339 ts before 1973, e.g. errors[2]@7: ts "
        "'0001-01-01T00:00:00+00:00': does the producer send an unset date (a default such as "
        ".NET's DateTimeOffset.MinValue)? Such records with a TTL are long expired, so they "
        "are tombstoned at once",
    ]


def test_the_lines_count_events_in_the_number_they_take(caplog: pytest.LogCaptureFixture) -> None:
    """ "1 events with a ts before 1973" (a trial's nit, as "1 policy updates applied"):
    one event is said in the singular, two in the plural."""
    effects = _processor().process(
        [_record(5, "e-one", NOW // 1000), _record(6, "e-two", NOW // 1000)], NOW
    )
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        service._count(effects)
    assert [r.getMessage().split(" with ")[0] for r in caplog.records] == ["2 events"]


def test_the_event_carries_its_ts_as_sent_only_when_that_was_text_before_1973() -> None:
    """The warning quotes an early RFC 3339 ``ts`` from the event itself: it read every
    early event's JSON again to learn its form, which a producer sending seconds made a
    second parse of every event it sent."""
    from stream_expiry.model import InputEvent, parse_event

    def early_text(ts: object) -> str | None:
        body = {"category": "error", "org": "platco", "record_id": "e", "ts": ts}
        ev = parse_event(
            orjson.dumps(body), categories=frozenset({"error"}), now_ms=NOW, max_skew_ms=0
        )
        assert isinstance(ev, InputEvent)
        return ev.early_ts_text

    assert early_text("0001-01-01T00:00:00+00:00") == "0001-01-01T00:00:00+00:00"
    assert early_text("1973-03-03T09:46:39.999Z") == "1973-03-03T09:46:39.999Z"
    assert early_text("1973-03-03T09:46:40Z") is None  # SECONDS_LIKE_BEFORE_MS itself
    assert early_text("2026-12-04T07:29:59Z") is None
    assert early_text(NOW // 1000) is None  # seconds: an integer, said as such
    assert early_text(NOW) is None


def test_the_warning_needs_no_second_read_of_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The records the warning names are not parsed again: one whose value is gone (as
    after a batch's bytes are released) is said all the same."""
    from stream_expiry.service import _say_early_ts

    gone = SimpleNamespace(topic="errors", partition=2, offset=9, key=b"e", value=None)
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        _say_early_ts([(gone, NOW // 1000, None), (gone, -62_135_596_800_000, "0001-01-01Z")])
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    assert "ts 1796369399 is 1970-01-21T18:59:29.399Z" in said[0]
    assert "ts '0001-01-01Z'" in said[1]

"""Tests that kill mutants of round 42's changes the suite let through: each passes on the
code and fails on the mutant named in its docstring (a one-token change: a comparison
flipped, a condition or a branch dropped, a value kept where it was to go). The late cause
of an erasure and of a life due on arrival, the erasure requests a legal hold deferred
(as round 43 keeps them), what a reopened store still knows of both, the life ``history``
says no null has ended, the events it names the record by, the headers read as numbers, a
sink's word on malformed messages, ``[topics] retired``'s warnings and counts, and the
control topics' word on a hold's category and on a catch-up read again. The holds-topic
refusal's are on the broker (tests/integration/test_holds.py)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka.structs import TopicPartition

from stream_expiry import codec
from stream_expiry.codec import H_DELETED_AT, H_DUE_AT_INGEST, H_ERROR
from stream_expiry.config import Topics
from stream_expiry.history import _named_as, open_life
from stream_expiry.holds import HoldBook
from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.retired import say_unlisted_stores
from stream_expiry.sinks._malformed import MalformedReport
from stream_expiry.state import MemoryKV, PartitionStore, RocksKV
from stream_expiry.status import Status, _count, _folding, _Sources
from tests.unit.test_control import ALL_3, DEFAULTS_3, HOLDS, _control, _record
from tests.unit.test_deferred_request import NAMED, _erasures, _named
from tests.unit.test_holds import T0, TTL, Partition, hold
from tests.unit.test_late_cause import LATE, _causes, _identity, _restarted, _timed
from tests.unit.test_sinks_malformed import TOMBSTONES, Clock, said

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


# --- the late cause of an erasure read as it is ----------------------------------------------


def test_an_erasure_dated_before_the_life_it_ends_is_late_from_that_lifes_creation() -> None:
    """An erasure request dated before the creation of the life it ends (a clock behind,
    or a request queued while the record came back) is timed from that creation: read
    within the minute after it, its tombstone is on time. Mutant ``due = requested_at``
    (the creation not looked at) said it late, blaming the event, by the request's own
    older time."""
    p = Partition()
    p.event("c", "create", T0 + 100_000)
    p.event("c", "delete", T0, now=T0 + 100_010)
    assert _causes(p) == [("c", "explicit", None)]
    q = Partition()
    q.event("c", "create", T0 + 100_000)
    q.event("c", "delete", T0, now=T0 + 160_001)  # past the minute after the creation
    assert _causes(q) == [("c", "explicit", "late_event")]


def test_an_erasure_without_a_kafka_timestamp_read_late_says_late_event() -> None:
    """A request whose record has Kafka's "no timestamp" (-1) tells nothing of when it
    was on the bus: it is taken at its word, as a late ``ttl`` event is, and said
    ``late_event``. Mutant ``produced is not None and ...`` said ``catch_up``, blaming the
    service for a request it acted on at once."""
    p = Partition()
    _timed(p, "c", "delete", T0, -1, T0 + LATE)
    assert _causes(p) == [("c", "explicit", "late_event")]


# --- a life due on arrival, ended on time -------------------------------------------------


def test_a_life_due_on_arrival_ended_within_the_minute_names_no_cause() -> None:
    """A create read a few milliseconds after its expiry (due on arrival), then the next
    life's create within the minute: the first life's tombstone goes out on time, and an
    on-time tombstone names no cause whatever made it due. Mutant ``if
    self._was_due_on_arrival(...)`` (the lateness test dropped on the event path) said
    ``late_event`` on it."""
    p = Partition()
    p.event("c", "create", T0, now=T0 + TTL + 5)
    p.event("c", "create", T0 + TTL + 6, now=T0 + TTL + 10)
    assert _causes(p) == [("c", "ttl", None)]


# --- what a reopened store knows ---------------------------------------------------------


def _reopened(p: Partition) -> Partition:
    """``p``'s partition after a restart: a new store opened over the same database (the
    state directory), and a new processor over it."""
    return _restarted(p, PartitionStore(p.proc.store.kv))


def test_a_reopened_store_still_knows_a_life_was_due_on_arrival() -> None:
    """A store opened over a database that holds entries of lives due on arrival looks
    them up. Mutant ``self._arrived_any = False`` (the scan at opening dropped) looked up
    nothing after a restart: the tombstone of a late event said ``catch_up``. (The other
    restart tests reuse the store object, whose flag the settle had set.)"""
    p = Partition()
    p.event("c", "create", T0, now=T0 + LATE + 5)
    q = _reopened(p)
    q.tick(T0 + 3 * LATE)
    assert _causes(q) == [("c", "ttl", "late_event")]


def test_a_reopened_store_still_names_a_deferred_erasures_request() -> None:
    """Likewise for the request of an erasure a hold deferred. Mutant
    ``self._requests_any = False``: after a restart the release's tombstone named no
    request, and the README's query of the receipts by ``request_event_id`` missed it."""
    p = Partition()
    p.holds.place(hold())
    p.event("c", "create", T0)
    p.event("c", "delete", T0 + 10, event_id="gdpr-7")
    p.holds.release("h1")
    q = _reopened(p)
    q.tick(T0 + 2 * LATE)
    assert _erasures(q) == [("c", NAMED)]


# --- the requests of erasures a hold deferred (round 43's rewrite of what round 42 kept) -----


def test_a_second_erased_life_after_a_restart_keeps_the_first_lifes_request() -> None:
    """A life erased under a hold, the service restarted, the next life created and
    erased too: each tombstone of the release names its own request. The restarted
    processor knows the first request from its store alone. Mutant ``known = {}`` (the
    store not looked at when memory has none) dropped it at the second deferral, and the
    first life's tombstone named no request."""
    p = Partition()
    p.holds.place(hold())
    p.event("c", "create", T0)
    p.event("c", "delete", T0 + 10, event_id="gdpr-7")  # offset 2
    q = _restarted(p)
    q.event("c", "create", T0 + 20)
    q.event("c", "delete", T0 + 30, event_id="gdpr-8")  # offset 4
    q.holds.release("h1")
    q.tick(T0 + 30 + LATE)
    assert [(f.before.erase_at, f.request) for f in q.fired if f.reason == "explicit"] == [
        (T0 + 10, _named(2, "gdpr-7")),
        (T0 + 30, _named(4, "gdpr-8")),
    ]


def test_a_deferral_under_a_later_hold_keeps_no_request_let_go_of_before() -> None:
    """A record erased under a hold and released, created again, then erased under a
    second hold: the store keeps the request of the erasure waiting, not the first one,
    which went out (its entry stays until the record's marker goes). Mutant (the test
    ``e in waiting`` dropped) carried it into the new entry, and every such cycle of a
    record kept one more there."""
    p = Partition()
    p.holds.place(hold())
    p.event("c", "create", T0)
    p.event("c", "delete", T0 + 10, event_id="gdpr-7")  # offset 2
    p.holds.release("h1")
    p.tick(T0 + 20)
    p.holds.place(hold("h2"))
    p.event("c", "create", T0 + 30)
    p.event("c", "delete", T0 + 40, event_id="gdpr-8")  # offset 4
    key, second = _identity("c").key, _named(4, "gdpr-8")
    # One request alone, as a value of one (read as either kind at its time).
    assert p.proc.store.deferred_requests(key) == {
        (T0 + 40, True): second,
        (T0 + 40, False): second,
    }


# --- headers read as numbers -----------------------------------------------------------


def test_a_number_header_without_a_value_reads_as_none() -> None:
    """Kafka lets a header have no value (aiokafka gives None). Mutant ``except
    ValueError`` raised TypeError from ``int(None)``: ``history`` of a record with such a
    null, and a restore of such a stamp, stopped."""
    headers: list[tuple[str, Any]] = [(H_DELETED_AT, None), (H_DUE_AT_INGEST, None)]
    assert codec.deleted_at_of(headers) is None
    assert codec.due_at_ingest_of(headers) is None


# --- history: the life no null has ended, and the events that name the record --------------


def _stamp(created: str, expires: str) -> dict[str, Any]:
    return {"at": created, "kind": "stamp", "created_at": created, "expires_at": expires}


def test_a_null_ending_lives_created_by_the_lifes_own_creation_ends_it() -> None:
    """A null's ``ends_lives_created_by`` is inclusive: a life created at that very
    millisecond is ended. Mutant ``created < ends_by`` kept it open, and `history` said
    "not deleted" of a deleted record."""
    created = "2027-01-15T08:00:00.000Z"
    null = {"at": created, "kind": "deleted", "reason": "explicit"}
    ended = [_stamp(created, "2027-01-15T08:01:00.000Z"), null | {"ends_lives_created_by": created}]
    assert open_life(ended, 1_800_000_000_000) is None
    before = null | {"ends_lives_created_by": "2027-01-15T07:59:59.999Z"}
    assert open_life([ended[0], before], 1_800_000_000_000) is not None


def test_a_life_is_overdue_from_the_very_millisecond_it_is_due() -> None:
    """A life is due at its ``expires_at``. Mutant ``parse_ts(due) < now_ms`` said a life
    asked about at that millisecond was not overdue yet."""
    due = "2027-01-15T08:01:00.000Z"
    at = 1_800_000_060_000  # 08:01:00.000
    assert codec.parse_own_ts(due) == at
    stamp = _stamp("2027-01-15T08:00:00.000Z", due)
    assert (open_life([stamp], at) or {}).get("overdue") is True
    assert (open_life([stamp], at - 1) or {}).get("overdue") is False


@dataclass
class _Letter:
    value: bytes
    headers: list[tuple[str, bytes]]


RECORD = Identity("acme", "_", "live", "conversation", "r1")


def _letter(error: str, **body: Any) -> _Letter:
    return _Letter(orjson.dumps({"org": "acme", "ts": 1} | body), [(H_ERROR, error.encode())])


def test_a_plural_category_rejected_as_unknown_names_the_record() -> None:
    """``conversations`` for ``conversation`` (the plural, as a trial's producer wrote it)
    is the record's category without case or a plural ``s``. Mutant (``removesuffix("s")``
    dropped) matched ``Conversation`` only, and `history` showed nothing of an erasure
    request dead-lettered for a plural."""
    letter = _letter("unknown_category", category="conversations", record_id="r1")
    assert _named_as(letter, RECORD) == {"category": "conversations"}


def test_a_category_not_rejected_as_unknown_names_no_record_by_it() -> None:
    """Only an event rejected for its category names the record by a spelling of it: one
    rejected for something else, with a category that is not the record's, names another
    record. Mutant (the rejection's code not looked at) took it for the record's."""
    letter = _letter("invalid_ts", category="Conversation", record_id="r1")
    assert _named_as(letter, RECORD) is None
    assert _named_as(_letter("unknown_category", category="Conversation", record_id="r1"), RECORD)


def test_a_misspelt_field_that_is_not_text_names_nothing() -> None:
    """A misspelt identity field counts when its value is text, as the service's would
    be. Mutant (the type test dropped) took ``"Bot": null`` for the default bot and
    listed it among the names the event gives the record."""
    letter = _letter("missing_field", category="conversation", recordId="r1", Bot=None)
    assert _named_as(letter, RECORD) == {"recordId": "r1"}


# --- a sink's word on malformed messages ---------------------------------------------------


def test_the_count_of_malformed_messages_is_said_a_minute_to_the_millisecond(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The count is said once a minute has passed since the last word, at the minute
    itself too. Mutant ``now - said_at > every_s`` (the message path) waited for the
    next message after the minute."""
    clock = Clock()
    report = MalformedReport({}, clock=clock)
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    report.skipped("t", 0, 0, "bad", None)
    clock.now += 60
    report.skipped("t", 0, 1, "bad", None)
    assert said(caplog)[1:] == [
        "skipped 1 more malformed message on t in 60 s (the latest at t[0]@1: bad); the "
        "first was said with what to do"
    ]


def test_a_stamp_on_the_wrong_topic_does_not_look_like_an_input_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message with an input event's ``ts`` but a stamp's or tombstone's fields is the
    service's own, not an input event. Mutant (the service's fields not looked at) said
    "it looks like an input event" of it, sending the operator to look for a producer."""
    report = MalformedReport({"t": TOMBSTONES}, clock=Clock())
    caplog.set_level(logging.WARNING, logger="stream_expiry.sinks")
    stamp = orjson.dumps({"ts": 1, "created_at": "2027-01-15T08:00:00.000Z"})
    report.skipped("t", 0, 0, "bad", stamp)
    report.skipped("u", 0, 0, "bad", orjson.dumps({"ts": 1}))
    first, other = said(caplog)
    assert "looks like an input event" not in first
    assert "(it looks like an input event)" in other


# --- [topics] retired: the stores no instance is assigned, and status's counts --------------


def _keep(path: str, *stamps: Stamp) -> None:
    """A partition's store at ``path`` (a RocksDB database) holding ``stamps``."""
    kv = RocksKV(path)
    try:
        PartitionStore(kv).write([(None, s) for s in stamps], now_ms=T0)
    finally:
        kv.close()


def _life(rid: str, *, expires: int | None = T0 + TTL, held: bool = False) -> Stamp:
    return Stamp(_identity(rid), T0, expires, TTL, "default", held=held)


def _unlisted(caplog: pytest.LogCaptureFixture, state_dir: str, inputs: list[str]) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stream_expiry.retired"):
        say_unlisted_stores(state_dir, inputs, [])
    return [r.getMessage() for r in caplog.records if r.name == "stream_expiry.retired"]


def test_the_unlisted_stores_count_the_records_a_hold_keeps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record a legal hold keeps past its expiry is one no instance will tombstone at
    the release either. Mutant ``counts.pending_total`` (the held ones left out) counted
    the pending record alone, and a store of held records only was not said at all."""
    _keep(str(tmp_path / "old-0"), _life("p"), _life("h", held=True))
    _keep(str(tmp_path / "old-1"), _life("h2", held=True))
    [said] = _unlisted(caplog, str(tmp_path), ["in"])
    assert said.startswith("the state directory holds 3 records pending or held of partitions")
    assert ": old[0] 2, old[1] 1. No instance" in said, said


def test_a_store_with_nothing_left_to_tombstone_is_not_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store whose records were all tombstoned (or that never expire) has nothing for an
    instance to do. Mutant ``if True`` (the count not looked at) warned of it with ``0``:
    an operator kept a topic in ``retired`` for nothing."""
    _keep(str(tmp_path / "old-0"), _life("n", expires=None))
    assert _unlisted(caplog, str(tmp_path), ["in"]) == []


def test_only_a_listed_topics_stores_and_real_stores_are_passed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A topic name with a hyphen is split at its last one (``my-old-3``: ``my-old``
    partition 3); a store moved aside (``<store>.corrupt-<UTC time>``) is not a partition's;
    a directory that is no RocksDB database is not opened (opening it would make it one).
    Mutants: ``partition("-")`` (the first hyphen) missed ``my-old``'s store, the digits
    test dropped counted a moved-aside store, the ``CURRENT`` test dropped made the
    directory a database."""
    _keep(str(tmp_path / "my-old-3"), _life("p"))
    _keep(str(tmp_path / "in-0.corrupt-20260101T000000Z"), _life("q"))
    os.mkdir(tmp_path / "empty-0")
    [said] = _unlisted(caplog, str(tmp_path), ["in"])
    assert ": my-old[3] 1. No instance" in said, said
    assert not os.path.exists(tmp_path / "empty-0" / "CURRENT")


def _folded(sources: _Sources, *stamps: tuple[Stamp, str]) -> MemoryKV:
    """What status keeps of ``stamps`` (each with the input topic its stamp names)."""
    kv = MemoryKV()
    fold = _folding(sources)
    for offset, (stamp, topic) in enumerate(stamps):
        key = stamp.identity.key.encode()
        kept = fold(0, offset, codec.source_headers(topic, 0), key, encode_stamp(stamp))
        assert kept is not None
        kv.apply({key: kept}, [])
    return kv


def test_status_counts_a_retired_topics_records_that_expire_only() -> None:
    """A record of a retired topic that never expires leaves the instances nothing to do:
    the topic can go from ``retired`` once its expiring records are tombstoned. Mutant
    (``due is not None`` dropped) counted it as pending, and status never said "none
    left"; the same for a topic no longer an input."""
    sources = _Sources(["in"], ["old"])
    kv = _folded(
        sources,
        (_life("p"), "old"),
        (_life("n", expires=None), "old"),
        (_life("d"), "gone"),
        (_life("m", expires=None), "gone"),
        (_life("i"), "in"),
    )
    result = Status(at=T0 + TTL)
    result.retired = {"old": Counter()}
    _count(result, kv, HoldBook(), None, sources)  # type: ignore[arg-type]
    assert result.retired == {"old": Counter(due=1)}
    assert result.not_inputs == {"gone": Counter(due=1)}
    assert result.never == 2


# --- the control topics: a hold's category, and a catch-up read again -----------------------


@pytest.mark.asyncio
async def test_a_hold_on_a_category_in_another_case_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record's category is matched as written: a hold on ``Conversation`` keeps no
    ``conversation`` record. Mutant ``hold.category.lower() in categories`` placed it
    without a word, and the records it was meant for were deleted at their expiry."""
    control = _control('[categories]\nnames = ["conversation", "session"]\n')
    value = orjson.dumps({"org": "acme", "category": "Conversation", "reason": "case 8"})
    batch = {TopicPartition(HOLDS, 0): [_record(HOLDS, 0, 3, "h8", value)]}
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        await control._apply_holds(batch)
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith(f"legal hold h8 at {HOLDS}[0]@3 names category 'Conversation'")


@pytest.mark.asyncio
async def test_a_catch_up_read_again_after_a_failure_counts_each_update_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start's catch-up that failed (the broker went away after its last batch) is read
    again whole: what the failed one noted of updates that took values away is not kept.
    Mutant (``_dropped`` not emptied at the start of ``read_all``) counted the update
    twice: "2 policy updates took categories away", of one."""
    topic = Topics().policies
    records = [
        _record(topic, 0, offset, "default", orjson.dumps({"scope": "default", "ttl": ttl}))
        for offset, ttl in enumerate([{"conversation": "3m"}, ALL_3])
    ]
    tries: list[int] = []

    async def read_to_end(
        _cons: Any, name: str, *, then_follow: bool = False
    ) -> AsyncIterator[dict[TopicPartition, list[Any]]]:
        if name != topic:
            return
        tries.append(1)
        if len(tries) == 1:
            yield {TopicPartition(topic, 0): records}
            raise ConnectionError("the broker went away")
        yield {TopicPartition(topic, 0): records}

    monkeypatch.setattr("stream_expiry.control.read_to_end", read_to_end)
    control = _control(DEFAULTS_3)
    with pytest.raises(ConnectionError):
        await control.read_all()
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control.read_all()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert [i for i in info if "took categories away" in i] == [
        "1 policy update took categories away from their scope that a later version gives a "
        "value again: records of those categories created in between have no value from that "
        "scope (each one at debug level; `stream-expiry explain --at TS` says what such a "
        "record gets)"
    ]

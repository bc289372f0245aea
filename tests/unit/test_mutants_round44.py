"""Tests that kill mutants of round 44's changes the suite let through: each passes on the
code and fails on the mutant named in its docstring (a one-token change: a comparison
flipped, a condition or a branch dropped, a value kept where it was to go). Hold ids in
doubt (the book, the refusal's words, what the service says of a rejected hold message);
repeated keys in a control document (which key is named, and where); the stalls of the
process (the threshold and the windows, the Kafka client's warnings) and the liveness that
does not blame the loop for them; the partitions a retired topic no longer has."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from stream_expiry.config import Topics, parse_config
from stream_expiry.control import ControlTopics, DeadLettered
from stream_expiry.health import Health
from stream_expiry.holds import (
    HoldBook,
    InDoubt,
    apply_hold_message,
    doubted_id,
    encode_hold,
    in_doubt_refusal,
    rejected_fate,
)
from stream_expiry.model import MAX_ID_CHARS, Rejection
from stream_expiry.policy import PolicyBook
from stream_expiry.repeated_keys import repeated_key
from stream_expiry.retired import PartitionsGone
from stream_expiry.stalls import EXCUSE_WITHIN_S, StallNote
from stream_expiry.state import MemoryKV, PartitionStore
from stream_expiry.stats import ServiceStats
from tests.unit.test_holds import hold
from tests.unit.test_mutants_round42 import _keep, _life
from tests.unit.test_stalls import _Clocks, _kafka_record
from tests.unit.test_state_store import GRACE, T0, ident, live

if TYPE_CHECKING:
    from pathlib import Path

    from stream_expiry.state.store import RestoredRow

HOLDS = Topics().holds


def _ids(book: HoldBook) -> list[tuple[str, int]]:
    return [(d.hold_id, d.partition) for d in book.in_doubt()]


# --- hold ids in doubt -------------------------------------------------------------------------


def test_the_ids_in_doubt_are_listed_by_id_then_partition() -> None:
    """The refusal lists them "by id" (:meth:`HoldBook.in_doubt`), whatever partition each
    is on. Mutant ``key=(d.partition, d.hold_id)``: listed by partition first."""
    book = HoldBook()
    apply_hold_message(book, b"b", b"{}", 0, 0)
    apply_hold_message(book, b"a", b"{}", 1, 0)
    apply_hold_message(book, b"a", b"{}", 0, 1)
    assert _ids(book) == [("a", 0), ("a", 1), ("b", 0)]


def test_an_empty_key_is_no_key_the_value_names_the_id_in_doubt() -> None:
    """``parse_hold`` takes an empty key as none (the value's ``hold_id`` is the id), so
    the id in doubt is the value's, which a later valid message settles. Mutant ``if key
    is not None``: the id ``''`` was in doubt, which no message can settle, and every start
    refused for ever."""
    assert doubted_id(b"", b'{"hold_id": "x", "reason": "r"}') == "x"
    book = HoldBook()
    apply_hold_message(book, b"", b'{"hold_id": "x", "reason": "r"}', 0, 3)
    assert _ids(book) == [("x", 0)]
    apply_hold_message(book, b"", encode_hold(hold("x")), 0, 4)
    assert book.in_doubt() == []


def test_an_empty_hold_id_in_a_value_without_a_key_names_no_id() -> None:
    """``{"hold_id": ""}`` under no key names no hold (an id is 1 to 512 characters): no
    message can settle it, so it is in no id's doubt. Mutant ``and named`` dropped: the id
    ``''`` was in doubt, and every start refused for ever."""
    assert doubted_id(None, b'{"hold_id": "", "org": "acme"}') is None
    book = HoldBook()
    apply_hold_message(book, None, b'{"hold_id": "", "org": "acme"}', 0, 0)
    assert book.in_doubt() == []


def test_only_an_id_longer_than_any_hold_id_is_said_to_need_kafka_tooling() -> None:
    """An id of 512 characters is one `hold release` takes. Mutant ``>= MAX_ID_CHARS``:
    it was said to need a null written with Kafka's own tooling."""
    why = Rejection("missing_field", "field 'reason' is required")
    longest = InDoubt("k" * MAX_ID_CHARS, 0, 1, why).described(HOLDS)
    too_long = InDoubt("k" * (MAX_ID_CHARS + 1), 0, 1, why).described(HOLDS)
    assert "which no hold id can be" not in longest
    assert f"a key of {MAX_ID_CHARS + 1} characters, which no hold id can be" in too_long


def test_a_rejected_message_under_a_placed_hold_says_the_hold_stays() -> None:
    """What a person is told of a rejected message under the id of a hold in force: it
    stays as placed before. Mutant ``kept = None``: told that no hold is in force under
    that id, of a hold that still keeps its records."""
    book = HoldBook()
    apply_hold_message(book, b"h", encode_hold(hold("h")), 0, 0)
    said = rejected_fate(book, b"h", b'{"org": "acme"}')
    assert said.startswith("the legal hold 'h' it would replace stays in force as placed before")
    assert rejected_fate(book, b"other", b"{}").startswith(
        "no legal hold is in force under 'other'"
    )


def test_one_id_in_doubt_on_two_partitions_is_one_id() -> None:
    """The refusal counts the ids, not the messages. Mutant ``ids = len(doubts)``: "2 legal
    hold ids ... they hold" of one id."""
    book = HoldBook()
    apply_hold_message(book, b"h", b"{}", 0, 1)
    apply_hold_message(book, b"h", b"{}", 1, 2)
    said = in_doubt_refusal(HOLDS, book.in_doubt(), "records deleted")
    assert said.startswith(
        f"the latest message of 1 legal hold id on {HOLDS!r} cannot be read, so what it holds "
        "is unknown: 'h' at"
    )


@pytest.mark.asyncio
async def test_the_service_notes_where_a_rejected_hold_is_and_says_its_fate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rejected hold message read by the service: its id is in doubt at its own offset
    (the refusal names ``topic[partition]@offset``), and a warning says what becomes of the
    hold. The message was dead-lettered before (a restart): the log line alone. Mutants
    ``apply_hold_message(..., tp.partition)`` (no offset: ``@-1`` in the refusal) and
    ``_say_kept`` dropped (only the dead-letter line, which does not say the hold before
    stays, or that the next start refuses)."""
    value = b'{"org": "acme"}'
    rec = ConsumerRecord(HOLDS, 3, 17, 17, 0, b"case-9", value, None, 6, len(value), [])
    dead_lettered = DeadLettered(None)
    dead_lettered.add(rec)
    holds = HoldBook()
    absent = cast("Any", None)  # the readers and the producer: batches are applied only
    control = ControlTopics(
        Topics(), PolicyBook(parse_config(""), {}), holds, ServiceStats(),
        policies=absent, holds_reader=absent, prod=absent, dead_lettered=dead_lettered,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        await control._apply_holds({TopicPartition(HOLDS, 3): [rec]})
    assert [(d.hold_id, d.partition, d.offset) for d in holds.in_doubt()] == [("case-9", 3, 17)]
    said = [r.getMessage() for r in caplog.records]
    assert f"{HOLDS}[3]@17, rejected: no legal hold is in force under 'case-9'" in said[-1]


# --- repeated keys -----------------------------------------------------------------------------


def test_of_two_sibling_objects_repeating_a_key_the_first_is_named() -> None:
    """The first key a document repeats, in the order written, is named. Mutant
    ``stack.extend(children)``: siblings walked last first, ``b.y`` named."""
    found = repeated_key(b'{"a": {"x": 1, "x": 2}, "b": {"y": 1, "y": 2}}')
    assert found is not None
    assert (found.key, found.path) == ("x", "a.x")


def test_a_top_level_key_written_quoted_in_a_path_is_at_the_top_level() -> None:
    """A key that a path must quote (``["a.b"]``) at the top level is said to be there.
    Mutant ``self.path == self.key``: its quoted path was given instead."""
    found = repeated_key(b'{"a.b": 1, "a.b": 2}')
    assert found is not None
    assert "(at the top level)" in found.detail()


def test_a_list_of_objects_given_again_alike_in_another_member_order_is_no_repeat() -> None:
    """Objects in a list compare in any member order, as the first parse compares them, so
    the key named is the one whose values differ. Mutant: lists not made plain
    (``_plain``), ``k`` named, whose two values are one."""
    document = b'{"k": [{"a": 1, "b": 2}], "k": [{"b": 2, "a": 1}], "z": 1, "z": 2}'
    found = repeated_key(document)
    assert found is not None
    assert found.path == "z"


# --- stalls and liveness -----------------------------------------------------------------------


def test_a_stall_of_exactly_the_threshold_is_a_stall() -> None:
    """A stall is one of at least ``threshold_s``. Mutant ``off_cpu <= threshold``: not counted."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 2.0)
    stall = stalls.check()
    assert stall is not None
    assert stall.seconds == 2.0


def test_clocks_drifting_apart_by_less_than_the_threshold_are_no_sleep() -> None:
    """A pause during which the monotonic clock ran 1 s slower than boot time (an NTP slew,
    say) is a paused process, not a machine that slept. Mutant ``... > 0``: said slept."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 10.0, mono=0.25 + 9.0)
    stall = stalls.check()
    assert stall is not None
    assert not stall.slept


def test_a_stall_excuses_a_failure_exactly_a_minute_later() -> None:
    """Noticed "within" :data:`EXCUSE_WITHIN_S`, bounds included. Mutant ``>=``: not."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 10.0)
    stall = stalls.check()
    clocks.run(EXCUSE_WITHIN_S, cpu=EXCUSE_WITHIN_S)
    assert stalls.excuse() is stall


def test_a_stall_is_recent_at_exactly_its_window() -> None:
    """:meth:`Stalls.recent`: noticed "at most ``within_s`` ago". Mutant ``>=``: not."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 10.0)
    stall = stalls.check()
    clocks.run(2.0, cpu=2.0)
    assert stalls.recent(2.0) is stall


def test_the_kafka_client_s_warnings_just_after_a_stall_say_so_too() -> None:
    """Warnings and errors are noted, not errors alone. Mutant ``levelno <= WARNING``
    (warnings passed as they are): a warning of a request timed out read as the broker's."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 45.0)
    warning = _kafka_record(logging.WARNING)
    assert StallNote(stalls).filter(warning)
    assert warning.getMessage().endswith(
        "(just after the process did not run for 45.0 s (paused, or starved of CPU): not "
        "the broker's)"
    )


def test_a_pause_before_the_last_beat_does_not_excuse_a_hang_after_it() -> None:
    """Only time the process did not run since the last heartbeat is taken off the
    loop's silence. Mutant ``_paused_at_beat = 0.0`` (every pause since the start taken
    off): a loop that hung 121 s after a pause of 200 s long past was still live."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    health = Health(stall_after_s=120, stalls=stalls)
    health.starting()
    health.running()
    clocks.run(0.25 + 200.0)  # paused, then the loop turns once
    health.beat()
    clocks.run(121.0, cpu=121.0)  # then hangs, busy
    assert (health.live, health.stalled) == (False, True)


def test_a_pause_during_the_restore_does_not_excuse_a_hang_after_it() -> None:
    """Silence is counted from the start of running, and so are the pauses taken off it.
    Mutant ``running`` setting the beat's time alone (not the pauses so far): a pause of
    200 s while restoring excused a loop that hung 121 s once running."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    health = Health(stall_after_s=120, stalls=stalls)
    health.starting()
    clocks.run(0.25 + 200.0)  # paused while restoring
    health.running()
    clocks.run(121.0, cpu=121.0)
    assert (health.live, health.stalled) == (False, True)


# --- the partitions a retired topic no longer has ---------------------------------------------


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    said = [r.getMessage() for r in caplog.records if r.name == "stream_expiry.retired"]
    caplog.clear()
    return said


def test_the_stamps_of_partitions_gone_are_said_once_each_with_the_count_needed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Partitions 2 and 3 of a topic of 2 now: said, with ``--partitions 4``; a topic
    not retired (no count) is not. Said again only for a partition not said before.
    Mutants ``0 <= counts.get(topic, 0)`` (a topic without a count said: KeyError),
    ``needed = max(partitions)`` (3: one partition still gone) and ``if any(...)`` (a new
    partition gone not said once one was)."""
    gone = PartitionsGone()
    caplog.set_level(logging.WARNING, logger="stream_expiry.retired")
    gone.on_changelog({("old", 1): 5, ("old", 2): 3, ("old", 3): 1, ("in", 9): 2}, {"old": 2})
    [said] = _warned(caplog)
    assert said.startswith("retired topic old has 2 partitions, but the changelog holds 4 stamps")
    assert "--partitions 4)" in said
    gone.on_changelog({("old", 2): 3}, {"old": 2})
    assert _warned(caplog) == []
    gone.on_changelog({("old", 2): 3, ("old", 5): 1}, {"old": 2})
    [again] = _warned(caplog)
    assert "--partitions 6)" in again


def test_the_stores_of_partitions_gone_are_said_from_the_first_gone_and_once_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A topic of 2 partitions now: its store of partition 2 (the first one gone) is
    said; then, a store of partition 3 found, that one alone. Mutants ``count <
    partition`` (partition 2 passed over) and the said ones not skipped (partition 2 named
    again beside 3)."""
    _keep(str(tmp_path / "old-1"), _life("a"))
    _keep(str(tmp_path / "old-2"), _life("b"))
    gone = PartitionsGone()
    caplog.set_level(logging.WARNING, logger="stream_expiry.retired")
    gone.in_state_dir(str(tmp_path), {"old": 2})
    [said] = _warned(caplog)
    assert "this instance's state directory holds 1 record pending or held" in said
    assert "old[2] 1" in said
    _keep(str(tmp_path / "old-3"), _life("c"), _life("d"))
    gone.in_state_dir(str(tmp_path), {"old": 2})
    [again] = _warned(caplog)
    assert "holds 2 records pending or held of its partitions old[3] 2," in again


def test_a_pause_whose_clocks_part_by_exactly_the_threshold_is_a_sleep() -> None:
    """The machine slept when the monotonic clock fell behind boot time by at least the
    threshold, as a stall is one of at least it. Mutant ``> threshold``: a paused process."""
    clocks = _Clocks()
    stalls = clocks.stalls()
    clocks.run(0.25 + 10.0, mono=0.25 + 8.0)
    stall = stalls.check()
    assert stall is not None
    assert stall.slept


# --- a restore's count of the records already due ----------------------------------------------


def _restored_row(key: str, expires: int) -> RestoredRow:
    """A live stamp of ``key`` as a restore reads it: created at T0, expiring at ``expires``."""
    return (
        key.encode(), "conversation", T0, expires, 1000, "default", None, None, 7, None, (), None
    )  # fmt: skip


def test_a_record_due_at_exactly_the_restore_s_now_is_due() -> None:
    """:meth:`PartitionStore.count_due` counts the records due at ``now_ms``, that one
    included, whatever the store knows of its earliest expiry. Mutant ``floor >= now_ms``:
    with the earliest expiry known to be ``now_ms``, none was counted."""
    now = T0 + 1_000
    store = PartitionStore(MemoryKV(), grace_ms=GRACE)
    store.write([(None, live("r0", now))], now_ms=T0)
    assert store.first_due_ms() == now
    assert store.count_due(now) == 1


def test_a_restored_row_moving_a_record_due_at_exactly_now_takes_it_off_the_due() -> None:
    """A restored stamp that moves a record due at the restore's ``now`` to later: one
    fewer due. Mutant ``old.due_at < now_ms``: the count kept it, and the restore's
    gauge said one record due that was not."""
    now = T0 + 1_000
    store = PartitionStore(MemoryKV(), grace_ms=GRACE)
    store.write([(None, live("r0", now))], now_ms=T0)
    assert store.count_due(now) == 1
    key = ident("r0").key
    assert store.write_restored([_restored_row(key, now + 10)], now_ms=now, meta={})[2] == -1
    assert store.count_due(now) == 0

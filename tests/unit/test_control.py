"""The control topics' readers, on batches built here (no broker: what a fetch returns)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import orjson
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from stream_expiry.config import Topics, parse_config
from stream_expiry.control import ControlTopics, UnsaidDrops
from stream_expiry.errors import BrokerUnavailableError
from stream_expiry.holds import Hold, HoldBook, encode_hold
from stream_expiry.policy import PolicyBook
from stream_expiry.stats import ServiceStats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

HOLDS = Topics().holds


def _record(topic: str, partition: int, offset: int, key: str, value: bytes | None) -> Any:
    return ConsumerRecord(  # timestamped by its offset: later on a partition, later in time
        topic, partition, offset, offset, 0, key.encode(), value, None, len(key),
        0 if value is None else len(value), [],
    )  # fmt: skip


def _message(partition: int, offset: int, hold_id: str, placed: bool) -> Any:
    hold = Hold(hold_id, "acme", None, None, None, None, "case", 0)
    return _record(HOLDS, partition, offset, hold_id, encode_hold(hold) if placed else None)


def _control(config: str = "", holds: HoldBook | None = None) -> ControlTopics:
    absent = cast("Any", None)  # the readers and the producer: batches are applied only
    return ControlTopics(
        Topics(), PolicyBook(parse_config(config), {}), HoldBook() if holds is None else holds, ServiceStats(),
        policies=absent, holds_reader=absent, prod=absent,
    )  # fmt: skip


@pytest.mark.asyncio
async def test_a_release_is_said_to_leave_its_hold_placed_only_once_its_batch_is_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fetch brings the nulls `hold release` wrote on both partitions: the hold is
    released, and nothing is said of it (a review: the first null warned that the other
    partition still placed the hold, which its own null released in the same batch). A
    null on one partition only, the hold placed on the other: said, naming it."""
    holds = HoldBook()
    control = _control(holds=holds)
    p0, p1 = TopicPartition(HOLDS, 0), TopicPartition(HOLDS, 1)
    placed = {
        p0: [_message(0, 0, "everywhere", True), _message(0, 1, "half", True)],
        p1: [_message(1, 0, "everywhere", True), _message(1, 1, "half", True)],
    }
    await control._apply_holds(placed)  # what a poll does with a fetch
    assert None not in (holds.get("everywhere"), holds.get("half"))
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    released = {
        p0: [_message(0, 2, "everywhere", False), _message(0, 3, "half", False)],
        p1: [_message(1, 2, "everywhere", False)],
    }
    await control._apply_holds(released)
    assert holds.get("everywhere") is None
    assert holds.get("half") is not None
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        f"legal hold half released at {HOLDS}[0]@3 stays active: it is placed on partition 1 "
        "too (written with another partitioner than Kafka's default); release it with "
        "`stream-expiry hold release half`, which nulls it on every partition"
    ]


@pytest.mark.asyncio
async def test_an_update_that_takes_values_of_its_scope_away_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ``default`` update for conversations only took the config file's defaults of
    sessions and errors away, and those records never expired, without a word (a trial)."""
    control = _control('[retention.defaults]\nsession = "90s"\nerror = "45s"\n')
    topic = Topics().policies
    value = orjson.dumps({"scope": "default", "ttl": {"conversation": "3m"}})
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_policies(
        {TopicPartition(topic, 0): [_record(topic, 0, 7, "default", value)]}
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        f"policy update default at {topic}[0]@7 replaces the scope's whole ttl map: session, "
        "error had a value there and now have none from this scope; send every category the "
        "scope should keep in one update (0 for one it should give no value: then this is not "
        "said)"
    ]


@pytest.mark.asyncio
async def test_a_hold_placed_again_after_a_release_in_the_same_read_is_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Released on one partition and placed again later in the same read: every start
    warned that the release left it placed elsewhere (a review)."""
    holds = HoldBook()
    control = _control(holds=holds)
    p0, p1 = TopicPartition(HOLDS, 0), TopicPartition(HOLDS, 1)
    await control._apply_holds({p0: [_message(0, 0, "h", True)], p1: [_message(1, 0, "h", True)]})
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_holds({p0: [_message(0, 1, "h", False), _message(0, 2, "h", True)]})
    assert holds.get("h") is not None
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []


@pytest.mark.asyncio
async def test_a_release_is_judged_on_the_whole_read_whatever_order_its_partitions_came_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One partition's null applied before the other partition's placement (a start's
    catch-up, partition 0 first): the hold is active once the read is applied, and its
    newest message is the release, so that is said (a trial's start said nothing)."""
    control = _control()
    p0, p1 = TopicPartition(HOLDS, 0), TopicPartition(HOLDS, 1)
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_holds(
        {
            p0: [_message(0, 0, "h", True), _message(0, 5, "h", False)],
            p1: [_message(1, 1, "h", True)],
        }
    )
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(" stays active")[0] for w in warned] == [
        f"legal hold h released at {HOLDS}[0]@5"
    ]


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings' first part, up to where a release's warning names the hold's state."""
    return [
        r.getMessage().split(" stays active")[0]
        for r in caplog.records
        if r.levelno == logging.WARNING
    ]


@pytest.mark.asyncio
async def test_a_start_judges_its_releases_once_the_whole_catch_up_is_read(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start's catch-up comes in several batches: a hold nulled on one partition in the
    first and on the other in the next is released, and not said (the review's case, at a
    start); one nulled on one partition only is said once the catch-up is read, not before
    and not twice; and the batches polled after the start are judged each as it comes. A
    reader that judged each batch of the catch-up, or never at its end, fails this."""
    p0, p1 = TopicPartition(HOLDS, 0), TopicPartition(HOLDS, 1)
    batches = [
        {p0: [_message(0, 0, "both", True), _message(0, 1, "half", True)],
         p1: [_message(1, 0, "both", True), _message(1, 1, "half", True)]},
        {p0: [_message(0, 2, "both", False), _message(0, 3, "half", False)]},
        {p1: [_message(1, 2, "both", False)]},
    ]  # fmt: skip
    judged_before_the_end: list[list[str]] = []

    async def read_to_end(
        _cons: Any, topic: str, *, then_follow: bool = False
    ) -> AsyncIterator[dict[TopicPartition, list[Any]]]:
        assert then_follow
        for batch in batches if topic == HOLDS else []:
            yield batch
            judged_before_the_end.append(_warned(caplog))

    monkeypatch.setattr("stream_expiry.control.read_to_end", read_to_end)
    holds = HoldBook()
    control = _control(holds=holds)
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control.read_all()
    assert judged_before_the_end == [[], [], []]
    assert holds.get("both") is None
    assert _warned(caplog) == [f"legal hold half released at {HOLDS}[0]@3"]
    await control._apply_holds({p1: [_message(1, 3, "half", False), _message(1, 4, "x", True)]})
    await control._apply_holds({p0: [_message(0, 5, "x", True)]})
    await control._apply_holds({p0: [_message(0, 6, "x", False)]})  # what a poll does
    assert holds.get("half") is None
    assert _warned(caplog)[1:] == [f"legal hold x released at {HOLDS}[0]@6"]


@pytest.mark.asyncio
async def test_a_release_is_said_by_the_newest_null_of_its_hold_in_the_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nulled on two of the three partitions that place it: the warning names the newer
    null (by its timestamp), whichever partition came first in the read, so a person finds
    the release that counts."""
    holds = HoldBook()
    control = _control(holds=holds)
    parts = [TopicPartition(HOLDS, p) for p in range(3)]
    await control._apply_holds(
        {tp: [_message(tp.partition, 0, h, True) for h in ("first", "last")] for tp in parts}
    )
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_holds(
        {
            parts[0]: [_message(0, 7, "first", False), _message(0, 8, "last", False)],
            parts[1]: [_message(1, 4, "first", False), _message(1, 9, "last", False)],
        }
    )
    assert sorted(_warned(caplog)) == [
        f"legal hold first released at {HOLDS}[0]@7",
        f"legal hold last released at {HOLDS}[1]@9",
    ]


@pytest.mark.asyncio
async def test_a_placement_newer_than_the_release_on_any_partition_is_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Released, and placed again by a newer message (by its timestamp) on the same or the
    other partition, the other's placement older than the release: the hold's newest message
    is a placement, whichever partition came first in the read, so nothing is said."""
    holds = HoldBook()
    control = _control(holds=holds)
    p0, p1 = TopicPartition(HOLDS, 0), TopicPartition(HOLDS, 1)
    await control._apply_holds(
        {tp: [_message(tp.partition, 0, h, True) for h in ("a", "b")] for tp in (p0, p1)}
    )
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_holds(
        {
            p0: [_message(0, 3, "b", True), _message(0, 5, "a", False), _message(0, 10, "a", True)],
            p1: [_message(1, 3, "a", True), _message(1, 5, "b", False), _message(1, 10, "b", True)],
        }
    )
    assert None not in (holds.get("a"), holds.get("b"))
    assert _warned(caplog) == []


@pytest.mark.asyncio
async def test_a_release_is_judged_on_the_messages_read_since_the_last_judgement_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A release said once is not said again with the next batch; and a placement read in
    an earlier batch, however new its timestamp, does not hide a release read later (its
    newest message read since is the release)."""
    holds = HoldBook()
    control = _control(holds=holds)
    p0, p1 = TopicPartition(HOLDS, 0), TopicPartition(HOLDS, 1)
    await control._apply_holds({p0: [_message(0, 0, "h", True)], p1: [_message(1, 9, "h", True)]})
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_holds({p0: [_message(0, 5, "h", False)]})
    assert _warned(caplog) == [f"legal hold h released at {HOLDS}[0]@5"]
    await control._apply_holds({p0: [_message(0, 6, "other", True)]})
    assert _warned(caplog) == [f"legal hold h released at {HOLDS}[0]@5"]


@pytest.mark.asyncio
async def test_a_null_without_a_key_releases_nothing_and_is_not_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A null under no key names no hold: it is passed over (the reader stopped on it
    otherwise, at every start, the topic being read whole)."""
    holds = HoldBook()
    control = _control(holds=holds)
    p0 = TopicPartition(HOLDS, 0)
    await control._apply_holds({p0: [_message(0, 0, "h", True)]})
    keyless = ConsumerRecord(HOLDS, 0, 1, 1, 0, None, None, None, 0, 0, [])
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_holds({p0: [keyless]})
    assert holds.get("h") is not None
    assert _warned(caplog) == []


@pytest.mark.asyncio
async def test_an_update_that_takes_a_value_away_is_said_at_a_start_too(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read in a start's catch-up, where each update applied is said at debug only, an
    update that takes a value away is still warned about (it may have been sent while no
    instance ran), in the singular for one category."""
    topic = Topics().policies
    value = orjson.dumps({"scope": "default", "ttl": {"conversation": "3m", "error": "1m"}})
    batch = {TopicPartition(topic, 0): [_record(topic, 0, 4, "default", value)]}

    async def read_to_end(
        _cons: Any, name: str, *, then_follow: bool = False
    ) -> AsyncIterator[dict[TopicPartition, list[Any]]]:
        for each in [batch] if name == topic else []:
            yield each

    monkeypatch.setattr("stream_expiry.control.read_to_end", read_to_end)
    control = _control('[retention.defaults]\nsession = "90s"\nerror = "45s"\n')
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control.read_all()
    assert _warned(caplog) == [
        f"policy update default at {topic}[0]@4 replaces the scope's whole ttl map: session "
        "had a value there and now has none from this scope; send every category the scope "
        "should keep in one update (0 for one it should give no value: then this is not said)"
    ]


@pytest.mark.asyncio
async def test_a_release_names_every_partition_still_placing_its_hold_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Placed on partitions 0, 1 and 8, released on 0: the warning names 1 and 8, in that
    order (a set of them iterates 8 first)."""
    control = _control()
    parts = [TopicPartition(HOLDS, p) for p in (0, 1, 8)]
    await control._apply_holds({tp: [_message(tp.partition, 0, "h", True)] for tp in parts})
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    await control._apply_holds({parts[0]: [_message(0, 1, "h", False)]})
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "stays active: it is placed on partition 1, 8 too" in warned[0]


@pytest.mark.asyncio
async def test_a_hold_with_a_misspelt_field_is_placed_as_written_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`{"org": "acme", "record-id": "c9", ...}` (a tool's own spelling) held every record
    of acme, not c9: the unknown field was ignored like any extra one, and the info line
    "placed on org=acme" was all that was said. It is still placed as written (a legal
    hold is never narrowed by guess), with a warning naming the field meant; extra fields
    unlike any of a hold's (a ticket number) say nothing."""
    holds = HoldBook()
    control = _control(holds=holds)
    value = orjson.dumps(
        {"org": "acme", "record-id": "c9", "Category": "conversation", "reason": "case 7",
         "ticket": "LEGAL-12"}
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        await control._apply_holds({TopicPartition(HOLDS, 0): [_record(HOLDS, 0, 5, "h9", value)]})
    placed = holds.get("h9")
    assert placed is not None
    assert (placed.org, placed.category, placed.record_id) == ("acme", None, None)
    assert [r.getMessage() for r in caplog.records] == [
        f"legal hold h9 at {HOLDS}[0]@5 has a field {name!r}, which a hold does not have: "
        f"ignored, so the hold covers org=acme; did you mean {meant!r}? (send it again with "
        "that field to narrow it)"
        for name, meant in (("record-id", "record_id"), ("Category", "category"))
    ]


DEFAULTS_3 = '[retention.defaults]\nconversation = "1d"\nsession = "90s"\nerror = "45s"\n'


async def _start_reading(
    monkeypatch: pytest.MonkeyPatch, ttls: list[dict[str, str] | None]
) -> ControlTopics:
    """A start's catch-up of ``default`` updates at offsets 0, 1, ... (None: a clear)."""
    topic = Topics().policies
    records = [
        _record(topic, 0, offset, "default",
                None if ttl is None else orjson.dumps({"scope": "default", "ttl": ttl}))
        for offset, ttl in enumerate(ttls)
    ]  # fmt: skip

    async def read_to_end(
        _cons: Any, name: str, *, then_follow: bool = False
    ) -> AsyncIterator[dict[TopicPartition, list[Any]]]:
        for each in [{TopicPartition(topic, 0): records}] if name == topic else []:
            yield each

    monkeypatch.setattr("stream_expiry.control.read_to_end", read_to_end)
    control = _control(DEFAULTS_3)
    await control.read_all()
    return control


ALL_3 = {"conversation": "1d", "session": "90s", "error": "45s"}


@pytest.mark.parametrize(
    "later",
    [ALL_3, None, {"conversation": "1d", "session": "0", "error": "0"}],
    ids=["given-back", "cleared", "zero-on-purpose"],
)
@pytest.mark.asyncio
async def test_an_update_a_later_version_mended_is_not_warned_of_at_a_start(
    later: dict[str, str] | None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: ``default@0`` took session and error away, ``default@1`` gave them back
    (or cleared the scope, or gave them 0 on purpose), and every start still warned of
    ``@0``. Nothing is to be sent now: said at info, once, for the records created while
    ``@0`` was in force."""
    caplog.set_level(logging.DEBUG, logger="stream_expiry.service")
    await _start_reading(monkeypatch, [{"conversation": "3m"}, later])
    assert _warned(caplog) == []
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert (
        "1 policy update took categories away from their scope that a later version gives a "
        "value again: records of those categories created in between have no value from that "
        "scope (each one at debug level; `stream-expiry explain --at TS` says what such a "
        "record gets)"
    ) in info
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert (
        f"policy update default at {Topics().policies}[0]@0 took session, error away from its "
        "scope from 1970-01-01T00:00:00.000Z; a later version of the scope gives a value again"
    ) in debug


@pytest.mark.asyncio
async def test_a_start_warns_of_what_the_scope_still_lacks_by_the_last_update_that_took_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``@1`` gave session back but not error: ``@0`` is warned of for error alone. Taken
    away again by ``@3`` after ``@2`` gave it back: ``@3`` is named, once."""
    topic = Topics().policies
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    conversation = {"conversation": "3m"}
    await _start_reading(monkeypatch, [conversation, {**conversation, "session": "1m"}])
    assert _warned(caplog) == [
        f"policy update default at {topic}[0]@0 replaces the scope's whole ttl map: error had "
        "a value there and now has none from this scope; send every category the scope should "
        "keep in one update (0 for one it should give no value: then this is not said)"
    ]
    caplog.clear()
    await _start_reading(monkeypatch, [conversation, ALL_3, ALL_3, conversation])
    assert _warned(caplog) == [
        f"policy update default at {topic}[0]@3 replaces the scope's whole ttl map: session, "
        "error had a value there and now have none from this scope; send every category the "
        "scope should keep in one update (0 for one it should give no value: then this is not "
        "said)"
    ]


@pytest.mark.asyncio
async def test_an_update_read_in_a_catch_up_that_failed_is_warned_of_by_the_next_start(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start's catch-up applied ``default@0`` (it takes session and error away), then
    failed reading on: the session stops before the catch-up is said, and the service
    starts the next one with the same policy book. Read again, ``@0`` takes nothing away
    from that book, which has it already: it was never warned of in that process. Said
    once by the start that reads the topic whole, however many failed before it; not
    again by a later start. Judged by content, not by offset alone: a later start that
    reads the topic made again (its offsets from 0 again) warns of its own ``@0``."""
    topic = Topics().policies

    def default(ttl: dict[str, str]) -> Any:
        return _record(topic, 0, 0, "default", orjson.dumps({"scope": "default", "ttl": ttl}))

    update = default({"conversation": "3m"})
    fails = 3

    async def read_to_end(
        _cons: Any, name: str, *, then_follow: bool = False
    ) -> AsyncIterator[dict[TopicPartition, list[Any]]]:
        nonlocal fails
        if name != topic:
            return
        yield {TopicPartition(topic, 0): [update]}
        if fails:
            fails -= 1
            raise BrokerUnavailableError("the broker went away reading expiry.policies")

    monkeypatch.setattr("stream_expiry.control.read_to_end", read_to_end)
    control = _control(DEFAULTS_3)
    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    while fails:
        with pytest.raises(BrokerUnavailableError):
            await control.read_all()
        assert _warned(caplog) == []  # not before the catch-up is read whole
    await control.read_all()
    said = (
        f"policy update default at {topic}[0]@0 replaces the scope's whole ttl map: session, "
        "error had a value there and now have none from this scope; send every category the "
        "scope should keep in one update (0 for one it should give no value: then this is not "
        "said)"
    )
    assert _warned(caplog) == [said]
    await control.read_all()  # a later session's start
    assert _warned(caplog) == [said]
    update = default({"session": "1m"})  # the topic made again, while the service ran
    await control.read_all()
    assert _warned(caplog)[1:] == [
        f"policy update default at {topic}[0]@0 replaces the scope's whole ttl map: "
        "conversation had a value there and now has none from this scope; send every category "
        "the scope should keep in one update (0 for one it should give no value: then this is "
        "not said)"
    ]


@pytest.mark.asyncio
async def test_a_hold_on_a_category_the_service_does_not_have_is_placed_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tool's hold on ``"category": "conversations"`` (not a configured category) was
    placed with an info line alone and kept nothing: no record has that category, so the
    conversations it was meant for were deleted at their expiry (a trial). `hold place`
    refuses such a category; the service places it as written (a hold is never changed
    by guess) and warns, with the category meant. A configured category says nothing."""
    holds = HoldBook()
    control = _control('[categories]\nnames = ["conversation", "session"]\n', holds=holds)
    typo = orjson.dumps({"org": "acme", "category": "conversations", "reason": "case 8"})
    fine = orjson.dumps({"org": "acme", "category": "session", "reason": "case 9"})
    batch = {
        TopicPartition(HOLDS, 0): [
            _record(HOLDS, 0, 3, "h8", typo),
            _record(HOLDS, 0, 4, "h9", fine),
        ]
    }
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        await control._apply_holds(batch)
    placed = holds.get("h8")
    assert placed is not None
    assert placed.category == "conversations"
    assert holds.get("h9") is not None
    assert [r.getMessage() for r in caplog.records] == [
        f"legal hold h8 at {HOLDS}[0]@3 names category 'conversations', which is not a "
        "configured category (conversation, session): it keeps nothing; did you mean "
        "'conversation'? (place it again with the category meant, then release this one)"
    ]


@pytest.mark.asyncio
async def test_an_update_read_in_a_session_whose_catch_up_failed_is_warned_of_by_the_next_session(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the service runs it: a :class:`ControlTopics` of its own for each session, over
    the service's policy book, and the updates not said yet, which the service keeps
    (``Service._unsaid_drops``). A session's catch-up applied ``default@0`` (it takes
    session and error away) and failed; the next session's, reading it again, found the
    book had it and took nothing away: a review found the warning kept only by the
    ControlTopics of the session that failed, so never said by the service."""
    topic = Topics().policies
    update = _record(
        topic, 0, 0, "default", orjson.dumps({"scope": "default", "ttl": {"conversation": "3m"}})
    )
    fails = 1

    async def read_to_end(
        _cons: Any, name: str, *, then_follow: bool = False
    ) -> AsyncIterator[dict[TopicPartition, list[Any]]]:
        nonlocal fails
        if name != topic:
            return
        yield {TopicPartition(topic, 0): [update]}
        if fails:
            fails -= 1
            raise BrokerUnavailableError("the broker went away reading expiry.policies")

    monkeypatch.setattr("stream_expiry.control.read_to_end", read_to_end)
    book, holds, stats = PolicyBook(parse_config(DEFAULTS_3), {}), HoldBook(), ServiceStats()
    unsaid: UnsaidDrops = {}  # the service's, through its sessions

    def session() -> ControlTopics:  # as Service._session makes one
        absent = cast("Any", None)
        return ControlTopics(
            Topics(), book, holds, stats, policies=absent, holds_reader=absent, prod=absent,
            unsaid_drops=unsaid,
        )  # fmt: skip

    caplog.set_level(logging.INFO, logger="stream_expiry.service")
    with pytest.raises(BrokerUnavailableError):
        await session().read_all()
    assert _warned(caplog) == []
    await session().read_all()
    assert _warned(caplog) == [
        f"policy update default at {topic}[0]@0 replaces the scope's whole ttl map: session, "
        "error had a value there and now have none from this scope; send every category the "
        "scope should keep in one update (0 for one it should give no value: then this is not "
        "said)"
    ]
    await session().read_all()  # a later session's start: said once
    assert len(_warned(caplog)) == 1

"""Tests that kill mutants of round 43's changes the suite let through: each passes on the
code and fails on the mutant named in its docstring (a one-token change: a comparison
flipped, a condition or a branch dropped, a value kept where it was to go). The requests
of erasures a legal hold deferred, on the stamps of their record (``expiry-request*`` and
``expiry-deferred-requests``), in the processor's memory and through a restore of the
changelog; a life due on arrival said on its own stamp alone; redaction whatever the
case; the leader's and ``status``'s word on the policy digests of a rolling upgrade; the
rebalance's summary lines; explain's word on an ``--org`` or ``--bot`` meant. (Explain's
with the policy updates read is on the broker: tests/integration/test_cli.py.)"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.protocol.metadata import MetadataResponse_v0

from stream_expiry.cli import main
from stream_expiry.cliargs import case_note
from stream_expiry.codec import (
    H_DUE_AT_INGEST,
    deferred_requests_in,
    request_in,
)
from stream_expiry.config import parse_config
from stream_expiry.instances import (
    CLIENT_ID,
    Member,
    assignors,
    member_data,
    mixed_policies,
    policy_form_of,
)
from stream_expiry.logs import named
from stream_expiry.reading import InputReading
from stream_expiry.redact import Redactor
from stream_expiry.state import MemoryKV, PartitionStore
from stream_expiry.state import processor as processor_module
from tests.unit.test_deferred_request import _erasures, _named
from tests.unit.test_holds import T0, TTL, Partition, _Rec, hold
from tests.unit.test_instances import _EARLIER_MEMBER_DATA as _EARLIER
from tests.unit.test_late_cause import _restarted
from tests.unit.test_restore_model import Changelog

if TYPE_CHECKING:
    from pathlib import Path

    from stream_expiry.state import Effects


def _read(p: Partition, events: list[tuple[str, int, str | None]], now: int) -> Effects:
    """``events`` (op, ts, event_id) of record ``c``, category session, read in one batch
    (one ``process`` call, as the service reads a slice) at ``now``, not settled."""
    records = []
    for op, ts, event_id in events:
        p.offset += 1
        body: dict[str, object] = {
            "category": "session", "org": "acme", "bot": "b1", "record_id": "c", "op": op,
            "ts": ts,
        }  # fmt: skip
        if event_id is not None:
            body["event_id"] = event_id
        records.append(_Rec(p.offset, None, orjson.dumps(body)))
    return p.proc.process(records, now)


def _slice(p: Partition, events: list[tuple[str, int, str | None]], now: int) -> Effects:
    """:func:`_read`, settled at ``now``."""
    return p._take(_read(p, events, now), now)


def _restored_release(p: Partition, log: Changelog, now: int) -> list[tuple[int | None, object]]:
    """``p``'s partition restored from its compacted changelog after the release, ticked
    at ``now``: each explicit tombstone's life's creation and the request it names."""
    q = _restarted(p, log.compacted().restore(now, PartitionStore(MemoryKV())))
    q.tick(now)
    return [(f.before.created_at, f.request) for f in q.fired if f.reason == "explicit"]


# --- a stamp's own erasure's request --------------------------------------------------------


def test_a_deferred_erasure_of_a_record_never_seen_restored_names_its_request() -> None:
    """An erasure of a record the service never saw (no creation: it names no life),
    deferred by a hold and restored from the changelog, names its request at the release:
    its stamp carries ``expiry-request*``. Mutant ``own = (state.erase_at, True)`` in
    ``outbox._stamp_headers`` (the kind taken as "names a life") looked the stamp's own
    request up under the wrong kind and wrote none: the restored tombstone named none."""
    log = Changelog()
    p = Partition()
    p.holds.place(hold())
    log.write(p.event("c", "delete", T0, event_id="gdpr-7"), T0)
    p.holds.release("h1")
    assert request_in(log.stamped[-1].headers) == _named(1, "gdpr-7")
    assert _restored_release(p, log, T0 + 3 * TTL) == [(None, _named(1, "gdpr-7"))]


# --- every stamp of the record while its erasures wait ----------------------------------


def test_a_touch_of_the_next_life_carries_the_erased_lifes_request() -> None:
    """A session erased under a hold (``gdpr-7``), created again (its next life keeps the
    erased one), then touched: the touch's stamp, the record's latest, still names the
    erased life's request, and a restore of the compacted changelog names it at the
    release. Mutant ``if prior is not None and prior.erase_at is not None`` (the carry
    asked only of a state with its own erasure, not of one keeping an erased life): the
    touch's stamp named nothing, and the restored tombstone named no request."""
    log = Changelog()
    p = Partition()
    p.holds.place(hold())
    for op, ts, event_id in (
        ("create", T0, None),
        ("delete", T0 + 10, "gdpr-7"),
        ("create", T0 + 20, None),
        ("touch", T0 + 30, None),
    ):
        log.write(p.event("c", op, ts, category="session", event_id=event_id), ts)
    p.holds.release("h1")
    erased = {(T0 + 10, True): _named(2, "gdpr-7")}
    assert deferred_requests_in(log.stamped[-1].headers) == erased
    assert _restored_release(p, log, T0 + 3 * TTL) == [(T0, _named(2, "gdpr-7"))]


def test_a_stamp_names_no_erasure_its_record_does_not_keep_yet() -> None:
    """One batch: a session created, erased (``gdpr-7``), created again, erased again
    (``gdpr-8``). The third stamp (the next life, keeping the erased one) names the
    first erasure alone in ``expiry-deferred-requests``: the second is not asked yet
    there; at the release each names its own. Mutant ``others = {... if e != own}`` (the
    record's waiting erasures not looked at) put the batch's later erasure on the earlier
    stamp; mutant ``_known_requests`` returning the store's alone (the batch's first
    request, not settled yet, not looked at) lost the first erasure's request: named on
    no stamp and at the release by no tombstone."""
    log = Changelog()
    p = Partition()
    p.holds.place(hold())
    events = [
        ("create", T0, None),
        ("delete", T0 + 10, "gdpr-7"),
        ("create", T0 + 20, None),
        ("delete", T0 + 30, "gdpr-8"),
    ]
    log.write(_slice(p, events, T0 + 40), T0 + 40)
    said = [deferred_requests_in(m.headers) for m in log.stamped]
    first = {(T0 + 10, True): _named(2, "gdpr-7")}
    assert said == [{}, {}, first, first]
    assert request_in(log.stamped[-1].headers) == _named(4, "gdpr-8")
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL)
    assert _erasures(p) == [("c", _named(2, "gdpr-7")), ("c", _named(4, "gdpr-8"))]


def test_a_release_read_before_the_deferral_settles_leaves_its_stamps_request() -> None:
    """An erasure deferred (``gdpr-7``), the hold released, and the record's next event
    read (the release's tombstone names the request) before the deferral's effects are
    written: the deferral's stamp still names its request. Mutant
    ``effects.held_requests[key] = kept`` (the processor's own dict handed out, not a
    copy): the release took the request from it, and the stamp went out naming none, so
    a restore of the changelog before the release's tombstone lost it."""
    log = Changelog()
    p = Partition()
    p.holds.place(hold())
    log.write(p.event("c", "create", T0, category="session"), T0)
    deferral = _read(p, [("delete", T0 + 10, "gdpr-7")], T0 + 10)
    p.holds.release("h1")
    release = _read(p, [("create", T0 + 20, None)], T0 + 20)
    assert [f.request for f in release.tombstones if f.reason == "explicit"] == [
        _named(2, "gdpr-7")
    ]
    log.write(deferral, T0 + 10)
    assert request_in(log.stamped[-1].headers) == _named(2, "gdpr-7")


def test_the_requests_a_processor_keeps_in_memory_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The processor notes deferred erasure requests for at most ``_ARRIVED_DUE_MAX``
    records (the store has them all from the settle on): the release still names each,
    and the processor forgets each record's requests once released. Mutant without the
    eviction kept one entry per record erased under a hold, for as long as the hold
    lasts (a hold over millions of records); mutants ``noted.get`` (for ``pop``) and
    without the ``del`` of a record's emptied entry kept them after the release."""
    monkeypatch.setattr(processor_module, "_ARRIVED_DUE_MAX", 2)
    p = Partition()
    p.holds.place(hold())
    for n, rid in enumerate(("a", "b", "c")):
        p.event(rid, "create", T0 + n)
        p.event(rid, "delete", T0 + 10 + n, event_id=f"gdpr-{rid}")
    assert len(p.proc._held_requests) == 2
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL)
    assert sorted(_erasures(p)) == [
        ("a", _named(2, "gdpr-a")),
        ("b", _named(4, "gdpr-b")),
        ("c", _named(6, "gdpr-c")),
    ]
    assert p.proc._held_requests == {}


# --- a life due on arrival ------------------------------------------------------------------


def test_only_the_stamp_of_the_life_due_on_arrival_says_so() -> None:
    """One batch read late: a create whose life was already due, then the next life's
    create. The first stamp says ``expiry-due-at-ingest`` (its expiry); the next life's,
    whose expiry is another, says nothing. Mutant ``if due is not None`` (the stamp's
    expiry not compared) put the first life's due time on the next life's stamp."""
    log = Changelog()
    p = Partition()
    late = T0 + 5 * TTL
    log.write(_slice(p, [("create", T0, None), ("create", late, None)], late + 1), late + 1)
    said = [[v for n, v in m.headers if n == H_DUE_AT_INGEST] for m in log.stamped]
    assert said[0] == [b"%d" % (T0 + TTL)]
    assert said[-1] == []


# --- redaction whatever the case ------------------------------------------------------------


def test_a_path_matches_keys_that_case_folding_alone_makes_equal() -> None:
    """``str.casefold``, as the module's rules say, not ``lower``: a German producer's
    ``STRASSE`` is the rule ``adresse.straße``'s key, and ``Straße`` the rule
    ``adresse.strasse``'s (``"ß".casefold() == "ss"``; ``"ß".lower() == "ß"``). Mutant
    ``segment.lower()`` in ``fold_path`` left the first on the stamp; mutant
    ``key.lower()`` in ``_remove``, the second."""
    by_sharp_s = Redactor.from_config({"conversation": ["adresse.Straße"]})
    assert by_sharp_s.redact("conversation", {"adresse": {"STRASSE": "x", "ort": "y"}}) == (
        {"adresse": {"ort": "y"}},
        ("adresse.STRASSE",),
    )
    by_ss = Redactor.from_config({"conversation": ["adresse.strasse"]})
    assert by_ss.redact("conversation", {"Adresse": {"Straße": "x"}}) == (
        {"Adresse": {}},
        ("Adresse.Straße",),
    )


def test_paths_alike_but_for_case_are_warned_of_from_two_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two paths of one category that differ only in case are one rule: said. Mutant
    ``len(alike) > 2`` warned of three alike paths only (the suite's case), not two."""
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        parse_config('[redact]\nconversation = ["user.email", "User.Email"]\n')
    assert any("differ only in case" in r.getMessage() for r in caplog.records)


# --- a leader of a rolling upgrade, and status --json -----------------------------------


def _leader_says(caplog: pytest.LogCaptureFixture, **user_data: bytes) -> list[str]:
    """What the range assignor, leading a group of members joined with ``user_data``
    (member id -> its subscription's user data), logs as it assigns one partition."""
    cluster = ClusterMetadata()
    cluster.update_metadata(
        MetadataResponse_v0(brokers=[(0, "h", 1)], topics=[(0, "in", [(0, 0, 0, [0], [0])])])
    )
    members = {m: ConsumerProtocolMemberMetadata(0, ["in"], d) for m, d in user_data.items()}
    range_assignor, _ = assignors("p1")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stream_expiry"):
        range_assignor.assign(cluster, members)
    return [r.getMessage() for r in caplog.records]


def test_a_leader_compares_digests_of_its_own_form_and_names_the_earlier_versions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The leader of a rolling upgrade, one config file everywhere: no warning of
    different policies, one line naming the instance of the earlier version. Mutant
    ``mixed_policies(policies)`` (the forms not passed) warned of different policies all
    through the upgrade (the trial 72a3bb8 mended); mutant without the ``earlier_digests``
    line said nothing of the upgrade."""
    said = _leader_says(caplog, new=member_data("p1"), old=_EARLIER)
    assert not any("run with different policies" in line for line in said), said
    assert next(line for line in said if "earlier version" in line).startswith(
        "1 instance of this group (old) runs an earlier version"
    )
    differ = _leader_says(caplog, a=member_data("p1"), b=member_data("p2"))
    assert any("run with different policies" in line for line in differ), differ


def test_a_form_that_is_no_integer_is_the_earlier_form() -> None:
    """A member whose ``policy_form`` is not an integer (another writer's, damaged) says
    a digest of unknown form, compared with none of this version's: the earlier form's
    rule. Mutant returning this version's form compared it, and warned of different
    policies; a JSON ``true`` is no form either (``status --json`` says 1, not true)."""
    for form in (b'"2"', b"2.0", b"true"):
        said = policy_form_of(b'{"policy": "abc", "policy_form": %s}' % form)
        assert (said, type(said)) == (1, int), form


def test_the_forms_digests_of_this_version_are_compared_first() -> None:
    """Members differing within this version's form and within the earlier form: the
    sentence is of this version's (the one its operator can act on). Mutant
    ``sorted(by_form)`` (earlier form first) named the earlier version's members."""
    policies = {"a": "p1", "b": "p2", "x": "q1", "y": "q2"}
    said = mixed_policies(policies, {"a": 2, "b": 2, "x": 1, "y": 1}) or ""
    assert "policy p1 on 1 (a); policy p2 on 1 (b)" in said, said


def test_a_member_without_a_digest_says_no_form_in_json() -> None:
    """``status --json``: ``policy_form`` is null where ``policy`` is, as there is no
    digest to have a form. Mutant without the condition said form 2 of no digest."""
    member = Member("m", CLIENT_ID, "h", None)
    assert (member.as_dict()["policy"], member.as_dict()["policy_form"]) == (None, None)
    assert Member("m", CLIENT_ID, "h", None, policy="p1").as_dict()["policy_form"] == 2


# --- a rebalance's lines ---------------------------------------------------------------------


def test_named_shows_eight_and_counts_one_more() -> None:
    """Nine names: the first eight, ", and 1 more" (one name beyond the eight is counted
    too). Mutant ``rest > 1`` dropped the ninth without a word; mutant
    ``NAMED_AT_MOST = 9`` showed nine of ten where the rebalance lines name eight."""
    names = [f"t[{n}]" for n in range(10)]
    assert named(names[:9]) == ", ".join(names[:8]) + ", and 1 more"
    assert named(names) == ", ".join(names[:8]) + ", and 2 more"
    assert named(names[:8]) == ", ".join(names[:8])


# --- explain's and hold place's word on an id meant -------------------------------------


def test_the_case_note_folds_case_as_the_search_for_the_id_meant_does() -> None:
    """The org meant is found with ``casefold``: ``STRASSE`` stands for ``straße``, which
    differs from it only in case, and the note says so. Mutant ``lower()`` left the note
    out (``"ß".lower()`` is ``"ß"``)."""
    assert case_note("org", "STRASSE", "straße") == " (org ids are case-sensitive)"
    assert case_note("bot", "strase", "straße") == ""


def test_explain_says_nothing_of_the_contracts_no_bot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--bot _`` is the contract's "no bot": never a misspelt bot, even beside a bot
    whose id is close to it (``_a``). Mutant asking ``bot_meant`` of ``_`` too said "did
    you mean '_a'?" of an answer for no bot at all."""
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('[retention.bots.acme._a.live]\nconversation = "7d"\n')
    base = ["explain", "--config", str(cfg), "--offline", "--category", "conversation"]
    assert main([*base, "--org", "acme", "--bot", "_"]) == 0
    assert "did you mean" not in capsys.readouterr().err
    assert main([*base, "--org", "acme", "--bot", "_A"]) == 0
    assert "did you mean '_a'?" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_the_backlogs_read_are_said_in_one_line_once_every_partition_has_read_its(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An assignment of two partitions with a backlog each: nothing said while one still
    reads its, then one line for both; the next assignment's line counts its own alone.
    Mutant without the check of the partitions still reading said "1 partition has read"
    at the first (a line a partition, as before); mutant without the reset of the count
    said "3 partitions" at the next assignment's one."""
    reading = InputReading(lambda slot, at: None, lambda tp, at: None)
    a, b, c = (TopicPartition("in", p) for p in range(3))
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # never started: no broker

    async def read(tp: TopicPartition) -> list[str]:
        reading.take(tp, [_Rec(0, None, None), _Rec(1, None, None)], reading.seeks)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="stream_expiry"):
            await reading.caught_up(consumer)
        return [r.getMessage() for r in caplog.records if "read the backlog" in r.getMessage()]

    try:
        reading.assigned([("in", 0), ("in", 1)])
        for tp in (a, b):
            reading.positioned(tp, 0, 2)
        assert await read(a) == []
        assert await read(b) == [
            "2 partitions have read the backlog found when assigned: their due timers fire"
        ]
        reading.assigned([("in", 2)])
        reading.positioned(c, 0, 2)
        assert await read(c) == [
            "1 partition has read the backlog found when assigned: their due timers fire"
        ]
    finally:
        await consumer.stop()

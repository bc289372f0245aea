"""Tests that kill mutants of round 40's changes the suite let through: each passes on the
code and fails on the mutant named in its docstring (a one-token change to the module: a
comparison flipped, an input of the digest left out, a condition dropped, a constant
moved). Instances (policy digests in the group), misspelt event fields, and the sinks'
telling of a message read again after its marker was pruned."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from aiokafka.protocol.admin import DescribeGroupsResponse_v2

from stream_expiry.config import parse_config
from stream_expiry.instances import CLIENT_ID, mixed_policies, parse_description, policy_of
from stream_expiry.model import (
    Identity,
    InputEvent,
    Rejection,
    Stamp,
    encode_tombstone,
    parse_event,
)
from stream_expiry.policy import PolicyBook, Resolution
from stream_expiry.service import Service
from stream_expiry.sinks._logic import plan
from stream_expiry.sinks._messages import NullChange, TombstoneChange, decode_tombstone
from stream_expiry.sinks.store import MemoryStore
from stream_expiry.state import MemoryKV, PartitionProcessor, PartitionStore
from tests.unit.test_sinks_logic import MIN, T0, A, World, life, st_change

if TYPE_CHECKING:
    from collections.abc import Mapping


HOUR = 60 * MIN


# --- instances: what a member says of its policy, and the sentence on differing ones -------


def test_a_member_whose_user_data_names_a_policy_that_is_not_text_says_none() -> None:
    """Another program's JSON user data with a number for "policy": no digest. Mutant
    ``return policy`` (the isinstance check dropped in ``policy_of``) took the number for
    one, and the leader's sentence then sorted a number among the digests: a TypeError in
    the assignment, which every rebalance of the group would meet."""
    assert policy_of(b'{"policy": 5}') is None
    assert policy_of(b'{"policy": ["p1"]}') is None
    odd = ConsumerProtocolMemberMetadata(0, ["t"], b'{"policy": 5}').encode()
    ours = ConsumerProtocolMemberMetadata(0, ["t"], b'{"policy": "p1"}').encode()
    response = DescribeGroupsResponse_v2(
        throttle_time_ms=0,
        groups=[(0, "g", "Stable", "consumer", "range", [
            ("m1", CLIENT_ID, "/h1", ours, b""),
            ("m2", "other", "/h2", odd, b""),
        ])],
    )  # fmt: skip
    members = parse_description("g", [response]).members
    assert [(m.member_id, m.policy) for m in members] == [("m1", "p1"), ("m2", None)]
    assert mixed_policies({m.member_id: m.policy for m in members}) is None


def test_the_sentence_on_differing_policies_names_members_in_their_order() -> None:
    """Whatever order the group gives its members in (the leader's assignment takes them
    as they joined): the same group, the same sentence. Mutant
    ``for member, policy in policies.items()`` (unsorted) named them as given."""
    said = mixed_policies({"c": "p1", "b": "p2", "a": "p1"})
    assert said is not None
    assert "policy p1 on 2 (a, c); policy p2 on 1 (b). " in said


# --- PolicyBook.digest: what decides a TTL is in it ---------------------------------------


def _digest(text: str) -> str:
    config = parse_config(text)
    return PolicyBook(config, {}).digest(config.sliding)


BASE = '[retention.defaults]\nconversation = "30d"\n'


def test_a_bots_ttl_is_in_the_digest_and_so_is_which_bot_it_is() -> None:
    """Mutants: the bots' scopes left out of the digest (an instance whose file sets a
    bot's TTL joined with the same digest as one whose file does not), and their keys
    left out (a TTL for bot b1 alike to the same TTL for bot b2)."""
    b1 = BASE + '[retention.bots.acme.b1.live]\nconversation = "1d"\n'
    b2 = BASE + '[retention.bots.acme.b2.live]\nconversation = "1d"\n'
    draft = BASE + '[retention.bots.acme.b1.draft]\nconversation = "1d"\n'
    assert len({_digest(BASE), _digest(b1), _digest(b2), _digest(draft)}) == 4


def test_an_orgs_name_is_in_the_digest() -> None:
    """Mutant: the orgs' names left out (only their TTLs in it): acme's 1 day alike to
    globex's, while the two instances stamp each org's records differently."""
    acme = BASE + '[retention.orgs.acme]\nconversation = "1d"\n'
    globex = BASE + '[retention.orgs.globex]\nconversation = "1d"\n'
    assert _digest(acme) != _digest(globex)


def test_the_category_a_value_is_for_is_in_the_digest() -> None:
    """Mutant: a scope's values without their categories: 30 days for conversations alike
    to 30 days for sessions."""
    sessions = '[retention.defaults]\nsession = "30d"\n'
    assert _digest(BASE) != _digest(sessions)


def test_the_configured_categories_are_in_the_digest() -> None:
    """An instance that knows a category the other does not stamps its events where the
    other dead-letters them (unknown_category). Mutant: the categories left out."""
    more = '[categories]\nnames = ["conversation", "session", "error", "step"]\n' + BASE
    assert parse_config(more).categories != parse_config(BASE).categories
    assert _digest(more) != _digest(BASE)


def test_the_digest_is_twelve_hex_characters() -> None:
    """As the README and status show it. Mutant: ``[:11]``."""
    assert re.fullmatch(r"[0-9a-f]{12}", _digest(BASE))


# --- misspelt event fields ----------------------------------------------------------------

NOW = 1_796_369_399_212
EVENT = {"category": "conversation", "org": "acme", "record_id": "r1", "ts": NOW - 1_000}
CATEGORIES = frozenset({"conversation"})


def _parse(body: Mapping[str, Any]) -> InputEvent | Rejection:
    return parse_event(orjson.dumps(body), categories=CATEGORIES, now_ms=NOW, max_skew_ms=0)


def _record(offset: int, body: Mapping[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(
        topic="conversations", partition=1, offset=offset, key=b"k", value=orjson.dumps(body)
    )


def test_the_service_names_the_default_of_op_event_id_and_data_that_is_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Mutants of ``event_fields.DEFAULTS``: the line said op's default was 'touch', or
    event_id's null, or data's none (the existing test saw only env's and bot's)."""
    proc = PartitionProcessor(
        "conversations",
        1,
        PartitionStore(MemoryKV()),
        resolve=lambda _i, _t: Resolution(86_400_000, "org"),
        sliding=frozenset(),
        categories=CATEGORIES,
        max_skew_ms=0,
        now_ms=NOW,
    )
    body = {**EVENT, "operation": "touch", "messageId": "e1", "payload": {"a": 1}}
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    with caplog.at_level(logging.WARNING, logger="stream_expiry.service"):
        service._count(proc.process([_record(3, body)], NOW))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3, said
    assert "they take op's default, 'create' (" in said[0]
    assert "they take event_id's default, none (" in said[1]
    assert "they take data's default, null (" in said[2]


def test_a_missing_fields_dead_letter_names_the_spelling_of_that_field_not_another() -> None:
    """An event with ``environment`` (for env) before ``recordId`` and no record_id: the
    detail names ``recordId``. Mutant: the check that the misspelt name stands for the
    missing field dropped, which named ``environment``."""
    body = {k: v for k, v in EVENT.items() if k != "record_id"}
    got = _parse({"environment": "draft", **body, "recordId": "r1"})
    assert got == Rejection(
        "missing_field", "field 'record_id' is required; the event has 'recordId': is that it?"
    )


def test_an_event_read_by_the_full_validation_has_its_misspelt_names_said_too() -> None:
    """An event the fast path does not take (``ts`` in RFC 3339, as the contract allows):
    its misspelt names are found all the same. Mutant: ``extra = False`` on that path,
    which never looked at its names."""
    got = _parse({**EVENT, "ts": "2026-12-04T07:00:00Z", "environment": "draft"})
    assert isinstance(got, InputEvent)
    assert got.misspelt == (("environment", "env"),)


# --- sinks: a message that found nothing, read again after its marker was pruned -----------


TOMBS = "expiry.tombstones"
STAMPED = "expiry.stamped"


def _erasure(at: int | None, identity: Identity = A) -> TombstoneChange:
    """The erasure of a record the store never held, read with Kafka timestamp ``at``."""
    unseen = Stamp(identity, None, None, None, None)
    value = encode_tombstone(unseen, reason="explicit", emitted_at=T0)
    headers = [("expiry-deleted-at", str(T0).encode())]
    return decode_tombstone(None, value, headers, timestamp=at, topic=TOMBS, partition=0)


def _of(identity: Identity, record_id: str) -> Identity:
    i = identity
    return Identity(i.org, i.bot, i.env, i.category, record_id)


def test_a_plan_with_the_bound_lists_no_null_and_one_without_lists_the_erasures_nulls() -> None:
    """``Plan.found_nothing_at`` (part of the sink interface a store implements) lists the
    messages planned without the pruning's bound that found nothing: an erasure's null
    that finds no row and no marker, not a ttl null nor one that deletes a row, and none
    when the bound was given. Mutant: the null's entry made whether or not the bound was
    given (the tombstone's case had a test)."""
    held = _of(A, "held")
    nulls = [
        NullChange(A, 0, 1, reason="explicit", timestamp=T0 + 5, topic=STAMPED),
        NullChange(_of(A, "ttl"), 0, 2, reason="ttl", timestamp=T0 + 6, topic=STAMPED),
        NullChange(held, 0, 9, reason="explicit", timestamp=T0 + 7, topic=STAMPED),
    ]
    w = World()
    w.apply([st_change(life(i=held), offset=1)])
    p = plan(nulls, w.state, store="s", now_ms=T0, new_id=lambda: "r")
    assert (p.found_nothing_at, p.deleted) == ([((STAMPED, 0), T0 + 5)], 1)
    bounds = {(STAMPED, 0): T0 - 1}
    p = plan(nulls, w.state, store="s", now_ms=T0, new_id=lambda: "r", pruned_before=bounds)
    assert (p.found_nothing_at, p.deleted) == ([], 1)


@pytest.mark.asyncio
async def test_a_batch_with_a_reread_erasure_and_a_first_one_has_one_receipt_for_the_first() -> (
    None
):
    """One batch: an erasure read again after its marker was pruned, and another read for
    the first time, dated after the bound. The re-read leaves no second receipt, the new
    one its first. Mutant: the store planned again only when the latest (``max``) of the
    batch's found-nothing times was at or before the bound: the re-read wrote a second
    receipt."""
    store = MemoryStore("m")
    old = _erasure(T0, _of(A, "old"))
    out = await store.apply([old], now_ms=T0 + 1)
    assert [r.rows_deleted for r in out.receipts] == [0]
    # bound kept: T0 + 1 h
    await store.prune(settled_before_ms=T0 + 2 * HOUR, limit=100, sources=[(TOMBS, 0)])
    assert await store.marker(old.identity) is None
    new = _erasure(T0 + 90 * MIN, _of(A, "new"))
    out = await store.apply([old, new], now_ms=T0 + 3 * HOUR)
    assert [(r.identity.record_id, r.rows_deleted) for r in out.receipts] == [("new", 0)]


@pytest.mark.asyncio
@pytest.mark.parametrize(("before", "receipts"), [(59 * MIN, 1), (61 * MIN, 0)])
async def test_the_margin_below_the_prunings_bound_is_an_hour(before: int, receipts: int) -> None:
    """README rule 7: a tombstone event that finds nothing, dated more than an hour before
    the bound a pruning used, is a re-read (no receipt); within that hour, it is taken for
    a first reading (its receipt). Mutants of ``REREAD_MARGIN_MS``: two hours (61 minutes
    before left a second receipt) and one minute (59 minutes before left none)."""
    store = MemoryStore("m")
    pruned_at = T0 + 10 * HOUR
    # --marker-grace 0
    await store.prune(settled_before_ms=pruned_at, limit=100, sources=[(TOMBS, 0)])
    out = await store.apply([_erasure(pruned_at - before)], now_ms=pruned_at + MIN)
    assert len(out.receipts) == receipts


def test_an_org_or_bot_without_values_is_not_in_the_digest() -> None:
    """An empty ``[retention.orgs.acme]`` (its values commented out on one host) decides
    no TTL, and neither does the empty first version a policy update makes for a scope
    the file does not name: neither changes the digest. Both did, so the first warned of
    different policies between instances that stamp alike, and the second would have
    made the digest depend on when it was taken (the docstring: updates are left out)."""
    assert _digest(BASE + "[retention.orgs.acme]\n") == _digest(BASE)
    assert _digest(BASE + "[retention.bots.acme.b1.live]\n") == _digest(BASE)
    config = parse_config(BASE)
    book = PolicyBook(config, {})
    before = book.digest(config.sliding)
    for key, scope in ((b"org/acme", {"org": "acme"}), (b"bot/acme/b1/live", {
        "org": "acme", "bot": "b1", "env": "live"
    })):  # fmt: skip
        kind = key.split(b"/")[0].decode()
        value = orjson.dumps({"scope": kind, **scope, "ttl": {"conversation": "1d"}})
        assert not isinstance(book.apply_update(key, value, T0), Rejection)
    assert book.digest(config.sliding) == before

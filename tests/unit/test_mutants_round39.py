"""Tests that kill mutants of round 39's changes the unit suite let through: each passes on
the code and fails on the mutant named in its docstring (a one-token change to the module:
a comparison flipped, a constant moved, a statement of an ``if`` left out)."""

from __future__ import annotations

import logging

import orjson
import pytest

from stream_expiry.config import load_config
from stream_expiry.holds import misspelt_fields
from stream_expiry.model import Identity, Stamp
from stream_expiry.policy import PolicyUpdate
from tests.unit.test_holds import (
    KEY_A,
    T0,
    TTL,
    Partition,
    _erased_then_back_then_expired,
    _sent,
    hold,
)
from tests.unit.test_policy_updates import update

KEY_IDENTITY = Identity("acme", "b1", "live", "conversation", "a")
END = T0 + 199 + TTL  # the end of the second life of ``_erased_then_back_then_expired``


# --- processor: an erasure naming no life under a hold (``Stamp.ended_life``) -------------


def test_an_erasure_at_an_ended_lifes_creation_read_under_a_hold_is_that_lifes() -> None:
    """Dated exactly at the second life's creation, the request is that life's (the
    engine's ``_erase_ended``: events up to an erasure's time are its life's), read under a
    hold after the life expired: the release sends it as without the hold, ending at the
    life's end with an explicit null. Mutant ``ev.ts <= prior.created_at`` (for ``<``) in
    ``_hold_event`` deferred it as naming no life: it went out ending at its own time with
    no null, and the second life's archived data it named was never erased."""
    p = _erased_then_back_then_expired()
    p.event("a", "delete", T0 + 200, now=T0 + 2 * TTL)
    assert [d[1] for d in p.deferred] == ["explicit"]
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL)
    assert [_sent(f) for f in p.fired] == [("explicit", None, END, "explicit")]
    without = _erased_then_back_then_expired()
    without.holds.release("h1")
    without.event("a", "delete", T0 + 200, now=T0 + 2 * TTL)
    assert [_sent(f) for f in without.fired] == [_sent(f) for f in p.fired]


def test_the_ended_lifes_erasure_at_its_creation_takes_the_old_ones_place() -> None:
    """While an erasure naming no life (dated before the second life's creation) waits, a
    request dated exactly at that life's creation is read: it is that life's erasure, and
    it ends every life before, so it is what the release sends. Mutant ``created < ev.ts``
    (for ``<=``) took it for a re-delivery of the kept one and dropped it: the release sent
    the old erasure alone, ending at T0 + 100, and the second life's data stayed."""
    p = _erased_then_back_then_expired()
    p.event("a", "delete", T0 + 100, now=T0 + 2 * TTL)
    own = p.event("a", "delete", T0 + 200, now=T0 + 2 * TTL)
    assert [(s.created_at, s.erase_at, s.held_lives) for s, _ in own.stamps] == [
        (None, T0 + 200, ())
    ]
    p.holds.release("h1")
    p.tick(T0 + 3 * TTL)
    assert [_sent(f) for f in p.fired] == [("explicit", None, END, "explicit")]


def test_an_event_finding_a_released_erasure_naming_no_life_sends_its_tombstones_first() -> None:
    """The hold released, its scan not come yet: a create of the record's next life finds
    the erasure naming no life first and lets it go (``_let_go_now``, ``ordered``). On
    ``expiry.stamped`` the ended life's null must come before the next life's stamp, or
    compaction keeps the null and the new life is lost. Mutant: ``stamps_before`` left out
    in the ``ended_life`` branch put the tombstones after every stamp of the batch."""
    p = _erased_then_back_then_expired()
    p.event("a", "delete", T0 + 100, now=T0 + 2 * TTL)
    p.holds.release("h1")
    effects = p.event("a", "create", T0 + 3 * TTL)
    runs = [([s.created_at for s, _ in stamps], [_sent(f) for f in fired])
            for stamps, fired in effects.runs()]  # fmt: skip
    assert runs == [
        ([], [("explicit", None, T0 + 100, None), (None, T0 + 200, END, "ttl")]),
        ([T0 + 3 * TTL], []),
    ]
    state = p.proc.state_of(KEY_A)
    assert state is not None
    assert (state.created_at, state.previous_deleted_at, state.held_lives) == (
        T0 + 3 * TTL,
        END,
        (),
    )


def test_an_erasure_before_1970_of_a_restored_ttl_marker_goes_out_as_without_the_hold() -> None:
    """A ttl null restored (``restore``: a marker that knows its deletion's time only, no
    creation) and an erasure dated before 1970 (valid: the contract takes years 1 to 9999)
    read under a hold: with no creation known it is the ended life's erasure, and the
    release sends what is sent without the hold, ending at the deletion with an explicit
    null. Mutant ``ev.ts < (prior.created_at or 0)`` (for the ``is not None`` test) took
    it for one dated before the life's creation: released naming no life, ending at its
    own time, and then a ``ttl`` tombstone of a life with no creation."""
    sent = []
    for held in (True, False):
        p = Partition()
        marker = Stamp(KEY_IDENTITY, None, None, None, None, T0)  # deleted at T0
        p.proc.store.write([(None, marker)], now_ms=T0)
        if held:
            p.holds.place(hold())
        p.event("a", "delete", -5, now=T0 + 10)
        if held:
            assert p.fired == []
            p.holds.release("h1")
            p.tick(T0 + 20)
        sent.append([_sent(f) for f in p.fired])
    assert sent[0] == sent[1] == [("explicit", None, T0, "explicit")]


# --- processor: creates parked for an expiry a create moved back (``_unpark_ended``) -----


def test_a_create_moved_back_to_an_expiry_due_right_now_wakes_the_parked_create_at_once() -> None:
    """Moved back to an expiry that is the clock's time exactly, the running life is due
    (never early, and never late: ``due <= now``), as a create read now finds it; so the
    parked create is decided at once: the life's ``ttl`` tombstone, then the next life.
    Mutant ``due < now_ms`` left it parked for a wake-up that only the next firing gives."""
    p = Partition()
    p.event("a", "create", T0)  # expires at T0 + TTL
    assert dict(p.event("a", "create", T0 + TTL + 500, now=T0 + 100).verdicts) == {"parked": 1}
    moved = p.event("a", "create", T0 - 600, now=T0 + 400)  # expires at T0 + 400: now
    assert [(s.created_at, s.expires_at) for s, _ in moved.stamps] == [
        (T0 - 600, T0 + 400),
        (T0 + TTL + 500, T0 + 2 * TTL + 500),
    ]
    assert p.tombstones == [("a", "ttl", T0 + 400, T0 + 400)]
    assert p.proc.parked == 0


# --- config: misspelt TTL variables ---------------------------------------------------------


def test_a_ttl_variable_with_a_word_left_out_or_in_lower_case_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``INSIGHTS_MAX_ANALYTICS_TTL_IN_MINUTES`` (``RAW_`` left out: 0.8 alike, the cutoff)
    and the insights conversation variable in lower case. Every misspelt name the first
    test gave has its category word right, so mutants of the cutoff to 0.9 (a word left
    out said nothing) and of ``name.upper().startswith("INSIGHTS_")`` to ``name.startswith``
    (the lower-case insights name taken for the platform's: "no such variable", the other
    variable named) passed it."""
    env = {
        "INSIGHTS_MAX_ANALYTICS_TTL_IN_MINUTES": "60",
        "insights_max_conversations_ttl_in_minutes": "60",
    }
    with caplog.at_level(logging.WARNING, logger="stream_expiry.config"):
        load_config(None, environ=env)
    tail = "`stream-expiry explain` lists the TTL variables each category reads"
    assert [r.getMessage() for r in caplog.records] == [
        "$INSIGHTS_MAX_ANALYTICS_TTL_IN_MINUTES gives no TTL (no such variable), so it is "
        f"ignored; did you mean $INSIGHTS_MAX_RAW_ANALYTICS_TTL_IN_MINUTES? {tail}",
        "$insights_max_conversations_ttl_in_minutes gives no TTL (names are case-sensitive), "
        f"so it is ignored; did you mean $INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES? {tail}",
    ]


# --- errors.misspelt, through a hold's fields ---------------------------------------------


def test_a_holds_fields_close_to_its_own_are_found_at_the_cutoff_and_no_further() -> None:
    """``rec-id`` is 0.8 alike to ``record_id`` once ``-`` reads as ``_`` (0.67 without),
    ``placedAt`` and ``holdId`` are a hold's own fields in another spelling, and
    ``placed_by`` (0.78 alike to ``placed_at``) is a field of its own, said nothing of.
    Mutants each left one of these out, as the placed test's fields (``record-id``,
    ``Category``, ``ticket``) did not: ``-`` not read as ``_``, a cutoff of 0.9 or of 0.6,
    ``placed_at`` or ``hold_id`` left out of the fields a hold has."""
    value = {"hold_id": "h9", "org": "acme", "rec-id": "c9", "placedAt": "2027-01-01T00:00:00Z",
             "holdId": "h9", "placed_by": "legal@acme", "reason": "case 7",
             "placed_at": "2027-01-01T00:00:00Z"}  # fmt: skip
    assert misspelt_fields(orjson.dumps(value)) == [
        ("rec-id", "record_id"),
        ("placedAt", "placed_at"),
        ("holdId", "hold_id"),
    ]


# --- policy updates: an effective_from in epoch seconds ----------------------------------


@pytest.mark.parametrize(
    ("effective_from", "noted"),
    [
        (999_999_999, False),  # 1970-01-12 in ms; as seconds, before 2001-09-09
        (1_000_000_000, True),  # 2001-09-09T01:46:40Z as seconds: the window's first
        (99_999_999_999, True),  # the window's last: 1973-03-03 in ms
        (100_000_000_000, False),  # SECONDS_LIKE_BEFORE_MS: a time an event may carry
    ],
)
def test_the_seconds_like_effective_from_window_is_closed_below_and_open_above(
    effective_from: int, noted: bool
) -> None:
    """From 1,000,000,000 (seconds of 2001-09-09) up to, not including,
    SECONDS_LIKE_BEFORE_MS, as an event's ``ts`` is warned of. The only integers tested
    were 0, a time of 2026 in seconds and one in milliseconds, so mutants of either bound
    (``<`` for ``<=``, ``<=`` for ``<``, the start moved by one, or to 1) passed."""
    u = update({"scope": "org", "org": "acme", "ttl": {"conversation": "2d"},
                "effective_from": effective_from})  # fmt: skip
    assert isinstance(u, PolicyUpdate)
    assert u.effective_from == effective_from
    assert len(u.notes) == noted
    if noted:
        assert u.notes[0].startswith(f"effective_from {effective_from} is 197")

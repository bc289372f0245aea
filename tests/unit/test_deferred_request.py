"""An erasure a legal hold deferred names its request at the release, as an on-time one
does (``expiry-request``, ``expiry-request-event-id`` on its tombstone and null): the
README's query of the receipts by ``request_event_id`` found none of them (a compliance
trial). Kept with the deferred erasure: in memory, in the store from the settle on, and on
the stamp that records ``erase_requested_at`` (for a restore of the changelog)."""

from __future__ import annotations

from stream_expiry.codec import H_REQUEST, H_REQUEST_EVENT_ID, request_in
from stream_expiry.state import MemoryKV, PartitionStore
from tests.unit.test_holds import T0, TTL, Partition, hold
from tests.unit.test_late_cause import LATE, _identity, _restarted
from tests.unit.test_restore_model import Changelog

# The delete is the partition's second event (offset 2) on input "in", partition 0.
NAMED = ((H_REQUEST, b"in[0]@2"), (H_REQUEST_EVENT_ID, b"gdpr-7"))


def _erasures(p: Partition) -> list[tuple[str, object]]:
    return [(f.before.identity.record_id, f.request) for f in p.fired if f.reason == "explicit"]


def _deferred(log: Changelog | None = None) -> Partition:
    """A record created and erased (request ``gdpr-7``) under a hold, then released."""
    p = Partition()
    p.holds.place(hold())
    for effects, at in (
        (p.event("c", "create", T0), T0),
        (p.event("c", "delete", T0 + 10, event_id="gdpr-7"), T0 + 10),
    ):
        if log is not None:
            log.write(effects, at)
    p.holds.release("h1")
    return p


def test_a_deferred_erasure_released_names_its_request() -> None:
    p = _deferred()
    p.tick(T0 + 2 * LATE)
    assert _erasures(p) == [("c", NAMED)]
    assert [f.late_cause for f in p.fired] == ["hold"]  # and says why it is late, as before


def test_a_deferred_erasure_released_after_a_restart_names_its_request() -> None:
    """The same state directory: the store kept the request with the deferral."""
    q = _restarted(_deferred())
    q.tick(T0 + 2 * LATE)
    assert _erasures(q) == [("c", NAMED)]


def test_a_deferred_erasure_restored_from_the_changelog_names_its_request() -> None:
    """A takeover or a lost disk: the stamp that records the erasure carries the request's
    headers, and the restore keeps them."""
    log = Changelog()
    p = _deferred(log)
    assert request_in(log.stamped[-1].headers) == NAMED
    assert request_in(log.stamped[0].headers) is None  # the create's stamp: none
    q = _restarted(p, log.restore(T0 + 20, PartitionStore(MemoryKV())))
    q.tick(T0 + 2 * LATE)
    assert _erasures(q) == [("c", NAMED)]


def test_an_erased_life_kept_beside_the_next_one_names_its_request() -> None:
    """A create after the erasure starts the record's next life, which keeps the erased
    one (``held_lives``) for its tombstone at the release: that tombstone names the
    request too, also after a restart."""
    for restart in (False, True):
        p = Partition()
        p.holds.place(hold())
        p.event("c", "create", T0)
        p.event("c", "delete", T0 + 10, event_id="gdpr-7")
        p.event("c", "create", T0 + 20)
        p.holds.release("h1")
        q = _restarted(p) if restart else p
        q.tick(T0 + 20 + LATE)
        assert _erasures(q) == [("c", NAMED)]


def test_an_on_time_erasure_and_an_expiry_are_unchanged() -> None:
    p = Partition()
    p.event("c", "create", T0)
    p.event("c", "delete", T0 + 10, event_id="gdpr-7")
    p.event("e", "create", T0)
    p.tick(T0 + TTL)
    assert _erasures(p) == [("c", NAMED)]
    assert [f.request for f in p.fired if f.reason == "ttl"] == [None]
    key = _identity("c").key
    assert p.proc.store.deferred_request(key, T0 + 10) is None  # nothing kept: not deferred


def test_what_the_store_keeps_of_a_deferred_request_goes_with_its_marker() -> None:
    p = _deferred()
    store, key = p.proc.store, _identity("c").key
    assert store.deferred_request(key, T0 + 10) == NAMED
    assert store.deferred_request(key, T0 + 11) is None  # another erasure's time: not it
    p.tick(T0 + 2 * LATE)
    assert store.prune(T0 + 10**12) == 1
    assert store.deferred_request(key, T0 + 10) is None
    assert list(store.kv.scan(b"", b"\xff" * 8)) == list(store.kv.scan(b"~", b"\xff"))

"""The tombstone lag histogram observes what the service made late, not what came late."""

from __future__ import annotations

from stream_expiry.config import parse_config
from stream_expiry.engine import Fired
from stream_expiry.model import Identity, Stamp
from stream_expiry.service import Service
from stream_expiry.state import Effects

NOW = 1_000_000


def _stamp(record_id: str, expires_at: int) -> Stamp:
    identity = Identity("acme", "_", "live", "conversation", record_id)
    return Stamp(identity, expires_at - 60_000, expires_at, 60_000, "default")


def _fired(stamp: Stamp, emitted_at: int, reason: str = "ttl") -> Fired:
    return Fired(stamp, stamp, reason, emitted_at)  # type: ignore[arg-type]


def test_a_record_overdue_when_read_is_kept_out_of_the_lag_and_its_note_goes() -> None:
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    late, erased, on_time = (
        _stamp("late", NOW - 3_600_000),
        _stamp("erased", NOW - 5),
        _stamp("on-time", NOW + 1_000),
    )
    read = Effects(1, stamps=[(late, None), (erased, None), (on_time, None)])
    service._note_overdue(read, NOW)
    # The batch after: an erasure of "erased" (its tombstone, decided as it was read), and
    # one of a record never seen (no expiry: the crash test's ghosts, a KeyError once).
    ghost = Stamp(Identity("acme", "_", "live", "conversation", "ghost"), None, None, None, None)
    ended = [_fired(erased, NOW + 1, "explicit"), _fired(ghost, NOW + 1, "explicit")]
    service._note_overdue(Effects(2, tombstones=ended), NOW + 1)
    service._count_fired(_fired(late, NOW + 10))  # its timer fires at once
    service._count_fired(_fired(on_time, NOW + 1_007))
    stats = service.stats
    assert (stats.tombstones, stats.lag_count, stats.lag_sum_ms) == (2, 1, 7)
    assert service._overdue_on_arrival == {}  # nothing left behind


def test_a_next_life_of_a_record_noted_overdue_is_observed() -> None:
    """The note is of a life (its expiry): a later life of the record is the service's."""
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    service._note_overdue(Effects(1, stamps=[(_stamp("r", NOW - 10), None)]), NOW)
    service._count_fired(_fired(_stamp("r", NOW + 5_000), NOW + 5_003))
    assert (service.stats.lag_count, service.stats.lag_sum_ms) == (1, 3)

"""Counters a person (and the demo, the metrics and the benchmarks) watch."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stream_expiry.metrics import LAG_BUCKETS_MS

__all__ = ["ServiceStats"]


@dataclass
class ServiceStats:
    """What the service did since it started, and what it holds now."""

    events: int = 0
    stamped: int = 0
    dead_letters: int = 0
    tombstones: int = 0
    explicit: int = 0
    policy_updates: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    dead_letter_codes: Counter[str] = field(default_factory=Counter)
    # over the producer's size limit (stream_expiry.oversize): stamps published without
    # their data, dead letters published cut
    stamps_data_dropped: int = 0
    dead_letters_truncated: int = 0
    pending_in_wheel: int = 0
    restored: int = 0  # changelog messages read by restores
    restoring: int = 0  # partitions being restored now
    restoring_due: int = 0  # their records read so far that were due when it began
    archive_waiting: int = 0  # due records kept until the archive has them ([archive] required)
    # The group's view, for an operator: how often partitions moved (a member crashing,
    # a rolling restart or one flapping shows as a climbing count) and how many are ours.
    assignments: int = 0  # assignments received from the group (the first one included)
    resumed_partitions: int = 0  # given back by a rebalance and resumed without a restore
    assigned_partitions: int = 0  # input and retired partitions this instance owns now
    # Times it stopped firing and writing until the group assigned again: its partitions
    # may have been another member's (stream_expiry.fence)
    writes_fenced: int = 0
    archive_waiting_since: int | None = None  # the earliest due time among them (epoch ms)
    # How late the oldest due record not yet tombstoned is (ms; 0: none), as the gauge
    # stream_expiry_oldest_overdue_seconds says, for the progress line.
    oldest_overdue_ms: int = 0
    # The lag (emitted_at - expires_at) of ttl tombstones fired by their timers, as
    # histogram buckets for /metrics. Not of those decided as their event is read (already
    # expired when it came: a late event, a ts in epoch seconds) nor of those a legal hold
    # kept: their lateness is not the service's, and one event in epoch seconds put 56
    # years into the sum (a trial).
    lag_buckets: list[int] = field(default_factory=lambda: [0] * len(LAG_BUCKETS_MS))
    lag_sum_ms: int = 0
    lag_count: int = 0

    def observe_lag(self, lag_ms: int) -> None:
        self.lag_count += 1
        self.lag_sum_ms += lag_ms
        index = bisect.bisect_left(LAG_BUCKETS_MS, lag_ms)
        if index < len(self.lag_buckets):
            self.lag_buckets[index] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "stamped": self.stamped,
            "dead_letters": self.dead_letters,
            "tombstones": self.tombstones,
            "explicit": self.explicit,
            "policy_updates": self.policy_updates,
            "pending_in_wheel": self.pending_in_wheel,
            "verdicts": dict(self.verdicts),
        }

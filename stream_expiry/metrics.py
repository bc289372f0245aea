"""Prometheus metrics of the service and of the sinks, on ``prometheus_client``.

Rules this module keeps:

* Every process (or test) gets its own :class:`~prometheus_client.CollectorRegistry`, never
  the library's global one, so several services can live in one process.
* Hot-path counters are not prometheus objects: the service counts in plain integers
  (:class:`~stream_expiry.service.ServiceStats`, the sink's ``metrics`` dict) and a collector
  reads them at scrape time. A scrape costs a few microseconds; an event costs nothing more.
* Low-rate facts (consumer lag, pending records, the oldest overdue record, restore progress)
  are gauges the loop sets through the methods of :class:`ServiceMetrics` and
  :class:`SinkMetrics`.
* Names are stable: the ones below are what dashboards and alerts use (README: Metrics).
"""

from __future__ import annotations

import contextlib
from importlib import metadata
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import gc_collector as _gc
from prometheus_client import platform_collector as _platform
from prometheus_client import process_collector as _process
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from stream_expiry import native

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from prometheus_client import Metric

    from stream_expiry.health import Health
    from stream_expiry.rekey import RekeyStats
    from stream_expiry.service import ServiceStats
    from stream_expiry.sinks.framework import BatchReport
    from stream_expiry.stalls import Stalls

__all__ = ["LAG_BUCKETS_MS", "RekeyMetrics", "ServiceMetrics", "SinkMetrics", "version"]

# Milliseconds to a day: an outage makes deletions minutes or hours late, and with a top
# bucket of 60 s all of them fell in +Inf, where histogram_quantile answers with 60 s (a
# p99 of "60 s" for tombstones two hours late) and no alert on "later than 5 minutes" could
# be written (a trial).
LAG_BUCKETS_MS: Final = (
    *(1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 10_000, 30_000, 60_000),
    *(300_000, 900_000, 3_600_000, 14_400_000, 86_400_000),
)
_PREFIX: Final = "stream_expiry"


def version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a bare checkout)."""
    try:
        return metadata.version("stream-expiry")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _registry() -> CollectorRegistry:
    """A private registry with the process, platform and GC collectors."""
    registry = CollectorRegistry()
    _process.ProcessCollector(registry=registry)
    _platform.PlatformCollector(registry=registry)
    _gc.GCCollector(registry=registry)
    return registry


class _StatsCollector(Collector):
    """Reads :class:`ServiceStats` at scrape time: the service's counters, today's names."""

    def __init__(self, stats: ServiceStats, env_warnings: int) -> None:
        self._stats = stats
        self._env_warnings = env_warnings

    def collect(self) -> Iterable[Metric]:
        s = self._stats
        p = _PREFIX
        yield CounterMetricFamily(f"{p}_events", "Input events read.", value=s.events)
        yield CounterMetricFamily(
            f"{p}_stamped", "Stamps published on expiry.stamped.", value=s.stamped
        )
        tombstones = CounterMetricFamily(
            f"{p}_tombstones", "Tombstones published, by reason.", labels=["reason"]
        )
        tombstones.add_metric(["ttl"], s.tombstones)
        tombstones.add_metric(["explicit"], s.explicit)
        yield tombstones
        dead = CounterMetricFamily(
            f"{p}_dead_letters",
            "Input messages sent to the dead-letter topic, by error code.",
            labels=["code"],
        )
        for code, n in sorted(s.dead_letter_codes.items()):
            dead.add_metric([code], n)
        yield dead
        yield CounterMetricFamily(
            f"{p}_stamps_data_dropped",
            "Stamps published without their data, which made them larger than the "
            "producer's max request size.",
            value=s.stamps_data_dropped,
        )
        yield CounterMetricFamily(
            f"{p}_dead_letters_truncated",
            "Dead letters published with their value (or key) cut to fit the producer's "
            "max request size (headers expiry-value-truncated, expiry-key-truncated).",
            value=s.dead_letters_truncated,
        )
        verdicts = CounterMetricFamily(
            f"{p}_verdicts",
            "What valid events did (created, extended, stale, ...).",
            labels=["verdict"],
        )
        for verdict, n in sorted(s.verdicts.items()):
            verdicts.add_metric([verdict], n)
        yield verdicts
        yield CounterMetricFamily(
            f"{p}_policy_updates", "Policy updates applied.", value=s.policy_updates
        )
        yield GaugeMetricFamily(
            f"{p}_invalid_env_variables",
            "Retention environment variables that are set but invalid (ignored).",
            value=self._env_warnings,
        )
        yield GaugeMetricFamily(
            f"{p}_timers_in_wheel",
            "Expirations held in memory (due within the horizon).",
            value=s.pending_in_wheel,
        )
        yield GaugeMetricFamily(
            f"{p}_archive_waiting_records",
            "Due records kept until the archive holds their latest stamp ([archive] required).",
            value=s.archive_waiting,
        )
        yield CounterMetricFamily(
            f"{p}_rebalances",
            "Partition assignments this instance received from its consumer group (the first "
            "included): one per group rebalance it took part in.",
            value=s.assignments,
        )
        yield CounterMetricFamily(
            f"{p}_partitions_resumed",
            "Partitions a rebalance took and gave back, resumed as they were (their stores "
            "kept open) instead of restored.",
            value=s.resumed_partitions,
        )
        yield CounterMetricFamily(
            f"{p}_writes_fenced",
            "Times this instance stopped firing and writing for its partitions until its group "
            "assigned them again, as they may have been another member's (a stall as long as "
            "the session timeout, an offset commit refused by a rebalance).",
            value=s.writes_fenced,
        )
        yield GaugeMetricFamily(
            f"{p}_assigned_partitions",
            "Partitions of the input and retired topics this instance owns now (0 while it "
            "joins or the group rebalances).",
            value=s.assigned_partitions,
        )
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(LAG_BUCKETS_MS, s.lag_buckets, strict=False):
            cumulative += count
            buckets.append((f"{bound / 1000:g}", cumulative))
        buckets.append(("+Inf", s.lag_count))
        yield HistogramMetricFamily(
            f"{p}_tombstone_lag_seconds",
            "From expires_at to emitted_at, ttl tombstones fired by their timers.",
            buckets=buckets,
            sum_value=s.lag_sum_ms / 1000,
        )


class _HealthCollector(Collector):
    """``up``-style gauges from :class:`Health`, for alerts that do not probe HTTP."""

    def __init__(self, health: Health, prefix: str) -> None:
        self._health = health
        self._prefix = prefix

    def collect(self) -> Iterable[Metric]:
        h = self._health
        yield GaugeMetricFamily(
            f"{self._prefix}_live", "1 while the loop runs (what /healthz says).", value=h.live
        )
        yield GaugeMetricFamily(
            f"{self._prefix}_ready",
            "1 when assigned, restored and the broker (a sink: and its store) reachable (/readyz).",
            value=h.ready,
        )
        yield GaugeMetricFamily(
            f"{self._prefix}_broker_reachable",
            "0 while the Kafka brokers cannot be reached.",
            value=h.broker_error is None,
        )
        if h.watches_store:
            yield GaugeMetricFamily(
                f"{self._prefix}_store_reachable",
                "0 while the sink's store does not answer.",
                value=h.store_error is None,
            )


class _StallsCollector(Collector):
    """The times the process did not run (:class:`~stream_expiry.stalls.Stalls`): what
    tells a paused or starved process from a broker outage on a dashboard."""

    def __init__(self, stalls: Stalls) -> None:
        self._stalls = stalls

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            f"{_PREFIX}_process_stalls",
            "Times the process did not run for 2 s or more (paused, a frozen VM, starved of "
            "CPU, the machine asleep): not broker outages.",
            value=self._stalls.count,
        )
        yield CounterMetricFamily(
            f"{_PREFIX}_process_stalled_seconds",
            "Seconds the process did not run, in those stalls together.",
            value=self._stalls.seconds,
        )
        yield GaugeMetricFamily(
            f"{_PREFIX}_process_longest_stall_seconds",
            "The longest stall since the start (0: none).",
            value=self._stalls.longest_s,
        )


class _BaseMetrics:
    def __init__(self, registry: CollectorRegistry | None, prefix: str) -> None:
        self.registry = registry if registry is not None else _registry()
        self._prefix = prefix
        info = Gauge(
            f"{_PREFIX}_build_info",
            "Always 1; the version is in the label, and whether the compiled codec runs.",
            ["version", "codec"],
            registry=self.registry,
        )
        info.labels(version(), "compiled" if native.compiled is not None else "python").set(1)
        self._lag = Gauge(
            f"{prefix}_consumer_lag",
            "Records not yet read, per input partition (high watermark minus position).",
            ["topic", "partition"],
            registry=self.registry,
        )

    def watch_health(self, health: Health) -> None:
        """Expose ``PREFIX_live``, ``PREFIX_ready`` and ``PREFIX_broker_reachable``."""
        self.registry.register(_HealthCollector(health, self._prefix))

    def watch_stalls(self, stalls: Stalls) -> None:
        """Expose the stalls of the process (read at scrape time), under the same names
        for every command (``stream_expiry_process_*``, as ``stream_expiry_build_info``):
        a fact of the process, not of its work, so one alert covers each of them."""
        self.registry.register(_StallsCollector(stalls))

    def set_lag(self, topic: str, partition: int, records: int) -> None:
        """Lag of one assigned partition; call after each fetch (or once a second)."""
        self._lag.labels(topic, str(partition)).set(max(0, records))

    def forget_partition(self, topic: str, partition: int) -> None:
        """The partition was revoked: its lag is another instance's to report now."""
        with contextlib.suppress(KeyError):
            self._lag.remove(topic, str(partition))

    def exposition(self) -> bytes:
        """The text a scrape of ``/metrics`` gets."""
        return generate_latest(self.registry)


class ServiceMetrics(_BaseMetrics):
    """Every metric of ``stream-expiry run``: call the setters from the service loop.

    ``watch_stats`` hooks up the counters (read at scrape time); the setters below are for
    facts that change at most once per loop turn.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry, _PREFIX)
        r = self.registry
        self._pending = Gauge(
            f"{_PREFIX}_pending_records",
            "Records waiting for their expiry (finite, not yet tombstoned; those a legal hold "
            "keeps past it are in stream_expiry_held_records), per category (owned partitions).",
            ["category"],
            registry=r,
        )
        self._held = Gauge(
            f"{_PREFIX}_held_records",
            "Records a legal hold keeps past their expiry or their erasure request, or whose "
            "earlier lives it keeps (owned partitions): tombstoned within a second of the "
            "release of their last hold.",
            registry=r,
        )
        self._oldest_overdue = Gauge(
            f"{_PREFIX}_oldest_overdue_seconds",
            "How long past its expiry the oldest not yet tombstoned record is, held ones aside "
            "and those kept for the archive included (0: none).",
            registry=r,
        )
        self._restoring = Gauge(
            f"{_PREFIX}_restoring_partitions",
            "Partitions whose state is being restored now.",
            registry=r,
        )
        self._restored = Counter(
            f"{_PREFIX}_restored_records",
            "Records read from the changelog topics while restoring.",
            registry=r,
        )
        self._restore_remaining = Gauge(
            f"{_PREFIX}_restore_remaining_records",
            "Changelog records still to read before the restore ends (0 when none runs).",
            registry=r,
        )
        self._restoring_due = Gauge(
            f"{_PREFIX}_restoring_due_records",
            "Records of the partitions being restored that were due when the restore began, "
            "as far as the changelog is read (0 when none runs): they wait for its end.",
            registry=r,
        )

    def watch_stats(self, stats: ServiceStats, *, env_warnings: int = 0) -> None:
        """Expose the counters of ``stats`` (events, stamps, tombstones, lag histogram)."""
        self.registry.register(_StatsCollector(stats, env_warnings))

    def set_pending(self, category: str, records: int) -> None:
        self._pending.labels(category).set(records)

    def set_held(self, records: int) -> None:
        """Records the legal holds keep (``StoreCounts.held`` of the owned stores): they
        are in neither the pending records nor the oldest overdue, and a release that
        frees thousands showed in no metric, only in ``status`` (a trial)."""
        self._held.set(records)

    def set_oldest_overdue_seconds(self, seconds: float) -> None:
        """Now minus the earliest ``expires_at`` not yet tombstoned; 0 when nothing is due."""
        self._oldest_overdue.set(max(0.0, seconds))

    def restore_progress(
        self, *, partitions: int, records_read: int = 0, remaining: int = 0, due: int = 0
    ) -> None:
        """During a restore: ``partitions`` restoring now, ``records_read`` since the last
        call (added up), ``remaining`` records to go, ``due`` records read so far that were
        due at its start. Call with ``partitions=0`` at the end."""
        self._restoring.set(partitions)
        if records_read:
            self._restored.inc(records_read)
        self._restore_remaining.set(remaining if partitions else 0)
        self._restoring_due.set(max(0, due) if partitions else 0)


class _SinkCollector(Collector):
    """Reads the sink's own counters (``Sink.metrics``) at scrape time."""

    _HELP: Final = {
        "batches_total": "Batches applied to the store.",
        "messages_total": "Messages read from expiry.stamped and expiry.tombstones.",
        "written_total": "Stamped records written to the store.",
        "stale_total": "Messages that changed nothing (older than what the store holds).",
        "deleted_total": "Records deleted because of a tombstone.",
        "swept_total": "Records deleted by the safety-net sweep (their tombstone was late).",
        "unsettled_total": "Receipts the sweep wrote, with their null's reason, of records "
        "their nulls deleted whose tombstone never came (--tombstones-topic?).",
        "markers_pruned_total": "Deletion markers forgotten a grace after they settled.",
        "receipts_total": "Deletion receipts written.",
        "published_total": "Deletion receipts published to Kafka.",
        "compacted_nulls_total": "Null values produced to compacted user topics.",
        "broker_errors_total": "Tries that found the broker unreachable (retried each second).",
        "store_errors_total": "Tries that found the store's connection lost (retried each second).",
    }
    _ERRORS: Final = {"invalid_total": "invalid", "unrepresentable_total": "unrepresentable"}

    def __init__(self, counters: Mapping[str, int], store: str) -> None:
        self._counters = counters
        self._store = store

    def collect(self) -> Iterable[Metric]:
        for key, help_text in self._HELP.items():
            family = CounterMetricFamily(
                f"{_PREFIX}_sink_{key.removesuffix('_total')}", help_text, labels=["store"]
            )
            family.add_metric([self._store], self._counters.get(key, 0))
            yield family
        errors = CounterMetricFamily(
            f"{_PREFIX}_sink_errors",
            "Messages the sink skipped, by kind (invalid: not a valid message; "
            "unrepresentable: the store cannot hold its identity).",
            labels=["store", "kind"],
        )
        for key, kind in self._ERRORS.items():
            errors.add_metric([self._store, kind], self._counters.get(key, 0))
        yield errors


class SinkMetrics(_BaseMetrics):
    """Every metric of ``stream-expiry sink``: its counters, deletion lag, consumer lag."""

    def __init__(self, store: str, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry, f"{_PREFIX}_sink")
        self._store = store
        self._deletion_lag = Histogram(
            f"{_PREFIX}_sink_deletion_lag_seconds",
            "From a tombstone's emitted_at to the deletion in the store.",
            ["store"],
            buckets=tuple(b / 1000 for b in LAG_BUCKETS_MS),
            registry=self.registry,
        )
        self._failures = Counter(
            f"{_PREFIX}_sink_failures",
            "Batches that failed (the sink stops; nothing of the batch is committed).",
            ["store", "cause"],
            registry=self.registry,
        )

    def watch_counters(self, counters: Mapping[str, int]) -> None:
        """Expose ``Sink.metrics`` (read at scrape time)."""
        self.registry.register(_SinkCollector(counters, self._store))

    def on_batch(self, report: BatchReport) -> None:
        """Give this to ``Sink(on_batch=...)``: observes each receipt's deletion lag."""
        for receipt in report.receipts:
            if receipt.emitted_at is not None:
                lag_s = max(0, receipt.deleted_at - receipt.emitted_at) / 1000
                self._deletion_lag.labels(self._store).observe(lag_s)

    def failed(self, cause: str) -> None:
        """A batch or the start failed: ``broker``, ``store``, or ``config`` (a setting the
        store refused)."""
        self._failures.labels(self._store, cause).inc()


class _RekeyCollector(Collector):
    """Reads ``stream-expiry rekey``'s counters (``Rekeyer.stats``) at scrape time."""

    _HELP: Final = {
        "forwarded": "Events copied to their topic keyed by record.",
        "rejected": "Events sent to the dead-letter topic instead (the service would reject them).",
        "committed": "Events of the batches whose offsets the group took.",
        "commits_lost": "Batches whose offsets a rebalance refused (their events are copied again).",
        "data_dropped": "Copies sent without their data, over the topic's size limit.",
    }

    def __init__(self, stats: RekeyStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        for key, help_text in self._HELP.items():
            family = CounterMetricFamily(f"{_PREFIX}_rekey_{key}", help_text)
            family.add_metric([], getattr(self._stats, key))
            yield family


class RekeyMetrics(_BaseMetrics):
    """Every metric of ``stream-expiry rekey``: its counters, and the consumer lag of the
    producers' topics it reads (what the service cannot see behind it)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry, f"{_PREFIX}_rekey")

    def watch_stats(self, stats: RekeyStats) -> None:
        """Expose ``Rekeyer.stats`` (read at scrape time)."""
        self.registry.register(_RekeyCollector(stats))

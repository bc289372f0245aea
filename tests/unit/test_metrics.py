"""The Prometheus exposition: today's names from the service's stats, the new gauges, the
process collectors, and a private registry per instance."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from stream_expiry.health import Health
from stream_expiry.metrics import RekeyMetrics, ServiceMetrics, SinkMetrics
from stream_expiry.model import Identity
from stream_expiry.rekey import RekeyStats
from stream_expiry.service import ServiceStats
from stream_expiry.sinks._messages import Receipt
from stream_expiry.sinks.framework import METRICS, BatchReport
from stream_expiry.stalls import Stalls


def _stats() -> ServiceStats:
    stats = ServiceStats(events=10, stamped=7, tombstones=5, explicit=1)
    stats.dead_letter_codes["invalid_json"] += 2
    for lag in (0, 7, 70_000):
        stats.observe_lag(lag)
    return stats


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_the_service_counters_keep_their_names_and_the_histogram_is_cumulative() -> None:
    metrics = ServiceMetrics()
    metrics.watch_stats(_stats(), env_warnings=1)
    got = _samples(metrics.exposition())
    assert got[("stream_expiry_events_total", ())] == 10
    assert got[("stream_expiry_stamped_total", ())] == 7
    assert got[("stream_expiry_tombstones_total", (("reason", "ttl"),))] == 5
    assert got[("stream_expiry_tombstones_total", (("reason", "explicit"),))] == 1
    assert got[("stream_expiry_dead_letters_total", (("code", "invalid_json"),))] == 2
    assert got[("stream_expiry_invalid_env_variables", ())] == 1
    bucket = "stream_expiry_tombstone_lag_seconds_bucket"
    assert got[(bucket, (("le", "0.001"),))] == 1
    assert got[(bucket, (("le", "0.01"),))] == 2
    assert got[(bucket, (("le", "60"),))] == 2
    assert got[(bucket, (("le", "+Inf"),))] == 3  # those observed: 2 tombstones were not
    assert got[("stream_expiry_tombstone_lag_seconds_count", ())] == 3
    assert got[("stream_expiry_tombstone_lag_seconds_sum", ())] == 70.007


def test_counters_are_read_at_scrape_time() -> None:
    stats = ServiceStats()
    metrics = ServiceMetrics()
    metrics.watch_stats(stats)
    assert _samples(metrics.exposition())[("stream_expiry_events_total", ())] == 0
    stats.events += 5
    assert _samples(metrics.exposition())[("stream_expiry_events_total", ())] == 5


def test_lag_pending_overdue_and_restore_gauges() -> None:
    metrics = ServiceMetrics()
    metrics.set_lag("conversations", 0, 12)
    metrics.set_lag("conversations", 1, -3)  # a stale high watermark never shows below 0
    metrics.set_pending("session", 40)
    metrics.set_oldest_overdue_seconds(2.5)
    metrics.restore_progress(partitions=2, records_read=100, remaining=50)
    metrics.restore_progress(partitions=2, records_read=50)
    got = _samples(metrics.exposition())
    lag = "stream_expiry_consumer_lag"
    assert got[(lag, (("partition", "0"), ("topic", "conversations")))] == 12
    assert got[(lag, (("partition", "1"), ("topic", "conversations")))] == 0
    assert got[("stream_expiry_pending_records", (("category", "session"),))] == 40
    assert got[("stream_expiry_oldest_overdue_seconds", ())] == 2.5
    assert got[("stream_expiry_restoring_partitions", ())] == 2
    assert got[("stream_expiry_restored_records_total", ())] == 150
    metrics.forget_partition("conversations", 0)
    metrics.forget_partition("conversations", 7)  # never set: nothing to forget, no error
    metrics.restore_progress(partitions=0, remaining=9)
    got = _samples(metrics.exposition())
    assert (lag, (("partition", "0"), ("topic", "conversations"))) not in got
    assert got[("stream_expiry_restore_remaining_records", ())] == 0


def test_process_metrics_and_health_gauges_are_exposed() -> None:
    metrics = ServiceMetrics()
    health = Health()
    metrics.watch_health(health)
    health.starting()
    got = _samples(metrics.exposition())
    assert got[("process_resident_memory_bytes", ())] > 1_000_000
    assert got[("process_open_fds", ())] > 0
    assert ("process_cpu_seconds_total", ()) in got
    assert any(name == "python_gc_collections_total" for name, _ in got)
    assert any(name == "python_info" for name, _ in got)
    assert any(name == "stream_expiry_build_info" for name, _ in got)
    assert got[("stream_expiry_live", ())] == 1
    assert got[("stream_expiry_ready", ())] == 0
    health.running()
    assert _samples(metrics.exposition())[("stream_expiry_ready", ())] == 1


def test_a_sinks_store_reachable_gauge_follows_its_store_and_the_service_has_none() -> None:
    """stream_expiry_sink_store_reachable is 1 while the store answers and 0 while it does
    not (an alert on it is written against that); the service, which has no store, exposes
    no such gauge rather than a store always reachable."""
    sink, health = SinkMetrics("pg"), Health(watches_store=True)
    sink.watch_health(health)
    health.starting()
    health.running()
    gauge = ("stream_expiry_sink_store_reachable", ())
    assert _samples(sink.exposition())[gauge] == 1
    health.store_unreachable("store 'pg' did not answer within 5 s")
    got = _samples(sink.exposition())
    assert (got[gauge], got[("stream_expiry_sink_ready", ())]) == (0, 0)
    health.store_reachable()
    assert _samples(sink.exposition())[gauge] == 1
    service = ServiceMetrics()
    service.watch_health(Health())
    assert not [name for name, _ in _samples(service.exposition()) if "store_reachable" in name]


def test_two_instances_in_one_process_do_not_clash() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.set_pending("error", 1)
    second.set_pending("error", 2)
    assert (
        _samples(first.exposition())[("stream_expiry_pending_records", (("category", "error"),))]
        == 1
    )
    assert (
        _samples(second.exposition())[("stream_expiry_pending_records", (("category", "error"),))]
        == 2
    )


def test_sink_metrics_read_the_sink_counters_and_observe_deletion_lag() -> None:
    counters = dict.fromkeys(METRICS, 0)
    metrics = SinkMetrics("pg")
    metrics.watch_counters(counters)
    counters["deleted_total"] = 4
    counters["receipts_total"] = 4
    counters["invalid_total"] = 1
    receipt = Receipt(
        "r1", "pg", Identity("acme", "_", "live", "session", "s1"), "ttl", 1,
        1_000, 2_000, 1, "default", 2_000, 2_250,
    )  # fmt: skip
    metrics.on_batch(BatchReport("batch", 1, 0, 0, 1, 0, 0, (receipt,)))
    metrics.failed("broker")
    metrics.set_lag("expiry.tombstones", 3, 8)
    got = _samples(metrics.exposition())
    assert got[("stream_expiry_sink_deleted_total", (("store", "pg"),))] == 4
    assert got[("stream_expiry_sink_receipts_total", (("store", "pg"),))] == 4
    assert got[("stream_expiry_sink_errors_total", (("kind", "invalid"), ("store", "pg")))] == 1
    assert got[("stream_expiry_sink_failures_total", (("cause", "broker"), ("store", "pg")))] == 1
    lag = "stream_expiry_sink_deletion_lag_seconds"
    assert got[(f"{lag}_bucket", (("le", "0.25"), ("store", "pg")))] == 1
    assert got[(f"{lag}_bucket", (("le", "0.1"), ("store", "pg")))] == 0
    assert got[(f"{lag}_sum", (("store", "pg"),))] == 0.25
    consumer = (("partition", "3"), ("topic", "expiry.tombstones"))
    assert got[("stream_expiry_sink_consumer_lag", consumer)] == 8


def test_every_gauge_and_counter_of_the_stats_reads_its_own_value() -> None:
    stats = ServiceStats(
        policy_updates=4, pending_in_wheel=11, archive_waiting=6, assignments=3,
        assigned_partitions=9, resumed_partitions=2, writes_fenced=7,
    )  # fmt: skip
    stats.verdicts.update({"created": 5, "extended": 2})
    metrics = ServiceMetrics()
    metrics.watch_stats(stats)
    got = _samples(metrics.exposition())
    assert got[("stream_expiry_policy_updates_total", ())] == 4
    assert got[("stream_expiry_timers_in_wheel", ())] == 11
    assert got[("stream_expiry_archive_waiting_records", ())] == 6
    assert got[("stream_expiry_rebalances_total", ())] == 3
    assert got[("stream_expiry_assigned_partitions", ())] == 9
    assert got[("stream_expiry_partitions_resumed_total", ())] == 2
    assert got[("stream_expiry_writes_fenced_total", ())] == 7
    assert got[("stream_expiry_verdicts_total", (("verdict", "created"),))] == 5
    assert got[("stream_expiry_verdicts_total", (("verdict", "extended"),))] == 2


README = Path(__file__).parents[2] / "README.md"
Family = tuple[str, frozenset[str]]  # type, label names
# A name of the table: stream_expiry_sink_{messages,written}_total{store} is one per name.
_CELL = re.compile(
    r"(?P<head>[a-z_]+)(?:\{(?P<alts>[a-z_,]+)\}(?P<tail>[a-z_]+))?(?:\{(?P<labels>[a-z_,]+)\})?"
)


def _documented(readme: str) -> dict[str, Family]:
    """The metrics of the README's table (its first column, braces expanded, ``_total``
    dropped as the exposition's families drop it), each with its type and labels."""
    families: dict[str, Family] = {}
    for names, kinds in re.findall(r"^\| (`stream_expiry_[^|]*) \| ([a-z, ]+) \|", readme, re.M):
        cells = re.findall(r"`([^`]+)`", names)
        types = kinds.split(", ") if "," in kinds else [kinds] * len(cells)
        for cell, kind in zip(cells, types, strict=True):
            parts = _CELL.fullmatch(cell)
            assert parts is not None, cell
            alts = parts["alts"].split(",") if parts["alts"] else [""]
            labels = frozenset(filter(None, (parts["labels"] or "").split(",")))
            for alt in alts:
                name = f"{parts['head']}{alt}{parts['tail'] or ''}"
                families[name.removesuffix("_total")] = (kind, labels)
    return families


def _exposed() -> dict[str, Family]:
    """Every family the service, a sink and rekey expose with a value in each series, each
    with its type and labels; the client library's process and GC metrics left out."""
    service, sink, rekey = ServiceMetrics(), SinkMetrics("pg"), RekeyMetrics()
    stats = _stats()
    stats.verdicts["created"] += 1
    service.watch_stats(stats)
    service.watch_health(Health())
    service.watch_stalls(Stalls())
    service.set_lag("in", 0, 1)
    service.set_pending("session", 1)
    service.restore_progress(partitions=1, records_read=1, remaining=1)
    sink.watch_counters(dict.fromkeys(METRICS, 1))
    sink.watch_health(Health(watches_store=True))  # a sink's: it reports its store too
    sink.watch_stalls(Stalls())  # the same names as the service's
    sink.failed("store")
    sink.set_lag("t", 0, 1)
    receipt = Receipt(
        "r1", "pg", Identity("acme", "_", "live", "session", "s1"), "ttl", 1,
        1_000, 2_000, 1, "default", 2_000, 2_250,
    )  # fmt: skip
    sink.on_batch(BatchReport("batch", 1, 0, 0, 1, 0, 0, (receipt,)))
    rekey.watch_stats(RekeyStats())
    rekey.watch_health(Health())
    rekey.watch_stalls(Stalls())
    rekey.set_lag("t", 0, 1)
    families: dict[str, Family] = {}
    for metrics in (service, sink, rekey):
        for family in text_string_to_metric_families(metrics.exposition().decode()):
            labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
            if family.name.startswith("stream_expiry_"):
                families[family.name] = (family.type, labels)
    return families


def test_the_readme_lists_every_metric_exposed_with_its_type_and_labels() -> None:
    """Dashboards and alerts are written against the README's names. It listed none of
    rekey's health gauges nor the sink's ``batches``, and put the sink's ``live`` and
    ``broker_reachable`` behind "...". The labels the erasure table says metrics carry
    (none of a record) are theirs."""
    readme, everything = README.read_text(), _exposed()
    exposed = {name: f for name, f in everything.items() if not name.endswith("_created")}
    assert len(exposed) >= 50
    assert _documented(readme) == exposed
    # The client library's ``_created`` series: the README names the metrics that have one.
    said = re.search(r"`_created` series .*? of (`[^.]*)\.", readme, re.S)
    assert said is not None
    created = {name.removesuffix("_created") for name in everything if name.endswith("_created")}
    assert set(re.findall(r"`([a-z_]+)`", said[1])) == created
    labels = re.search(r"nothing of a record \(labels: ([a-z, ]+);", readme)
    assert labels is not None
    assert set(labels[1].split(", ")) == {name for _t, ls in exposed.values() for name in ls}
    # What the check sees: a label left out, a metric renamed.
    wrong = readme.replace(
        "`stream_expiry_tombstones_total{reason}`", "`stream_expiry_tombstones_total`"
    )
    assert _documented(wrong)["stream_expiry_tombstones"] == ("counter", frozenset())
    renamed = readme.replace("`stream_expiry_rekey_live`", "`stream_expiry_rekey_alive`")
    assert set(_documented(renamed)) ^ set(exposed) == {
        "stream_expiry_rekey_live", "stream_expiry_rekey_alive"
    }  # fmt: skip


def _smallest_bucket_holding_all(
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
) -> float | None:
    """The smallest finite ``le`` whose cumulative count is the histogram's whole count:
    what ``histogram_quantile(1, ...)`` can say at best (None: only ``+Inf`` holds them)."""
    buckets = {dict(labels)["le"]: v for (n, labels), v in got.items() if n == f"{name}_bucket"}
    total = buckets["+Inf"]
    finite = sorted(float(le) for le, v in buckets.items() if le != "+Inf" and v == total)
    return finite[0] if finite else None


def test_the_lag_histograms_tell_an_hour_late_from_a_minute_late() -> None:
    """After an outage of hours every tombstone went out hours late, and every one landed
    in ``+Inf`` above a top bucket of 60 s: ``histogram_quantile`` then answers with that
    bucket's bound, so a p99 of 60 s for deletions two hours late, and no alert on "late by
    more than 5 minutes" could be written (a trial: a restart after 2 minutes down)."""
    for late_ms, at_least_s in ((90_000, 90), (2 * 3_600_000, 7_200)):
        stats = ServiceStats()
        stats.observe_lag(late_ms)
        metrics = ServiceMetrics()
        metrics.watch_stats(stats)
        bound = _smallest_bucket_holding_all(
            _samples(metrics.exposition()), "stream_expiry_tombstone_lag_seconds"
        )
        assert bound is not None, f"a tombstone {late_ms / 1000:g} s late is only in +Inf"
        assert at_least_s <= bound <= 4 * at_least_s
        sink = SinkMetrics("pg")
        receipt = Receipt(
            "r1", "pg", Identity("acme", "_", "live", "session", "s1"), "ttl", 1,
            1_000, 2_000, 1, "default", 2_000, 2_000 + late_ms,
        )  # fmt: skip
        sink.on_batch(BatchReport("batch", 1, 0, 0, 1, 0, 0, (receipt,)))
        got = {k: v for k, v in _samples(sink.exposition()).items() if ("store", "pg") in k[1]}
        got = {
            (n, tuple(lb for lb in labels if lb[0] != "store")): v for (n, labels), v in got.items()
        }
        assert _smallest_bucket_holding_all(got, "stream_expiry_sink_deletion_lag_seconds") == bound

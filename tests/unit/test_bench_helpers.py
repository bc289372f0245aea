"""The pure parts of the round-3 benchmarks that their numbers depend on: the per-tenth rates
of ingest, the changelog a restore or replay benchmark reads, and the suite's sizes."""

from __future__ import annotations

import orjson
import pytest

from bench.changelog import HOUR_MS, YEAR_MS, changelog_messages
from bench.e2e_ingest import flatness, tenths
from bench.run_suite import (
    FULL,
    QUICK,
    REGISTRY,
    TARGETS,
    discover_e2e,
    plan_invocations,
    variant_tag,
)
from stream_expiry import codec
from stream_expiry.kafka import key_partition

NOW = 1_767_225_600_000

# --------------------------------------------------------------------------- ingest tenths


def test_tenths_of_a_steady_rate_are_equal_and_flat() -> None:
    # 1,000 events at 100 events/s, sampled every 0.5 s.
    samples = [(t / 2, min(1000, t * 50)) for t in range(0, 21)]
    parts = tenths(samples, 1000)
    assert [p["tenth"] for p in parts] == list(range(1, 11))
    assert all(p["events"] == 100 for p in parts)
    assert all(p["events_per_s"] == 100.0 for p in parts)
    assert flatness(parts) == 1.0


def test_tenths_see_a_slowdown_at_the_end() -> None:
    # The first half at 200 events/s, the second at 50 events/s.
    samples: list[tuple[float, int]] = []
    t, n = 0.0, 0
    while n < 1000:
        samples.append((t, n))
        n += 100 if n < 500 else 25
        t += 0.5
    samples.append((t, 1000))
    parts = tenths(samples, 1000)
    assert parts[0]["events_per_s"] == 200.0
    assert parts[-1]["events_per_s"] == 50.0
    assert flatness(parts) == 0.25


def test_tenths_of_too_few_samples_say_so() -> None:
    parts = tenths([(0.0, 0), (1.0, 1000)], 1000)
    # Every boundary fell in the same two samples: nine tenths without a measurable time.
    assert len(parts) == 10
    assert parts[0]["events_per_s"] == 100.0  # 100 events between the two samples
    assert all(p["events_per_s"] is None for p in parts[1:])
    assert flatness(parts) is None
    assert flatness(parts[:3]) is None


# --------------------------------------------------------------------------- changelog


def test_changelog_messages_sit_where_the_service_writes_them() -> None:
    inputs = ("t.conversations", "t.sessions", "t.errors")
    messages = list(changelog_messages(300, NOW, inputs, due=30, partitions=4))
    assert len(messages) == 300
    sources: set[str] = set()
    for i, (partition, key, value, headers) in enumerate(messages):
        source = codec.source_of(headers)
        assert source is not None
        topic, input_partition = source
        sources.add(topic)
        assert input_partition == key_partition(key, 4)
        assert partition == codec.output_partition(input_partition, 4)
        stamp = codec.decode_stamp(key, value)
        assert stamp.identity.key.encode() == key
        assert stamp.expires_at is not None
        if i < 30:
            assert NOW - HOUR_MS <= stamp.expires_at < NOW  # fell due while the service was down
            assert topic == inputs[0]
            assert b"/lag-" in key
        else:
            assert NOW < stamp.expires_at <= NOW + 60_000 + YEAR_MS
            assert topic == inputs[i % 3]
    assert sources == set(inputs)
    assert len({m[1] for m in messages}) == 300  # distinct records


def test_changelog_messages_are_the_same_every_time() -> None:
    a = list(changelog_messages(50, NOW, ("a",), partitions=2))
    b = list(changelog_messages(50, NOW, ("a",), partitions=2))
    assert a == b


@pytest.mark.parametrize("size", [1_000, 4_000])
def test_stamps_carry_about_the_data_asked_for(size: int) -> None:
    """``bench_restore --data-bytes``: the stamp grows by about that much, and the data
    reads back as a platform's transcript."""
    ((_, _, bare, _),) = changelog_messages(1, NOW, ("a",), partitions=2)
    ((_, _, value, _),) = changelog_messages(1, NOW, ("a",), partitions=2, data_bytes=size)
    assert 0.85 * size <= len(value) - len(bare) <= 1.15 * size
    assert orjson.loads(value)["data"]["transcript"][0]["role"] == "user"
    assert orjson.loads(bare)["data"] is None


# --------------------------------------------------------------------------- suite sizes


def test_targets_run_the_ten_million_sizes_and_a_thirty_minute_soak() -> None:
    args = {
        inv.entry.module: inv.args
        for e in REGISTRY
        for inv in plan_invocations(e, TARGETS)
        if inv.entry.module in ("bench.e2e_ingest", "bench.e2e_replay", "bench.soak")
    }
    assert args["bench.e2e_ingest"][-2:] == ("--events", "10000000")
    assert args["bench.e2e_replay"][-2:] == ("--records", "10000000")
    assert args["bench.soak"][-2:] == ("--minutes", "30")
    quick = [inv for e in REGISTRY for inv in plan_invocations(e, QUICK)]
    assert not any("{" in a for inv in quick for a in inv.args)


def test_variant_tag_keeps_lists_in_a_file_name() -> None:
    assert variant_tag(("--counts", "0,100,1000")) == "counts0_100_1000"
    assert variant_tag(("--background", "1000000")) == "bg1M"


def test_every_module_the_suite_runs_takes_the_suite_flags() -> None:
    """The suite calls each module with ``--rate --seconds --pending --grace``; a module
    that does not take them fails the run (round 26's e2e_partitions, found in the folder
    and run with them: four failures in every suite run)."""
    import importlib
    import inspect

    modules = {entry.module for entry in REGISTRY if entry.plans != ("own",)}
    for name in sorted(modules | set(discover_e2e())):
        module = importlib.import_module(name)
        source = inspect.getsource(module)
        takes = "base_parser(" in source or all(
            f'"--{flag}"' in source for flag in ("rate", "seconds", "pending", "grace")
        )
        assert takes, f"{name} does not take the suite's flags"


def test_a_module_run_with_its_own_flags_gets_only_those_and_parses_them() -> None:
    """``own`` entries (the stores' benchmark) take flags of their own, not the suite's: each
    invocation at every size must parse, with the suite's placeholders filled (a flag the
    module does not know would fail the run, as round 26's did)."""
    import importlib

    own = [e for e in REGISTRY if e.plans == ("own",)]
    assert [e.module for e in own] == ["bench.bench_sinks"]
    for cfg in (FULL, QUICK, TARGETS):
        (inv,) = plan_invocations(own[0], cfg)
        assert "--rate" not in inv.args
        parsed = importlib.import_module(inv.entry.module).parse_args(list(inv.args))
        assert parsed.kafka_records == cfg["sink_records"]
        assert parsed.stores == "sqlite,postgres"
        assert parsed.batches == ""
    assert FULL["sink_records"] == 500_000  # issue 11: sustained over at least 500k records


@pytest.mark.parametrize("records", ["5000", "1"])
def test_bench_sinks_refuses_a_backlog_its_first_untimed_batch_would_hold(
    records: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each phase is timed after its first batch: a backlog one batch holds left nothing
    to time, and the run stopped on a ZeroDivisionError after minutes of producing."""
    from bench.bench_sinks import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--kafka-records", records, "--kafka-batch", "5000"])
    assert "fits in one batch of --kafka-batch 5000" in capsys.readouterr().err
    assert parse_args(["--kafka-records", "5001", "--kafka-batch", "5000"]).kafka_records == 5001
    assert parse_args([]).kafka_records == 0  # the default: sized by --scale


@pytest.mark.parametrize(("restored", "kept"), [(3, 3), (12, 0), (0, 0)])
def test_bench_rebalance_reads_the_services_assignment_line(restored: int, kept: int) -> None:
    """bench_rebalance reads the service's log: the line's count of restored partitions
    grew its kept stores (round 50), and the bench's pattern, written for the old line,
    matched nothing. The restored part is the service's own wording."""
    from bench.bench_rebalance import READING
    from stream_expiry.service import _restored_from_changelog

    line = (
        f"assigned 6 partitions (t.conversations[0], and 5 more), 2 resumed as they were and "
        f"{_restored_from_changelog(restored, kept)}: 40 timers within the horizon loaded; "
        "reading 0.55 s after the assignment"
    )
    m = READING.search(line)
    assert m is not None, line
    assert (m["partitions"], m["resumed"], m["restored"], m["timers"], m["after"]) == (
        "6", "2", str(restored), "40", "0.55"
    )  # fmt: skip
    assert int(m["kept"] or 0) == kept

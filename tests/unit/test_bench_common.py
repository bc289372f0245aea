"""The benchmark helpers that numbers depend on: exact percentiles and the rate schedule."""

from __future__ import annotations

import math
import random

import pytest

from bench.common import (
    NS_PER_MS,
    NS_PER_S,
    RateSchedule,
    human_count,
    lag_windows,
    memory_point,
    percentile,
    run_paced,
    summarize,
    throughput_entry,
)

# --------------------------------------------------------------------------- percentiles


def test_percentile_nearest_rank_on_1_to_100() -> None:
    data = [float(i) for i in range(1, 101)]
    assert percentile(data, 50) == 50.0
    assert percentile(data, 99) == 99.0
    assert percentile(data, 100) == 100.0
    assert percentile(data, 0) == 1.0
    assert percentile(data, 0.5) == 1.0
    assert percentile(data, 99.5) == 100.0


def test_percentile_has_no_float_rounding_in_the_rank() -> None:
    # 99.9 * 41000 / 100 is 40959.000000000004 in floats; the rank must be 40959.
    data = [float(i) for i in range(1, 41_001)]
    assert percentile(data, 99.9) == 40_959.0
    assert percentile(data, 50) == 20_500.0


def test_percentile_is_always_an_observed_value() -> None:
    data = [1.0, 10.0]
    assert percentile(data, 50) == 1.0  # no interpolation to 5.5
    assert percentile(data, 51) == 10.0


def test_percentile_small_inputs() -> None:
    assert percentile([7.0], 0) == 7.0
    assert percentile([7.0], 99) == 7.0
    three = [1.0, 2.0, 3.0]
    assert percentile(three, 33) == 1.0
    assert percentile(three, 34) == 2.0
    assert percentile(three, 99) == 3.0


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], -1)


def test_percentile_matches_the_definition_on_random_data() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 300)
        data = sorted(rng.uniform(-5, 500) for _ in range(n))
        p = rng.choice([1, 10, 50, 90, 99, 99.9, rng.uniform(0, 100)])
        v = percentile(data, p)
        # Smallest observed value with at least p % of the values <= it.
        at_or_below = sum(1 for x in data if x <= v)
        assert at_or_below >= p / 100 * n - 1e-9
        smaller = [x for x in data if x < v]
        assert len(smaller) < p / 100 * n or not smaller


def test_summarize() -> None:
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s.count == 5
    assert s.p50 == 3.0
    assert s.p99 == 5.0
    assert s.max == 5.0
    assert s.min == 1.0
    assert s.mean == 3.0
    assert s.to_json() == {"count": 5, "p50": 3.0, "p99": 5.0, "max": 5.0, "mean": 3.0, "min": 1.0}


def test_summarize_large_and_unsorted_input() -> None:
    values = list(range(1000, 0, -1))  # ints are accepted
    s = summarize(values)
    assert (s.count, s.p50, s.p99, s.max, s.min) == (1000, 500.0, 990.0, 1000.0, 1.0)
    assert s.mean == 500.5


def test_summarize_empty() -> None:
    s = summarize([])
    assert s.count == 0
    assert s.p50 is None
    assert s.to_json()["max"] is None


def test_lag_windows_group_by_time_from_the_first_and_keep_empty_windows_out() -> None:
    at = [1000.0, 1900.0, 2500.0, 5999.0, 1500.0]  # ms; unsorted, as arrivals come
    lags = [1.0, 2.0, 30.0, 40.0, 3.0]
    windows = lag_windows(at, lags, 1.0)
    assert [w["t_s"] for w in windows] == [0.0, 1.0, 4.0]  # 2-4 s held nothing
    assert [w["count"] for w in windows] == [3, 1, 1]
    assert [w["max"] for w in windows] == [3.0, 30.0, 40.0]
    assert lag_windows([], [], 1.0) == []


def test_summary_json_rounds_to_microseconds() -> None:
    assert summarize([1.23456789]).to_json()["p50"] == 1.235


# --------------------------------------------------------------------------- rate schedule


def test_schedule_spreads_events_evenly() -> None:
    s = RateSchedule(rate=4, count=8, start_ns=1_000)
    assert [s.due_ns(i) - 1_000 for i in range(8)] == [i * NS_PER_S // 4 for i in range(8)]
    assert s.end_ns == 1_000 + 7 * NS_PER_S // 4
    assert s.per_second() == [4, 4]


@pytest.mark.parametrize("rate", [1, 3, 7, 1000, 10_000, 50_000, 999_983])
def test_schedule_exact_count_per_second(rate: int) -> None:
    s = RateSchedule(rate=rate, count=rate * 2, start_ns=123_456_789)
    assert s.per_second() == [rate, rate]


def test_schedule_no_drift_over_a_long_run() -> None:
    s = RateSchedule(rate=3, count=3 * 86_400 * 365 + 1, start_ns=0)
    # One year at 3 per second: event 3 * 86400 * 365 is due exactly one year later.
    assert s.due_ns(s.count - 1) == 86_400 * 365 * NS_PER_S


def test_schedule_due_ms_rounds_down() -> None:
    s = RateSchedule(rate=3, count=3, start_ns=5 * NS_PER_MS + 999_999)
    assert [s.due_ms(i) for i in range(3)] == [5, 339, 672]


def test_count_due_by_matches_brute_force() -> None:
    rng = random.Random(11)
    for _ in range(300):
        rate = rng.choice([1, 3, 7, 1000, 10_000, 50_000, rng.randint(1, 2_000_000)])
        count = rng.randint(0, 200)
        start = rng.randint(-(10**12), 10**12)
        s = RateSchedule(rate=rate, count=count, start_ns=start)
        probes = [start - 1, start, start + 1, s.end_ns, s.end_ns + 1]
        probes += [s.due_ns(i) + d for i in range(count) for d in (-1, 0, 1)][:60]
        for t in probes:
            expected = sum(1 for i in range(count) if s.due_ns(i) <= t)
            assert s.count_due_by(t) == expected, (rate, count, start, t)


def test_batches_cover_every_index_once() -> None:
    s = RateSchedule(rate=10, count=2503, start_ns=0)
    seen = [i for b in s.batches(1000) for i in b]
    assert seen == list(range(2503))
    assert [len(b) for b in s.batches(1000)] == [1000, 1000, 503]
    assert list(RateSchedule(rate=10, count=0, start_ns=0).batches(5)) == []


def test_schedule_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateSchedule(rate=0, count=1, start_ns=0)
    with pytest.raises(ValueError, match="count"):
        RateSchedule(rate=1, count=-1, start_ns=0)
    with pytest.raises(IndexError):
        RateSchedule(rate=1, count=2, start_ns=0).due_ns(2)
    with pytest.raises(ValueError, match="batch"):
        list(RateSchedule(rate=1, count=2, start_ns=0).batches(0))


class FakeClock:
    def __init__(self, t_ns: int = 0) -> None:
        self.t_ns = t_ns
        self.sleeps: list[float] = []

    def now(self) -> int:
        return self.t_ns

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.t_ns += math.ceil(seconds * NS_PER_S)


def test_run_paced_sends_nothing_before_it_is_due() -> None:
    clock = FakeClock(0)
    s = RateSchedule(rate=1000, count=3000, start_ns=NS_PER_S)
    sent: list[tuple[int, range]] = []

    def send(r: range) -> None:
        sent.append((clock.now(), r))

    calls = run_paced(s, send, max_batch=100, clock_ns=clock.now, sleep=clock.sleep)
    flat = [i for _, r in sent for i in r]
    assert flat == list(range(3000))
    assert calls == len(sent)
    assert all(len(r) <= 100 for _, r in sent)
    for t, r in sent:
        assert s.due_ns(r[-1]) <= t  # every event in a batch was due when it was sent
    assert clock.now() - s.end_ns < 2 * NS_PER_MS  # and none was held back long
    assert max(clock.sleeps) <= 1.0


def test_run_paced_with_lead_sends_ahead_of_due() -> None:
    clock = FakeClock(0)
    s = RateSchedule(rate=10, count=50, start_ns=10 * NS_PER_S)
    lead = 2 * NS_PER_S
    sent: list[tuple[int, range]] = []
    run_paced(
        s,
        lambda r: sent.append((clock.now(), r)),
        lead_ns=lead,
        clock_ns=clock.now,
        sleep=clock.sleep,
    )
    for t, r in sent:
        assert s.due_ns(r[-1]) <= t + lead  # within the lead
        assert t <= s.due_ns(r[0])  # and before the first one of the batch is due
    assert [i for _, r in sent for i in r] == list(range(50))


def test_run_paced_when_already_late_sends_everything_at_once() -> None:
    clock = FakeClock(100 * NS_PER_S)
    s = RateSchedule(rate=1000, count=2500, start_ns=0)
    sent: list[range] = []
    run_paced(s, sent.append, max_batch=1000, clock_ns=clock.now, sleep=clock.sleep)
    assert [len(r) for r in sent] == [1000, 1000, 500]
    assert clock.sleeps == []


# --------------------------------------------------------------------------- envelope parts


def test_throughput_and_memory_entries() -> None:
    t = throughput_entry("write", 1000, 0.5, method="pipeline")
    assert t["value"] == 2000.0
    assert throughput_entry("x", 1, 0.0, method="m")["value"] is None
    m = memory_point(1000, 150_000, baseline_bytes=50_000, what="used_memory delta")
    assert (m["bytes"], m["bytes_per_record"]) == (100_000, 100.0)
    assert memory_point(0, 10, what="x")["bytes_per_record"] is None


def test_human_count() -> None:
    assert [human_count(n) for n in (0, 999, 1000, 2500, 10_000, 1_000_000, 1_250_000)] == [
        "0",
        "999",
        "1k",
        "2.5k",
        "10k",
        "1M",
        "1.2M",
    ]

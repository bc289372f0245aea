"""The pure parts of ``bench.sink_soak`` its numbers depend on: how many records the
producer owes by a time, which samples are the reference and the end, the store's bytes
split into the receipts' and the rest, and the ratios."""

from __future__ import annotations

from typing import Any

import pytest

from bench.common import ratio, reference_and_end
from bench.sink_soak import (
    due_count,
    parse_args,
    split_sizes,
    summarise,
)


def test_due_count_sends_record_i_at_i_over_rate() -> None:
    # At 2,000 a second: record 0 at 0 s, record 1,999 at 0.9995 s, record 2,000 at 1 s.
    assert due_count(2000, -0.001, 10_000) == 0
    assert due_count(2000, 0.0, 10_000) == 1
    assert due_count(2000, 0.9995, 10_000) == 2000
    assert due_count(2000, 1.0, 10_000) == 2001
    assert due_count(2000, 60.0, 10_000) == 10_000  # never more than the run's records


def test_split_sizes_puts_every_receipts_table_and_index_apart() -> None:
    sizes = {
        "expiry_records": 4096 * 10,
        "expiry_deletions": 4096 * 5,
        "expiry_deletions_pending": 4096,
        "expiry_receipts": 4096 * 7,
        "sqlite_autoindex_expiry_receipts_1": 4096 * 2,
        "expiry_receipts_outbox": 4096,
        "sqlite_schema": 4096,
    }
    assert split_sizes(sizes) == (4096 * 10, 4096 * 17)
    assert split_sizes({}) == (0, 0)


def test_ratio_is_none_without_a_reference() -> None:
    assert ratio(110, 100) == 1.1
    assert ratio(1, 3) == 0.333
    assert ratio(5, 0) is None
    assert ratio(None, 3) is None
    assert ratio(3, None) is None


def _samples(times: list[float]) -> list[dict[str, float]]:
    return [{"t_s": t, "markers": 10 * t} for t in times]


def test_reference_is_the_first_steady_sample_after_the_markers_settle() -> None:
    samples = _samples([-35, -25, -5, 5, 45, 75, 85, 195, 205, 215, 225])
    ref, end = reference_and_end(samples, settled_s=70, steady_end_s=210)
    assert ref is not None
    assert end is not None
    assert (ref["t_s"], end["t_s"]) == (75, 205)  # not the drain after the last stamp


def test_a_run_shorter_than_the_grace_takes_its_last_steady_sample_for_both() -> None:
    ref, end = reference_and_end(_samples([-5, 5, 15, 25]), settled_s=70, steady_end_s=20)
    assert ref is not None
    assert end is not None
    assert ref["t_s"] == end["t_s"] == 15
    assert reference_and_end(_samples([-5, 25]), settled_s=70, steady_end_s=20) == (None, None)


def test_with_no_steady_sample_the_soak_takes_every_sample_as_its_steady_state() -> None:
    """``bench.soak`` still reports a run cut short before its first due time (or_all)."""
    ref, end = reference_and_end(
        _samples([-25, -15, -5]), settled_s=-20, steady_end_s=20, or_all=True
    )
    assert ref is not None
    assert end is not None
    assert (ref["t_s"], end["t_s"]) == (-15, -5)
    assert reference_and_end(
        _samples([5, 15]), settled_s=-20, steady_end_s=20, or_all=True
    ) == reference_and_end(_samples([5, 15]), settled_s=-20, steady_end_s=20)


@pytest.mark.parametrize("flag", ["--rate", "--minutes", "--lead", "--prune-every"])
def test_parse_args_refuses_what_cannot_run(flag: str) -> None:
    with pytest.raises(SystemExit):
        parse_args([flag, "0"])
    assert parse_args([]).stores == "sqlite,postgres"


def test_summarise_compares_the_end_with_the_reference_and_keeps_the_worst_lag() -> None:
    def point(t: float, markers: int, lag: int, receipts: int) -> dict[str, Any]:
        return {
            "t_s": t, "rows": 60_000, "markers": markers, "other_bytes": 40 * 2**20,
            "disk_bytes": 100 * 2**20, "rss_bytes": 150 * 2**20, "lag_messages": lag,
            "receipts": receipts, "receipts_bytes": 190 * receipts,
        }  # fmt: skip

    samples = [point(-5, 0, 9_000, 0), point(75, 150_000, -400, 150_000)]
    samples += [point(140, 120_000, 1_100, 280_000), point(205, 165_000, 300, 400_000)]
    samples.append(point(230, 130_000, 50_000, 460_000))  # the drain: not the steady state
    out = summarise(samples, settled_s=70, steady_end_s=210)
    assert (out["reference_t_s"], out["end_t_s"]) == (75, 205)
    assert out["markers_end_over_reference"] == 1.1
    assert out["rows_end_over_reference"] == 1.0
    assert out["lag_messages_max"] == 1_100
    assert out["bytes_per_receipt"] == 190.0

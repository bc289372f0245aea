"""A restore's result from its workers' results: each worker restored its own stores."""

from __future__ import annotations

from stream_expiry.state.restore import RestoreReport, RestoreResult
from stream_expiry.state.restore_workers import merge_results


def test_worker_results_add_up_and_keep_each_store_report() -> None:
    a = RestoreResult(
        total=RestoreReport(read=10, stamps=7, markers=2, unreadable=1, nulls_owed=1),
        stores={("c", 0): RestoreReport(read=10, stamps=7, markers=2)},
        others={("gone", 2): 3},
    )
    b = RestoreResult(
        total=RestoreReport(read=5, stamps=5, remaining=3),
        stores={("c", 1): RestoreReport(read=5, stamps=5)},
        others={("gone", 3): 4},
    )
    merged = merge_results([a, b])
    t = merged.total
    assert (t.read, t.stamps, t.markers, t.unreadable, t.remaining, t.nulls_owed) == (
        15, 12, 2, 1, 3, 1,
    )  # fmt: skip
    assert merged.stores == {**a.stores, **b.stores}
    # The stamps of partitions restored nowhere: each changelog partition is one worker's.
    assert merged.others == {("gone", 2): 3, ("gone", 3): 4}

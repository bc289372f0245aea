"""A restore's result from its workers' results: each worker restored its own stores."""

from __future__ import annotations

import pytest

from stream_expiry.errors import StoreError
from stream_expiry.state.restore import RestoreReport, RestoreResult
from stream_expiry.state.restore_workers import _close, merge_results


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


class _Closing:
    """A store's close, which may fail as RocksDB's flush of a damaged file makes it."""

    def __init__(self, fails: bool) -> None:
        self.fails = fails
        self.closed = False

    def close(self) -> None:
        self.closed = True
        if self.fails:
            raise StoreError("cannot close the state store s: Corruption: block checksum")


@pytest.mark.parametrize("failing", [False, True])
def test_every_store_is_closed_past_one_whose_close_fails(failing: bool) -> None:
    """A store left open keeps its lock: the damaged store moved aside, the restore tried
    again opened its path afresh and failed ("lock hold by current process", the service
    stopped; CI). Every store is closed; the first failure is raised after, unless an
    error is on its way up already (``failing``), which it must not replace."""
    stores = {("t", p): _Closing(fails=p in (0, 2)) for p in range(4)}
    if failing:
        _close(stores, failing=True)  # type: ignore[arg-type]
    else:
        with pytest.raises(StoreError):
            _close(stores)  # type: ignore[arg-type]
    assert all(store.closed for store in stores.values())

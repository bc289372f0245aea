"""Whether a store restored at an assignment was kept or empty, and how the assignment's
line says it: after a restart that kept its state directory, "12 restored from the
changelog" read as a full rebuild (an SRE trial), the same words a lost disk gets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stream_expiry.service import _restored_from_changelog
from stream_expiry.state import MemoryKV, PartitionStore, RocksKV
from stream_expiry.state.restore import RestoreReport, _apply_stamps, position_name
from tests.unit.test_restore_apply import NOW, stamp_message

if TYPE_CHECKING:
    from pathlib import Path


def _open(path: Path) -> PartitionStore:
    return PartitionStore(RocksKV(str(path)))


def test_a_store_is_kept_once_opened_before_or_written(tmp_path: Path) -> None:
    """A store made anew is not kept; one opened before (its format stamped, though its
    partition had no record yet), or written by a version that kept no format, is."""
    path = tmp_path / "store"
    store = _open(path)
    assert not store.was_kept()
    store.close()
    store = _open(path)
    try:
        assert store.was_kept()  # a restart, the partition idle
    finally:
        store.close()
    old = PartitionStore(MemoryKV())
    _apply_stamps(old, [stamp_message(0, "a")], NOW, {position_name("s", 0): 1}, RestoreReport())
    old.kv.apply({}, [b"~format"])  # as a version before the format left it
    assert PartitionStore(old.kv).was_kept()
    assert not PartitionStore(MemoryKV()).was_kept()


def test_the_assignment_line_tells_kept_stores_from_empty_ones() -> None:
    assert _restored_from_changelog(12, 12) == (
        "12 restored from the changelog (12 kept stores caught up from their positions, "
        "0 rebuilt from empty)"
    )
    assert _restored_from_changelog(12, 3) == (
        "12 restored from the changelog (3 kept stores caught up from their positions, "
        "9 rebuilt from empty)"
    )
    assert _restored_from_changelog(0, 0) == "0 restored from the changelog"

"""Tests that kill mutants the suite let through in modules earlier passes reached least:
the SQLite store (:mod:`stream_expiry.sinks.sqlite`), the store layer
(:mod:`stream_expiry.sinks.store`) and what replay keeps of ``expiry.stamped``
(:mod:`stream_expiry.changelog`). Each passes on the code and fails on the mutant named in
its docstring (a one-token change: a comparison flipped, a condition or a statement
dropped). Two more are in the store suite (``tests/integration/test_sinks_stores.py``):
a row written again moves to its new position, and a store is empty until it holds
something."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from stream_expiry.changelog import Current, Latest
from stream_expiry.codec import source_headers
from stream_expiry.errors import StoreError
from stream_expiry.sinks.sqlite import SQLiteStore

if TYPE_CHECKING:
    from pathlib import Path


# --- the SQLite store ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_in_memory_sqlite_store_leaves_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``:memory:`` is SQLite's name for a database in memory, not a file: the store does
    not create one of that name first to make it private. Mutant ``path == ":memory:" and
    path.startswith("file:")`` in ``_create_private``: a file named ``:memory:`` was left
    in the working directory."""
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore(":memory:")
    await store.open()
    try:
        assert await store.is_empty()
    finally:
        await store.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.asyncio
async def test_a_store_used_as_a_context_opens_and_closes(tmp_path: Path) -> None:
    """``async with`` a store opens it, and closes it on the way out (the integration tests
    read a sink's SQLite file so). Mutants of ``Store.__aenter__`` without its ``open()`` (the
    store was not open inside) and of ``__aexit__`` without its ``close()`` (the
    connection stayed open) passed the unit and store suites."""
    async with SQLiteStore(tmp_path / "sink.db") as store:
        assert await store.is_empty()
    try:
        with pytest.raises(StoreError, match="not open"):
            await store.is_empty()
    finally:
        await store.close()  # a no-op once closed; under the mutant, the test ends


# --- what replay keeps of expiry.stamped ------------------------------------------------------


def test_a_stamp_of_input_partition_0_keeps_its_source() -> None:
    """Partition 0 of an input topic is a source like any other: a stamp replay publishes
    in its place names it, as the service's did (the restore puts the record back on that
    partition's processor). ``-1`` stands for no source. Mutant ``src_p > 0`` in
    ``Current.unpack``: a stamp of partition 0 was kept as naming no input partition."""
    headers = source_headers("conversations", 0)
    assert Current.unpack(Current.pack(2, headers, b"{}")) == Latest(
        2, ("conversations", 0), b"{}", None, None
    )
    assert Current.unpack(Current.pack(2, headers, None)).source == ("conversations", 0)

"""The Kafka cluster a state directory's stores were written against (state.cluster_mark)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from stream_expiry.errors import StoreError
from stream_expiry.state import RocksKV
from stream_expiry.state.cluster_mark import CLUSTER_FILE, check_cluster

if TYPE_CHECKING:
    from pathlib import Path


def _store(state: Path, name: str = "conversations-0") -> None:
    RocksKV(str(state / name)).close()


def test_a_directory_takes_the_first_cluster_it_meets_and_keeps_it(tmp_path: Path) -> None:
    """New, or written by a version that noted no cluster: the cluster met is noted, and
    starts on it go on."""
    _store(tmp_path)
    check_cluster(str(tmp_path), "prod", "kafka:9092")
    assert (tmp_path / CLUSTER_FILE).read_text() == "prod\n"
    check_cluster(str(tmp_path), "prod", "kafka:9092")


def test_stores_of_another_cluster_stop_the_start_with_what_to_do(tmp_path: Path) -> None:
    _store(tmp_path)
    check_cluster(str(tmp_path), "staging", "staging-kafka:9092")
    with pytest.raises(StoreError) as caught:
        check_cluster(str(tmp_path), "prod", "kafka:9092")
    said = str(caught.value)
    assert "holds the stores of Kafka cluster 'staging'" in said
    assert "the brokers kafka:9092 are of cluster 'prod'" in said
    assert "give this instance its own" in said
    assert f"delete {tmp_path / CLUSTER_FILE} and start again" in said
    assert (tmp_path / CLUSTER_FILE).read_text() == "staging\n"  # nothing adopted


def test_without_stores_or_a_cluster_id_nothing_is_refused(tmp_path: Path) -> None:
    """No store: nothing of the old cluster can fire (stores moved aside do not count).
    A broker that names no cluster (before Kafka 0.10.1) is not checked."""
    check_cluster(str(tmp_path), "staging", "b:9092")
    _store(tmp_path, "conversations-0.corrupt-20261206T000000Z")
    check_cluster(str(tmp_path), "prod", "b:9092")
    assert (tmp_path / CLUSTER_FILE).read_text() == "prod\n"
    _store(tmp_path)
    check_cluster(str(tmp_path), None, "b:9092")
    assert (tmp_path / CLUSTER_FILE).read_text() == "prod\n"

"""Which Kafka cluster a state directory's stores were written against.

A state directory reused on another cluster (a staging volume mounted in production, a
copy restored from a backup of another deployment, brokers behind the same address
swapped for another cluster) has stores whose checkpoints that cluster's changelog does
not hold. The restore then reads that changelog from its beginning over what the stores
hold, as it must after a topic was made again on the same cluster, and the stores'
records went on: an incident drill on two brokers with the same topic names saw 559
tombstones for records the second cluster never had, and that cluster's records
tombstoned at the first cluster's expiry of the same key (its earlier creation wins),
before their own: deleted early. Only a warning said it ("a rebuilt cluster?").

So the state directory keeps the cluster id (Kafka's, from the metadata) in a file,
:data:`CLUSTER_FILE`, and a session whose brokers are of another cluster, while stores
are there, stops with what to do: a cluster that replaced the old one after its loss
(whose stores then keep records no changelog has) is adopted by deleting the file; any
other directory is not this instance's. A directory without the file (new, or written by
an earlier version) takes the cluster it meets, as before.
"""

from __future__ import annotations

import os
from typing import Final

from stream_expiry.errors import StoreError
from stream_expiry.state.kv import partition_stores

__all__ = ["CLUSTER_FILE", "check_cluster"]

CLUSTER_FILE: Final = "kafka-cluster-id"


def check_cluster(state_dir: str, cluster_id: str | None, brokers: str) -> None:
    """Note ``cluster_id`` in ``state_dir``, or raise :class:`StoreError` if the stores
    there were written against another cluster. ``None`` (a broker that names no
    cluster, before Kafka 0.10.1) checks nothing."""
    if cluster_id is None:
        return
    path = os.path.join(state_dir, CLUSTER_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            noted: str | None = f.read().strip()
    except FileNotFoundError:
        noted = None
    if noted == cluster_id:
        return
    if noted and any(True for _ in partition_stores(state_dir)):
        raise StoreError(
            f"the state directory {state_dir!r} holds the stores of Kafka cluster {noted!r}, "
            f"and the brokers {brokers} are of cluster {cluster_id!r}: its stores' records "
            "would be tombstoned on this cluster (records it may not have, or has with "
            "other times). If this directory is another deployment's, give this instance "
            "its own (--state-dir, $STREAM_EXPIRY_STATE_DIR, or state_dir in the config "
            f"file), or empty this one: its stores are restored from this cluster's "
            f"changelog. If this cluster replaced that one (rebuilt after its loss) and "
            f"the stores' pending records are to be tombstoned here, delete {path} and "
            "start again"
        )
    temporary = f"{path}.new"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(f"{cluster_id}\n")
        os.replace(temporary, path)
    except OSError as exc:
        raise StoreError(
            f"cannot write {path} ({exc.strerror or exc}): the state directory must be "
            "writable by the service"
        ) from exc

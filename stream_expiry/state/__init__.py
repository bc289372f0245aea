"""Per-partition state: one processor and one store for each assigned input partition.

The store is a cache of the changelog (``expiry.stamped`` and ``expiry.tombstones``): any
instance rebuilds any partition from those topics (:mod:`stream_expiry.state.restore`), so
input topics need to keep events only until they are processed.
"""

from stream_expiry.state.kv import KeyValue, MemoryKV, RocksKV
from stream_expiry.state.processor import Effects, PartitionProcessor
from stream_expiry.state.store import PartitionStore, StoreCounts

__all__ = [
    "Effects",
    "KeyValue",
    "MemoryKV",
    "PartitionProcessor",
    "PartitionStore",
    "RocksKV",
    "StoreCounts",
]

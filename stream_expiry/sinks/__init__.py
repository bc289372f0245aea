"""Downstream stores: the consumers that apply tombstones, and the evidence that they did.

A sink consumes ``expiry.stamped`` (records with their expiry; a null value deletes) and
``expiry.tombstones`` into a :class:`Store`, idempotently and in any relative order, and
leaves a :class:`Receipt` for every deletion (in the store, and on ``expiry.receipts``).
Stores: :class:`MemoryStore`, :class:`SQLiteStore`, :class:`PostgresStore` (asyncpg is
imported only when a PostgreSQL store opens). Entry points: :func:`run_sink` and, for the
command line, :func:`add_sink_parser`.
"""

from stream_expiry.sinks._messages import InvalidMessage, Marker, Receipt, Row, encode_receipt
from stream_expiry.sinks.command import add_sink_parser
from stream_expiry.sinks.framework import BatchReport, Sink, SinkConfig, run_sink
from stream_expiry.sinks.postgres import PostgresStore
from stream_expiry.sinks.sqlite import SQLiteStore
from stream_expiry.sinks.store import MemoryStore, Store

__all__ = [
    "BatchReport",
    "InvalidMessage",
    "Marker",
    "MemoryStore",
    "PostgresStore",
    "Receipt",
    "Row",
    "SQLiteStore",
    "Sink",
    "SinkConfig",
    "Store",
    "add_sink_parser",
    "encode_receipt",
    "run_sink",
]

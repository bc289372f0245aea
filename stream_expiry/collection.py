"""Fewer, cheaper cyclic garbage collections, for each of our processes that reads much.

Per-record objects are named tuples and plain slots classes, freed by reference counting;
with the default thresholds, full collections over the objects held in the timing wheel
paused the service's loop for 50-140 ms at a time (measured by bench.e2e_expiry at
10k/s). The wheel now holds its timers as plain tuples of bytes, which the collector stops
tracking (``stream_expiry.engine``: 528k timers, the longest gen-0 pause 65 -> 13 ms, a
full collection 1,034 -> 150 ms). A restore's worker process, which holds a fetch's
records and a flush's rows at a time, spent 4-8 % of its CPU in collections
(``bench.bench_restore``, round 55: 9.2-9.6 us of CPU a stamp against 10.1-10.4).
Objects alive after start-up are frozen out of collection altogether.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc() -> None:
    """Freeze what is alive now, and collect far less often: the service, a sink, a
    worker process, once each, when it has started."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)

"""The Prometheus exposition: counters from the service's stats, served over HTTP."""

from __future__ import annotations

import functools

import anyio
import pytest

from stream_expiry.broker import free_port
from stream_expiry.metrics import render, serve_metrics
from stream_expiry.service import ServiceStats


def _stats() -> ServiceStats:
    stats = ServiceStats(events=10, stamped=7, tombstones=3, explicit=1)
    stats.dead_letter_codes["invalid_json"] += 2
    for lag in (0, 7, 70_000):
        stats.observe_lag(lag)
    return stats


def test_render_has_counters_labels_and_a_cumulative_histogram() -> None:
    text = render(_stats(), env_warnings=1)
    lines = set(text.splitlines())
    assert "stream_expiry_events_total 10" in lines
    assert 'stream_expiry_tombstones_total{reason="ttl"} 3' in lines
    assert 'stream_expiry_tombstones_total{reason="explicit"} 1' in lines
    assert 'stream_expiry_dead_letters_total{code="invalid_json"} 2' in lines
    assert "stream_expiry_invalid_env_variables 1" in lines
    assert 'stream_expiry_tombstone_lag_seconds_bucket{le="0.001"} 1' in lines
    assert 'stream_expiry_tombstone_lag_seconds_bucket{le="0.01"} 2' in lines
    assert 'stream_expiry_tombstone_lag_seconds_bucket{le="60"} 2' in lines
    assert 'stream_expiry_tombstone_lag_seconds_bucket{le="+Inf"} 3' in lines
    assert "stream_expiry_tombstone_lag_seconds_sum 70.007" in lines


@pytest.mark.asyncio
async def test_metrics_are_served_over_http() -> None:
    port = free_port()
    async with anyio.create_task_group() as tg:
        serve = functools.partial(serve_metrics, host="127.0.0.1")
        tg.start_soon(serve, port, lambda: render(_stats(), env_warnings=0))
        with anyio.fail_after(5):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                    break
                except OSError:
                    await anyio.sleep(0.01)
        async with stream:
            await stream.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            with anyio.fail_after(5):
                try:
                    while True:
                        response += await stream.receive()
                except anyio.EndOfStream:
                    pass
        tg.cancel_scope.cancel()
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert b"stream_expiry_events_total 10" in response

"""Prometheus metrics for ``stream-expiry run --metrics-port PORT``.

The text exposition format needs no client library: the service's counters are rendered on
each scrape from :class:`ServiceStats`, so there is no second set of counters to keep in
step. The HTTP side is the least a scraper needs (``GET /metrics``), on anyio.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import SocketStream

    from stream_expiry.service import ServiceStats

__all__ = ["LAG_BUCKETS_MS", "render", "serve_metrics"]

log = logging.getLogger("stream_expiry.metrics")

LAG_BUCKETS_MS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 60_000)


def render(stats: ServiceStats, *, env_warnings: int) -> str:
    """The metrics in Prometheus' text format (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP stream_expiry_{name} {help_text}")
        lines.append(f"# TYPE stream_expiry_{name} {kind}")
        for labels, value in samples:
            lines.append(f"stream_expiry_{name}{labels} {value:g}")

    metric("events_total", "counter", "Input events read.", [("", stats.events)])
    metric("stamped_total", "counter", "Stamps published on expiry.stamped.", [("", stats.stamped)])
    metric(
        "tombstones_total",
        "counter",
        "Tombstones published, by reason.",
        [('{reason="ttl"}', stats.tombstones), ('{reason="explicit"}', stats.explicit)],
    )
    metric(
        "dead_letters_total",
        "counter",
        "Input messages sent to the dead-letter topic, by error code.",
        [(f'{{code="{code}"}}', n) for code, n in sorted(stats.dead_letter_codes.items())]
        or [("", 0)],
    )
    metric(
        "verdicts_total",
        "counter",
        "What valid events did (created, extended, stale, ...).",
        [(f'{{verdict="{v}"}}', n) for v, n in sorted(stats.verdicts.items())] or [("", 0)],
    )
    metric(
        "policy_updates_total", "counter", "Policy updates applied.", [("", stats.policy_updates)]
    )
    metric(
        "invalid_env_variables",
        "gauge",
        "Retention environment variables that are set but invalid (ignored).",
        [("", env_warnings)],
    )
    metric(
        "timers_in_wheel",
        "gauge",
        "Expirations held in memory (due within the horizon).",
        [("", stats.pending_in_wheel)],
    )
    buckets = stats.lag_buckets
    cumulative = 0
    samples: list[tuple[str, float]] = []
    for bound, count in zip(LAG_BUCKETS_MS, buckets, strict=False):
        cumulative += count
        samples.append((f'_bucket{{le="{bound / 1000:g}"}}', cumulative))
    samples.append(('_bucket{le="+Inf"}', stats.tombstones))
    samples.append(("_sum", stats.lag_sum_ms / 1000))
    samples.append(("_count", stats.tombstones))
    metric(
        "tombstone_lag_seconds",
        "histogram",
        "From expires_at to emitted_at, ttl tombstones.",
        samples,
    )
    return "\n".join(lines) + "\n"


async def serve_metrics(port: int, get_text: Callable[[], str], *, host: str = "0.0.0.0") -> None:
    """Serve ``GET /metrics`` until cancelled."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    log.info("metrics on http://%s:%d/metrics", host, port)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(5):
                    request = b""
                    while b"\r\n\r\n" not in request and len(request) < 8192:
                        request += await stream.receive()
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
                return
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path == b"/metrics":
                body = get_text().encode()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"not found: try /metrics\n"
                head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
            head += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            try:
                await stream.send(head + body)
            except anyio.BrokenResourceError:
                return

    async with listener:
        await listener.serve(handle)

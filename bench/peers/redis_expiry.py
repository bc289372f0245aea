"""Peer benchmark: Redis key expiry with keyspace notifications.

What a user would build instead of stream-expiry: ``SET key 1 PXAT due`` for every record and
a subscriber on ``__keyevent@0__:expired`` that forwards each event as the tombstone.

The benchmark starts its OWN ``redis-server`` on a free loopback port (``--save ""
--appendonly no``, ``--hz`` as given, 10 being Redis's default, ``notify-keyspace-events Ex``),
and stops it at the end.

Lag phase (``--rate R --seconds S``): ``R * S`` keys are written (redis-py pipelines) with
absolute expiry times ``PXAT`` spread evenly, R per second, over an S-second window that
starts once the writes are expected to be done (a calibration run sizes that lead). A
subscriber in a separate process, reading the raw socket so client parsing costs little,
stamps every expired event with the wall clock when its bytes arrived; the key name carries
its due time in ms, so lag = arrival - due. Redis deletes an expired key (and only then
publishes the event) either when it is accessed or when its active-expiry cycle samples it,
so events are late and, within a bounded grace window after the last due time, some never
come: they are counted as missing, not hidden. ``--background N`` adds N keys that expire far
in the future during the lag phase (what a real deployment with long retention holds), which
makes the sampling find due keys less often. ``--stream-lead L`` writes each key only L
seconds before it is due (paced by ``bench.common.run_paced``) instead of preloading the whole
window, so only about R * L keys with a TTL exist at once: Redis's best case. When the
writer cannot keep up (keys written at or after their due time), the run says so in
``extra.lag.keys_written_late`` and in ``notes``: it then measures the writer, not Redis.

Memory phase (``--pending N``): ``INFO memory`` ``used_memory`` before and after writing N keys
(realistic ~45-byte record keys, value ``1``) that expire in 30 days, at several counts.

Run alone: ``python -m bench.peers.redis_expiry --rate 10000 --seconds 10 [--hz 100]``.
Prints one JSON object (see ``bench.common.envelope``); progress goes to stderr.
"""

from __future__ import annotations

import array
import contextlib
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

from bench.common import (
    NS_PER_MS,
    NS_PER_S,
    RateSchedule,
    base_parser,
    emit_result,
    envelope,
    fmt_ms,
    human_count,
    log,
    memory_point,
    record_key,
    rss_bytes,
    run_paced,
    summarize,
    throughput_entry,
    utc_now_iso,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from types import TracebackType

CHANNEL = b"__keyevent@0__:expired"
PIPELINE_BATCH = 1000
FAR_FUTURE_MS = 30 * 24 * 3600 * 1000
CALIBRATION_KEYS = 20_000

# One pubsub message for our channel; the key is ASCII without CR/LF.
_MESSAGE = re.compile(
    rb"\*3\r\n\$7\r\nmessage\r\n\$"
    + str(len(CHANNEL)).encode()
    + rb"\r\n"
    + re.escape(CHANNEL)
    + rb"\r\n\$\d+\r\n([^\r]*)\r\n"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server on a free loopback port; a context manager that stops it."""

    def __init__(self, hz: int = 10, binary: str = "redis-server") -> None:
        self.hz = hz
        self.binary = shutil.which(binary) or binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 10.0) -> None:
        import redis

        self._dir = tempfile.mkdtemp(prefix="bench-redis-")
        for _attempt in range(5):
            port = free_port()
            cmd = [
                self.binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--hz", str(self.hz),
                "--notify-keyspace-events", "Ex",
                "--daemonize", "no",
                "--dir", self._dir,
                "--logfile", os.path.join(self._dir, "redis.log"),
            ]  # fmt: skip
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping():
                        self.proc, self.port = proc, port
                        return
                except redis.exceptions.ConnectionError:
                    time.sleep(0.01)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        raise RuntimeError(f"redis-server did not start; see {self._dir}/redis.log")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- subscriber


def _subscriber(port: int, expected: int, deadline_ns: int, conn: Connection) -> None:
    """Child process: count and time expired events until all came or the deadline passed.

    Sends ``"ready"`` once subscribed, then one dict with the lags (ms, array of doubles as
    bytes) and the counts. Keys are ``{due_ms}:{index}``; any other key is counted as foreign.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"SUBSCRIBE " + CHANNEL + b"\r\n")
    buf = bytearray()
    while b":1\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("redis closed the subscriber connection")
        buf += chunk
    del buf[: buf.index(b":1\r\n") + 4]
    conn.send("ready")

    lags = array.array("d")
    seen = bytearray(expected)
    got = duplicates = foreign = 0
    disconnected = False
    sock.settimeout(0.05)
    rbuf = bytearray(1 << 20)
    while got < expected:
        now = time.time_ns()
        if now >= deadline_ns:
            break
        try:
            n = sock.recv_into(rbuf)
        except TimeoutError:
            continue
        t_ns = time.time_ns()  # when these bytes reached us: the arrival time of every event
        if n == 0:
            disconnected = True
            break
        buf += rbuf[:n]
        t_ms = t_ns / NS_PER_MS
        end = 0
        for m in _MESSAGE.finditer(buf):
            end = m.end()
            due_s, _, idx_s = m.group(1).partition(b":")
            try:
                due_ms, idx = int(due_s), int(idx_s)
            except ValueError:
                foreign += 1
                continue
            if not 0 <= idx < expected:
                foreign += 1
                continue
            if seen[idx]:
                duplicates += 1
                continue
            seen[idx] = 1
            got += 1
            lags.append(t_ms - due_ms)
        if end:
            del buf[:end]
    sock.close()
    conn.send(
        {
            "lags": lags.tobytes(),
            "delivered": got,
            "duplicates": duplicates,
            "foreign": foreign,
            "disconnected": disconnected,
        }
    )
    conn.close()


# --------------------------------------------------------------------------- phases


def _write_keys(client: Any, keys: list[tuple[bytes, int]]) -> None:
    pipe = client.pipeline(transaction=False)
    for key, pxat in keys:
        pipe.set(key, b"1", pxat=pxat)
    pipe.execute()


def _calibrate_write_rate(client: Any) -> float:
    """Keys per second redis-py pipelines reach here (keys then flushed: no events fire)."""
    far = int(time.time() * 1000) + FAR_FUTURE_MS
    t0 = time.perf_counter()
    for lo in range(0, CALIBRATION_KEYS, PIPELINE_BATCH):
        _write_keys(client, [(f"cal:{i}".encode(), far) for i in range(lo, lo + PIPELINE_BATCH)])
    rate = CALIBRATION_KEYS / (time.perf_counter() - t0)
    client.flushall()
    return rate


# Server-side fill of far-future keys: the same keys as ``record_key`` (checked after each
# fill), ~20x faster than client pipelines, so big pending counts cost little suite time.
_FILL_LUA = """
local far = ARGV[1]
for i = tonumber(ARGV[2]), tonumber(ARGV[3]) - 1 do
  redis.call('SET', string.format('org-%04d/bot-%02d/live/conversation/rec-%012d',
                                  i % 997, i % 13, i), '1', 'PXAT', far)
end
return 0
"""
LUA_BATCH = 50_000


def _fill_far_future(client: Any, n: int, checkpoints: list[int] | None = None) -> list[int]:
    """Write ``n`` record keys (value ``1``) expiring in 30 days, by a Lua script in batches;
    return ``used_memory`` read at each checkpoint count."""
    far = int(time.time() * 1000) + FAR_FUTURE_MS
    fill = client.register_script(_FILL_LUA)
    marks = sorted(set(checkpoints or []))
    used: list[int] = []
    lo = 0
    while lo < n:
        hi = min(lo + LUA_BATCH, marks[0] if marks else n, n)
        fill(args=[far, lo, hi])
        lo = hi
        while marks and lo >= marks[0]:
            marks.pop(0)
            used.append(int(client.info("memory")["used_memory"]))
    if n and not (client.exists(record_key(0)) and client.exists(record_key(n - 1))):
        raise RuntimeError("the Lua fill wrote other keys than record_key()")
    return used


def memory_phase(server: RedisServer, pending: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=server.port)
    client.flushall()
    baseline = int(client.info("memory")["used_memory"])
    rss0 = rss_bytes(server.pid)
    checkpoints = sorted(
        {max(1, pending // 10), max(1, pending // 4), max(1, pending // 2), pending}
    )
    log(f"redis memory: writing {pending} keys expiring in 30 days")
    used = _fill_far_future(client, pending, checkpoints)
    rss1 = rss_bytes(server.pid)
    points = [
        memory_point(n, u, baseline_bytes=baseline, what="INFO used_memory delta")
        for n, u in zip(checkpoints, used, strict=True)
    ]
    points[-1]["rss_delta_bytes"] = rss1 - rss0
    info = client.info("memory")
    extra = {
        "used_memory_baseline": baseline,
        "mem_fragmentation_ratio": info.get("mem_fragmentation_ratio"),
        "allocator": info.get("mem_allocator"),
        "dbsize": int(client.dbsize()),
    }
    client.flushall()
    client.close()
    return points, extra


def lag_phase(
    server: RedisServer,
    rate: int,
    seconds: float,
    grace: float,
    background: int,
    stream_lead: float | None = None,
) -> dict[str, Any]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=server.port)
    client.flushall()
    client.config_resetstat()
    count = int(rate * seconds)
    write_rate = _calibrate_write_rate(client)
    log(f"redis lag: pipelined writes reach ~{write_rate:,.0f} keys/s here")
    bg_seconds = 0.0
    if background:
        log(f"redis lag: writing {background} background keys expiring in 30 days")
        t0 = time.perf_counter()
        _fill_far_future(client, background)
        bg_seconds = time.perf_counter() - t0

    # Preload: every key is written before the window opens (R * S keys with a TTL exist at
    # its start). Stream: each key is written ``stream_lead`` seconds before it is due, so
    # only about R * lead keys with a TTL exist at any time (Redis's best case).
    lead_s = 1.0 + 1.5 * count / write_rate if stream_lead is None else stream_lead + 0.5
    schedule = RateSchedule(
        rate=rate, count=count, start_ns=time.time_ns() + int(lead_s * NS_PER_S)
    )
    deadline_ns = schedule.end_ns + int(grace * NS_PER_S)

    ctx = mp.get_context("fork")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    sub = ctx.Process(target=_subscriber, args=(server.port, count, deadline_ns, child_conn))
    sub.start()
    child_conn.close()
    if not parent_conn.poll(10) or parent_conn.recv() != "ready":
        sub.kill()
        raise RuntimeError("subscriber did not subscribe")

    late = 0

    def send(batch: range) -> None:
        nonlocal late
        now_ms = time.time_ns() // NS_PER_MS
        keys = [(f"{schedule.due_ms(i)}:{i}".encode(), schedule.due_ms(i)) for i in batch]
        late += sum(1 for _, due in keys if due <= now_ms)
        _write_keys(client, keys)

    mode = "preload" if stream_lead is None else f"stream, {stream_lead:g}s ahead"
    log(f"redis lag: writing {count} keys due at {rate}/s over {seconds:g}s ({mode})")
    t0 = time.perf_counter()
    if stream_lead is None:
        for batch in schedule.batches(PIPELINE_BATCH):
            send(batch)
    else:
        run_paced(schedule, send, lead_ns=int(stream_lead * NS_PER_S), max_batch=PIPELINE_BATCH)
    write_s = time.perf_counter() - t0
    overlap_s = max(0.0, (time.time_ns() - schedule.start_ns) / NS_PER_S)
    if overlap_s > 0 and stream_lead is None:
        log(f"redis lag: writes ran {overlap_s:.2f}s into the expiry window")
    if late:
        log(f"redis lag: {late} keys were written at or after their due time")

    wait_s = (deadline_ns - time.time_ns()) / NS_PER_S + 10
    log(f"redis lag: waiting for expired events (up to {wait_s:.0f}s)")
    if not parent_conn.poll(max(wait_s, 1)):
        sub.kill()
        sub.join()
        raise RuntimeError("subscriber did not report")
    res: dict[str, Any] = parent_conn.recv()
    sub.join(5)
    finished_ns = time.time_ns()

    lags = array.array("d")
    lags.frombytes(res["lags"])
    stats = client.info("stats")
    dbsize_after = int(client.dbsize())
    delivered = int(res["delivered"])
    summary = summarize(lags)
    sorted_lags = sorted(lags)

    def pct(p: float) -> float | None:
        if not sorted_lags:
            return None
        from bench.common import percentile

        return round(percentile(sorted_lags, p), 3)

    lag = {
        "rate": rate,
        "seconds": seconds,
        "scheduled": count,
        "delivered": delivered,
        "missing": count - delivered,
        "delivered_fraction": round(delivered / count, 6) if count else None,
        "grace_s": grace,
        "lag_ms": summary.to_json(),
    }
    extra = {
        "lag_percentiles_ms": {"p90": pct(90), "p99.9": pct(99.9)},
        "duplicates": res["duplicates"],
        "foreign_events": res["foreign"],
        "subscriber_disconnected": res["disconnected"],
        "mode": mode,
        "write_overlap_into_window_s": round(overlap_s, 3) if stream_lead is None else None,
        "keys_written_late": late,
        "lead_s": round(lead_s, 3),
        "background_keys": background,
        "background_write_s": round(bg_seconds, 3),
        "keys_left_after_grace": dbsize_after - background,
        "redis_stats": {
            k: stats.get(k)
            for k in (
                "expired_keys",
                "expired_stale_perc",
                "expired_time_cap_reached_count",
                "expire_cycle_cpu_milliseconds",
                "evicted_keys",
            )
        },
        "window_end_to_report_s": round((finished_ns - schedule.end_ns) / NS_PER_S, 3),
        "throughput": throughput_entry(
            "write keys",
            count,
            write_s if stream_lead is None else 0.0,
            method=f"redis-py pipeline of {PIPELINE_BATCH} SET key 1 PXAT, one connection",
        ),
    }
    client.flushall()
    client.close()
    log(
        f"redis lag: {delivered}/{count} events, p50 {fmt_ms(summary.p50)}, "
        f"p99 {fmt_ms(summary.p99)}, max {fmt_ms(summary.max)}"
    )
    return {"lag": lag, "extra": extra}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0] if __doc__ else "redis expiry")
    parser.add_argument("--hz", type=int, default=10, help="redis-server --hz (default 10)")
    parser.add_argument(
        "--background", type=int, default=0, help="far-future keys present during the lag phase"
    )
    parser.add_argument(
        "--stream-lead",
        type=float,
        default=None,
        help="write each key this many seconds before it is due, instead of preloading all",
    )
    args = parser.parse_args(argv)
    started = utc_now_iso()
    system = f"redis-hz{args.hz}"
    if args.stream_lead is not None:
        system += f"-stream{args.stream_lead:g}s"
    if args.background:
        system += f"-bg{human_count(args.background)}"
    lag: dict[str, Any] | None = None
    throughput: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    notes = [
        "Redis publishes an expired event when it deletes the key: on access, or when the "
        "active-expiry cycle (hz times per second, plus a fast cycle) samples it.",
        "With the default active-expire-effort 1, a cycle stops once fewer than ~10% of the "
        "sampled keys with a TTL are already expired, so up to ~10% of all keys with a TTL can "
        "sit expired but undeleted: with many far-future keys (the -bg variants), events for "
        "due keys come seconds late or not within the grace window.",
        "Lag is measured from the key's PXAT due time to the arrival of the event's bytes at a "
        "raw-socket subscriber in its own process; both clocks are this machine's wall clock.",
    ]
    with RedisServer(hz=args.hz) as server:
        version = subprocess.run(
            [server.binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        extra["redis_version"] = version
        log(f"redis-server on 127.0.0.1:{server.port} (hz {args.hz}): {version}")
        if args.pending > 0:
            memory, extra["memory"] = memory_phase(server, args.pending)
        if args.rate > 0:
            out = lag_phase(
                server, args.rate, args.seconds, args.grace, args.background, args.stream_lead
            )
            lag = out["lag"]
            lag_extra = out["extra"]
            tp = lag_extra.pop("throughput")
            if tp["value"] is not None:  # paced writes (--stream-lead) say nothing of speed
                throughput.insert(0, tp)
            extra["lag"] = lag_extra
            if lag_extra["keys_written_late"]:
                notes.append(
                    f"{lag_extra['keys_written_late']} keys were written at or after their due "
                    "time (the writer could not keep up with the rate): this run measures the "
                    "writer, not Redis."
                )
            if lag and lag["missing"]:
                notes.append(
                    f"{lag['missing']} of {lag['scheduled']} expired events had not arrived "
                    f"{args.grace:g}s after the last due time."
                )
    result = envelope(
        "redis_expiry",
        system,
        params={
            "rate": args.rate,
            "seconds": args.seconds,
            "pending": args.pending,
            "grace": args.grace,
            "hz": args.hz,
            "background": args.background,
            "stream_lead": args.stream_lead,
        },
        lag=lag,
        throughput=throughput,
        memory=memory,
        extra=extra,
        notes=notes,
        started_at=started,
    )
    emit_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

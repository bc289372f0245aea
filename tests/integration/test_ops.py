"""What an operator runs: the processes, their HTTP port, their exit statuses and signals."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from aiokafka import TopicPartition

from stream_expiry import exits
from stream_expiry.broker import free_port
from stream_expiry.cli import main
from stream_expiry.config import parse_config
from stream_expiry.demo import Watch, _summary
from stream_expiry.kafka import consumer
from stream_expiry.service import Service
from tests.conftest import read_topic
from tests.integration.service_helpers import (
    config_for,
    config_text,
    event,
    produce,
    running_service,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from stream_expiry.config import Config
    from tests.conftest import TopicSet

pytestmark = pytest.mark.integration

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
# Far below the ~6 s the test broker holds a first JoinGroup: a behaviour bound, not a speed.
JOIN_STOP_BOUND_S = 2.0


def _start(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """In a process group of its own, as a shell runs a command: a signal to the group
    reaches the command and every child it started, as Ctrl-C in a terminal does."""
    return subprocess.Popen(
        [sys.executable, "-m", "stream_expiry", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV if env is None else {**ENV, **env},
        start_new_session=True,
    )


def _status(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""  # not listening yet


def _poll(proc: subprocess.Popen[str], url: str, want: int, timeout_s: float = 30) -> bytes:
    """Poll ``url`` until it answers ``want``; fail with the process's output if it exits."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}: {proc.communicate()[1]}")
        status, body = _status(url)
        if status == want:
            return body
        time.sleep(0.05)
    pytest.fail(f"{url} never answered {want}")


def _read_until(proc: subprocess.Popen[str], text: str, said: list[str]) -> None:
    """Read ``proc``'s stderr into ``said`` until a line holds ``text``; an end of output
    before it fails the test with what was said."""
    assert proc.stderr is not None
    while not any(text in line for line in said):
        line = proc.stderr.readline()
        assert line, "".join(said)
        said.append(line)


def _stop(proc: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal, wait (a deadline, then kill), and return the status and the rest of stderr."""
    code, _out, err = _stop_with_output(proc, signum)
    return code, err


def _stop_with_output(
    proc: subprocess.Popen[str], signum: int, *, group: bool = False
) -> tuple[int, str, str]:
    """``group``: signal the whole process group, as a terminal's Ctrl-C does."""
    if group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def _signalled_twice_at_once(proc: subprocess.Popen[str]) -> None:
    """SIGTERM and SIGINT sent to ``proc`` while it is stopped (SIGSTOP; the caller sends
    SIGCONT), as a loaded machine leaves a process unscheduled between two signals: both
    are pending when it runs again, so the second is handled before it could finish its
    batch. Which of the two it handles first is not the order they were sent in: Linux
    delivers pending signals lowest number first, each to whichever of the process's
    threads takes it, so SIGTERM then SIGINT sent back to back were handled as SIGINT then
    SIGTERM now and then under load (and, stopped, either way round)."""
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)


def _start_run(
    broker: str, topics: TopicSet, tmp_path: Path, *extra: str
) -> tuple[subprocess.Popen[str], str]:
    """``stream-expiry run`` on a config file for ``topics``, serving its endpoints on a
    free port: the process and the endpoints' base address."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state")))
    port = free_port()
    proc = _start(
        "run", "--config", str(cfg), "--bootstrap-servers", broker, "--metrics-port", str(port),
        *extra,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def test_run_serves_health_readiness_and_metrics(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    proc, base = _start_run(broker, topics, tmp_path, "--log-format", "json")
    try:
        _poll(proc, base + "/healthz", 200)
        body = _poll(proc, base + "/readyz", 200)
        assert b'"phase":"running"' in body
        metrics = _poll(proc, base + "/metrics", 200)
        for name in (
            b"stream_expiry_events_total",
            b"stream_expiry_ready 1.0",
            b"process_resident_memory_bytes",
            b"python_gc_collections_total",
            # The group's view: one assignment so far, of every partition of the 3 inputs
            # (2 each); a crash or a roll elsewhere in the group shows in these.
            b"stream_expiry_rebalances_total 1.0",
            b"stream_expiry_assigned_partitions 6.0",
        ):
            assert name in metrics
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert '"logger":"stream_expiry.service"' in err  # JSON lines on stderr
    assert "Traceback" not in err


def test_sink_serves_health_and_its_metrics(broker: str, topics: TopicSet, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(
        "sink", "sqlite", "--path", str(tmp_path / "s.db"), "--bootstrap-servers", broker,
        "--stamped-topic", topics.stamped, "--tombstones-topic", topics.tombstones,
        "--receipts-topic", topics.receipts, "--group-id", f"{topics.prefix}.sink",
        "--metrics-port", str(port), "--log-level", "info",
    )  # fmt: skip
    try:
        _poll(proc, base + "/readyz", 200)
        metrics = _poll(proc, base + "/metrics", 200)
        assert b'stream_expiry_sink_deleted_total{store="sqlite"} 0.0' in metrics
        assert b"stream_expiry_sink_ready 1.0" in metrics
        assert b"stream_expiry_sink_store_reachable 1.0" in metrics
    finally:
        code, err = _stop(proc, signal.SIGINT)
    assert code == 0, err


def test_rekey_serves_health_and_its_metrics(broker: str, topics: TopicSet, tmp_path: Path) -> None:
    """Ready once its group gave it the producers' topics; its counters count the copies;
    SIGTERM stops it with status 0."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(
        "rekey", "--bootstrap-servers", broker, "--from", topics.conversations,
        "--group-id", f"{topics.prefix}.rekey", "--metrics-port", str(port),
        "--log-level", "info",
    )  # fmt: skip
    try:
        body = _poll(proc, base + "/readyz", 200)
        assert b'"phase":"running"' in body
        _, value = event("conversation", "c1")
        anyio.run(produce, broker, [(topics.conversations, None, value)])
        deadline = time.monotonic() + 30
        metrics = b""
        while b"stream_expiry_rekey_committed_total 1.0" not in metrics:
            assert time.monotonic() < deadline, metrics.decode()
            time.sleep(0.05)  # polling for a counter, with a deadline
            metrics = _poll(proc, base + "/metrics", 200)
        assert b"stream_expiry_rekey_forwarded_total 1.0" in metrics
        assert b"stream_expiry_rekey_ready 1.0" in metrics
        assert b"stream_expiry_rekey_consumer_lag{" in metrics
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert "Traceback" not in err


def _lag_lines(metrics: bytes) -> list[str]:
    return [
        line
        for line in metrics.decode().splitlines()
        if line.startswith("stream_expiry_rekey_consumer_lag{")
    ]


def _poll_metrics(
    proc: subprocess.Popen[str], base: str, until: Callable[[bytes], bool], timeout_s: float = 30
) -> bytes:
    """``/metrics`` polled until ``until`` holds of it; fails with the last scrape if never."""
    deadline = time.monotonic() + timeout_s
    metrics = _poll(proc, base + "/metrics", 200)
    while not until(metrics):
        assert time.monotonic() < deadline, metrics.decode()
        time.sleep(0.05)  # polling for a gauge, with a deadline
        metrics = _poll(proc, base + "/metrics", 200)
    return metrics


def test_rekey_shows_the_lag_of_a_partition_it_has_not_copied_from(
    broker: str, topics: TopicSet
) -> None:
    """Every partition the group gives rekey has its lag gauge from the first fetch on,
    0 for one nothing was written to: a partition it never copied from had none until its
    first message, so a dashboard showed nothing for it rather than 0 or its lag. A
    partition written to since keeps its gauge, at 0 once copied, beside the empty one's."""
    proc, base = _start_rekey(broker, topics)
    gauges = [
        f'stream_expiry_rekey_consumer_lag{{partition="{p}",topic="{topics.conversations}"}} 0.0'
        for p in (0, 1)
    ]
    try:
        _poll(proc, base + "/readyz", 200)
        metrics = _poll_metrics(proc, base, lambda m: len(_lag_lines(m)) == 2)
        assert sorted(_lag_lines(metrics)) == gauges  # nothing written: both at 0
        _, value = event("conversation", "c1")
        anyio.run(produce, broker, [(topics.conversations, None, value)])
        metrics = _poll_metrics(
            proc, base, lambda m: b"stream_expiry_rekey_committed_total 1.0" in m
        )
        # The partition copied from is caught up; the other, still empty, stays at 0.
        metrics = _poll_metrics(proc, base, lambda m: sorted(_lag_lines(m)) == gauges)
        assert sorted(_lag_lines(metrics)) == gauges
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert "Traceback" not in err


def _start_rekey(
    broker: str, topics: TopicSet, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = _start(
        "rekey", "--bootstrap-servers", broker, "--from", topics.conversations,
        "--group-id", f"{topics.prefix}.rekey", "--metrics-port", str(port),
        "--log-level", "info", env=env,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


# A killed member holds the group until its session runs out: 2 s here (a restart was
# ready in about 3 s); with aiokafka's 10 s session it took about 20 s. A behaviour
# bound between the two, not a speed.
GHOST_SESSION = "2s"
GHOST_RESTART_BOUND_S = 12.0


def _successor_wait(start: Callable[[], tuple[subprocess.Popen[str], str]]) -> float:
    """Seconds from the start of a command to its ``/readyz`` 200, once one started by
    ``start`` before it was SIGKILLed when ready: a member gone without leaving its group
    (no LeaveGroup) holds the one started in its place until its session runs out. The
    successor is stopped with SIGTERM and must exit 0."""
    killed, base = start()
    try:
        _poll(killed, base + "/readyz", 200)
    finally:
        killed.kill()
        killed.communicate()
    restarted, base = start()
    started = time.monotonic()
    try:
        _poll(restarted, base + "/readyz", 200, timeout_s=60)
        took = time.monotonic() - started
    finally:
        code, err = _stop(restarted)
    assert code == 0, err
    return took


def test_a_rekey_killed_holds_its_successor_no_longer_than_the_service_s_session(
    broker: str, topics: TopicSet
) -> None:
    """A rekey SIGKILLed stays in its group (no LeaveGroup) until the coordinator's
    session for it runs out, and the rekey restarted in its place waits for that. rekey
    took aiokafka's 10 s session whatever ``[service] session_timeout`` said (a restart
    was ready ~20 s later on the test broker); it now takes the service's, so an
    operator's setting bounds the wait for both."""
    env = {"STREAM_EXPIRY_SERVICE_SESSION_TIMEOUT": GHOST_SESSION}
    took = _successor_wait(lambda: _start_rekey(broker, topics, env))
    assert took < GHOST_RESTART_BOUND_S, f"ready {took:.1f} s after the restart"


def test_a_sink_killed_holds_its_successor_no_longer_than_the_service_s_session(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """As rekey's: a sink SIGKILLed (an OOM kill) held the sink restarted in its place
    for aiokafka's 10 s session (ready ~20 s later on the test broker) whatever
    ``[service] session_timeout`` said; it takes the service's now, here from the
    environment, as a sink run without ``--config`` does."""
    env = {"STREAM_EXPIRY_SERVICE_SESSION_TIMEOUT": GHOST_SESSION}

    def start() -> tuple[subprocess.Popen[str], str]:
        port = free_port()
        proc = _start(
            "sink", "sqlite", "--path", str(tmp_path / "s.db"), "--bootstrap-servers", broker,
            "--stamped-topic", topics.stamped, "--tombstones-topic", topics.tombstones,
            "--receipts-topic", topics.receipts, "--group-id", f"{topics.prefix}.sink",
            "--metrics-port", str(port), env=env,
        )  # fmt: skip
        return proc, f"http://127.0.0.1:{port}"

    took = _successor_wait(start)
    assert took < GHOST_RESTART_BOUND_S, f"ready {took:.1f} s after the restart"


def test_rekey_stopped_while_joining_stops_at_once_cleanly(broker: str, topics: TopicSet) -> None:
    """SIGTERM while rekey's group join is held (~6 s on the test broker; up to the
    rebalance timeout on Kafka) waited the whole grace of 10 s, blocked in the first fetch,
    and then exited 0 without a word (a trial helper's finding). Nothing was read, nothing
    is to commit: it stops at once, status 0, as ``run`` does."""
    proc, base = _start_rekey(broker, topics)
    said: list[str] = []
    try:
        _read_until(proc, "rekeying", said)
        deadline = time.monotonic() + 30
        while b'"phase":"joining"' not in _poll(proc, base + "/healthz", 200):
            assert time.monotonic() < deadline, "never joining"
            time.sleep(0.05)  # polling for the join, with a deadline
        # Subscribed, its first fetch waiting for the join the test broker holds ~6 s.
    finally:
        signalled = time.monotonic()
        code, rest = _stop(proc)
    took = time.monotonic() - signalled
    err = "".join(said) + rest
    assert took < JOIN_STOP_BOUND_S, f"stopped {took:.1f} s after the signal: {err}"
    assert code == exits.OK, err
    assert "stopped while starting" in err
    assert "Traceback" not in err


def test_rekey_forced_to_stop_says_so_with_status_130(broker: str, topics: TopicSet) -> None:
    """A second signal while rekey finishes its batch stops it now: the README's table
    gives a forced stop status 130 (rekey said nothing and exited 0)."""
    proc, base = _start_rekey(broker, topics)
    try:
        _poll(proc, base + "/readyz", 200)
    finally:
        _signalled_twice_at_once(proc)
        code, err = _stop(proc, signal.SIGCONT)
    assert code == exits.INTERRUPTED, err
    first = re.search(r"received (SIG\w+): finishing the current batch", err)
    again = re.search(r"received (SIG\w+), a second stop signal: stopping now", err)
    assert first is not None, err
    assert again is not None, err
    assert {first[1], again[1]} == {"SIGINT", "SIGTERM"}, err
    assert "forced stop" in err
    assert "Traceback" not in err


def test_the_http_port_listens_only_on_the_address_it_is_given(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """``--metrics-host`` (``run``) and ``$STREAM_EXPIRY_METRICS_HOST`` (``sink``) choose the
    address: it always was 0.0.0.0, every interface, with no way to keep it to one. Two
    loopback addresses tell the bind apart without a second network interface: bound to
    127.0.0.2, nothing answers on 127.0.0.1."""
    run_port, sink_port = free_port(), free_port()
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state")))
    run = _start(
        "run", "--config", str(cfg), "--bootstrap-servers", broker,
        "--metrics-port", str(run_port), "--metrics-host", "127.0.0.2",
    )  # fmt: skip
    sink = _start(
        "sink", "sqlite", "--path", str(tmp_path / "s.db"), "--bootstrap-servers", broker,
        "--stamped-topic", topics.stamped, "--tombstones-topic", topics.tombstones,
        "--receipts-topic", topics.receipts, "--group-id", f"{topics.prefix}.sink",
        "--metrics-port", str(sink_port),
        env={"STREAM_EXPIRY_METRICS_HOST": "127.0.0.2"},
    )  # fmt: skip
    try:
        for proc, port in ((run, run_port), (sink, sink_port)):
            _poll(proc, f"http://127.0.0.2:{port}/healthz", 200)
            assert _status(f"http://127.0.0.1:{port}/healthz") == (0, b"")  # refused
    finally:
        (run_code, run_err), (sink_code, sink_err) = _stop(run), _stop(sink)
    assert (run_code, sink_code) == (0, 0), run_err + sink_err
    assert f"metrics and health on 127.0.0.2 port {run_port}" in run_err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--state-dir", "{tmp}"],
        ["replay", "--dry-run"],
        ["sink", "sqlite", "--path", "{tmp}/s.db"],
    ],
    ids=["run", "replay", "sink"],
)
def test_an_unreachable_broker_is_the_same_status_in_every_command(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main([*args, "--bootstrap-servers", address])
    err = capsys.readouterr().err
    assert code == exits.BROKER == 3
    assert address in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("dsn", "code", "says"),
    [
        ("postgresql://127.0.0.1:{port}/x", exits.STORE, "is the server running and listening"),
        ("postgresql://user:s3cret@db.invalid:5432/x", exits.STORE, "check the host, port"),
        # The server answers these (PostgreSQL runs on this machine): starting it is no advice.
        ("postgresql://127.0.0.1:5432/no_such_db_here", exits.STORE,
         "refused the connection: database \"no_such_db_here\" does not exist; create it (createdb)"),
        ("postgresql://no_such_role:s3cret@127.0.0.1:5432/test", exits.STORE,
         "check the user and password"),
        ("host=127.0.0.1 port=5432 dbname=no_such_db_here", exits.STORE, "create it (createdb)"),
        ("host=127.0.0.1 password=s3cret connect_timeout=3", exits.USAGE,
         "the key 'connect_timeout' is not one the PostgreSQL client (asyncpg) takes; it takes application_name, dbname"),
        # Typos of a key: named, with the key meant, and nothing after (a trial); the value
        # of a key that is not the client's is hidden, as it may be a secret mistyped.
        ("hostt=127.0.0.1 dbname=test password=s3cret", exits.USAGE,
         "the PostgreSQL DSN hostt=*** dbname=test password=*** cannot be used: the key "
         "'hostt' is not one the PostgreSQL client (asyncpg) takes; did you mean 'host'?\n"),
        ("postgresql://u:s3cret@127.0.0.1:5432/test?sslmod=disable", exits.USAGE,
         "the PostgreSQL DSN postgresql://u:***@127.0.0.1:5432/test?sslmod=*** cannot be "
         "used: the key 'sslmod' is not one the PostgreSQL client (asyncpg) takes; did you "
         "mean 'sslmode'?\n"),
        # Not close to a client's key: the server, which gets it as a setting, refuses it.
        ("postgresql://127.0.0.1:5432/test?sslmode=disable&no_such_setting=1", exits.USAGE,
         "the key 'no_such_setting' is neither one the PostgreSQL client (asyncpg) takes nor a "
         "setting the server knows (it said: unrecognized configuration parameter "
         "\"no_such_setting\"); correct it or remove it\n"),
        ("notadsn", exits.USAGE, "give a libpq URI"),
        ("postgresql://u:s3cret@127.0.0.1:abc/test", exits.USAGE, "give a libpq URI"),
        # A secret key mistyped: named, its value not shown (the DSN printed it whole).
        ("postgresql://u@127.0.0.1:5432/test?passwd=s3cret", exits.USAGE,
         "the PostgreSQL DSN postgresql://u@127.0.0.1:5432/test?passwd=*** cannot be used: the "
         "key 'passwd' is not one the PostgreSQL client (asyncpg) takes; did you mean "
         "'password'?\n"),
        ("host=127.0.0.1 pasword=s3cret dbname=test", exits.USAGE,
         "the PostgreSQL DSN host=127.0.0.1 pasword=*** dbname=test cannot be used"),
        # A setting's value the server refuses and quotes.
        ("postgresql://127.0.0.1:5432/test?lock_timeout=s3cret", exits.STORE,
         "refused the connection: invalid value for parameter \"lock_timeout\": \"***\""),
    ],
)  # fmt: skip
def test_sink_postgres_says_what_to_do_by_what_failed(
    dsn: str, code: int, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["sink", "postgres", "--dsn", dsn.format(port=free_port()),
         "--bootstrap-servers", f"127.0.0.1:{free_port()}"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == code, err
    assert says in err
    # Starting the server is advice only where nothing answered on this machine.
    assert ("is the server running" in err) is says.startswith("is the server running")
    assert "s3cret" not in err
    assert "Traceback" not in err


def test_demo_with_duration_0_starts_stops_and_summarises(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["demo", "--duration", "0"]) == 0
    out = capsys.readouterr().out
    assert "early deletions     0" in out
    assert "earlier run" not in out
    # A --state-dir that does not exist yet is made (it failed: "cannot open SQLite
    # database"), and kept for the next run.
    kept = tmp_path / "new" / "demo"
    assert main(["demo", "--duration", "0", "--state-dir", str(kept)]) == 0
    assert (kept / "store.sqlite").is_file()
    assert main(["demo", "--duration", "0", "--state-dir", str(tmp_path)]) == 0
    (tmp_path / "a-file").write_text("")
    # A file where the directory would be: what the user gave is wrong (status 2, not 4).
    capsys.readouterr()
    assert main(["demo", "--duration", "0", "--state-dir", str(tmp_path / "a-file" / "x")]) == 2
    assert capsys.readouterr().err == (
        f"stream-expiry demo: the state directory {str(tmp_path / 'a-file' / 'x')!r} cannot be "
        f"made: {str(tmp_path / 'a-file')!r} is a file, not a directory; give a directory, "
        "created if missing (--state-dir)\n"
    )


def test_the_demos_summary_keeps_an_earlier_runs_leftovers_out_of_the_lag() -> None:
    watch = Watch(lags_ms=[12, 14], emit_lags_ms=[3, 5], ttl=2, started_ms=1, carried=7)
    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    counts = {"create": 2, "touch": 0, "delete": 0, "malformed": 0}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        _summary(service, watch, counts, {"written": 2, "deleted": 9, "receipts": 9, "left": 0})
    text = out.getvalue()
    assert "2 ttl, 0 explicit\n" in text
    assert "and 7 of records an earlier run left pending, overdue when this one started" in text
    assert "p50 12 ms, p99 14 ms, max 14 ms (expires_at to arrival at a consumer)" in text


def test_demo_stops_on_ctrl_c_with_a_summary() -> None:
    """Ctrl-C in a terminal signals the whole process group, the embedded broker included
    unless it runs in a group of its own (it did: the demo lost its broker first and ended
    with aiokafka's errors and exit 3, no summary)."""
    proc = _start("demo", "--duration", "120")
    try:
        end = time.monotonic() + 60
        assert proc.stderr is not None
        for line in proc.stderr:  # the demo says when the traffic starts
            if "service ready" in line or time.monotonic() > end:
                break
        code, out, err = _stop_with_output(proc, signal.SIGINT, group=True)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == exits.INTERRUPTED, err
    assert "interrupted: stopping" in err
    assert "Summary" in out
    assert "early deletions     0" in out


def test_sigterm_while_joining_stops_at_once_cleanly_and_loses_nothing(
    broker: str, topics: TopicSet, tmp_path: Path
) -> None:
    """A SIGTERM before the first assignment stops at once: nothing was read, nothing is
    to commit, so it is a clean stop, status 0 (it said "forced stop", which the README's
    table gives status 130, and exited 0 all the same). aiokafka's close waited for the
    JoinGroup the broker holds, then SyncGroup, to leave the group: 3-6 s after the
    signal; the join is abandoned now (kafka.abandon_join)."""
    events = [(topics.conversations, *event("conversation", f"r{i}")) for i in range(3)]
    anyio.run(produce, broker, events)
    proc, base = _start_run(broker, topics, tmp_path)
    said: list[str] = []
    try:
        _read_until(proc, "joining group", said)
        body = _poll(proc, base + "/healthz", 200)
        assert b'"ready":false' in body  # the test broker holds a join ~6 s
    finally:
        signalled = time.monotonic()
        code, rest = _stop(proc)
    took = time.monotonic() - signalled
    err = "".join(said) + rest
    assert took < JOIN_STOP_BOUND_S, f"stopped {took:.1f} s after the signal: {err}"
    assert code == exits.OK, err
    assert "stopped while starting" in err
    assert "forced stop" not in err
    assert " restored in " not in err
    assert "Traceback" not in err
    # Nothing committed, and a restart (the same group and state directory) stamps them.
    config = config_for(topics, str(tmp_path / "state"))
    assert anyio.run(_committed_inputs, broker, config.group_id, topics) == {}
    stamped = anyio.run(_stamped_after_restart, broker, config, len(events))
    assert sorted(r.key for r in stamped) == sorted(k for _t, k, _v in events)


async def _committed_inputs(broker: str, group: str, topics: TopicSet) -> dict[str, int]:
    """Every offset ``group`` has committed on the input topics, by partition."""
    async with consumer(broker, group_id=group) as reader:
        found = {}
        for topic in topics.inputs:
            for partition in range(2):
                offset = await reader.committed(TopicPartition(topic, partition))
                if offset is not None and offset >= 0:
                    found[f"{topic}[{partition}]"] = offset
        return found


async def _stamped_after_restart(broker: str, config: Config, count: int) -> list[Any]:
    """The service run again until ``count`` stamps are on its topic: those stamps."""
    async with running_service(config, broker):
        return await read_topic(broker, config.topics.stamped, until=lambda r: len(r) >= count)


def test_run_with_an_embedded_broker_listens_on_the_port_it_is_given(tmp_path: Path) -> None:
    """`run --embedded-broker --bootstrap-servers 127.0.0.1:P`: the broker is on P, where
    the user's producers and sinks were pointed. The flag was ignored for a free port,
    another at each start."""
    port = free_port()
    proc = _start(
        "run", "--embedded-broker", "--bootstrap-servers", f"127.0.0.1:{port}",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    said: list[str] = []
    try:
        _read_until(proc, "joining group", said)
    finally:
        code, rest = _stop(proc, signal.SIGINT)
    err = "".join(said) + rest
    assert f"embedded broker listening on 127.0.0.1:{port} " in err
    assert f"joining group 'stream-expiry' on 127.0.0.1:{port} " in err
    assert code == exits.OK, err

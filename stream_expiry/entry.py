"""The ``stream-expiry`` command's entry point: signals before and after the command runs.

The command's modules (aiokafka, anyio, RocksDB, prometheus_client) take a quarter of a
second to import, and the command sets its own signal handling only once it runs: a
Ctrl-C in that time printed a ``KeyboardInterrupt`` traceback from an import, and a
SIGTERM ended the process with 143 (a trial). Here both are a stop with status 130, as
the README's table of exit statuses says, until the command sets its own handling (the
long-running commands' signal receivers put the system's default back when they close).
Once the command has returned its status, a late second Ctrl-C or SIGTERM during the
interpreter's shutdown (joining threads, flushing) ends the process at once with that
status, instead of a traceback ("Exception ignored in: <module 'threading'>") over it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import NoReturn

__all__ = ["main"]

INTERRUPTED = 130  # exits.INTERRUPTED, not imported: this module must load in no time


def _interrupted(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main() -> NoReturn:
    try:  # first: a Ctrl-C while ``signal.signal`` returns is caught too (a CI run)
        signal.signal(signal.SIGTERM, _interrupted)
        from stream_expiry.cli import main as command

        status = command()
    except KeyboardInterrupt:
        status = INTERRUPTED

    def done(signum: int, frame: object) -> NoReturn:
        os._exit(status)  # the command has finished: nothing is left to interrupt

    for stream in (sys.stdout, sys.stderr):  # what it wrote is out before a late signal
        with contextlib.suppress(OSError, ValueError):  # a reader gone: said already
            stream.flush()
    signal.signal(signal.SIGINT, done)
    signal.signal(signal.SIGTERM, done)
    sys.exit(status)

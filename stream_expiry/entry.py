"""The ``stream-expiry`` command's entry point: signals before and after the command runs.

The command's modules (aiokafka, anyio, RocksDB, prometheus_client) take a quarter of a
second to import, and the command sets its own signal handling only once it runs: a
Ctrl-C in that time printed a ``KeyboardInterrupt`` traceback from an import, and a
SIGTERM ended the process with 143 (a trial). Here both are a stop with status 130, as
the README's table of exit statuses says, from the first line on. And once the command has
returned its status, the interpreter's shutdown (joining threads, flushing) is not
interrupted by a late second Ctrl-C into a traceback ("Exception ignored in: <module
'threading'>"): the status the command chose is the one the process exits with.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

__all__ = ["main"]

INTERRUPTED = 130  # exits.INTERRUPTED, not imported: this module must load in no time


def _interrupted(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main() -> NoReturn:
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        from stream_expiry.cli import main as command

        status = command()
    except KeyboardInterrupt:
        status = INTERRUPTED
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)

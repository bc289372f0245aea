"""Exit statuses: the same failure gives the same status in every command.

| status | meaning |
|---|---|
| 0 | done, or stopped by SIGINT/SIGTERM after a clean stop |
| 1 | the command ran and found a problem (``demo``: an early deletion; ``hold release``: no such active hold; ``policy clear``: no update of that scope) |
| 2 | bad arguments, config file or environment value (what the user gave is wrong) |
| 3 | Kafka unreachable or refusing a request |
| 4 | the state directory or a downstream store failed |
| 130 | interrupted before a clean stop was possible |
| 141 | the reader of the output went away (``status | head``), as for a program SIGPIPE ends |

An orchestrator restarts on any non-zero status; a person or a script reads the number.
"""

from __future__ import annotations

from typing import Final

from stream_expiry.errors import BrokerError, ConfigurationError, StoreError, StreamExpiryError

__all__ = [
    "BROKER",
    "FAILED",
    "INTERRUPTED",
    "OK",
    "OUTPUT_CLOSED",
    "STORE",
    "USAGE",
    "status_of",
]

OK: Final = 0
FAILED: Final = 1
USAGE: Final = 2
BROKER: Final = 3
STORE: Final = 4
INTERRUPTED: Final = 130
OUTPUT_CLOSED: Final = 141  # 128 + SIGPIPE


def status_of(exc: StreamExpiryError) -> int:
    """The exit status for one of our errors."""
    if isinstance(exc, ConfigurationError):
        return USAGE
    if isinstance(exc, BrokerError):
        return BROKER
    if isinstance(exc, StoreError):
        return STORE
    return FAILED

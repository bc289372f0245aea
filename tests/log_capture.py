"""What stream-expiry logs, captured in both formats at DEBUG, for tests that check what a
log line may say (a log is kept where no erasure reaches)."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from stream_expiry.logs import JsonFormatter, TextFormatter

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass
class Captured:
    text: io.StringIO = field(default_factory=io.StringIO)
    json: io.StringIO = field(default_factory=io.StringIO)

    def both(self) -> str:
        return self.text.getvalue() + self.json.getvalue()

    def json_lines(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.json.getvalue().splitlines()]


@contextlib.contextmanager
def captured_logs() -> Iterator[Captured]:
    """Every line of the ``stream_expiry`` loggers at DEBUG, in text and in JSON, whatever
    level an earlier test left them at."""
    out = Captured()
    logger = logging.getLogger("stream_expiry")
    handlers = []
    for stream, formatter in ((out.text, TextFormatter()), (out.json, JsonFormatter())):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        handler.setLevel(logging.DEBUG)
        handlers.append(handler)
        logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        logger.setLevel(level)
        for handler in handlers:
            logger.removeHandler(handler)

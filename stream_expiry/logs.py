"""Log output of every command: plain lines for a person, JSON lines for a log shipper.

Rules this module keeps:

* One record is one line, in both formats: a multi-line message or traceback is escaped in
  JSON and indented in text, so ``grep`` and line-based shippers never split a record.
* JSON keys are stable: ``ts`` (RFC 3339 UTC, milliseconds, ``Z``), ``level``, ``logger``,
  ``msg``, then the call's structured extras (``log.info("...", extra={"partition": 3})``)
  under their own names, and ``exc`` when there is a traceback. Extras never overwrite the
  four fixed keys.
* Text lines show the same extras as ``key=value`` after the message, never a Python repr
  of a whole object.
* Text for a terminal never carries a control character from the bus (:func:`printable`):
  ids and reasons on the control topics come from any producer, and an escape sequence
  in one recoloured, retitled or cleared the terminal of whoever read ``status``.
* No level prints a record's contents: libraries whose DEBUG lines carry them (aiosqlite
  logs every statement with its parameters: a stamp's ``data``, a record's ids) stay at
  INFO (:data:`_CONTENT_LOGGERS`), since a log is kept and shipped where an erasure never
  reaches.
* No line names a record by its ids: a warning about one record gives its
  :func:`record_ref` (extra ``record``) and where it was read, which a person who knows
  the ids can match (``stream-expiry history`` prints the ref) and a log reader cannot
  read back as ids.
* The format and level come from ``--log-format``/``--log-level``, else
  ``STREAM_EXPIRY_LOG_FORMAT``/``STREAM_EXPIRY_LOG_LEVEL``, else text and the command's
  default; an invalid environment value is a :class:`ConfigurationError` naming the variable.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Final, TextIO

import orjson
from aiokafka.errors import RebalanceInProgressError

from stream_expiry.errors import ConfigurationError
from stream_expiry.timeutil import format_ts

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

__all__ = [
    "FORMATS",
    "LEVELS",
    "LOG_FORMAT_ENV",
    "LOG_LEVEL_ENV",
    "JsonFormatter",
    "LibraryRepeats",
    "TextFormatter",
    "configure_logging",
    "counted",
    "filtered",
    "named",
    "printable",
    "record_ref",
    "resolve_log_options",
    "say_failure",
    "say_warning",
]

LOG_FORMAT_ENV: Final = "STREAM_EXPIRY_LOG_FORMAT"
LOG_LEVEL_ENV: Final = "STREAM_EXPIRY_LOG_LEVEL"
FORMATS: Final = ("text", "json")
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
FIXED_KEYS: Final = ("ts", "level", "logger", "msg")
_HANDLER_NAME: Final = "stream-expiry"

# C0 and C1 controls (ESC sequences, carriage return, NUL...) and the bidirectional
# overrides that reorder what a terminal shows; \n and \t too, unless a caller keeps them.
_UNPRINTABLE: Final = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_UNPRINTABLE_IN_LINES: Final = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


# Hex digits of a record's reference: 64 bits, no collision to expect among billions.
REF_CHARS: Final = 16


def record_ref(key: str) -> str:
    """How log lines name a record: the first 16 hex digits of the SHA-256 of its record
    key (the key of its messages on ``expiry.stamped``), since logs are kept for months
    and shipped where no erasure reaches. Anyone who knows the ids computes it (``printf
    %s KEY | sha256sum | cut -c1-16``; ``stream-expiry history`` prints it); it is a plain
    hash, so ids that can be guessed (sequential numbers, e-mail addresses) can be
    confirmed by trying them, but not read off the log."""
    return hashlib.sha256(key.encode()).hexdigest()[:REF_CHARS]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in the number it takes: "1 record", "2 records", "0 lines"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


NAMED_AT_MOST: Final = 8


def named(names: Sequence[str], at_most: int = NAMED_AT_MOST) -> str:
    """The first ``at_most`` of ``names`` and how many more: "a[0], a[1], and 46 more".
    A line about a rebalance names its partitions so: one naming all 144 of an instance's
    stores was a screenful, and one per partition was hundreds of lines at each rebalance."""
    shown = ", ".join(names[:at_most])
    rest = len(names) - at_most
    return f"{shown}, and {rest} more" if rest > 0 else shown


def printable(text: str) -> str:
    """``text`` (an id, a reason: anything a producer chose) for a terminal or a text line:
    every control character and bidirectional override as its escape (``\\x1b``,
    ``\\n``, ``\\u202e``), so it can neither drive the terminal nor forge a line."""
    return _UNPRINTABLE.sub(_escape, text)


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k not in FIXED_KEYS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the keys ``ts``, ``level``, ``logger``, ``msg``, extras."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": format_ts(int(record.created * 1000)),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update(_extras(record))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            body["exc"] = record.exc_text
        return orjson.dumps(body, default=str).decode()


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value ...``; continuation lines are indented.

    The time is UTC in RFC 3339 with milliseconds (``2026-12-05T23:53:27.628Z``), as in
    the JSON lines, the messages and every command's output: logging's default, the
    machine's local time with no zone, could not be lined up with an event's time."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        del datefmt
        return format_ts(int(record.created * 1000))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            tail = " ".join(f"{k}={_text_value(v)}" for k, v in extras.items())
            head, nl, rest = line.partition("\n")
            line = f"{head} {tail}{nl}{rest}"
        return _UNPRINTABLE_IN_LINES.sub(_escape, line).replace("\n", "\n    ")


def _text_value(value: object) -> str:
    if isinstance(value, str):
        return (
            value
            if value and not any(c.isspace() or c in '"=' for c in value)
            else (orjson.dumps(value).decode())
        )
    if isinstance(value, int | float | bool) or value is None:
        return orjson.dumps(value).decode()
    return orjson.dumps(value, default=str).decode()


def resolve_log_options(
    level: str | None, fmt: str | None, environ: Mapping[str, str], *, default_level: str = "INFO"
) -> tuple[str, str]:
    """The level and format in force: flag, else environment, else default."""
    if level is None:
        level = _from_env(environ, LOG_LEVEL_ENV, LEVELS, upper=True) or default_level
    if fmt is None:
        fmt = _from_env(environ, LOG_FORMAT_ENV, FORMATS, upper=False) or "text"
    return level, fmt


def _from_env(
    environ: Mapping[str, str], name: str, choices: tuple[str, ...], *, upper: bool
) -> str | None:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        raise ConfigurationError(
            f"environment variable {name}={raw!r} is invalid; use one of {', '.join(choices)}"
        )
    return value


class LibraryRepeats(logging.Filter):
    """Lets one record of each kind from the Kafka client through per ``window_s``; the next
    one after the window says how many it stood for (``suppressed=N``).

    While the broker is away aiokafka logs every failed connection and metadata refresh,
    ~170 lines a second (1,263 in an 8-second outage, seen), which buries the service's one
    line that says so and fills disks. A kind is the logger, level and message template
    (its arguments, the node and the error, vary). Records of the service's own loggers
    pass untouched.
    """

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window_s = window_s
        self._clock = clock
        self._kinds: dict[tuple[str, int, object], tuple[float, int]] = {}  # first, suppressed

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        kind = (record.name, record.levelno, record.msg)
        now = self._clock()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self._window_s:
            self._kinds[kind] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.suppressed = seen[1]  # shown as an extra: suppressed=N / "suppressed": N
        self._kinds[kind] = (now, 0)
        return True


def _no_sasl_bytes(record: logging.LogRecord) -> bool:
    """aiokafka's DEBUG line of each request and response, with a SASL authentication's
    bytes left out: a PLAIN login's are the user name and the password in clear
    (``sasl_auth_bytes=b'alice\\x00alice\\x00...'``, seen in a log at DEBUG)."""
    args = record.args
    if record.name == "aiokafka.conn" and isinstance(args, tuple) and args:
        kind = type(args[-1]).__name__
        if kind.startswith("SaslAuthenticate"):
            record.args = (*args[:-1], f"{kind}(... not shown ...)")
    return True


# aiokafka's WARNING at every rebalance: the coordinator answers a heartbeat with "rebalance
# in progress", the protocol's normal way to tell members to rejoin. Each deploy, scale or
# restart of any member put a warning in every instance's log; the service's own lines
# ("revoked ...", "assigned ...") say what moved, at INFO.
_ROUTINE: Final = frozenset(
    {
        (
            "aiokafka.consumer.group_coordinator",
            "Heartbeat failed for group %s because it is rebalancing",
        ),
    }
)


# aiokafka's ERROR when the group refuses an offset commit; with RebalanceInProgressError
# (its second argument) that is a rebalance this member is in, routine: an instance added
# or leaving put an ERROR in every other instance's log. The service says it at INFO
# (stream_expiry.commits, stream_expiry.fence); a member dropped by the group
# (UnknownMemberIdError, IllegalGenerationError) still shows, beside the service's warning.
_COMMIT_REFUSED: Final = (
    "aiokafka.consumer.group_coordinator",
    "OffsetCommit failed for group %s due to group error (%s), will rejoin",
)


def _not_routine(record: logging.LogRecord) -> bool:
    """Drops the Kafka client's warnings about routine group steps (:data:`_ROUTINE`), and
    its error for a commit refused by a rebalance this member is in (:data:`_COMMIT_REFUSED`)."""
    said = (record.name, record.msg)
    if said == _COMMIT_REFUSED:
        args = record.args
        return not (
            isinstance(args, tuple)
            and len(args) == 2
            and isinstance(args[1], RebalanceInProgressError)
        )
    return said not in _ROUTINE


# Libraries whose DEBUG lines print what the records hold. aiosqlite writes each statement
# with its parameters, so `sink sqlite --log-level DEBUG` put every stamp's data and every
# erased record's ids into the log (seen in the erasure trial: the data of records erased
# minutes before, in a file no erasure reaches). Their INFO and above still show.
_CONTENT_LOGGERS: Final = ("aiosqlite",)

_format_in_force = "text"


def say_failure(text: str) -> None:
    """A command's last word on a failure: a plain line on stderr, or, where the logs are
    JSON lines, one more of those (level ERROR), so a log shipper reads it as the rest."""
    if _format_in_force == "json":
        logging.getLogger("stream_expiry").error("%s", text)
    else:
        print(text, file=sys.stderr)


def say_warning(text: str) -> None:
    """A command's warning beside its answer (``explain``'s, of a policy update or a
    variable): ``warning: ...`` on stderr, one JSON line where the logs are JSON lines,
    nothing under ``--log-level ERROR`` (printed whatever the options were, a trial)."""
    logger = logging.getLogger("stream_expiry")
    if not logger.isEnabledFor(logging.WARNING):
        return
    if _format_in_force == "json":
        logger.warning("%s", text)
    else:
        print(f"warning: {text}", file=sys.stderr)


@contextlib.contextmanager
def filtered(extra: logging.Filter) -> Iterator[None]:
    """``extra`` on the handler of :func:`configure_logging` (if installed) for the block:
    a filter that needs what a command holds (``run``'s stalls, say)."""
    handlers = [h for h in logging.getLogger().handlers if h.get_name() == _HANDLER_NAME]
    for handler in handlers:
        handler.addFilter(extra)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(extra)


def configure_logging(level: str, fmt: str, *, stream: TextIO | None = None) -> None:
    """Give the root logger one handler of ours that writes ``fmt`` lines to stderr.

    A handler installed by an earlier call is replaced; others (pytest's capture) are kept.
    aiokafka is kept at WARNING unless DEBUG is asked for: at INFO it logs every rebalance
    step, which drowns ours; and its repeats are thinned (:class:`LibraryRepeats`).
    Libraries whose DEBUG lines print records' contents never go below INFO.
    """
    global _format_in_force  # the process has one log format
    _format_in_force = fmt
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_not_routine)
    handler.addFilter(_no_sasl_bytes)
    handler.addFilter(LibraryRepeats())
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    logging.getLogger("aiokafka").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    for name in _CONTENT_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))

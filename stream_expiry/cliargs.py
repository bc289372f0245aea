"""Argument types and option groups shared by every command's parser.

Each type refuses a bad value with one line (argparse turns the ``ArgumentTypeError`` into
``PROG: error: argument --X: MESSAGE`` and exit status 2); none lets a traceback through.
"""

from __future__ import annotations

import argparse
import os
import re
import textwrap
from typing import TYPE_CHECKING, Final

from stream_expiry.errors import ConfigurationError, quoted, suggestion
from stream_expiry.kafka_settings import check_bootstrap
from stream_expiry.logs import FORMATS, LEVELS
from stream_expiry.model import MAX_ID_CHARS, SECONDS_LIKE_BEFORE_MS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from stream_expiry.config import Config

__all__ = [
    "BOOTSTRAP_ENV",
    "METRICS_HOST_ENV",
    "METRICS_PORT_ENV",
    "WholeWords",
    "add_log_options",
    "add_metrics_options",
    "bootstrap_from",
    "known_bootstrap",
    "metrics_host",
    "metrics_port",
    "port",
    "positive_int",
    "seconds",
    "timestamp",
    "ts_ms",
]

METRICS_PORT_ENV = "STREAM_EXPIRY_METRICS_PORT"
METRICS_HOST_ENV = "STREAM_EXPIRY_METRICS_HOST"
# Every interface: Kubernetes probes and Prometheus reach the pod's IP, and the deploy/
# manifests and docker-compose.yml rely on it. A host shared with others restricts it.
DEFAULT_METRICS_HOST = "0.0.0.0"
BOOTSTRAP_ENV = "STREAM_EXPIRY_BOOTSTRAP_SERVERS"


class WholeWords(argparse.HelpFormatter):
    """argparse's help, with a description never broken at a hyphen: an example command
    in it was printed as ``stream-`` and ``expiry hold place ...`` on the next line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seconds(text: str) -> float:
    """A number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text!r}")
    return value


#: ``YYYY-MM-DD``: a date alone, which :func:`timestamp` takes as its midnight UTC.
_DATE_ALONE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")


def timestamp(text: str) -> str:
    """An RFC 3339 time with an offset, a date alone (its midnight UTC, given back as that
    time), or epoch milliseconds; kept as given otherwise (the commands parse it again),
    checked here so that a typo is one line, not a traceback: the value given, what is
    wrong with it, the forms taken and an example of each. A date alone was refused, and it
    is what a compliance officer types for a period (``deletions --since 2026-11-01``)."""
    from stream_expiry.timeutil import InvalidTimestamp, format_ts

    given = text
    if _DATE_ALONE.fullmatch(text):
        text += "T00:00:00Z"
    try:
        ms = ts_ms(text)
    except InvalidTimestamp as exc:
        raise argparse.ArgumentTypeError(
            f"{quoted(given, 40)} is {exc.reason}: give an RFC 3339 time with an offset, a "
            "date (its midnight UTC) or epoch milliseconds, e.g. 2026-01-31T12:00:00Z, "
            "2026-01-31 or 1769860800000"
        ) from None
    if ms is not None and 0 < ms < SECONDS_LIKE_BEFORE_MS and text.isdecimal():
        # Epoch seconds (or a year) read as milliseconds: January 1970. ``replay --since
        # 1796369399`` re-derived and re-published every record instead of a day's, and
        # ``explain --at 2026`` answered for 1970, without a word. The service accepts such
        # an event time (the contract's), with a warning; a command's own argument is
        # refused, since nothing is lost by asking again.
        raise argparse.ArgumentTypeError(
            f"{quoted(text, 40)} as epoch milliseconds is {format_ts(ms)}: epoch seconds, "
            f"or a year? give epoch milliseconds ({text}000 for those seconds) or an RFC "
            "3339 time with an offset, e.g. 2026-01-31T12:00:00Z"
        )
    return text


def hold_id(text: str) -> str:
    """A legal hold's id, 1 to ``MAX_ID_CHARS`` characters as the service reads them:
    ``hold release ''`` asked the cluster and exited 1, "no active hold ''", a status that
    says the command ran and found a problem, for an argument no hold can have; and
    ``hold place --id ''`` placed a hold under a new random id without a word."""
    if not 1 <= len(text) <= MAX_ID_CHARS:
        shown = quoted(text, 40)
        raise argparse.ArgumentTypeError(
            f"a hold id is 1 to {MAX_ID_CHARS} characters, got {shown}: "
            "`stream-expiry hold list` shows the active holds' ids"
        )
    return text


def hold_key_hex(text: str) -> bytes:
    """``hold release --key-hex``: a hold message's key as hex, the form ``hold list``
    shows for a key that its id cannot stand for (bytes that are not UTF-8, which the
    service reads as U+FFFD; control characters, shown escaped; over 512 characters). A
    release under the id typed back wrote its null under other bytes than the hold's: the
    hold looked released until compaction removed that null, and came back at a start."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if not key:
        raise argparse.ArgumentTypeError(
            f"expected a hold's key as hex (two digits a byte, e.g. 636173652d31), got "
            f"{quoted(text, 40)}: `stream-expiry hold list` shows the key of a hold whose id "
            "cannot be typed"
        )
    return key


def new_hold_id(text: str) -> str:
    """``hold place --id``: a hold id as :func:`hold_id` takes it, refused with a hint that
    fits placing (release's, "`hold list` shows the active holds' ids", sent a user who
    mistyped a new id to look for it among the existing ones). An argument that is not
    UTF-8 (``$'case-\\xff'`` in bash) comes as surrogates, which no hold message can carry:
    the place ended in a traceback once the hold was encoded."""
    if not 1 <= len(text) <= MAX_ID_CHARS:
        raise argparse.ArgumentTypeError(
            f"a hold id is 1 to {MAX_ID_CHARS} characters, got {quoted(text, 40)}: "
            "leave --id out for a new random one"
        )
    try:
        text.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"a hold id is text (UTF-8), got bytes that are not: {quoted(text, 40)}; "
            "leave --id out for a new random one"
        ) from None
    return text


def audit_text(text: str) -> str:
    """A reason or a name written to ``expiry.audit`` (``hold release --reason``, ``--by``):
    1 to ``MAX_ID_CHARS`` characters, as a hold's own reason; an empty one would say
    nothing on the evidence."""
    if not text.strip() or len(text) > MAX_ID_CHARS:
        raise argparse.ArgumentTypeError(
            f"give 1 to {MAX_ID_CHARS} characters, got {quoted(text, 40)}"
        )
    return text


def ts_ms(text: str | None) -> int | None:
    """A time as :func:`timestamp` takes it, in epoch milliseconds (None: not given)."""
    from stream_expiry.timeutil import parse_ts

    return None if text is None else parse_ts(int(text) if text.isdecimal() else text)


def check_ids(given: Mapping[str, str]) -> None:
    """Ids given on the command line (``{"--org": ...}``), refused as the service refuses
    them in an event (1 to ``MAX_ID_CHARS`` characters): an answer about an id no record can
    have would read as an answer about a real one."""
    for flag, value in given.items():
        if not 1 <= len(value) <= MAX_ID_CHARS:
            raise ConfigurationError(f"{flag} must be 1 to {MAX_ID_CHARS} characters long")


def check_category(category: str, categories: Sequence[str], consequence: str = "") -> None:
    """``--category`` refused unless configured, with the nearest name; ``consequence``
    (``": a hold on it would keep nothing"``) says what it would have done."""
    if category not in categories:
        raise ConfigurationError(
            f"--category {category!r} is not a configured category ({', '.join(categories)})"
            f"{consequence}{suggestion(category, categories)}"
        )


def case_note(kind: str, given: str, meant: str) -> str:
    """`` (org ids are case-sensitive)`` after a "did you mean" whose ``meant`` is
    ``given`` but for case (``ACME`` for ``acme``): the id given matches nothing, though
    it reads the same, and the warning says why; else ``""`` (a typo needs no note)."""
    if given != meant and given.casefold() == meant.casefold():
        return f" ({kind} ids are case-sensitive)"
    return ""


def add_log_options(p: argparse.ArgumentParser, *, default_level: str = "INFO") -> None:
    """``--log-level`` and ``--log-format``; unset, they come from the environment."""
    group = p.add_argument_group("logging")
    group.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        help=f"default: $STREAM_EXPIRY_LOG_LEVEL, else {default_level}",
    )
    group.add_argument(
        "--log-format",
        type=str.lower,
        choices=FORMATS,
        help="text for people, json for one object per line; "
        "default: $STREAM_EXPIRY_LOG_FORMAT, else text",
    )
    p.set_defaults(default_log_level=default_level)


def metrics_port(flag: int | None, environ: Mapping[str, str]) -> int | None:
    """``--metrics-port``, else ``STREAM_EXPIRY_METRICS_PORT``, else no HTTP port."""
    if flag is not None:
        return flag
    raw = environ.get(METRICS_PORT_ENV, "").strip()
    if not raw:
        return None
    try:
        return port(raw)
    except argparse.ArgumentTypeError as exc:
        raise ConfigurationError(f"environment variable {METRICS_PORT_ENV}: {exc}") from None


def metrics_host(flag: str | None, environ: Mapping[str, str]) -> str:
    """``--metrics-host``, else ``STREAM_EXPIRY_METRICS_HOST``, else every interface
    (0.0.0.0). An empty value counts as unset, as for every other variable."""
    if flag is not None and flag.strip():
        return flag.strip()
    return environ.get(METRICS_HOST_ENV, "").strip() or DEFAULT_METRICS_HOST


def add_metrics_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--metrics-port`` and ``--metrics-host``, the same for ``run`` and ``sink``."""
    p.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve /metrics (Prometheus), /healthz and /readyz on http://HOST:PORT "
        f"(default: ${METRICS_PORT_ENV}, else none)",
    )
    p.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="the address that port listens on, e.g. 127.0.0.1 to keep it to this machine "
        f"(default: ${METRICS_HOST_ENV}, else {DEFAULT_METRICS_HOST}: every interface, "
        "which Kubernetes probes and Prometheus need)",
    )


def known_bootstrap(args: argparse.Namespace, config: Config) -> tuple[str, str] | None:
    """The brokers from the flag, else the config file, else the environment (the contract's
    order, the one exception to "the environment beats the file"), with where they came
    from (for an error that must say why Kafka was asked at all); None when none is given."""
    flag = getattr(args, "bootstrap_servers", None)
    if flag:
        return check_bootstrap(str(flag)), "--bootstrap-servers"
    if config.bootstrap_servers:
        return check_bootstrap(config.bootstrap_servers), "bootstrap_servers in the config file"
    env = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if env:
        return check_bootstrap(env), BOOTSTRAP_ENV
    return None


def bootstrap_from(args: argparse.Namespace, config: Config) -> str:
    """:func:`known_bootstrap`'s brokers; none is an error that says how to give them."""
    known = known_bootstrap(args, config)
    if known is None:
        embedded = ", or try --embedded-broker" if hasattr(args, "embedded_broker") else ""
        raise ConfigurationError(
            "no Kafka brokers given: pass --bootstrap-servers HOST:PORT, set "
            f"{BOOTSTRAP_ENV} or bootstrap_servers in the config file{embedded}"
        )
    return known[0]

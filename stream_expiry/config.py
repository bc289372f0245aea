"""The config file (TOML) of the whole service, validated before anything starts.

Rules this module keeps:

* Every mistake is fatal at load time and reported as a :class:`ConfigError` that names the
  file, the line, the key and the bad value, and says what to do; an unknown key gets the
  nearest valid one. A retention service that silently ignores ``conversaton = "30d"`` keeps
  data it was told to delete.
* ``tomllib`` gives no positions, so lines are found by a small scanner over the text
  (:func:`_key_lines`), run only when there is an error to report. It understands table
  headers, dotted and quoted keys, inline tables and multi-line strings and arrays; where it
  cannot place a key it names the table instead, and it never makes loading fail.
* Durations follow :mod:`stream_expiry.durations`: a bare number means minutes. In
  ``[retention.*]`` a 0 or negative value is valid and means "no value"; an invalid one is fatal.
* No IO but reading the file; the environment is the policy book's business.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from stream_expiry.durations import (
    InvalidDuration,
    UnderHalfSecond,
    format_duration,
    is_negative,
    parse_duration,
)
from stream_expiry.errors import ConfigurationError, quoted
from stream_expiry.kafka_settings import (
    ENV_PREFIX as KAFKA_ENV_PREFIX,
)
from stream_expiry.kafka_settings import (
    SECURITY_KEYS,
    KafkaSecurity,
    TopicSettings,
    check_security_value,
)
from stream_expiry.key_template import KeyTemplate
from stream_expiry.model import DEFAULT_CATEGORIES, ENVS, MAX_ID_CHARS
from stream_expiry.policy.presets import PRESETS
from stream_expiry.policy.sources import (
    CAP_ALL,
    ENV_VARIABLES,
    Candidate,
    RetentionSettings,
    Source,
    capital_m_note,
    config_key,
    make_candidate,
)
from stream_expiry.redact import InvalidRedactPath, fold_path, parse_path

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

__all__ = [
    "ENV_PREFIX",
    "ENV_SETTINGS",
    "CompactedTopic",
    "Config",
    "ConfigError",
    "SinkSettings",
    "Topics",
    "env_name",
    "load_config",
    "parse_config",
]

log = logging.getLogger(__name__)

_Path = tuple[str, ...]

# Kafka's group.max.session.timeout.ms by default: a longer session is refused by the
# broker (and one past 24 days does not fit the protocol's field at all).
MAX_SESSION_TIMEOUT_MS: Final = 30 * 60_000


class ConfigError(ConfigurationError):
    """Raised when the config file cannot be read, is not TOML, or says something invalid.

    The operator should fix the file at the line named in the message; the service does not
    start with a config it does not fully understand.
    """


@dataclass(frozen=True)
class Topics:
    """Topic names; every one is configurable so several deployments can share a cluster."""

    inputs: tuple[str, ...] = ("conversations", "sessions", "errors")
    policies: str = "expiry.policies"
    stamped: str = "expiry.stamped"
    tombstones: str = "expiry.tombstones"
    dlq: str = "expiry.dlq"
    receipts: str = "expiry.receipts"
    holds: str = "expiry.holds"
    audit: str = "expiry.audit"
    # Topics taken out of the inputs whose stamped records are still to tombstone: the
    # group is assigned their partitions, whose stores are restored and fired, and never
    # reads them (stream_expiry.retired). Last, so the fields before keep their positions.
    retired: tuple[str, ...] = ()
    # Where each name given came from, by its [topics] key: "environment variable
    # STREAM_EXPIRY_TOPICS_HOLDS" or "FILE line N"; a key not here has its default. For a
    # message about a name the cluster lacks: the cause may be a variable, not --config.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def origin(self, key: str, path: str | None) -> tuple[str, str]:
        """Where ``[topics] key`` came from, and how to give it another name: ``path``
        is the config file's (None: no --config). Said beside a topic the cluster lacks."""
        where = self.origins.get(key)
        env = ENV_PREFIX + f"TOPICS_{key}".upper()
        if where is None:
            given = (
                f"no --config given, no ${env}" if path is None else f"{path} has no [topics] {key}"
            )
            return (
                f"the default: {given}",
                f"give the command the services' --config (their [topics] {key})",
            )
        if where.startswith("environment variable "):
            return (
                f"from {where}",
                f"set ${env} to the services' [topics] {key}, or unset it to use --config's",
            )
        listed = key in ("inputs", _TOPIC_RETIRED)  # arrays: "the services' one" read oddly
        return (
            f"from {where}, [topics] {key}",
            f"set [topics] {key} there to the services' {'list' if listed else 'one'}, or "
            "give the command the services' --config",
        )

    def key_of(self, name: str) -> str:
        """The ``[topics]`` key that names topic ``name`` (``inputs`` or ``retired`` for
        one of those), for :meth:`origin` of a topic met by name: a warning of one missing."""
        for key, topic in self.owned().items():
            if topic == name:
                return key
        if name in self.inputs:
            return "inputs"
        if name in self.retired:
            return _TOPIC_RETIRED
        raise KeyError(f"{name!r} is no topic of [topics]")

    def lacked(self, key: str, path: str | None, *, so: str = "", otherwise: str = "") -> str:
        """The sentence of a command refusing for ``[topics] key``'s topic, which the
        cluster lacks: its name, where that came from and the fix (:meth:`origin`), between
        ``so`` (what is lost, ", so ...") and ``otherwise`` (another way out, ", or ...")."""
        source, fix = self.origin(key, path)
        return (
            f"the {key} topic {getattr(self, key)!r} ({source}) does not exist on the "
            f"cluster{so}: {fix}{otherwise}"
        )

    def owned(self) -> dict[str, str]:
        """The service's own topics (not the inputs), by their ``[topics]`` key: what no
        other command's option may name in another role (a sink's, rekey's ``--from``)."""
        return {
            "policies": self.policies,
            "stamped": self.stamped,
            "tombstones": self.tombstones,
            "dlq": self.dlq,
            "receipts": self.receipts,
            "holds": self.holds,
            "audit": self.audit,
        }


@dataclass(frozen=True)
class CompactedTopic:
    """A user's compacted topic that downstream sinks delete records of ``categories`` from.

    ``key``: how that topic keys a record (``[sink.compacted."TOPIC"] key``); None means our
    record key. The null goes to the partition Kafka's default partitioner picks for it.
    """

    topic: str
    categories: tuple[str, ...]
    key: KeyTemplate | None = None


@dataclass(frozen=True)
class SinkSettings:
    """``[sink]``: what every ``stream-expiry sink`` run with this file does besides its store."""

    compacted: tuple[CompactedTopic, ...] = ()


@dataclass(frozen=True)
class ArchiveSettings:
    """``[archive]``: with ``required``, no ``ttl`` tombstone before the archive (the consumer
    group ``group_id`` on ``expiry.stamped``) holds the record's latest stamp.

    ``marker_margin_ms``: how much longer than the service's own deletion marker an erasure
    marker of the archive lives (``archive purge`` drops it after that), to cover what
    reaches the archive late: the archive's lag behind ``expiry.stamped`` and the time
    until the next ``archive purge`` (see :mod:`stream_expiry.archive`)."""

    required: bool = False
    group_id: str = "stream-expiry-archive"
    marker_margin_ms: int = 2 * 24 * 3_600_000


@dataclass(frozen=True)
class Config:
    """The whole service's settings; ``Config()`` is what an absent file means."""

    preset: str = "none"
    bootstrap_servers: str | None = None
    group_id: str = "stream-expiry"
    state_dir: str = "./state"
    max_clock_skew_ms: int = 300_000
    tick_ms: int = 10
    horizon_ms: int = 3_600_000
    # How long a deletion marker outlives its deletion: at least as long as input topics
    # keep events, so that no re-delivered event brings a deleted record back.
    marker_grace_ms: int = 7 * 24 * 3_600_000
    # The consumer group's session: how long a crashed member's partitions wait before the
    # group hands them on. Kafka's default minimum; a broker refuses values outside its
    # group.min/max.session.timeout.ms.
    session_timeout_ms: int = 6_000
    # Worker processes a large restore may use at most (a cold start: a lost disk, a new
    # instance); None: one per CPU the process may use. 1: the service's own process only.
    workers: int | None = None
    topics: Topics = field(default_factory=Topics)
    topic_settings: TopicSettings = field(default_factory=TopicSettings)
    kafka: KafkaSecurity = field(default_factory=KafkaSecurity)
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    sliding: frozenset[str] = frozenset({"session"})
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    archive: ArchiveSettings = field(default_factory=lambda: ArchiveSettings())
    path: str | None = None
    # [redact]: category -> dotted paths inside ``data`` removed before anything is written
    # (hash=False: a mapping is not hashable; see RetentionSettings).
    redact: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)


_TOP: Final = (
    "preset",
    "bootstrap_servers",
    "group_id",
    "state_dir",
    "max_clock_skew",
    "topics",
    "categories",
    "service",
    "retention",
    "kafka",
    "sink",
    "archive",
    "redact",
)
_TOPIC_KEYS: Final = (
    "inputs",
    "policies",
    "stamped",
    "tombstones",
    "dlq",
    "receipts",
    "holds",
    "audit",
)
# [topics] keys that are settings, not names; the durations are TopicSettings' *_ms fields.
_TOPIC_RETIRED: Final = "retired"
_TOPIC_COUNTS: Final = ("partitions", "replication_factor", "min_insync_replicas")
_TOPIC_DURATIONS: Final = (
    "max_compaction_lag",
    "segment",
    "delete_retention",
    "retention",
    "evidence_retention",
)
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_TOML_ERROR = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)


def load_config(
    path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate a config file; ``None`` gives the defaults (no file at all).

    With ``environ``, every ``STREAM_EXPIRY_<KEY>`` variable set there beats the file's key
    (see :data:`ENV_SETTINGS`), and one that no setting reads is warned about; without it,
    the file alone counts.
    """
    if environ is not None:
        for message in unknown_variables(environ):
            log.warning("%s", message)
    if path is None:
        if environ is None:
            return Config()
        return dataclasses.replace(
            parse_config("", path="<environment>", environ=environ), path=None
        )
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except OSError as exc:
        raise ConfigError(
            f"{name}: cannot read the config file ({exc.strerror}); check the --config path"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{name}: the config file is not UTF-8 (byte {exc.start}); save it as UTF-8"
        ) from None
    # A byte-order mark, which Windows editors write at the start of UTF-8 files: the TOML
    # parser took it for a statement ("line 1, column 1: invalid TOML: Invalid statement",
    # nothing anyone could see in the file). It is not part of the text; lines stay as they are.
    config = parse_config(text.removeprefix("\ufeff"), path=name, environ=environ)
    if config.kafka.sasl_password is not None and mode & 0o077:
        # A security trial: the README says to keep the password out of the file, but a
        # file that holds it was read without a word whoever else could read it too.
        log.warning(
            "%s holds [kafka] sasl_password and other users can read it (mode %04o): "
            "chmod 600 it, or set STREAM_EXPIRY_KAFKA_SASL_PASSWORD instead",
            name,
            mode & 0o777,
        )
    return config


# Read by the commands themselves (cliargs, logs, native: the compiled codec turned off), or
# by the test harness.
_OTHER_VARIABLES: Final = frozenset(
    {"BOOTSTRAP_SERVERS", "METRICS_PORT", "METRICS_HOST", "LOG_LEVEL", "LOG_FORMAT", "PURE_PYTHON"}
)
_TEST_PREFIX: Final = "STREAM_EXPIRY_TEST_"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``STREAM_EXPIRY_*`` variable that nothing reads: a typo there
    was ignored without a word (``STREAM_EXPIRY_SERVICE_TICKMS``), while one in the config
    file stops the start. Not an error: another version's setting is no reason to stop."""
    known = {env_name(path) for path in ENV_SETTINGS}
    known |= {ENV_PREFIX + name for name in _OTHER_VARIABLES}
    known |= {KAFKA_ENV_PREFIX + key.upper() for key in SECURITY_KEYS}
    out = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith(_TEST_PREFIX):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        hint = f"did you mean ${close[0]}?" if close else "the README's 'Settings from the "
        out.append(
            f"${name} is not a setting stream-expiry reads, so it is ignored; "
            + (hint if close else hint + "environment' lists them")
        )
    out.extend(_misspelt_ttl_variables(environ))
    return out


_TTL_VARIABLES: Final = tuple(name for names in ENV_VARIABLES.values() for name in names)


def _ttl_core(name: str) -> str:
    """What a TTL variable's name says of its category: ``CONVERSATION`` for
    ``INSIGHTS_MAX_CONVERSATIONS_TTL_IN_MINUTES`` and ``MAX_CONVERSATION_TTL_MINUTES``."""
    core = name.upper().removeprefix("INSIGHTS_").removeprefix("MAX_")
    return re.sub(r"_?TTL.*$", "", core).rstrip("S")


def _misspelt_ttl_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each variable that looks like a misspelt TTL variable of the platform
    (``MAX_CONVERSATIONS_TTL_IN_MINUTES``, ``MAX_SESSION_TTL_IN_MINUTES``, lower case): it
    was ignored without a word, so a retention an operator meant to shorten stayed as it
    was. Only names whose category part is close to one the service reads: a platform's
    other TTL variables, passed along unchanged, are none of stream-expiry's business."""
    by_core: dict[str, list[str]] = {}
    for known in _TTL_VARIABLES:
        by_core.setdefault(_ttl_core(known), []).append(known)
    out = []
    for name in sorted(environ):
        if name in _TTL_VARIABLES or "TTL" not in name.upper() or not environ[name].strip():
            continue
        close = difflib.get_close_matches(_ttl_core(name), list(by_core), n=1, cutoff=0.8)
        if not close:
            continue
        names = by_core[close[0]]
        insights = name.upper().startswith("INSIGHTS_")
        meant = next((n for n in names if n.startswith("INSIGHTS_") == insights), names[0])
        why = "names are case-sensitive" if meant == name.upper() else "no such variable"
        out.append(
            f"${name} gives no TTL ({why}), so it is ignored; did you mean ${meant}? "
            "`stream-expiry explain` lists the TTL variables each category reads"
        )
    return out


def parse_config(
    text: str, *, path: str = "<string>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate config text; ``path`` only names the file in messages and in ``Config.path``.

    ``environ`` adds the environment layer over the file (:func:`_env_layer`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_ERROR.match(str(exc))
        where = f"{path} line {m.group(2)}, column {m.group(3)}" if m else path
        what = m.group(1) if m else str(exc)
        raise ConfigError(f"{where}: invalid TOML: {what}; fix the syntax (see toml.io)") from None
    if environ is None:
        return _Reader(text, path).config(data)
    data, from_env = _env_layer(data, environ)
    return _Reader(text, path, from_env).config(data)


def _type_name(value: object) -> str:
    names: list[tuple[type, str]] = [
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
        (dt.datetime, "a date-time"),
        (dt.date, "a date"),
        (dt.time, "a time"),
    ]
    return next((n for t, n in names if isinstance(value, t)), type(value).__name__)


def _show(value: object) -> str:
    return quoted(value, 60)


class _Reader:
    """Turns parsed TOML into a :class:`Config`, with errors that point into the text."""

    def __init__(self, text: str, path: str, from_env: Mapping[_Path, str] | None = None) -> None:
        self._text = text
        self._path = path
        self._lines: dict[_Path, int] | None = None
        self._from_env = from_env or {}

    # -- errors --------------------------------------------------------------------------------

    def locate(self, where: _Path) -> str:
        """``FILE line N`` of the key (or of its nearest table), else ``FILE``; a value
        that came from the environment is named by its variable."""
        for end in range(len(where), 0, -1):
            variable = self._from_env.get(where[:end])
            if variable is not None:
                return f"environment variable {variable}"
        if self._lines is None:
            self._lines = _key_lines(self._text)
        for end in range(len(where), 0, -1):
            line = self._lines.get(where[:end])
            if line is not None:
                return f"{self._path} line {line}"
        return self._path

    def error(self, where: _Path, message: str) -> ConfigError:
        return ConfigError(f"{self.locate(where)}: {message}")

    @staticmethod
    def place(where: _Path) -> str:
        """How a message names the table a key sits in."""
        return "at the top level" if not where else f"in [{config_key(*where)}]"

    def unknown(
        self, where: _Path, key: str, valid: Collection[str], note: str = ""
    ) -> ConfigError:
        close = difflib.get_close_matches(key, list(valid), n=1)
        hint = (
            f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(valid) or 'none'}{note}"
        )
        return self.error((*where, key), f"unknown key {key!r} {self.place(where)}; {hint}")

    def bad(self, where: _Path, value: object, expected: str) -> ConfigError:
        key, table = where[-1], where[:-1]
        # A password of the wrong type (an unquoted number) is still a password.
        shown = "(hidden)" if where == ("kafka", "sasl_password") else _show(value)
        return self.error(
            where,
            f"key {key!r} {self.place(table)} must be {expected}, got {_type_name(value)} {shown}",
        )

    # -- typed readers -------------------------------------------------------------------------

    def table(self, value: object, where: _Path, allowed: Collection[str] | None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.bad(where, value, "a table")
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    raise self.unknown(where, key, allowed)
        return value

    def text(self, value: object, where: _Path, *, pattern: re.Pattern[str] | None = None) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.bad(where, value, "a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise self.bad(where, value, "a Kafka topic name (letters, digits, '.', '_', '-')")
        return value

    def texts(
        self, value: object, where: _Path, *, pattern: re.Pattern[str] | None = None
    ) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.bad(where, value, "an array of strings")
        items = tuple(self.text(v, where, pattern=pattern) for v in value)
        dupes = sorted({v for v in items if items.count(v) > 1})
        if dupes:
            raise self.bad(
                where, value, f"an array without duplicates (repeated: {', '.join(dupes)})"
            )
        return items

    def positive_int(
        self, value: object, where: _Path, expected: str, *, maximum: int | None = None
    ) -> int:
        """An integer from 1 (to ``maximum``), not a bool; else ``expected`` is said."""
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < 1
            or (maximum is not None and value > maximum)
        ):
            raise self.bad(where, value, expected)
        return value

    def duration(
        self, value: object, where: _Path, *, minimum: int, maximum: int | None = None
    ) -> int:
        try:
            ms = parse_duration(value)
        except UnderHalfSecond as exc:
            # Not the exception's own text, which says what 0 does to a TTL: no setting read
            # here is a TTL (those are read by ttl_map).
            why = f"{exc.shown} is under half a second"
            raise self.error(
                where, f"invalid duration for key {where[-1]!r} {self.place(where[:-1])}: {why}"
            ) from None
        except InvalidDuration as exc:
            raise self.error(
                where, f"invalid duration for key {where[-1]!r} {self.place(where[:-1])}: {exc}"
            ) from None
        if maximum is not None and not minimum <= ms <= maximum:
            span = f"from {format_duration(minimum)} to {format_duration(maximum)}"
            raise self.bad(where, value, f"a duration {span}")
        if ms < minimum:
            bound = "positive" if minimum > 0 else "0 or more"
            raise self.bad(where, value, f"a duration, {bound}")
        return ms

    def ttl_map(
        self, value: object, where: _Path, source: Source, keys: Collection[str]
    ) -> dict[str, Candidate]:
        values = self.table(value, where, None)
        result: dict[str, Candidate] = {}
        for key, raw in values.items():
            if key not in keys:
                note = " (categories are set by [categories] names)"
                raise self.unknown(where, key, keys, note=note)
            try:
                result[key] = make_candidate(source, config_key(*where, key), raw)
            except InvalidDuration as exc:
                raise self.error(
                    (*where, key),
                    f"invalid duration for key {key!r} {self.place(where)}: {exc}",
                ) from None
            if (month := capital_m_note(raw)) is not None:
                where_key = self.locate((*where, key))
                log.warning("%s: key %r %s: %s", where_key, key, self.place(where), month)
            if is_negative(raw):
                # Ignored, as the contract says, like 0: a record then takes its TTL from
                # the other sources, or never expires. A sign is likely a slip, and the
                # file gave no word of it (a trial): said, with its line.
                log.warning(
                    "%s: key %r %s is negative (%r): ignored, as 0 is; this scope gives %s "
                    "no TTL, so it comes from the other sources or the record never expires",
                    self.locate((*where, key)), key, self.place(where), raw, key,
                )  # fmt: skip
        return result

    # -- the file ------------------------------------------------------------------------------

    def config(self, data: dict[str, Any]) -> Config:
        self.table(data, (), _TOP)
        preset = data.get("preset", "none")
        if preset not in PRESETS:
            if not isinstance(preset, str):
                raise self.bad(("preset",), preset, f"one of {', '.join(PRESETS)}")
            close = difflib.get_close_matches(preset, PRESETS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(PRESETS)}"
            raise self.error(("preset",), f"unknown preset {preset!r}; {hint}")
        defaults = Config()
        categories, sliding = self.categories(data.get("categories", {}))
        service = self.table(
            data.get("service", {}),
            ("service",),
            ("tick_ms", "horizon", "marker_grace", "session_timeout", "workers"),
        )
        workers = defaults.workers
        if "workers" in service:
            workers = self.positive_int(
                service["workers"], ("service", "workers"), "a positive number of processes"
            )
        tick_ms = self.positive_int(
            service.get("tick_ms", defaults.tick_ms),
            ("service", "tick_ms"),
            "a positive integer (milliseconds)",
        )
        horizon_ms = defaults.horizon_ms
        if "horizon" in service:
            horizon_ms = self.duration(service["horizon"], ("service", "horizon"), minimum=1)
        grace_ms = defaults.marker_grace_ms
        if "marker_grace" in service:
            grace_ms = self.duration(
                service["marker_grace"], ("service", "marker_grace"), minimum=0
            )
        session_ms = defaults.session_timeout_ms
        if "session_timeout" in service:
            session_ms = self.duration(
                service["session_timeout"],
                ("service", "session_timeout"),
                minimum=1_000,
                maximum=MAX_SESSION_TIMEOUT_MS,
            )
        skew_ms = defaults.max_clock_skew_ms
        if "max_clock_skew" in data:
            skew_ms = self.duration(data["max_clock_skew"], ("max_clock_skew",), minimum=0)
        servers = data.get("bootstrap_servers")
        return Config(
            preset=preset,
            bootstrap_servers=None
            if servers is None
            else self.text(servers, ("bootstrap_servers",)),
            group_id=self.text(data.get("group_id", defaults.group_id), ("group_id",)),
            state_dir=self.text(data.get("state_dir", defaults.state_dir), ("state_dir",)),
            max_clock_skew_ms=skew_ms,
            tick_ms=tick_ms,
            horizon_ms=horizon_ms,
            marker_grace_ms=grace_ms,
            session_timeout_ms=session_ms,
            workers=workers,
            topics=self.topics(data.get("topics", {})),
            topic_settings=self.topic_settings(data.get("topics", {})),
            kafka=self.kafka(data.get("kafka", {})),
            categories=categories,
            sliding=sliding,
            retention=self.retention(data.get("retention", {}), preset, categories),
            sink=self.sink(data.get("sink", {}), categories),
            archive=self.archive(data.get("archive", {})),
            path=self._path,
            redact=_read_redact(self, data.get("redact", {}), categories),
        )

    def categories(self, value: object) -> tuple[tuple[str, ...], frozenset[str]]:
        where: _Path = ("categories",)
        table = self.table(value, where, ("names", "sliding"))
        names: tuple[str, ...] = DEFAULT_CATEGORIES
        if "names" in table:
            names = self.texts(table["names"], (*where, "names"))
            if not names:
                raise self.bad((*where, "names"), table["names"], "a non-empty array of strings")
            for name in names:
                if name == CAP_ALL or len(name) > MAX_ID_CHARS:
                    raise self.bad(
                        (*where, "names"),
                        name,
                        f"a name other than {CAP_ALL!r} (it is the cap of all)",
                    )
        if "sliding" not in table:
            return names, frozenset({"session"}) & frozenset(names)
        sliding = self.texts(table["sliding"], (*where, "sliding"))
        for name in sliding:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "add it to names first"
                raise self.error(
                    (*where, "sliding"),
                    f"key 'sliding' in [categories] names category {name!r}, which is not in "
                    f"names; {hint}",
                )
        return names, frozenset(sliding)

    def topics(self, value: object) -> Topics:
        where: _Path = ("topics",)
        table = self.table(
            value, where, (*_TOPIC_KEYS, _TOPIC_RETIRED, *_TOPIC_COUNTS, *_TOPIC_DURATIONS)
        )
        default = Topics()
        inputs = default.inputs
        if "inputs" in table:
            inputs = self.texts(table["inputs"], (*where, "inputs"), pattern=_TOPIC_NAME)
            if not inputs:
                raise self.bad(
                    (*where, "inputs"), table["inputs"], "a non-empty array of topic names"
                )
        outputs = {
            key: self.text(
                table.get(key, getattr(default, key)), (*where, key), pattern=_TOPIC_NAME
            )
            for key in _TOPIC_KEYS[1:]
        }
        retired = self.retired(table, inputs)
        seen = {name: "inputs" for name in inputs} | {name: "retired" for name in retired}
        for key, name in outputs.items():
            if name in seen:
                raise self.error(
                    (*where, key),
                    f"topic {name!r} of key {key!r} {self.place(where)} is also used by "
                    f"{seen[name]!r}; give every topic its own name",
                )
            seen[name] = key
        origins: dict[str, str] = {
            key: self.locate((*where, key))
            for key in (*_TOPIC_KEYS, _TOPIC_RETIRED)
            if key in table
        }
        return Topics(inputs=inputs, retired=retired, **outputs, origins=origins)

    def retired(self, table: Mapping[str, object], inputs: tuple[str, ...]) -> tuple[str, ...]:
        """``[topics] retired``: none by default. A topic also among the inputs is refused:
        it would be read and not read at once."""
        where: _Path = ("topics", _TOPIC_RETIRED)
        if _TOPIC_RETIRED not in table:
            return ()
        retired = self.texts(table[_TOPIC_RETIRED], where, pattern=_TOPIC_NAME)
        both = [name for name in retired if name in inputs]
        if both:
            raise self.error(
                where,
                f"topic {both[0]!r} is in both [topics] inputs and retired: an input is read, "
                "a retired topic only has its records tombstoned; take it out of one (out of "
                "retired while producers still write to it)",
            )
        return retired

    def topic_settings(self, value: object) -> TopicSettings:
        """The settings keys of ``[topics]`` (its names are read by :meth:`topics`)."""
        where: _Path = ("topics",)
        table = self.table(value, where, None)
        counts: dict[str, int] = {}
        for key in _TOPIC_COUNTS:
            if key in table:
                counts[key] = self.positive_int(
                    table[key], (*where, key), "an integer from 1 to 10000", maximum=10_000
                )
        times = {
            f"{key}_ms": self.duration(table[key], (*where, key), minimum=1)
            for key in _TOPIC_DURATIONS
            if key in table
        }
        settings = TopicSettings(**counts, **times)
        if settings.min_insync > settings.replication_factor:
            key = "min_insync_replicas" if "min_insync_replicas" in table else "replication_factor"
            raise self.error(
                (*where, key),
                f"min_insync_replicas ({settings.min_insync}) {self.place(where)} is larger than "
                f"replication_factor ({settings.replication_factor}): no write with acks=all "
                "could succeed; lower min_insync_replicas or raise replication_factor",
            )
        return settings

    def kafka(self, value: object) -> KafkaSecurity:
        """``[kafka]``: each value checked here with its line; whether they fit together is
        checked once the environment is on top (``kafka_settings.security_from_environment``)."""
        where: _Path = ("kafka",)
        table = self.table(value, where, SECURITY_KEYS)
        values: dict[str, str] = {}
        origins: dict[str, str] = {}
        for key, raw in table.items():
            if not isinstance(raw, str):
                raise self.bad((*where, key), raw, "a string")
            try:
                values[key] = check_security_value(key, raw)
            except ValueError as exc:
                raise self.error((*where, key), f"key {key!r} {self.place(where)} {exc}") from None
            origins[key] = f"{self.locate((*where, key))} ([kafka] {key})"
        return KafkaSecurity(**values, origins=origins)

    def retention(
        self, value: object, preset: str, categories: tuple[str, ...]
    ) -> RetentionSettings:
        where: _Path = ("retention",)
        table = self.table(value, where, ("defaults", "cap", "orgs", "bots"))
        defaults = self.ttl_map(
            table.get("defaults", {}), (*where, "defaults"), "default", categories
        )
        cap = self.ttl_map(table.get("cap", {}), (*where, "cap"), "cap", (CAP_ALL, *categories))
        orgs: dict[str, Mapping[str, Candidate]] = {}
        orgs_where = (*where, "orgs")
        for org, settings in self.table(table.get("orgs", {}), orgs_where, None).items():
            self.ident(org, orgs_where, "an org")
            orgs[org] = self.ttl_map(settings, (*orgs_where, org), "org", categories)
        bots: dict[tuple[str, str, str], Mapping[str, Candidate]] = {}
        bots_where = (*where, "bots")
        for org, per_org in self.table(table.get("bots", {}), bots_where, None).items():
            self.ident(org, bots_where, "an org")
            for bot, per_bot in self.table(per_org, (*bots_where, org), None).items():
                self.ident(bot, (*bots_where, org), "a bot")
                for env, settings in self.table(per_bot, (*bots_where, org, bot), ENVS).items():
                    bots[(org, bot, env)] = self.ttl_map(
                        settings, (*bots_where, org, bot, env), "bot", categories
                    )
        return RetentionSettings(preset=preset, defaults=defaults, cap=cap, orgs=orgs, bots=bots)

    def archive(self, value: object) -> ArchiveSettings:
        where: _Path = ("archive",)
        table = self.table(value, where, ("required", "group_id", "marker_margin"))
        required = table.get("required", False)
        if not isinstance(required, bool):
            raise self.bad((*where, "required"), required, "true or false")
        group = self.text(table.get("group_id", ArchiveSettings.group_id), (*where, "group_id"))
        margin = ArchiveSettings.marker_margin_ms
        if "marker_margin" in table:
            margin = self.duration(table["marker_margin"], (*where, "marker_margin"), minimum=0)
        return ArchiveSettings(required=required, group_id=group, marker_margin_ms=margin)

    def sink(self, value: object, categories: tuple[str, ...]) -> SinkSettings:
        where: _Path = ("sink",)
        table = self.table(value, where, ("compacted",))
        c_where = (*where, "compacted")
        out: list[CompactedTopic] = []
        owner: dict[str, str] = {}
        for topic, settings in self.table(table.get("compacted", {}), c_where, None).items():
            t_where = (*c_where, topic)
            if not _TOPIC_NAME.match(topic):
                raise self.error(
                    t_where,
                    f"{topic!r} {self.place(c_where)} is not a Kafka topic name "
                    "(letters, digits, '.', '_', '-')",
                )
            entry = self.table(settings, t_where, ("categories", "key"))
            if "categories" not in entry:
                raise self.error(
                    t_where, f"[{config_key(*t_where)}] needs categories = [...] to delete from it"
                )
            cats = self.texts(entry["categories"], (*t_where, "categories"))
            if not cats:
                raise self.bad((*t_where, "categories"), entry["categories"], "a non-empty array")
            for cat in cats:
                if cat not in categories:
                    raise self.error(
                        (*t_where, "categories"),
                        f"category {cat!r} in [{config_key(*t_where)}] is not a configured "
                        f"category ({', '.join(categories)})",
                    )
                if cat in owner:
                    raise self.error(
                        (*t_where, "categories"),
                        f"category {cat!r} is already deleted from topic {owner[cat]!r}; "
                        "a category has one compacted topic",
                    )
                owner[cat] = topic
            key = None
            if "key" in entry:
                text = self.text(entry["key"], (*t_where, "key"))
                try:
                    key = KeyTemplate(text)
                except ConfigurationError as exc:
                    raise self.error((*t_where, "key"), str(exc)) from None
            out.append(CompactedTopic(topic, cats, key))
        return SinkSettings(compacted=tuple(out))

    def ident(self, name: str, where: _Path, what: str) -> None:
        if not 1 <= len(name) <= MAX_ID_CHARS:
            raise self.error(
                (*where, name),
                f"{what} id {self.place(where)} must be 1 to {MAX_ID_CHARS} characters long",
            )


def _read_redact(
    reader: _Reader, value: object, categories: tuple[str, ...]
) -> dict[str, tuple[str, ...]]:
    """``[redact]``: each key a configured category, each value an array of dotted paths."""
    where: _Path = ("redact",)
    table = reader.table(value, where, None)
    redact: dict[str, tuple[str, ...]] = {}
    for category, raw in table.items():
        if category not in categories:
            note = " (categories are set by [categories] names)"
            raise reader.unknown(where, category, categories, note=note)
        paths = reader.texts(raw, (*where, category))
        folded: dict[tuple[str, ...], list[str]] = {}
        for path in paths:
            try:
                folded.setdefault(fold_path(parse_path(path)), []).append(path)
            except InvalidRedactPath as exc:
                raise reader.error(
                    (*where, category), f"key {category!r} {reader.place(where)}: {exc}"
                ) from None
        for alike in folded.values():
            if len(alike) > 1:
                _say_paths_alike_but_for_case(reader, category, alike)
        redact[category] = paths
    return redact


def _say_paths_alike_but_for_case(reader: _Reader, category: str, alike: list[str]) -> None:
    """Warn of paths of one category that differ only in case (``user.email`` and
    ``User.Email``): written for producers that spell keys differently, but a path matches
    keys whatever their case, so the first removes what the others name. Not an error: the
    config removes what it meant to."""
    where: _Path = ("redact", category)
    log.warning(
        "%s: key %r %s has paths that differ only in case (%s): a path matches keys "
        "whatever their case, so %r alone removes them all; the others can go",
        reader.locate(where), category, reader.place(where[:1]),
        ", ".join(repr(p) for p in alike), alike[0],
    )  # fmt: skip


# -- positions of keys in TOML text ------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}\n#]*")


class _Scanner:
    """Finds the line of every key path. Assumes text that ``tomllib`` already accepted."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.found: dict[_Path, int] = {}

    def record(self, path: _Path) -> None:
        for end in range(1, len(path) + 1):
            self.found.setdefault(path[:end], self.line)

    def blank(self, *, newlines: bool) -> None:
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in " \t\r":
                self.i += 1
            elif c == "\n" and newlines:
                self.i += 1
                self.line += 1
            elif c == "#":
                end = s.find("\n", self.i)
                self.i = len(s) if end < 0 else end
            else:
                return

    def key(self) -> _Path:
        parts: list[str] = []
        while True:
            self.blank(newlines=False)
            start, s = self.i, self.s
            if s.startswith('"', start):
                self.i = self._string_end(start, '"')
            elif s.startswith("'", start):
                self.i = s.index("'", start + 1) + 1
            else:
                m = _BARE.match(s, start)
                if m is None:
                    raise ValueError("not a key")
                self.i = m.end()
            raw = s[start : self.i]
            parts.append(raw if raw[0] not in "\"'" else next(iter(tomllib.loads(f"{raw} = 0"))))
            self.blank(newlines=False)
            if not s.startswith(".", self.i):
                return tuple(parts)
            self.i += 1

    def not_at_end(self) -> None:
        """Every loop checks this, so the scan ends on any text, even one tomllib would reject."""
        if self.i >= len(self.s):
            raise ValueError("unexpected end of the text")

    def _string_end(self, start: int, quote: str) -> int:
        i = start + len(quote)
        while True:
            if self.s[i] == "\\" and quote[0] == '"':
                i += 2
            elif self.s.startswith(quote, i):
                return i + len(quote)
            else:
                i += 1

    def value(self, path: _Path | None) -> None:
        s, i = self.s, self.i
        for quote in ('"""', "'''", '"', "'"):
            if s.startswith(quote, i):
                end = self._string_end(i, quote)
                while len(quote) == 3 and s.startswith(quote[0], end):
                    end += 1  # up to two quotes may end the content right before the delimiter
                self.line += s.count("\n", i, end)
                self.i = end
                return
        if s.startswith("[", i):
            self.i += 1
            while True:
                self.blank(newlines=True)
                self.not_at_end()
                if s.startswith("]", self.i):
                    self.i += 1
                    return
                if s.startswith(",", self.i):
                    self.i += 1
                    continue
                self.value(None)
        elif s.startswith("{", i):
            self.i += 1
            while True:
                self.blank(newlines=True)
                self.not_at_end()
                if s.startswith("}", self.i):
                    self.i += 1
                    return
                if s.startswith(",", self.i):
                    self.i += 1
                    continue
                inner = self.key()
                if path is not None:
                    self.record((*path, *inner))
                self.i += 1  # '='
                self.blank(newlines=False)
                self.value(None if path is None else (*path, *inner))
        else:
            m = _SCALAR.match(s, i)
            self.i = m.end() if m and m.end() > i else i + 1

    def run(self) -> dict[_Path, int]:
        table: _Path = ()
        while True:
            self.blank(newlines=True)
            if self.i >= len(self.s):
                return self.found
            if self.s.startswith("[", self.i):
                self.i += 2 if self.s.startswith("[[", self.i) else 1
                table = self.key()
                self.record(table)
                self.i += 2 if self.s.startswith("]]", self.i) else 1
                continue
            path = (*table, *self.key())
            self.record(path)
            self.i += 1  # '='
            self.blank(newlines=False)
            self.value(path)


def _key_lines(text: str) -> dict[_Path, int]:
    """Line of the first mention of every key path; best effort, partial rather than failing."""
    scanner = _Scanner(text)
    try:
        return scanner.run()
    except (ValueError, IndexError, tomllib.TOMLDecodeError, StopIteration):
        return scanner.found


# -- the environment layer ---------------------------------------------------------------------
#
# Every setting of the file outside [retention] (the TTL sources have their own variables)
# can also come from STREAM_EXPIRY_<KEY>, the key's dotted path in upper case with "_" for
# "." ([topics] stamped -> STREAM_EXPIRY_TOPICS_STAMPED). The variables are folded into the
# parsed TOML before validation, so one validator checks both and an error names the variable.
# Precedence: a flag (the CLI's business) > the environment > the file > the default.

ENV_PREFIX: Final = "STREAM_EXPIRY_"

_Kind = Literal["text", "int", "list", "bool"]

#: The settings with an environment variable, and how its text becomes a TOML value
#: (``text`` stays a string: durations and names; ``list`` is comma-separated; ``bool`` is
#: ``true`` or ``false``). Not here: ``[retention]`` (the platform's own variables are its
#: candidates), ``[kafka]`` (``STREAM_EXPIRY_KAFKA_*``, :mod:`stream_expiry.kafka_settings`),
#: and the tables keyed by names a variable cannot spell (``[redact]``, ``[sink]``).
# ``bootstrap_servers`` is not here: the contract fixes its order (the flag, else the config
# file, else STREAM_EXPIRY_BOOTSTRAP_SERVERS), which each command applies (cliargs.bootstrap_from).
ENV_SETTINGS: Final[Mapping[_Path, _Kind]] = {
    ("preset",): "text",
    ("group_id",): "text",
    ("state_dir",): "text",
    ("max_clock_skew",): "text",
    ("service", "tick_ms"): "int",
    ("service", "horizon"): "text",
    ("service", "marker_grace"): "text",
    ("service", "session_timeout"): "text",
    ("service", "workers"): "int",
    ("topics", "inputs"): "list",
    ("topics", _TOPIC_RETIRED): "list",
    **{("topics", key): "text" for key in _TOPIC_KEYS[1:]},
    **{("topics", key): "int" for key in _TOPIC_COUNTS},
    **{("topics", key): "text" for key in _TOPIC_DURATIONS},
    ("categories", "names"): "list",
    ("categories", "sliding"): "list",
    ("archive", "required"): "bool",
    ("archive", "group_id"): "text",
    ("archive", "marker_margin"): "text",
}


def env_name(path: _Path) -> str:
    """The environment variable of a config key path."""
    return ENV_PREFIX + "_".join(path).upper()


def _env_value(raw: str, kind: _Kind) -> object:
    text = raw.strip()
    if kind == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            return text  # the validator says what is expected, naming the variable
    if kind == "bool" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text  # a bool's validator refuses anything else, naming the variable


def _env_layer(
    data: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[_Path, str]]:
    """The file's parsed TOML with every set variable laid over it, and which paths came
    from which variable. An empty variable counts as unset (compose and Kubernetes make
    those easily); the file's tables are copied, never changed."""
    merged = dict(data)
    from_env: dict[_Path, str] = {}
    for path, kind in ENV_SETTINGS.items():
        name = env_name(path)
        raw = environ.get(name)
        if raw is None or not raw.strip():
            continue
        table = merged
        for part in path[:-1]:
            inner = table.get(part, {})
            if not isinstance(inner, dict):
                break  # the file's own mistake; the validator reports it with its line
            copy = dict(inner)
            table[part] = copy
            table = copy
        else:
            table[path[-1]] = _env_value(raw, kind)
            from_env[path] = name
    return merged, from_env

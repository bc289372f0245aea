"""How to reach Kafka and how the service's topics are created: plain data, no aiokafka.

Rules this module keeps:

* One immutable :class:`Connection` (brokers and :class:`KafkaSecurity`) is what every
  producer, consumer and admin client is built from (``stream_expiry.kafka`` turns it into
  aiokafka's options). A command builds it once, so no client of any command can miss the
  security settings.
* Security settings come from ``[kafka]`` in the config file and from environment variables
  ``STREAM_EXPIRY_KAFKA_<NAME>``; the environment beats the file (secrets need neither a file
  nor a flag). An empty variable counts as unset.
* Every mistake is fatal before a client starts, with the place the value came from: a
  mechanism Kafka does not know, SASL without a user or password, credentials or files that
  the protocol would silently ignore, a file that cannot be read or does not load.
* Topic settings bound how long deleted data can stay on a broker's disk; the defaults are
  written down, with what each bounds, in the README ("Topics").
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, Literal

from stream_expiry.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from stream_expiry.config import Config, Topics

_log = logging.getLogger("stream_expiry.kafka_settings")

__all__ = [
    "ENV_PREFIX",
    "REBALANCE_TIMEOUT_MS",
    "SASL_MECHANISMS",
    "SECURITY_KEYS",
    "SECURITY_PROTOCOLS",
    "Brokers",
    "Connection",
    "KafkaSecurity",
    "TopicRole",
    "TopicSettings",
    "as_connection",
    "check_bootstrap",
    "check_security_value",
    "connection_for",
    "member_liveness",
    "no_passphrase",
    "role_configs",
    "security_from_environment",
    "topic_configs",
    "topic_roles",
]

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECURITY_KEYS: Final = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
)
_FILES: Final = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
ENV_PREFIX: Final = "STREAM_EXPIRY_KAFKA_"

_MINUTE_MS: Final = 60_000
_HOUR_MS: Final = 60 * _MINUTE_MS
_DAY_MS: Final = 24 * _HOUR_MS


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS and SASL settings as Kafka clients name them; the defaults are plaintext.

    ``origins`` says where each set value came from (``"app.toml line 12"``,
    ``"$STREAM_EXPIRY_KAFKA_SASL_PASSWORD"``) so errors found later can point there. The
    password never appears in a repr.
    """

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def origin(self, key: str) -> str:
        return self.origins.get(key, f"[kafka] {key} (default)")

    def check(self) -> None:
        """Raise :class:`ConfigurationError` if the settings contradict each other."""
        protocol = self.security_protocol
        if self.uses_sasl:
            for key in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, key) is None:
                    hint = f" ({', '.join(SASL_MECHANISMS)})" if key == "sasl_mechanism" else ""
                    raise ConfigurationError(
                        f"{self.origin('security_protocol')}: security_protocol {protocol} needs "
                        f"{key}{hint}: set it under [kafka] in the config file or in "
                        f"${ENV_PREFIX}{key.upper()}"
                    )
        else:
            for key in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, key) is not None:
                    raise ConfigurationError(
                        f"{self.origin(key)}: {key} is set but security_protocol is {protocol}, "
                        "which sends no credentials; set security_protocol to SASL_SSL "
                        "(or SASL_PLAINTEXT), or remove it"
                    )
        if not self.uses_ssl:
            for key in _FILES:
                if getattr(self, key) is not None:
                    raise ConfigurationError(
                        f"{self.origin(key)}: {key} is set but security_protocol is {protocol}, "
                        "which does not use TLS; set security_protocol to SSL (or SASL_SSL), "
                        "or remove it"
                    )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigurationError(
                f"{self.origin('ssl_keyfile')}: ssl_keyfile needs ssl_certfile (the client "
                "certificate the key belongs to)"
            )
        if self.uses_ssl:
            self._load_tls_files()

    def _load_tls_files(self) -> None:
        """Load the TLS files as the clients will, so that one that does not load (not PEM,
        a key that does not match its certificate or is encrypted) stops the command here,
        naming where it was set, rather than when the first client starts: the command had
        by then made its state directory and logged the broker as unreachable."""
        context = ssl.create_default_context()
        if self.ssl_cafile is not None:
            try:
                context.load_verify_locations(cafile=self.ssl_cafile)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ConfigurationError(
                    f"{self.origin('ssl_cafile')}: ssl_cafile {self.ssl_cafile!r} does not "
                    f"load: {exc}; it must hold the CA certificates in PEM"
                ) from None
        if self.ssl_certfile is not None:
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, no_passphrase)
            except (ssl.SSLError, OSError, ValueError) as exc:
                files = f"ssl_certfile {self.ssl_certfile!r}"
                if self.ssl_keyfile is not None:
                    files += f" with ssl_keyfile {self.ssl_keyfile!r}"
                raise ConfigurationError(
                    f"{self.origin('ssl_certfile')}: {files} does not load: "
                    f"{exc}; they must be PEM files, the key unencrypted and "
                    "matching the certificate (without ssl_keyfile, ssl_certfile must hold the key too)"
                ) from None


def no_passphrase() -> str:
    """Called by OpenSSL for an encrypted key only. Without it OpenSSL asked for the
    passphrase on the terminal: a command started from one (``docker run -it``) waited
    there for good, and one without a terminal failed with "Invalid argument"."""
    raise ValueError("the key is encrypted, and stream-expiry takes no passphrase")


def check_security_value(key: str, value: str) -> str:
    """The normalised value of one ``[kafka]`` key; raises ValueError with what is wrong."""
    if not value.strip():
        raise ValueError("must be a non-empty string")
    if key == "security_protocol":
        normal = value.strip().upper()
        if normal not in SECURITY_PROTOCOLS:
            raise ValueError(f"must be one of {', '.join(SECURITY_PROTOCOLS)}, got {value!r}")
        return normal
    if key == "sasl_mechanism":
        normal = value.strip().upper()
        if normal not in SASL_MECHANISMS:
            raise ValueError(
                f"must be one of {', '.join(SASL_MECHANISMS)}, got {value!r} "
                "(GSSAPI and OAUTHBEARER are not supported)"
            )
        return normal
    if key in _FILES:
        if os.path.isdir(value):
            raise ValueError(
                f"{value!r} is a directory; give the PEM file itself (a CA bundle such as "
                "/etc/ssl/certs/ca-certificates.crt, or leave ssl_cafile out for the system's CAs)"
            )
        if not os.path.isfile(value):
            raise ValueError(f"file {value!r} does not exist (relative paths start at the cwd)")
        if not os.access(value, os.R_OK):
            raise ValueError(f"file {value!r} is not readable by this process")
    return value


def security_from_environment(base: KafkaSecurity, environ: Mapping[str, str]) -> KafkaSecurity:
    """``base`` (from the config file) with every ``STREAM_EXPIRY_KAFKA_<NAME>`` set on top,
    checked as a whole; raises :class:`ConfigurationError` naming the variable or the line."""
    changes: dict[str, str] = {}
    origins = dict(base.origins)
    for key in SECURITY_KEYS:
        name = ENV_PREFIX + key.upper()
        raw = environ.get(name, "")
        if not raw:
            continue
        try:
            changes[key] = check_security_value(key, raw)
        except ValueError as exc:
            shown = "(hidden)" if key == "sasl_password" else repr(raw)
            raise ConfigurationError(f"${name} = {shown}: {exc}") from None
        origins[key] = f"${name}"
    merged = replace(base, **changes, origins=origins) if changes else base
    merged.check()
    if merged.security_protocol == "SASL_PLAINTEXT" and merged.sasl_mechanism == "PLAIN":
        # Allowed (a broker on a private network may be set up so), but PLAIN sends the
        # password as it is: without TLS anyone on the path reads it (Kafka's documentation:
        # SASL/PLAIN only with TLS). A security trial found it accepted without a word.
        _log.warning(
            "%s: SASL PLAIN over SASL_PLAINTEXT sends the password unencrypted to the brokers; "
            "use SASL_SSL, or SCRAM-SHA-512, which never sends it",
            merged.origin("security_protocol"),
        )
    return merged


@dataclass(frozen=True)
class Connection:
    """Everything a Kafka client of any command needs to reach the cluster.

    ``str()`` gives the brokers, so messages that named the bootstrap string still read well.
    """

    bootstrap_servers: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __str__(self) -> str:
        return self.bootstrap_servers


Brokers = str | Connection
"""What the client factories accept: a bare bootstrap string means plaintext."""


DEFAULT_PORT: Final = 9092
"""Kafka's port, which the clients take for an address without one."""


def check_bootstrap(servers: str) -> str:
    """``servers`` (``HOST[:PORT],...``) as given, once every entry has a host and a port
    a socket can have; raises :class:`ConfigurationError` saying which entry is wrong. (The
    clients would fail later with a traceback of their own: ``int('abc')``, a port out of
    range, or a host named ``SASL_SSL://k1`` that no DNS knows.)"""
    bootstrap_addresses(servers)
    return servers


def bootstrap_addresses(servers: str) -> list[tuple[str, int]]:
    """Each entry of ``servers`` as (host, port), read as aiokafka reads it
    (``get_ip_port_afi``: ``[IPv6]`` in brackets, a bare IPv6 address, port 9092 when none
    is given), for the health probe to connect where the clients would; raises
    :class:`ConfigurationError` naming the first entry no client could use."""
    addresses: list[tuple[str, int]] = []
    for raw in servers.split(","):
        entry = raw.strip()
        host, colon, port = entry.rpartition(":")
        if not colon or entry.endswith("]") or _is_ipv6(entry):  # no port: the default
            host, colon, port = entry, "", ""
        problem = ""
        if "://" in entry:
            scheme = entry.split("://", 1)[0]
            problem = (
                f"starts with {scheme}://, which the clients take for part of the host "
                "(the protocol is [kafka] security_protocol)"
            )
        elif host in ("", "[]"):
            problem = "has no host"
        elif port and not (port.isdigit() and 1 <= int(port) <= 65_535):
            problem = f"has port {port!r}, not a number from 1 to 65535"
        elif colon and not port:
            problem = "has no port after its ':'"
        if problem:
            raise ConfigurationError(
                f"bootstrap servers {servers!r}: {entry!r} {problem}; give HOST:PORT, "
                "several separated by commas"
            )
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        addresses.append((bare, int(port) if port else DEFAULT_PORT))
    return addresses


def _is_ipv6(entry: str) -> bool:
    try:
        ipaddress.IPv6Address(entry)
    except ValueError:
        return False
    return True


def as_connection(brokers: Brokers) -> Connection:
    return brokers if isinstance(brokers, Connection) else Connection(brokers)


# How long a group's coordinator waits for a member to rejoin when the group rebalances,
# for a group whose members work before they rejoin: the service's revocation waits for
# the acks of what it sent (up to the producer's request timeout) and its commits (up to
# COMMIT_TIMEOUT_S); a sink's waits for its store transaction in flight (SQLite's busy
# timeout alone is 10 s). aiokafka's default is the session timeout (6 s by default): on
# Kafka, a member slower than that to rejoin is left out of the new generation, its commit
# refused, and its partitions handed to another member while its work still runs. A
# crashed member is still found by its session timeout. (The test broker does not enforce
# it.)
REBALANCE_TIMEOUT_MS: Final = 60_000


def member_liveness(session_ms: int) -> dict[str, int]:
    """A group member's ``session_timeout_ms`` and ``heartbeat_interval_ms`` (the
    ``[service] session_timeout``), for the groups of the service, rekey, the sinks and
    the archive: a member that dies without leaving (a crash, a SIGKILL, even while it
    joins) stays in the group until the coordinator's session for it runs out, holding its
    partitions and the join of the member started in its place (aiokafka's default of
    10 s held a restarted ``rekey``, sink or archive about 20 s on the test broker; Kafka's
    Java client's 45 s would hold it longer). A heartbeat a third of the session, at most a second, keeps a
    live member in however short it is."""
    return {
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(100, min(1_000, session_ms // 3)),
    }


def connection_for(
    bootstrap_servers: str, security: KafkaSecurity, environ: Mapping[str, str]
) -> Connection:
    """The connection of a command: its brokers and the file's ``[kafka]`` with the
    environment on top. Raises :class:`ConfigurationError` before any client starts."""
    return Connection(bootstrap_servers, security_from_environment(security, environ))


# -- topics --------------------------------------------------------------------------------

TopicRole = Literal["compacted", "data", "evidence"]
"""How a topic is cleaned: ``compacted`` keeps the latest value per key (policies, stamps,
holds); ``data`` deletes by age (inputs, tombstones, dead letters: they may hold payloads);
``evidence`` deletes by a much longer age (receipts, the audit trail)."""


@dataclass(frozen=True)
class TopicSettings:
    """How topics the service creates are made; existing topics are never altered.

    The times bound how long a deleted value can stay on a broker's disk (README, "Topics"):
    on a compacted topic a value superseded by a null is gone about ``segment_ms`` +
    ``max_compaction_lag_ms`` after the null (plus the log cleaner's own delay), and the
    null itself ``delete_retention_ms`` later, provided the partition gets another message
    after that: Kafka closes an open segment only when it appends to it, and never compacts
    one, so a quiet partition keeps both (README, "A quiet partition keeps its last
    deletions"). On the others a record is gone ``retention_ms`` (or
    ``evidence_retention_ms``) + ``segment_ms`` after it was written.
    """

    partitions: int = 4
    replication_factor: int = 3
    min_insync_replicas: int | None = None  # None: replication_factor - 1, at least 1
    max_compaction_lag_ms: int = _DAY_MS
    segment_ms: int = _DAY_MS
    delete_retention_ms: int = _DAY_MS
    retention_ms: int = 7 * _DAY_MS
    evidence_retention_ms: int = 400 * _DAY_MS

    @property
    def min_insync(self) -> int:
        if self.min_insync_replicas is not None:
            return self.min_insync_replicas
        return max(1, self.replication_factor - 1)


MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def role_configs(role: TopicRole, settings: TopicSettings) -> dict[str, str]:
    """The Kafka topic configs of a topic in ``role``, as CreateTopics takes them."""
    configs = {
        "min.insync.replicas": str(settings.min_insync),
        # A replica out of sync never becomes leader, whatever the broker's default: it
        # would drop writes acknowledged with acks=all (a tombstone, a null on the changelog).
        "unclean.leader.election.enable": "false",
        "segment.ms": str(settings.segment_ms),
    }
    if role == "compacted":
        configs |= {
            "cleanup.policy": "compact",
            "max.compaction.lag.ms": str(settings.max_compaction_lag_ms),
            "delete.retention.ms": str(settings.delete_retention_ms),
        }
    else:
        retention = settings.retention_ms if role == "data" else settings.evidence_retention_ms
        configs |= {"cleanup.policy": "delete", "retention.ms": str(retention)}
    if role != "evidence":
        # A stamp or a dead letter is an input message plus a few hundred bytes: room for
        # the largest input a default broker accepts (1 MiB), and then some.
        configs["max.message.bytes"] = str(MAX_MESSAGE_BYTES)
    return configs


def topic_roles(topics: Topics) -> dict[str, TopicRole]:
    """Every topic the service owns or reads, with how it is cleaned (the contract's table)."""
    roles: dict[str, TopicRole] = dict.fromkeys((*topics.inputs, *topics.retired), "data")
    roles |= dict.fromkeys((topics.policies, topics.stamped, topics.holds), "compacted")
    roles |= dict.fromkeys((topics.tombstones, topics.dlq), "data")
    roles |= dict.fromkeys((topics.receipts, topics.audit), "evidence")
    return roles


def topic_configs(config: Config) -> dict[str, dict[str, str]]:
    """Topic name -> the Kafka configs it is created with, for every topic of ``config``.

    ``ensure_topics(conn, configs, configs=configs, partitions=..., replication=...)`` with
    this creates what is missing; topics that exist are left as they are.
    """
    settings = config.topic_settings
    return {name: role_configs(role, settings) for name, role in topic_roles(config.topics).items()}

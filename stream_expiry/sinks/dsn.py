"""What a PostgreSQL connection string says about where the server is, and how to print it.

libpq takes a URI (``postgresql://user:secret@host:5432/db?sslmode=require``) or key/value
pairs (``host=db port=5432 password=secret``); without a host it uses ``$PGHOST``, else the
local socket. "Local" decides whether an error may suggest starting a server on this
machine; :func:`redact` keeps passwords out of messages and logs.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, urlencode, urlsplit

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["as_uri", "hosts", "is_local", "redact"]

_LOCAL: Final = frozenset({"", "localhost", "127.0.0.1", "::1"})
_KV: Final = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
_PASSWORD_KV: Final = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)")
# The key/value pairs asyncpg takes in a URI's query (its ``_parse_connect_dsn_and_args``),
# and ``application_name``, which it passes on to the server as libpq does.
_URI_KEYS: Final = frozenset(
    {
        "host", "port", "dbname", "user", "password", "passfile", "service", "sslmode",
        "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "sslnegotiation",
        "ssl_min_protocol_version", "ssl_max_protocol_version", "target_session_attrs",
        "krbsrvname", "gsslib", "application_name",
    }
)  # fmt: skip


def hosts(dsn: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The host names or socket directories the DSN points at ("" for libpq's default)."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        netloc = parts.netloc.rpartition("@")[2]
        found = [_host_of(h) for h in netloc.split(",")]
        found += parse_qs(parts.query).get("host", [])
    else:
        for key, value in _KV.findall(dsn):
            if key == "host":
                found += value.strip("'").split(",")
    found = [h for h in found if h]
    return found or [env.get("PGHOST", "")]


def _host_of(host_port: str) -> str:
    if host_port.startswith("["):  # [IPv6]:port
        return host_port[1 : host_port.find("]")]
    return host_port.rpartition(":")[0] if ":" in host_port else host_port


def is_local(dsn: str, environ: Mapping[str, str] | None = None) -> bool:
    """True when every host is this machine: loopback, a Unix socket, or libpq's default."""
    return all(h in _LOCAL or h.startswith("/") for h in hosts(dsn, environ))


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ``***``."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        user, at, where = parts.netloc.rpartition("@")
        if at and ":" in user:
            user = user.split(":", 1)[0] + ":***"
        query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
        if (user, query) == (parts.netloc.rpartition("@")[0], parts.query):
            return dsn  # nothing to hide (and urlsplit would drop an empty host's "//")
        return parts._replace(netloc=f"{user}{at}{where}", query=query).geturl()
    return _PASSWORD_KV.sub(r"\1***", dsn)


def as_uri(dsn: str) -> str:
    """The DSN as the URI asyncpg needs: libpq's key/value form (``host=db dbname=app``,
    what psycopg and ``psql`` users have at hand), which asyncpg does not read, becomes
    ``postgresql://?host=db&dbname=app``; a URI is returned as it is. Raises
    :class:`ValueError` naming a key asyncpg cannot take, or text that is not key=value."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return dsn
    pairs = _KV.findall(dsn)
    leftover = _KV.sub("", dsn).strip()
    if leftover or not pairs:
        raise ValueError(f"{leftover or dsn!r} is not key=value")
    query: list[tuple[str, str]] = []
    for key, raw in pairs:
        if key not in _URI_KEYS:
            raise ValueError(
                f"the key {key!r} is not one the PostgreSQL client (asyncpg) takes; it takes "
                + ", ".join(sorted(_URI_KEYS))
            )
        value = raw
        if raw.startswith("'") and raw.endswith("'") and len(raw) > 1:
            value = re.sub(r"\\(.)", r"\1", raw[1:-1])
        query.append((key, value))
    return "postgresql://?" + urlencode(query)

"""What a PostgreSQL connection string says about where the server is, and how to print it.

libpq takes a URI (``postgresql://user:secret@host:5432/db?sslmode=require``) or key/value
pairs (``host=db port=5432 password=secret``); without a host it uses ``$PGHOST``, else the
local socket. "Local" decides whether an error may suggest starting a server on this
machine; :func:`redact` keeps passwords, and the value of any key that is not the
client's (a mistyped ``passwd=``), out of messages and logs.
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "UnknownKey",
    "UnreadableFile",
    "as_uri",
    "check_files",
    "has_password",
    "hide_secrets",
    "hosts",
    "is_local",
    "meant_key",
    "query_keys",
    "redact",
]

_LOCAL: Final = frozenset({"", "localhost", "127.0.0.1", "::1"})
# A URI's scheme, any: one that is not PostgreSQL's is named as such (not as text that is
# not key=value), and its password is hidden all the same.
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_POSTGRES_SCHEMES: Final = frozenset({"postgresql", "postgres"})
# A key with a ``-`` (``ssl-mode``) is a key, named as not the client's, not text that is
# not key=value ("'ssl-' is not key=value").
_KV: Final = re.compile(r"([\w-]+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
# A pair as :func:`redact` reads it: a quote left open runs to the end, as libpq reads it,
# and words after the value up to the next ``key=`` are taken as part of it (a password
# with a space, unquoted, leaves its second half as text that is not key=value).
_KV_VALUE: Final = re.compile(
    r"([\w-]+)(\s*=\s*)((?:'(?:[^'\\]|\\.)*'|'.*|\S*)(?:\s+(?![\w-]+\s*=)\S+)*)", re.S
)
_QUERY_PAIR: Final = re.compile(r"(^|&)([^&=]*)(=)([^&]*)")
# Where a password that was not percent-encoded breaks a URI or a message apart.
_PIECES: Final = re.compile(r"[\s/?#@&=:']+")
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


# Names asyncpg takes in a URI's query beside libpq's (``database`` for ``dbname``): not a
# typo of one of them.
_ASYNCPG_ALSO: Final = frozenset({"database"})
# The keys whose value may be printed: the client's, but its secrets. Any other key's value
# is hidden: a mistyped secret key (``passwd=``, ``pasword=``) is refused by name, and a
# key neither the client nor the sink knows may be a typo of one too far to be named.
_SHOWN_KEYS: Final = (_URI_KEYS | _ASYNCPG_ALSO) - {"password", "sslpassword"}


class UnknownKey(ValueError):
    """Raised by :func:`as_uri` for a key the PostgreSQL client does not take, with the
    one it is close to (``meant``), if any: ``hostt=db`` was refused with the list of all
    twenty keys, and ``postgresql://...?sslmod=disable`` reached the server as a setting,
    which refused "unrecognized configuration parameter" with status 4 (a trial)."""

    def __init__(self, key: str, meant: str | None) -> None:
        said = f"the key {key!r} is not one the PostgreSQL client (asyncpg) takes; "
        if meant is not None:
            said += f"did you mean {meant!r}?"
        else:
            said += "it takes " + ", ".join(sorted(_URI_KEYS))
        super().__init__(said)
        self.key = key
        self.meant = meant


def meant_key(key: str, *, cutoff: float = 0.6) -> str | None:
    """The client's key closest to a mistyped ``key`` (``-`` for ``_`` and case aside), or
    None."""
    close = difflib.get_close_matches(
        key.replace("-", "_").lower(), sorted(_URI_KEYS), n=1, cutoff=cutoff
    )
    return close[0] if close else None


def query_keys(dsn: str) -> list[str]:
    """The keys of a URI's query ([] for key/value pairs: :func:`as_uri` checks each)."""
    if not _is_uri(dsn):
        return []
    return list(parse_qs(urlsplit(dsn).query, keep_blank_values=True))


def hosts(dsn: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The host names or socket directories the DSN points at ("" for libpq's default)."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    if _is_uri(dsn):
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


def _is_uri(dsn: str) -> bool:
    """Whether ``dsn`` is a URI (of any scheme, in any case, as asyncpg reads
    ``POSTGRESQL://`` too), not libpq's key/value pairs."""
    return _SCHEME.match(dsn) is not None


def _host_of(host_port: str) -> str:
    if host_port.startswith("["):  # [IPv6]:port
        return host_port[1 : host_port.find("]")]
    return host_port.rpartition(":")[0] if ":" in host_port else host_port


def is_local(dsn: str, environ: Mapping[str, str] | None = None) -> bool:
    """True when every host is this machine: loopback, a Unix socket, or libpq's default."""
    return all(h in _LOCAL or h.startswith("/") for h in hosts(dsn, environ))


def _uri_userinfo(dsn: str) -> tuple[int, int] | None:
    """Where the password of a URI's ``user:password@`` is, as (start, end) in ``dsn``.

    A password with an unencoded ``/``, ``?`` or ``#`` ends the authority early for
    :func:`urllib.parse.urlsplit` (``postgresql://u:pa/ss@h/d``), so the last ``@`` of the
    whole DSN is taken as its end, when a ``:`` comes before any of those: on the side of
    hiding too much (a query value with an ``@`` after a port) rather than too little."""
    start = dsn.index("://") + 3
    end = dsn.rfind("@")
    if end < start:
        return None
    colon = dsn.find(":", start, end)
    stops = [i for i in (dsn.find(c, start, end) for c in "/?#") if i != -1]
    if colon == -1 or (stops and min(stops) < colon):
        return None
    return colon + 1, end


def _hidden(dsn: str) -> tuple[list[str], list[str]]:
    """(passwords, other values) the DSN gives that :func:`redact` hides, as written
    (quotes taken off): the passwords are the URI's ``user:password@`` and the values of
    ``password`` and ``sslpassword``; the others, the values of keys not in
    :data:`_SHOWN_KEYS`."""
    passwords: list[str] = []
    others: list[str] = []
    if _is_uri(dsn):
        where = _uri_userinfo(dsn)
        if where is not None:
            passwords.append(dsn[where[0] : where[1]])
        pairs = [(m.group(2), m.group(4)) for m in _QUERY_PAIR.finditer(dsn.partition("?")[2])]
    else:
        pairs = [(m.group(1), m.group(3)) for m in _KV_VALUE.finditer(dsn)]
    for key, value in pairs:
        if not _shown(key):
            (passwords if "password" in unquote(key).lower() else others).append(value)
    return [v.strip("'") for v in passwords if v.strip("'")], [
        v.strip("'") for v in others if v.strip("'")
    ]


def _shown(key: str) -> bool:
    """Whether the value of ``key`` (percent-encoded in a URI's query, or not) may be
    printed."""
    return unquote(key) in _SHOWN_KEYS


def redact(dsn: str) -> str:
    """The DSN with every value that may be secret replaced by ``***``: the passwords
    (``user:password@``, ``password``, ``sslpassword``), and the value of any key that is
    not one of the client's (a mistyped ``passwd=secret`` is refused by name, and its
    value must not be printed with it)."""
    if _is_uri(dsn):
        where = _uri_userinfo(dsn)
        if where is not None:
            dsn = f"{dsn[: where[0]]}***{dsn[where[1] :]}"
        base, mark, query = dsn.partition("?")
        return base + mark + _QUERY_PAIR.sub(_hide_pair, query)
    return _KV_VALUE.sub(lambda m: m.group(0) if _shown(m.group(1)) else m.expand(r"\1\2***"), dsn)


def _hide_pair(match: re.Match[str]) -> str:
    """A URI query's ``key=value``, its value hidden unless the key is a shown one."""
    if _shown(match.group(2)):
        return match.group(0)
    return match.expand(r"\1\2\3***")


def hide_secrets(text: str, dsn: str) -> str:
    """``text`` (a client's or the server's message about ``dsn``) without the values
    :func:`redact` hides: a password also in the pieces a parser cut it into at a
    delimiter and quoted (asyncpg says ``invalid literal for int() with base 10: 'pa'`` of
    ``postgresql://u:pa/ss@h``); another hidden value, whole and each of its words, where
    it stands as a word (the server says ``invalid value for parameter "lock_timeout":
    "x1"``), so that a short value (``app``) does not cut holes in the words around it
    (``application_name``). Single characters are left: hiding each ``a`` of a message
    would hide the message."""
    passwords, others = _hidden(dsn)
    pieces: set[str] = set()
    for secret in passwords:
        pieces.update(p for p in (secret, *_PIECES.split(secret)) if len(p) > 1)
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, "***")
    # Each word of such a value too: unquoted with a space (``passwd=S3cr3t PW``), its
    # second half is left over as text that is not key=value, which the parser quotes.
    words = {w for v in others for w in (v, *v.split()) if len(w) > 1}
    for value in sorted(words, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", "***", text)
    return text


def as_uri(dsn: str) -> str:
    """The DSN as the URI asyncpg needs: libpq's key/value form (``host=db dbname=app``,
    what psycopg and ``psql`` users have at hand), which asyncpg does not read, becomes
    ``postgresql://?host=db&dbname=app``; a URI is returned as it is. Raises
    :class:`ValueError` naming a key asyncpg cannot take, text that is not key=value, a
    scheme other than PostgreSQL's, or a port that is not one (asyncpg's own message was
    Python's ``invalid literal for int() with base 10``)."""
    scheme = _SCHEME.match(dsn)
    if scheme is not None:
        if scheme.group(1).lower() not in _POSTGRES_SCHEMES:
            raise ValueError(f"unsupported scheme {scheme.group(0)!r}: use postgresql://")
        parts = urlsplit(dsn)
        netloc = parts.netloc.rpartition("@")[2]
        # A password's unencoded / ? or # ends the authority inside it: what looks like
        # the port is then a piece of the password (the message hides it as ***).
        _check_ports([_port_of(h) for h in netloc.split(",")])
        _check_ports(parse_qs(parts.query).get("port", []))
        _check_query_keys(query_keys(dsn))
        return dsn
    pairs = _KV.findall(dsn)
    leftover = _KV.sub("", dsn).strip()
    if leftover or not pairs:
        raise ValueError(f"{leftover or dsn!r} is not key=value")
    query: list[tuple[str, str]] = []
    for key, raw in pairs:
        if key not in _URI_KEYS:
            raise UnknownKey(key, meant_key(key))
        value = raw
        if raw.startswith("'") and raw.endswith("'") and len(raw) > 1:
            value = re.sub(r"\\(.)", r"\1", raw[1:-1])
        query.append((key, value))
    _check_ports([value for key, value in query if key == "port"])
    return "postgresql://?" + urlencode(query)


# The keys whose value is a file the client reads before it connects. One that is missing
# or unreadable failed inside asyncpg as an OSError (``FileNotFoundError(2, 'No such file or
# directory')``, no name), which read as a server that does not answer: status 4 and "is
# the server running?" for a typo in a path (a security trial).
_FILE_KEYS: Final = ("sslrootcert", "sslcert", "sslkey", "sslcrl")


class UnreadableFile(ValueError):
    """Raised by :func:`check_files` for a file the DSN names that the client cannot read:
    the message names the key and the path, what the operator corrects."""


def check_files(uri: str) -> None:
    """Raises :class:`UnreadableFile` naming the key and the path when a file the DSN's query
    names (:data:`_FILE_KEYS`; ``uri`` as :func:`as_uri` returns it) is not a readable file,
    or is one the client cannot load, before any connection is tried. ``passfile`` is not
    checked: libpq ignores a missing one, and so does asyncpg."""
    query = parse_qs(urlsplit(uri).query)
    for key in _FILE_KEYS:
        for path in query.get(key, []):
            if not os.path.exists(path):
                problem = "does not exist"
            elif not os.path.isfile(path):
                problem = "is not a file"
            elif not os.access(path, os.R_OK):
                problem = "cannot be read by this user"
            else:
                continue
            raise UnreadableFile(f"its {key} {path!r} {problem} (relative paths start at the cwd)")
    _check_loads(query)


# The TLS modes in which asyncpg loads the DSN's files, in its order (``sslmode``'s default
# is prefer): CA and CRL files from require on, the client's certificate from allow on.
_SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _check_loads(query: dict[str, list[str]]) -> None:
    """Loads each TLS file of the DSN's query as asyncpg will. One that exists but is no
    certificate (a key given as the CA, a file cut short) failed inside asyncpg's own
    reading of the DSN as an ``SSLError``, which read as a server that does not answer:
    status 4 and "is the server running?" (a security trial)."""
    mode = (query.get("sslmode") or [os.environ.get("PGSSLMODE") or "prefer"])[-1]
    level = _SSL_MODES.index(mode) if mode in _SSL_MODES else 0  # asyncpg judges a typo
    if level < 1:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if level >= _SSL_MODES.index("require"):
        for key, holds in (("sslrootcert", "CA certificates"), ("sslcrl", "a revocation list")):
            for path in query.get(key, [])[-1:]:
                try:
                    context.load_verify_locations(cafile=path)
                except ssl.SSLError as exc:
                    raise UnreadableFile(
                        f"its {key} {path!r} could not be loaded as {holds} in PEM form "
                        f"({_reason(exc)})"
                    ) from None
    certs, keys = query.get("sslcert", []), query.get("sslkey", [])
    if certs:
        password = (query.get("sslpassword") or [""])[-1]
        try:
            # A callable, as asyncpg gives it: never a prompt on the terminal for a key's
            # passphrase, which a service has no one to answer.
            context.load_cert_chain(certs[-1], keys[-1] if keys else None, lambda: password)
        except ssl.SSLError as exc:
            key = f" and its sslkey {keys[-1]!r}" if keys else ""
            raise UnreadableFile(
                f"its sslcert {certs[-1]!r}{key} could not be loaded as a client certificate "
                f"and its key in PEM form ({_reason(exc)}): check that the key belongs to the "
                "certificate, and the sslpassword if the key is encrypted"
            ) from None


def _reason(exc: ssl.SSLError) -> str:
    return exc.reason or str(exc)  # OpenSSL's own word for it, NO_CERTIFICATE_OR_CRL_FOUND


def has_password(dsn: str) -> bool:
    """Whether ``dsn`` carries a password (``user:PW@`` of a URI, or a ``password`` key of
    its query or of key/value pairs): on a command line, every user of the machine reads it
    with ``ps``, so the sink warns (PGPASSWORD keeps it off). A DSN that cannot be parsed is
    judged by its text, as the connection then fails with a message of its own."""
    if _SCHEME.match(dsn) is not None:
        parts = urlsplit(dsn)
        if ":" in parts.netloc.rpartition("@")[0]:
            return True
        return "password" in {k.lower() for k in parse_qs(parts.query)}
    return any(key.lower() == "password" for key, _ in _KV.findall(dsn))


def _check_query_keys(keys: list[str]) -> None:
    """A URI's query key that is not the client's goes to the server as a setting (asyncpg
    passes them on, as ``?search_path=app``), so only one very close to a client's key is
    refused here, as a typo (no setting of PostgreSQL 15 is that close to one); the server
    judges the others."""
    for key in keys:
        if key in _URI_KEYS or key in _ASYNCPG_ALSO:
            continue
        meant = meant_key(key, cutoff=0.8)
        if meant is not None:
            raise UnknownKey(key, meant)


def _port_of(host_port: str) -> str:
    """The port of a URI's ``host:port`` or ``[IPv6]:port``, "" when it has none."""
    if host_port.startswith("["):
        return host_port[host_port.find("]") + 1 :].removeprefix(":")
    return host_port.partition(":")[2]  # as asyncpg reads it: after the first colon


def _check_ports(given: list[str]) -> None:
    """Each port (a value may list several, ``5432,5433``) a number from 1 to 65535, or
    empty (libpq's default, 5432)."""
    for port in (p for value in given for p in value.split(",")):
        if port and not (port.isdecimal() and 1 <= int(port) <= 65535):
            raise ValueError(f"the port {port!r} is not a number from 1 to 65535, e.g. 5432")

"""PostgreSQL connection strings: libpq's key/value form turned into the URI asyncpg reads,
passwords kept out of messages, and whether the server is this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from asyncpg.connect_utils import _parse_connect_dsn_and_args

from stream_expiry.errors import ConfigurationError, StoreError
from stream_expiry.sinks.dsn import (
    UnknownKey,
    as_uri,
    check_files,
    hide_secrets,
    is_local,
    redact,
)
from stream_expiry.sinks.postgres import PostgresStore

if TYPE_CHECKING:
    from pathlib import Path


def parsed(dsn: str) -> tuple[Any, Any]:
    """(addresses, parameters) as asyncpg reads ``dsn`` (its private parser: the test
    checks our URI against the client that takes it)."""
    addrs, params = _parse_connect_dsn_and_args(
        dsn=dsn, host=None, port=None, user=None, password=None, passfile=None,
        database=None, ssl=None, direct_tls=None, server_settings=None,
        target_session_attrs=None, krbsrvname=None, gsslib=None, service=None,
        servicefile=None,
    )  # fmt: skip
    return addrs, params


def test_key_value_pairs_reach_asyncpg_as_libpq_reads_them() -> None:
    dsn = r"host=db.example port=6543 dbname='my db' user=sink password='it\'s a \\ y'"
    addrs, params = parsed(as_uri(dsn))
    assert addrs == [("db.example", 6543)]
    assert (params.database, params.user) == ("my db", "sink")
    assert params.password == "it's a \\ y"


def test_a_socket_directory_and_application_name_pass() -> None:
    addrs, params = parsed(as_uri("host=/var/run/postgresql dbname=test application_name=s1"))
    assert addrs == ["/var/run/postgresql/.s.PGSQL.5432"]
    assert params.server_settings == {"application_name": "s1"}


@pytest.mark.parametrize("uri", ["postgresql://u@h:1/d", "postgres://h/d?sslmode=require"])
def test_a_uri_is_taken_as_it_is(uri: str) -> None:
    assert as_uri(uri) == uri


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("host=x connect_timeout=3", "the key .connect_timeout. is not one"),
        ("notadsn", "'notadsn' is not key=value"),
        ("host=x junk", "'junk' is not key=value"),
        ("", "'' is not key=value"),
        ("mysql://u@h/db", "unsupported scheme 'mysql://': use postgresql://"),
        ("postgresql://u@h:abc/db", "the port 'abc' is not a number from 1 to 65535, e.g. 5432"),
        ("postgres://u@h:5432,h2:99999/db", "the port '99999' is not"),
        ("postgresql://u@[::1]:5x/db", "the port '5x' is not"),
        ("postgresql://u@h/db?port=x", "the port 'x' is not"),
        ("host=h port=abc", "the port 'abc' is not"),
        ("host=h port='5432,x'", "the port 'x' is not"),
    ],
)
def test_what_the_client_cannot_take_is_named(dsn: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        as_uri(dsn)


@pytest.mark.parametrize(
    ("dsn", "key", "meant"),
    [
        ("hostt=127.0.0.1 dbname=test", "hostt", "host"),
        ("host=h dbnam=test", "dbnam", "dbname"),
        ("host=h Port=5432", "Port", "port"),
        ("host=h ssl-mode=disable", "ssl-mode", "sslmode"),
        ("host=h connect_timeout=3", "connect_timeout", None),  # libpq's, not asyncpg's
        ("postgresql://h/test?sslmod=disable", "sslmod", "sslmode"),
        ("postgresql://h/test?sslmode=disable&usr=me", "usr", "user"),
        ("postgresql://h/test?target_session_attr=any", "target_session_attr",
         "target_session_attrs"),
    ],
)  # fmt: skip
def test_an_unknown_key_is_named_with_the_one_it_is_close_to(
    dsn: str, key: str, meant: str | None
) -> None:
    """A trial: ``hostt=`` was refused with the list of every key and a recipe of the DSN's
    forms, and ``?sslmod=`` reached the server as a setting (its refusal: status 4)."""
    with pytest.raises(UnknownKey) as failed:
        as_uri(dsn)
    assert (failed.value.key, failed.value.meant) == (key, meant)
    said = str(failed.value)
    assert said.startswith(f"the key {key!r} is not one the PostgreSQL client (asyncpg) takes; ")
    if meant is not None:
        assert said.endswith(f"; did you mean {meant!r}?")
    else:
        assert said.endswith("; it takes application_name, dbname, gsslib, host, krbsrvname, "
                             "passfile, password, port, service, ssl_max_protocol_version, "
                             "ssl_min_protocol_version, sslcert, sslcrl, sslkey, sslmode, "
                             "sslnegotiation, sslpassword, sslrootcert, target_session_attrs, "
                             "user")  # fmt: skip


@pytest.mark.parametrize(
    "dsn",
    [
        # Keys asyncpg passes on to the server as settings, and its own name for dbname.
        "postgresql://h/test?search_path=app&statement_timeout=5000",
        "postgresql://h/test?database=test&application_name=s1&options=x",
    ],
)
def test_a_uris_other_keys_are_left_to_the_server(dsn: str) -> None:
    assert as_uri(dsn) == dsn


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u@h/db",
        "postgres://u@h:5432,h2:5433/db",
        "postgresql://u@[::1]:5432/db",
        "postgresql://u@h:/db",
        "POSTGRESQL://u@h/db",
        "host=h port=5432",
    ],
)
def test_ports_and_schemes_asyncpg_takes_pass(dsn: str) -> None:
    parsed(as_uri(dsn))


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("mysql://u:S3cr3tPW@h/db", "(unsupported scheme 'mysql://': use postgresql://)"),
        ("postgresql://u:S3cr3tPW@h:abc/db", "(the port 'abc' is not a number from 1 to 65535"),
    ],
)
@pytest.mark.asyncio
async def test_a_wrong_scheme_or_port_is_said_in_words_without_the_password(
    dsn: str, says: str
) -> None:
    """A user trial: ``mysql://...`` was said to be "not key=value", and a port "abc" gave
    Python's "invalid literal for int() with base 10"."""
    with pytest.raises(ConfigurationError) as failed:
        await PostgresStore(dsn, connect_timeout_s=2).open()
    said = str(failed.value)
    assert says in said
    assert "S3cr3tPW" not in said
    assert "invalid literal" not in said


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:s3cret@h/d", "postgresql://u:***@h/d"),
        ("postgresql://h/d?password=s3cret&sslmode=require", "postgresql://h/d?password=***&sslmode=require"),
        ("host=h password=s3cret dbname=d", "host=h password=*** dbname=d"),
        ("host=h password='s3 cret' dbname=d", "host=h password=*** dbname=d"),
        ("postgresql:///d", "postgresql:///d"),
        # A client key's passphrase is a password too.
        ("postgresql://u@h/d?sslpassword=k3y&sslmode=require", "postgresql://u@h/d?sslpassword=***&sslmode=require"),
        ("host=h sslpassword=k3y", "host=h sslpassword=***"),
        # Not percent-encoded: urlsplit ends the authority at the / ? or #.
        ("postgresql://u:pa/ss@h:5432/d", "postgresql://u:***@h:5432/d"),
        ("postgresql://u:pa#ss@h/d", "postgresql://u:***@h/d"),
        ("postgresql://u:pa?ss@h/d?sslmode=require", "postgresql://u:***@h/d?sslmode=require"),
        ("postgresql://u:p@ss@h/d", "postgresql://u:***@h/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        # Another scheme's password, or PostgreSQL's in capitals, as well.
        ("mysql://u:s3cret@h/d", "mysql://u:***@h/d"),
        ("POSTGRESQL://u:s3cret@h/d", "POSTGRESQL://u:***@h/d"),
        # A quote left open runs to the end, as libpq reads it.
        ("host=h password='s3 cret dbname=d", "host=h password=***"),
        # Unquoted with a space: its second half is not key=value, and hidden with it.
        ("host=h password=s3 cret dbname=d", "host=h password=*** dbname=d"),
        # A mistyped secret key, and any key that is not the client's: its value is hidden.
        ("postgresql://u@h/test?passwd=s3cret", "postgresql://u@h/test?passwd=***"),
        ("postgresql://u@h/test?pass%77ord=s3cret", "postgresql://u@h/test?pass%77ord=***"),
        ("host=h pasword=s3cret dbname=d", "host=h pasword=*** dbname=d"),
        ("host=h Password='s3 cret' dbname=d", "host=h Password=*** dbname=d"),
        ("host=h pw=s3cret", "host=h pw=***"),
        ("postgresql://h/d?search_path=app&sslmode=require&database=d&application_name=a",
         "postgresql://h/d?search_path=***&sslmode=require&database=d&application_name=a"),
    ],
)  # fmt: skip
def test_passwords_never_show(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown


def test_a_hidden_value_is_hidden_in_a_message_where_it_stands_as_a_word() -> None:
    """The server quotes a setting's value it refuses; a short value is hidden whole, not
    inside the words around it."""
    dsn = "postgresql://h/d?lock_timeout=app&password=s3cret"
    said = hide_secrets('invalid value for "lock_timeout": "app"; application s3cret', dsn)
    assert said == 'invalid value for "lock_timeout": "***"; application ***'


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://bob:S3cr/etPW@127.0.0.1:1/test",
        "postgresql://bob:S3cr#etPW@127.0.0.1:1/test",
        "postgresql://bob@127.0.0.1:1/test?sslpassword=S3cr3tPW&sslmode=bogus",
        "host=127.0.0.1 password='S3cr3t PW dbname=test",
        "host=127.0.0.1 password=S3cr3tPW bogus=1",
        # A secret key mistyped is refused by name, before connecting: its value is not
        # shown with it (it was, whole, as the DSN the message printed).
        "postgresql://bob@127.0.0.1:1/test?passwd=S3cr3tPW",
        "postgresql://bob@127.0.0.1:1/test?sslpasword=S3cr3tPW&sslmode=require",
        "host=127.0.0.1 pasword=S3cr3tPW dbname=test",
        "host=127.0.0.1 Password='S3cr3t PW' dbname=test",
        "host=127.0.0.1 pw=S3cr3tPW dbname=test",
        # Unquoted with a space: "'PW' is not key=value" showed its second half.
        "host=127.0.0.1 password=S3cr3t PW dbname=test",
        # So did a mistyped secret key's, whose value is hidden as a word, not in pieces.
        "host=127.0.0.1 pasword=S3cr3t PW dbname=test",
        "host=127.0.0.1 passwd=S3cr3t PW",
    ],
)
@pytest.mark.asyncio
async def test_a_dsn_the_client_cannot_use_is_said_without_its_password(dsn: str) -> None:
    """What the sink says of a DSN it cannot use: the password was shown whole when it was
    a key's passphrase (``sslpassword``) or not percent-encoded, and in pieces when the
    client's own message quoted what it could not parse."""
    with pytest.raises((ConfigurationError, StoreError)) as failed:
        await PostgresStore(dsn, connect_timeout_s=2).open()
    said = str(failed.value)
    assert "PostgreSQL" in said
    for piece in ("S3cr", "etPW", "S3cr3tPW", "S3cr3t", "PW"):
        assert piece not in said, said


@pytest.mark.parametrize(
    ("dsn", "local"),
    [
        ("postgresql://127.0.0.1:5432/test", True),
        ("host=/var/run/postgresql dbname=test", True),
        ("dbname=test", True),  # libpq's default: the local socket
        ("host=db.example dbname=test", False),
        ("postgresql://localhost,db.example/test", False),
    ],
)
def test_local_means_every_host_is_this_machine(dsn: str, local: bool) -> None:
    assert is_local(dsn, environ={}) is local


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("sslmode=verify-full&sslrootcert={missing}", "its sslrootcert '{missing}' does not exist"),
        ("sslmode=verify-full&sslrootcert={dir}", "its sslrootcert '{dir}' is not a file"),
        (
            "sslmode=require&sslcert={cert}&sslkey={missing}",
            "its sslkey '{missing}' does not exist",
        ),
    ],
)
@pytest.mark.asyncio
async def test_a_tls_file_the_dsn_names_that_cannot_be_read_is_a_setting_to_correct(
    tmp_path: Path, query: str, says: str
) -> None:
    """A security trial: a typo in ``sslrootcert`` stopped the sink with status 4 and
    "PostgreSQL is not reachable ... FileNotFoundError(2, 'No such file or directory'); is
    the server running?", naming neither the key nor the file, against a server that was up
    (PostgreSQL at 127.0.0.1:5432). It is a setting (status 2), said with the key and path,
    before any connection is tried; the password stays hidden."""
    cert = tmp_path / "client.pem"
    cert.write_text("not read: the key is missing first\n")
    names = {"missing": str(tmp_path / "nope.pem"), "dir": str(tmp_path), "cert": str(cert)}
    dsn = "postgresql://u:S3cr3tPW@127.0.0.1:5432/test?" + query.format(**names)
    with pytest.raises(ConfigurationError) as failed:
        await PostgresStore(dsn, connect_timeout_s=2).open()
    said = str(failed.value)
    assert says.format(**names) in said, said
    assert "S3cr3tPW" not in said
    assert "is the server running" not in said


def _tls_files(tmp_path: Path) -> dict[str, str]:
    """Throwaway certificates and keys, a key encrypted with the passphrase ``s3cret``,
    and a file that is no PEM, by the names the DSNs below give them."""
    from stream_expiry.testing.tls import make_pki

    from .test_kafka_settings import _encrypted_copy

    pki = make_pki(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    return {
        "ca": pki.ca, "client_key": pki.client_key, "client_cert": pki.client_cert,
        "server_key": pki.server_key, "garbage": str(garbage),
        "encrypted": str(_encrypted_copy(pki.client_key, tmp_path / "encrypted.key")),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("query", "says"),
    [
        (
            "sslmode=verify-full&sslrootcert={client_key}",
            "its sslrootcert '{client_key}' could not be loaded as CA certificates in PEM form "
            "(NO_CERTIFICATE_OR_CRL_FOUND)",
        ),
        (
            "sslmode=verify-ca&sslcrl={garbage}",
            "its sslcrl '{garbage}' could not be loaded as a revocation list in PEM form",
        ),
        (
            "sslmode=require&sslcert={client_cert}&sslkey={server_key}",
            "its sslcert '{client_cert}' and its sslkey '{server_key}' could not be loaded as a "
            "client certificate and its key in PEM form (KEY_VALUES_MISMATCH): check that the "
            "key belongs to the certificate",
        ),
        (
            "sslcert={client_cert}&sslkey={encrypted}&sslpassword=wrong",  # prefer: loaded
            "and the sslpassword if the key is encrypted",
        ),
    ],
)
@pytest.mark.asyncio
async def test_a_tls_file_the_client_cannot_load_is_a_setting_to_correct(
    tmp_path: Path, query: str, says: str
) -> None:
    """A security trial: a CA file that exists but holds no certificate (a key given for
    the CA) stopped the sink with status 4 and "PostgreSQL is not reachable ... SSLError(136,
    '[X509: NO_CERTIFICATE_OR_CRL_FOUND] ...'); is the server running and listening there?",
    against a server that was up: asyncpg loads the DSN's files before it connects. It is a
    setting (status 2), said with the key and the path, and never a prompt for a key's
    passphrase."""
    names = _tls_files(tmp_path)
    dsn = "postgresql://u:S3cr3tPW@127.0.0.1:5432/test?" + query.format(**names)
    with pytest.raises(ConfigurationError) as failed:
        await PostgresStore(dsn, connect_timeout_s=2).open()
    said = str(failed.value)
    assert says.format(**names) in said, said
    assert "S3cr3tPW" not in said


@pytest.mark.parametrize(
    "query",
    [
        "sslmode=prefer&sslrootcert={garbage}",  # a CA file is read from require on
        "sslmode=disable&sslcert={garbage}",  # no TLS: no file read
        "sslmode=verify-full&sslrootcert={ca}&sslcert={client_cert}&sslkey={client_key}",
        "sslmode=require&sslcert={client_cert}&sslkey={encrypted}&sslpassword=s3cret",
    ],
)
def test_tls_files_the_client_would_not_read_or_reads_well_pass_the_check(
    tmp_path: Path, query: str
) -> None:
    """The check reads what asyncpg reads, in the modes it reads them: a DSN that connects
    is not refused for a file its mode never loads."""
    names = _tls_files(tmp_path)
    check_files(as_uri("postgresql://127.0.0.1:5432/test?" + query.format(**names)))


@pytest.mark.parametrize(
    ("dsn", "holds"),
    [
        ("postgresql://u:S3cr3tPW@127.0.0.1:1/test", True),
        ("postgresql://u:@127.0.0.1:1/test", True),
        ("postgresql://127.0.0.1:1/test?user=u&password=S3cr3tPW", True),
        ("host=127.0.0.1 port=1 user=u password = S3cr3tPW", True),
        ("postgresql://u@127.0.0.1:1/test?sslpassword=k3y&sslmode=require", False),
        ("postgresql://u@127.0.0.1:1/test", False),
        ("host=127.0.0.1 port=1 user=u", False),
    ],
)
def test_a_password_on_the_command_line_is_warned_of_without_showing_it(
    dsn: str, holds: bool
) -> None:
    """A security trial: ``sink postgres --dsn postgresql://u:PW@...`` ran without a word,
    while ``ps`` showed the password to every user of the machine (the help says to use
    PGPASSWORD, but nothing said so to one who did not read it)."""
    done = subprocess.run(
        [sys.executable, "-m", "stream_expiry", "sink", "postgres", "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
        env={**os.environ, "STREAM_EXPIRY_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    assert done.returncode == 4, done.stderr  # port 1: PostgreSQL not reachable
    warned = "the --dsn holds a password" in done.stderr
    assert warned is holds, done.stderr
    assert "S3cr3tPW" not in done.stderr

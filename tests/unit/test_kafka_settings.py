"""[kafka] and the topic settings: parsing with lines, the environment on top, the options
aiokafka gets, the topic configs, and CreateTopics answers that must stop the start."""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import ssl
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.protocol.admin import CreateTopicsResponse_v3

from stream_expiry import archive
from stream_expiry.commits import COMMIT_TIMEOUT_S
from stream_expiry.config import ConfigError, parse_config
from stream_expiry.errors import BrokerError, ConfigurationError
from stream_expiry.kafka import (
    PRODUCER_REQUEST_TIMEOUT_MS,
    check_created,
    client_options,
    counting_partitions,
)
from stream_expiry.kafka_settings import (
    MAX_MESSAGE_BYTES,
    Connection,
    KafkaSecurity,
    TopicSettings,
    check_security_value,
    connection_for,
    role_configs,
    security_from_environment,
    topic_configs,
)
from stream_expiry.rekey import Rekeyer
from stream_expiry.service import Service
from stream_expiry.sinks import add_sink_parser
from stream_expiry.sinks.command import build_sink
from stream_expiry.sinks.framework import Sink, SinkConfig
from stream_expiry.sinks.sqlite import SQLiteStore

if TYPE_CHECKING:
    from pathlib import Path

DAY = 86_400_000
SASL = """\
[kafka]
security_protocol = "sasl_ssl"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "svc"
"""


def test_defaults_are_plaintext_and_defensible_topics() -> None:
    config = parse_config("")
    assert config.kafka == KafkaSecurity()
    assert config.topic_settings == TopicSettings()
    ts = config.topic_settings
    assert (ts.replication_factor, ts.min_insync) == (3, 2)
    assert (ts.max_compaction_lag_ms, ts.segment_ms, ts.delete_retention_ms) == (DAY, DAY, DAY)
    assert (ts.retention_ms, ts.evidence_retention_ms) == (7 * DAY, 400 * DAY)


def test_environment_beats_the_file_and_supplies_the_secret() -> None:
    config = parse_config(SASL, path="app.toml")
    env = {
        "STREAM_EXPIRY_KAFKA_SASL_PASSWORD": "s3cret",
        "STREAM_EXPIRY_KAFKA_SASL_USERNAME": "from-env",
        "STREAM_EXPIRY_KAFKA_SASL_MECHANISM": "",  # empty counts as unset
    }
    conn = connection_for("k:9093", config.kafka, env)
    sec = conn.security
    assert (sec.security_protocol, sec.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (sec.sasl_username, sec.sasl_password) == ("from-env", "s3cret")
    assert "s3cret" not in repr(conn)
    assert str(conn) == "k:9093"


def test_sasl_without_password_names_the_line_and_the_variable() -> None:
    config = parse_config(SASL, path="app.toml")
    with pytest.raises(ConfigurationError) as err:
        security_from_environment(config.kafka, {})
    assert str(err.value).startswith("app.toml line 2 ([kafka] security_protocol): ")
    assert "sasl_password" in str(err.value)
    assert "$STREAM_EXPIRY_KAFKA_SASL_PASSWORD" in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[kafka]\nsasl_mechanism = "GSSAPI"\n',
            "<string> line 2: key 'sasl_mechanism' in [kafka] must be one of PLAIN, "
            "SCRAM-SHA-256, SCRAM-SHA-512, got 'GSSAPI'",
        ),
        (
            '[kafka]\nsecurity_protocol = "TLS"\n',
            "<string> line 2: key 'security_protocol' in [kafka] must be one of PLAINTEXT",
        ),
        (
            '[kafka]\n\nssl_cafile = "/nonexistent/ca.pem"\n',
            "<string> line 3: key 'ssl_cafile' in [kafka] file '/nonexistent/ca.pem' does not",
        ),
        ("[kafka]\nsasl_user = 'x'\n", "<string> line 2: unknown key 'sasl_user' in [kafka]"),
        ("[kafka]\nsasl_password = 1\n", "<string> line 2: key 'sasl_password' in [kafka] must"),
        (
            "[topics]\nreplication_factor = 1\nmin_insync_replicas = 2\n",
            "<string> line 3: min_insync_replicas (2) in [topics] is larger than",
        ),
        ("[topics]\nretention = 'soon'\n", "<string> line 2: invalid duration for key 'retention'"),
        ("[topics]\npartitions = 0\n", "<string> line 2: key 'partitions' in [topics] must be"),
    ],
)
def test_bad_values_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    ("security", "fragment"),
    [
        (KafkaSecurity(sasl_username="u"), "sasl_username is set but security_protocol is"),
        (KafkaSecurity(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p"),
         "needs sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"),
        (KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                       sasl_password="p"), "needs sasl_username"),
    ],
)  # fmt: skip
def test_contradictions_are_fatal(security: KafkaSecurity, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        security.check()


def test_files_without_tls_and_a_key_without_cert_are_fatal(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    env = {"STREAM_EXPIRY_KAFKA_SSL_CAFILE": str(pem)}
    with pytest.raises(ConfigurationError, match="does not use TLS"):
        security_from_environment(KafkaSecurity(), env)
    env = {
        "STREAM_EXPIRY_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAM_EXPIRY_KAFKA_SSL_KEYFILE": str(pem),
    }
    with pytest.raises(ConfigurationError, match="ssl_keyfile needs ssl_certfile"):
        security_from_environment(KafkaSecurity(), env)
    with pytest.raises(ConfigurationError, match=r"\$STREAM_EXPIRY_KAFKA_SSL_CAFILE = '/no"):
        security_from_environment(KafkaSecurity(), {"STREAM_EXPIRY_KAFKA_SSL_CAFILE": "/no"})


def test_sasl_options_reach_aiokafka() -> None:
    conn = Connection(
        "k1:9093,k2:9093",
        KafkaSecurity(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username="svc",
            sasl_password="pw",
        ),
    )
    options = client_options(conn)
    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED  # system CAs, hostname checked
    assert context.check_hostname
    assert options == {
        "bootstrap_servers": "k1:9093,k2:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "pw",
    }
    assert client_options("k:9092") == {
        "bootstrap_servers": "k:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_unloadable_tls_files_are_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    conn = Connection("k:9093", KafkaSecurity(security_protocol="SSL", ssl_cafile=str(bad)))
    with pytest.raises(ConfigurationError, match="cannot load the TLS files ssl_cafile"):
        client_options(conn)


def test_an_encrypted_key_is_said_so_and_never_asked_for(tmp_path: Path) -> None:
    """OpenSSL prompted for the passphrase on the terminal (a command run from one waited
    there for good; without one it failed with "Invalid argument")."""
    from stream_expiry.testing.tls import make_pki

    pki = make_pki(tmp_path)
    encrypted = _encrypted_copy(pki.client_key, tmp_path / "encrypted.key")
    sec = KafkaSecurity(
        security_protocol="SSL", ssl_certfile=pki.client_cert, ssl_keyfile=str(encrypted)
    )
    with pytest.raises(ConfigurationError) as err:
        client_options(Connection("k:9093", sec))
    assert "the key is encrypted, and stream-expiry takes no passphrase" in str(err.value)


def test_topic_configs_bound_physical_deletion() -> None:
    config = parse_config(
        "[topics]\nreplication_factor = 1\nretention = '2d'\nmax_compaction_lag = '6h'\n"
    )
    configs = topic_configs(config)
    t = config.topics
    assert set(configs) == {
        *t.inputs, t.policies, t.stamped, t.tombstones, t.dlq, t.receipts, t.holds, t.audit
    }  # fmt: skip
    assert configs[t.stamped] == {
        "cleanup.policy": "compact",
        "max.compaction.lag.ms": str(6 * 3_600_000),
        "segment.ms": str(DAY),
        "delete.retention.ms": str(DAY),
        "min.insync.replicas": "1",
        "unclean.leader.election.enable": "false",
        "max.message.bytes": str(MAX_MESSAGE_BYTES),
    }
    assert configs[t.holds]["cleanup.policy"] == "compact"
    assert "max.message.bytes" not in configs[t.receipts]  # evidence carries no payload
    for name in (*t.inputs, t.tombstones, t.dlq):
        assert configs[name]["retention.ms"] == str(2 * DAY)
        assert configs[name]["cleanup.policy"] == "delete"
    for name in (t.receipts, t.audit):
        assert configs[name]["retention.ms"] == str(400 * DAY)


def test_failed_topic_creation_raises_the_brokers_error() -> None:
    """The answer Kafka gives for replication factor 3 on one broker (Tansu accepts it)."""
    response = CreateTopicsResponse_v3(
        throttle_time_ms=0,
        topic_errors=[
            ("expiry.stamped", 38, "Replication factor: 3 larger than available brokers: 1."),
            ("expiry.dlq", 36, "Topic 'expiry.dlq' already exists."),
            ("conversations", 0, None),
        ],
    )
    with pytest.raises(BrokerError) as err:
        check_created(response)
    message = str(err.value)
    assert "'expiry.stamped': INVALID_REPLICATION_FACTOR (Replication factor: 3 larger" in message
    assert "expiry.dlq" not in message  # already there: another instance made it
    assert "replication_factor to at most the number of brokers" in message
    check_created(CreateTopicsResponse_v3(throttle_time_ms=0, topic_errors=[("a", 36, None)]))


def test_every_role_gets_exactly_its_configs() -> None:
    """The README's topic table, in full: a key lost or added here changes what a broker
    keeps on disk."""
    s = TopicSettings(replication_factor=2, segment_ms=7, retention_ms=11)
    s = replace(s, max_compaction_lag_ms=13, delete_retention_ms=17, evidence_retention_ms=19)
    both = {
        "min.insync.replicas": "1",
        "unclean.leader.election.enable": "false",
        "segment.ms": "7",
    }
    big = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
    assert role_configs("compacted", s) == {
        **both, **big, "cleanup.policy": "compact", "max.compaction.lag.ms": "13",
        "delete.retention.ms": "17",
    }  # fmt: skip
    assert role_configs("data", s) == {
        **both, **big, "cleanup.policy": "delete", "retention.ms": "11"
    }  # fmt: skip
    assert role_configs("evidence", s) == {**both, "cleanup.policy": "delete", "retention.ms": "19"}


def _error(security: KafkaSecurity, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigurationError) as err:
        security_from_environment(security, env or {})
    return str(err.value)


def test_each_contradiction_names_where_the_value_came_from_and_what_to_do(
    tmp_path: Path,
) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    from_file = parse_config('[kafka]\n\nsasl_username = "svc"\n', path="app.toml").kafka
    assert _error(from_file) == (
        "app.toml line 3 ([kafka] sasl_username): sasl_username is set but security_protocol "
        "is PLAINTEXT, which sends no credentials; set security_protocol to SASL_SSL (or "
        "SASL_PLAINTEXT), or remove it"
    )
    assert _error(KafkaSecurity(), {"STREAM_EXPIRY_KAFKA_SSL_CERTFILE": str(pem)}) == (
        "$STREAM_EXPIRY_KAFKA_SSL_CERTFILE: ssl_certfile is set but security_protocol is "
        "PLAINTEXT, which does not use TLS; set security_protocol to SSL (or SASL_SSL), or "
        "remove it"
    )
    env = {
        "STREAM_EXPIRY_KAFKA_SECURITY_PROTOCOL": "ssl",
        "STREAM_EXPIRY_KAFKA_SSL_KEYFILE": str(pem),
    }
    assert _error(KafkaSecurity(), env) == (
        "$STREAM_EXPIRY_KAFKA_SSL_KEYFILE: ssl_keyfile needs ssl_certfile (the client "
        "certificate the key belongs to)"
    )
    env = {"STREAM_EXPIRY_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"}
    assert _error(KafkaSecurity(), env) == (
        "$STREAM_EXPIRY_KAFKA_SECURITY_PROTOCOL: security_protocol SASL_PLAINTEXT needs "
        "sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512): set it under [kafka] in the "
        "config file or in $STREAM_EXPIRY_KAFKA_SASL_MECHANISM"
    )
    env = {
        "STREAM_EXPIRY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAM_EXPIRY_KAFKA_SASL_MECHANISM": "PLAIN",
    }
    assert _error(KafkaSecurity(), env) == (
        "$STREAM_EXPIRY_KAFKA_SECURITY_PROTOCOL: security_protocol SASL_SSL needs "
        "sasl_username: set it under [kafka] in the config file or in "
        "$STREAM_EXPIRY_KAFKA_SASL_USERNAME"
    )
    # A setting nobody made is named as the default it is.
    assert KafkaSecurity().origin("security_protocol") == "[kafka] security_protocol (default)"
    assert _error(KafkaSecurity(sasl_mechanism="PLAIN")).startswith(
        "[kafka] sasl_mechanism (default): sasl_mechanism is set"
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SASL_PASSWORD", " \t", "$STREAM_EXPIRY_KAFKA_SASL_PASSWORD = (hidden): must be a "
         "non-empty string"),
        ("SASL_USERNAME", "  ", "$STREAM_EXPIRY_KAFKA_SASL_USERNAME = '  ': must be a non-empty "
         "string"),
        ("SASL_MECHANISM", "GSSAPI", "$STREAM_EXPIRY_KAFKA_SASL_MECHANISM = 'GSSAPI': must be "
         "one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, got 'GSSAPI' (GSSAPI and OAUTHBEARER are "
         "not supported)"),
    ],
)  # fmt: skip
def test_a_bad_variable_is_named_and_a_password_never_shown(
    name: str, value: str, message: str
) -> None:
    assert _error(KafkaSecurity(), {f"STREAM_EXPIRY_KAFKA_{name}": value}) == message


def test_a_password_of_the_wrong_type_is_not_shown() -> None:
    """An unquoted number is a type error, and still the password."""
    with pytest.raises(ConfigError) as err:
        parse_config(SASL + "sasl_password = 12345678\n", path="app.toml")
    assert str(err.value) == (
        "app.toml line 5: key 'sasl_password' in [kafka] must be a string, got an integer (hidden)"
    )


def test_an_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Root reads any file, so the permission check is answered "no" here.)"""
    pem = tmp_path / "key.pem"
    pem.write_text("x")
    monkeypatch.setattr(os, "access", lambda path, mode: path != str(pem))
    with pytest.raises(ValueError, match=r"^file '.*key.pem' is not readable by this process$"):
        check_security_value("ssl_keyfile", str(pem))


def test_without_variables_the_files_settings_are_kept_as_they_are() -> None:
    base = parse_config(SASL + 'sasl_password = "p"\n', path="app.toml").kafka
    merged = security_from_environment(base, {"STREAM_EXPIRY_KAFKA_SASL_USERNAME": ""})
    assert merged == base
    assert merged.origin("sasl_username") == "app.toml line 4 ([kafka] sasl_username)"


def test_the_group_waits_for_a_revocation_as_long_as_it_may_take() -> None:
    """A revoked partition's outputs are acknowledged (up to the producer's request
    timeout) and its offsets committed (up to COMMIT_TIMEOUT_S) before the member rejoins:
    with aiokafka's default rebalance timeout (the 6 s session) a slow broker got the
    member dropped from the group's new generation, and one more rebalance."""
    options = Service(parse_config(""), bootstrap_servers="k:1", environ={})._group_options()
    revocation_ms = PRODUCER_REQUEST_TIMEOUT_MS + COMMIT_TIMEOUT_S * 1000
    assert options["rebalance_timeout_ms"] > revocation_ms
    assert options["session_timeout_ms"] == 6_000  # a crash is still found in seconds


def test_rekey_s_group_takes_the_service_s_session_timeout() -> None:
    """A killed rekey holds the one restarted in its place until its session runs out:
    rekey took aiokafka's 10 s whatever ``[service] session_timeout`` said."""
    config = parse_config('[service]\nsession_timeout = "3s"\n')
    options = Rekeyer(config, "k:1", {"a": "a.by-record"})._group_options()
    assert (options["session_timeout_ms"], options["heartbeat_interval_ms"]) == (3_000, 1_000)
    service = Service(config, bootstrap_servers="k:1", environ={})._group_options()
    for key in ("session_timeout_ms", "heartbeat_interval_ms"):
        assert options[key] == service[key]
    mine = Rekeyer(config, "k:1", {}, consumer_options={"session_timeout_ms": 2_000})
    assert mine._group_options()["session_timeout_ms"] == 2_000  # the caller's win


def test_a_sink_s_group_takes_the_service_s_session_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed sink holds the one restarted in its place until its session runs out: the
    sink took aiokafka's 10 s whatever ``[service] session_timeout`` said. It takes the
    service's now: from ``--config``, else its variable (a sink may run without a config),
    else the service's 6 s; and a rebalance timeout as long as the service's, as its
    revocation waits for the store transaction in flight."""
    monkeypatch.delenv("STREAM_EXPIRY_SERVICE_SESSION_TIMEOUT", raising=False)
    parser = argparse.ArgumentParser()
    add_sink_parser(parser.add_subparsers(dest="command", required=True))
    base = ["sink", "sqlite", "--path", str(tmp_path / "s.db"), "--bootstrap-servers", "k:1"]
    config = tmp_path / "service.toml"
    config.write_text('[service]\nsession_timeout = "3s"\n')

    def options(*extra: str) -> dict[str, Any]:
        return build_sink(parser.parse_args([*base, *extra]))._group_options()

    service = Service(parse_config(config.read_text()), bootstrap_servers="k:1", environ={})
    by_file = options("--config", str(config))
    for key in ("session_timeout_ms", "heartbeat_interval_ms", "rebalance_timeout_ms"):
        assert by_file[key] == service._group_options()[key]
    assert (by_file["session_timeout_ms"], by_file["heartbeat_interval_ms"]) == (3_000, 1_000)
    assert options()["session_timeout_ms"] == 6_000  # the service's default
    monkeypatch.setenv("STREAM_EXPIRY_SERVICE_SESSION_TIMEOUT", "2s")
    assert options()["session_timeout_ms"] == 2_000
    assert options()["heartbeat_interval_ms"] == 666
    theirs = {"session_timeout_ms": 9_000}
    mine = Sink(SQLiteStore(tmp_path / "m.db"), SinkConfig("k:1", "g", consumer_options=theirs))
    assert mine._group_options()["session_timeout_ms"] == 9_000  # the caller's win


def test_the_archive_s_group_takes_the_service_s_session_timeout() -> None:
    """A killed archive holds the one restarted in its place until its session runs out:
    the archive took aiokafka's 10 s whatever ``[service] session_timeout`` said. The
    command gives its config's (``stream-expiry archive`` always has one: the file's, or
    the defaults and variables); a library caller of ``run_archive`` gets the service's
    default."""
    config = parse_config('[service]\nsession_timeout = "3s"\n')
    options = archive._group_options(config.session_timeout_ms, {})
    assert (options["session_timeout_ms"], options["heartbeat_interval_ms"]) == (3_000, 1_000)
    service = Service(config, bootstrap_servers="k:1", environ={})._group_options()
    for key in ("session_timeout_ms", "heartbeat_interval_ms"):
        assert options[key] == service[key]
    default = inspect.signature(archive.run_archive).parameters["session_ms"].default
    assert default == parse_config("").session_timeout_ms
    mine = archive._group_options(3_000, {"session_timeout_ms": 2_000})
    assert mine["session_timeout_ms"] == 2_000  # the caller's win


class _Metadata:
    """A group consumer as its metadata knows the topics (None: a topic it does not know)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.counts[topic])) if topic in self.counts else None


@pytest.mark.parametrize("base", [RangePartitionAssignor, RoundRobinPartitionAssignor])
def test_rekey_s_and_a_sink_s_joins_say_the_partition_counts_their_consumer_knows(
    base: Any,
) -> None:
    """Each join of a rekey or a sink says the subscribed topics' partition counts as its
    consumer knows them then, sorted by topic, 0 for one it does not know or before the
    consumer is made: the test broker kept a formed group as it was for a leader whose
    join said what its last one said, and partitions added to a topic stayed unassigned.
    The group's protocol (``name``) and the assignment stay the base's: a member of an
    earlier version in the group is no matter."""
    member: list[Any] = [None]
    counting = counting_partitions(base, lambda: member[0])
    assert counting.__name__ == counting.__qualname__ == f"PartitionCounting{base.__name__}"
    assert counting.name == base.name
    assert counting.assign.__func__ is base.assign.__func__
    said = counting.metadata(["b", "a"])  # no consumer yet
    assert (said.version, said.subscription) == (base.version, ["b", "a"])
    assert said.user_data == b'{"partitions":{"a":0,"b":0}}'
    member[0] = _Metadata({"b": 3, "a": 2})
    said = counting.metadata(iter(["c", "b", "a"]))  # read once, as any iterable
    assert said.subscription == ["c", "b", "a"]
    assert said.user_data == b'{"partitions":{"a":2,"b":3,"c":0}}'
    member[0].counts["c"] = 4  # learnt since: the next join says it
    assert counting.metadata(["c"]).user_data == b'{"partitions":{"c":4}}'


def test_the_callers_consumer_options_reach_the_group_consumer() -> None:
    """The demo fetches with a short wait (the embedded broker answers a waiting fetch up
    to half its wait late, and its sessions wait for their input to be read): given as a
    consumer option, it must win over the service's own."""
    options = Service(parse_config(""), bootstrap_servers="k:1", environ={})._group_options()
    assert "fetch_max_wait_ms" not in options  # the client's: 100 ms (kafka.consumer)
    mine = Service(
        parse_config(""),
        bootstrap_servers="k:1",
        environ={},
        consumer_options={"fetch_max_wait_ms": 20, "session_timeout_ms": 7000},
    )._group_options()
    assert (mine["fetch_max_wait_ms"], mine["session_timeout_ms"]) == (20, 7000)


@pytest.mark.asyncio
async def test_a_join_that_does_not_end_is_said_until_an_assignment_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A trial: the test broker's group stuck after every member left; a service that
    joined it logged "joining group" and then nothing, however long it waited. Said
    until the group answers; then the task ends by itself (else the block never ends)."""
    import anyio

    from tests.conftest import wait_for

    service = Service(parse_config(""), bootstrap_servers="k:1", environ={})
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(service._say_joining, service.stats.assignments, 0.01)
            await wait_for(lambda: "still joining group 'stream-expiry'" in caplog.text)
            service.stats.assignments += 1


def test_tls_files_that_do_not_load_stop_the_command_where_they_were_set(tmp_path: Path) -> None:
    """A CA file that is not PEM, a certificate with another's key, an encrypted key: each
    was found only when the first client started, after `run` had made its state directory
    and its health probe had logged the broker as unreachable (the probe's client failed on
    the file). README, Security: such mistakes stop the command before any client starts,
    with the line or the variable."""
    from stream_expiry.testing.tls import make_pki

    pki = make_pki(tmp_path)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    from_file = parse_config(
        f'[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "{not_pem}"\n', path="app.toml"
    ).kafka
    assert _error(from_file).startswith(
        f"app.toml line 3 ([kafka] ssl_cafile): ssl_cafile {str(not_pem)!r} does not load: "
    )
    env = {
        "STREAM_EXPIRY_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAM_EXPIRY_KAFKA_SSL_CERTFILE": pki.client_cert,
        "STREAM_EXPIRY_KAFKA_SSL_KEYFILE": pki.server_key,  # another certificate's key
    }
    assert _error(KafkaSecurity(), env).startswith(
        f"$STREAM_EXPIRY_KAFKA_SSL_CERTFILE: ssl_certfile {pki.client_cert!r} with "
        f"ssl_keyfile {pki.server_key!r} does not load: "
    )
    # A certificate alone, without its key beside it: said, not taken for a client cert.
    env = {
        "STREAM_EXPIRY_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAM_EXPIRY_KAFKA_SSL_CERTFILE": pki.ca,
    }
    assert "without ssl_keyfile, ssl_certfile must hold the key too" in _error(KafkaSecurity(), env)
    # The files that do load pass, as the clients will take them.
    good = {
        "STREAM_EXPIRY_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAM_EXPIRY_KAFKA_SSL_CAFILE": pki.ca,
        "STREAM_EXPIRY_KAFKA_SSL_CERTFILE": pki.client_cert,
        "STREAM_EXPIRY_KAFKA_SSL_KEYFILE": pki.client_key,
    }
    assert security_from_environment(KafkaSecurity(), good).ssl_keyfile == pki.client_key


def test_an_encrypted_key_stops_the_command_before_any_client(tmp_path: Path) -> None:
    """Found when the configuration is checked, with the variable, and never asked for."""
    from stream_expiry.testing.tls import make_pki

    pki = make_pki(tmp_path)
    encrypted = _encrypted_copy(pki.client_key, tmp_path / "encrypted.key")
    env = {
        "STREAM_EXPIRY_KAFKA_SECURITY_PROTOCOL": "SSL",
        "STREAM_EXPIRY_KAFKA_SSL_CERTFILE": pki.client_cert,
        "STREAM_EXPIRY_KAFKA_SSL_KEYFILE": str(encrypted),
    }
    message = _error(KafkaSecurity(), env)
    assert message.startswith("$STREAM_EXPIRY_KAFKA_SSL_CERTFILE: ssl_certfile")
    assert "the key is encrypted, and stream-expiry takes no passphrase" in message


def test_a_directory_given_for_a_tls_file_is_called_one(tmp_path: Path) -> None:
    """`ssl_cafile = "/etc/ssl/certs"` (the system's CA directory, a likely guess) was
    refused as a file that "does not exist", which it plainly does."""
    with pytest.raises(ValueError, match=r"^'.*' is a directory; give the PEM file itself"):
        check_security_value("ssl_cafile", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^app.toml line 3: key 'ssl_cafile' .* is a directory"):
        parse_config(
            f'[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "{tmp_path}"\n', path="app.toml"
        )


def _encrypted_copy(key_file: str, to: Path) -> Path:
    """``key_file``'s private key written to ``to`` encrypted with a passphrase."""
    from cryptography.hazmat.primitives import serialization

    with open(key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    to.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    return to


@pytest.mark.parametrize(
    ("protocol", "mechanism", "warned"),
    [
        ("SASL_PLAINTEXT", "PLAIN", True),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512", False),
        ("SASL_SSL", "PLAIN", False),
    ],
)
def test_plain_without_tls_is_warned_of_once_without_the_password(
    protocol: str, mechanism: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A security trial: ``SASL_PLAINTEXT`` with ``PLAIN`` puts the password on the wire as
    it is (Kafka's documentation: SASL/PLAIN only over TLS), and was taken without a word.
    It stays allowed (a private network), with a warning naming where it was set."""
    base = KafkaSecurity(security_protocol=protocol, sasl_mechanism=mechanism, sasl_username="u")
    env = {"STREAM_EXPIRY_KAFKA_SASL_PASSWORD": "S3cr3tPW"}
    with caplog.at_level(logging.WARNING, logger="stream_expiry.kafka_settings"):
        security_from_environment(base, env)
    said = [r.getMessage() for r in caplog.records]
    assert len([s for s in said if "sends the password unencrypted" in s]) == int(warned), said
    assert not [s for s in said if "S3cr3tPW" in s]

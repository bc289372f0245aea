"""The command line as a user runs it: exit codes, JSON shapes, errors that say what to do."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry.cli import main
from stream_expiry.timeutil import wall_clock_ms
from tests.conftest import make_topic_set
from tests.integration.service_helpers import config_text, event, produce

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration


def test_explain_json_is_the_contract_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        '[retention.orgs.acme]\nconversation = "7d"\n[retention.defaults]\nconversation = "30d"\n'
    )
    monkeypatch.setenv("MAX_CONVERSATION_TTL_IN_MINUTES", "1440")
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    code = main(
        ["explain", "--config", str(cfg), "--org", "acme", "--category", "conversation", "--json"]
    )
    assert code == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["ttl_seconds"] == 86_400
    assert out["source"] == "env"
    assert {
        "source": "env",
        "name": "MAX_CONVERSATION_TTL_IN_MINUTES",
        "ttl_seconds": 86_400,
        "valid": True,
    } in out["candidates"]
    assert set(out) == {"ttl_seconds", "source", "candidates"}


def test_explain_without_the_policy_updates_says_so_and_how_to_include_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no brokers known anywhere, or with --offline, explain reads no runtime policy
    updates; its table says so (the JSON on stderr, staying the contract's), with how to
    include them."""
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('[retention.defaults]\nconversation = "30d"\n')
    argv = ["explain", "--config", str(cfg), "--org", "acme", "--category", "conversation"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "not included: the runtime policy updates on expiry.policies (no brokers known" in out
    assert "--bootstrap-servers HOST:PORT" in out
    assert main([*argv, "--json"]) == 0
    said = capsys.readouterr()
    assert set(orjson.loads(said.out)) == {"ttl_seconds", "source", "candidates"}
    assert "not included: the runtime policy updates on expiry.policies" in said.err
    # --offline: brokers in the file are not asked (nothing listens there), and it is said.
    cfg.write_text(
        'bootstrap_servers = "kafka-1:9092"\n[retention.defaults]\nconversation = "30d"\n'
    )
    assert main([*argv, "--offline", "--json"]) == 0
    said = capsys.readouterr()
    assert orjson.loads(said.out)["ttl_seconds"] == 30 * 86_400
    assert "not included: the runtime policy updates on expiry.policies (--offline" in said.err


def test_a_bad_config_file_stops_with_the_line_and_a_suggestion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('preset = "none"\n\n[retention.orgs.acme]\nconversaton = "7d"\n')
    code = main(["explain", "--config", str(cfg), "--org", "acme", "--category", "conversation"])
    err = capsys.readouterr().err
    assert code == 2
    assert "line 4" in err
    assert "conversation" in err


def test_run_without_brokers_says_how_to_give_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    code = main(["run", "--state-dir", str(tmp_path)])
    assert code == 2
    assert "--bootstrap-servers" in capsys.readouterr().err


def test_replay_dry_run_json_counts(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = make_topic_set()

    async def setup() -> None:
        from stream_expiry.kafka import ensure_topics

        await ensure_topics(broker, topics.all, partitions=2)
        await produce(
            broker,
            [(topics.conversations, *event("conversation", f"c{i}")) for i in range(5)]
            + [(topics.conversations, b"k", b"not json")],
        )

    anyio.run(setup)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        config_text(topics, str(tmp_path / "state"), '[retention.defaults]\nconversation = "1h"\n')
    )
    argv = ["replay", "--config", str(cfg), "--bootstrap-servers", broker, "--dry-run", "--json"]
    assert main(argv) == 0
    # From the changelog (the default): nothing was stamped yet, so nothing to re-derive.
    assert orjson.loads(capsys.readouterr().out)["records"] == 0
    code = main([*argv, "--from-inputs"])
    assert code == 0
    out = capsys.readouterr()
    counts = orjson.loads(out.out)
    # From the input topics: six events (the bad one too), and five records none of which
    # the service stamped: left alone (a record deleted and compacted away looks the
    # same), and said on stderr, outside the contract's JSON.
    assert counts == {
        "events": 6,
        "records": 0,
        "unchanged": 0,
        "earlier": 0,
        "later": 0,
        "due_now": 0,
        "never": 0,
    }
    assert "left alone 5 records" in out.err


def test_replay_says_it_read_changelog_messages_not_stamps(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replay's count is of every message of ``expiry.stamped``, the nulls that ended
    records too: a trial's 20,000 records, 18,000 of them deleted, read as "38,000 stamps
    read", a number that matched nothing sent. One stamp and its null: two messages."""
    from stream_expiry.codec import source_headers
    from stream_expiry.kafka import ensure_topics, key_partition, producer
    from stream_expiry.model import Identity, Stamp, encode_stamp

    topics = make_topic_set()
    identity = Identity("acme", "_", "live", "conversation", "c1")
    key = identity.key.encode()
    partition = key_partition(key, 2)
    created = wall_clock_ms() - 60_000

    async def setup() -> None:
        await ensure_topics(broker, topics.all, partitions=2)
        async with producer(broker) as prod:
            headers = source_headers(topics.conversations, partition)
            stamp = Stamp(identity, created, created + 3_600_000, 3_600, "default")
            for value in (encode_stamp(stamp, {}), None):
                await prod.send_and_wait(
                    topics.stamped, key=key, value=value, partition=partition, headers=headers
                )

    anyio.run(setup)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), ""))
    argv = ["replay", "--config", str(cfg), "--bootstrap-servers", broker, "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: nothing changed (2 changelog messages read: stamps and nulls)")
    assert "stamps read" not in out


def test_replay_history_and_status_say_a_topic_the_cluster_does_not_have(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config that names topics the cluster does not have (a typo in [topics], or no
    --config where the services rename them) read them as empty: replay said "0 stamps
    read", history "nothing on the evidence topics for this key" and status "pending 0"
    and no lag for the input, answers that look clean (a trial). Now replay and history
    stop with one line (exit 2), and status says which topics it did not find."""
    from stream_expiry.kafka import ensure_topics, missing_topics

    topics = make_topic_set()
    absent = (topics.stamped, topics.receipts, topics.sessions, topics.holds)
    anyio.run(lambda: ensure_topics(broker, [t for t in topics.all if t not in absent]))
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(config_text(topics, str(tmp_path / "state"), ""))
    common = ["--config", str(cfg), "--bootstrap-servers", broker]
    who = ["--org", "acme", "--category", "conversation", "--record-id", "c1"]
    # With where the name came from (the config file's line) and what to do there.
    line = cfg.read_text().splitlines().index(f'stamped = "{topics.stamped}"') + 1
    said = (
        f"the stamped topic {topics.stamped!r} (from {cfg} line {line}, [topics] stamped) "
        "does not exist on the cluster"
    )
    assert main(["replay", *common, "--dry-run", "--json"]) == 2
    out = capsys.readouterr()
    assert (out.out, said in out.err) == ("", True)
    assert main(["history", *common, *who]) == 2
    out = capsys.readouterr()
    assert (out.out, said in out.err) == ("", True)
    assert main(["status", *common, "--json"]) == 0
    err = capsys.readouterr().err

    def lacks(name: str, key: str) -> str:
        """A warning's start: the topic, where its name came from (the file's line)."""
        line = [t.split(" = ")[0] for t in cfg.read_text().splitlines()].index(key) + 1
        return f"{name} (from {cfg} line {line}, [topics] {key}) does not exist on the cluster"

    assert f"{lacks(topics.stamped, 'stamped')}: no record is counted" in err
    assert f"{lacks(topics.sessions, 'inputs')}: no lag is shown for it" in err
    # "legal holds 0" under a mistyped holds topic read as no hold at all (a compliance trial)
    assert f"{lacks(topics.holds, 'holds')}: no hold is shown" in err
    # Asked without creating them (a broker that auto-creates topics would otherwise make
    # the stamped topic uncompacted).
    assert anyio.run(lambda: missing_topics(broker, absent)) == list(absent)
    # With the stamped topic there, history answers, and says which topic it lacked.
    anyio.run(lambda: ensure_topics(broker, [topics.stamped]))
    assert main(["history", *common, *who]) == 0
    out = capsys.readouterr()
    assert "nothing on the evidence topics for this key" in out.out
    assert f"{lacks(topics.receipts, 'receipts')}: nothing of it is in" in out.err
    assert f"{lacks(topics.holds, 'holds')}: nothing of it is in" in out.err


def test_an_address_without_a_port_is_said_to_be_looked_for_on_9092(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--bootstrap-servers localhost` failed with "cannot reach Kafka at localhost", not
    saying which port it had tried (a trial)."""
    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9092)) == 0:
            pytest.skip("something listens on 127.0.0.1:9092 on this machine")
    assert main(["status", "--bootstrap-servers", "127.0.0.1"]) == 3
    assert "cannot reach Kafka at 127.0.0.1 (port 9092, Kafka's default, where none is " in (
        capsys.readouterr().err
    )


def test_run_against_a_broker_that_is_not_there_fails_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream_expiry.broker import free_port

    address = f"127.0.0.1:{free_port()}"
    code = main(["run", "--bootstrap-servers", address, "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 3  # stream_expiry.exits.BROKER, in every command
    assert f"cannot reach Kafka at {address}" in err
    assert "Traceback" not in err


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--state-dir", "{tmp}/state"],
        ["sink", "sqlite", "--path", "{tmp}/sink.db"],
        ["archive", "--dir", "{tmp}/archive", "run"],
    ],
    ids=["run", "sink", "archive-run"],
)
def test_a_long_running_command_says_a_broker_not_there_in_its_own_line_only(
    tmp_path: Path, argv: list[str]
) -> None:
    """As a person or a pod's log sees it: aiokafka's own "ERROR aiokafka: Unable connect
    to ..." line came before the command's, which says the same and what to do; its
    reason (the connection refused, a name that resolves to nothing) is now in the
    command's line, which said only "Unable to bootstrap from [...]"."""
    from stream_expiry.broker import free_port

    address = f"127.0.0.1:{free_port()}"
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = subprocess.run(
        [sys.executable, "-m", "stream_expiry", *args, "--bootstrap-servers", address],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 3, done.stderr  # stream_expiry.exits.BROKER
    assert not [line for line in lines if " aiokafka" in line], done.stderr
    assert lines[-1].startswith(f"stream-expiry {argv[0]}: cannot reach Kafka at {address} ")
    assert f": {address}: [Errno " in lines[-1]
    assert "Unable to bootstrap" not in lines[-1]
    assert "check that the brokers are up" in lines[-1]


def _explain_acme(broker: str, tmp_path: Path, update: dict[str, object]) -> list[str]:
    """``explain``'s arguments for org acme's conversations, 10 minutes in the config file,
    after an org update to 2 minutes (with ``update``'s fields) on the policies topic."""
    topics = make_topic_set()
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        config_text(topics, str(tmp_path), '[retention.orgs.acme]\nconversation = "10m"\n')
    )
    value = {"scope": "org", "org": "acme", "ttl": {"conversation": "2m"}, **update}
    anyio.run(produce, broker, [(topics.policies, b"org/acme", orjson.dumps(value))])
    return ["explain", "--config", str(cfg), "--org", "acme", "--category", "conversation"]


def test_explain_with_brokers_applies_the_live_policy_updates(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the running service uses: without the brokers, explain shows the file alone."""
    common = _explain_acme(broker, tmp_path, {})
    assert main([*common, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["ttl_seconds"] == 600
    assert main([*common, "--json", "--bootstrap-servers", broker]) == 0
    live = orjson.loads(capsys.readouterr().out)
    assert (live["ttl_seconds"], live["source"]) == (120, "org")


def test_explain_with_brokers_says_the_updates_were_searched_for_the_org_meant(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--org ACME`` beside org acme of the config file and of a policy update, read
    from the brokers: the warning names where it looked, the policy updates too (offline,
    the config file alone). Mutant ``where = "config file"`` (round 43's mutation pass)
    said the config file alone after reading the updates."""
    common = _explain_acme(broker, tmp_path, {})
    asked = [*common[:3], "--org", "ACME", "--category", "conversation", "--json"]  # --config
    assert main([*asked, "--bootstrap-servers", broker]) == 0
    assert (
        "warning: no org or bot setting (config file, policy update) names org 'ACME', so "
        "it gets what every such org gets; did you mean 'acme'? (org ids are case-sensitive)"
    ) in capsys.readouterr().err
    assert main([*asked, "--offline"]) == 0
    assert "no org or bot setting (config file) names org 'ACME'" in capsys.readouterr().err


def test_explain_answers_for_a_record_created_now_unless_at_says_when(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An update dated a month ahead is not in force yet: a record created now gets the
    one before it, and ``--at`` past its date shows what a record will get then."""
    ahead = wall_clock_ms() + 30 * 24 * 3_600_000  # a month
    common = _explain_acme(broker, tmp_path, {"effective_from": ahead})
    answers = []
    for at in ([], ["--at", str(ahead - 1)], ["--at", str(ahead)]):
        assert main([*common, *at, "--json", "--bootstrap-servers", broker]) == 0
        answers.append(orjson.loads(capsys.readouterr().out)["ttl_seconds"])
    assert answers == [600, 600, 120]


@pytest.mark.parametrize("where", ["config file", "environment"])
def test_explain_reads_the_policy_updates_from_brokers_the_config_or_environment_names(
    where: str,
    broker: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The contract: brokers come from the flag, else the config file, else
    STREAM_EXPIRY_BOOTSTRAP_SERVERS. Explain read the policy updates only with the flag, so
    ``explain --config prod.toml`` answered from the file alone though it named the brokers,
    without the management UI's org TTL: a wrong answer for a compliance officer."""
    topics = make_topic_set()
    brokers = f'bootstrap_servers = "{broker}"\n' if where == "config file" else ""
    if where == "environment":
        monkeypatch.setenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", broker)
    else:
        monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        brokers
        + config_text(topics, str(tmp_path), '[retention.orgs.acme]\nconversation = "10m"\n')
    )
    update = {"scope": "org", "org": "acme", "ttl": {"conversation": "2m", "session": "x"}}
    rejected = {"scope": "org", "org": "globex", "ttl": {"conversaton": "1m"}}
    anyio.run(
        produce,
        broker,
        [
            (topics.policies, b"org/acme", orjson.dumps(update)),
            (topics.policies, b"org/globex", orjson.dumps(rejected)),
        ],
    )
    common = ["explain", "--config", str(cfg), "--org", "acme", "--category", "conversation"]
    assert main([*common, "--json"]) == 0
    said = capsys.readouterr()
    live = orjson.loads(said.out)
    assert (live["ttl_seconds"], live["source"]) == (120, "org")
    assert "not included" not in said.err
    # What the service dead-letters, wholly or in part, is said beside the answer.
    assert "policy update org/acme on " in said.err
    assert "ttl.session: 'x' is not a duration" in said.err
    assert "is ignored: invalid_field (ttl key 'conversaton'" in said.err
    assert main([*common, "--json", "--offline"]) == 0
    assert orjson.loads(capsys.readouterr().out)["ttl_seconds"] == 600


def test_explain_with_brokers_it_cannot_read_fails_with_one_line_and_no_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Known but unreachable brokers are an error that says what to do (check them, or
    --offline), with Kafka's exit status: never a traceback, never an answer that leaves the
    updates out without a word."""
    from stream_expiry.broker import free_port

    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    address = f"127.0.0.1:{free_port()}"
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(f'bootstrap_servers = "{address}"\n[retention.defaults]\nconversation = "30d"\n')
    argv = ["explain", "--config", str(cfg), "--org", "acme", "--category", "conversation"]
    for extra in ([], ["--json"]):
        code = main([*argv, *extra])
        said = capsys.readouterr()
        assert code == 3  # stream_expiry.exits.BROKER
        assert said.out == ""
        (line,) = said.err.splitlines()
        assert "cannot read the runtime policy updates on expiry.policies" in line
        assert "brokers from bootstrap_servers in the config file" in line
        assert f"cannot reach Kafka at {address}" in line
        assert "pass --offline" in line


def test_every_one_shot_command_says_an_unreachable_broker_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """status, hold, history and replay, as explain: aiokafka's own "Unable connect" line came before
    the command's, which says the same and what to do (found in a trial)."""
    from stream_expiry.broker import free_port

    monkeypatch.delenv("STREAM_EXPIRY_BOOTSTRAP_SERVERS", raising=False)
    address = f"127.0.0.1:{free_port()}"
    record = ["--org", "acme", "--category", "session", "--record-id", "s1"]
    for argv in (["status"], ["hold", "list"], ["history", *record], ["replay", "--dry-run"]):
        code = main([*argv, "--bootstrap-servers", address])
        said = capsys.readouterr()
        assert code == 3, argv  # stream_expiry.exits.BROKER
        (line,) = said.err.splitlines()
        assert line.startswith(f"stream-expiry {argv[0]}: cannot reach Kafka at {address}")
        # The reason the library logged (and the command held back) is in it.
        assert f"{address}: [Errno 111] Connect call failed" in line, line


def test_explain_refuses_an_id_no_record_can_have(capsys: pytest.CaptureFixture[str]) -> None:
    """As the service refuses it in an event (and history does): an empty org was answered
    from the environment and the defaults, as if it were one (a trial)."""
    for flag, bad in (("--org", ""), ("--bot", "b" * 513)):
        argv = ["explain", "--offline", "--org", "acme", "--category", "session", flag, bad]
        assert main(argv) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line == f"stream-expiry explain: {flag} must be 1 to 512 characters long"


def test_explain_offline_and_bootstrap_servers_together_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["explain", "--org", "a", "--category", "conversation"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--offline", "--bootstrap-servers", "127.0.0.1:9092"])
    assert stop.value.code == 2
    assert "not allowed with argument --offline" in capsys.readouterr().err

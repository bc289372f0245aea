"""The command line as a user runs it: exit codes, JSON shapes, errors that say what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry.cli import main
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


def test_explain_of_a_config_file_says_the_policy_updates_are_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --bootstrap-servers, explain reads no runtime policy updates; its table
    says so, with the flag that includes them (the config's brokers when it names some)."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        'bootstrap_servers = "kafka-1:9092"\n[retention.defaults]\nconversation = "30d"\n'
    )
    argv = ["explain", "--config", str(cfg), "--org", "acme", "--category", "conversation"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "not included: the runtime policy updates on expiry.policies" in out
    assert "--bootstrap-servers kafka-1:9092" in out
    assert main([*argv, "--json"]) == 0
    said = capsys.readouterr()
    assert set(orjson.loads(said.out)) == {"ttl_seconds", "source", "candidates"}
    # The JSON stays the contract's; the same line goes to stderr (it gave no hint).
    assert "not included: the runtime policy updates on expiry.policies" in said.err


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


def test_explain_with_brokers_applies_the_live_policy_updates(
    broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the running service uses: without the brokers, explain shows the file alone."""
    topics = make_topic_set()
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(
        config_text(topics, str(tmp_path), '[retention.orgs.acme]\nconversation = "10m"\n')
    )
    update = {"scope": "org", "org": "acme", "ttl": {"conversation": "2m"}}
    anyio.run(produce, broker, [(topics.policies, b"org/acme", orjson.dumps(update))])
    common = ["explain", "--config", str(cfg), "--org", "acme", "--category", "conversation"]
    assert main([*common, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["ttl_seconds"] == 600
    assert main([*common, "--json", "--bootstrap-servers", broker]) == 0
    live = orjson.loads(capsys.readouterr().out)
    assert (live["ttl_seconds"], live["source"]) == (120, "org")

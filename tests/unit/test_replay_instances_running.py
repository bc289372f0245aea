"""An applied replay says whether the service's instances are running: they read none of
its stamps until they restart (README: After replay), and a replay run beside a running
service by mistake said nothing of it (a trial)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import anyio

from stream_expiry import replay as replay_module
from stream_expiry.config import Config
from stream_expiry.errors import BrokerUnavailableError
from stream_expiry.instances import Group, Member

if TYPE_CHECKING:
    import pytest


def _args(*, dry_run: bool = False, json: bool = True) -> argparse.Namespace:
    return argparse.Namespace(
        since=None, dry_run=dry_run, from_inputs=False, sample=10, workers=None, json=json
    )


def _run(
    monkeypatch: pytest.MonkeyPatch,
    args: argparse.Namespace,
    *,
    members: int,
    changed: int = 2,
    broker_down: bool = False,
) -> int:
    async def fake_replay(*_: Any, **__: Any) -> replay_module.ReplayReport:
        return replay_module.ReplayReport(
            events=5, records=3, unchanged=3 - changed, earlier=changed
        )

    async def fake_describe(_: Any, group_id: str) -> Group:
        if broker_down:
            raise BrokerUnavailableError("no broker")
        member = Member("stream-expiry-1", "stream-expiry", "10.0.0.1", None)
        return Group(group_id, "Stable" if members else "Empty", (member,) * members)

    monkeypatch.setattr(replay_module, "replay", fake_replay)
    monkeypatch.setattr(replay_module, "describe_group", fake_describe, raising=False)
    config = Config(group_id="expiry-eu")

    async def go() -> int:
        return await replay_module.run_replay(config, "127.0.0.1:9", args)

    return anyio.run(go)


def test_an_applied_replay_says_the_instances_running_and_to_restart_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(monkeypatch, _args(), members=2) == 0
    said = capsys.readouterr()
    assert said.out.startswith("{")  # the JSON on stdout stays the contract's alone
    assert "group 'expiry-eu' has 2 members (instances running)" in said.err
    assert "restart (roll) them now" in said.err


def test_nothing_is_said_without_instances_changes_or_publishing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(monkeypatch, _args(), members=0) == 0
    assert _run(monkeypatch, _args(dry_run=True), members=2) == 0  # nothing published
    assert _run(monkeypatch, _args(), members=2, changed=0) == 0  # nothing changed
    assert _run(monkeypatch, _args(json=False), members=2, broker_down=True) == 0
    assert "instances running" not in capsys.readouterr().err

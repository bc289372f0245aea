"""What an operator is told to do after ``replay`` and after a back-dated policy update:
a running instance does not read replay's stamps, and fires the changed records at their
old expiries until it restarts, so each says to roll the instances (README: After
replay). "a service picks the new stamps up when it (re)starts" read as a remark, and
the back-dated update's warning named `replay --since` alone: run while the instances
run (as it invites), the records a shortened policy makes due at once (208 in a trial)
wait for a restart that nothing asks for."""

from __future__ import annotations

import argparse
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from stream_expiry import control
from stream_expiry.config import parse_config
from stream_expiry.replay import ReplayReport, run_replay


@pytest.mark.asyncio
async def test_an_applied_replay_that_changed_records_says_to_roll_the_instances(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def replay(*args: Any, **kwargs: Any) -> ReplayReport:
        return ReplayReport(events=10, records=5, unchanged=3, due_now=2)

    monkeypatch.setattr("stream_expiry.replay.replay", replay)
    args = argparse.Namespace(since=None, dry_run=False, sample=10, json=False)
    assert await run_replay(parse_config(""), "k:1", args) == 0
    out = capsys.readouterr().out
    assert "roll the instances now" in out
    assert "fires these records at their old expiries" in out
    # A dry run changed nothing: nothing to roll for.
    args.dry_run = True
    await run_replay(parse_config(""), "k:1", args)
    assert "roll the instances" not in capsys.readouterr().out


def test_a_back_dated_update_says_to_stop_or_roll_the_instances_around_the_replay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = SimpleNamespace(
        timestamp=1_800_000_000_000, topic="expiry.policies", partition=5, offset=0
    )
    with caplog.at_level(logging.WARNING, logger="stream_expiry"):
        control._warn_back_dated(rec, "org/acme", 1_800_000_000_000 - 3_600_000)
    (said,) = [r.getMessage() for r in caplog.records]
    assert "`stream-expiry replay --since " in said
    assert "stop the instances first, or roll them after it" in said

"""A topic ``replay``, ``history`` or ``deletions`` cannot do without, which the cluster
lacks: the refusal names where its name came from and the fix for that source, as ``hold
list`` does (test_holds_topic_origin). Each said "give ... the service's --config", also to
a run given it, whose ``STREAM_EXPIRY_TOPICS_*`` variable was the cause. No broker: every
topic is reported missing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from stream_expiry import deletions, history, replay
from stream_expiry.config import Config, load_config
from stream_expiry.errors import ConfigurationError
from stream_expiry.model import Identity

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path


async def _all_missing(_: Any, topics: Any) -> list[str]:
    return list(topics)


@pytest.fixture(autouse=True)
def _no_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (replay, history, deletions):
        monkeypatch.setattr(module, "missing_topics", _all_missing)


def _replay(config: Config) -> Awaitable[Any]:
    return replay.replay(config, "localhost:1", environ={})


def _history(config: Config) -> Awaitable[Any]:
    return history.history(config, "localhost:1", Identity("o", "b", "e", "c", "r"))


def _deletions(config: Config) -> Awaitable[Any]:
    return deletions.deletions(config, "localhost:1", deletions.Filter({}))


# The command, the [topics] key of the topic it refuses for, and the message's own content
# kept beside the source and the fix.
COMMANDS = [
    pytest.param(_replay, "stamped", ", so there is nothing to re-derive: ", id="replay"),
    pytest.param(
        _history,
        "stamped",
        ", so this cluster holds no evidence of that config's: ",
        id="history",
    ),
    pytest.param(
        _deletions, "receipts", ", or run a store (stream-expiry sink) first", id="deletions"
    ),
]


async def _said(run: Callable[[Config], Awaitable[Any]], config: Config) -> str:
    with pytest.raises(ConfigurationError) as caught:
        await run(config)
    return str(caught.value)


@pytest.mark.parametrize(("run", "key", "kept"), COMMANDS)
@pytest.mark.asyncio
async def test_a_name_from_the_environment_is_said_to_come_from_its_variable(
    tmp_path: Path, run: Callable[[Config], Awaitable[Any]], key: str, kept: str
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(f'[topics]\n{key} = "prod.{key}"\n')
    env = f"STREAM_EXPIRY_TOPICS_{key.upper()}"
    said = await _said(run, load_config(cfg, environ={env: f"expiry.typo{key}"}))
    assert f"'expiry.typo{key}' (from environment variable {env})" in said
    assert f"set ${env} to the services' [topics] {key}, or unset it" in said
    assert "--config (its [topics]" not in said
    assert kept in said


@pytest.mark.parametrize(("run", "key", "kept"), COMMANDS)
@pytest.mark.asyncio
async def test_a_name_from_the_file_is_said_with_its_line(
    tmp_path: Path, run: Callable[[Config], Awaitable[Any]], key: str, kept: str
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(f'group_id = "g"\n[topics]\n{key} = "expiry.typo{key}"\n')
    said = await _said(run, load_config(cfg, environ={}))
    assert f"'expiry.typo{key}' (from {cfg} line 3, [topics] {key})" in said
    assert f"set [topics] {key} there to the services' one" in said
    assert kept in said


@pytest.mark.parametrize(("run", "key", "kept"), COMMANDS)
@pytest.mark.asyncio
async def test_the_default_name_is_said_to_be_the_default(
    tmp_path: Path, run: Callable[[Config], Awaitable[Any]], key: str, kept: str
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('group_id = "g"\n')
    said = await _said(run, load_config(cfg, environ={}))
    assert f"'expiry.{key}' (the default: {cfg} has no [topics] {key})" in said
    assert f"give the command the services' --config (their [topics] {key})" in said
    assert kept in said
    said = await _said(run, load_config(None, environ={}))
    assert f"(the default: no --config given, no $STREAM_EXPIRY_TOPICS_{key.upper()})" in said

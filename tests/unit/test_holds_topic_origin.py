"""A holds topic the cluster lacks (``hold list``, ``archive purge``): the message names
where its name came from and what to do. A user trial: ``STREAM_EXPIRY_TOPICS_HOLDS`` with
a typo beside the right ``--config`` was told to "give the command the services'
--config", which it had been given. No broker: the topic is reported missing."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pytest

from stream_expiry import hold_command
from stream_expiry.config import load_config
from stream_expiry.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture(autouse=True)
def _no_holds_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.asynccontextmanager
    async def consumer(_: Any, *__: str, **___: Any) -> AsyncIterator[object]:
        yield object()

    async def partitions_of(_: Any, topic: str) -> set[int]:
        del topic
        return set()

    monkeypatch.setattr(hold_command, "consumer", consumer)
    monkeypatch.setattr(hold_command, "partitions_of", partitions_of)


async def _said(config_path: Path | None, environ: dict[str, str]) -> str:
    config = load_config(config_path, environ=environ)
    with pytest.raises(ConfigurationError) as caught:
        await hold_command.read_holds(config, "k:1", must_exist=True)
    return str(caught.value)


@pytest.mark.asyncio
async def test_a_name_from_the_environment_is_said_to_come_from_its_variable(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('[topics]\nholds = "prod.holds"\n')
    said = await _said(cfg, {"STREAM_EXPIRY_TOPICS_HOLDS": "expiry.hlds"})
    assert "'expiry.hlds' (from environment variable STREAM_EXPIRY_TOPICS_HOLDS)" in said
    assert "set $STREAM_EXPIRY_TOPICS_HOLDS to the services' [topics] holds, or unset" in said
    assert "give the command the services' --config" not in said


@pytest.mark.asyncio
async def test_a_name_from_the_file_is_said_with_its_line(tmp_path: Path) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('group_id = "g"\n[topics]\nholds = "expiry.hlds"\n')
    said = await _said(cfg, {})
    assert f"'expiry.hlds' (from {cfg} line 3, [topics] holds)" in said
    assert "set [topics] holds there to the services' one" in said


@pytest.mark.asyncio
async def test_the_default_name_is_said_to_be_the_default(tmp_path: Path) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('group_id = "g"\n')
    said = await _said(cfg, {})
    assert f"'expiry.holds' (the default: {cfg} has no [topics] holds)" in said
    assert "give the command the services' --config (their [topics] holds)" in said
    said = await _said(None, {})
    assert "(the default: no --config given, no $STREAM_EXPIRY_TOPICS_HOLDS)" in said

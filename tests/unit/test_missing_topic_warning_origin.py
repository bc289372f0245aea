"""A topic ``history`` or ``status`` reads, which the cluster lacks but which does not stop
the command: the warning names where its name came from and the fix for that source, as the
refusals do (test_missing_topic_origin). Each asked "is it the service's [topics] of
--config?", also of a run given it, whose ``STREAM_EXPIRY_TOPICS_*`` variable was the cause.
No broker: every topic but the stamped one is reported missing, and the command is stopped
right after its warnings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest

from stream_expiry import history, status
from stream_expiry.config import Config, load_config
from stream_expiry.model import Identity

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from pathlib import Path


class _Warned(Exception):
    """Raised by the first read after the warnings: the test needs nothing further."""


def _stop(*_: Any, **__: Any) -> Any:
    raise _Warned


@pytest.fixture(autouse=True)
def _all_missing_but_stamped(monkeypatch: pytest.MonkeyPatch) -> None:
    async def missing_topics(_: Any, topics: Iterable[str]) -> list[str]:
        return [topic for topic in topics if "stamped" not in topic]

    for module in (history, status):
        monkeypatch.setattr(module, "missing_topics", missing_topics)
    monkeypatch.setattr(history, "consumer", _stop)
    monkeypatch.setattr(status, "read_holds", _stop)


def _history(config: Config) -> Awaitable[Any]:
    return history.history(config, "localhost:1", Identity("o", "b", "e", "c", "r"))


def _status(config: Config) -> Awaitable[Any]:
    return status.status(config, "localhost:1", clock=lambda: 0)


# The command, a topic key it warns of (the inputs' as well: STREAM_EXPIRY_TOPICS_INPUTS),
# and the warning's own content kept beside the source and the fix.
COMMANDS = [
    pytest.param(_history, "holds", ": nothing of it is in this history (", id="history-holds"),
    pytest.param(_history, "inputs", ": nothing of it is in this history (", id="history-inputs"),
    pytest.param(_status, "holds", ": no hold is shown (", id="status-holds"),
    pytest.param(_status, "inputs", ": no lag is shown for it (", id="status-inputs"),
]


def _toml(key: str, name: str) -> str:
    """``[topics] key``'s value naming topic ``name`` (the inputs' is an array)."""
    return f'["{name}"]' if key == "inputs" else f'"{name}"'


async def _warned(
    caplog: pytest.LogCaptureFixture, run: Callable[[Config], Awaitable[Any]], config: Config
) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(_Warned):
        await run(config)
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("run", "key", "kept"), COMMANDS)
@pytest.mark.asyncio
async def test_a_name_from_the_environment_is_said_to_come_from_its_variable(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    run: Callable[[Config], Awaitable[Any]],
    key: str,
    kept: str,
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(f"[topics]\n{key} = {_toml(key, 'prod.x')}\n")
    env = f"STREAM_EXPIRY_TOPICS_{key.upper()}"
    said = await _warned(caplog, run, load_config(cfg, environ={env: f"expiry.typo{key}"}))
    assert f"expiry.typo{key} (from environment variable {env}) does not exist" in said
    assert f"set ${env} to the services' [topics] {key}, or unset it" in said
    assert "is it the service's [topics] of --config?" not in said
    assert kept in said


@pytest.mark.parametrize(("run", "key", "kept"), COMMANDS)
@pytest.mark.asyncio
async def test_a_name_from_the_file_is_said_with_its_line(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    run: Callable[[Config], Awaitable[Any]],
    key: str,
    kept: str,
) -> None:
    cfg = tmp_path / "expiry.toml"
    name = f"expiry.typo{key}"
    cfg.write_text(f'group_id = "g"\n[topics]\n{key} = {_toml(key, name)}\n')
    said = await _warned(caplog, run, load_config(cfg, environ={}))
    assert f"{name} (from {cfg} line 3, [topics] {key}) does not exist" in said
    one = "list" if key == "inputs" else "one"  # [topics] inputs is an array (a trial)
    assert f"set [topics] {key} there to the services' {one}, or give" in said
    assert kept in said


@pytest.mark.parametrize(("run", "key", "kept"), COMMANDS)
@pytest.mark.asyncio
async def test_the_default_name_is_said_to_be_the_default(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    run: Callable[[Config], Awaitable[Any]],
    key: str,
    kept: str,
) -> None:
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('group_id = "g"\n')
    config = load_config(cfg, environ={})
    name = config.topics.inputs[0] if key == "inputs" else getattr(config.topics, key)
    said = await _warned(caplog, run, config)
    assert f"{name} (the default: {cfg} has no [topics] {key}) does not exist" in said
    assert f"give the command the services' --config (their [topics] {key})" in said
    assert kept in said
    said = await _warned(caplog, run, load_config(None, environ={}))
    assert f"(the default: no --config given, no $STREAM_EXPIRY_TOPICS_{key.upper()})" in said


def test_the_fix_for_a_list_of_topics_asks_for_the_services_list(tmp_path: Path) -> None:
    """``inputs`` and ``retired`` are arrays: their fix asks for the services' list, a
    single topic's for the services' one ("set [topics] inputs there to the services'
    one" read oddly, a trial)."""
    cfg = tmp_path / "expiry.toml"
    cfg.write_text('[topics]\ninputs = ["a"]\nretired = ["b"]\nholds = "h"\n')
    topics = load_config(cfg, environ={}).topics
    fixes = {key: topics.origin(key, str(cfg))[1] for key in ("inputs", "retired", "holds")}
    assert fixes == {
        key: f"set [topics] {key} there to the services' {one}, or give the command the "
        "services' --config"
        for key, one in (("inputs", "list"), ("retired", "list"), ("holds", "one"))
    }

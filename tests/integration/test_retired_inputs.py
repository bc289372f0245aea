"""An input topic taken out of ``[topics] inputs`` (a topic retired, or the producers'
topics swapped for ``rekey``'s copies, as the README's rekey section says to do) leaves
the records it stamped to no one: every instance restores and fires only the stores of the
input partitions it is assigned, and the changelog routes each stamp to the store of the
input partition it names. A trial found those records kept past their expiry with nothing
said anywhere: the service's overdue gauge covers its own partitions, and ``status``
counted them as plain overdue records, "the service is down or behind", while it ran."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry.cli import main
from stream_expiry.config import parse_config
from stream_expiry.service import wall_clock_ms
from tests.conftest import wait_for
from tests.integration.service_helpers import (
    config_for,
    config_text,
    event,
    produce,
    running_service,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

RETENTION = '[retention.defaults]\nconversation = "1h"\nanalytics = "5m"\n'
# The service's clock is this far behind the wall clock's: what it stamps falls due for
# the commands (status) and never while it runs.
BEHIND_MS = 600_000


def _without_errors(topics: TopicSet, text: str) -> str:
    """The config text with ``errors`` taken out of ``[topics] inputs``."""
    inputs = f'inputs = ["{topics.conversations}", "{topics.sessions}", "{topics.errors}"]'
    assert inputs in text
    return text.replace(inputs, f'inputs = ["{topics.conversations}", "{topics.sessions}"]')


async def _stamp_on_errors(broker: str, topics: TopicSet, tmp_path: Path) -> None:
    """A service reading all three inputs stamps two records read from ``errors``, one
    due 5 minutes after its creation and one an hour after, and stops (for a config
    change) before the first is due by its clock; by the wall clock it is due."""
    config = config_for(topics, str(tmp_path / "state"), RETENTION)
    created = wall_clock_ms() - BEHIND_MS
    async with running_service(
        config, broker, clock=lambda: wall_clock_ms() - BEHIND_MS
    ) as service:
        await produce(
            broker,
            [
                (topics.errors, *event("conversation", "kept-1h", ts=created)),
                (topics.errors, *event("analytics", "due-5m", ts=created)),
                (topics.conversations, *event("conversation", "of-an-input", ts=created)),
            ],
        )
        await wait_for(lambda: service.stats.stamped >= 3)
        assert service.stats.tombstones == 0


@pytest.mark.timeout(90)
async def test_status_names_the_records_of_a_topic_no_longer_an_input(
    broker: str, topics: TopicSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await _stamp_on_errors(broker, topics, tmp_path)
    cfg = tmp_path / "expiry.toml"
    cfg.write_text(_without_errors(topics, config_text(topics, str(tmp_path / "state"), RETENTION)))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)

    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, ["status", *common, "--json"]) == 0
    got = orjson.loads(capsys.readouterr().out)
    # Both of errors' records (the due one in the overdue count too); not the input's.
    assert got["not_inputs"] == {topics.errors: {"pending": 1, "due": 1}}
    assert got["overdue"] == 1

    assert await anyio.to_thread.run_sync(main, ["status", *common]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^  2 live records stamped from topics that \[topics\] inputs does not list: no "
        r"instance tombstones them",
        out,
        re.MULTILINE,
    ), out
    assert f"\n    {topics.errors}: 1 due, 1 pending\n" in out, out

    # With the config that lists it, nothing is said.
    cfg.write_text(config_text(topics, str(tmp_path / "state"), RETENTION))
    assert await anyio.to_thread.run_sync(main, ["status", *common, "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["not_inputs"] == {}


@pytest.mark.timeout(90)
async def test_run_warns_of_the_stores_of_partitions_no_longer_inputs(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The instance that held them has their stores in its state directory: its next
    start says how many records they keep that no instance will tombstone, and where."""
    await _stamp_on_errors(broker, topics, tmp_path)
    state = str(tmp_path / "state")
    narrowed = parse_config(_without_errors(topics, config_text(topics, state, RETENTION)))
    caplog.clear()
    with caplog.at_level("WARNING", logger="stream_expiry"):
        async with running_service(narrowed, broker, clock=lambda: wall_clock_ms() - BEHIND_MS):
            pass
    said = [
        r.getMessage() for r in caplog.records if "[topics] inputs does not list" in r.getMessage()
    ]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    # Both records from errors, each on the partition its key gave it (2 partitions).
    assert said[0].startswith(
        "the state directory holds 2 records pending or held of input partitions that "
        "[topics] inputs does not list: "
    ), said
    named = re.findall(rf"{re.escape(topics.errors)}\[(\d)\] (\d)", said[0])
    assert sum(int(n) for _p, n in named) == 2, said
    assert "status" in said[0]

    # Listed again, the start says nothing of them: they are its records again.
    caplog.clear()
    with caplog.at_level("WARNING", logger="stream_expiry"):
        async with running_service(
            config_for(topics, state, RETENTION), broker, clock=lambda: wall_clock_ms() - BEHIND_MS
        ):
            pass
    assert not [r for r in caplog.records if "inputs does not list" in r.getMessage()]

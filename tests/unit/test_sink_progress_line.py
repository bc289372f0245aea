"""The sink's progress line, driven by the sink itself over a real SQLite store (a scripted
consumer and producer, no broker). It is said once a batch's store transaction committed,
before that batch's receipts are published: "receipts 7 (6 published)" after the last batch
while nothing was left to publish a moment later (a user trial)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest

from stream_expiry.metrics import SinkMetrics
from stream_expiry.model import Identity, Stamp, encode_stamp, encode_tombstone
from stream_expiry.sinks import command
from stream_expiry.sinks.framework import BatchReport, Sink, SinkConfig
from stream_expiry.sinks.sqlite import SQLiteStore
from tests.log_capture import captured_logs
from tests.unit.test_sinks_framework import TP, FakeProducer, Journal, Rec

if TYPE_CHECKING:
    from pathlib import Path

T0 = 1_767_225_600_000
LINE = re.compile(r"receipts (\d+) \((.*)\)")


class _Consumer:
    def assignment(self) -> set[TP]:
        return {TP("st", 0), TP("tb", 0)}

    async def commit(self, offsets: dict[TP, int]) -> None:
        del offsets


def _batch(n: int) -> dict[Any, list[Rec]]:
    """The stamp of record rN and its tombstone: one deletion, one receipt."""
    s = Stamp(
        Identity("acme", "_", "live", "conversation", f"r{n}"), T0, T0 + 60_000, 60_000, "org"
    )
    key = s.identity.key.encode()
    tombstone = encode_tombstone(s, reason="ttl", emitted_at=T0 + 60_000)
    return {
        TP("st", 0): [Rec("st", 0, n, key, encode_stamp(s, {"x": 1}))],
        TP("tb", 0): [Rec("tb", 0, n, key, tombstone)],
    }


async def _lines(tmp_path: Path, receipts_topic: str) -> tuple[list[str], dict[str, int]]:
    """The progress lines of three batches (each said: ten seconds had passed), and the
    sink's counters after the last batch's publish."""
    config = SinkConfig("unused:1", "g", "st", "tb", receipts_topic=receipts_topic)
    async with SQLiteStore(tmp_path / "sink.db") as store:
        progress = command._Progress(SinkMetrics("sqlite"), {})

        def on_batch(report: BatchReport) -> None:
            progress._last -= command.PROGRESS_EVERY_S  # ten seconds have passed
            progress(report)

        sink = Sink(store, config, clock=lambda: T0 + 120_000, on_batch=on_batch)
        progress.counters = sink.metrics
        progress.publishes = sink.publishes
        with captured_logs() as logs:
            for n in range(3):
                await sink._handle(_batch(n), FakeProducer(Journal()), _Consumer())
    lines = [line for line in logs.text.getvalue().splitlines() if LINE.search(line)]
    return lines, dict(sink.metrics)


@pytest.mark.asyncio
async def test_the_receipts_of_the_batch_just_written_are_said_to_be_being_published(
    tmp_path: Path,
) -> None:
    lines, after = await _lines(tmp_path, "rc")
    said = [found for line in lines for found in LINE.findall(line)]
    assert said == [
        ("1", "0 published, 1 being published"),
        ("2", "1 published, 1 being published"),
        ("3", "2 published, 1 being published"),
    ]
    # A moment later, the last batch's receipt is published: none was left behind.
    assert (after["receipts_total"], after["published_total"]) == (3, 3)


@pytest.mark.asyncio
async def test_without_a_receipts_topic_the_receipts_are_said_to_stay_in_the_store(
    tmp_path: Path,
) -> None:
    lines, after = await _lines(tmp_path, "")
    assert lines[-1].endswith("receipts 3 (kept in the store only)")
    assert (after["receipts_total"], after["published_total"]) == (3, 0)


@pytest.mark.asyncio
async def test_the_last_batches_of_a_burst_are_said_once_ten_seconds_have_passed(
    tmp_path: Path,
) -> None:
    """Said on a batch alone, a batch within ten seconds of the line before went unsaid
    until the next batch: a trial's sink logged "deleted 0" for three minutes after it had
    deleted an erasure's rows. The tick between batches says it, once; an idle sink with
    nothing new says nothing."""
    now = [0.0]
    config = SinkConfig("unused:1", "g", "st", "tb", receipts_topic="")
    async with SQLiteStore(tmp_path / "sink.db") as store:
        progress = command._Progress(SinkMetrics("sqlite"), {}, clock=lambda: now[0])
        sink = Sink(store, config, clock=lambda: T0 + 120_000, on_batch=progress)
        progress.counters = sink.metrics
        progress.publishes = False
        with captured_logs() as logs:
            now[0] = 10.0
            await sink._handle(_batch(0), FakeProducer(Journal()), _Consumer())  # said
            now[0] = 15.0
            await sink._handle(_batch(1), FakeProducer(Journal()), _Consumer())  # too soon
            progress.tick()
            said_early = logs.text.getvalue().count("receipts ")
            now[0] = 20.0
            progress.tick()
            now[0] = 40.0
            progress.tick()  # nothing new since
    lines = [line for line in logs.text.getvalue().splitlines() if LINE.search(line)]
    assert said_early == 1
    assert len(lines) == 2
    assert "deleted 2," in lines[-1]


def test_a_batch_the_store_takes_long_to_apply_is_warned_of_once_and_its_end_said() -> None:
    """A review: a table another session had locked held a sink's batch for minutes, and
    nothing was said (no batch ended, so no progress line; the store's ping, ``SELECT 1``,
    took no lock and answered). Said once at :data:`command.SLOW_BATCH_S`, and its end."""
    clock = [100.0]
    applying: list[tuple[float, int] | None] = [None]
    progress = command._Progress(SinkMetrics("postgres"), {}, clock=lambda: clock[0])
    progress.applying = lambda: applying[0]
    with captured_logs() as logs:
        progress.tick()  # idle
        applying[0] = (100.0, 2)
        for now in (101.0, 100.0 + command.SLOW_BATCH_S - 0.5):
            clock[0] = now
            progress.tick()
        assert logs.text.getvalue() == ""  # not slow yet
        for now in (100.0 + command.SLOW_BATCH_S, 140.0, 170.0):
            clock[0] = now
            progress.tick()
        applying[0] = (171.0, 5)  # the next batch: not slow
        clock[0] = 172.0
        progress.tick()
        applying[0] = None
        clock[0] = 173.0
        progress.tick()
    said = logs.text.getvalue().splitlines()
    assert len(said) == 2, said
    assert "WARNING" in said[0]
    assert "the store has been applying one batch (2 messages) for 30 s" in said[0]
    assert "INFO" in said[1]
    assert said[1].endswith("the store finished the slow batch after 72 s")


@pytest.mark.asyncio
async def test_the_sink_says_which_batch_its_store_is_applying(tmp_path: Path) -> None:
    """:attr:`Sink.applying` while the store's transaction runs, and None after."""
    config = SinkConfig("unused:1", "g", "st", "tb", receipts_topic="rc")
    seen: list[tuple[float, int] | None] = []
    async with SQLiteStore(tmp_path / "sink.db") as store:
        sink = Sink(store, config, clock=lambda: T0 + 120_000)
        apply = store.apply

        async def watched(*args: Any, **kwargs: Any) -> Any:
            seen.append(sink.applying)
            return await apply(*args, **kwargs)

        store.apply = watched  # type: ignore[method-assign]
        await sink._handle(_batch(0), FakeProducer(Journal()), _Consumer())
    assert len(seen) == 1
    assert seen[0] is not None
    assert seen[0][1] == 2  # the stamp and its tombstone
    assert sink.applying is None


def test_a_failure_is_labelled_by_what_failed() -> None:
    """A setting the store refused is ``config``, not ``store`` (a review)."""
    from stream_expiry.errors import BrokerError, ConfigurationError, StoreError

    assert command.failure_cause(BrokerError("away")) == "broker"
    assert command.failure_cause(ConfigurationError("its sslrootcert ...")) == "config"
    assert command.failure_cause(StoreError("disk full")) == "store"

"""An erasure and a create of a record, sent before its expiry and read after it (a
producer's late send, a lagging or paused reader): the next life the create starts is
stamped and tombstoned, as when the events are read in time.

The record's first life is fired at its expiry first (reason ``ttl``; a category that does
not slide is fired whatever its partition has not read). The erasure, read then, still goes
out (naming no life); the create, dated before that expiry, was taken for a re-delivery of
the ended life and dropped: the next life was never stamped nor tombstoned (a review). The
engine now starts it, after the erasure, as read in time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
import pytest

from stream_expiry.codec import H_DELETED_AT
from stream_expiry.service import wall_clock_ms
from stream_expiry.timeutil import parse_ts
from tests.conftest import read_topic, wait_for
from tests.integration.service_helpers import config_for, event, produce, running_service
from tests.integration.sink_helpers import ident, open_store, running_sink, sink_config, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from stream_expiry.service import Service
    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

TTL_MS = 3_000


def _life(rec: Any) -> tuple[str, int | None, int | None]:
    """A tombstone's reason, creation and expiry (epoch ms; None where it has none)."""
    body = orjson.loads(rec.value)
    created, expires = body["created_at"], body["expires_at"]
    return (
        body["reason"],
        None if created is None else parse_ts(created),
        None if expires is None else parse_ts(expires),
    )


async def _erase_and_create_read_late(
    svc: Service,
    broker: str,
    topics: TopicSet,
    monkeypatch: pytest.MonkeyPatch,
    behind: list[int],
    *,
    behind_after: int = 0,
) -> tuple[int, int, int]:
    """Create a conversation, then send its erasure and a create, both dated before its
    expiry, while the service reads nothing (the loop gets no turn: its consumer is
    paused, as in a pause of the process or a reading that lags); let the clock, held
    ``behind[0]`` ms back until then, pass the expiry, then set it ``behind_after`` back
    and let the service read them. Returns the creation, the erasure's and the create's
    times."""
    t0 = wall_clock_ms()
    await produce(broker, [(topics.conversations, *event("conversation", "c1", ts=t0))])
    await read_topic(broker, topics.stamped, until=lambda r: len(r) >= 1)
    cons = svc._consumer
    assert cons is not None
    reading = svc._reading
    noting = reading.track_unread

    async def no_turn(*args: Any) -> None:
        pass

    monkeypatch.setattr(reading, "track_unread", no_turn)
    cons.pause(*cons.assignment())
    erased, again = t0 + 1_000, t0 + 2_000
    await produce(
        broker,
        [
            (topics.conversations, *event("conversation", "c1", op="delete", ts=erased)),
            (topics.conversations, *event("conversation", "c1", ts=again)),
        ],
    )
    assert svc.clock() < t0 + TTL_MS, "both must be on the broker before the expiry"
    behind[0] = 0  # the clock catches up: the first life's expiry passes

    def first_expiry_handled() -> bool:
        """The expiry passed, and the timer task took its timer (fired or set aside)."""
        dues = [p.next_due_ms() for p in svc.processors.values()]
        return svc.clock() > t0 + TTL_MS and all(d is None or d > t0 + TTL_MS for d in dues)

    await wait_for(first_expiry_handled, timeout_s=30)
    behind[0] = behind_after
    monkeypatch.setattr(reading, "track_unread", noting)
    cons.resume(*cons.assignment())
    return t0, erased, again


@pytest.mark.timeout(90)
async def test_an_erasure_and_a_create_read_after_the_expiry_start_the_next_life(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first life is tombstoned at its expiry (``ttl``), the erasure then goes out
    naming no life and ending at its own time (``expiry-deleted-at``), and the next life is
    stamped and then tombstoned at its own expiry."""
    retention = f'[retention.defaults]\nconversation = "{TTL_MS // 1000}s"\n'
    config = config_for(topics, str(tmp_path / "state"), retention)
    # A minute behind until both events are on the broker: they come before the first
    # life's expiry by construction, whatever the machine's pace.
    behind = [60_000]
    async with running_service(config, broker, clock=lambda: wall_clock_ms() - behind[0]) as svc:
        t0, erased, again = await _erase_and_create_read_late(
            svc, broker, topics, monkeypatch, behind
        )
        tombstones = await read_topic(
            broker,
            topics.tombstones,
            until=lambda r: any(_life(t)[1] == again for t in r),
            timeout_s=30,
        )
        stamped = await read_topic(
            broker, topics.stamped, until=lambda r: sum(x.value is not None for x in r) >= 2
        )
    lives = [_life(t) for t in tombstones]
    # The first life ends at its expiry (fired before the erasure was read), the erasure
    # names no life, and the next life ends at its own expiry.
    assert lives == [
        ("ttl", t0, t0 + TTL_MS),
        ("explicit", None, None),
        ("ttl", again, again + TTL_MS),
    ], lives
    assert dict(tombstones[1].headers)[H_DELETED_AT] == str(erased).encode()
    assert parse_ts(orjson.loads(tombstones[2].value)["emitted_at"]) >= again + TTL_MS
    creations = [orjson.loads(r.value)["created_at"] for r in stamped if r.value is not None]
    assert [parse_ts(c) for c in creations] == [t0, again], creations


@pytest.mark.timeout(120)
async def test_a_sqlite_store_keeps_the_next_life_begun_before_the_first_lifes_expiry(
    broker: str, topics: TopicSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, read by a sink into SQLite while the next life runs (the service's clock
    set a minute back once the first life was fired, so the next life, created 2 s after
    the first and with the same 3 s ttl, is not due while the sink reads): its row is
    there, created at the create's time, and the first life has its ``ttl`` receipt. A
    store that bounded the first life's ``ttl`` tombstone by its expiry deleted the next
    life's row, or kept its stamp out, whichever topic it read first."""
    retention = f'[retention.defaults]\nconversation = "{TTL_MS // 1000}s"\n'
    config = config_for(topics, str(tmp_path / "state"), retention)
    behind = [60_000]
    async with running_service(config, broker, clock=lambda: wall_clock_ms() - behind[0]) as svc:
        t0, _, again = await _erase_and_create_read_late(
            svc, broker, topics, monkeypatch, behind, behind_after=60_000
        )
        # expiry.stamped: the first life, its null, the erasure's null, the next life;
        # expiry.tombstones: the first life's ttl, the erasure naming no life.
        await read_topic(
            broker, topics.stamped, until=lambda r: sum(x.value is not None for x in r) >= 2
        )
        await read_topic(broker, topics.tombstones, until=lambda r: len(r) >= 2)
        async with open_store("sqlite", tmp_path) as store:
            async with running_sink(store, sink_config(broker, topics)) as sink:

                async def caught_up() -> bool:
                    return (
                        sink.metrics["messages_total"] >= 6 and not await store.pending_receipts()
                    )

                await wait_until(caught_up, timeout_s=40, what="the sink read both topics")
                key = ident("c1")
                row = await store.get(key)
                receipts = await store.receipts()
            assert svc.clock() < again + TTL_MS, "the next life must still run"
    assert row is not None, "the next life's row was deleted, or never written"
    assert (row.created_at, row.expires_at) == (again, again + TTL_MS)
    assert [(r.reason, r.created_at) for r in receipts] == [("ttl", t0)]

"""An applied ``replay`` keeps what a legal hold deferred: the erasure waits for the
release, and its tombstone names its request, after a restore from the changelog too.

A record erased under a hold keeps its erasure request for the release: on the state
store, and on its stamps (``expiry-request*`` for the stamp's own erasure,
``expiry-deferred-requests`` for an erased life kept beside the next one), which is all a
restore reads. Replay publishes stamps of its own over them, so what it publishes must
keep that, or leave the record alone."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import anyio
import orjson
import pytest

from stream_expiry.cli import main
from stream_expiry.codec import H_DEFERRED_REQUESTS
from stream_expiry.replay import H_REPLAY, replay
from stream_expiry.service import wall_clock_ms
from stream_expiry.timeutil import parse_ts
from tests.conftest import TopicSet, read_all, read_topic, wait_for
from tests.integration.service_helpers import (
    ArrivalLog,
    config_for,
    config_text,
    event,
    produce,
    running_service,
)
from tests.integration.sink_helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

MINUTE = 60_000
BEFORE = '[retention.defaults]\nconversation = "10m"\nsession = "10m"\n'
# Under it every record here is due now: a held one must still wait for the release.
AFTER = '[retention.defaults]\nconversation = "10s"\nsession = "10s"\n'
TOPIC_OF = {"conversation": "conversations", "session": "sessions"}


async def _cli(*argv: str) -> int:
    return await anyio.to_thread.run_sync(main, list(argv))


def _deferred_ttl(key: bytes) -> Callable[[list[Any]], bool]:
    """Whether entries of ``expiry.audit`` say a hold deferred the expiry of ``key``."""

    def said(records: list[Any]) -> bool:
        return any(
            r.key == key and orjson.loads(r.value).get("reason") == "ttl"
            for r in records
            if r.value is not None and b"deletion_deferred" in r.value
        )

    return said


def _latest(records: list[Any], key: bytes) -> Any:
    (*_, last) = [r for r in records if r.key == key]
    return last


@pytest.mark.timeout(180)
@pytest.mark.parametrize("from_inputs", [False, True], ids=["from-stamps", "from-inputs"])
@pytest.mark.parametrize(
    ("category", "again"),
    [("conversation", "create"), ("session", "touch")],
    ids=["created-again", "touched-again"],
)
async def test_an_applied_replay_keeps_the_deferred_erasures_and_their_requests(
    broker: str,
    topics: TopicSet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    from_inputs: bool,
    category: str,
    again: str,
) -> None:
    """Under a hold on org acme: ``e1`` erased (``gdpr-1``); ``d1`` erased (``gdpr-2``),
    then created or touched again (its next life, which keeps the erased one beside it,
    and ``gdpr-2`` in ``expiry-deferred-requests``). ``f1`` (org globex) is not held.
    A replay under a policy that makes every life here due now is applied, the state
    directory is lost, and the service restores from the changelog: ``f1`` goes at once,
    nothing of acme before the release, and then each erasure's tombstone names its own
    request (``d1``'s named none: replay's stamp of its next life, which the restore
    read, had no ``expiry-deferred-requests``), ``history`` too."""
    cfg = tmp_path / "expiry.toml"
    state = tmp_path / "state"
    cfg.write_text(config_text(topics, str(state), AFTER))
    common = ("--config", str(cfg), "--bootstrap-servers", broker)
    topic = getattr(topics, TOPIC_OF[category])
    now = wall_clock_ms()
    e1, d1 = (event(category, r)[0] for r in ("e1", "d1"))
    f1 = event(category, "f1", org="globex")[0]
    assert await _cli("hold", "place", *common, "--org", "acme",
                      "--reason", "a case", "--id", "case-1") == 0  # fmt: skip
    async with running_service(config_for(topics, str(state), BEFORE), broker) as service:
        await wait_for(lambda: len(service.holds) == 1)
        events = [
            event(category, "e1", ts=now - 8 * MINUTE),
            event(category, "d1", ts=now - 8 * MINUTE),
            event(category, "f1", org="globex", ts=now - 8 * MINUTE),
            event(category, "e1", op="delete", ts=now - MINUTE, event_id="gdpr-1"),
            event(category, "d1", op="delete", ts=now - MINUTE, event_id="gdpr-2"),
            event(category, "d1", op=again, ts=now - MINUTE // 2),
        ]
        await produce(broker, [(topic, *e) for e in events])
        await wait_for(lambda: service.stats.events >= len(events))

        async def kept_beside() -> bool:
            last = _latest(await read_all(broker, topics.stamped), d1)
            return last.value is not None and b"held_lives" in last.value

        await wait_until(kept_beside, what="d1's next life's stamp")
    stamped = await read_all(broker, topics.stamped)
    assert H_DEFERRED_REQUESTS in dict(_latest(stamped, d1).headers)  # what a restore reads
    before = {(r.partition, r.offset) for r in stamped}

    config = config_for(topics, str(state), AFTER)
    report = await replay(config, broker, environ={}, from_inputs=from_inputs)
    counts = report.counts()
    # f1 and d1's next life, due now; e1 left to its erasure.
    assert (counts["records"], counts["due_now"]) == (2, 2), counts

    shutil.rmtree(state)  # the state directory lost: the next start restores
    tombstones = ArrivalLog(broker, topics.tombstones)
    async with anyio.create_task_group() as tg:
        tg.start_soon(tombstones.follow)
        async with running_service(config, broker) as service:
            await wait_for(lambda: len(service.holds) == 1)
            await wait_for(lambda: any(r.key == f1 for _, r in tombstones.arrivals), timeout_s=15)
            # Restored as held: e1 (its erasure waits, frozen) and d1, whose next life,
            # due, the hold defers (expiry.audit says so); neither tombstoned.
            deferred_again = _deferred_ttl(d1)
            assert deferred_again(await read_topic(broker, topics.audit, until=deferred_again))
            assert sum(p.store.counts.held for p in service.processors.values()) == 2
            assert tombstones.keys() == {f1}
            released_at = wall_clock_ms()
            assert await _cli("hold", "release", *common, "case-1") == 0
            # e1's erasure, d1's erased life and d1's next life (due under AFTER).
            await wait_for(
                lambda: sum(r.key in (e1, d1) for _, r in tombstones.arrivals) >= 3,
                timeout_s=15,
            )
        tg.cancel_scope.cancel()
    held = [(at, r) for at, r in tombstones.arrivals if r.key != f1]
    assert all(at >= released_at for at, _ in held)  # nothing early
    named = {
        (r.key, orjson.loads(r.value)["reason"], orjson.loads(r.value)["created_at"]): dict(
            r.headers
        ).get("expiry-request-event-id")
        for _, r in held
    }
    first, second = now - 8 * MINUTE, now - MINUTE // 2
    assert {(k, why, parse_ts(at)): n for (k, why, at), n in named.items()} == {
        (e1, "explicit", first): b"gdpr-1",
        (d1, "explicit", first): b"gdpr-2",
        (d1, "ttl", second): None,
    }
    # Replay's stamp of d1's next life (moved: due now) names its erased life's request
    # as the stamp it replaced did; the restore read it there.
    (replayed,) = [
        dict(r.headers)
        for r in await read_all(broker, topics.stamped)
        if r.key == d1 and (r.partition, r.offset) not in before and H_REPLAY in dict(r.headers)
    ]
    (entry,) = orjson.loads(replayed[H_DEFERRED_REQUESTS])
    assert (entry[0], entry[1], entry[3]) == (now - MINUTE, True, "gdpr-2")

    capsys.readouterr()
    argv = ("--org", "acme", "--category", category, "--record-id", "d1", "--json")
    assert await _cli("history", *common, *argv) == 0
    found = orjson.loads(capsys.readouterr().out)
    said = {
        (e["kind"], e.get("reason"), e.get("request_event_id"))
        for e in found["events"]
        if e.get("request_event_id") is not None
    }
    assert ("deletion_deferred", "explicit", "gdpr-2") in said, found["events"]
    assert any(kind != "deletion_deferred" and eid == "gdpr-2" for kind, _, eid in said), said

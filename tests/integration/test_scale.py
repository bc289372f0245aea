"""A large platform's control topics at a start: many policies and holds, few log lines.

Both topics are read whole at every start. A platform with 100,000 policy entries and
10,000 legal holds logged a line for each at every start; the start now says how many,
and each one at debug level. Updates that arrive while the service runs are still said
one by one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson
import pytest

from stream_expiry.holds import Hold, encode_hold
from tests.conftest import wait_for
from tests.integration.service_helpers import config_for, produce, running_service

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import TopicSet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

POLICIES = 40
HOLDS = 30


def _policy(org: str, ttl: str) -> tuple[bytes, bytes]:
    return f"org/{org}".encode(), orjson.dumps(
        {"scope": "org", "org": org, "ttl": {"conversation": ttl}}
    )


def _lines(caplog: pytest.LogCaptureFixture, text: str, level: int) -> int:
    return sum(1 for r in caplog.records if text in r.getMessage() and r.levelno == level)


@pytest.mark.timeout(120)
async def test_a_start_counts_the_policies_and_holds_it_reads_and_says_later_ones_each(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await produce(
        broker,
        [(topics.policies, *_policy(f"org{i}", f"{i + 1}d")) for i in range(POLICIES)]
        + [
            (
                topics.holds,
                f"h{i}".encode(),
                encode_hold(Hold(f"h{i}", f"org{i}", None, None, None, None, "case", None)),
            )
            for i in range(HOLDS)
        ],
    )
    config = config_for(topics, str(tmp_path / "state"))
    with caplog.at_level(logging.DEBUG, logger="stream_expiry"):
        async with running_service(config, broker) as service:
            assert _lines(caplog, "policy update applied", logging.INFO) == 0
            assert _lines(caplog, "policy update applied", logging.DEBUG) == POLICIES
            assert _lines(caplog, "placed on", logging.INFO) == 0
            assert _lines(caplog, "placed on", logging.DEBUG) == HOLDS
            assert _lines(caplog, f"{POLICIES} policy updates applied from", logging.INFO) == 1
            assert _lines(caplog, f"{HOLDS} legal holds active", logging.INFO) == 1
            await produce(broker, [(topics.policies, *_policy("late", "3d"))])
            await wait_for(lambda: service.stats.policy_updates == POLICIES + 1)
            assert _lines(caplog, "policy update applied: scope org/late", logging.INFO) == 1


@pytest.mark.timeout(120)
async def test_one_policy_and_one_hold_read_at_a_start_are_counted_in_the_singular(
    broker: str, topics: TopicSet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A trial's start said "1 policy updates applied"."""
    hold = Hold("h0", "org0", None, None, None, None, "case", None)
    await produce(
        broker,
        [(topics.policies, *_policy("org0", "1d")), (topics.holds, b"h0", encode_hold(hold))],
    )
    config = config_for(topics, str(tmp_path / "state"))
    with caplog.at_level(logging.INFO, logger="stream_expiry"):
        async with running_service(config, broker):
            said = f"1 policy update applied from {topics.policies} (each one at debug level)"
            assert _lines(caplog, said, logging.INFO) == 1
            assert _lines(caplog, "1 legal hold active (each one", logging.INFO) == 1

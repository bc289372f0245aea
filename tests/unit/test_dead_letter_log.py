"""The service's dead-letter warnings are bounded: a producer gone wrong sent 30,000 events
of a misspelt category in a trial, and the log got 30,000 lines in 3 s, the same but for
the offset. The first of each window are said one by one, the rest counted in one line."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from stream_expiry.dead_letter_log import DeadLetterLog

if TYPE_CHECKING:
    import pytest

LOG = logging.getLogger("test.dead_letters")


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG.name]


def test_the_first_are_said_one_by_one_and_the_rest_counted_at_the_window_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    dead = DeadLetterLog(LOG, "expiry.dlq", clock=clock, window_s=10.0, said_per_window=3)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for offset in range(2_000):
            dead.say("errors", 1, offset, "unknown_category", "category 'eror' is not configured")
        dead.say("conversations", 0, 7, "invalid_json", "the value is not JSON")
        assert _lines(caplog) == [
            f"dead letter errors[1]@{o}: unknown_category (category 'eror' is not configured)"
            for o in range(3)
        ]
        clock.now += 5
        dead.flush()  # the window has not ended: nothing more yet
        assert len(_lines(caplog)) == 3
        clock.now += 5
        dead.flush()
        summary = _lines(caplog)[3]
        assert summary.startswith(
            "1,998 more dead letters in the last 10 s, not said one by one (1 invalid_json on "
            "conversations, 1,997 unknown_category on errors): each is on expiry.dlq"
        )
        # A new window says its first ones again.
        dead.say("errors", 2, 9, "unknown_category", "category 'eror' is not configured")
        assert _lines(caplog)[4] == (
            "dead letter errors[2]@9: unknown_category (category 'eror' is not configured)"
        )
        assert len(_lines(caplog)) == 5


def test_a_stop_says_what_was_counted_and_a_quiet_window_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    dead = DeadLetterLog(LOG, "expiry.dlq", clock=clock, window_s=10.0, said_per_window=1)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        clock.now += 60
        dead.flush()
        assert _lines(caplog) == []  # no dead letter: no line
        dead.say("errors", 0, 1, "bad_timestamp", "ts is not a time")
        dead.say("errors", 0, 2, "bad_timestamp", "ts is not a time")
        dead.flush(final=True)
        assert _lines(caplog)[1].startswith("1 more dead letter in the last 0 s")

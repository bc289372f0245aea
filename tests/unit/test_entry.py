"""The entry point's handling of a signal that arrives while it sets its own handler."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from stream_expiry import entry


def test_a_ctrl_c_as_the_handler_is_set_is_a_quiet_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that arrived while ``signal.signal`` returned (in the standard library's
    conversion of the old handler to an enum) ended a CI run's command with a
    ``KeyboardInterrupt`` traceback and status -2: the handler was set before the ``try``
    that turns an interrupt into status 130. Here the interrupt is raised at that moment."""
    calls: list[int] = []

    def interrupted_on_return(signum: int, handler: Any) -> None:
        calls.append(signum)  # the process's real handlers stay as pytest set them
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(signal, "signal", interrupted_on_return)
    with pytest.raises(SystemExit) as stopped:
        _run_entry_point()
    assert stopped.value.code == entry.INTERRUPTED
    assert calls == [signal.SIGTERM, signal.SIGINT, signal.SIGTERM]


def _run_entry_point() -> None:
    """``entry.main()``, an interrupt that escapes it a test failure (not pytest's stop)."""
    try:
        entry.main()
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped the entry point: a traceback and status -2")

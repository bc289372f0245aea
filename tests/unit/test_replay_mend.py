"""Which of replay's messages a running instance's later message makes stale."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.replay_mend import Superseded

K, J = b"k", b"j"


def _scan(log: list[tuple[bytes, bool]]) -> dict[bytes, int]:
    scan = Superseded()
    for offset, (key, ours) in enumerate(log):
        scan.see(key, offset, ours)
    return scan.stale


def test_a_null_written_before_replays_stamp_is_published_again() -> None:
    assert _scan([(K, False), (K, True)]) == {K: 0}


def test_the_latest_of_several_messages_before_replays_stamp_is_the_one() -> None:
    assert _scan([(K, False), (J, False), (K, False), (K, True)]) == {K: 2}


def test_a_message_after_replays_stamp_is_the_latest_already() -> None:
    assert _scan([(K, False), (K, True), (K, False)]) == {}


def test_replays_stamp_alone_in_the_window_stands() -> None:
    assert _scan([(K, True), (J, False)]) == {}


def test_a_message_before_a_copy_replay_made_is_published_again() -> None:
    """A second round: its window starts after the first round's read, where an
    instance's new stamp came before replay's copy of the older null."""
    assert _scan([(J, True), (K, False), (K, True)]) == {K: 1}


@given(st.lists(st.tuples(st.sampled_from([K, J, b"x"]), st.booleans()), max_size=30))
def test_after_mending_every_key_ends_with_an_instances_message_or_a_stamp_of_replays_alone(
    log: list[tuple[bytes, bool]],
) -> None:
    """What the window holds once each stale key's chosen message is appended again: the
    last message of every key another writer wrote in the window is that writer's."""
    stale = _scan(log)
    mended = log + [(log[at][0], False) for at in stale.values()]
    last: dict[bytes, bool] = {}
    for key, ours in mended:
        last[key] = ours
    written_by_others = {key for key, ours in log if not ours}
    assert all(not last[key] for key in written_by_others)
    for key, at in stale.items():
        assert log[at] == (key, False)
        assert max(i for i, (k, ours) in enumerate(log) if k == key and not ours) == at

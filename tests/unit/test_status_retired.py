"""``status`` and the records stamped from partitions a retired topic no longer has (made
again with fewer): counted apart, by partition, from the stamps' source headers and the
topic's partition count now, and said with what to do."""

from __future__ import annotations

from collections import Counter

from stream_expiry import codec
from stream_expiry.holds import HoldBook
from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.state import MemoryKV
from stream_expiry.status import Status, _count, _folding, _Sources, text_lines

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TTL = 3_600_000


def _stamp(rid: str, expires: int | None = T0 + TTL) -> Stamp:
    return Stamp(Identity("acme", "_", "live", "analytics", rid), T0, expires, TTL, "default")


def _counted(sources: _Sources, at: int, *stamps: tuple[Stamp, str, int]) -> Status:
    """``status``'s counts at ``at`` of ``stamps``, each with the input partition it names."""
    kv = MemoryKV()
    fold = _folding(sources)
    for offset, (stamp, topic, partition) in enumerate(stamps):
        key = stamp.identity.key.encode()
        headers = codec.source_headers(topic, partition)
        kept = fold(0, offset, headers, key, encode_stamp(stamp))
        assert kept is not None
        kv.apply({key: kept}, [])
    result = Status(at=at)
    result.retired = {name: Counter() for name in sources.retired}
    _count(result, kv, HoldBook(), None, sources)  # type: ignore[arg-type]
    return result


def test_the_records_of_partitions_a_retired_topic_no_longer_has_are_counted_apart() -> None:
    """``old`` has 2 partitions now: its records stamped from partitions 2 and 3 are no
    instance's; those of 0 and 1 are. ``missing`` is not on the cluster (0: the service
    makes it with the partitions its stamps name), and a topic not retired has no count:
    neither is said. A record that never expires leaves nothing to do."""
    sources = _Sources(["in"], ["old", "missing"], {"old": 2, "missing": 0, "gone": 1})
    result = _counted(
        sources,
        T0 + TTL,
        (_stamp("a"), "old", 0),
        (_stamp("b", T0 + 2 * TTL), "old", 1),
        (_stamp("c"), "old", 2),
        (_stamp("d", T0 + 2 * TTL), "old", 3),
        (_stamp("e", T0 + 2 * TTL), "old", 3),
        (_stamp("f", None), "old", 3),
        (_stamp("g"), "missing", 5),
        (_stamp("h"), "gone", 4),
        (_stamp("i"), "in", 7),
    )
    assert result.partitions_gone == {"old": {2: Counter(due=1), 3: Counter(pending=2)}}
    # In the retired topics' counts too, as before, and in the figures above them.
    assert result.retired == {"old": Counter(due=2, pending=3), "missing": Counter(due=1)}
    assert result.not_inputs == {"gone": Counter(due=1)}
    result.retired_partitions = {"old": 2, "missing": 0}
    assert result.as_dict()["retired_partitions_gone"] == {
        "old": {
            "partitions": 2,
            "needed": 4,
            "pending": 2,
            "due": 1,
            "gone": {"old[2]": {"pending": 0, "due": 1}, "old[3]": {"pending": 2, "due": 0}},
        }
    }


def test_status_says_the_partitions_gone_and_the_command_that_gives_them_back() -> None:
    result = _counted(
        _Sources([], ["old\x1b[2J"], {"old\x1b[2J": 1}), T0, (_stamp("a"), "old\x1b[2J", 2)
    )
    result.retired_partitions = {"old\x1b[2J": 1}
    lines = text_lines(result.as_dict())
    at = next(i for i, line in enumerate(lines) if "retired topics no longer have" in line)
    assert lines[at].startswith(
        "  1 live record stamped from partitions that retired topics no longer have (made "
        "again with fewer?): the group assigns no instance those partitions, so none "
        "tombstones them, due or not. Give each topic its partitions again, or stop the "
        "instances and delete it: the next start makes it with as many as its stamps name."
    ), lines[at]
    # A topic's name from the bus cannot drive the terminal.
    assert lines[at + 1 : at + 3] == [
        "    old\\x1b[2J: 1 partition, its stamps name 3: old\\x1b[2J[2] 0 due, 1 pending",
        "      kafka-topics.sh --alter --topic old\\x1b[2J --partitions 3",
    ]
    assert not [line for line in text_lines(Status(at=T0).as_dict()) if "no longer" in line]

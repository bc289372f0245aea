"""``status`` for a person: the figures stand in one column whatever the names' lengths."""

from __future__ import annotations

import re

from stream_expiry.status import text_lines

STATUS = {
    "at": "2026-01-01T00:00:00.000Z",
    "pending": {"conversation": 1_234, "training_expression": 5},
    "pending_total": 1_239,
    "never": 7,
    "next_due": "2026-01-01T01:00:00.000Z",
    "overdue": 2,
    "oldest_overdue": "2025-12-31T23:59:00.000Z",
    "holds": [{"hold_id": "h1", "reason": "audit", "records_held": 1}],
    "lag": {"conversations[0]": {"end": 10, "committed": 4, "lag": 6}},
}


_NOT_FIGURES = ("as of", "    h1:", "  lag per")
_NOTE = "not read by the service yet"  # the note under the lag, when there is one


def _figure_ends(lines: list[str]) -> set[int]:
    """The column where each row's figure (the first number after its name) ends."""
    ends = set()
    for line in lines:
        found = re.search(r" ([\d,]+)(?:   |$)", line)
        assert found is not None, line
        ends.add(found.end(1))
    return ends


def test_a_long_category_name_keeps_the_figures_in_one_column() -> None:
    lines = text_lines(STATUS)
    figures = [line for line in lines if not line.startswith(_NOT_FIGURES) and _NOTE not in line]
    assert len(figures) == 7
    assert len(_figure_ends(figures)) == 1, "\n".join(lines)
    assert any("training_expression" in line and line.rstrip().endswith(" 5") for line in lines)


def test_the_records_waiting_for_the_archive_are_a_row_under_overdue() -> None:
    """With [archive] required, how many overdue records wait for the archive, and that
    this is why they are late; in the figures' column."""
    lines = text_lines(STATUS | {"archive_waiting": 2})
    overdue = next(i for i, line in enumerate(lines) if line.startswith("  overdue"))
    waiting = lines[overdue + 1]
    assert waiting.startswith("    waiting for the archive")
    assert "the archive has not written them: their purges wait for it" in waiting
    assert lines[overdue + 2].startswith("  legal holds")
    figures = [line for line in lines if not line.startswith(_NOT_FIGURES) and _NOTE not in line]
    assert len(_figure_ends(figures)) == 1, "\n".join(lines)
    none_waiting = text_lines(STATUS | {"archive_waiting": 0})
    assert re.search(r"^    waiting for the archive +0$", "\n".join(none_waiting), re.MULTILINE)
    assert not any("archive" in line for line in text_lines(STATUS | {"archive_waiting": None}))


def test_a_hold_from_the_bus_cannot_drive_the_terminal_or_forge_a_line() -> None:
    """Any producer on expiry.holds chooses the id and the reason ``status`` prints."""
    hostile = {
        "hold_id": "h\x1b[31m",
        "reason": "x\x1b]0;title\x07\r\nfake \u202e",
        "records_held": 2,
        "records_matched": 5,
    }
    lines = text_lines(STATUS | {"holds": [hostile]})
    (line,) = [line for line in lines if line.startswith("    h")]
    assert line == (
        "    h\\x1b[31m: 2 records held, 5 matched (x\\x1b]0;title\\x07\\r\\nfake \\u202e), "
        "placed by (unknown)"
    )
    assert not any(c < " " or c == "\u202e" for c in "".join(lines))


def test_a_committed_offset_past_the_end_is_explained_not_only_a_negative_lag() -> None:
    """Seen in a trial after the broker came back empty: ``-18`` and no word."""
    lag = {
        "conversations[0]": {"end": 54, "committed": 72, "lag": -18},
        "conversations[1]": {"end": 10, "committed": 10, "lag": 0},
        "conversations[2]": {"end": 10, "committed": None, "lag": 10},
    }
    lines = text_lines(STATUS | {"lag": lag})
    past, level, never = (next(x for x in lines if f"[{p}]" in x) for p in range(3))
    assert "-18   committed offset 72 is past the end 54: the topic was made again?" in past
    assert "read from its beginning when next assigned" in past
    assert "past the end" not in level + never


def test_the_lag_names_its_group_and_a_group_that_committed_nothing() -> None:
    """Run without the service's config, status asks the default group, which committed
    nothing: every event then shows as lag. The text names the group it measured and says
    when that group has committed nothing at all, so the figure is not taken for a service
    that is behind."""
    lines = text_lines(STATUS | {"group": "stream-expiry"})
    assert "  lag per input partition of group 'stream-expiry' (end - committed offset)" in lines
    assert not any("committed no offset" in line for line in lines)
    nothing = {"conversations[0]": {"end": 10, "committed": None, "lag": 10}}
    lines = text_lines(STATUS | {"group": "stream-expiry", "lag": nothing})
    assert lines[-1].startswith("    group 'stream-expiry' has committed no offset")
    assert "not the service's group_id?" in lines[-1]


def test_a_cluster_without_the_input_topics_is_said_not_shown_as_all_well() -> None:
    """All zeros and an empty lag list on a cluster where the service never ran read as
    "all is well" (a trial); with input partitions, nothing is added."""
    lines = text_lines(STATUS | {"lag": {}})
    assert lines[-1] == (
        "    no input topic of [topics] inputs exists on this cluster: is this the service's "
        "cluster (--bootstrap-servers) and its config (--config)?"
    )
    assert not any("no input topic" in line for line in text_lines(STATUS))


def test_input_events_not_read_yet_are_said_to_be_in_no_count() -> None:
    """The counts are the changelog's: with the service down, a create read by nobody and
    already expired showed as overdue 0, all well but for the lag figure (a trial)."""
    lines = text_lines(STATUS)
    assert lines[-1] == (
        "    6 input events not read by the service yet: what they create or end is not in "
        "the counts above (a lag that stays or grows: is the service running?)"
    )
    one = {"conversations[0]": {"end": 5, "committed": 4, "lag": 1}}
    assert text_lines(STATUS | {"lag": one})[-1].startswith("    1 input event not read")
    level = {"conversations[0]": {"end": 4, "committed": 4, "lag": 0}}
    assert "not read" not in text_lines(STATUS | {"lag": level})[-1]


def _store(running: int | None, tombstones: int) -> dict[str, object]:
    return {
        "committed": True,
        "running": running,
        "stamps_behind": 0,
        "tombstones_behind": tombstones,
        "oldest_tombstone_waiting": "2025-12-31T23:00:00.000Z" if tombstones else None,
        "tombstones_waiting_s": 3_600.0 if tombstones else None,
        "partitions": {},
    }


def test_a_store_behind_says_whether_a_sink_runs_in_its_group() -> None:
    """An SRE whose PostgreSQL store fell behind asks first whether its sink runs at all:
    the line said what waited and since when, never whether anyone read for the group (a
    stopped sink and a slow one looked the same)."""
    stores = {
        "stream-expiry-sink-postgres": _store(0, 5),
        "stream-expiry-sink-sqlite": _store(2, 0),
        "stream-expiry-sink-eu": _store(None, 0),
    }
    lines = text_lines(STATUS | {"stores": stores, "sink_groups": list(stores)})
    said = lines[
        lines.index("  downstream stores (by sink group: what each has not applied yet)") :
    ]
    assert said[1:] == [
        "    stream-expiry-sink-postgres: 5 tombstones not applied, the oldest from "
        "2025-12-31T23:00:00.000Z (3,600.0 s: deletions due that long are not made in it yet); 0 changelog messages not "
        "applied; no sink is running in the group: start it",
        "    stream-expiry-sink-sqlite: 0 tombstones not applied; 0 changelog messages not applied; "
        "2 members in the group",
        "    stream-expiry-sink-eu: 0 tombstones not applied; 0 changelog messages not applied; the broker "
        "did not describe the group (whether a sink runs is unknown)",
    ]


def test_a_store_far_behind_has_thousands_separators_as_the_figures_above() -> None:
    stores = {"g": _store(1, 1_234_567) | {"stamps_behind": 2_000}}
    lines = text_lines(STATUS | {"stores": stores, "sink_groups": ["g"]})
    (line,) = [line for line in lines if line.startswith("    g: ")]
    assert line.startswith("    g: 1,234,567 tombstones not applied, ")
    assert "; 2,000 changelog messages not applied; 1 member in the group" in line


def test_a_group_that_reads_no_changelog_gets_no_changelog_backlog() -> None:
    """A consumer of the tombstones alone (examples/tombstone_consumer.py, group my-store)
    was said to have "15 changelog messages not applied", a count that never went down (a
    user trial): it never reads expiry.stamped."""
    stores = {"my-store": _store(1, 0) | {"stamps_behind": None, "reads_changelog": False}}
    lines = text_lines(STATUS | {"stores": stores, "sink_groups": ["my-store"]})
    (line,) = [line for line in lines if line.startswith("    my-store: ")]
    assert line == (
        "    my-store: 0 tombstones not applied; reads no changelog (no offset committed on the "
        "stamped topic): its changelog messages are not counted; 1 member in the group"
    )

"""``explain`` for people: every candidate, which one won, and why.

It works from the contract's JSON alone (not from the book), so the table can be printed
for any explanation, including one produced by another instance or saved earlier, and it
re-derives the verdict with the same rules rather than trusting extra fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from stream_expiry.durations import format_duration
from stream_expiry.policy.sources import ENV_VARIABLES

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from stream_expiry.policy.book import PolicyBook

__all__ = ["apply_updates", "render_explain_table", "unset_variables", "updates_left_out"]

_PRIMARY: Final = ("org", "bot", "env")
_HEADERS: Final = ("source", "name", "ttl", "verdict")


def _ttl_text(candidate: Mapping[str, Any]) -> str:
    seconds = candidate.get("ttl_seconds")
    if not candidate.get("valid", True):
        return "invalid"
    if seconds is None:
        return "not positive"
    return f"{format_duration(int(seconds) * 1000)} ({seconds} s)"


def _winner_index(
    candidates: Sequence[Mapping[str, Any]], ttl: Any, source: Any, joined: bool
) -> int:
    if ttl is None:
        return -1
    for i, c in enumerate(candidates):
        eligible = joined or c.get("source") != "default"
        if eligible and c.get("ttl_seconds") == ttl and c.get("source") == source:
            return i
    return -1


def _verdict(c: Mapping[str, Any], i: int, winner: int, ttl: Any, joined: bool, why: str) -> str:
    if i == winner:
        return f"WINS: {why}"
    if not c.get("valid", True):
        return "ignored: not a valid duration"
    if c.get("ttl_seconds") is None:
        return "ignored: 0, negative or empty"
    if c.get("source") == "default" and not joined:
        return "not used: org, bot or env gives a positive value"
    if ttl is not None and c.get("ttl_seconds") == ttl:
        return "equal to the winner, which is listed first"
    return "larger than the winner"


def render_explain_table(explanation: Mapping[str, Any]) -> str:
    """A plain-text table of an ``explain`` result, ending with the verdict in a sentence."""
    candidates: list[Mapping[str, Any]] = list(explanation.get("candidates") or [])
    ttl = explanation.get("ttl_seconds")
    source = explanation.get("source")
    joined = not any(
        c.get("source") in _PRIMARY and c.get("ttl_seconds") is not None for c in candidates
    )
    if ttl is None:
        why = "no positive candidate"
    elif source == "default":
        why = "default used because org, bot and env give no positive value"
    elif joined and any(c.get("source") == "default" for c in candidates):
        why = "smallest positive value (default joined: org, bot and env give no positive value)"
    else:
        why = "smallest positive value"
    winner = _winner_index(candidates, ttl, source, joined)
    rows = [
        (
            str(c.get("source")),
            str(c.get("name")),
            _ttl_text(c),
            _verdict(c, i, winner, ttl, joined, why),
        )
        for i, c in enumerate(candidates)
    ]
    lines: list[str] = []
    if rows:
        widths = [max(len(r[k]) for r in [_HEADERS, *rows]) for k in range(3)]
        for r in [_HEADERS, *rows]:
            lines.append("  ".join(r[k].ljust(widths[k]) for k in range(3)) + "  " + r[3])
    else:
        lines.append("no value is configured for this record anywhere")
    lines.append("")
    if ttl is None:
        lines.append(f"never expires: {why}")
    else:
        name = candidates[winner].get("name") if winner >= 0 else "?"
        lines.append(
            f"effective TTL: {format_duration(int(ttl) * 1000)} ({ttl} s) from {source} ({name}): {why}"
        )
    return "\n".join(lines) + "\n"


def unset_variables(category: str, explanation: Mapping[str, Any]) -> str | None:
    """The line naming the TTL variables ``category`` reads that give it no candidate, or
    None when it reads none or each gives one. The table lists only the variables that are
    set, and the warning about a misspelt one sends the reader here to find the name meant
    (a preset's value for an unset variable is a candidate of that name too)."""
    given = {str(c.get("name")).rpartition(": ")[2] for c in explanation.get("candidates") or []}
    unset = [name for name in ENV_VARIABLES.get(category, ()) if name not in given]
    if not unset:
        return None
    return f"TTL variables {category} reads, not set: {', '.join(unset)}"


def updates_left_out(topic: str, *, offline: bool) -> str:
    """The line ``explain`` prints when it read no policy updates: the running service
    applies those on ``topic`` over the config, so a table without them can name a TTL no
    record gets, and must say so, with how to include them. ``offline``: the user asked for
    that (``--offline``); else no brokers were known at all."""
    how = (
        "--offline; without it, explain reads them from the brokers"
        if offline
        else "no brokers known: pass --bootstrap-servers HOST:PORT, or set bootstrap_servers "
        "in the config file or STREAM_EXPIRY_BOOTSTRAP_SERVERS, to include them"
    )
    return f"not included: the runtime policy updates on {topic} ({how})"


def apply_updates(
    book: PolicyBook, updates: Iterable[tuple[bytes | None, bytes | None, int]], topic: str
) -> list[str]:
    """Apply ``updates`` (key, value, Kafka timestamp) to ``book`` in their order, as the
    service does, and return what the service would warn of: each update rejected whole,
    and each value ignored in one applied. ``explain`` and ``replay`` print them: an
    answer that skipped one silently looks complete."""
    from stream_expiry.model import Rejection

    said: list[str] = []
    for key, value, timestamp in updates:
        applied = book.apply_update(key, value, timestamp)
        if isinstance(applied, Rejection):
            # Its key said, as the service's warning says it: which scope to publish again
            # ("ttl key 'conversaton' is not a configured category" named no scope).
            named = "no key" if key is None else f"key {key.decode(errors='replace')!r}"
            said.append(
                f"a policy update on {topic} ({named}) is ignored: {applied.code} "
                f"({applied.detail})"
            )
        elif (why := applied.ignored_rejection()) is not None:
            said.append(f"policy update {applied.key} on {topic}: {why.detail}")
    return said

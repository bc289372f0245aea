"""A retired partition's record that another partition took over (``rekey``'s copies).

The switch to ``stream-expiry rekey``'s copies (README: Changing the input topics) moves
the producers' topics to ``[topics] retired`` and reads the copies instead. A record
stamped from a producers' topic before the switch is read again from its copy (``rekey``
copies the producers' topics from their beginning), and each input partition has a
processor and a store of its own: the record then has two states, one in the retired
partition's store, one in the copy's, both of one life (one creation time). A touch read
after the switch extends the copy's state alone, and the retired state, firing at the
life's earlier expiry, sent a ``ttl`` tombstone naming that life: every store deleted the
session early (a tombstone ends the lives created at or before its ``created_at``).

So before a retired partition fires a sliding record, it asks the partitions that read
on (:class:`Successor`, the shell's look-up) for their state of it, and *follows* a state
that continues the life past its own expiry: it takes that expiry as its own and fires
then, beside the successor's tombstone (the same life and expiry: the sinks are
idempotent), and its own null removes its stamp, data and all, from its partition of
``expiry.stamped``. It sends nothing meanwhile: its stamp on the changelog keeps the
earlier expiry, and a restore of it decides the same again, as the successor's state is
what decides, not a message. While the successor's partition has input not read yet (a
touch sent before the expiry may wait there, or the backlog of a partition just
assigned), the record waits (``UNREAD``) and is asked about again after
:data:`RETRY_MS`: late rather than early.

Pure: no IO, no clock; the shell's look-up sees only the partitions this instance holds.

Not yet: a copy's partition another instance holds (the group assigns partition n of a
retired topic with partition n of the inputs; the copy's partition of a record is the
CRC-32 of its key, so with N instances about (N-1)/N of the records' copies are
elsewhere). That record fires at its old expiry as before (the README says so; a strict
xfail test holds it). ``expiry.stamped`` cannot carry the answer: the service writes a
record's stamps beside their input partition (:func:`stream_expiry.codec.output_partition`,
not the key's CRC-32), so the retired stamp and the copy's sit on two partitions that
compaction never compares, and any extra message there (a stamp, a null) is a change the
stores apply. A design: the copy's processor, stamping a sliding record whose event
``rekey`` copied from a retired partition (``expiry-rekeyed-from``) at an offset below the
service group's committed offset there (read once at the assignment: only records the
retired partition may hold pay), also writes a note (its life's creation and expiry, or
its end) to a compacted internal topic, keyed by the record, on the retired partition's
changelog partition; each instance follows the notes of the retired partitions it holds
(a small stream; read to its end a tick before a firing, as the holds are) and restores
them with the changelog, and the retired processor asks its note instead of this look-up.
The note of an erasure would also let the retired state end at once, its stamp and data
gone from ``expiry.stamped``, which today stay until its old expiry.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from stream_expiry.model import Stamp

__all__ = ["RETRY_MS", "UNREAD", "Successor", "followed"]

# How long a record whose successor's partition has input not read yet waits before it is
# asked about again: the reading's lag (milliseconds) or a backlog's catch-up (seconds).
# A tenth of a second keeps the asking cheap however many records wait.
RETRY_MS: Final = 100


class _Unread(enum.Enum):
    UNREAD = "unread"


UNREAD: Final = _Unread.UNREAD
"""The successor's partition has input not read yet: decide nothing now."""


class Successor(Protocol):
    """The shell's look-up for a retired partition's processor: the state of the record
    with ``key`` in the partitions that read on (None: none known here), or
    :data:`UNREAD`."""

    def __call__(self, key: str) -> Stamp | _Unread | None: ...


def followed(before: Stamp, successor: Stamp | None) -> Stamp | None:
    """``before`` (a retired partition's live record, due) with the successor's expiry,
    when ``successor`` continues its life past it; else None (fire as it is).

    The successor continues the life when it is live, not kept by a legal hold (a hold
    matches both states, and keeps ``before`` too), and created at or before ``before``:
    a tombstone of ``before`` would end it (its ``created_at`` is at or after the
    successor's). One created later is a later life (the copy never saw this one's
    events), which this tombstone does not end: ``before`` fires. An expiry at or before
    ``before``'s follows nothing either (both fire at their own times, neither early)."""
    if successor is None or not successor.live or successor.held:
        return None
    created, mine = successor.created_at, before.created_at
    if created is None or mine is None or created > mine:
        return None
    expires, due = successor.expires_at, before.expires_at
    if expires is not None and due is not None and expires <= due:
        return None
    return before._replace(expires_at=expires)

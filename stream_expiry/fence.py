"""Writing nothing for partitions the group may have given to another member (a zombie).

A member that did not run for as long as its group session (SIGSTOP, a frozen VM, a
container starved of CPU, a machine asleep) has been dropped by the group coordinator, and
its partitions given to another member, but it learns so only from the group's answer to
its next request. Meanwhile, on resume, its timer task fired the timers it still held and
its loop decided the events it had fetched: neither the test broker nor this service uses
transactions, so nothing fenced those writes, and they landed after the new owner's (a
trial, two members and a SIGSTOP of 20 s past a 4 s session: the paused one sent the
``ttl`` tombstones of records the new owner had erased and created again meanwhile, in 2
runs of 4; such a tombstone ends every life created before its expiry, so the stores
deleted the next lives, live, and its null followed their stamps on the changelog). An
offset commit refused because the group rebalanced says the same, and aiokafka's revocation
callback comes only after its next round trips.

So, as Kafka Streams does with a task whose member may have been kicked out, the service
stops deciding and sending for its partitions from the moment it may have lost them: a
turn of the loop late by the session timeout less a heartbeat's interval, or a commit
refused by a rebalance (:meth:`WriteFence.close`). Late whatever the reason: the process
paused (a stall) or the loop blocked by the process' own work (a long synchronous piece
of work, a huge batch, a garbage collection), for the Kafka client's heartbeats run on the
same loop; a turn of a few hundred milliseconds under load closes nothing.

A commit refused because the group is rebalancing now (``RebalanceInProgressError``: this
member is in the rebalance, as when an instance is added) closes the fence too, for the
partitions it is about to lose may be given to another member before the revocation is
called back, but it is routine: said at INFO and not counted. One refused because the
group no longer knows the member or its generation (``UnknownMemberIdError``,
``IllegalGenerationError``: it was dropped) is a zombie's, and warns and counts as a
stall as long as the session does. The group's next assignment, which
follows the rejoin (asked for at once), says which partitions are still this member's, and
opens the fence (:meth:`WriteFence.open`); those it does not give back were revoked and
dropped before it. Nothing is lost: what was decided before is settled and committed as
ever, what was fetched and not decided is read again from the committed offsets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from stream_expiry.stalls import Stalls

__all__ = ["WriteFence"]

log = logging.getLogger("stream_expiry.fence")


class WriteFence:
    """Whether the service may fire and write for its partitions now (:meth:`closed`).

    ``session_ms`` and ``heartbeat_ms``: the group member's; ``owned``: how many partitions
    it holds (a stall with none to write for closes nothing); ``rejoin``: asks the group
    for a new assignment, once each time the fence closes; ``fenced``: told each time it
    closes because the member may have been dropped (not for a routine rebalance)."""

    def __init__(
        self,
        stalls: Stalls | None,
        *,
        session_ms: int,
        heartbeat_ms: int,
        owned: Callable[[], int],
        rejoin: Callable[[], None],
        fenced: Callable[[], None] | None = None,
    ) -> None:
        self._stalls = stalls
        self._lost_after_s = max(0, session_ms - heartbeat_ms) / 1000
        self._owned = owned
        self._rejoin = rejoin
        self._fenced = fenced
        self.why: str | None = None  # None: open

    def closed(self) -> bool:
        """Whether firing and writing must wait for the group's next assignment. Asks the
        stall watch first: on resume, the timer task's turn may come before the watch's,
        and after a blocked loop the blocking task's next step may."""
        late = self._stalls.take_late() if self._stalls is not None else None
        if late is not None and late.seconds >= self._lost_after_s:
            self.close(f"{late.describe()}, as long as the group session")
        return self.why is not None

    def close(self, why: str, routine: bool = False) -> None:
        """Stop firing and writing until :meth:`open`, and ask the group to rejoin. Said in
        one warning and counted (``fenced``); ``routine`` (a rebalance this member takes
        part in): said at INFO, not counted. Nothing to stop when no partition is owned."""
        if self.why is not None or self._owned() == 0:
            return
        self.why = why
        if routine:
            log.info(
                "%s: the partitions of this member (%d) wait for the group's new "
                "assignment; no timer fires and nothing is written for them until then",
                why,
                self._owned(),
            )
        else:
            log.warning(
                "%s: the group may have given this member's %d partitions to another; no "
                "timer fires and nothing is written for them until the group confirms the "
                "assignment (rejoining now)",
                why,
                self._owned(),
            )
            if self._fenced is not None:
                self._fenced()
        self._rejoin()

    def open(self) -> None:
        """The group assigned partitions (after a rejoin): the fence has done its work, and
        the late turns noticed before are answered by this assignment."""
        if self._stalls is not None:
            self._stalls.take_late()
        self.why = None

"""Which instances of the service run: the members of its consumer group, as the broker
describes them (Kafka's DescribeGroups, what ``kafka-consumer-groups.sh --describe
--members`` shows).

``status`` counted records and lag but could not say whether anything was running: an
operator read "is the service running?" off a lag that stayed or grew. The group's members
answer it directly. What a member says of itself depends on the broker: Apache Kafka gives
its client id, its host and the partitions the group assigned it; a broker that says less
(the test broker gives the member id alone) leaves those fields empty rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError, for_code

from stream_expiry.kafka import admin_client

if TYPE_CHECKING:
    from stream_expiry.kafka_settings import Brokers

__all__ = ["CLIENT_ID", "Group", "Member", "describe_group", "parse_description"]

#: The client id of the service's group consumer: each member's id starts with it, so a
#: member of the service's group is told from another client by its name.
CLIENT_ID: Final = "stream-expiry"


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the group. ``partitions``: ``topic[p]`` names of what the group
    assigned it, None when the broker did not say (an empty assignment is ``()``)."""

    member_id: str
    client_id: str
    host: str
    partitions: tuple[str, ...] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "client_id": self.client_id or None,
            "host": self.host or None,
            "partitions": None if self.partitions is None else list(self.partitions),
        }


@dataclass(frozen=True, slots=True)
class Group:
    """A group's state as Kafka names it (``Stable``, ``PreparingRebalance``,
    ``CompletingRebalance``, ``Empty``, ``Dead``) and its members. ``error``: why the broker
    could not describe it (the members are then unknown, not none)."""

    group_id: str
    state: str
    members: tuple[Member, ...]
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group_id,
            "state": self.state,
            "running": None if self.error else len(self.members),
            "members": [m.as_dict() for m in self.members],
            "error": self.error,
        }


def _partitions(raw: bytes) -> tuple[str, ...] | None:
    """The ``topic[p]`` names a member's assignment bytes hold (the consumer protocol's
    encoding, which every assignor the service uses shares); None when there are none to
    read (a broker that does not pass them on) or they are not that encoding."""
    if not raw:
        return None
    try:
        assignment = ConsumerProtocolMemberAssignment.decode(raw).assignment
    except ValueError:  # what aiokafka's decoding raises for bytes it cannot read
        return None
    if not isinstance(assignment, list):  # a null array
        return None
    return tuple(f"{topic}[{p}]" for topic, parts in sorted(assignment) for p in sorted(parts))


def _member(entry: tuple[Any, ...]) -> Member:
    """A member of a DescribeGroups answer (versions 0 to 3, all aiokafka 0.14 asks for):
    (member_id, client_id, client_host, metadata, assignment)."""
    member_id, client_id, host, _meta, assignment = entry
    return Member(
        str(member_id), client_id or "", (host or "").lstrip("/"), _partitions(assignment)
    )


def parse_description(group_id: str, responses: list[Any]) -> Group:
    """The group ``group_id`` of DescribeGroups ``responses``; a group the broker does not
    know is ``Dead`` with no members, as Kafka itself describes an unknown group."""
    for response in responses:
        for entry in response.groups:
            code, name, state = entry[0], entry[1], entry[2]
            if name != group_id:
                continue
            if code != 0:
                error = for_code(code)
                return Group(group_id, "unknown", (), error=f"{error.message}: {error.description}")
            members = tuple(sorted((_member(m) for m in entry[5]), key=lambda m: m.member_id))
            return Group(group_id, str(state), members)
    return Group(group_id, "Dead", ())


async def describe_group(brokers: Brokers, group_id: str) -> Group:
    """The service group's members, asked of its coordinator. A broker that refuses the
    question gives a :class:`Group` whose ``error`` says why; an unreachable one raises
    :class:`~stream_expiry.errors.BrokerError`, as every command's connection does."""
    async with admin_client(brokers) as admin:
        try:
            responses = await admin.describe_consumer_groups([group_id])
        except KafkaError as exc:
            return Group(group_id, "unknown", (), error=f"the broker did not describe it ({exc!r})")
    return parse_description(group_id, responses)

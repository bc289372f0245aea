"""Which instances of the service run: the members of its consumer group, as the broker
describes them (Kafka's DescribeGroups, what ``kafka-consumer-groups.sh --describe
--members`` shows), and what each says of itself when it joins.

``status`` counted records and lag but could not say whether anything was running: an
operator read "is the service running?" off a lag that stayed or grew. The group's members
answer it directly. What a member says of itself depends on the broker: Apache Kafka gives
its client id, its host and the partitions the group assigned it; a broker that says less
(the test broker gives the member id alone) leaves those fields empty rather than guessed.

Each instance joins with the digest of its config's policy
(:meth:`~stream_expiry.policy.PolicyBook.digest`) in its subscription's user data, which
the consumer protocol carries to the group's leader and to DescribeGroups. Instances with
different configs (a file edited on one host, an environment variable missing on another)
stamp a record with a TTL that depends on which of them holds its partition, silently: the
leader now says so at each assignment, and ``status`` shows each member's digest.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import KafkaError, for_code

from stream_expiry import __version__
from stream_expiry.kafka import admin_client

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from aiokafka.cluster import ClusterMetadata
    from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor

    from stream_expiry.kafka_settings import Brokers

__all__ = [
    "CLIENT_ID",
    "POLICY_FORM",
    "SINK_STORES",
    "Group",
    "Member",
    "assignors",
    "describe_group",
    "earlier_digests",
    "mixed_policies",
    "parse_description",
    "sink_group",
]

log = logging.getLogger("stream_expiry.service")

#: The client id of the service's group consumer: each member's id starts with it, so a
#: member of the service's group is told from another client by its name.
CLIENT_ID: Final = "stream-expiry"

#: The stores ``stream-expiry sink`` writes to, each a consumer group of its own by default.
SINK_STORES: Final = ("sqlite", "postgres")


def sink_group(store: str) -> str:
    """The consumer group ``stream-expiry sink STORE`` joins unless given ``--group-id``:
    ``status`` looks for these when it is named no sink group."""
    return f"stream-expiry-sink-{store}"


#: The form of the policy digest this version joins with: 2, the SHA-256 of
#: :meth:`~stream_expiry.policy.PolicyBook.canonical`'s document. Form 1, the hash of
#: Python's ``repr`` of the policy (the versions from 068bb49 to before 9336bfa), gives the
#: same policy another digest, and its members say no form. The leader compares digests of
#: one form only: comparing across forms, it warned of different policies all through a
#: rolling upgrade of instances with one config file (an upgrade trial).
POLICY_FORM: Final = 2
_FORM_BEFORE_IT_WAS_SAID: Final = 1


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the group. ``partitions``: ``topic[p]`` names of what the group
    assigned it, None when the broker did not say (an empty assignment is ``()``)."""

    member_id: str
    client_id: str
    host: str
    partitions: tuple[str, ...] | None
    policy: str | None = None  # its config's policy digest; None: not said (see module)
    # The digest's form (:data:`POLICY_FORM`); one of an earlier form cannot be compared
    # with it (:func:`policy_form_of`).
    policy_form: int = POLICY_FORM

    def as_dict(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "client_id": self.client_id or None,
            "host": self.host or None,
            "partitions": None if self.partitions is None else list(self.partitions),
            "policy": self.policy,
            "policy_form": self.policy_form if self.policy is not None else None,
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
    member_id, client_id, host, metadata, assignment = entry
    user_data = _user_data(metadata)
    return Member(
        str(member_id),
        client_id or "",
        (host or "").lstrip("/"),
        _partitions(assignment),
        policy_of(user_data),
        policy_form_of(user_data),
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


# -- what each instance says of itself when it joins ---------------------------------------


def member_data(
    policy: str, instance: str | None = None, partitions: Mapping[str, int] | None = None
) -> bytes:
    """The user data of the service's subscription: its policy digest, the digest's form,
    its version and, when given, the name of the instance that stays the same across its
    restarts (:func:`instance_name`), which the leader orders members by, and the partition
    counts of the subscribed topics as the member knows them when it joins (see
    :func:`assignors`)."""
    said: dict[str, Any] = {"policy": policy, "policy_form": POLICY_FORM, "version": __version__}
    if instance is not None:
        said["instance"] = instance
    if partitions is not None:
        said["partitions"] = dict(sorted(partitions.items()))
    return orjson.dumps(said)


def instance_name(host: str, state_dir: str) -> str:
    """What names an instance across its restarts: its host and its state directory (a
    StatefulSet's pods differ by host, instances on one machine by directory)."""
    return f"{host}:{state_dir}"


def instance_of(user_data: bytes) -> str | None:
    """The instance name a member joined with; None for one that says none (another
    program, or a version before this one)."""
    name = _said(user_data).get("instance")
    return name if isinstance(name, str) else None


def _user_data(metadata: bytes) -> bytes:
    """The user data of a member's subscription as DescribeGroups gives it; empty when
    there is none or the bytes are not the consumer protocol's."""
    if not metadata:
        return b""
    try:
        return bytes(ConsumerProtocolMemberMetadata.decode(metadata).user_data or b"")
    except ValueError:
        return b""


def _said(user_data: bytes) -> dict[str, Any]:
    """A member's user data as the service writes it (:func:`member_data`), or an empty
    dict for anything else (another program's, or none)."""
    if not user_data:
        return {}
    try:
        said = orjson.loads(user_data)
    except orjson.JSONDecodeError:
        return {}
    return said if isinstance(said, dict) else {}


def policy_of(user_data: bytes) -> str | None:
    """The policy digest a member joined with; None for a member that says none (another
    program, or a version before this one)."""
    policy = _said(user_data).get("policy")
    return policy if isinstance(policy, str) else None


def policy_form_of(user_data: bytes) -> int:
    """The form of the digest a member joined with (:data:`POLICY_FORM`): 1 for one that
    says a digest but no form (an earlier version); this version's for one that says no
    digest, which is compared with none."""
    said = _said(user_data)
    if not isinstance(said.get("policy"), str):
        return POLICY_FORM
    form = said.get("policy_form", _FORM_BEFORE_IT_WAS_SAID)
    return form if type(form) is int else _FORM_BEFORE_IT_WAS_SAID


def mixed_policies(
    policies: Mapping[str, str | None], forms: Mapping[str, int] | None = None
) -> str | None:
    """A sentence on the members' differing policy digests (member id to digest), or None
    when those that say one all say the same. ``forms``: member id to its digest's form
    (:func:`policy_form_of`; :data:`POLICY_FORM` where not given): digests are compared
    within one form only, as the same policy has another digest in each."""
    by_form: dict[int, dict[str, str]] = defaultdict(dict)
    for member, policy in policies.items():
        if policy is not None:
            by_form[(forms or {}).get(member, POLICY_FORM)][member] = policy
    for form in sorted(by_form, reverse=True):
        said = _differing(by_form[form])
        if said is not None:
            return said
    return None


def _differing(policies: Mapping[str, str]) -> str | None:
    by_policy: dict[str, list[str]] = defaultdict(list)
    for member, policy in sorted(policies.items()):
        by_policy[policy].append(member)
    if len(by_policy) < 2:
        return None
    said = "; ".join(
        f"policy {policy} on {len(members)} ({', '.join(members)})"
        for policy, members in sorted(by_policy.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    )
    return (
        f"the instances of this group run with different policies: {said}. A record's TTL "
        "then depends on which instance holds its partition: give every instance the same "
        "config file and environment (a rolling change of either shows this until it ends)"
    )


def earlier_digests(policies: Mapping[str, str | None], forms: Mapping[str, int]) -> str | None:
    """A sentence on the members whose digest is of an earlier form than this version's
    (an earlier version of the service: a rolling upgrade under way), which this version
    cannot compare its own with; None when there are none."""
    older = sorted(
        m
        for m, policy in policies.items()
        if policy is not None and forms.get(m, POLICY_FORM) < POLICY_FORM
    )
    if not older:
        return None
    return (
        f"{len(older)} instance{'s' if len(older) > 1 else ''} of this group "
        f"({', '.join(older)}) {'run' if len(older) > 1 else 'runs'} an earlier version of "
        "stream-expiry, whose policy digest "
        "is computed otherwise (the same policy has another digest): their policies are "
        "compared with the others' once they run this version. Until then an instance of "
        "the earlier version that leads the group warns of different policies, which a "
        "rolling upgrade alone shows (README: Upgrading)"
    )


def assignors(
    policy: str,
    instance: str | None = None,
    partitions: Callable[[Iterable[str]], Mapping[str, int]] | None = None,
) -> tuple[type[AbstractPartitionAssignor], ...]:
    """The service's assignors (range, then roundrobin: their names, hence the group's
    protocol, unchanged), joining with ``policy`` and ``instance`` in their user data; the
    leader warns at each assignment when the members' policies differ.

    ``partitions``: the subscribed topics' partition counts as the member's consumer knows
    them, said in the user data of each join. The leader joins again when its metadata
    shows partitions added to a subscribed topic; Kafka rebalances at any join of the
    leader, but a broker may keep a formed group as it is for a member whose join says
    what its last one said (Tansu: the same generation, and the assignment before, not the
    leader's new one), and the new partitions stayed unassigned, their events unread, until
    a member came or went. A join that says the new count is a changed member there too."""

    def data(topics: Iterable[str]) -> bytes:
        return member_data(policy, instance, None if partitions is None else partitions(topics))

    return tuple(
        _carrying(base, data) for base in (RangePartitionAssignor, RoundRobinPartitionAssignor)
    )


def _carrying(base: Any, data: Callable[[Iterable[str]], bytes]) -> type[AbstractPartitionAssignor]:
    """``base`` (an aiokafka assignor, untyped here), joining with ``data(topics)`` as its
    user data and warning of differing policies before it assigns."""

    class Carrying(base):  # type: ignore[misc]  # aiokafka is untyped here
        @classmethod
        def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
            topics = list(topics)
            return ConsumerProtocolMemberMetadata(cls.version, topics, data(topics))

        @classmethod
        def assign(
            cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
        ) -> dict[str, ConsumerProtocolMemberAssignment]:
            said_by = {m: bytes(meta.user_data or b"") for m, meta in members.items()}
            policies = {m: policy_of(d) for m, d in said_by.items()}
            forms = {m: policy_form_of(d) for m, d in said_by.items()}
            said = mixed_policies(policies, forms)
            if said is not None:
                log.warning("%s", said)
            if (earlier := earlier_digests(policies, forms)) is not None:
                log.info("%s", earlier)
            # Members in the order of their instances' names, not of their member ids:
            # Kafka gives a member a new random id at each start, so a rolling restart
            # of 3 instances reshuffled the partitions among them (range hands them out in
            # member order) and each partition moved, its store rebuilt or caught up from
            # the changelog on an instance that had not held it (a trial: 6 of 7 stores
            # rebuilt from empty on one restart). An instance restarted gets its own back.
            order = {
                m: f"{name}\x00{m}" if (name := instance_of(d)) is not None else m
                for m, d in said_by.items()
            }
            by_order = {order[m]: meta for m, meta in members.items()}
            assigned: dict[str, ConsumerProtocolMemberAssignment] = base.assign(cluster, by_order)
            return {m: assigned[order[m]] for m in members}

    Carrying.__name__ = Carrying.__qualname__ = f"PolicyCarrying{base.__name__}"
    return Carrying

"""``status`` says which instances run: the service group's members, as DescribeGroups
answers (the test broker's answer is taken by an integration test; Kafka's fuller one,
with hosts and assignments, is built here from aiokafka's own protocol types)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.protocol.admin import DescribeGroupsResponse_v2, DescribeGroupsResponse_v3
from aiokafka.protocol.metadata import MetadataResponse_v0

from stream_expiry.config import parse_config
from stream_expiry.instances import (
    CLIENT_ID,
    POLICY_FORM,
    Group,
    Member,
    assignors,
    earlier_digests,
    instance_name,
    instance_of,
    member_data,
    mixed_policies,
    parse_description,
    policy_form_of,
    policy_of,
)
from stream_expiry.policy import PolicyBook
from stream_expiry.status import text_lines

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

GROUP = "stream-expiry"


def _assignment(*parts: tuple[str, list[int]]) -> bytes:
    return bytes(ConsumerProtocolMemberAssignment(0, list(parts), b"").encode())


def test_kafkas_answer_names_each_members_host_and_partitions() -> None:
    response = DescribeGroupsResponse_v2(
        throttle_time_ms=0,
        groups=[
            (0, "other", "Stable", "consumer", "range", [("x-1", "x", "/h9", b"", b"")]),
            (0, GROUP, "Stable", "consumer", "cooperative-sticky", [
                (f"{CLIENT_ID}-b", CLIENT_ID, "/10.0.0.6", b"",
                 _assignment(("sessions", [1]), ("conversations", [3, 1]))),
                (f"{CLIENT_ID}-a", CLIENT_ID, "/10.0.0.5", b"", _assignment()),
            ]),
        ],
    )  # fmt: skip
    got = parse_description(GROUP, [response])
    assert got == Group(
        GROUP,
        "Stable",
        (
            Member(f"{CLIENT_ID}-a", CLIENT_ID, "10.0.0.5", ()),
            Member(
                f"{CLIENT_ID}-b",
                CLIENT_ID,
                "10.0.0.6",
                ("conversations[1]", "conversations[3]", "sessions[1]"),
            ),
        ),
    )


def test_version_3_carries_the_authorized_operations_after_the_members() -> None:
    response = DescribeGroupsResponse_v3(
        throttle_time_ms=0,
        groups=[(0, GROUP, "Stable", "consumer", "range", [
            ("m1", CLIENT_ID, "/h1", b"", _assignment(("errors", [0]))),
        ], 0)],
    )  # fmt: skip
    assert parse_description(GROUP, [response]).members == (
        Member("m1", CLIENT_ID, "h1", ("errors[0]",)),
    )


def test_an_assignment_the_broker_does_not_pass_on_is_unknown_not_empty() -> None:
    response = DescribeGroupsResponse_v2(
        throttle_time_ms=0,
        groups=[(0, GROUP, "Stable", "consumer", "", [
            ("m1", "", "", b"", b""), ("m2", "", "", b"", b"\x00\x01garbage"),
        ])],
    )  # fmt: skip
    members = parse_description(GROUP, [response]).members
    assert [(m.member_id, m.partitions) for m in members] == [("m1", None), ("m2", None)]


def test_an_unknown_group_is_dead_and_a_refused_one_says_why() -> None:
    assert parse_description(GROUP, []) == Group(GROUP, "Dead", ())
    refused = DescribeGroupsResponse_v2(
        throttle_time_ms=0, groups=[(30, GROUP, "", "", "", [])]
    )  # 30: GROUP_AUTHORIZATION_FAILED
    got = parse_description(GROUP, [refused])
    assert got.members == ()
    assert got.error is not None
    assert "GROUP_AUTHORIZATION_FAILED" in got.error
    assert got.as_dict()["running"] is None  # unknown, not none


def _status(instances: Group | None) -> dict[str, object]:
    return {
        "at": "2026-01-01T00:00:00.000Z", "pending": {}, "pending_total": 0, "never": 0,
        "next_due": None, "overdue": 0, "oldest_overdue": None, "holds": [],
        "lag": {"conversations[0]": {"end": 10, "committed": 10, "lag": 0}},
        "group": GROUP,
        "instances": None if instances is None else instances.as_dict(),
    }  # fmt: skip


def test_status_text_lists_the_instances_with_their_hosts_and_partitions() -> None:
    group = Group(GROUP, "Stable", (
        Member("stream-expiry-a", CLIENT_ID, "10.0.0.5", ("conversations[0]",)),
        Member("intruder-b", "reporting-job", "", ()),
        Member("stream-expiry-c", CLIENT_ID, "", None),
    ))  # fmt: skip
    lines = text_lines(_status(group))
    at = lines.index("  instances running: 3 (group 'stream-expiry', Stable)")
    assert lines[at + 1 : at + 4] == [
        "    stream-expiry-a on 10.0.0.5: conversations[0]",
        "    intruder-b (client 'reporting-job', not stream-expiry): no partition",
        "    stream-expiry-c",
    ]


def test_status_text_says_when_no_instance_runs_and_when_it_cannot_tell() -> None:
    none = [line for line in text_lines(_status(Group(GROUP, "Empty", ()))) if "instances" in line]
    assert none == [
        "  instances running: none (group 'stream-expiry' is Empty): nothing is stamped or "
        "tombstoned until `stream-expiry run` starts"
    ]
    refused = Group(GROUP, "unknown", (), error="GROUP_AUTHORIZATION_FAILED: not allowed")
    said = [line for line in text_lines(_status(refused)) if "instances" in line]
    assert said == [
        "  instances running: unknown (group 'stream-expiry': GROUP_AUTHORIZATION_FAILED: "
        "not allowed)"
    ]
    assert not [line for line in text_lines(_status(None)) if "instances" in line]


def test_status_text_flags_members_of_a_group_that_is_not_working() -> None:
    """A trial's status listed a group whose state was Unknown, its members as if they ran,
    without a word: a state other than Stable or a rebalance says so, and what to do."""
    member = (Member("stream-expiry-a", CLIENT_ID, "10.0.0.5", ("conversations[0]",)),)
    for state in ("Unknown", "Dead", "Empty"):
        lines = text_lines(_status(Group(GROUP, state, member)))
        at = lines.index(f"  instances running: 1 (group 'stream-expiry', {state})")
        assert lines[at + 1] == (
            f"    not a working group (the broker says {state}, not Stable or rebalancing): "
            "these members may read nothing; check each instance's /readyz and log, restart "
            "those that do not answer, and run status again"
        )
    for state in ("Stable", "PreparingRebalance", "CompletingRebalance"):
        lines = text_lines(_status(Group(GROUP, state, member)))
        assert not [line for line in lines if "not a working group" in line], lines


# -- the policy each instance joins with ---------------------------------------------------


def _digest(text: str, environ: dict[str, str] | None = None) -> str:
    config = parse_config(text)
    return PolicyBook(config, environ or {}).digest(config.sliding)


def test_the_policy_digest_names_what_decides_a_ttl_and_nothing_else() -> None:
    base = '[retention.defaults]\nconversation = "30d"\n'
    assert _digest(base) == _digest(base)
    # The same TTL written otherwise, or another setting than the policy: the same digest.
    assert _digest('[retention.defaults]\nconversation = "720h"\n') == _digest(base)
    assert _digest('group_id = "other"\n' + base) == _digest(base)
    # What changes a TTL, or which category slides, changes it.
    assert _digest('[retention.defaults]\nconversation = "31d"\n') != _digest(base)
    assert _digest(base + '[retention.orgs.acme]\nconversation = "1d"\n') != _digest(base)
    assert _digest(base + '[retention.cap]\nmax = "90d"\n') != _digest(base)
    assert _digest(base + '[categories]\nsliding = ["session", "conversation"]\n') != _digest(base)
    cognigy = 'preset = "cognigy"\n'
    assert _digest(cognigy, {"MAX_CONVERSATION_TTL_IN_MINUTES": "60"}) != _digest(cognigy)


def test_a_member_says_its_policy_in_its_subscriptions_user_data() -> None:
    (range_assignor, roundrobin) = assignors("abc123def456")
    assert (range_assignor.name, roundrobin.name) == ("range", "roundrobin")  # the protocol
    metadata = range_assignor.metadata(["conversations"])
    assert metadata.subscription == ["conversations"]
    assert policy_of(metadata.user_data) == "abc123def456"
    response = DescribeGroupsResponse_v2(
        throttle_time_ms=0,
        groups=[(0, GROUP, "Stable", "consumer", "range", [
            ("m1", CLIENT_ID, "/h1", metadata.encode(), b""),
            ("m2", "other", "/h2", b"not the consumer protocol", b""),
            ("m3", "older", "/h3", ConsumerProtocolMemberMetadata(0, ["t"], b"").encode(), b""),
        ])],
    )  # fmt: skip
    got = parse_description(GROUP, [response])
    assert [(m.member_id, m.policy) for m in got.members] == [
        ("m1", "abc123def456"),
        ("m2", None),
        ("m3", None),
    ]
    assert policy_of(member_data("p1")) == "p1"
    assert policy_of(b"[1]") is None
    assert policy_of(b"{not json") is None


def test_differing_policies_are_said_with_their_members_and_alike_ones_are_not() -> None:
    assert mixed_policies({"a": "p1", "b": "p1", "c": None}) is None  # c says none
    assert mixed_policies({}) is None
    said = mixed_policies({"b": "p2", "a": "p1", "c": "p1"})
    assert said is not None
    assert said.startswith(
        "the instances of this group run with different policies: policy p1 on 2 (a, c); "
        "policy p2 on 1 (b). "
    )


def test_status_text_shows_each_members_policy_and_says_when_they_differ() -> None:
    group = Group(GROUP, "Stable", (
        Member("stream-expiry-a", CLIENT_ID, "h1", None, policy="p1"),
        Member("stream-expiry-b", CLIENT_ID, "h2", None, policy="p2"),
    ))  # fmt: skip
    lines = text_lines(_status(group))
    assert "    stream-expiry-a on h1, policy p1" in lines
    assert any(
        line.startswith("    the instances of this group run with different") for line in lines
    )
    same = Group(GROUP, "Stable", (Member("stream-expiry-a", CLIENT_ID, "h1", None, policy="p1"),))
    assert not any("different policies" in line for line in text_lines(_status(same)))


# What a member of a version before the canonical digest (9336bfa) joins with: its digest,
# the hash of Python's repr of the policy, and no form (those versions' ``member_data``).
_EARLIER_MEMBER_DATA = b'{"policy":"c17b33376dca","version":"0.1.0"}'


def test_a_digest_of_an_earlier_form_is_not_compared_with_this_versions() -> None:
    """A rolling upgrade from a version before the canonical digest, every instance with
    one config file: the leader warned "different policies ... give every instance the same
    config file" until the last instance was upgraded (an upgrade trial). Digests of one
    form are still compared, and the earlier version's instances are named."""
    assert policy_form_of(member_data("p1")) == POLICY_FORM
    assert policy_form_of(_EARLIER_MEMBER_DATA) == 1
    assert policy_form_of(b"") == POLICY_FORM  # says no digest: compared with none
    policies = {"new": "2976c0846658", "old": policy_of(_EARLIER_MEMBER_DATA)}
    forms = {"new": POLICY_FORM, "old": 1}
    assert mixed_policies(policies, forms) is None
    earlier = earlier_digests(policies, forms)
    assert earlier is not None
    assert earlier.startswith("1 instance of this group (old) runs an earlier version")
    assert earlier_digests({"new": "p1"}, {"new": POLICY_FORM}) is None
    two = earlier_digests({"o2": "x", "o1": "y", "n": "z"}, {"o1": 1, "o2": 1})
    assert (two or "").startswith("2 instances of this group (o1, o2) run an earlier version")
    # Within one form a difference is still a difference, of either form.
    edited = {**policies, "new2": "aaaaaaaaaaaa"}
    assert "policy aaaaaaaaaaaa on 1 (new2)" in (mixed_policies(edited, forms) or "")
    older = {**policies, "old2": "bbbbbbbbbbbb"}
    assert "policy bbbbbbbbbbbb on 1 (old2)" in (mixed_policies(older, {**forms, "old2": 1}) or "")


def test_status_names_an_earlier_versions_instances_and_not_as_different_policies() -> None:
    earlier = ConsumerProtocolMemberMetadata(0, ["conversations"], _EARLIER_MEMBER_DATA)
    current = ConsumerProtocolMemberMetadata(0, ["conversations"], member_data("2976c0846658"))
    response = DescribeGroupsResponse_v2(
        throttle_time_ms=0,
        groups=[(0, GROUP, "Stable", "consumer", "range", [
            ("stream-expiry-a", CLIENT_ID, "/h1", current.encode(), b""),
            ("stream-expiry-b", CLIENT_ID, "/h2", earlier.encode(), b""),
        ])],
    )  # fmt: skip
    group = parse_description(GROUP, [response])
    assert [m.policy_form for m in group.members] == [POLICY_FORM, 1]
    lines = text_lines(_status(group))
    assert not any("run with different policies" in line for line in lines), lines
    assert any("(stream-expiry-b) runs an earlier version" in line for line in lines), lines


def _partitions_by_instance(
    members: Mapping[str, str | None], assignor_index: int = 0
) -> dict[str, list[tuple[str, list[int]]]]:
    """What each instance (by name, or member id when it says none) is given of two
    topics of 6 partitions, members joining under the ids given."""
    cluster = ClusterMetadata()
    parts = [(0, p, 0, [0], [0]) for p in range(6)]
    cluster.update_metadata(
        MetadataResponse_v0(
            brokers=[(0, "h", 1)], topics=[(0, "conversations", parts), (0, "sessions", parts)]
        )
    )
    metadata = {
        member: ConsumerProtocolMemberMetadata(
            0, ["conversations", "sessions"], member_data("p1", name)
        )
        for member, name in members.items()
    }
    assigned = assignors("p1")[assignor_index].assign(cluster, metadata)
    return {(members[m] or m): sorted(a.assignment) for m, a in assigned.items()}


def test_an_instance_restarted_gets_its_partitions_back_whatever_its_new_member_id() -> None:
    """Kafka names a member anew at each start (a random id), and range hands out the
    partitions in the order of the ids: a rolling restart of 3 instances moved nearly
    every partition to an instance that had not held it (a trial: 6 of 7 stores rebuilt
    from empty on one restart). Ordered by the instance's name (host and state
    directory), each instance gets its own partitions back, partition n of every topic
    together still."""
    names = {"m-b": "h:/s/a", "m-c": "h:/s/b", "m-a": "h:/s/c"}
    before = _partitions_by_instance(names)
    assert before["h:/s/a"] == [("conversations", [0, 1]), ("sessions", [0, 1])]
    # Each restarted: new member ids, in another order.
    after = _partitions_by_instance({"z-1": "h:/s/a", "a-2": "h:/s/b", "k-3": "h:/s/c"})
    assert after == before
    for assignor in (0, 1):  # roundrobin too: same names, same partitions
        again = _partitions_by_instance({"q": "h:/s/a", "p": "h:/s/b", "o": "h:/s/c"}, assignor)
        assert again == _partitions_by_instance(names, assignor)
    # A member of an earlier version, which says no name, still gets its share.
    mixed = _partitions_by_instance({"m-old": None, "m-1": "h:/s/a", "m-2": "h:/s/b"})
    assert sorted(p for parts in mixed.values() for _, ps in parts for p in ps) == sorted(
        list(range(6)) * 2
    )
    assert (
        instance_of(member_data("p1", instance_name("pod-0", "/var/lib/x"))) == "pod-0:/var/lib/x"
    )
    assert instance_of(member_data("p1")) is None


def test_a_join_says_the_partition_counts_its_consumer_knows_then() -> None:
    """The leader joins again when its metadata shows partitions added; the test broker
    keeps a formed group as it is (the same generation, the assignment before) for a member
    whose join says what its last one said, so the new partitions stayed unassigned. A join
    that says the new count differs from the last one; the rest of what it says is read as
    before (an earlier version reads the policy and the instance name alone)."""
    counts = {"conversations": 2, "sessions": 2}
    asked: list[list[str]] = []

    def known(topics: Iterable[str]) -> dict[str, int]:
        asked.append(list(topics))
        return {t: counts[t] for t in topics}

    (range_assignor, roundrobin) = assignors("p1", "h:/s/a", known)
    before = range_assignor.metadata(frozenset(counts))
    assert sorted(before.subscription) == sorted(counts) == sorted(asked[0])
    counts["sessions"] = 4
    after = roundrobin.metadata(frozenset(counts))
    assert after.user_data != before.user_data
    assert orjson.loads(after.user_data)["partitions"] == {"conversations": 2, "sessions": 4}
    assert (policy_of(after.user_data), instance_of(after.user_data)) == ("p1", "h:/s/a")
    # Without a source of counts (a command, a test's member) nothing of them is said.
    assert "partitions" not in orjson.loads(assignors("p1")[0].metadata(["t"]).user_data)

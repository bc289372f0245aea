"""Replay's re-derivation keeps one answer per scope for the creation times it holds for:
records of one scope on both sides of a policy update get each their own TTL."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from stream_expiry.config import parse_config
from stream_expiry.model import Identity, Stamp, encode_stamp
from stream_expiry.policy import PolicyBook
from stream_expiry.redact import Redactor
from stream_expiry.replay import UNCHANGED, _Rederive, _Verdict
from stream_expiry.timeutil import format_ts

DAY = 86_400_000
CONFIG = '[retention.defaults]\nconversation = "90d"\nsession = "1d"\n'


def key(record_id: str, category: str = "conversation") -> bytes:
    return Identity("acme", "b1", "live", category, record_id).key.encode()


def test_records_of_one_scope_either_side_of_an_update_get_their_own_ttl() -> None:
    book = PolicyBook(parse_config(CONFIG), {})
    update = {"scope": "org", "org": "acme", "ttl": {"conversation": "10d"}}
    book.apply_update(b"org/acme", orjson.dumps({**update, "effective_from": 10 * DAY}), 1)
    rederive = _Rederive(book, frozenset({"session"}))
    # Alternate sides, so that a kept answer is asked about the other side's times too.
    for created, ttl in [(DAY, 90), (11 * DAY, 10), (2 * DAY, 90), (12 * DAY, 10)]:
        expires, ttl_ms, _source = rederive.expiry(key(f"r{created}"), {}, created)
        assert (expires, ttl_ms) == (created + ttl * DAY, ttl * DAY), created


def test_a_sliding_record_counts_from_its_last_activity() -> None:
    rederive = _Rederive(PolicyBook(parse_config(CONFIG), {}), frozenset({"session"}))
    body = {"last_activity_at": "1970-01-03T00:00:00.000Z"}
    assert rederive.expiry(key("s", "session"), body, DAY)[0] == 2 * DAY + DAY
    assert rederive.expiry(key("c"), body, DAY)[0] == DAY + 90 * DAY  # not sliding


_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["acme", "beta"]),
        st.sampled_from(["conversation", "session"]),
        st.sampled_from(["r1", "r2", "a/b", "50%", "ü"]),  # the last three are escaped in keys
        # Either side of the update at 10 days, its edge included (a kept span ends there).
        st.one_of(
            st.integers(min_value=0, max_value=20 * DAY),
            st.sampled_from([10 * DAY - 1, 10 * DAY]),
        ),
        st.one_of(st.none(), st.integers(min_value=0, max_value=30 * DAY)),
    ),
    max_size=40,
)


@given(_STEPS)
def test_every_answer_is_the_books_own(steps: list[tuple[str, str, str, int, int | None]]) -> None:
    """Kept answers (one per scope and span of creation times) and keys decoded the slow way
    (escaped ids) give what the book says for each record, and its category's sliding."""
    book = PolicyBook(parse_config(CONFIG), {})
    update = {"scope": "org", "org": "acme", "ttl": {"conversation": "10d", "session": "2d"}}
    book.apply_update(b"org/acme", orjson.dumps({**update, "effective_from": 10 * DAY}), 1)
    rederive = _Rederive(book, frozenset({"session"}))
    for org, category, record_id, created, last_activity in steps:
        identity = Identity(org, "b1", "live", category, record_id)
        body = {} if last_activity is None else {"last_activity_at": format_ts(last_activity)}
        res = book.resolve(identity, created)
        base = created
        if category == "session" and last_activity is not None:
            base = max(created, last_activity)
        assert res.ttl_ms is not None
        want = (base + res.ttl_ms, res.ttl_ms, res.source)
        assert rederive.expiry(identity.key.encode(), body, created) == want
        assert rederive.expires_at(identity.key.encode(), body, created) == want[0]


def test_the_verdict_on_each_message_keeps_a_byte_for_an_unchanged_stamp_only() -> None:
    """What replay keeps of each message of ``expiry.stamped`` (:class:`_Verdict`): one
    empty value for a stamp whose expiry the policy leaves as it is, the message for one it
    changes, and nothing for an erasure a hold deferred; a stamp that remembers the deletion
    of the record's previous life is judged like any other."""
    rederive = _Rederive(PolicyBook(parse_config(CONFIG), {}), frozenset({"session"}))
    verdict = _Verdict(rederive, since_ms=None, keep_states=False)
    headers = [("expiry-source-topic", b"t")]

    def judged(stamp: Stamp) -> bytes | None:
        return verdict(0, 7, headers, stamp.identity.key.encode(), encode_stamp(stamp))

    conv = Identity("acme", "b1", "live", "conversation", "c1")
    same = Stamp(conv, DAY, DAY + 90 * DAY, 90 * DAY, "default")
    assert judged(same) == UNCHANGED
    assert judged(same._replace(previous_deleted_at=DAY - 5)) == UNCHANGED
    changed = same._replace(expires_at=DAY + 30 * DAY, ttl_ms=30 * DAY)
    assert judged(changed) not in (None, UNCHANGED)
    assert judged(same._replace(erase_at=2 * DAY)) is None  # held erasure: ends at release
    session = Identity("acme", "b1", "live", "session", "s1")
    slid = Stamp(session, DAY, 3 * DAY + DAY, DAY, "default")  # last activity at 3 days
    body = orjson.loads(encode_stamp(slid))
    body["last_activity_at"] = format_ts(3 * DAY)
    assert verdict(0, 7, headers, session.key.encode(), orjson.dumps(body)) == UNCHANGED
    assert verdict(0, 7, headers, session.key.encode(), None) is None  # a null: dropped
    # Kept whole, unchanged or not: the states asked for, or data the replay's rules redact.
    keeping = _Verdict(rederive, since_ms=None, keep_states=True)
    assert keeping(0, 7, headers, conv.key.encode(), encode_stamp(same)) not in (None, UNCHANGED)
    redacting = _Verdict(
        rederive,
        since_ms=None,
        keep_states=False,
        redactor=Redactor.from_config({"conversation": ["email"]}),
    )
    value = encode_stamp(same, {"email": "a@example.com"})
    assert redacting(0, 7, headers, conv.key.encode(), value) not in (None, UNCHANGED)
    assert redacting(0, 7, headers, conv.key.encode(), encode_stamp(same, {"x": 1})) == UNCHANGED


_TIMES = st.one_of(
    st.none(),
    st.integers(min_value=-DAY, max_value=30 * DAY).map(format_ts),
    st.sampled_from(["2026-12-01T00:00:00Z", "1970-01-02", "soon", ""]),  # other forms
    st.integers(-5, 5),
)


@st.composite
def _stamp_messages(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A key and a stamp's value, nearly always the service's own, now and then with a
    field of another form, a rare field, or none of some."""
    category = draw(st.sampled_from(["conversation", "session"]))
    record_id = draw(st.sampled_from(["r1", "a/b", "50%"]))
    body: dict[str, object] = {"org": "acme", "category": category, "data": {"n": 1}}
    for name in ("created_at", "expires_at", "last_activity_at"):
        if draw(st.integers(0, 5)):
            body[name] = draw(_TIMES)
    if draw(st.integers(0, 3)):
        body["ttl_seconds"] = draw(st.one_of(st.sampled_from([86_400, 7_776_000]), st.none()))
        body["ttl_source"] = draw(st.sampled_from(["default", None, 5]))
    for rare in ("erase_requested_at", "previous_deleted_at"):
        if draw(st.integers(0, 6)) == 0:
            body[rare] = draw(_TIMES)
    key = Identity("acme", "b1", "live", category, record_id).key.encode()
    return draw(st.sampled_from([key, b"not/a/key"])), orjson.dumps(body)


@given(
    st.lists(_stamp_messages(), max_size=8),
    st.one_of(st.none(), st.integers(0, 10 * DAY)),
    st.booleans(),
)
def test_a_verdict_read_from_the_stamps_bytes_is_the_one_read_from_its_dict(
    messages: list[tuple[bytes, bytes]], since_ms: int | None, keep_states: bool
) -> None:
    """The verdict on a stamp read by the compiled scan (its fields without orjson's dict)
    is the one read by orjson, whatever the stamp holds."""
    rederive = _Rederive(PolicyBook(parse_config(CONFIG), {}), frozenset({"session"}))
    scanning = _Verdict(rederive, since_ms=since_ms, keep_states=keep_states)
    parsing = _Verdict(rederive, since_ms=since_ms, keep_states=keep_states)
    parsing._scan = None
    for key_bytes, value in messages:
        assert scanning(1, 7, [], key_bytes, value) == parsing(1, 7, [], key_bytes, value)


def test_the_common_stamp_is_judged_from_its_bytes() -> None:
    import pytest

    from stream_expiry import native

    if native.compiled is None:
        pytest.skip("the compiled codec is not built (or turned off)")
    rederive = _Rederive(PolicyBook(parse_config(CONFIG), {}), frozenset({"session"}))
    verdict = _Verdict(rederive, since_ms=None, keep_states=False)
    stamp = Stamp(Identity("acme", "b1", "live", "session", "s"), DAY, 3 * DAY, DAY, "default")
    value = encode_stamp(stamp, {"text": "hello"})
    assert verdict._scan is not None
    assert verdict._scan(value) == (DAY, 3 * DAY, 2 * DAY)
    assert verdict(0, 7, [], stamp.identity.key.encode(), value) == UNCHANGED

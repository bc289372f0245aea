"""The compiled codec (``stream_expiry/_native.c``) against the Python code it stands in for.

Where the C code answers, it must answer exactly what :mod:`stream_expiry.model` answers
with it turned off: the same event (parts, key, types), the same bytes. Where it does not
(None), the Python code takes the input, so None is always safe; the tests also check that
the common inputs do get a C answer, or the codec would be built and never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_expiry import model, native
from stream_expiry.model import (
    Identity,
    InputEvent,
    Rejection,
    Stamp,
    encode_stamp,
    encode_tombstone,
    parse_event,
)
from stream_expiry.timeutil import MAX_TS_MS, MIN_TS_MS, format_ts

if TYPE_CHECKING:
    from collections.abc import Iterator

CATEGORIES = frozenset({"conversation", "session", "error"})
NOW = 1_795_000_000_000
SKEW = 300_000


def _codec() -> native.Codec:
    if native.compiled is None:
        if os.environ.get(native.PURE_PYTHON_ENV, "") not in ("", "0"):
            pytest.skip(f"{native.PURE_PYTHON_ENV} is set: the compiled codec is off")
        pytest.fail(
            "the compiled codec (stream_expiry/_native.c) is not built: install the package "
            "with a C compiler and Python's headers (`pip install -e .`), or set "
            f"{native.PURE_PYTHON_ENV}=1 to test the Python code alone"
        )
    return native.compiled


@contextlib.contextmanager
def pure_python() -> Iterator[None]:
    """model's functions without the compiled codec, as where it is not built."""
    saved = model._native
    model._native = None
    try:
        yield
    finally:
        model._native = saved


def test_the_compiled_codec_is_built_and_used() -> None:
    codec = _codec()
    assert model._native is codec
    assert native.describe() == "compiled codec"
    value = b'{"category":"session","record_id":"r-1","org":"acme","ts":1794999999000}'
    event = parse_event(value, categories=CATEGORIES, now_ms=NOW, max_skew_ms=SKEW)
    assert codec.event(orjson.loads(value), value, CATEGORIES, NOW + SKEW) == event


# --- reading events ----------------------------------------------------------------------

PLAIN = st.text("abcXYZ019_.~-", min_size=1, max_size=12)
ODD_TEXT = st.one_of(
    st.just(""),
    st.text(min_size=1, max_size=6),  # any code point: '/', '%', non-ASCII, controls
    st.text("a/%é", min_size=1, max_size=4),
    st.just("x" * 512),
    st.just("x" * 513),
)
TEXT = st.one_of(PLAIN, PLAIN, ODD_TEXT)
NOT_TEXT = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False)
)
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
TIMES = st.one_of(
    st.integers(NOW - 10**12, NOW + 2 * SKEW),
    st.sampled_from([MIN_TS_MS, MIN_TS_MS - 1, MAX_TS_MS, 0, -1, NOW + SKEW, NOW + SKEW + 1]),
    st.integers(-(2**63), 2**63 - 1),
    st.just("2026-11-30T10:00:00.000Z"),
    st.booleans(),
    st.none(),
)

FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "category": st.one_of(st.sampled_from(sorted(CATEGORIES)), st.just("analytics"), TEXT),
    "record_id": st.one_of(TEXT, NOT_TEXT),
    "org": st.one_of(TEXT, NOT_TEXT),
    "bot": st.one_of(TEXT, NOT_TEXT, st.just("_")),
    # ... and names that begin or end as one does: the C code compares them whole.
    "env": st.one_of(st.sampled_from(["live", "draft", "Live", "prod", "lived", "liv"]), NOT_TEXT),
    "op": st.one_of(
        st.sampled_from(["create", "touch", "delete", "remove", "created", "touc"]), NOT_TEXT
    ),
    "ts": TIMES,
    "event_id": st.one_of(
        st.none(), st.text(max_size=5), st.integers(-(2**70), 2**70), st.booleans()
    ),
    "data": st.one_of(st.none(), JSON, st.just("1" * 19), st.just(10**20)),
}
REQUIRED = ("category", "record_id", "org", "ts")


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """An event's object: the required fields nearly always, each optional one sometimes,
    now and then a name that is no field (a misspelling or another)."""
    body: dict[str, Any] = {}
    for name, values in FIELD_VALUES.items():
        if draw(st.integers(0, 9)) < (9 if name in REQUIRED else 4):
            body[name] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.sampled_from(["recordId", "extra", "Org", "evnt_id"]))] = draw(JSON_LEAVES)
    return body


def _encoded(body: dict[str, Any]) -> bytes:
    """The message a producer would send (the standard library's writer: it writes the
    integers beyond 64 bits that orjson refuses)."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")


def _same_event(got: InputEvent, want: InputEvent | Rejection) -> None:
    assert type(want) is InputEvent, want
    assert type(got) is InputEvent
    assert type(got.identity) is Identity
    assert got.identity.parts() == want.identity.parts()
    assert got.identity.key == want.identity.key
    assert got == want
    for mine, theirs in zip(got, want, strict=True):
        assert type(mine) is type(theirs)
    assert got.data == want.data


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_an_event_read_in_c_is_the_one_python_reads(body: dict[str, Any]) -> None:
    codec = _codec()
    value = _encoded(body)
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return  # the Python path's rejection; the codec is never asked
    if type(obj) is not dict:
        return
    got = codec.event(obj, value, CATEGORIES, NOW + SKEW)
    with pure_python():
        want = parse_event(value, categories=CATEGORIES, now_ms=NOW, max_skew_ms=SKEW)
    if got is not None:
        _same_event(got, want)


@settings(max_examples=500)
@given(
    org=PLAIN,
    record_id=PLAIN,
    bot=st.one_of(st.none(), PLAIN),
    env=st.sampled_from([None, "live", "draft"]),
    op=st.sampled_from([None, "create", "touch", "delete"]),
    category=st.sampled_from(sorted(CATEGORIES)),
    ts=st.integers(NOW - 10**11, NOW + SKEW),
    event_id=st.one_of(st.none(), st.text(max_size=5), st.integers(-(2**63), 2**63)),
    data=st.one_of(st.none(), JSON),
)
def test_the_common_event_is_read_in_c(
    org: str,
    record_id: str,
    bot: str | None,
    env: str | None,
    op: str | None,
    category: str,
    ts: int,
    event_id: str | int | None,
    data: Any,
) -> None:
    body: dict[str, Any] = {"category": category, "record_id": record_id, "org": org, "ts": ts}
    for name, given_value in (("bot", bot), ("env", env), ("op", op), ("event_id", event_id)):
        if given_value is not None:
            body[name] = given_value
    if data is not None:
        body["data"] = data
    value = orjson.dumps(body)
    if b"0" * 19 in value.translate(model._DIGITS_AS_ZERO):
        return  # a run of 19 digits: left to the Python path on purpose
    got = _codec().event(orjson.loads(value), value, CATEGORIES, NOW + SKEW)
    assert got is not None, body
    with pure_python():
        _same_event(got, parse_event(value, categories=CATEGORIES, now_ms=NOW, max_skew_ms=SKEW))


def _nested_lists(levels: int) -> Any:
    data: Any = None
    for _ in range(levels):
        data = [data]
    return data


def _nested_objects(levels: int) -> Any:
    data: Any = None
    for _ in range(levels):
        data = {"a": data}
    return data


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"category": "session", "record_id": "a/b", "org": "o", "ts": NOW}, "a '/' is quoted"),
        ({"category": "session", "record_id": "é", "org": "o", "ts": NOW}, "not ASCII"),
        ({"category": "session", "record_id": "r", "org": "o", "ts": NOW, "Op": "x"}, "a name"),
        ({"category": "session", "record_id": "r", "org": "o", "ts": NOW + SKEW + 1}, "future"),
        ({"category": "session", "record_id": "r", "org": "o", "ts": 1.5e12}, "a float"),
        ({"category": "session", "record_id": "r", "org": "o", "ts": True}, "a boolean"),
        ({"category": "chat", "record_id": "r", "org": "o", "ts": NOW}, "not configured"),
        ({"category": "session", "record_id": "r", "org": "o", "ts": NOW, "bot": None}, "null"),
        ({"category": "session", "record_id": "r", "ts": NOW}, "missing"),
        ({"category": "session", "record_id": "r", "org": "o", "ts": NOW, "data": 10**19}, "19"),
        ({"category": "session", "record_id": "r", "org": "o", "ts": NOW, "data": [[]] * 201}, "["),
        # Each kind of bracket counts: data nested 201 levels deep in objects alone.
        (
            {
                "category": "session",
                "record_id": "r",
                "org": "o",
                "ts": NOW,
                "data": _nested_objects(201),
            },
            "{",
        ),
        # 19 digits: an integer just below -2**63, which orjson reads as a rounded float.
        (
            {"category": "session", "record_id": "r", "org": "o", "ts": NOW, "data": -(2**63) - 1},
            "-",
        ),
        # What the key quotes, and a part one character too long for the contract.
        ({"category": "session", "record_id": "a%41", "org": "o", "ts": NOW}, "a '%' is quoted"),
        ({"category": "session", "record_id": "a b", "org": "o", "ts": NOW}, "a ' ' is quoted"),
        ({"category": "session", "record_id": "r" * 513, "org": "o", "ts": NOW}, "513"),
        ({"category": "session", "record_id": "r", "org": "o" * 513, "ts": NOW}, "513"),
        ({"category": "session", "record_id": "r", "org": "o", "ts": NOW, "bot": "b" * 513}, "513"),
        ({"category": "session", "record_id": "r", "org": "o", "ts": NOW, "env": "lived"}, "env"),
        ({"category": "session", "record_id": "r", "org": "o", "ts": NOW, "op": "deleted"}, "op"),
    ],
)
def test_the_python_path_reads_what_is_not_common(body: dict[str, Any], why: str) -> None:
    value = _encoded(body)
    assert _codec().event(orjson.loads(value), value, CATEGORIES, NOW + SKEW) is None, why


@pytest.mark.parametrize("nested", [_nested_lists, _nested_objects])
@pytest.mark.parametrize("levels", [198, 199, 200, 201, 202])
def test_data_at_the_depth_bound_is_read_as_python_reads_it(nested: Any, levels: int) -> None:
    """The C code counts the message's brackets against MAX_DATA_DEPTH as _too_deep does:
    data 200 levels deep is taken, 201 is refused (by the Python path)."""
    body = {"category": "session", "record_id": "r", "org": "o", "ts": NOW, "data": nested(levels)}
    value = _encoded(body)
    got = _codec().event(orjson.loads(value), value, CATEGORIES, NOW + SKEW)
    with pure_python():
        want = parse_event(value, categories=CATEGORIES, now_ms=NOW, max_skew_ms=SKEW)
    assert (type(want) is InputEvent) == (levels <= model.MAX_DATA_DEPTH)
    if got is not None:
        _same_event(got, want)


def _run_with_debug_malloc(script: str) -> str:
    """``script``'s output, run by a Python whose allocator fills freed memory and guards
    each block's ends (PYTHONMALLOC=debug): a read of freed memory or past an object's end
    then crashes it, where it could go unseen in this process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(model.__file__)))
    env = {**os.environ, "PYTHONMALLOC": "debug", "PYTHONPATH": root}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    return done.stdout


def test_an_event_emptied_while_it_is_read_is_read_as_python_reads_it() -> None:
    """The C code holds the fields it read from the event's dict: a category whose __eq__
    empties the dict (Python code runs there, as in a finalizer the garbage collector
    calls) freed them while it still used them, and it crashed. It reads event_id and data
    after the category's check, as the Python path does, so both read the same event."""
    _codec()
    out = _run_with_debug_malloc(
        textwrap.dedent(
            """
            import sys
            from stream_expiry import model

            class Emptying(str):
                __hash__ = str.__hash__

                def __eq__(self, other):
                    sys._getframe(1).f_locals["obj"].clear()  # parse_event's dict
                    return str.__eq__(self, other)

            value = (
                b'{"category":"session","record_id":"rec","org":"acme","ts":1794999999000,'
                b'"op":"touch","event_id":"e","data":{"a":"' + b"x" * 100 + b'"}}'
            )
            def read():
                categories = (Emptying("session"),)
                return model.parse_event(
                    value, categories=categories, now_ms=1795000000000, max_skew_ms=0
                )
            compiled = read()
            model._native = None
            print(repr(compiled) == repr(read()), repr(compiled))
            """
        )
    )
    assert out.startswith("True InputEvent("), out
    assert "op='touch'" in out
    assert "data=None" in out


def test_a_stamp_of_another_length_is_left_to_python() -> None:
    """tuple.__new__ makes a Stamp of any length: the C code read its fields past its end."""
    _codec()
    out = _run_with_debug_malloc(
        textwrap.dedent(
            """
            from stream_expiry import native
            from stream_expiry.model import Identity, Stamp

            short = tuple.__new__(Stamp, (Identity("o", "_", "live", "session", "r"), 1, 2))
            print(native.compiled.stamp(short, None), native.compiled.tombstone(short, "ttl", 5))
            python = lambda *args: b"python"  # the packers' fallback
            print(native.compiled.state_packer(python)(short, None))
            print(native.compiled.timer_packer(python)(short))
            """
        )
    )
    assert out == "None None\nb'python'\nb'python'\n"


# --- writing stamps and tombstones -------------------------------------------------------

ANY_TEXT = st.one_of(
    PLAIN, st.text(max_size=6), st.sampled_from(['"', "\\", "\x00\x1f\x7f", "é\u2028"])
)
OPT_TIME = st.one_of(
    st.none(),
    st.integers(NOW - 10**12, NOW + 10**12),
    st.sampled_from([MIN_TS_MS, MAX_TS_MS, MIN_TS_MS - 1, MAX_TS_MS + 1, 0, -1, -999]),
)
OPT_TTL = st.one_of(
    st.none(),
    st.integers(-(10**12), 10**13),
    st.sampled_from([0, 999, 1000, -1, -(2**63), 2**63 - 1]),
)


@st.composite
def stamps(draw: st.DrawFn) -> Stamp:
    ident = Identity(*(draw(ANY_TEXT) for _ in range(5)))

    def sometimes(value: Any) -> Any:  # each of the rarer fields now and then, on its own
        return value if draw(st.integers(0, 7)) == 0 else None

    return Stamp(
        ident,
        draw(OPT_TIME),
        draw(OPT_TIME),
        draw(OPT_TTL),
        draw(st.one_of(st.none(), ANY_TEXT, st.just("\ud800"))),  # a lone surrogate: refused
        deleted_at=draw(OPT_TIME),
        erase_at=sometimes(draw(OPT_TIME)),
        held=draw(st.booleans()),
        stamp_offset=draw(st.one_of(st.none(), st.integers(0, 10**6))),
        previous_deleted_at=sometimes(draw(OPT_TIME)),
        held_lives=sometimes(((NOW, NOW + 1000, 1000, "x", None),)) or (),
        first_created_at=sometimes(draw(OPT_TIME)),
    )


def _outcome(fn: Any, *args: Any, **kwargs: Any) -> bytes | str:
    """What the Python code writes, or the name of what it raises."""
    with pure_python():
        try:
            written: bytes = fn(*args, **kwargs)
        except Exception as exc:  # the codec must then answer None
            return type(exc).__name__
    return written


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(stamps(), st.one_of(st.none(), JSON, st.just([[[]]] * 2)))
def test_a_stamp_written_in_c_is_the_one_python_writes(stamp: Stamp, data: Any) -> None:
    got = _codec().stamp(stamp, data)
    want = _outcome(encode_stamp, stamp, data)
    if got is not None:
        assert got == want


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(stamps(), st.sampled_from(["ttl", "explicit", 'q"']), OPT_TIME)
def test_a_tombstone_written_in_c_is_the_one_python_writes(
    stamp: Stamp, reason: str, emitted_at: int | None
) -> None:
    got = _codec().tombstone(stamp, reason, emitted_at)  # type: ignore[arg-type]
    want = _outcome(encode_tombstone, stamp, reason=reason, emitted_at=emitted_at)
    if got is not None:
        assert got == want


@settings(max_examples=300)
@given(
    PLAIN,
    PLAIN,
    st.integers(NOW - 10**11, NOW),
    st.integers(1000, 10**10),
    st.integers(0, 10**9),
    st.one_of(st.none(), JSON),
)
def test_the_common_stamp_and_tombstone_are_written_in_c(
    org: str, record_id: str, created: int, ttl: int, slid: int, data: Any
) -> None:
    codec = _codec()
    stamp = Stamp(
        Identity(org, "_", "live", "session", record_id),
        created,
        created + slid + ttl,
        ttl,
        "defaults",
    )
    written = codec.stamp(stamp, data)
    assert written is not None
    assert written == _outcome(encode_stamp, stamp, data)
    assert orjson.loads(written)["last_activity_at"] == format_ts(created + slid)
    tombstone = codec.tombstone(stamp, "ttl", created + slid + ttl)
    assert tombstone is not None
    assert tombstone == _outcome(
        encode_tombstone, stamp, reason="ttl", emitted_at=created + slid + ttl
    )


@pytest.mark.parametrize(
    "rarer",
    [
        {"erase_at": NOW + 5},
        {"previous_deleted_at": NOW - 5},
        {"held_lives": ((NOW - 9, NOW - 5, 4, "defaults", None),)},
        {"first_created_at": NOW + 1},
    ],
)
def test_a_stamp_with_a_rarer_field_is_written_by_python(rarer: dict[str, Any]) -> None:
    """The C code writes none of them: each alone sends the stamp to the Python code."""
    stamp = Stamp(Identity("o", "_", "live", "session", "r"), NOW, NOW + 1000, 1000, "defaults")
    stamp = stamp._replace(**rarer)
    assert _codec().stamp(stamp, None) is None
    assert encode_stamp(stamp) == _outcome(encode_stamp, stamp)


# Text that escapes to up to six times its size (controls, quotes) or takes up to four bytes
# a character, long enough to grow a buffer that starts at 512 bytes in any of the fields.
LONG_TEXT = st.text(
    st.sampled_from(["\x00", "\x1f", '"', "\\", "\n", "a", "\x7f", "é", "\u2028", "𝄞"]),
    min_size=90,
    max_size=700,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(LONG_TEXT, min_size=6, max_size=6),
    st.one_of(st.none(), st.lists(st.text(max_size=300), max_size=12)),
)
def test_long_text_is_written_as_python_writes_it(texts: list[str], data: Any) -> None:
    codec = _codec()
    stamp = Stamp(Identity(*texts[:5]), NOW, NOW + 1000, 1000, texts[5])
    written = codec.stamp(stamp, data)
    assert written is not None
    assert written == _outcome(encode_stamp, stamp, data)
    tombstone = codec.tombstone(stamp, texts[5], NOW)
    assert tombstone is not None
    assert tombstone == _outcome(encode_tombstone, stamp, reason=texts[5], emitted_at=NOW)


@pytest.mark.parametrize("levels", range(model._ORJSON_WRITES - 3, model._ORJSON_WRITES + 1))
def test_data_at_orjsons_limit_is_written_as_python_writes_it(levels: int) -> None:
    """orjson writes 254 levels: data as deep as a stamp can hold is written, and one
    level more is refused by both (the C code writes it inside a list for that)."""
    stamp = Stamp(Identity("o", "_", "live", "session", "r"), NOW, NOW + 1000, 1000, "defaults")
    data = _nested_lists(levels)
    got = _codec().stamp(stamp, data)
    want = _outcome(encode_stamp, stamp, data)
    assert isinstance(want, bytes) == (levels < model._ORJSON_WRITES)
    assert got == (want if isinstance(want, bytes) else None)


@pytest.mark.parametrize("ttl", [-(2**63), -(2**63) + 1, 2**63 - 1])
@pytest.mark.parametrize("expires", [MIN_TS_MS, -1, NOW, MAX_TS_MS])
def test_a_ttl_at_64_bits_bounds_is_written_as_python_writes_it(ttl: int, expires: int) -> None:
    """``expires_at - ttl_ms`` (the last activity) overflows 64 bits there: the C code must
    see it, not write the wrapped time."""
    stamp = Stamp(Identity("o", "_", "live", "session", "r"), MIN_TS_MS, expires, ttl, "d")
    got = _codec().stamp(stamp, None)
    want = _outcome(encode_stamp, stamp)
    assert got is None or got == want


def test_model_writes_through_the_codec_and_keeps_its_own_fields() -> None:
    """encode_stamp's rarer arguments stay with the Python code, which writes them."""
    _codec()
    stamp = Stamp(Identity("o", "_", "live", "session", "r"), NOW, NOW + 1000, 1000, "defaults")
    redacted = orjson.loads(encode_stamp(stamp, {"a": 1}, ["data.email"]))
    assert redacted["redacted"] == ["data.email"]
    dropped = orjson.loads(encode_stamp(stamp, None, data_dropped="too large"))
    assert dropped["data_dropped"] == "too large"


@settings(max_examples=1500)
@given(
    st.one_of(
        st.integers(MIN_TS_MS, MAX_TS_MS),
        st.sampled_from([MIN_TS_MS, MAX_TS_MS, 0, -1, 951_782_400_000]),
    )
)
def test_times_are_written_as_python_writes_them(ms: int) -> None:
    assert _codec().format_ts(ms) == format_ts(ms)


@pytest.mark.parametrize("ms", [MIN_TS_MS - 1, MAX_TS_MS + 1, 2**63, -(2**64), True, 1.0, None])
def test_a_time_out_of_range_is_left_to_python(ms: Any) -> None:
    assert _codec().format_ts(ms) is None


def test_bind_refuses_classes_of_another_shape_and_keeps_the_ones_it_has() -> None:
    codec = _codec()

    class Other(NamedTuple):
        identity: Identity
        op: str

    with pytest.raises(TypeError, match="fields"):
        codec.bind(Identity, Other, Stamp, orjson.dumps)  # type: ignore[arg-type]
    value = b'{"category":"session","record_id":"r","org":"o","ts":1794999999000}'
    event = codec.event(orjson.loads(value), value, CATEGORIES, NOW + SKEW)
    assert type(event) is InputEvent
    assert isinstance(
        parse_event(b"[]", categories=CATEGORIES, now_ms=NOW, max_skew_ms=SKEW), Rejection
    )


# --- packing states and timers -----------------------------------------------------------

INT64 = st.one_of(
    st.none(),
    st.integers(NOW - 10**12, NOW + 10**12),
    st.sampled_from([-(2**63), 2**63 - 1, -(2**63) - 1, 2**63, 0, -1, True]),
)


@st.composite
def states(draw: st.DrawFn) -> Stamp:
    """States as the store keeps them: any 64-bit field, now and then one beyond 64 bits or
    of another type, a tail of the ttl source alone nearly always."""

    def rarely(values: st.SearchStrategy[Any], otherwise: Any) -> Any:
        return draw(values) if draw(st.integers(0, 5)) == 0 else otherwise

    return Stamp(
        Identity("o", "_", "live", "session", "r"),
        draw(INT64),
        draw(INT64),
        draw(INT64),
        draw(st.one_of(st.none(), st.just(""), ANY_TEXT, st.just("\ud800"))),
        deleted_at=draw(INT64),
        erase_at=draw(INT64),
        held=draw(st.one_of(st.booleans(), st.just(1))),  # type: ignore[arg-type]  # 1: left to Python
        stamp_offset=draw(INT64),
        previous_deleted_at=rarely(INT64, None),
        held_lives=rarely(st.just(((NOW, NOW + 1000, 1000, "x", None),)), ()),
        first_created_at=rarely(INT64, None),
    )


def _packed(fn: Any, *args: Any) -> bytes | str:
    """What the Python function packs, or the name of what it raises."""
    try:
        packed: bytes = fn(*args)
    except Exception as exc:
        return type(exc).__name__
    return packed


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(states(), INT64)
def test_a_state_and_its_timer_packed_in_c_are_those_python_packs(
    state: Stamp, prune_at: int | None
) -> None:
    from stream_expiry.engine import _pack_timer_py
    from stream_expiry.state.codec import _encode_state

    codec = _codec()
    asked: list[tuple[Any, ...]] = []

    def left_to_python(*args: Any) -> bytes:
        asked.append(args)
        return b"python"

    packed = _packed(codec.state_packer(left_to_python), state, prune_at)
    if not asked:
        assert packed == _packed(_encode_state, state, prune_at)
    else:
        assert asked == [(state, prune_at)]
        assert packed == b"python"
    asked.clear()
    timer = _packed(codec.timer_packer(left_to_python), state)
    if not asked:
        assert timer == _packed(_pack_timer_py, state)
    else:
        assert asked == [(state,)]


def test_the_common_state_and_timer_are_packed_in_c_and_used() -> None:
    from stream_expiry import engine
    from stream_expiry.state import codec as state_codec

    codec = _codec()
    state = Stamp(Identity("o", "_", "live", "session", "r"), NOW, NOW + 1000, 1000, "orgs.acme")

    def left_to_python(*args: Any) -> bytes:
        raise AssertionError(f"packed by the Python function: {args}")

    assert codec.state_packer(left_to_python)(state, None) == state_codec._encode_state(state, None)
    marker = state._replace(deleted_at=NOW + 1000, held=True, ttl_source=None)
    assert codec.state_packer(left_to_python)(marker, NOW + 5000) == state_codec._encode_state(
        marker, NOW + 5000
    )
    assert codec.timer_packer(left_to_python)(state) == engine._pack_timer_py(state)
    # And the modules use them.
    assert type(state_codec.encode_state).__name__ == "builtin_function_or_method"
    assert type(engine._pack_timer).__name__ == "builtin_function_or_method"


# --- firing timers -------------------------------------------------------------------------


def _fired_outcome(fn: Any, *args: Any) -> Any:
    """What the function fires, as plain values (each Identity by its parts and key), or
    the name of what it raises."""
    try:
        fired = fn(*args)
    except Exception as exc:
        return type(exc).__name__

    def plain(stamp: Stamp) -> tuple[Any, ...]:
        return (type(stamp), stamp.identity.parts(), stamp.identity.key, *stamp[1:])

    return (type(fired), plain(fired.before), plain(fired.after), *fired[2:])


KEYS = st.one_of(
    st.builds(lambda i: i.key, st.builds(Identity, PLAIN, PLAIN, PLAIN, PLAIN, PLAIN)),
    st.builds(lambda i: i.key, st.builds(Identity, TEXT, TEXT, TEXT, TEXT, TEXT)),
    st.sampled_from(["a/b/c/d", "a/b/c/d/e/f", "é/b/c/d/e", "a//c/d/e", ""]),
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(KEYS, states(), st.integers(NOW, NOW + 10**9), st.sampled_from([b"", b"\xff\xfe", b"x"]))
def test_a_timer_fired_in_c_is_the_one_python_fires(
    key: str, state: Stamp, now: int, junk: bytes
) -> None:
    from stream_expiry.engine import Fired, _fire_timer_py, _pack_timer_py

    packed = _packed(_pack_timer_py, state)
    if not isinstance(packed, bytes):
        return
    packed = packed + junk if junk != b"x" else packed[:39]  # undecodable, or cut short
    asked: list[tuple[Any, ...]] = []

    def left_to_python(*args: Any) -> Fired:
        asked.append(args)
        return _fire_timer_py(*args)

    got = _fired_outcome(_codec().timer_firer(left_to_python, Fired), key, packed, now)
    assert got == _fired_outcome(_fire_timer_py, key, packed, now)


def test_the_common_timer_is_fired_in_c_and_used() -> None:
    from stream_expiry import engine

    codec = _codec()
    state = Stamp(Identity("o", "_", "live", "session", "r"), NOW, NOW + 1000, 1000, "orgs.acme")

    def left_to_python(*args: Any) -> engine.Fired:
        raise AssertionError(f"fired by the Python function: {args}")

    firer = codec.timer_firer(left_to_python, engine.Fired)
    for source in ("orgs.acme", None, "é"):
        packed = engine._pack_timer_py(state._replace(ttl_source=source))
        key = state.identity.key
        assert _fired_outcome(firer, key, packed, NOW + 1000) == _fired_outcome(
            engine._fire_timer_py, key, packed, NOW + 1000
        )
    assert type(engine._fire_timer).__name__ == "builtin_function_or_method"


# --- reading stamps back -----------------------------------------------------------------

OWN_TIMES = st.builds(format_ts, st.integers(MIN_TS_MS, MAX_TS_MS))
ODD_TIME_TEXTS = (
    "2026-02-29T00:00:00.000Z",  # not a leap year
    "2100-02-29T00:00:00.000Z",  # a century, not a leap year
    "2026-04-31T00:00:00.000Z",
    "2026-12-31T23:59:60.000Z",  # a leap second
    "0000-01-01T00:00:00.000Z",
    "2026-12-01t00:00:00.000Z",
    "2026-12-01T00:00:00.000z",
    "2026-12-01 00:00:00.000Z",
    "2026-12-01T00:00:00,000Z",
    "2026-12-01T24:00:00.000Z",
    "2026-13-01T00:00:00.000Z",
    "2026-12-01T00:00:00.000+00:00",
    "2026-12-01T00:00:00Z",
    "\uff12026-12-01T00:00:00.000Z",  # a fullwidth digit two
    "",
)
ODD_TIMES = st.one_of(
    st.sampled_from(ODD_TIME_TEXTS),
    st.integers(-(2**63), 2**63),
    st.booleans(),
    st.floats(allow_nan=False),
)


@st.composite
def stamp_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A stamp as orjson reads it back: nearly always the service's own, now and then a
    field of another form or a rarer field, or a field left out."""

    def field(name: str, common: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> None:
        pick = draw(st.integers(0, 9))
        if pick == 0:
            return  # absent
        body[name] = draw(odd if pick == 1 else common)

    body: dict[str, Any] = {"org": "o", "bot": "_", "env": "live", "category": "session"}
    field("created_at", st.one_of(OWN_TIMES, st.none()), ODD_TIMES)
    field("expires_at", st.one_of(OWN_TIMES, st.none()), ODD_TIMES)
    field(
        "ttl_seconds",
        st.one_of(st.integers(0, 10**10), st.none()),
        st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.booleans()),
    )
    field("ttl_source", st.one_of(ANY_TEXT, st.none()), st.one_of(st.integers(), st.lists(PLAIN)))
    for rare in ("erase_requested_at", "previous_deleted_at", "first_created_at"):
        if draw(st.integers(0, 7)) == 0:
            body[rare] = draw(st.one_of(st.none(), OWN_TIMES, ODD_TIMES))
    if draw(st.integers(0, 7)) == 0:
        body["held_lives"] = draw(
            st.one_of(st.none(), st.just([]), st.just([{"created_at": format_ts(NOW)}]))
        )
    body["data"] = draw(st.one_of(st.none(), JSON))
    return body


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(stamp_bodies())
def test_a_stamp_read_back_in_c_is_the_one_python_reads(body: dict[str, Any]) -> None:
    from stream_expiry.codec import _stamp_body_fields

    asked: list[Any] = []

    def left_to_python(got: Any) -> Any:
        asked.append(got)
        return _stamp_body_fields(got)

    got = _packed(_codec().stamp_reader(left_to_python), body)
    want = _packed(_stamp_body_fields, body)
    assert got == want
    if not isinstance(want, str):
        assert [type(v) for v in got] == [type(v) for v in want]
    assert asked in ([], [body])


@settings(max_examples=1500)
@given(st.integers(MIN_TS_MS, MAX_TS_MS))
def test_the_services_own_times_are_read_as_python_reads_them(ms: int) -> None:
    from stream_expiry.codec import parse_own_ts

    text = format_ts(ms)
    assert _codec().own_time(text) == parse_own_ts(text) == ms


@pytest.mark.parametrize("text", ODD_TIME_TEXTS)
def test_a_time_of_another_form_is_left_to_python(text: str) -> None:
    assert _codec().own_time(text) is None


@pytest.mark.parametrize("text", ["2024-02-29T23:59:59.999Z", "2000-02-29T00:00:00.000Z"])
def test_a_leap_day_is_read_in_c(text: str) -> None:
    from stream_expiry.codec import parse_own_ts

    assert _codec().own_time(text) == parse_own_ts(text)


def test_the_common_stamp_is_read_back_in_c_and_used() -> None:
    from stream_expiry import codec

    body = orjson.loads(
        encode_stamp(
            Stamp(Identity("o", "_", "live", "session", "r"), NOW, NOW + 1000, 1000, "defaults"),
            {"a": 1},
        )
    )

    def left_to_python(got: Any) -> Any:
        raise AssertionError(f"read by the Python function: {got}")

    fields = _codec().stamp_reader(left_to_python)(body)
    assert (
        fields
        == codec._stamp_body_fields(body)
        == (NOW, NOW + 1000, 1000, "defaults", None, None, (), None)
    )
    assert type(codec.stamp_body_fields).__name__ == "builtin_function_or_method"


@pytest.mark.parametrize("ttl_seconds", [1.5, True, 2**70, -(2**70)])
def test_a_stamp_left_to_python_for_its_ttl_keeps_no_hold_on_its_source(ttl_seconds: Any) -> None:
    """The C reader holds the ``ttl_source`` it read while it reads on; a ``ttl_seconds``
    it leaves to the Python function (not an int, or beyond 64 bits) must let go of it:
    each such read kept one reference more, and the text was never freed."""
    source = "".join(["org-", "source"])  # a string of its own, not an interned one
    body = {"created_at": format_ts(NOW), "ttl_seconds": ttl_seconds, "ttl_source": source}
    reader = _codec().stamp_reader(lambda got: None)
    held = sys.getrefcount(source)
    for _ in range(10):
        reader(body)
    assert sys.getrefcount(source) == held


# --- reading a stamp from its bytes (restore) ----------------------------------------------

ODD_JSON_TEXTS = (
    b'{"created_at": 1e3}',  # an exponent
    b'{"data": 1E400}',  # orjson: infinity, refused
    b'{"data": 123456789012345678901234567890}',  # orjson: a float
    b'{"data": "\\ud800"}',  # a lone surrogate, refused
    b'{"data": "\\ud83d\\ude00"}',  # a pair, read
    b'{"data": "\xed\xa0\x80"}',  # a surrogate in UTF-8, refused
    b'{"data": "\xc0\xaf"}',  # an overlong form, refused
    b'{"data": "\xf4\x90\x80\x80"}',  # past U+10FFFF, refused
    b'{"data": "a\x01"}',  # a control character, refused
    b'{"data": 01}',
    b'{"data": -}',
    b'{"data": 1.}',
    b'{"data": .5}',
    b'{"data": tru}',
    b'{"data": [1,]}',
    b'{"data": {"a" 1}}',
    b'{"data": NaN}',
    b'{"ttl_seconds": 5, "ttl_seconds": 6}',  # the last wins
    b'{"ttl_seconds": 5.0}',
    b'{"ttl_seconds": -0}',
    b'{"ttl_seconds": 1234567890123456}',
    b'{"ttl_s\\u0065conds": 7}',  # an escaped name of a field
    b'{"ttl_source": "a\\"b"}',
    b'{"ttl_source": "\xc3\xa9"}',
    b'{"held_lives": []}',
    b'{"held_lives": null, "erase_requested_at": null}',
    b' {"created_at": null}',
    b'{"created_at": null} ',
    b'{"created_at": null}x',
    b"{}",
    b"[]",
    b"null",
    b"",
    b"{",
    b'{"a":' + b"[" * 70 + b"]" * 70 + b"}",  # deeper than the scan goes
    b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}",  # deeper than orjson goes
)


def _stamp_texts(body: dict[str, Any], spaced: bool, ascii_only: bool) -> bytes:
    if not spaced and not ascii_only:
        with contextlib.suppress(TypeError):  # an int past 64 bits: json writes it
            return orjson.dumps(body)
    return json.dumps(body, ensure_ascii=ascii_only, indent=1 if spaced else None).encode()


def _scanned(value: bytes) -> tuple[Any, list[bytes]]:
    """What the compiled scan answers for ``value``, and what it left to Python."""
    from stream_expiry.codec import _stamp_fields

    asked: list[bytes] = []

    def left_to_python(got: bytes) -> Any:
        asked.append(got)
        return _stamp_fields(got)

    return _packed(_codec().stamp_scanner(left_to_python), value), asked


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(stamp_bodies(), st.booleans(), st.booleans(), st.data())
def test_a_stamp_read_from_its_bytes_in_c_is_the_one_python_reads(
    body: dict[str, Any], spaced: bool, ascii_only: bool, data: st.DataObject
) -> None:
    from stream_expiry.codec import _stamp_fields

    value = _stamp_texts(body, spaced, ascii_only)
    if data.draw(st.integers(0, 4)) == 0:  # now and then a byte changed or the end cut off
        at = data.draw(st.integers(0, len(value)))
        value = value[:at] + data.draw(st.binary(max_size=2)) + value[at + 1 :]
    got, asked = _scanned(value)
    want = _packed(_stamp_fields, value)
    assert got == want
    if not isinstance(want, str):
        assert [type(v) for v in got] == [type(v) for v in want]
    assert asked in ([], [value])


@pytest.mark.parametrize("value", ODD_JSON_TEXTS)
def test_json_the_scan_is_not_sure_of_is_read_as_python_reads_it(value: bytes) -> None:
    from stream_expiry.codec import _stamp_fields

    assert _scanned(value)[0] == _packed(_stamp_fields, value)


@pytest.mark.parametrize(
    "value",
    [
        b'{"data": 1e3}',
        b'{"data": "\\ud800"}',
        b'{"data": 01}',
        b'{"a":' + b"[" * 70 + b"]" * 70 + b"}",
    ],
)
def test_json_the_scan_is_not_sure_of_is_left_to_python(value: bytes) -> None:
    assert _scanned(value)[1] == [value]


@given(st.binary(max_size=40))
def test_any_bytes_are_read_as_python_reads_them(value: bytes) -> None:
    from stream_expiry.codec import _stamp_fields

    assert _scanned(value)[0] == _packed(_stamp_fields, value)


def test_the_common_stamp_is_read_from_its_bytes_in_c_and_used() -> None:
    from stream_expiry import codec

    value = encode_stamp(
        Stamp(Identity("o", "_", "live", "session", "r"), NOW, NOW + 1000, 1000, "defaults"),
        {"text": "a long transcript é\n" * 50, "turns": [1, 2.5, None, True, {"x": []}]},
    )
    got, asked = _scanned(value)
    assert asked == []
    assert (
        got
        == codec._stamp_fields(value)
        == (NOW, NOW + 1000, 1000, "defaults", None, None, (), None)
    )
    assert type(codec.stamp_fields).__name__ == "builtin_function_or_method"


@settings(max_examples=1500)
@given(
    st.one_of(
        KEYS.map(str.encode),
        st.binary(max_size=12),
        st.text("ab/_.~-é", max_size=10).map(str.encode),
    )
)
def test_a_keys_category_is_found_in_c_as_the_pattern_finds_it(key: bytes) -> None:
    from stream_expiry.state.restore import _plain_category_matched

    assert _codec().key_category(key) == _plain_category_matched(key)

"""Results of work done in parts add up field by field."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from stream_expiry.parts import add_up


@dataclass
class Inner:
    n: int = 0
    seconds: float = 0.0


@dataclass
class Whole:
    count: int = 0
    items: list[str] = field(default_factory=list)
    by_key: dict[str, int] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


def test_numbers_add_lists_join_dicts_merge_and_nested_results_add_up() -> None:
    a = Whole(1, ["a"], {"x": 1}, Inner(2, 0.5))
    b = Whole(2, ["b", "c"], {"y": 2}, Inner(3, 0.25))
    total = add_up([a, b], Whole())
    assert total == Whole(3, ["a", "b", "c"], {"x": 1, "y": 2}, Inner(5, 0.75))
    assert a == Whole(1, ["a"], {"x": 1}, Inner(2, 0.5))  # the parts are left as they were


@dataclass
class Odd:
    name: str = ""


def test_a_field_that_does_not_add_up_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Odd\.name does not add up"):
        add_up([Odd("a")], Odd())

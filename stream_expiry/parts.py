"""The results of work done in parts, added up into the result of the whole.

A batch applied in several transactions at once (the sinks), a restore or a replay shared
among worker processes: each part reports what it did in the same dataclass the whole
would, and the whole's is their sum, field by field.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["add_up"]

T = TypeVar("T")


def add_up(parts: Iterable[T], total: T) -> T:
    """``total`` with every part added in, in the order given, field by field: numbers are
    summed, lists joined, dicts merged, and dataclasses added up in turn. Raises TypeError
    for a field of any other kind (a part's result must say how it adds up)."""
    for part in parts:
        _add(part, total)
    return total


def _add(part: Any, total: Any) -> None:
    for f in dataclasses.fields(total):
        mine, theirs = getattr(total, f.name), getattr(part, f.name)
        if isinstance(mine, list):
            mine.extend(theirs)
        elif isinstance(mine, dict):
            mine.update(theirs)
        elif dataclasses.is_dataclass(mine):
            _add(theirs, mine)
        elif isinstance(mine, int | float) and not isinstance(mine, bool):
            setattr(total, f.name, mine + theirs)
        else:
            raise TypeError(f"{type(total).__name__}.{f.name} does not add up")

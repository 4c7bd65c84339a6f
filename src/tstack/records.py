"""Addable records: a dataclass whose ``+`` adds every field and whose ``* n`` scales every field.

Records of counts and costs (integer operation counts, inf/NaN tallies, seconds with their parts, joules by
component) are summed over ops and layers. ``Addable`` writes that arithmetic once:

    @dataclass(frozen=True)
    class Tally(Addable):
        reads: int = 0
        seconds: float = 0.0

    Tally(1, 2.0) + Tally(3, 0.5) == Tally(4, 2.5);  sum(tallies) works;  Tally(1, 2.0) * 3 == Tally(3, 6.0)

The rule for fields:
- every field of the record takes part (so every field must be a quantity: an int, a float, or None);
- ``None`` means "not known": a sum or product is None where any part is None, so a total knows a quantity only
  when every part does (the energy of a backend that does not model energy, for example);
- the record with every field at its default is the zero: give every field a default of 0 (or None) so that
  ``Record()`` is the neutral element; ``0 + record`` is ``record`` so that ``sum(records)`` needs no start value.
Names, labels and other non-quantities do not belong on an Addable record: keep them on a record that holds one.
Adding two records of different types is a TypeError.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

R = TypeVar("R", bound="Addable")


def _add(a: Any, b: Any) -> Any:
    return None if a is None or b is None else a + b


class Addable:
    """Mixin for dataclasses: ``a + b`` adds every field, ``a * n`` multiplies every field by ``n`` (None stays None)."""

    __slots__ = ()

    def __add__(self: R, other: object) -> R:
        if type(other) is not type(self):
            return NotImplemented
        return type(self)(**{f.name: _add(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})

    def __radd__(self: R, other: object) -> R:
        if isinstance(other, int) and other == 0:  # sum(records) starts from 0
            return self
        return NotImplemented

    def __mul__(self: R, n: float) -> R:
        if not isinstance(n, int | float) or isinstance(n, bool):
            return NotImplemented
        return type(self)(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name) * n
                             for f in fields(self)})

    __rmul__ = __mul__

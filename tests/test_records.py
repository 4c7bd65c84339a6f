"""tstack.records.Addable: a + b adds every field, None is "unknown" and stays so, the all-default record is the zero."""

from __future__ import annotations

from dataclasses import astuple, dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tstack.integer.costs import IntCounts
from tstack.profiler.values import Problems
from tstack.records import Addable


@dataclass(frozen=True, slots=True)
class Tally(Addable):
    reads: int = 0
    writes: int = 0
    joules: int | None = 0  # None: not known


@dataclass(frozen=True)
class Other(Addable):
    reads: int = 0


ints = st.integers(-(10**12), 10**12)
tallies = st.builds(Tally, ints, ints, st.none() | ints)
int_counts = st.builds(IntCounts, ints, ints, ints, ints, ints)
problems = st.builds(Problems, ints, ints, ints, ints)
records = st.one_of(tallies, int_counts, problems)
triples = st.one_of(*(st.tuples(s, s, s) for s in (tallies, int_counts, problems)))


def _fieldwise(a: Addable, b: Addable) -> tuple:
    return tuple(None if x is None or y is None else x + y for x, y in zip(astuple(a), astuple(b)))


@given(triples)
def test_sum_is_fieldwise_associative_and_commutative(abc: tuple[Addable, Addable, Addable]) -> None:
    a, b, c = abc
    assert type(a + b) is type(a)
    assert astuple(a + b) == _fieldwise(a, b)
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a


@given(records)
def test_zero_element(a: Addable) -> None:
    zero = type(a)()
    assert a + zero == a == zero + a
    assert 0 + a == a
    assert sum([a, a, a]) == a + a + a
    assert sum([a], zero) == a


@given(tallies, st.integers(-1000, 1000))
def test_scaling(a: Tally, n: int) -> None:
    assert astuple(a * n) == tuple(None if x is None else x * n for x in astuple(a))
    assert n * a == a * n
    if n >= 1:
        assert a * n == sum([a] * n)


def test_unknown_stays_unknown() -> None:
    assert (Tally(1, 2, 3) + Tally(1, 1, None)).joules is None
    assert Tally(1, 2, 3) + Tally(1, 1, 1) == Tally(2, 3, 4)


def test_other_types_do_not_add() -> None:
    with pytest.raises(TypeError):
        Tally(1) + Other(1)
    with pytest.raises(TypeError):
        Tally(1) + 1
    with pytest.raises(TypeError):
        1 + Tally(1)
    with pytest.raises(TypeError):
        Tally(1) * "2"


def test_records_that_use_it() -> None:
    assert IntCounts(1, 2, 3, 4, 5) + IntCounts(mul=1, div=1) == IntCounts(2, 2, 3, 4, 6)
    assert IntCounts(1, 2, 3, 4, 5).scaled(3) == IntCounts(3, 6, 9, 12, 15)
    assert Problems(10, 1, 0, 2) + Problems(5, 0, 1, 0) == Problems(15, 1, 1, 2)
    assert str(sum([Problems(4, 0, 0, 1)] * 2)) == "0 inf, 0 NaN, 2 subnormal of 8 values"

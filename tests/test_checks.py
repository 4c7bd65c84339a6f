"""The one validation toolkit: a problem is appended exactly when a value is outside what is allowed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from hypothesis import given
from hypothesis import strategies as st

from tstack import checks

VALUES = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.text(max_size=5), st.none())


@given(VALUES, st.integers(-100, 100), st.integers(0, 200))
def test_integer_accepts_exactly_ints_in_range(v, lo, width):
    problems: list[str] = []
    checks.integer(problems, "n", v, lo, lo + width)
    ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= lo + width
    assert (problems == []) == ok
    assert all(p.startswith("n=") for p in problems)


@given(VALUES, st.booleans())
def test_number_accepts_exactly_finite_numbers_in_range(v, integer):
    problems: list[str] = []
    checks.number(problems, "x", v, -1e6, 1e6, integer=integer)
    typed = isinstance(v, int) if integer else isinstance(v, (int, float))
    ok = typed and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v)) and -1e6 <= v <= 1e6
    assert (problems == []) == ok


def test_section_reads_the_declarative_tables():
    @dataclass
    class Part:
        RANGES: ClassVar = {"rows": (1, 8, True), "rate": (0.0, 1.0, False)}
        CHOICES: ClassVar = {"order": ("ijk", "jik")}
        FLAGS: ClassVar = ("double",)
        TEXTS: ClassVar = ("note",)
        rows: object = 4
        rate: object = 0.5
        order: object = "ijk"
        double: object = True
        note: object = ""

    problems: list[str] = []
    checks.section(problems, Part(), "p")
    assert problems == []
    checks.section(problems, Part(rows=True, rate="0.5", order="kji", double=1, note=3), "p")
    assert [p.split("=")[0] for p in problems] == ["p.rows", "p.rate", "p.order", "p.double", "p.note"]

"""The one validation toolkit: checks that append a one-line problem (field, value, what is allowed) to a list.

Specs collect every problem of a record, then raise one SpecError with all of them. The checks are strict about
types: a boolean is not an integer, a string is not a number, and a number is never NaN.

    problems: list[str] = []
    integer(problems, "layers", layers, 1, MAX_LAYERS)
    choice(problems, "norm", norm, NORMS)
    section(problems, scratchpad, "scratchpad")      # a record's declarative RANGES, CHOICES, FLAGS and TEXTS
    if problems:
        raise SpecError(problems, where)
"""

from __future__ import annotations

import math
from typing import Any

from tstack.loader import show


def integer(problems: list[str], name: str, value: Any, lo: int, hi: int) -> None:
    """An int (not a bool) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{name}={show(value)} must be an integer in [{lo}, {hi}]")
    elif not lo <= value <= hi:
        problems.append(f"{name}={show(value)} is outside [{lo}, {hi}]")


def number(problems: list[str], name: str, value: Any, lo: float, hi: float, integer: bool = False) -> None:
    """A finite number (an int when ``integer``; never a bool or a string) in [lo, hi]."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not ((isinstance(value, int) or math.isfinite(value)) and lo <= value <= hi):
        kind = "an integer" if integer else "a number"
        problems.append(f"{name}={show(value)} must be {kind} in [{lo:g}, {hi:g}]")


def choice(problems: list[str], name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """One of ``allowed`` (strings)."""
    if not isinstance(value, str) or value not in allowed:
        problems.append(f"{name}={show(value)} is not one of {', '.join(allowed)}")


def flag(problems: list[str], name: str, value: Any) -> None:
    """true or false."""
    if not isinstance(value, bool):
        problems.append(f"{name}={show(value)} must be true or false")


def text(problems: list[str], name: str, value: Any) -> None:
    """A string."""
    if not isinstance(value, str):
        problems.append(f"{name}={show(value)} must be a string")


def size_or_auto(problems: list[str], name: str, value: Any, auto: str) -> None:
    """An integer ≥ 1, or None meaning ``auto`` (e.g. "to size it from the L2 cache")."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        problems.append(f"{name}={show(value)} must be an integer ≥ 1, or None {auto}")


def section(problems: list[str], record: Any, prefix: str) -> None:
    """A record's declarative checks: ``RANGES`` {field: (lo, hi, integer)}, ``CHOICES`` {field: allowed},
    ``FLAGS`` (fields) and ``TEXTS`` (fields), each problem named ``prefix.field``."""
    for name, (lo, hi, is_int) in getattr(record, "RANGES", {}).items():
        number(problems, f"{prefix}.{name}", getattr(record, name), lo, hi, integer=is_int)
    for name, allowed in getattr(record, "CHOICES", {}).items():
        choice(problems, f"{prefix}.{name}", getattr(record, name), allowed)
    for name in getattr(record, "FLAGS", ()):
        flag(problems, f"{prefix}.{name}", getattr(record, name))
    for name in getattr(record, "TEXTS", ()):
        text(problems, f"{prefix}.{name}", getattr(record, name))

"""SI values to human-readable strings (display only)."""

from __future__ import annotations

_PREFIX = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si(value: float, unit: str) -> str:
    for scale, p in _PREFIX:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {p}{unit}"
    return f"{value:.3g} {unit}"


def seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def ratio(value: float | None, suffix: str = "×") -> str:
    """A ratio with two decimals, or '-' where it does not apply."""
    return f"{value:.2f}{suffix}" if value is not None else "-"

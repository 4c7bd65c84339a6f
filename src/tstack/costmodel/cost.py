"""Cost: the frozen, addable result of every cost model and of the profiler."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce
from operator import add


def _known_sum(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


@dataclass(frozen=True, slots=True)
class Cost:
    """Seconds with the parts they come from; adding Costs adds every field.

    ``compute_s`` and ``memory_s`` are the times at attained compute and memory rates,
    ``overhead_s`` the launch overhead, ``ideal_s`` the time at 100% of peak FLOP/s (so
    ``utilization`` = ideal_s / seconds), ``kernels`` the number of launches.

    ``joules`` is the energy, or None where the backend does not model it (the roofline, the calibrated
    tables and measurements do not; the accelerator does). A sum knows its energy only when every part
    does: None + x is None. ``Cost()`` itself has no energy, so add Costs with ``Cost.total(costs)``
    (or ``sum(costs)``), not ``sum(costs, Cost())``, to keep it.
    """

    seconds: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    compute_s: float = 0.0
    memory_s: float = 0.0
    overhead_s: float = 0.0
    ideal_s: float = 0.0
    kernels: int = 0
    joules: float | None = None

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.seconds + other.seconds, self.flops + other.flops, self.bytes + other.bytes,
                    self.compute_s + other.compute_s, self.memory_s + other.memory_s,
                    self.overhead_s + other.overhead_s, self.ideal_s + other.ideal_s, self.kernels + other.kernels,
                    _known_sum(self.joules, other.joules))

    def __radd__(self, other: object) -> Cost:
        if other == 0:  # so that sum(costs) works
            return self
        return NotImplemented

    def __mul__(self, n: int) -> Cost:
        return Cost(self.seconds * n, self.flops * n, self.bytes * n, self.compute_s * n, self.memory_s * n,
                    self.overhead_s * n, self.ideal_s * n, self.kernels * n,
                    None if self.joules is None else self.joules * n)

    __rmul__ = __mul__

    @staticmethod
    def total(costs: Iterable[Cost]) -> Cost:
        """The sum of ``costs`` (``Cost()`` when there are none), energy included when every part has it."""
        parts = iter(costs)
        first = next(parts, None)
        return Cost() if first is None else reduce(add, parts, first)

    @property
    def bound(self) -> str:
        """What limits the time: compute, memory or (kernel-launch) overhead."""
        parts = {"compute": self.compute_s, "memory": self.memory_s, "overhead": self.overhead_s}
        return max(parts, key=parts.__getitem__) if any(parts.values()) else "-"  # measured Costs have no split

    @property
    def utilization(self) -> float:
        """Fraction of peak FLOP/s attained over the whole time."""
        return self.ideal_s / self.seconds if self.seconds else 0.0

    @property
    def intensity(self) -> float:
        """FLOP per byte."""
        return self.flops / self.bytes if self.bytes else float("inf")


"""Cost: the frozen, addable result of every cost model and of the profiler."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce
from operator import add

from tstack.records import Addable


@dataclass(frozen=True, slots=True)
class Cost(Addable):
    """Seconds with the parts they come from; adding Costs adds every field (records.Addable), ``* n`` scales them.

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


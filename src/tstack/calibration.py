"""Calibration tables: kernel times measured on a grid of sizes, interpolated in log-log space.

A device file written by `tstack calibrate` carries, besides fitted peak rates, one table per
kernel: seconds measured at grid points of its sizes (GEMMs: M, N, K; batched GEMMs: seconds
per batch entry over M, N, K and the batch; element-wise and reduction kernels: elements and
row length; optimizer stages, copies and gathers: elements). A prediction interpolates log(seconds) multilinearly in log(size)
and continues the edge slope (clipped to at most proportional) beyond the grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tstack.errors import SpecError


@dataclass(frozen=True)
class Table:
    """seconds = f(sizes) on a grid: ``axes`` are increasing grid points, ``seconds`` row-major."""

    axes: tuple[tuple[float, ...], ...]
    seconds: tuple[float, ...]

    def __post_init__(self) -> None:
        problems = []
        shape = tuple(len(a) for a in self.axes)
        if not self.axes or any(n < 2 for n in shape):
            problems.append(f"axes {shape} need at least two grid points each")
        elif any(not all(0 < a[i] < a[i + 1] for i in range(len(a) - 1)) for a in self.axes):
            problems.append("axes must be positive and increasing")
        if not problems and len(self.seconds) != math.prod(shape):
            problems.append(f"seconds has {len(self.seconds)} values; the grid {shape} needs {math.prod(shape)}")
        if any(not (isinstance(s, (int, float)) and 0 < s < 1e6) for s in self.seconds):
            problems.append("seconds must be positive numbers below 1e6")
        if problems:
            raise SpecError(problems, "calibration table")
        object.__setattr__(self, "_logs", np.log(np.asarray(self.seconds, dtype=float)).reshape(shape))
        object.__setattr__(self, "_log_axes", tuple(np.log(np.asarray(a, dtype=float)) for a in self.axes))

    def __call__(self, *sizes: float) -> float:
        """Interpolated seconds at ``sizes`` (one per axis).

        Inside the grid: multilinear in log-log space. Below it: the edge value (a smaller kernel
        is not slower; small kernels are overhead-bound). Above it: the edge segment's slope,
        clipped to [0, 1], so time never grows faster than in proportion to the size.
        """
        if len(sizes) != len(self.axes):
            raise ValueError(f"table has {len(self.axes)} axes, got {len(sizes)} sizes")
        logs = [math.log(max(x, 1e-30)) for x in sizes]
        clamped = [min(max(lx, ax[0]), ax[-1]) for lx, ax in zip(logs, self._log_axes)]
        total = self._interp(clamped)
        for d, (lx, ax) in enumerate(zip(logs, self._log_axes)):
            if lx > ax[-1]:
                below = list(clamped)
                below[d] = ax[-2]
                slope = (total - self._interp(below)) / (ax[-1] - ax[-2])
                total += min(max(slope, 0.0), 1.0) * (lx - ax[-1])
        return math.exp(total)

    def _interp(self, logs: list[float]) -> float:
        """Multilinear interpolation of log(seconds) at log-sizes inside the grid."""
        corners: list[tuple[int, float]] = []
        for lx, ax in zip(logs, self._log_axes):
            i = int(np.clip(np.searchsorted(ax, lx) - 1, 0, len(ax) - 2))
            corners.append((i, (lx - ax[i]) / (ax[i + 1] - ax[i])))
        total = 0.0
        for bits in range(1 << len(corners)):
            w, idx = 1.0, []
            for d, (i, t) in enumerate(corners):
                hi = (bits >> d) & 1
                w *= t if hi else 1.0 - t
                idx.append(i + hi)
            total += w * self._logs[tuple(idx)]
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"axes": [list(a) for a in self.axes], "seconds": list(self.seconds)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Table:
        if not isinstance(data, dict) or not isinstance(data.get("axes"), list) or not isinstance(data.get("seconds"), list):
            raise SpecError(["a table needs 'axes' (list of lists) and 'seconds' (list)"], where)
        if not all(isinstance(a, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in a)
                   for a in data["axes"]):
            raise SpecError(["'axes' must be lists of numbers"], where)
        try:
            return cls(tuple(tuple(float(v) for v in a) for a in data["axes"]), tuple(data["seconds"]))
        except SpecError as e:
            raise SpecError(list(e.problems), where) from None


@dataclass(frozen=True)
class Calibration:
    """Measured tables of one machine at one thread count, keyed by table name.

    Names: ``gemm.<dtype>`` (M, N, K) and ``bgemm.<dtype>`` (seconds per batch entry over M, N, K and the
    batch), a registered kernel name
    (``softmax``, ``layernorm-bwd``, ...) for rows×cols kernels, and ``<name>`` of optimizer
    stages, copies and gathers over their element count. ``provenance`` says how the tables were made: grid
    (``full`` or ``quick``), rounds, repeats, threads, host, CPU model, date and the host probes before and
    after (``profiler.probe``).
    """

    threads: int
    tables: dict[str, Table] = field(default_factory=dict)
    environment: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        """True for a file made by ``tstack calibrate --quick`` (a smoke-test grid, not accurate)."""
        return self.provenance.get("grid") == "quick"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threads": self.threads, "environment": self.environment}
        if self.provenance:
            out["provenance"] = self.provenance
        out["tables"] = {k: t.to_dict() for k, t in self.tables.items()}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Calibration:
        if not isinstance(data, dict):
            raise SpecError(["calibration must be a mapping with threads and tables"], where)
        threads = data.get("threads")
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4096:
            raise SpecError([f"calibration.threads={threads!r} must be an integer in [1, 4096]"], where)
        tables = data.get("tables", {})
        if not isinstance(tables, dict):
            raise SpecError(["calibration.tables must be a mapping of name to table"], where)
        env = data.get("environment", "")
        provenance = data.get("provenance") or {}
        if not isinstance(provenance, dict) or not all(_plain(v) for v in provenance.values()):
            raise SpecError(["calibration.provenance must be a mapping of names to numbers, strings or mappings of "
                             "them (how `tstack calibrate` made the file)"], where)
        return cls(threads, {str(k): Table.from_dict(v, f"{where}: calibration.tables.{k}") for k, v in tables.items()},
                   env if isinstance(env, str) else str(env), {str(k): v for k, v in provenance.items()})


def _plain(value: Any, depth: int = 0) -> bool:
    """A scalar, or (two levels at most) a mapping of scalars: what a provenance entry may hold."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return depth < 2 and isinstance(value, dict) and all(_plain(v, depth + 1) for v in value.values())

"""Offload memory-bound kernels to near-memory ALUs (002 §6.2.1): the GPU keeps the GEMMs, the NMC runs the
optimizer (and optionally the element-wise activation kernels); each offloaded kernel next to its GPU time and
002's optimistic GPU time (data read and written once at peak bandwidth)."""

from __future__ import annotations

from dataclasses import astuple, dataclass

from tstack.api import analyze
from tstack.costmodel.backend import cost_workload
from tstack.costmodel.nmc import combine_op, nmc, optimistic_gpu, work_of
from tstack.hardware.device import DeviceSpec
from tstack.hardware.memory import MemorySpec
from tstack.records import Addable
from tstack.spec import ModelSpec, RunSpec

SCOPES = ("optimizer", "elementwise")


@dataclass(frozen=True)
class OffloadRow:
    """One kernel name's instances, summed: on the GPU, on the optimistic GPU, on the NMC ALUs (host combine
    of partial sums included)."""

    name: str
    group: str
    kernels: int
    bytes: float
    gpu_seconds: float
    optimistic_seconds: float
    nmc_seconds: float

    def record(self) -> dict[str, object]:
        return {"name": self.name, "group": self.group, "kernels": self.kernels, "bytes": self.bytes,
                "gpu_seconds": self.gpu_seconds, "gpu_optimistic_seconds": self.optimistic_seconds,
                "nmc_seconds": self.nmc_seconds, "speedup_vs_gpu": self.gpu_seconds / self.nmc_seconds,
                "speedup_vs_optimistic": self.optimistic_seconds / self.nmc_seconds}


@dataclass(frozen=True)
class _Tally(Addable):
    """OffloadRow's quantities, summed over a kernel name's instances."""

    kernels: int
    bytes: float
    gpu_seconds: float
    optimistic_seconds: float
    nmc_seconds: float


@dataclass(frozen=True)
class Offload:
    rows: list[OffloadRow]
    iteration_seconds: float  # the whole iteration on the GPU

    @property
    def offloaded_gpu_seconds(self) -> float:
        return sum(r.gpu_seconds for r in self.rows)

    @property
    def offloaded_optimistic_seconds(self) -> float:
        return sum(r.optimistic_seconds for r in self.rows)

    @property
    def offloaded_nmc_seconds(self) -> float:
        return sum(r.nmc_seconds for r in self.rows)

    @property
    def iteration_nmc_seconds(self) -> float:
        """The iteration with the offloaded kernels on the NMC (they run after backward: no overlap assumed)."""
        return self.iteration_seconds - self.offloaded_gpu_seconds + self.offloaded_nmc_seconds

    def summary(self) -> dict[str, float]:
        return {"iteration_gpu_seconds": self.iteration_seconds, "iteration_nmc_seconds": self.iteration_nmc_seconds,
                "end_to_end_speedup": self.iteration_seconds / self.iteration_nmc_seconds,
                "offloaded_gpu_seconds": self.offloaded_gpu_seconds,
                "offloaded_gpu_optimistic_seconds": self.offloaded_optimistic_seconds,
                "offloaded_nmc_seconds": self.offloaded_nmc_seconds,
                "offload_speedup_vs_optimistic": self.offloaded_optimistic_seconds / self.offloaded_nmc_seconds}


def offload(model: ModelSpec, run: RunSpec, device: DeviceSpec, memory: MemorySpec, scope: str = "optimizer",
            fusion: str = "none") -> Offload:
    """The iteration on ``device`` with the ``scope`` kernels on ``memory``'s ALUs."""
    b = analyze(model, run, device, fusion=fusion)
    groups: dict[str, str] = {}
    sums: dict[str, _Tally] = {}
    for op, cost in zip(b.ops, b.costs):
        work = work_of(op, elementwise=scope == "elementwise")
        if work is None:
            continue
        on_nmc = nmc(op, memory)
        if work.reduction:
            _, (combine,) = cost_workload((combine_op(op, memory),), device)
            on_nmc = on_nmc + combine
        groups.setdefault(op.name, op.label("group"))
        sums[op.name] = sums.get(op.name, 0) + _Tally(op.count, float(op.bytes * op.count), cost.seconds,
                                                      optimistic_gpu(op, device), on_nmc.seconds)
    rows = [OffloadRow(name, groups[name], *astuple(t)) for name, t in sums.items()]
    return Offload(rows, b.total.seconds)


"""A whole inference on the accelerator: the workload's ops (tstack.workload.build) → a Breakdown and its totals.

The ops are built for RunSpec(infer, int8) with identical layers collapsed (count = layers) and costed by the
systolic backend (tstack.costmodel.systolic, which has the steps); the Breakdown has one entry per op (and one per
host (de)quantization), labelled ``accel`` with its 000 Fig. 2 category: matmul, softmax, layernorm, gelu, (de)quant,
other. Its Costs carry seconds and joules; the totals and shares below are read from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tstack.accel.energy import ComponentEnergy
from tstack.accel.mapping import mapper
from tstack.breakdown import Breakdown
from tstack.costmodel.cost import Cost
from tstack.costmodel.systolic import ACCEL, CATEGORIES, MATMUL, AccelOp, cost_ops, entries, gemm_shape
from tstack.hardware.accel import AccelSpec
from tstack.models import load_model
from tstack.spec import ModelSpec, RunSpec
from tstack.workload import build

__all__ = ["CATEGORIES", "Result", "gemm_shape", "inference_run", "run"]


@dataclass(frozen=True)
class Result:
    """One (model, run, hardware, schedule): the Breakdown, and per op what the accelerator knows beyond its Cost
    (unit, energy by component, mapping, timing)."""

    hw: AccelSpec
    schedule: str
    breakdown: Breakdown
    records: tuple[AccelOp, ...]

    @property
    def seq(self) -> int:
        return self.breakdown.run.seq

    @property
    def total(self) -> Cost:
        return self.breakdown.total

    @property
    def seconds(self) -> float:
        return self.total.seconds

    @property
    def joules(self) -> float:
        return self.total.joules

    @property
    def energy(self) -> ComponentEnergy:
        """Joules by component over the whole inference."""
        return sum((r.energy * r.count for r in self.records), ComponentEnergy())

    @property
    def edp(self) -> float:
        return self.joules * self.seconds

    @property
    def utilization(self) -> float:
        """MAC-unit utilization over the whole inference (000 §II-2: < 1% on the baseline)."""
        return self.total.utilization

    def by_category(self) -> dict[str, float]:
        """Seconds per 000 Fig. 2 category, every category present."""
        groups = self.breakdown.group_by(ACCEL)
        return {c: groups[c].seconds if c in groups else 0.0 for c in CATEGORIES}

    def matmul_utilization(self) -> float:
        """Utilization of the matmuls alone, time-weighted (000 §II-2: 74%)."""
        matmul = self.breakdown.group_by(ACCEL)[MATMUL]
        return matmul.ideal_s / matmul.seconds


def inference_run(seq: int) -> RunSpec:
    """The run the accelerator model costs: one int8 inference of one sequence of ``seq`` tokens."""
    return RunSpec(mode="infer", precision="int8", batch=1, seq=seq)


def run(model: str | ModelSpec, seq: int, hw: AccelSpec, schedule: str = "non-fused", mapping: str = "auto",
        objective: str = "latency") -> Result:
    """Cost one int8 inference of ``model`` at sequence length ``seq`` on ``hw``."""
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    run_spec = inference_run(seq)
    records = cost_ops(hw, build(spec, run_spec, collapse=True), schedule, mapper(mapping, objective))
    ops, costs = entries(hw, records)
    return Result(hw, schedule, Breakdown(spec, run_spec, hw.name, ops, costs), records)

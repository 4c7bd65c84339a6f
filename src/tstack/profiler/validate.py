"""`tstack validate`: the same workload measured and predicted, with per-op and end-to-end error."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from tstack.breakdown import Breakdown
from tstack.workload.op import LABEL_KEYS


@dataclass(frozen=True)
class Validation:
    """Predicted and measured Breakdowns of the same Ops, compared op by op."""

    predicted: Breakdown
    measured: Breakdown

    def __post_init__(self) -> None:
        if self.predicted.ops != self.measured.ops:
            raise ValueError("predicted and measured breakdowns must hold the same ops")

    @property
    def op_errors(self) -> list[float]:
        """|predicted − measured| / measured per op."""
        return [abs(p.seconds - m.seconds) / m.seconds if m.seconds > 0 else float("nan")
                for p, m in zip(self.predicted.costs, self.measured.costs)]

    @property
    def median_op_error(self) -> float:
        return statistics.median([e for e in self.op_errors if e == e] or [float("nan")])

    @property
    def end_to_end_error(self) -> float:
        """Signed: positive when the model predicts more time than measured."""
        m = self.measured.total.seconds
        return (self.predicted.total.seconds - m) / m

    def records(self) -> list[dict[str, Any]]:
        """One record per op; a GEMM's batch is ``gemm_batch`` (the run's batch is the caller's ``batch``)."""
        out = []
        for op, p, m, e in zip(self.predicted.ops, self.predicted.costs, self.measured.costs, self.op_errors):
            M, N, K, gemm_batch = op.gemm_shape
            out.append({"kind": op.kind, "name": op.name, **{k: op.label(k) for k in LABEL_KEYS}, "M": M, "N": N,
                        "K": K, "gemm_batch": gemm_batch, "rows": op.dim("rows"), "cols": op.dim("cols"),
                        "params": op.dim("params"), "count": op.count, "predicted_seconds": p.seconds,
                        "measured_seconds": m.seconds, "relative_error": e})
        return out

    def summary(self) -> dict[str, Any]:
        r = self.predicted.run
        return {"model": self.predicted.model.name, "mode": r.mode, "batch": r.batch, "seq": r.seq,
                "precision": r.precision, "device": self.predicted.device, "ops": len(self.predicted.ops),
                "predicted_seconds": self.predicted.total.seconds, "measured_seconds": self.measured.total.seconds,
                "end_to_end_error": self.end_to_end_error, "median_op_error": self.median_op_error}

    def group_errors(self, key: str) -> dict[str, tuple[float, float]]:
        """(predicted, measured) seconds per label value."""
        p, m = self.predicted.group_by(key), self.measured.group_by(key)
        return {k: (p[k].seconds, m[k].seconds) for k in m}

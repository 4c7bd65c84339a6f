"""Breakdown: Ops with their Costs, regrouped by any label; exported as records and pandas (JSON: report.output)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from tstack.costmodel.cost import Cost
from tstack.costmodel.systolic import ACCEL  # the 000 Fig. 2 category an accelerator gives each op
from tstack.errors import UnknownNameError
from tstack.spec import ModelSpec, RunSpec
from tstack.workload.op import LABEL_KEYS, Op

GROUP_KEYS = LABEL_KEYS + ("kind", "dtype", "name", ACCEL)
# Aliases users type for the label keys.
KEY_ALIASES = {"nlpfast-op": "nlpfast", "002": "group", "demystifying": "group", "op": "name", "000": ACCEL}
# 002 Fig. 3 (top level) and Fig. 4 (inside a Transformer layer) as (title, group-by key, filter).
HIERARCHY = (
    ("Iteration", "part", {}),
    ("Transformer layer", "block", {"part": "transformer"}),
    ("Attention", "group", {"block": "attention"}),
    ("FC", "group", {"block": "fc"}),
)


def resolve_key(key: str) -> str:
    k = KEY_ALIASES.get(key, key)
    if k not in GROUP_KEYS:
        allowed = ", ".join(GROUP_KEYS + tuple(KEY_ALIASES))
        raise UnknownNameError(f"--group-by {key[:40]!r} is not a label (allowed: {allowed})")
    return k


@dataclass(frozen=True)
class Breakdown:
    """The result of analyzing (or measuring) one configuration."""

    model: ModelSpec
    run: RunSpec
    device: str
    ops: tuple[Op, ...]
    costs: tuple[Cost, ...]

    @property
    def total(self) -> Cost:
        """The sum of the costs; ``joules`` is None unless every op's energy is known."""
        return Cost.total(self.costs)

    def group_by(self, key: str, where: dict[str, str] | None = None) -> dict[str, Cost]:
        """Total Cost per value of a label, in order of first appearance, optionally filtered."""
        k = resolve_key(key)
        where = where or {}
        out: dict[str, Cost] = {}
        for op, cost in zip(self.ops, self.costs):
            if all(op.label(fk) == fv for fk, fv in where.items()):
                v = op.label(k)
                out[v] = out[v] + cost if v in out else cost
        return out

    def shares(self, key: str, where: dict[str, str] | None = None) -> dict[str, float]:
        """Fraction of the whole iteration's seconds per label value."""
        total = self.total.seconds
        return {k: c.seconds / total for k, c in self.group_by(key, where).items()}

    def hierarchy(self) -> list[tuple[str, dict[str, Cost]]]:
        """The 002 Fig. 3/4 levels that are present: iteration, layer, attention, FC."""
        levels = [(title, self.group_by(key, where)) for title, key, where in HIERARCHY]
        return [(t, g) for t, g in levels if g]

    def records(self) -> Iterable[dict[str, Any]]:
        for op, c in zip(self.ops, self.costs):
            M, N, K, batch = op.gemm_shape
            yield {
                "kind": op.kind, "name": op.name, **{k: op.label(k) for k in LABEL_KEYS},
                **{k: v for k, v in op.labels if k not in LABEL_KEYS},  # a backend's own labels (accel)
                "dtype": op.dtype, "M": M, "N": N, "K": K, "gemm_batch": batch,
                "rows": op.dim("rows"), "cols": op.dim("cols"), "count": op.count,
                "flops": op.flops * op.count, "bytes": op.bytes * op.count, "intensity_flop_per_byte": op.intensity,
                "seconds": c.seconds, "bound": c.bound, "utilization": c.utilization, "joules": c.joules,
            }

    def to_pandas(self) -> Any:  # a pandas DataFrame; pandas is imported lazily
        import pandas as pd

        return pd.DataFrame.from_records(list(self.records()))

    def summary(self) -> dict[str, Any]:
        t = self.total
        return {"model": self.model.name, "device": self.device, **asdict(self.run), "seconds": t.seconds,
                "flops": t.flops, "bytes": t.bytes, "kernels": t.kernels, "utilization": t.utilization,
                "joules": t.joules}

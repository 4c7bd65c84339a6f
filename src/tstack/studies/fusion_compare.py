"""Fusion profiles side by side: one configuration analyzed under each profile, per 002 group and in total."""

from __future__ import annotations

from dataclasses import dataclass

from tstack.api import analyze
from tstack.breakdown import Breakdown
from tstack.costmodel.backend import Target
from tstack.costmodel.cost import Cost
from tstack.spec import ModelSpec, RunSpec
from tstack.workload.fusion import LABEL_JOIN

TOTAL = "total"


@dataclass(frozen=True)
class ProfileRow:
    """One profile's cost of one 002 group (or the whole iteration: group ``total``)."""

    profile: str
    group: str
    seconds: float
    kernels: int
    flops: float
    bytes: float
    speedup: float  # the first profile's seconds for the same group over this profile's (nan when absent there)

    def record(self) -> dict[str, object]:
        return {"profile": self.profile, "group": self.group, "seconds": self.seconds, "kernels": self.kernels,
                "flops": self.flops, "bytes": self.bytes, "speedup": self.speedup}


def compare(model: ModelSpec, run: RunSpec, target: Target, profiles: list[str]) -> tuple[list[ProfileRow],
                                                                                           list[Breakdown]]:
    """Rows per (profile, group) in the order of the first profile's groups, then each profile's total; the
    speed-up is against the first profile. A fused op spanning groups shows under its joined group name, and its
    speed-up is against the sum of those groups under the first profile."""
    runs = [analyze(model, run, target, fusion=p) for p in profiles]
    base = {**runs[0].group_by("group"), TOTAL: runs[0].total}
    rows = []
    for name, b in zip(profiles, runs):
        for group, c in {**b.group_by("group"), TOTAL: b.total}.items():
            parts = group.split(LABEL_JOIN)  # a fused op spanning groups compares with the groups it absorbed
            ref = base.get(group) if len(parts) == 1 or any(p not in base for p in parts) else Cost.total(
                base[p] for p in parts)
            speedup = ref.seconds / c.seconds if ref is not None and c.seconds else float("nan")
            rows.append(ProfileRow(name, group, c.seconds, c.kernels, c.flops, c.bytes, speedup))
    return rows, runs

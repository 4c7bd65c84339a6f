"""Fusion-aware scheduling of a matmul and the LayerNorm/Softmax that follows it (000 §III, Fig. 3).

non-fused: Gemmini's default greedy mapping; the matmul writes int32 results out, then the nonlinear op moves them
           back into the accumulator and runs on its own (nonlinear.standalone_cost). Latency = the sum.
fused:     the output tile spans whole rows (tile_I rows × the full J), so once a tile's last K step is done the
           normalization unit works on it while the mesh computes the next tile (double-buffered accumulator).
           For n tiles of matmul time g and unit time u the two-stage pipeline takes n·max(g, u) + min(g, u).
"""

from __future__ import annotations

from dataclasses import dataclass

from tstack.accel.mapping import Mapper, auto
from tstack.accel.nonlinear import standalone_cost, unit_cycles
from tstack.accel.timing import GemmShape, GemmTiming, Mapping
from tstack.errors import TstackError
from tstack.hardware.accel import AccelSpec
from tstack.workload.labels import ATTN_OUT_PROJ, ATTN_SCORE, FFN_FC2

SCHEDULES = ("non-fused", "fused")
# The pairs 000 §III studies: (matmul op name in the workload, nonlinear op that follows it).
PAIRS = ((ATTN_SCORE, "softmax"), (ATTN_OUT_PROJ, "layernorm"), (FFN_FC2, "layernorm"))


@dataclass(frozen=True)
class PairCost:
    """Latency of a matmul + nonlinear pair under one schedule, split into the matmul and the exposed nonlinear time."""

    schedule: str
    gemm_s: float
    nonlinear_s: float
    mapping: Mapping
    timing: GemmTiming

    @property
    def seconds(self) -> float:
        return self.gemm_s + self.nonlinear_s


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise TstackError(f"--schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")


def pair_cost(hw: AccelSpec, shape: GemmShape, name: str, schedule: str, mapper: Mapper = auto) -> PairCost:
    """The pair's latency; the nonlinear op works on rows of length J, I·batch rows in all."""
    check_schedule(schedule)
    rows, cols = shape.I * shape.batch, shape.J
    if schedule == "non-fused":
        m, t = mapper(hw, shape, False, 4)  # int32 results out, for the normalization unit to read back
        nl = standalone_cost(hw, name, rows, cols)
        return PairCost(schedule, hw.seconds(t.cycles), nl.seconds, m, t)
    m, t = mapper(hw, shape, True, 1)  # int8 leaves through the activation units
    units = unit_cycles(hw, name, rows, cols)
    n = t.i_tiles * shape.batch
    g, u = t.cycles / n, units / n
    total = n * max(g, u) + min(g, u)
    return PairCost(schedule, hw.seconds(t.cycles), hw.seconds(total - t.cycles), m, t)

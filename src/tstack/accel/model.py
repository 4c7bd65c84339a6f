"""A whole inference on the accelerator: the workload's ops (tstack.workload.build) → per-op records and totals.

The steps, one line each:
    ops         build(model, RunSpec(infer, int8)) with identical layers collapsed (count = layers)
    producers   each nonlinear op's preceding matmul (for GELU on the mvout path and fused pairs)
    cost        per op: GEMMs mapped and timed; nonlinear ops on the host or the I-BERT units; residual adds as
                accelerator resadds (two int8 tensors in, one out); embedding gathers as host copies
Categories follow 000 Fig. 2: matmul, softmax, layernorm, gelu, (de)quant, other.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from tstack.accel import nonlinear as nl
from tstack.accel.energy import Energy, gemm_energy, transfer_energy
from tstack.accel.fusion import PAIRS, check_schedule, pair_cost
from tstack.accel.hw import AccelSpec
from tstack.accel.mapping import Mapper, mapper
from tstack.accel.timing import GemmShape, GemmTiming, Mapping, transfer_cycles
from tstack.costmodel.cost import Cost
from tstack.errors import TstackError
from tstack.models import load_model
from tstack.spec import ModelSpec, RunSpec
from tstack.workload import Op, build

CATEGORIES = ("matmul", "softmax", "layernorm", "gelu", "(de)quant", "other")
NL_CATEGORY = {"softmax": "softmax", "layernorm": "layernorm", "bias-gelu": "gelu", "scale": "softmax", "mask": "softmax"}
RESADD = ("residual", "embedding-sum")


@dataclass(frozen=True)
class OpRecord:
    """One op's cost per instance (× count in totals): seconds by category, energy, MACs and the mapping used."""

    op: Op
    unit: str
    parts: tuple[tuple[str, float], ...]
    energy: Energy
    ideal_s: float = 0.0
    mapping: Mapping | None = None
    timing: GemmTiming | None = None

    @property
    def seconds(self) -> float:
        return sum(s for _, s in self.parts)

    @property
    def count(self) -> int:
        return self.op.count


@dataclass(frozen=True)
class Result:
    """Records of one (model, run, hardware, schedule) and the totals they add up to."""

    hw: AccelSpec
    schedule: str
    seq: int
    records: tuple[OpRecord, ...]

    @property
    def seconds(self) -> float:
        return sum(r.seconds * r.count for r in self.records)

    @property
    def energy(self) -> Energy:
        return sum((r.energy * r.count for r in self.records), Energy())

    @property
    def joules(self) -> float:
        return self.energy.total

    @property
    def edp(self) -> float:
        return self.joules * self.seconds

    @property
    def utilization(self) -> float:
        """MAC-unit utilization over the whole inference (000 §II-2: < 1% on the baseline)."""
        return sum(r.ideal_s * r.count for r in self.records) / self.seconds

    def by_category(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for r in self.records:
            for cat, s in r.parts:
                out[cat] += s * r.count
        return {c: out.get(c, 0.0) for c in CATEGORIES}

    def matmul_utilization(self) -> float:
        """Utilization of the matmuls alone, time-weighted (000 §II-2: 74%)."""
        gemms = [r for r in self.records if r.timing is not None]
        return sum(r.ideal_s * r.count for r in gemms) / sum(r.seconds * r.count for r in gemms)


def gemm_shape(op: Op) -> GemmShape:
    """Workload (M out features, N tokens, K) → Gemmini's C[I×J] = A[I×K]·B[K×J] with I = N tokens, J = M."""
    M, N, K, batch = op.gemm_shape
    return GemmShape(I=N, J=M, K=K, batch=batch)


def _gemm_record(hw: AccelSpec, op: Op, m: Mapping, t: GemmTiming, seconds: float | None = None) -> OpRecord:
    s = hw.seconds(t.cycles) if seconds is None else seconds
    return OpRecord(op, "mesh", (("matmul", s),), gemm_energy(hw, t), hw.seconds(t.ideal_cycles), m, t)


def _rows_cols(op: Op) -> tuple[int, int]:
    return op.dim("rows"), op.dim("cols")


def _producers(ops: tuple[Op, ...]) -> dict[int, int]:
    """Index of each op → index of the last GEMM before it (the matmul whose output it consumes)."""
    out, last = {}, -1
    for i, op in enumerate(ops):
        if op.kind in ("gemm", "bgemm"):
            last = i
        elif last >= 0:
            out[i] = last
    return out


def _nonlinear(hw: AccelSpec, op: Op, produced_by: GemmTiming | None) -> OpRecord:
    """A Softmax/LayerNorm/GELU (or scale, mask) on the host or the I-BERT units."""
    rows, cols = _rows_cols(op)
    cat = NL_CATEGORY[op.name]
    name = "gelu" if op.name == "bias-gelu" else op.name
    if hw.units.nonlinear == "host":
        c = nl.host_cost(hw, name, rows, cols)
        return OpRecord(op, "host", ((cat, c.seconds - c.quant_seconds), ("(de)quant", c.quant_seconds)), c.energy)
    if name in ("scale", "mask"):
        c = nl.folded_cost(hw, name, rows, cols)
        return OpRecord(op, "units", ((cat, 0.0),), c.energy)
    if name == "gelu" and produced_by is not None:  # applied by the activation units as fc1's output moves out
        units = nl.unit_cycles(hw, name, rows, cols)
        exposed = max(0.0, units - produced_by.store_cycles)
        return OpRecord(op, "units", ((cat, hw.seconds(exposed)),), nl.unit_energy(hw, name, rows, cols))
    c = nl.accel_cost(hw, name, rows, cols)
    return OpRecord(op, "units", ((cat, c.seconds),), c.energy)


def _other(hw: AccelSpec, op: Op) -> OpRecord:
    """Residual adds through the accumulator (mvin, mvin-accumulate, mvout); embedding gathers copied by the host."""
    rows, cols = _rows_cols(op)
    if op.name in RESADD:
        cycles = 3 * transfer_cycles(hw, rows, cols)
        energy = transfer_energy(hw, 3 * rows * cols, acc_bytes=12 * rows * cols)
        return OpRecord(op, "dma", (("other", hw.seconds(cycles)),), energy)
    if op.kind == "gather":
        nbytes = 2 * rows * cols  # int8 rows read from the table and written for the accelerator
        return OpRecord(op, "host", (("other", nbytes / hw.host.memory_bandwidth),), transfer_energy(hw, nbytes))
    raise TstackError(f"accelerator model has no cost for op {op.name!r} (kind {op.kind})")


def _fused_pairs(ops: tuple[Op, ...], producers: dict[int, int], schedule: str, hw: AccelSpec) -> dict[int, int]:
    """Nonlinear op index → matmul index of the 000 §III pairs that this schedule fuses (none when non-fused)."""
    if schedule == "non-fused":
        return {}
    if hw.units.nonlinear != "accelerator":
        raise TstackError(f"--schedule fused needs the nonlinear ops on the accelerator; {hw.name} runs them on the host")
    names = set(PAIRS)
    return {i: p for i, p in producers.items() if (ops[p].name, ops[i].name) in names}


def cost_ops(hw: AccelSpec, ops: tuple[Op, ...], schedule: str, map_gemm: Mapper) -> tuple[OpRecord, ...]:
    """One record per op, in workload order."""
    check_schedule(schedule)
    producers = _producers(ops)
    fused = _fused_pairs(ops, producers, schedule, hw)
    feeds_norm = {p for i, p in producers.items() if ops[i].name in ("softmax", "layernorm")}
    records: dict[int, OpRecord] = {}
    for i, op in enumerate(ops):
        if op.kind in ("gemm", "bgemm") and i not in fused.values():
            out_bytes = 4 if i in feeds_norm and hw.units.nonlinear == "accelerator" else 1
            m, t = map_gemm(hw, gemm_shape(op), False, out_bytes)
            records[i] = _gemm_record(hw, op, m, t)
    for i, p in fused.items():
        pc = pair_cost(hw, gemm_shape(ops[p]), ops[i].name, "fused", map_gemm)
        records[p] = _gemm_record(hw, ops[p], pc.mapping, pc.timing, pc.gemm_s)
        rows, cols = _rows_cols(ops[i])
        records[i] = OpRecord(ops[i], "units", ((ops[i].name, pc.nonlinear_s),), nl.unit_energy(hw, ops[i].name, rows, cols))
    for i, op in enumerate(ops):
        if i in records:
            continue
        if op.name in NL_CATEGORY:
            p = producers.get(i)
            records[i] = _nonlinear(hw, op, records[p].timing if p is not None and ops[p].name == "ffn.fc1" else None)
        else:
            records[i] = _other(hw, op)
    return tuple(records[i] for i in range(len(ops)))


def run(model: str | ModelSpec, seq: int, hw: AccelSpec, schedule: str = "non-fused", mapping: str = "auto",
        objective: str = "latency") -> Result:
    """Cost one int8 inference of ``model`` at sequence length ``seq`` on ``hw``."""
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    ops = build(spec, RunSpec(mode="infer", precision="int8", batch=1, seq=seq), collapse=True)
    return Result(hw, schedule, seq, cost_ops(hw, ops, schedule, mapper(mapping, objective)))


def accel_cost(op: Op, hw: AccelSpec) -> Cost:
    """The shared cost-model signature (op, hw) -> Cost of one op in isolation (non-fused, auto mapping), × its count."""
    rec = cost_ops(hw, (op,), "non-fused", mapper("auto"))[0]
    t = rec.timing
    if t is None:  # host or unit work: no mesh/DMA split
        one = Cost(seconds=rec.seconds, flops=op.flops, compute_s=rec.seconds, kernels=1)
    else:
        one = Cost(seconds=rec.seconds, flops=op.flops, bytes=t.load_bytes + t.store_bytes, compute_s=hw.seconds(t.mesh_cycles),
                   memory_s=hw.seconds(t.dma_cycles), overhead_s=hw.seconds(t.overhead_cycles), ideal_s=rec.ideal_s, kernels=1)
    return one * op.count

"""Systolic-array accelerator backend (a Gemmini-style tstack.hardware.accel.AccelSpec): (op, hw) -> Cost, and a workload.

The hardware pieces (mapping and timing of GEMMs, the nonlinear units, energy by component) are in tstack.accel;
this module costs a workload's ops with them, one line per step:
    producers   each nonlinear op's preceding matmul (for GELU on the mvout path and fused pairs)
    cost        per op: GEMMs mapped and timed; nonlinear ops on the host or the I-BERT units; residual adds as
                accelerator resadds (two int8 tensors in, one out); embedding gathers as host copies
    entries     one Breakdown entry per op, labelled ``accel`` with its 000 Fig. 2 category (matmul, softmax,
                layernorm, gelu, (de)quant, other); a host nonlinear op gets a second entry, ``<name>.(de)quant``
                (category "(de)quant", no FLOPs, bytes or kernel of its own), for the dequantize/requantize around it

Costs depend on neighbouring ops (a GELU applied while fc1's output moves out, a matmul that keeps int32 outputs for
the normalization that follows, fused pairs), so a workload is costed as a whole (``workload_entries``, which
tstack.costmodel.cost_workload uses); ``systolic(op, hw)`` costs one op alone (non-fused, auto mapping), the shared
(op, target) -> Cost signature. Costs carry ``joules``. Only int8 inference is modelled (int8 GEMMs, forward ops).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tstack.accel import nonlinear as nl
from tstack.accel.energy import ComponentEnergy, gemm_energy, transfer_energy
from tstack.accel.fusion import PAIRS, check_schedule, pair_cost
from tstack.accel.mapping import Infeasible, Mapper, mapper
from tstack.accel.timing import GemmShape, GemmTiming, Mapping, transfer_cycles
from tstack.costmodel.cost import Cost
from tstack.errors import SpecError, TstackError
from tstack.hardware.accel import AccelSpec
from tstack.workload.labels import FFN_FC1, FUSED_ATTENTION
from tstack.workload.op import Op, OpKind

ACCEL = "accel"  # the label key of an op's 000 Fig. 2 category
MATMUL, SOFTMAX, LAYERNORM, GELU, QUANT, OTHER = "matmul", "softmax", "layernorm", "gelu", "(de)quant", "other"
CATEGORIES = (MATMUL, SOFTMAX, LAYERNORM, GELU, QUANT, OTHER)
NL_CATEGORY = {"softmax": SOFTMAX, "layernorm": LAYERNORM, "bias-gelu": GELU, "scale": SOFTMAX, "mask": SOFTMAX}
RESADD = ("residual", "embedding-sum")
FC1 = FFN_FC1  # the matmul whose output the activation units turn into GELU on the way out
ANCHORS = ("softmax", "layernorm", "bias-gelu")  # the nonlinear op that runs a fused chain (workload.fusion)


@dataclass(frozen=True)
class Part:
    """A share of one op instance's time in one 000 category, with its energy by component."""

    category: str
    seconds: float
    energy: ComponentEnergy


@dataclass(frozen=True)
class AccelOp:
    """What the accelerator knows of one op instance beyond its Cost: the unit that runs it, its parts by category,
    and a GEMM's ideal time, mapping and timing (× ``count`` in totals)."""

    op: Op
    unit: str  # mesh | units | host | dma
    parts: tuple[Part, ...]
    ideal_s: float = 0.0
    mapping: Mapping | None = None
    timing: GemmTiming | None = None

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.parts)

    @property
    def energy(self) -> ComponentEnergy:
        return sum((p.energy for p in self.parts), ComponentEnergy())

    @property
    def count(self) -> int:
        return self.op.count


def gemm_shape(op: Op) -> GemmShape:
    """Workload (M out features, N tokens, K) → Gemmini's C[I×J] = A[I×K]·B[K×J] with I = N tokens, J = M."""
    M, N, K, batch = op.gemm_shape
    return GemmShape(I=N, J=M, K=K, batch=batch)


def _gemm(hw: AccelSpec, op: Op, m: Mapping, t: GemmTiming, seconds: float | None = None) -> AccelOp:
    s = hw.seconds(t.cycles) if seconds is None else seconds
    return AccelOp(op, "mesh", (Part(MATMUL, s, gemm_energy(hw, t)),), hw.seconds(t.ideal_cycles), m, t)


def _rows_cols(op: Op) -> tuple[int, int]:
    return op.dim("rows"), op.dim("cols")


def members(op: Op) -> tuple[str, ...]:
    """The kernel names a fused op (workload.fusion) absorbed, in order; an op that fused nothing: its own name."""
    absorbed = op.label("absorbed")
    return tuple(absorbed.split("+")) if op.label("fusion") != "-" and absorbed != "-" else (op.name,)


def nl_name(op: Op) -> str:
    """The nonlinear op that runs ``op``: its own name, or for a fused chain (e.g. residual+layernorm,
    scale+mask+softmax) the chain's softmax, LayerNorm or GELU, whose unit takes the other members into its pass."""
    names = members(op)
    if len(names) == 1 or op.is_gemm:
        return op.name
    anchors = [n for n in names if n in ANCHORS]
    return anchors[-1] if len(anchors) == 1 else op.name


def _chain(op: Op, anchor: str) -> tuple[str, ...]:
    """The members of a fused chain that its nonlinear op ``anchor`` (``nl_name(op)``) runs; () for any other op."""
    return members(op) if op.name != anchor else ()


def _producers(ops: tuple[Op, ...]) -> dict[int, int]:
    """Index of each op → index of the last GEMM before it (the matmul whose output it consumes)."""
    out, last = {}, -1
    for i, op in enumerate(ops):
        if op.is_gemm:
            last = i
        elif last >= 0:
            out[i] = last
    return out


def _nonlinear(hw: AccelSpec, op: Op, produced_by: GemmTiming | None) -> AccelOp:
    """A Softmax/LayerNorm/GELU (or scale, mask) on the host or the I-BERT units."""
    rows, cols = _rows_cols(op)
    anchor = nl_name(op)
    cat = NL_CATEGORY[anchor]
    name = "gelu" if anchor == "bias-gelu" else anchor
    chain = tuple("gelu" if n == "bias-gelu" else n for n in _chain(op, anchor))
    if hw.units.nonlinear == "host":
        c = nl.host_chain_cost(hw, chain, rows, cols) if chain else nl.host_cost(hw, name, rows, cols)
        return AccelOp(op, "host", (Part(cat, c.seconds - c.quant_seconds, c.op_energy),
                                    Part(QUANT, c.quant_seconds, c.quant_energy)))
    if name in ("scale", "mask"):
        c = nl.folded_cost(hw, name, rows, cols)
        return AccelOp(op, "units", (Part(cat, 0.0, c.energy),))
    if chain:  # scale and mask folded as alone; side inputs accumulated into the rows the units read
        c = nl.standalone_cost(hw, name, rows, cols, nl.side_count(chain))
        return AccelOp(op, "units", (Part(cat, c.seconds, c.energy + _folded(hw, chain, rows, cols)),))
    if name == "gelu" and produced_by is not None:  # applied by the activation units as fc1's output moves out
        units = nl.unit_cycles(hw, name, rows, cols)
        exposed = max(0.0, units - produced_by.store_cycles)
        return AccelOp(op, "units", (Part(cat, hw.seconds(exposed), nl.unit_energy(hw, name, rows, cols)),))
    c = nl.standalone_cost(hw, name, rows, cols)
    return AccelOp(op, "units", (Part(cat, c.seconds, c.energy),))


def _folded(hw: AccelSpec, chain: tuple[str, ...], rows: int, cols: int) -> ComponentEnergy:
    """Energy of the scale and mask a fused chain (its members, ``_chain``) took into its softmax on I-BERT units (as
    ``folded_cost`` alone)."""
    folded = [n for n in chain if n in ("scale", "mask")]
    return sum((nl.folded_cost(hw, n, rows, cols).energy for n in folded), ComponentEnergy())


def _other(hw: AccelSpec, op: Op) -> AccelOp:
    """Residual adds through the accumulator (mvin, mvin-accumulate, mvout); embedding gathers copied by the host."""
    rows, cols = _rows_cols(op)
    if op.name in RESADD:
        hit = 2 * rows * cols <= hw.l2.bytes  # both operands were just written: still in the L2 when they fit
        cycles = 2 * transfer_cycles(hw, rows, cols, hit) + transfer_cycles(hw, rows, cols, hit=True)
        energy = transfer_energy(hw, (0 if hit else 2 * rows * cols) + rows * cols, acc_bytes=12 * rows * cols,
                                 l2_bytes=3 * rows * cols)
        return AccelOp(op, "dma", (Part(OTHER, hw.seconds(cycles), energy),))
    if op.kind == OpKind.GATHER:
        nbytes = 2 * rows * cols  # int8 rows read from the table and written for the accelerator
        return AccelOp(op, "host", (Part(OTHER, nbytes / hw.host.memory_bandwidth, transfer_energy(hw, nbytes)),))
    raise TstackError(f"accelerator model has no cost for op {op.name!r} (kind {op.kind})")


def flash_attention(hw: AccelSpec, op: Op, map_gemm: Mapper) -> AccelOp:
    """A fused attention kernel (workload.fusion's flash rule: score B-GEMM, scale, mask, softmax, context B-GEMM).

    With I-BERT units it is 000 §III's fused QKᵀ + Softmax pair (``accel.fusion.pair_cost``: whole-row tiles, the
    normalization unit working on one row tile while the mesh computes the next, so the int32 scores never leave the
    accumulator), then the context GEMM reading the int8 probabilities; scale and mask fold into the softmax as they
    do unfused. When whole rows do not fit the accumulator the pair runs non-fused. With the nonlinear ops on the
    host the scores must leave the accelerator for the host's softmax loop, so the kernel runs as its parts at the
    unfused sequence's cost. FLOPs and bytes of the record stay the fused op's.
    """
    n_kv, n_q, d, batch = op.dim("M"), op.dim("N"), op.dim("K"), op.dim("batch")
    score, context = GemmShape(I=n_q, J=n_kv, K=d, batch=batch), GemmShape(I=n_q, J=d, K=n_kv, batch=batch)
    rows = n_q * batch
    cm, ct = map_gemm(hw, context, False, 1)
    if hw.units.nonlinear == "host":
        sm, st = map_gemm(hw, score, False, 1)
        c = nl.host_chain_cost(hw, ("scale", "mask", "softmax"), rows, n_kv)
        soft = (Part(SOFTMAX, c.seconds - c.quant_seconds, c.op_energy), Part(QUANT, c.quant_seconds, c.quant_energy))
        gemm_s = hw.seconds(st.cycles)
    else:
        try:
            pc = pair_cost(hw, score, "softmax", "fused", map_gemm)
            energy = nl.unit_energy(hw, "softmax", rows, n_kv)
        except Infeasible:
            pc = pair_cost(hw, score, "softmax", "non-fused", map_gemm)
            energy = nl.standalone_cost(hw, "softmax", rows, n_kv).energy
        sm, st, gemm_s = pc.mapping, pc.timing, pc.gemm_s
        soft = (Part(SOFTMAX, pc.nonlinear_s, energy + nl.folded_cost(hw, "mask", rows, n_kv).energy),)
    matmul = Part(MATMUL, gemm_s + hw.seconds(ct.cycles), gemm_energy(hw, st) + gemm_energy(hw, ct))
    return AccelOp(op, "mesh", (matmul, *soft), hw.seconds(st.ideal_cycles + ct.ideal_cycles), sm, st + ct)


def _fused_pairs(ops: tuple[Op, ...], producers: dict[int, int], schedule: str, hw: AccelSpec) -> dict[int, int]:
    """Nonlinear op index → matmul index of the 000 §III pairs that this schedule fuses (none when non-fused)."""
    if schedule == "non-fused":
        return {}
    if hw.units.nonlinear != "accelerator":
        raise TstackError(f"--schedule fused needs the nonlinear ops on the accelerator; {hw.name} runs them on the host")
    names = set(PAIRS)
    return {i: p for i, p in producers.items() if (ops[p].name, nl_name(ops[i])) in names}


def check_ops(hw: AccelSpec, ops: tuple[Op, ...]) -> None:
    """The accelerator runs int8 inference: int8 GEMMs, forward ops only."""
    for op in ops:
        if op.label("pass") not in ("fwd", "-"):
            raise SpecError([f"{hw.name} models inference only; op {op.name!r} is a {op.label('pass')} pass "
                             "(run with mode infer)"])
        if op.is_gemm and op.dtype != "int8":
            raise SpecError([f"{hw.name} computes int8 GEMMs; op {op.name!r} is {op.dtype} (run with precision int8)"])


def cost_ops(hw: AccelSpec, ops: tuple[Op, ...], schedule: str = "non-fused", map_gemm: Mapper | None = None,
             ) -> tuple[AccelOp, ...]:
    """One AccelOp per op, in workload order."""
    check_schedule(schedule)
    check_ops(hw, ops)
    map_gemm = map_gemm or mapper("auto")
    producers = _producers(ops)
    fused = _fused_pairs(ops, producers, schedule, hw)
    feeds_norm = {p for i, p in producers.items() if nl_name(ops[i]) in ("softmax", "layernorm")}
    out: dict[int, AccelOp] = {i: flash_attention(hw, op, map_gemm) for i, op in enumerate(ops)
                               if op.label("fusion") == FUSED_ATTENTION}
    for i, op in enumerate(ops):
        if op.is_gemm and i not in fused.values() and i not in out:
            out_bytes = 4 if i in feeds_norm and hw.units.nonlinear == "accelerator" else 1
            m, t = map_gemm(hw, gemm_shape(op), False, out_bytes)
            out[i] = _gemm(hw, op, m, t)
    for i, p in fused.items():
        name = nl_name(ops[i])
        chain = _chain(ops[i], name)
        side = nl.side_count(chain)
        pc = pair_cost(hw, gemm_shape(ops[p]), name, "fused", map_gemm)
        out[p] = _gemm(hw, ops[p], pc.mapping, pc.timing, pc.gemm_s)
        rows, cols = _rows_cols(ops[i])
        side_cycles, side_dram = nl.side_input_cost(hw, side, rows, cols)  # a fused chain's side inputs, as alone
        energy = nl.unit_energy(hw, name, rows, cols) + _folded(hw, chain, rows, cols) + transfer_energy(
            hw, side_dram, acc_bytes=4 * side * rows * cols, l2_bytes=side * rows * cols)
        out[i] = AccelOp(ops[i], "units", (Part(NL_CATEGORY[name], pc.nonlinear_s + hw.seconds(side_cycles), energy),))
    for i, op in enumerate(ops):
        if i in out:
            continue
        if nl_name(op) in NL_CATEGORY:
            p = producers.get(i)
            out[i] = _nonlinear(hw, op, out[p].timing if p is not None and ops[p].name == FC1 else None)
        else:
            out[i] = _other(hw, op)
    return tuple(out[i] for i in range(len(ops)))


def entries(hw: AccelSpec, records: tuple[AccelOp, ...]) -> tuple[tuple[Op, ...], tuple[Cost, ...]]:
    """The Breakdown entries of costed ops: one per part, labelled with its category; Costs × count, with joules."""
    ops: list[Op] = []
    costs: list[Cost] = []
    for r in records:
        op, t = r.op, r.timing
        for j, part in enumerate(r.parts):
            if j and not part.seconds:
                continue  # no (de)quantization to show (host scale and mask work inside the softmax loop)
            s, joules = part.seconds, part.energy.total
            if j:  # the (de)quantization around a host op: the op's entry holds its FLOPs, bytes and kernel
                ops.append(replace(op, kind=OpKind.ELEMENTWISE, name=f"{op.name}.{part.category}", flops=0,
                                   bytes=0).relabel(**{ACCEL: part.category}))
                costs.append(Cost(seconds=s, compute_s=s, joules=joules) * op.count)
                continue
            ops.append(op.relabel(**{ACCEL: part.category}))
            if t is not None:
                one = Cost(seconds=s, flops=op.flops, bytes=t.load_bytes + t.store_bytes,
                           compute_s=hw.seconds(t.mesh_cycles), memory_s=hw.seconds(t.dma_cycles),
                           overhead_s=hw.seconds(t.overhead_cycles), ideal_s=r.ideal_s, kernels=1, joules=joules)
            elif r.unit == "dma" or op.kind == OpKind.GATHER:
                one = Cost(seconds=s, flops=op.flops, bytes=op.bytes, memory_s=s, kernels=1, joules=joules)
            else:
                one = Cost(seconds=s, flops=op.flops, bytes=op.bytes, compute_s=s, kernels=1, joules=joules)
            costs.append(one * op.count)
    return tuple(ops), tuple(costs)


def workload_entries(ops: tuple[Op, ...], hw: AccelSpec) -> tuple[tuple[Op, ...], tuple[Cost, ...]]:
    """A workload costed as a whole (non-fused, Gemmini's auto mapping): the Breakdown entries."""
    return entries(hw, cost_ops(hw, tuple(ops)))


def systolic(op: Op, hw: AccelSpec) -> Cost:
    """Cost of all ``op.count`` instances of one op alone (non-fused, auto mapping, no neighbour), with joules."""
    return Cost.total(workload_entries((op,), hw)[1])

"""Softmax, LayerNorm and GELU: in fp32 on the host (baseline) or in integer on I-BERT's units (000 §II-2, §II-4).

Host (000 §II-2): the int8 matmul output is read from the shared L2/DRAM, dequantized (convert, scale), the op runs in
fp32, the result is requantized (scale, round, clamp to int8) and written back for the accelerator to move in again.
Time = busy cycles / host clock + bytes / host memory bandwidth (an in-order core stalls on its misses).

I-BERT units (000 §II-4): the int32 matmul results sit in the accumulator; the normalization unit makes the op's
reduction passes (sum, sum of squares, max, sum of exp) reading one accumulator row of DIM values per cycle, then a
final read feeds the activation units (one element per unit per cycle, pipelined). Per-row scalar work (the softmax
divide, the integer square root of LayerNorm) runs on the unit's divider. A whole row must sit in the accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass

from tstack.accel.energy import ComponentEnergy, acc_byte, int_ops_energy, transfer_energy
from tstack.accel.mapping import Infeasible
from tstack.accel.timing import transfer_cycles
from tstack.errors import TstackError
from tstack.hardware.accel import AccelSpec, Host
from tstack.integer.costs import IntCounts, int_op_cost


@dataclass(frozen=True)
class HostWork:
    """fp32 host work of one op: simple ops (loads, stores included) and libm calls per element; divides and calls per row."""

    ops: int
    transcendental: int
    row_divides: int = 0
    row_transcendental: int = 0
    traffic: bool = True  # False: fused into the softmax loop that already holds the row (scale, mask)


# Counts follow the textbook fp32 kernels: softmax = max pass, exp-and-sum pass, normalize pass (3 loads, 2 stores);
# LayerNorm = mean pass, variance pass, normalize-scale-shift pass (x three times, gamma, beta, one store).
HOST_WORK = {
    "softmax": HostWork(ops=4 + 5, transcendental=1, row_divides=1),  # max, sub, add, mul + 5 loads/stores; expf
    "layernorm": HostWork(ops=7 + 6, transcendental=0, row_divides=2, row_transcendental=1),  # mean, var; sqrtf per row
    "gelu": HostWork(ops=5 + 3, transcendental=1),  # bias, x/sqrt2, 1+erf, 0.5x, product + 3 loads/stores; erff
    "scale": HostWork(ops=1, transcendental=0, traffic=False),
    "mask": HostWork(ops=2, transcendental=0, traffic=False),  # load the mask value, add
}
DEQUANT_OPS = 2  # int8 -> fp32 convert, multiply by the scale
REQUANT_OPS = 4  # multiply by 1/scale, round-convert, clamp low, clamp high
INT_KERNEL = {"softmax": "softmax", "layernorm": "layernorm", "gelu": "gelu"}


@dataclass(frozen=True)
class NlCost:
    """Seconds of one nonlinear op, the (de)quantization share of them, the accelerator-side unit cycles, and energy.

    ``op_energy`` is the op's own energy and ``quant_energy`` that of the (de)quantization around it (host only).
    """

    seconds: float
    quant_seconds: float
    op_energy: ComponentEnergy
    unit_cycles: float = 0.0
    quant_energy: ComponentEnergy = ComponentEnergy()

    @property
    def energy(self) -> ComponentEnergy:
        return self.op_energy + self.quant_energy


def _host_compute(h: Host, works: list[HostWork], rows: int, n: int) -> float:
    """Host busy cycles of ``works`` over ``rows`` rows of ``n`` elements in all."""
    compute = n * sum(w.ops * h.op_cycles + w.transcendental * h.transcendental_cycles for w in works)
    return compute + rows * sum(w.row_divides * h.divide_cycles + w.row_transcendental * h.transcendental_cycles
                                for w in works)


def host_cost(hw: AccelSpec, name: str, rows: int, cols: int) -> NlCost:
    """The op in fp32 on the host: one that moves data (softmax, LayerNorm, GELU) as the one-op ``host_chain_cost``,
    with dequantize before and requantize after; scale and mask as their work alone, inside the loop holding the row."""
    if name not in HOST_WORK:
        raise TstackError(f"host nonlinear op {name!r} unknown; known: {', '.join(sorted(HOST_WORK))}")
    w, h = HOST_WORK[name], hw.host
    if w.traffic:
        return host_chain_cost(hw, (name,), rows, cols)
    compute = _host_compute(h, [w], rows, rows * cols)
    return NlCost(compute / h.clock_hz, 0.0, ComponentEnergy(host=compute * hw.energy.host_instruction))


def _check_row(hw: AccelSpec, name: str, cols: int) -> int:
    """Accumulator rows one DIM-row block of the op needs; Infeasible when a whole row cannot sit in the accumulator."""
    D = hw.dim
    need = -(-cols // D) * D
    if need > hw.acc_rows:
        raise Infeasible(f"{name} over rows of {cols} int32 values needs {need} accumulator rows per {D}-row block; "
                         f"{hw.name} has {hw.acc_rows}")
    return need


def unit_cycles(hw: AccelSpec, name: str, rows: int, cols: int) -> float:
    """Cycles of the normalization unit and activation units on rows already in the accumulator."""
    if hw.units.nonlinear != "accelerator":
        raise TstackError(f"{hw.name} has no integer nonlinear units (units.nonlinear = {hw.units.nonlinear})")
    c = int_op_cost(INT_KERNEL[name])
    if c.passes > 1:  # a reduction needs the whole row in the accumulator; GELU is element-wise
        _check_row(hw, name, cols)
    row_reads = rows * -(-cols // hw.dim)  # one accumulator row of DIM values per cycle
    final = rows * max(-(-cols // hw.dim), cols / hw.units.activation_units)
    p = c.per_row
    per_row = p.div * hw.units.divide_cycles + p.mul + p.add + p.shift + p.cmp
    return (c.passes - 1) * row_reads + final + rows * per_row


def unit_energy(hw: AccelSpec, name: str, rows: int, cols: int) -> ComponentEnergy:
    """Integer ops of the I-BERT kernel plus one int32 accumulator read per element and pass."""
    c = int_op_cost(INT_KERNEL[name])
    counts: IntCounts = c.counts(rows, cols)
    return ComponentEnergy(units=int_ops_energy(hw, counts), accumulator=4 * rows * cols * c.passes * acc_byte(hw))


def side_input_cost(hw: AccelSpec, side: int, rows: int, cols: int) -> tuple[float, int]:
    """(DMA cycles, DRAM bytes) of ``side`` int8 rows×cols tensors mvin-accumulated into the rows of a nonlinear op:
    one transfer each, read from the L2 when they fit together with the op's input (the rule the stand-alone resadd
    uses), else from DRAM."""
    hit = (1 + side) * rows * cols <= hw.l2.bytes
    return side * transfer_cycles(hw, rows, cols, hit), 0 if hit else side * rows * cols


def standalone_cost(hw: AccelSpec, name: str, rows: int, cols: int, side_inputs: int = 0) -> NlCost:
    """A stand-alone (non-fused) op on I-BERT units: int32 rows moved into the accumulator, processed, int8 moved out.

    ``side_inputs``: int8 tensors of the same shape added into the accumulator rows before the op (mvin with
    accumulate), as a fused residual + LayerNorm does with the skip operand (``side_input_cost``)."""
    units = unit_cycles(hw, name, rows, cols)
    need = -(-cols // hw.dim) * hw.dim if int_op_cost(INT_KERNEL[name]).passes > 1 else hw.dim
    hit = 4 * rows * cols <= hw.l2.bytes  # the int32 results the matmul just wrote are still in the L2
    side_cycles, side_dram = side_input_cost(hw, side_inputs, rows, cols)
    dma = transfer_cycles(hw, rows, 4 * cols, hit) + transfer_cycles(hw, rows, cols, hit=True)
    dma += side_cycles
    blocks = -(-rows // hw.dim)
    if 2 * need <= hw.acc_rows and blocks > 1:  # two row blocks fit: moving one overlaps processing the other
        cycles = max(units, dma) + min(units, dma) / blocks
    else:
        cycles = units + dma
    dram = (0 if hit else 4 * rows * cols) + rows * cols  # the int8 output is written back once
    dram += side_dram
    n = rows * cols  # a side input accumulates into int32 rows: 4 accumulator bytes per element, as a resadd's
    energy = unit_energy(hw, name, rows, cols) + transfer_energy(hw, dram, acc_bytes=(5 + 4 * side_inputs) * n,
                                                                 l2_bytes=(5 + side_inputs) * n)
    return NlCost(hw.seconds(cycles), 0.0, energy, units)


def folded_cost(hw: AccelSpec, name: str, rows: int, cols: int) -> NlCost:
    """Attention scale and mask with I-BERT: scale folded into the requantization factor, mask an add in the exp pass."""
    adds = rows * cols if name == "mask" else 0
    return NlCost(0.0, 0.0, ComponentEnergy(units=adds * hw.energy.int_add))


# Element-wise kernels a fused chain folds into the loop of its nonlinear op on the host: the int8 tensors each adds
# to the row being processed (a residual's skip operand; the position and token-type embeddings added to the word
# embeddings), each read once, dequantized, and added (a load and an add per element).
SIDE_INPUTS = {"residual": 1, "embedding-sum": 2}
SIDE_OPS = 2  # load, add


def side_count(names: tuple[str, ...]) -> int:
    """The side inputs (SIDE_INPUTS) that the members ``names`` of a fused chain add to its nonlinear op's rows."""
    return sum(SIDE_INPUTS.get(n, 0) for n in names)


def host_chain_cost(hw: AccelSpec, names: tuple[str, ...], rows: int, cols: int) -> NlCost:
    """A fused chain (workload.fusion) in one fp32 host loop: the nonlinear op's work and that of the members the
    host folds in (scale, mask: as in ``host_cost``; side inputs: SIDE_INPUTS), one dequantized int8 input plus the
    side inputs read and one requantized int8 output written: (2 + side inputs) bytes per element."""
    side = side_count(names)
    unknown = [n for n in names if n not in HOST_WORK and n not in SIDE_INPUTS]
    if unknown or not any(HOST_WORK[n].traffic for n in names if n in HOST_WORK):
        raise TstackError(f"host has no fused loop for {'+'.join(names)}: needs one of softmax, layernorm, gelu and "
                          f"otherwise only {', '.join(sorted({*HOST_WORK, *SIDE_INPUTS} - set(INT_KERNEL)))}")
    h, n = hw.host, rows * cols
    compute = _host_compute(h, [HOST_WORK[m] for m in names if m in HOST_WORK], rows, n)
    compute += n * side * (SIDE_OPS + DEQUANT_OPS) * h.op_cycles
    quant = n * (DEQUANT_OPS + REQUANT_OPS) * h.op_cycles
    nbytes = (2 + side) * n
    e = hw.energy.host_instruction
    op_energy = ComponentEnergy(host=compute * e) + transfer_energy(hw, nbytes)
    return NlCost((compute + quant) / h.clock_hz + nbytes / h.memory_bandwidth, quant / h.clock_hz, op_energy,
                  quant_energy=ComponentEnergy(host=quant * e))

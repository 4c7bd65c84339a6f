"""Near-memory compute (NMC): element-wise kernels run by ALUs at the DRAM banks, timed from the DRAM's timing.

The model (002 §6.2.1; Samsung HBM-PIM): the host broadcasts each command to all banks, so every bank opens the
same row and streams the same columns in lock step, and the ALU next to it computes on the data it reads. A
kernel's operands are placed so that each ALU's share of every tensor is in its own bank(s) (002's assumption).

Per bank, one **stream** (a tensor read or written) costs, per opened row of ``c`` column accesses:
    read:  max(tRAS, tRCD_RD + c·tCCD_L) + tRP
    write: max(tRAS, tRCD_WR + (c − 1)·tCCD_L + WL + BL/2 + tWR) + tRP
A kernel with one stream opens each row once (c = the row's columns). A kernel with several streams alternates
between rows of the same bank: the ALU holds ``registers`` column-wide entries per operand, so each stream is
opened once per chunk of ``registers`` columns. An ALU shared by k banks overlaps their row opening but issues
their column accesses one after another (k·columns·tCCD_L at least). The ALU executes one SIMD instruction per
column-command slot (tCCD_L), a fused multiply-add per lane (2 FLOPs, the convention of workload.op), on
``simd_bits / element bits`` lanes; compute and memory overlap: the slower one sets the time. Refresh stretches
everything by tREFI / (tREFI − tRFC). Seconds = cycles × tCK. Launch and command-bus costs of the host are not
modelled (commands are broadcast; one sequence serves all banks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tstack.costmodel.cost import Cost
from tstack.hardware.device import DeviceSpec
from tstack.hardware.memory import MemorySpec
from tstack.workload import formulas as F
from tstack.workload.op import DTYPE_BYTES, Op, OpKind

FP32 = 4


@dataclass(frozen=True, slots=True)
class Stream:
    width: int  # bytes per element
    write: bool = False


@dataclass(frozen=True, slots=True)
class Work:
    """What the ALUs do for one kernel instance: ``elements`` per stream, the streams, FLOPs per element, and
    whether it reduces (partial sums per ALU, combined by the host)."""

    elements: int
    streams: tuple[Stream, ...]
    flops_per_element: int
    reduction: bool = False


def open_cycles(mem: MemorySpec, columns: int, write: bool) -> int:
    """Cycles from activating a row to the bank being ready again after reading or writing ``columns`` columns."""
    t = mem.t
    if write:
        busy = t("tRCD_WR") + (columns - 1) * t("tCCD_L") + t("WL") + t("BL") // 2 + t("tWR")
    else:
        busy = t("tRCD_RD") + columns * t("tCCD_L")
    return max(t("tRAS"), busy) + t("tRP")


def _stream_cycles(mem: MemorySpec, columns: int, write: bool, per_open: int) -> int:
    full, rest = divmod(columns, per_open)
    return full * open_cycles(mem, per_open, write) + (open_cycles(mem, rest, write) if rest else 0)


def memory_cycles(mem: MemorySpec, work: Work) -> int:
    """Cycles one ALU spends on its banks' share of the streams (every ALU works in parallel)."""
    a = mem.access_bytes
    per_bank = math.ceil(work.elements / mem.banks)
    if len(work.streams) == 1:
        s = work.streams[0]
        columns = math.ceil(per_bank * s.width / a)
        bank = _stream_cycles(mem, columns, s.write, mem.columns_per_row)
        column_slots = columns
    else:
        chunk = mem.alu["registers"] * a // max(s.width for s in work.streams)  # elements per chunk
        full, rest = divmod(per_bank, chunk)
        bank = 0
        column_slots = 0
        for s in work.streams:
            per_chunk = math.ceil(chunk * s.width / a)  # the last chunk's columns are at most per_chunk
            columns = full * per_chunk + math.ceil(rest * s.width / a)
            bank += _stream_cycles(mem, columns, s.write, per_chunk)
            column_slots += columns
    return max(bank, mem.alu["banks_per_alu"] * column_slots * mem.t("tCCD_L"))


def compute_cycles(mem: MemorySpec, work: Work) -> int:
    """One instruction per tCCD_L; an instruction does one multiply-add (2 FLOPs) on each lane."""
    width = max(s.width for s in work.streams)
    lanes = mem.alu["simd_bits"] // (8 * width)
    per_alu = math.ceil(work.elements / mem.alus)
    return math.ceil(per_alu / lanes) * math.ceil(work.flops_per_element / 2) * mem.t("tCCD_L")


def nmc_seconds(mem: MemorySpec, work: Work) -> tuple[float, float]:
    """(seconds, memory-bound seconds) of one kernel instance on the near-memory ALUs."""
    m, c = memory_cycles(mem, work), compute_cycles(mem, work)
    scale = mem.refresh_factor * mem.tck_seconds
    return max(m, c) * scale, m * scale


def work_of(op: Op, elementwise: bool = False) -> Work | None:
    """The ALUs' work for an optimizer kernel (and, with ``elementwise``, an element-wise activation kernel);
    None for a kernel the ALUs do not run (GEMMs, row reductions whose rows span banks, gathers)."""
    if op.label("part") == "optimizer":
        p = op.dim("params")
        for stages in F.OPTIMIZER_STAGES.values():
            for name, cost in stages:
                if op.name == name:
                    return Work(p, (Stream(FP32),) * cost.reads + (Stream(FP32, True),) * cost.writes, cost.flops)
        half = DTYPE_BYTES[op.dtype]
        if op.name == "grad-to-master":  # read the half-precision gradient, unscale, write fp32
            return Work(p, (Stream(half), Stream(FP32, True)), 1)
        if op.name == "master-to-model":
            return Work(p, (Stream(FP32), Stream(half, True)), 0)
        if op.name == "lamb-norms":  # ‖w‖² and ‖u‖² partial sums: read w and u, square and add each
            return Work(p, (Stream(FP32), Stream(FP32)), 4, reduction=True)
        if op.name == "lamb-global-norm":  # Σ g² partial sums
            return Work(p, (Stream(FP32),), 2, reduction=True)
        return None
    if elementwise and op.kind == OpKind.ELEMENTWISE and op.name in F.KERNELS and op.dim("rows"):
        k = F.kernel(op.name)
        w = DTYPE_BYTES[op.dtype]
        streams = (Stream(w),) * k.reads + (Stream(w, True),) * k.writes + ((Stream(1, True),) if k.mask_bytes else ())
        return Work(op.dim("rows") * op.dim("cols"), streams, k.flops)
    return None


def nmc(op: Op, mem: MemorySpec) -> Cost:
    """Cost of all ``op.count`` instances on the near-memory ALUs (a backend of the (op, target) shape)."""
    work = work_of(op, elementwise=True)
    if work is None:
        raise ValueError(f"op {op.name!r} ({op.kind}) does not run on near-memory ALUs")
    seconds, memory_s = nmc_seconds(mem, work)
    n = op.count
    return Cost(seconds=n * seconds, flops=n * op.flops, bytes=n * op.bytes, compute_s=n * (seconds - memory_s),
                memory_s=n * memory_s, kernels=n)


def combine_op(op: Op, mem: MemorySpec) -> Op:
    """The host's part of an offloaded reduction: read one fp32 partial sum per ALU and add them."""
    return Op(kind=OpKind.REDUCTION, name=f"{op.name}.combine", dims=(("params", mem.alus),), dtype="fp32",
              flops=mem.alus, bytes=FP32 * mem.alus, labels=op.labels, count=op.count)


def optimistic_gpu(op: Op, dev: DeviceSpec) -> float:
    """002's optimistic GPU model: the kernel only reads and writes its data once, at the peak bandwidth."""
    return op.count * op.bytes / dev.memory_bandwidth

"""An HLS-style FPGA accelerator for the NLP-Fast design (003 §V-B, Fig. 9): operations, lanes, AXI prefetch, stalls.

The design has three execution units, the query generator (Q-Gen), multi-head self-attention (K/V-Gen, dot product,
softmax, weighted sum, attention FC) and feed-forward (linear trans-1, activation, linear trans-2, layernorm and
residual), and runs the 003 Table II operations of one layer in order, layer after layer. Each operation ``i`` has
``n_i`` lanes; a lane is a chain of pipelined fp32 cores (``LANES``) that takes one element of work per cycle, so

    compute_i = (ceil(work_i / n_i) + depth_i) / clock                      (work over parallelism, plus the fill)

While operation ``i`` computes, its outputs are written back and the next operation's weights and inputs are prefetched
over AXI into BRAM; ``memory_i = (write_i + prefetch_{i+1}) / bandwidth``. When that takes longer than the compute,
the operation stalls: ``stall_i = max(0, memory_i - compute_i)``. An intermediate the previous operation spilled to
DRAM (its working set does not stay on chip) cannot be prefetched while it is being produced: it is read after that
operation ends (``spill_i``, exposed). Model partitioning keeps intermediates on chip (003 Table III): partial-head
update (P) keeps Q, K, V and A, the column-based algorithm (C) the scores S and probabilities P, feed-forward
splitting (F) T1 and T2. An operation is prefetched only where its Table III working set fits the part's BRAM +
UltraRAM twice; otherwise its inputs are read exposed too (003 §VI-D: partitioning "enabling data prefetching").
Zero skipping (ZS) removes softmax and weighted-sum work at the score skip rate and V-Gen work at the V-Gen skip
rate. A memory network (003 Fig. 2a) has its own four operations per hop. docs/fpga.md derives every figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tstack.errors import SpecError
from tstack.hardware.fpga import BRAM36_BITS, RESOURCES, URAM_BITS, FpgaSpec
from tstack.spec import ModelSpec

FP32_BYTES = 4


@dataclass(frozen=True)
class Core:
    """One pipelined single-precision floating-point core as Vivado HLS instantiates it: resources and stages."""

    lut: int
    ff: int
    dsp: int
    stages: int


# Single-precision cores as Vivado HLS instantiates them by default (the Xilinx Floating-Point Operator, PG060, for
# fmul max_dsp, fadd full_dsp, fdiv and fsqrt in fabric; fexp from the HLS math library, which 003 §V-B says it used).
# Provenance: LUT/FF/DSP and stages are the figures of the "Instance" utilization lines of Vivado HLS synthesis
# reports for these cores at a 100 MHz target (fmul_32ns_32ns_32_4_max_dsp: 3 DSP, 143 FF, 321 LUT;
# fadd_32ns_32ns_32_5_full_dsp: 2, 205, 390; fdiv_32ns_32ns_32_16_no_dsp: 0, 761, 994; fsqrt_32ns_32ns_32_16_no_dsp:
# 0, 458, 562), as recalled; they are the commonly quoted 7-series numbers, not checked against PG060's resource
# tables (which Xilinx publishes on a separate "Performance and Resource Utilization" page) or an UltraScale+ run in
# this session (no network). fexp (7 DSP, 277 FF, 935 LUT, 10 stages) and fcmp (72 LUT, 66 FF, 1 stage) are
# estimates without a checkable source. docs/fpga.md has the table and what the allocation is sensitive to.
CORES = {
    "fmul": Core(lut=321, ff=143, dsp=3, stages=4),
    "fadd": Core(lut=390, ff=205, dsp=2, stages=5),
    "fexp": Core(lut=935, ff=277, dsp=7, stages=10),
    "fdiv": Core(lut=994, ff=761, dsp=0, stages=16),
    "fsqrt": Core(lut=562, ff=458, dsp=0, stages=16),
    "fcmp": Core(lut=72, ff=66, dsp=0, stages=1),
}

# A lane: the cores it chains (name -> count) and BRAM36 blocks for its operand buffers (one BRAM18 per operand stream
# the lane reads every cycle, after HLS array partitioning).
LANES: dict[str, tuple[dict[str, int], float]] = {
    "mac": ({"fmul": 1, "fadd": 1}, 1.0),  # a × b + acc: two operand streams
    "softmax": ({"fcmp": 1, "fadd": 2, "fexp": 1, "fdiv": 1}, 0.5),  # max, s - max, exp, running sum, divide
    "gelu": ({"fmul": 6, "fadd": 4, "fexp": 1, "fdiv": 1}, 0.5),  # 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))), tanh by exp
    "relu": ({"fcmp": 1}, 0.5),
    "layernorm": ({"fmul": 3, "fadd": 4, "fsqrt": 1, "fdiv": 1}, 1.0),  # residual, mean, variance, (x-μ)·rstd·γ+β
}

FLAGS = ("P", "C", "F", "ZS")
ALIASES = {"base": (), "MP": ("P", "C", "F")}
UNITS = ("query generator", "multi-head self-attention", "feed-forward")


def lane_cost(lane: str) -> tuple[dict[str, float], int]:
    """Resources of one lane (RESOURCES keys) and its pipeline depth (the stages of its cores in a chain)."""
    cores, bram = LANES[lane]
    res = {"lut": 0.0, "ff": 0.0, "dsp": 0.0, "bram": bram}
    depth = 0
    for name, count in cores.items():
        c = CORES[name]
        res["lut"] += count * c.lut
        res["ff"] += count * c.ff
        res["dsp"] += count * c.dsp
        depth += count * c.stages
    return res, depth


@dataclass(frozen=True)
class Variant:
    """Which of NLP-Fast's optimizations the design applies."""

    flags: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        if not self.flags:
            return "base"
        parts = ["MP"] if {"P", "C", "F"} <= self.flags else [f for f in ("P", "C", "F") if f in self.flags]
        return "+".join(parts + (["ZS"] if "ZS" in self.flags else []))

    def __contains__(self, flag: str) -> bool:
        return flag in self.flags


def parse_variant(text: str) -> Variant:
    """'base', 'P+C', 'MP' (= P+C+F), 'MP+ZS', 'F', ... -> Variant."""
    flags: set[str] = set()
    for token in text.split("+"):
        token = token.strip()
        if token in ALIASES:
            flags.update(ALIASES[token])
        elif token in FLAGS:
            flags.add(token)
        else:
            allowed = ", ".join([*ALIASES, *FLAGS])
            raise SpecError([f"--variants entry {text[:40]!r}: {token[:20]!r} is not one of {allowed} (join with '+')"])
    return Variant(frozenset(flags))


@dataclass(frozen=True)
class Skip:
    """Zero-skipping rates: the share of softmax and weighted-sum work skipped, and of V rows not generated.

    The defaults are what tstack measured on MiniLM (docs/zeroskip.md, "Accuracy against skipped work"): per-element
    skipping at score threshold 1e-4, the last threshold that keeps the embedding cosine ≥ 0.9999, drops 21.7% of the
    probabilities on 13 documents at 512 tokens, and no V row was skippable at zero ratio 0.99 (0.0%). 003 reports
    73.9% and 57.0% on BERT-large with SQuAD (§III-C); `--skip-rate 0.739 --vgen-skip 0.57` runs with those.
    """

    score: float = 0.217
    vgen: float = 0.0

    def __post_init__(self) -> None:
        problems = [f"{name}={v!r} must be a number in [0, 1)" for name, v in (("--skip-rate", self.score),
                                                                             ("--vgen-skip", self.vgen))
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0]
        if problems:
            raise SpecError(problems)


@dataclass(frozen=True)
class OpTable:
    """The operations of one layer as arrays (one entry per operation), the part they run on, and the layer count.

    ``work``: lane cycles of work per layer; ``prefetch_bytes``: weights and inputs fetched while the previous
    operation computes; ``spill_bytes``: intermediates and unbuffered inputs read after the previous operation ends
    (exposed); ``write_bytes``: outputs written while the operation computes; ``stream_bytes``: inputs streamed in
    double-buffered tiles while the operation computes (None: none); ``cost``: resources per lane (k × len(RESOURCES)); ``depth``:
    pipeline stages; ``budget``: what the lanes may use (the part's resources less the on-chip intermediates).
    """

    names: tuple[str, ...]
    units: tuple[str, ...]
    lane_kinds: tuple[str, ...]
    work: np.ndarray
    depth: np.ndarray
    prefetch_bytes: np.ndarray
    spill_bytes: np.ndarray
    write_bytes: np.ndarray
    cost: np.ndarray
    budget: np.ndarray
    clock_hz: float
    bytes_per_s: float
    layers: int = 1
    label: str = ""
    stream_bytes: np.ndarray | None = None

    @property
    def streamed(self) -> np.ndarray:
        """Per operation: bytes it streams in double-buffered tiles while it computes (zeros where none)."""
        return np.zeros(self.k) if self.stream_bytes is None else self.stream_bytes

    @property
    def k(self) -> int:
        return len(self.names)

    @property
    def memory_s(self) -> np.ndarray:
        """Per operation: the AXI time of its write-back, its own streamed tiles and the next operation's prefetch,
        overlapped with its compute."""
        return (self.write_bytes + self.streamed + np.roll(self.prefetch_bytes, -1)) / self.bytes_per_s

    @property
    def dram_bytes(self) -> float:
        """DRAM bytes of one layer: prefetches, streamed tiles, exposed reads and write-backs."""
        return float(self.prefetch_bytes.sum() + self.streamed.sum() + self.spill_bytes.sum() + self.write_bytes.sum())

    @property
    def spill_s(self) -> np.ndarray:
        return self.spill_bytes / self.bytes_per_s

    def compute_s(self, n: np.ndarray) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        return (np.ceil(self.work / n) + self.depth) / self.clock_hz

    def usage(self, n: np.ndarray) -> np.ndarray:
        """Resources used by ``n`` lanes per operation (len(RESOURCES))."""
        return np.asarray(n, dtype=float) @ self.cost

    def fits(self, n: np.ndarray) -> bool:
        return bool(np.all(self.usage(n) <= self.budget + 1e-9))

    def timing(self, n: np.ndarray) -> Timing:
        n = np.asarray(n, dtype=np.int64)
        if n.shape != (self.k,) or np.any(n < 1):
            raise SpecError([f"lanes={n.tolist()} must be {self.k} integers ≥ 1"])
        compute, memory, spill = self.compute_s(n), self.memory_s, self.spill_s
        stall = np.maximum(0.0, memory - compute)
        return Timing(self, tuple(int(x) for x in n), compute, memory, spill, stall)

    def seconds(self, n: np.ndarray) -> float:
        """End-to-end latency of ``n`` lanes per operation (all layers)."""
        return self.timing(n).seconds


@dataclass(frozen=True)
class Timing:
    """Per-operation compute, overlapped memory, exposed spill and stall seconds of one layer; totals for all layers."""

    table: OpTable
    lanes: tuple[int, ...]
    compute_s: np.ndarray
    memory_s: np.ndarray
    spill_s: np.ndarray
    stall_s: np.ndarray

    @property
    def op_s(self) -> np.ndarray:
        """Per operation and layer: spill + compute + stall."""
        return self.spill_s + self.compute_s + self.stall_s

    @property
    def seconds(self) -> float:
        return float(self.op_s.sum()) * self.table.layers

    def by_unit(self) -> dict[str, float]:
        out = dict.fromkeys(self.table.units, 0.0)
        for unit, s in zip(self.table.units, self.op_s):
            out[unit] += float(s) * self.table.layers
        return out


def _buffered(prefetch: float, spill: float, working_set: float, onchip: float) -> tuple[float, float]:
    """(prefetch, exposed) bytes of an operation's inputs: prefetched while the previous operation computes if its
    working set fits on chip twice (double-buffered), else read after the previous operation ends (003 §VI-D: the
    partitionings work "by minimizing the data spilling and enabling data prefetching")."""
    return (prefetch, spill) if 2 * working_set <= onchip else (0.0, spill + prefetch)


def op_table(model: ModelSpec, seq: int, fpga: FpgaSpec, variant: Variant = Variant(), skip: Skip = Skip(),
             queries: int = 1) -> OpTable:
    """The 003 Table II operations of one layer of ``model`` at ``seq`` tokens on ``fpga``, per ``variant``.

    Encoder–decoder models count every decoder layer as an encoder layer (no cross-attention, no causal mask). A
    memory network (arch ``memnet``) is costed per hop over ``seq`` memory slots for ``queries`` questions
    (``_memnet_rows``). An operation's data is prefetched only where its working set (003 Table III, for the
    variant's partitionings) fits the part's BRAM + UltraRAM twice; otherwise it is read exposed (``_buffered``).
    """
    if model.arch == "memnet":
        return _memnet_table(model, seq, fpga, variant, skip, queries)
    if model.arch not in ("encoder", "enc-dec"):
        raise SpecError([f"model {model.name!r} has arch={model.arch!r}; the FPGA model covers encoder and enc-dec "
                         "Transformers and memory networks (003 Fig. 2, Fig. 9)"])
    s, d, h, F = seq, model.hidden, model.heads, model.ffn
    dh = d // h
    P, C, FF, ZS = ("P" in variant), ("C" in variant), ("F" in variant), ("ZS" in variant)
    keep = 1.0 - skip.score if ZS else 1.0
    vkeep = 1.0 - skip.vgen if ZS else 1.0
    B = FP32_BYTES
    sd, ss = s * d * B, s * s * h * B  # one s×d activation; the scores (or probabilities) of all heads
    act = "relu" if model.activation == "relu" else "gelu"
    # Working sets of 003 Table III (bytes), per partitioning: P works on one head (d_H -> head size), C on one key
    # column (a row of S/P per query, one row of K/V and of its input), F on one column of W1 / row of W2.
    hd = dh if P else d
    q_ws, kv_rows, s_ws = s * hd * B, (1 if C else s), (1 if C else s) * s * (1 if P else h) * B
    t_ws = (1 if FF else F) * s * B
    w_ws = {"Q": d * hd * B, "KV": 2 * d * hd * B, "O": hd * d * B, "FF": d * (1 if FF else F) * B}
    ws = [q_ws + sd + w_ws["Q"], kv_rows * d * B + w_ws["KV"] + 2 * kv_rows * hd * B,
          q_ws + kv_rows * hd * B + s_ws, 2 * s_ws, s_ws + kv_rows * hd * B + q_ws, q_ws + w_ws["O"] + sd,
          sd + w_ws["FF"] + t_ws, 2 * t_ws, t_ws + w_ws["FF"] + sd, 3 * sd]
    # name, unit, lane, work, prefetch, spill (read after the previous op ends), write
    rows = [
        ("Q-Gen", UNITS[0], "mac", s * d * d, d * d * B + sd, 0.0, 0 if P else sd),
        ("K/V-Gen", UNITS[1], "mac", s * d * d * (1 + vkeep), 2 * d * d * B + sd, 0.0, 0 if P else 2 * sd),
        ("dot product", UNITS[1], "mac", s * s * d, 0.0, 0 if P else 2 * sd, 0 if C else ss),
        ("softmax", UNITS[1], "softmax", s * s * h * keep, 0.0, 0 if C else ss, 0 if C else ss),
        ("weighted sum", UNITS[1], "mac", s * s * d * keep, 0.0, (0 if C else ss) + (0 if P else sd), 0 if P else sd),
        ("attention FC", UNITS[1], "mac", s * d * d, d * d * B, 0 if P else sd, sd),
        ("linear trans-1", UNITS[2], "mac", s * d * F, d * F * B + sd, 0.0, 0 if FF else s * F * B),
        ("activation", UNITS[2], act, s * F, 0.0, 0 if FF else s * F * B, 0 if FF else s * F * B),
        ("linear trans-2", UNITS[2], "mac", s * d * F, d * F * B, 0 if FF else s * F * B, sd),
        ("layernorm/residual", UNITS[2], "layernorm", 2 * s * d, sd, sd, 2 * sd),
    ]
    cap = fpga.on_chip_bytes
    rows = [(n, u, ln, w, *_buffered(pf, sp, w_s, cap), wr) for (n, u, ln, w, pf, sp, wr), w_s in zip(rows, ws)]
    # On-chip working sets (003 Table III): per head Q, K, V, A (P); a row of S and P per query (C); a column chunk
    # of T1/T2 (F), double-buffered.
    onchip = 2 * B * ((4 * s * dh if P else 0) + (2 * s if C else 0) + (2 * s * dh if FF else 0))
    return _table(rows, fpga, onchip, model.layers + model.decoder_layers, f"{model.name} s={seq} {variant.name} "
                  f"on {fpga.name}")


MEMNET_UNITS = ("attention mechanism", "hop update")


def _memnet_table(model: ModelSpec, ns: int, fpga: FpgaSpec, variant: Variant, skip: Skip, nq: int) -> OpTable:
    """One hop of an end-to-end memory network (003 Fig. 2a; Sukhbaatar et al. 2015) over ``ns`` embedded memory
    slots of width d for ``nq`` questions: dot product S = u·M_inᵀ, softmax, weighted sum o = P·M_out, and the hop
    update u ← H·u + o. P and F do not apply (one head, no feed-forward network). The baseline writes S and P to DRAM
    and reads them back, and reads each memory whole before the operation that uses it (a 100M-slot memory cannot be
    buffered); the column-based algorithm (C) processes the memories a chunk of slots at a time with the lazy softmax
    division (eq. 4), so S and P stay on chip and the memories stream in double-buffered tiles during the compute.
    ZS skips softmax and weighted-sum work at the score skip rate. The answer FC after the last hop (nq·d·vocab
    MACs, 0.6 M for 003's MemNet) is left out.
    """
    if not isinstance(nq, int) or isinstance(nq, bool) or not 1 <= nq <= 10**6:
        raise SpecError([f"queries={nq!r} must be an integer in [1, 1000000]"])
    d, B = model.hidden, FP32_BYTES
    C, keep = ("C" in variant), (1.0 - skip.score if "ZS" in variant else 1.0)
    mem, sp, u = ns * d * B, nq * ns * B, nq * d * B  # one memory; the scores (or probabilities); the questions
    # name, unit, lane, work, prefetch, spill, write, stream
    rows = [
        ("dot product", MEMNET_UNITS[0], "mac", nq * ns * d, u, 0.0 if C else mem, 0.0 if C else sp, mem if C else 0.0),
        ("softmax", MEMNET_UNITS[0], "softmax", nq * ns * keep, 0.0, 0.0 if C else sp, 0.0 if C else sp, 0.0),
        ("weighted sum", MEMNET_UNITS[0], "mac", nq * ns * d * keep, 0.0, 0.0 if C else sp + mem, u,
         mem if C else 0.0),
        ("hop update", MEMNET_UNITS[1], "mac", nq * d * d, d * d * B, 0.0, u, 0.0),
    ]
    onchip = 2 * B * (2 * nq + 2 * d) if C else 0  # a chunk: a slot's scores for every question, a row of each memory
    return _table(rows, fpga, onchip, model.hops, f"{model.name} ns={ns} nq={nq} {variant.name} on {fpga.name}")


def _table(rows: list[tuple], fpga: FpgaSpec, onchip: float, layers: int, label: str) -> OpTable:
    costs, depths = zip(*(lane_cost(r[2]) for r in rows))
    budget = fpga.budget()
    spare_uram = fpga.uram_blocks * URAM_BITS / 8
    budget["bram"] -= math.ceil(max(0.0, onchip - spare_uram) / (BRAM36_BITS / 8))
    col = lambda j: np.array([float(r[j]) if j < len(r) else 0.0 for r in rows])  # noqa: E731
    return OpTable(
        names=tuple(r[0] for r in rows), units=tuple(r[1] for r in rows), lane_kinds=tuple(r[2] for r in rows),
        work=col(3), depth=np.array(depths, dtype=float), prefetch_bytes=col(4), spill_bytes=col(5),
        write_bytes=col(6), cost=np.array([[c[r] for r in RESOURCES] for c in costs]),
        budget=np.array([budget[r] for r in RESOURCES]), clock_hz=fpga.clock_hz, bytes_per_s=fpga.memory_bytes_per_s,
        layers=layers, label=label, stream_bytes=col(7))


@dataclass(frozen=True)
class Energy:
    """Joules of one inference: static, lanes (per resource, while computing), DRAM traffic; and the average power."""

    static_j: float
    lut_j: float
    ff_j: float
    dsp_j: float
    bram_j: float
    dram_j: float
    seconds: float

    @property
    def joules(self) -> float:
        return self.static_j + self.lut_j + self.ff_j + self.dsp_j + self.bram_j + self.dram_j

    @property
    def watts(self) -> float:
        return self.joules / self.seconds


def energy(table: OpTable, fpga: FpgaSpec, n: np.ndarray) -> Energy:
    """Static power over the latency, plus each operation's lanes switching during its compute cycles, plus DRAM."""
    t = table.timing(n)
    busy_cycles = np.ceil(table.work / np.asarray(t.lanes)) * table.layers  # cycles each op's lanes do work
    active = (np.asarray(t.lanes, dtype=float) * busy_cycles) @ table.cost  # resource-cycles per resource
    p = fpga.power
    per = dict(zip(RESOURCES, active))
    dram = table.dram_bytes * table.layers
    return Energy(p.static_w * t.seconds, per["lut"] * p.lut_j_per_cycle, per["ff"] * p.ff_j_per_cycle,
                  per["dsp"] * p.dsp_j_per_cycle, per["bram"] * p.bram_j_per_cycle, dram * p.dram_j_per_byte, t.seconds)

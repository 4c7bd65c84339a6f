"""Reproduce NLP-Fast's FPGA claims (003 §VI-D, Fig. 16–18, and the energy comparison) with tstack's FPGA model.

Every row puts the paper's figure next to the model's. The board, core and power constants come from the preset and
the core table as they are (sources in `presets/fpgas/*.yaml` and docs/fpga.md); the zero-skipping rate is the one
tstack measured on MiniLM; nothing is tuned to the paper's outcomes, so the gaps are the model's honest error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from tstack.accel.mapping import Infeasible
from tstack.api import analyze
from tstack.costmodel.fpga import OpTable, Skip, Variant, energy, op_table, parse_variant
from tstack.hardware.device import DeviceSpec, load_device
from tstack.hardware.fpga import RESOURCES, FpgaSpec, load_fpga
from tstack.models import load_model
from tstack.report import units
from tstack.search.fpga_alloc import Allocation, allocate, cross, exact
from tstack.spec import ModelSpec
from tstack.studies.repro_002 import INCREASE, SHARE, TEXT, Row

CONFIGS = ("nlpfast-bert", "nlpfast-bert-s4x", "nlpfast-bert-h4x", "nlpfast-bert-f4x")
CPU = "xeon-gold-5220-2s"
CPU_WATTS = 2 * 125.0  # Intel ARK, Xeon Gold 5220: 125 W TDP per socket, two sockets (003 §VI-A)
PAPER_SKIP = Skip(0.739, 0.570)  # 003 §III-C: 73.9% of softmax/weighted sum, 57.0% of V-Gen on BERT with SQuAD
ADAPTIVE = "slsqp+rebalance"
ALL = Variant(frozenset({"P", "C", "F", "ZS"}))  # every optimization: MP+ZS


def scaled(base: ModelSpec, dim: str, factor: int) -> ModelSpec:
    """BERT base with d_H (heads grow with it, head size 64) or d_FF multiplied by ``factor`` (003's H-nx, F-nx)."""
    if dim == "H":
        return replace(base, name=f"{base.name}-h{factor}x", hidden=base.hidden * factor, heads=base.heads * factor)
    return replace(base, name=f"{base.name}-f{factor}x", ffn=base.ffn * factor)


def _seconds(model: ModelSpec, fpga: FpgaSpec, variant: str, method: str = "uniform", skip: Skip = Skip(),
             queries: int = 1) -> float:
    return allocate(op_table(model, model.default_seq, fpga, parse_variant(variant), skip, queries), method).seconds


def _units(model: ModelSpec, fpga: FpgaSpec, variant: str) -> dict[str, float]:
    t = op_table(model, model.default_seq, fpga, parse_variant(variant))
    return t.timing(allocate(t, "uniform").lanes).by_unit()


def _traffic(model: ModelSpec, fpga: FpgaSpec, variant: str) -> float:
    """DRAM bytes of one inference: prefetches, spills and write-backs of every layer."""
    t = op_table(model, model.default_seq, fpga, parse_variant(variant))
    return t.dram_bytes * t.layers


def _unbuffered(model: ModelSpec, fpga: FpgaSpec) -> list[str]:
    """The baseline's operations whose working set (003 Table III) does not fit the part's on-chip memory twice."""
    t = op_table(model, model.default_seq, fpga)
    roomy = op_table(model, model.default_seq, replace(fpga, uram_blocks=10**6))
    return [n for n, a, b in zip(t.names, t.spill_bytes, roomy.spill_bytes) if a > b]


def _fig16_rows(fpga: FpgaSpec) -> list[Row]:
    rows = []
    for name in ("nlpfast-bert", "nlpfast-transformer"):
        m = load_model(name)
        base, mp, mpzs = (_seconds(m, fpga, v) for v in ("base", "MP", "MP+ZS"))
        paper_zs = _seconds(m, fpga, "MP+ZS", skip=PAPER_SKIP)
        rows += [
            Row(f"fig16-mp-{name}", f"{name}: model partitioning (P+C+F) over the baseline design", "up to 2.60×",
                units.ratio(base / mp), f"uniform lanes; {base:.2f} s -> {mp:.2f} s; the design is compute-bound: spills and "
                f"stalls are {1 - mp / base:.1%} of the baseline's time", TEXT),
            Row(f"fig16-zs-{name}", f"{name}: zero skipping on top of MP", "a further 1.20×", units.ratio(mp / mpzs),
                f"at tstack's MiniLM rate (21.7% of softmax/weighted sum, 0% V-Gen); at 003's own rates (73.9%, 57.0%) "
                f"{mp / paper_zs:.2f}×", TEXT),
            Row(f"fig16-all-{name}", f"{name}: all schemes over the baseline design", "up to 2.89×", units.ratio(base / mpzs),
                f"with 003's skip rates {base / paper_zs:.2f}×", TEXT),
        ]
    bert = load_model("nlpfast-bert")
    bound = _traffic(bert, fpga, "base") / _traffic(bert, fpga, "MP")
    spilled = {n: _unbuffered(load_model(n), fpga) for n in CONFIGS}
    rows.append(Row("fig16-mp-bound", "BERT: the most MP can gain in this model, at any bandwidth (diagnosis)",
                    "not reported", units.ratio(bound), "DRAM bytes of the baseline over MP's: even a fully memory-bound design "
                    f"gains no more, because every variant reads each layer's weights once. Baseline operations whose "
                    f"Table III working set exceeds twice the {fpga.on_chip_bytes / 1e6:.1f} MB of BRAM + UltraRAM (read "
                    "exposed, not prefetched): " + "; ".join(f"{n}: {', '.join(v) or 'none'}" for n, v in
                                                             spilled.items()), TEXT))
    rows += _memnet_rows(fpga)
    return rows


def _memnet_rows(fpga: FpgaSpec) -> list[Row]:
    """MemNet (003 Table IV: 10^8 memory slots, d = 64) for one question, and for 32 as a sensitivity (003 gives no
    question count; 32 is what `tstack opt bench` runs)."""
    m = load_model("memnet")
    out = {}
    for nq in (1, 32):
        base, mp, mpzs, paper_zs = (_seconds(m, fpga, v, skip=k, queries=nq) for v, k in
                                    (("base", Skip()), ("MP", Skip()), ("MP+ZS", Skip()), ("MP+ZS", PAPER_SKIP)))
        out[nq] = base, mp, mpzs, paper_zs
    (base, mp, mpzs, paper_zs), (b32, m32, z32, p32) = out[1], out[32]
    return [
        Row("fig16-mp-memnet", "memnet: model partitioning (column-based) over the baseline design", "up to 2.60×",
            units.ratio(base / mp), f"uniform lanes, one question; {base:.2f} s -> {mp:.2f} s (memory-bound: the two "
            f"{m.default_seq * m.hidden * 4 / 1e9:.1f} GB memories per hop at {fpga.memory_bytes_per_s / 1e9:.1f} GB/s); "
            f"32 questions: {b32 / m32:.2f}×", TEXT),
        Row("fig16-zs-memnet", "memnet: zero skipping on top of MP", "a further 1.20×", units.ratio(mp / mpzs),
            f"one question, at tstack's MiniLM rate; at 003's rates {mp / paper_zs:.2f}×; 32 questions: "
            f"{m32 / z32:.2f}× (003's rates {m32 / p32:.2f}×)", TEXT),
        Row("fig16-all-memnet", "memnet: all schemes over the baseline design", "up to 2.89×", units.ratio(base / mpzs),
            f"one question; 32 questions: {b32 / z32:.2f}× (003's rates {b32 / p32:.2f}×)", TEXT),
    ]


def _fig17_rows(fpga: FpgaSpec) -> list[Row]:
    bert = load_model("nlpfast-bert")
    att = ("query generator", "multi-head self-attention")
    u = {v: _units(bert, fpga, v) for v in ("base", "P", "P+C", "P+C+ZS", "F")}
    a = {v: sum(u[v][k] for k in att) for v in ("base", "P", "P+C", "P+C+ZS")}
    return [
        Row("fig17a-attention", "BERT: attention latency, P + C + zero skipping vs baseline (Fig. 17a)", "-61.8%",
            a["P+C+ZS"] / a["base"] - 1, f"P {a['P'] / a['base'] - 1:+.1%}, P+C {a['P+C'] / a['base'] - 1:+.1%}; "
            "uniform lanes", INCREASE, (-0.618, -0.618)),
        Row("fig17b-ffn", "BERT: feed-forward latency, F vs baseline (Fig. 17b)", "-67.7%",
            u["F"]["feed-forward"] / u["base"]["feed-forward"] - 1, "layernorm/residual counted in the feed-forward "
            "unit; uniform lanes", INCREASE, (-0.677, -0.677)),
        _fig17_needed(bert, fpga, "feed-forward", 0.677, "F"),
    ]


def _fig17_needed(model: ModelSpec, fpga: FpgaSpec, unit: str, cut: float, variant: str) -> Row:
    """The MAC lanes a design would need for ``variant`` to cut ``unit``'s latency by ``cut`` through data movement
    alone, with this model's traffic: at best the baseline's reads and writes of the unit are all exposed (time
    compute + memory) and the variant hides them all (time compute), so cut = memory / (compute + memory) needs
    compute = memory · (1 - cut) / cut. Compared with the most fp32 MAC lanes the part's DSPs allow."""
    t = op_table(model, model.default_seq, fpga)
    ops = [i for i, u in enumerate(t.units) if u == unit]
    mem_s = sum(t.prefetch_bytes[i] + t.streamed[i] + t.spill_bytes[i] + t.write_bytes[i] for i in ops) / t.bytes_per_s
    macs = sum(t.work[i] for i in ops if t.lane_kinds[i] == "mac")
    need = macs / (mem_s * (1 - cut) / cut) / fpga.clock_hz
    dsp_max = fpga.dsps // int(t.cost[ops[0]][RESOURCES.index("dsp")]) if t.lane_kinds[ops[0]] == "mac" else 0
    return Row(f"fig17-needed-{unit.split()[-1]}", f"BERT {unit}: MAC lanes {variant} would need for 003's "
               f"-{cut:.1%} by data movement alone (diagnosis)", "not reported", f"{need:,.0f} lanes",
               f"the unit moves {mem_s * t.bytes_per_s / 1e6:.0f} MB a layer in the baseline ({mem_s * 1e3:.1f} ms at "
               f"{t.bytes_per_s / 1e9:.1f} GB/s) for {macs / 1e9:.2f} G MACs; the {fpga.dsps:,} DSPs allow at most "
               f"{dsp_max:,} fp32 MAC lanes at {fpga.clock_hz / 1e6:.0f} MHz: 003's baseline must move more data than "
               "Table III's working sets once each, which 003 does not describe", TEXT)


class _Design(NamedTuple):
    """A model's operation table with every optimization on the part, and its adaptive allocation."""

    model: ModelSpec
    table: OpTable
    adaptive: Allocation


def _design(name: str, fpga: FpgaSpec) -> _Design:
    m = load_model(name)
    t = op_table(m, m.default_seq, fpga, ALL)
    return _Design(m, t, allocate(t, ADAPTIVE))


def _fig18_rows(designs: dict[str, _Design]) -> list[Row]:
    rows, gains, uniform = [], {}, {}
    for name, (_, t, ada) in designs.items():
        uni = uniform[name] = allocate(t, "uniform")
        gains[name] = uni.seconds / ada.seconds
        rows.append(Row(f"fig18-{name}", f"{name}: adaptive allocation (SLSQP + rebalancing) over uniform lanes",
                        "≥ 1.5× on every configuration" + (" (F-4x: 2.11×)" if name.endswith("f4x") else ""),
                        units.ratio(gains[name]), f"{'meets' if gains[name] >= 1.5 else 'misses'} ≥ 1.5×; rebalancing rounds "
                        f"{ada.rounds}; lanes {' '.join(map(str, ada.lanes))}", TEXT))
    best = max(gains, key=gains.get)
    rows.append(Row("fig18-f4x-highest", "F-4x gains the most from adaptive allocation", "yes (2.11×)",
                    "yes" if best == "nlpfast-bert-f4x" else f"no ({best})", "", TEXT))
    t = designs["nlpfast-bert-f4x"].table
    op_s = t.timing(uniform["nlpfast-bert-f4x"].lanes).op_s
    linear = sum(s for n, s in zip(t.names, op_s) if n.startswith("linear trans")) / op_s.sum()
    rows.append(Row("f4x-linear-share", "F-4x: linear trans-1 and -2 share of latency (uniform lanes)", "74.7%",
                    float(linear), "", SHARE, (0.747, 0.747)))
    return rows


def _cross_rows(fpga: FpgaSpec) -> list[Row]:
    base = load_model("nlpfast-bert")
    rows = []
    for factor, paper in ((4, "0.47×"), (8, "0.26×"), (16, "0.12×")):
        run_m, design_m = scaled(base, "F", factor), scaled(base, "H", factor)
        try:
            c = cross(op_table(run_m, run_m.default_seq, fpga, ALL), op_table(design_m, design_m.default_seq, fpga, ALL),
                      ADAPTIVE)
            value = units.ratio(c.relative)
            note = f"own {c.own.seconds:.2f} s, on the H-{factor}x design {c.seconds_on_design:.2f} s"
        except Infeasible as e:  # a design that cannot run the other model is this row's result
            value, note = "infeasible", str(e)[:200]
        rows.append(Row(f"cross-{factor}x", f"F-{factor}x on the design made for H-{factor}x, vs F-{factor}x's own",
                        paper, value, note, TEXT))
    return rows


def _exact_rows(bert: _Design) -> list[Row]:
    t = bert.table
    found = exact(t, heuristic=np.array(bert.adaptive.lanes))
    best = t.seconds(found.lanes)
    ada = bert.adaptive.seconds
    what = "optimum" if found.proven else f"best milp design (not proven; lower bound {found.bound_seconds:.4f} s)"
    return [Row("exact-gap", "BERT: SLSQP + rounding + rebalancing vs the exact integer optimum (milp)", "not reported",
                f"{best / ada:.4f} of optimal", f"{what} {best:.4f} s, SLSQP + rebalancing {ada:.4f} s", TEXT)]


def _energy_rows(fpga: FpgaSpec, cpu: DeviceSpec, bert: _Design) -> list[Row]:
    m = bert.model
    e = energy(bert.table, fpga, np.array(bert.adaptive.lanes))
    cpu_s = analyze(m, device=cpu).group_by("part")["transformer"].seconds
    cpu_j = cpu_s * CPU_WATTS
    ratio = cpu_j / e.joules
    return [
        Row("energy-bert", "BERT: energy efficiency of the FPGA design over the CPU (same work)", "9.82×", units.ratio(ratio),
            f"FPGA {e.seconds:.2f} s × {e.watts:.2f} W = {e.joules:.1f} J (static {e.static_j:.1f} J); CPU: tstack's "
            f"roofline on {cpu.name}, encoder layers {cpu_s * 1e3:.0f} ms × {CPU_WATTS:.0f} W TDP = {cpu_j:.1f} J",
            TEXT),
        _memnet_energy_row(fpga, cpu),
        Row("adaptive-total", "BERT: all optimizations + adaptive allocation over the uniform baseline design",
            "up to 4.47× (§I)", units.ratio(_seconds(m, fpga, "base") / e.seconds), "", TEXT),
    ]


def _memnet_energy_row(fpga: FpgaSpec, cpu: DeviceSpec) -> Row:
    m = load_model("memnet")
    t = op_table(m, m.default_seq, fpga, ALL)
    e = energy(t, fpga, np.array(allocate(t, ADAPTIVE).lanes))
    cpu_s = analyze(m, device=cpu, batch=1).group_by("part")["memory hops"].seconds
    cpu_j = cpu_s * CPU_WATTS
    return Row("energy-memnet", "MemNet: energy efficiency of the FPGA design over the CPU (same work)", "6.54×",
               units.ratio(cpu_j / e.joules), f"one question; FPGA {e.seconds:.2f} s × {e.watts:.2f} W = {e.joules:.1f} J "
               f"(static {e.static_j:.1f} J, DRAM {e.dram_j:.1f} J); CPU: tstack's roofline on {cpu.name}, memory hops "
               f"{cpu_s * 1e3:.0f} ms × {CPU_WATTS:.0f} W TDP = {cpu_j:.1f} J", TEXT)


def reproduce_003_fpga(device: DeviceSpec | None = None, fpga: str = "vcu118") -> list[Row]:
    """Rows of 003 §VI-D on ``fpga``; ``device`` is the repro command's GPU, unused (the CPU is 003's Xeon)."""
    board = load_fpga(fpga)
    cpu = load_device(CPU)
    designs = {name: _design(name, board) for name in CONFIGS}
    bert = designs["nlpfast-bert"]
    return (_fig16_rows(board) + _fig17_rows(board) + _fig18_rows(designs) + _cross_rows(board) + _exact_rows(bert)
            + _energy_rows(board, cpu, bert))

"""`tstack accel`: Gemmini-style accelerator model: whole-model latency and energy, GEMM mapping, design-space exploration.

`tstack accel MODEL ...` runs the `run` command (a first argument that is not a command name is taken as the model).

Every command takes ``--json PATH|-``, ``--csv PATH|-`` and ``--plot FILE`` (docs/output.md). Record fields carry
their unit: ``seconds``, ``joules``, ``joule_seconds`` (the energy-delay product), ``cycles``, ``bytes``; per-category
times are ``<category>_seconds`` (``quant_seconds`` is 000's "(de)quant"), energy by component ``<component>_joules``.
A GEMM's independent repetitions are ``gemm_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tstack.accel import mapping as mp
from tstack.accel.energy import COMPONENTS, ComponentEnergy, gemm_energy
from tstack.accel.fusion import SCHEDULES
from tstack.accel.model import CATEGORIES, Result, gemm_shape, inference_run
from tstack.accel.model import run as run_model
from tstack.accel.timing import GemmShape, GemmTiming, Mapping, double_buffered
from tstack.cli.common import (
    CSV_OPT,
    JSON_OPT,
    DefaultRunGroup,
    Outputs,
    check_choice,
    check_int,
    console,
    parse_ints,
    parse_names,
    progress,
    worker_count,
)
from tstack.costmodel.systolic import AccelOp
from tstack.errors import SpecError
from tstack.hardware.accel import AccelSpec, Dma, Mesh, accel_presets, accel_to_dict, load_accel
from tstack.models import load_model
from tstack.parallel import EXECUTORS
from tstack.report import output, units
from tstack.report.repro_table import print_repro_table, summary_line
from tstack.search.dse import (
    MAX_SRAM_BYTES,
    Outcome,
    design_points,
    explore,
    pareto,
    parse_size,
    parse_splits,
)
from tstack.spec import ModelSpec, RunSpec
from tstack.studies.repro_000 import PRESETS, reproduce_000
from tstack.workload.build import check_pair

MAX_SEQ = 2**20  # tokens; the model's own max_positions is checked as well
MAX_GEMM_DIM = 2**40  # M, N, K and --batch of `accel gemm`
MAX_DSE_POINTS = 4096  # design points of one `accel dse`
MAPPINGS = ("auto", "best")


app = typer.Typer(cls=DefaultRunGroup, add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Gemmini-style accelerator model: whole-model latency and energy, GEMM mapping, design-space "
                       "exploration. `tstack accel MODEL ...` is short for `tstack accel run MODEL ...`.")
out = console()
HW_HELP = f"comma-separated accelerator presets ({', '.join(accel_presets())}) or .yaml files"
SEQ_HELP = f"sequence length, 1..{MAX_SEQ} (and at most the model's max_positions)"


# ---------------------------------------------------------------- records

def _key(category: str) -> str:
    """A category as a field name: '(de)quant' -> 'quant'."""
    return "quant" if category == "(de)quant" else category


def _energy_fields(e: ComponentEnergy, suffix: str = "_joules") -> dict[str, float]:
    return {f"{c}{suffix}": getattr(e, c) for c in COMPONENTS}


def _matmul_utilization(r: Result) -> float | None:
    return r.matmul_utilization() if any(x.timing is not None for x in r.records) else None


def result_record(r: Result, reference_seconds: float | None = None, **labels: Any) -> dict[str, Any]:
    """One (hardware, schedule) run: totals, seconds per category, energy per component."""
    cats = r.by_category()
    rec: dict[str, Any] = {**labels, "hardware": r.hw.name, "schedule": r.schedule, "seq": r.seq,
                           "seconds": r.seconds, "cycles": r.hw.cycles(r.seconds), "joules": r.joules,
                           "joule_seconds": r.edp, "utilization": r.utilization,
                           "matmul_utilization": _matmul_utilization(r)}
    rec.update({f"{_key(c)}_seconds": cats[c] for c in CATEGORIES})
    rec.update({f"{_key(c)}_share": cats[c] / r.seconds for c in CATEGORIES})
    rec.update(_energy_fields(r.energy))
    if reference_seconds is not None:
        rec["speedup_over_first"] = reference_seconds / r.seconds
    return rec


def _mapping_fields(hw: AccelSpec, m: Mapping | None, t: GemmTiming | None) -> dict[str, Any]:
    """A mapped GEMM's tiles, cycles, bytes and DMA counts (requests, L2 hits, L2 and DRAM bytes)."""
    if m is None or t is None:
        return {}
    return {"ti": m.ti, "tj": m.tj, "tk": m.tk, "tile_m": m.ti * hw.dim, "tile_n": m.tj * hw.dim,
            "tile_k": m.tk * hw.dim, "order": m.order, "reuse": m.reuse, "cycles": t.cycles,
            "mesh_cycles": t.mesh_cycles, "dma_cycles": t.dma_cycles, "ideal_cycles": t.ideal_cycles,
            "load_bytes": t.load_bytes, "store_bytes": t.store_bytes, "tiles": t.tiles,
            "dma_bound_tiles": t.dma_bound_tiles, "dram_rate_bound_tiles": t.dram_rate_bound_tiles,
            "load_requests": t.load_requests, "l2_hit_requests": t.hit_requests, "l2_hit_rate": t.hit_rate,
            "store_requests": t.store_requests, "l2_read_bytes": t.l2_read_bytes, "dram_read_bytes": t.dram_read_bytes}


def op_record(r: Result, rec: AccelOp) -> dict[str, Any]:
    """One op of a run, per instance (``count`` instances in the run; ``total_*`` are × count)."""
    op = rec.op
    out: dict[str, Any] = {"hardware": r.hw.name, "schedule": r.schedule, "op": op.name, "kind": op.kind,
                           "count": op.count, "unit": rec.unit, "seconds": rec.seconds,
                           "total_seconds": rec.seconds * op.count, "joules": rec.energy.total,
                           "total_joules": rec.energy.total * op.count, "ideal_seconds": rec.ideal_s,
                           "utilization": rec.ideal_s / rec.seconds if rec.seconds else None}
    for part in rec.parts:
        key = f"{_key(part.category)}_seconds"
        out[key] = out.get(key, 0.0) + part.seconds
    if rec.timing is not None:
        shape = gemm_shape(op)
        out.update({"m": shape.I, "n": shape.J, "k": shape.K, "gemm_batch": shape.batch})
        out.update(_mapping_fields(r.hw, rec.mapping, rec.timing))
    return out


def _accelerators(hws: Sequence[AccelSpec]) -> dict[str, dict[str, Any]]:
    return {h.name: accel_to_dict(h) for h in hws}


# ---------------------------------------------------------------- checks at the boundary

def _model_run(model: str, seq: int) -> tuple[ModelSpec, RunSpec]:
    """The model and the run, checked together (--seq within the model's positions) before any work."""
    check_int("--seq", seq, 1, MAX_SEQ)
    spec = load_model(model)
    run = inference_run(seq)
    try:
        check_pair(spec, run)
    except SpecError as e:
        raise SpecError([f"--seq: {p}" for p in e.problems]) from None
    return spec, run


def _load_hws(text: str) -> list[AccelSpec]:
    return [load_accel(name) for name in parse_names("--hw", text)]


def _check_schedules(schedules: Sequence[str], hws: Sequence[AccelSpec]) -> None:
    """The fused schedule needs the nonlinear units on the accelerator (000 §III): refused before any work."""
    host = [h.name for h in hws if h.units.nonlinear != "accelerator"]
    if "fused" in schedules and host:
        raise SpecError([f"--schedule fused needs the nonlinear ops on the accelerator; {', '.join(host)} "
                         "runs them on the host"])


# ---------------------------------------------------------------- run

def _result_table(results: Sequence[tuple[str, Result]], title: str) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False)
    for col in ("hardware", "schedule", "latency", *CATEGORIES, "energy", "EDP", "MAC util"):
        t.add_column(col, justify="left" if col in ("hardware", "schedule") else "right", no_wrap=True)
    for name, r in results:
        cats = r.by_category()
        t.add_row(name, r.schedule, units.seconds(r.seconds), *(units.percent(cats[c] / r.seconds) for c in CATEGORIES),
                  units.si(r.joules, "J"), units.si(r.edp, "J·s"), units.percent(r.utilization))
    return t


@app.command("run")
def run_cmd(
    model: str = typer.Argument(..., help="model preset or .yaml (e.g. bert-base)"),
    seq: int = typer.Option(512, "--seq", "-s", help=SEQ_HELP),
    hw: str = typer.Option("gemmini-baseline", "--hw", help=HW_HELP),
    schedule: str = typer.Option("non-fused", help="comma-separated: non-fused, fused (000 §III; fused needs I-BERT units)"),
    mapping: str = typer.Option("auto", help="auto (Gemmini's tiled_matmul_auto) | best (search)"),
    objective: str = typer.Option("latency", help="objective of --mapping best: latency | energy | edp"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
    plot: Path | None = typer.Option(None, "--plot", help="write the time breakdown as stacked bars (.png, .svg, .pdf)"),
) -> None:
    """Whole-model latency, energy and time breakdown per hardware and schedule (000 Fig. 2 and Fig. 3)."""
    outputs = Outputs(json=json_out, csv=csv_out, plot=plot)
    schedules = parse_names("--schedule", schedule, SCHEDULES)
    check_choice("--mapping", mapping, MAPPINGS)
    check_choice("--objective", objective, mp.OBJECTIVES)
    spec, run = _model_run(model, seq)
    hws = _load_hws(hw)
    _check_schedules(schedules, hws)
    results: list[tuple[str, Result]] = []
    with progress("accel run", total=len(hws) * len(schedules), unit="runs") as advance:
        for h in hws:
            for s in schedules:
                results.append((h.name, run_model(spec, seq, h, s, mapping, objective)))
                advance(1)
    ref = results[0][1].seconds
    records = [result_record(r, ref) for _, r in results]
    ops = [op_record(r, rec) for _, r in results for rec in r.records]
    desc = output.run_description(spec, run, seq=seq, hw=[h.name for h in hws],
                                  accelerators=_accelerators(hws), schedule=schedules, mapping=mapping,
                                  objective=objective)
    doc = output.document("accel run", desc, records, ops=ops)

    def figure(path: Path) -> None:
        from tstack.report import accel_figures as figures

        figures.breakdown([(f"{n}\n{r.schedule}", r) for n, r in results], path, f"{spec.name}, n={seq}",
                          fmt=outputs.plot_format)

    outputs.write(doc, figure=figure)
    if outputs.stdout_taken:
        return
    out.print(_result_table(results, "BERT inference on the accelerator (time by category, 000 Fig. 2)"))
    if len(results) > 1:
        ups = ", ".join(f"{n} {r.schedule}: {ref / r.seconds:.2f}×" for n, r in results[1:])
        out.print(f"speed-up over the first row: {ups}")


# ---------------------------------------------------------------- gemm

def gemm_record(hw: AccelSpec, shape: GemmShape, name: str, objective: str, full_rows: bool, m: Mapping,
                t: GemmTiming) -> dict[str, Any]:
    """One mapping of one GEMM: tiles, cycles, seconds, utilization, the DMA's requests and where its bytes came from
    (L2 or DRAM), energy by component (``l2_joules`` and ``dram_joules`` split the traffic's)."""
    e = gemm_energy(hw, t)
    secs = hw.seconds(t.cycles)
    spad, acc = mp.limits(hw)
    D = hw.dim
    return {"hardware": hw.name, "mapping": name, "objective": objective if name == "best" else None,
            "full_rows": full_rows, "m": shape.I, "n": shape.J, "k": shape.K, "gemm_batch": shape.batch,
            **_mapping_fields(hw, m, t), "overhead_cycles": t.overhead_cycles, "seconds": secs,
            "utilization": t.utilization, "joules": e.total, "joule_seconds": e.total * secs,
            "spad_rows_used": (m.ti * m.tk + m.tk * m.tj) * D, "spad_rows_available": spad,
            "acc_rows_used": m.ti * m.tj * D, "acc_rows_available": acc, "double_buffered": double_buffered(hw),
            **_energy_fields(e)}


@app.command()
def gemm(
    m: int = typer.Argument(..., help=f"M: rows of A and C (Gemmini's I, the tokens), 1..{MAX_GEMM_DIM}"),
    n: int = typer.Argument(..., help=f"N: columns of B and C (Gemmini's J, the output features), 1..{MAX_GEMM_DIM}"),
    k: int = typer.Argument(..., help=f"K: the reduction, 1..{MAX_GEMM_DIM}"),
    batch: int = typer.Option(1, help=f"independent GEMMs of this shape (attention heads), 1..{MAX_GEMM_DIM}"),
    hw: str = typer.Option("gemmini-baseline", "--hw", help=HW_HELP),
    mapping: str = typer.Option("auto", help="comma-separated: auto (tiled_matmul_auto) | best (search)"),
    objective: str = typer.Option("latency", help="objective of best: latency | energy | edp"),
    full_rows: bool = typer.Option(False, help="whole output rows in the accumulator (LayerNorm/Softmax fused)"),
    explain: bool = typer.Option(False, help="show tiles, capacity use and where the cycles go"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
    plot: Path | None = typer.Option(None, "--plot", help="write latency and energy by component per mapping "
                                                          "(.png, .svg, .pdf)"),
) -> None:
    """Map and time one GEMM C[M×N] = A[M×K]·B[K×N] on each accelerator."""
    outputs = Outputs(json=json_out, csv=csv_out, plot=plot)
    problems = []
    for name, v in (("M", m), ("N", n), ("K", k), ("--batch", batch)):
        try:
            check_int(name, v, 1, MAX_GEMM_DIM)
        except SpecError as e:
            problems.extend(e.problems)
    if problems:
        raise SpecError(problems)
    mappings = parse_names("--mapping", mapping, MAPPINGS)
    check_choice("--objective", objective, mp.OBJECTIVES)
    hws = _load_hws(hw)
    shape = GemmShape(m, n, k, batch)
    mapped: list[tuple[AccelSpec, str, Mapping, GemmTiming]] = []
    for h in hws:
        for name in mappings:
            mpg, tm = mp.mapper(name, objective)(h, shape, full_rows, 1)
            mapped.append((h, name, mpg, tm))
    records = [gemm_record(h, shape, name, objective, full_rows, mpg, tm) for h, name, mpg, tm in mapped]
    desc = output.run_description(m=m, n=n, k=k, gemm_batch=batch, hw=[h.name for h in hws],
                                  accelerators=_accelerators(hws), mapping=mappings, objective=objective,
                                  full_rows=full_rows)
    doc = output.document("accel gemm", desc, records)

    def figure(path: Path) -> None:
        from tstack.report import accel_figures as figures

        figures.gemm_mappings(records, path, f"GEMM {m}×{n}×{k} (×{batch})", fmt=outputs.plot_format)

    outputs.write(doc, figure=figure)
    if outputs.stdout_taken:
        return
    for h in hws:
        t = Table(title=f"GEMM {m}×{n}×{k} (×{batch}) on {h.name}", title_justify="left", show_edge=False)
        for col in ("mapping", "tiles ti×tj×tk", "order", "latency", "utilization", "energy", "EDP"):
            t.add_column(col, no_wrap=True)
        for r in (r for r in records if r["hardware"] == h.name):
            t.add_row(r["mapping"], f"{r['ti']}×{r['tj']}×{r['tk']}", f"{r['order']}{' reuse' if r['reuse'] else ''}",
                      units.seconds(r["seconds"]), units.percent(r["utilization"]), units.si(r["joules"], "J"),
                      units.si(r["joule_seconds"], "J·s"))
        out.print(t)
    if explain:
        for r, (_, _, _, tm) in zip(records, mapped, strict=True):
            out.print(f"{r['hardware']} {r['mapping']}: tile {r['tile_m']}×{r['tile_n']}×{r['tile_k']} elements; "
                      f"scratchpad rows {r['spad_rows_used']}/{r['spad_rows_available']}, accumulator rows "
                      f"{r['acc_rows_used']}/{r['acc_rows_available']} "
                      f"({'double-buffered' if r['double_buffered'] else 'single-buffered'})")
            out.print(f"  cycles {r['cycles']:,.0f} = tiles max(mesh, DMA, call) + first load + first call + last "
                      f"store; mesh busy {r['mesh_cycles']:,.0f}, DMA busy {r['dma_cycles']:,.0f}, ideal "
                      f"{r['ideal_cycles']:,.0f}")
            mesh_bound = tm.tiles - tm.dma_bound_tiles
            rate_bound = tm.dram_rate_bound_tiles
            out.print(f"  tiles {tm.tiles:,.0f}: mesh-bound {mesh_bound:,.0f}, DMA-bound {tm.dma_bound_tiles:,.0f} "
                      f"(by requests {tm.dma_bound_tiles - rate_bound:,.0f}, by DRAM rate {rate_bound:,.0f}); "
                      f"load requests {tm.load_requests:,.0f} (L2 hit rate {units.percent(tm.hit_rate)}), store "
                      f"requests {tm.store_requests:,.0f}")
            out.print(f"  bytes in {units.si(tm.load_bytes, 'B')} (L2 {units.si(tm.l2_read_bytes, 'B')}, DRAM "
                      f"{units.si(tm.dram_read_bytes, 'B')}), out {units.si(tm.store_bytes, 'B')}")
            out.print("  energy: " + ", ".join(f"{c} {units.si(r[f'{c}_joules'], 'J')}" for c in COMPONENTS
                                               if r[f"{c}_joules"]))


# ---------------------------------------------------------------- dse

def dse_records(outcomes: Sequence[Outcome], front: Sequence[bool], objectives: Sequence[str]) -> list[dict[str, Any]]:
    """One record per design point; ranks (1 = best) among the feasible points."""
    feasible = [i for i, o in enumerate(outcomes) if o.feasible]
    ranks = {o: {i: r + 1 for r, i in enumerate(sorted(feasible, key=lambda i, o=o: outcomes[i].objective(o)))}
             for o in objectives}
    records = []
    for i, o in enumerate(outcomes):
        p = o.point
        records.append({"design": p.label, "spad_bytes": p.spad_bytes, "acc_bytes": p.acc_bytes, "dim": p.dim,
                        "dma_bytes_per_cycle": p.dma_bytes, "feasible": o.feasible, "reason": o.reason or None,
                        "latency_seconds": o.latency_s, "matmul_seconds": o.matmul_s, "joules": o.joules,
                        "joule_seconds": o.edp, **{f"rank_{obj}": ranks[obj].get(i) for obj in objectives},
                        "pareto": bool(front[i])})
    return records


@app.command()
def dse(
    model: str = typer.Argument(..., help="model preset or .yaml"),
    seq: int = typer.Option(512, "--seq", "-s", help=SEQ_HELP),
    hw: str = typer.Option("gemmini-ibert", "--hw", help="base accelerator preset or .yaml"),
    sram_total: str = typer.Option("320KiB", help="scratchpad + accumulator bytes, e.g. 320KiB "
                                                  f"(at most {MAX_SRAM_BYTES // 2**30} GiB)"),
    split: str = typer.Option("64:256,128:192,256:64", help="comma-separated SPAD:ACC in KiB, each summing to "
                                                             "--sram-total"),
    dims: str = typer.Option("16", help=f"comma-separated mesh sizes (DIM×DIM), 1..{Mesh.RANGES['rows'][1]}"),
    dma: str = typer.Option("16", help="comma-separated DMA bus widths in bytes per cycle, "
                                       f"1..{Dma.RANGES['bus_bytes_per_cycle'][1]}"),
    objective: str = typer.Option("latency,energy,edp", help="objectives to rank by: latency, energy, edp"),
    schedule: str = typer.Option("non-fused", help="non-fused | fused"),
    executor: str = typer.Option("process", help="process | ray | serial"),
    workers: int | None = typer.Option(None, help="worker processes (default: the cores available)"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
    plot: Path | None = typer.Option(None, "--plot", help="write latency vs energy with the Pareto set "
                                                          "(.png, .svg, .pdf)"),
) -> None:
    """Sweep the scratchpad/accumulator split at fixed SRAM, mesh size and DMA width; rank and show the Pareto set."""
    outputs = Outputs(json=json_out, csv=csv_out, plot=plot)
    check_choice("--schedule", schedule, SCHEDULES)
    check_choice("--executor", executor, EXECUTORS)
    workers = worker_count("--workers", workers)
    objectives = parse_names("--objective", objective, mp.OBJECTIVES)
    total = parse_size("--sram-total", sram_total)
    splits = parse_splits(split, total)
    mesh_dims = parse_ints("--dims", dims, 1, Mesh.RANGES["rows"][1])
    dma_widths = parse_ints("--dma", dma, 1, Dma.RANGES["bus_bytes_per_cycle"][1])
    n_points = len(splits) * len(mesh_dims) * len(dma_widths)
    if n_points > MAX_DSE_POINTS:
        raise SpecError([f"--split, --dims and --dma give {n_points} design points; at most {MAX_DSE_POINTS} are "
                         "allowed in one run"])
    spec, run = _model_run(model, seq)
    base = load_accel(hw)
    _check_schedules([schedule], [base])
    points = design_points(splits, mesh_dims, dma_widths)
    with progress("accel dse", total=len(points), unit="design points") as advance:
        outcomes = explore(base, spec, seq, points, schedule, executor, workers=workers, progress=advance)
    front = pareto(outcomes)
    records = dse_records(outcomes, front, objectives)
    desc = output.run_description(spec, run, seq=seq, hw=base.name, accelerators=_accelerators([base]),
                                  sram_total_bytes=total, split=[{"spad_bytes": s, "acc_bytes": a} for s, a in splits],
                                  dims=mesh_dims, dma_bytes_per_cycle=dma_widths, objective=objectives,
                                  schedule=schedule, executor=executor, workers=workers)
    doc = output.document("accel dse", desc, records)

    def figure(path: Path) -> None:
        from tstack.report import accel_figures as figures

        figures.pareto(outcomes, front, path, f"{spec.name} n={seq} on {base.name}", fmt=outputs.plot_format)

    outputs.write(doc, figure=figure)
    if outputs.stdout_taken:
        return
    t = Table(title=f"design points of {base.name}, {spec.name} n={seq} ({schedule})", title_justify="left",
              show_edge=False)
    for col in ("design (spad:acc, mesh, DMA B/cycle)", "latency", "matmul", "energy", "EDP",
                *(f"rank {o}" for o in objectives), "Pareto"):
        t.add_column(col, no_wrap=True)
    for r in records:
        if not r["feasible"]:
            t.add_row(r["design"], "infeasible", "", "", "", *("" for _ in objectives), r["reason"][:60])
            continue
        t.add_row(r["design"], units.seconds(r["latency_seconds"]), units.seconds(r["matmul_seconds"]),
                  units.si(r["joules"], "J"), units.si(r["joule_seconds"], "J·s"),
                  *(str(r[f"rank_{o}"]) for o in objectives), "yes" if r["pareto"] else "")
    out.print(t)


# ---------------------------------------------------------------- repro

@app.command()
def repro(
    model: str = typer.Option("bert-base", help="model preset"),
    seq: int = typer.Option(512, "--seq", "-s", help=SEQ_HELP),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
    plot: Path | None = typer.Option(None, "--plot", help="write the time breakdown like 000 Fig. 2 (.png, .svg, .pdf)"),
) -> None:
    """Print 000's accelerator claims (§II, §III) next to the model's values, untuned, with the gaps."""
    outputs = Outputs(json=json_out, csv=csv_out, plot=plot)
    spec, run = _model_run(model, seq)
    r = reproduce_000(spec, seq)
    records = [row.record() for row in r.rows]
    fig2 = [result_record(res, label=label) for label, res in r.fig2]
    hws = [load_accel(n) for n in PRESETS]
    desc = output.run_description(spec, run, paper="000", seq=seq, hw=list(PRESETS),
                                  accelerators=_accelerators(hws))
    doc = output.document("accel repro", desc, records, summary={"line": summary_line(r.rows)}, fig2=fig2)

    def figure(path: Path) -> None:
        from tstack.report import accel_figures as figures

        figures.breakdown(list(r.fig2), path, f"{spec.name}: time breakdown (000 Fig. 2)", fmt=outputs.plot_format)

    outputs.write(doc, figure=figure)
    if outputs.stdout_taken:
        return
    print_repro_table(r.rows, out, title=f"Full Stack Optimization of Transformer Inference (000) vs tstack accel, "
                                         f"{spec.name}")
    out.print(summary_line(r.rows))
    out.print(_result_table(list(r.fig2), "BERT inference on the accelerator (time by category, 000 Fig. 2)"))

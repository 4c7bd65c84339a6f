"""`tstack accel`: Gemmini-style accelerator model: whole-model latency and energy, GEMM mapping, design-space exploration.

`tstack accel MODEL ...` runs the `run` command (a first argument that is not a command name is taken as the model).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from tstack.accel import mapping as mp
from tstack.accel.dse import design_points, explore, pareto, parse_size, parse_splits
from tstack.accel.energy import COMPONENTS, gemm_energy
from tstack.accel.fusion import check_schedule
from tstack.accel.hw import accel_presets, load_accel
from tstack.accel.model import CATEGORIES, Result
from tstack.accel.model import run as run_model
from tstack.accel.repro import reproduce_000
from tstack.accel.timing import GemmShape, double_buffered
from tstack.cli_common import parse_ints
from tstack.errors import SpecError
from tstack.report import files, units
from tstack.report.repro_table import print_repro_table, summary_line


class _DefaultRun(TyperGroup):
    """A group whose unknown first word is the model of the `run` command, so `tstack accel bert-base` works."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_DefaultRun, add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Gemmini-style accelerator model: whole-model latency and energy, GEMM mapping, design-space "
                       "exploration. `tstack accel MODEL ...` is short for `tstack accel run MODEL ...`.")
console = Console()
wide = Console(width=max(console.width, 170))
HW_HELP = f"comma-separated accelerator presets ({', '.join(accel_presets())}) or .yaml files"


def _split(option: str, text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise SpecError([f"{option}={text!r} has no values"])
    return values


def _figure(option: str, path: Path | None) -> None:
    if path:
        files.check_figure_format(option, path)


def _result_table(results: list[tuple[str, Result]]) -> Table:
    t = Table(title="BERT inference on the accelerator (time by category, 000 Fig. 2)", title_justify="left", show_edge=False)
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
    seq: int = typer.Option(512, "--seq", "-s", help="sequence length"),
    hw: str = typer.Option("gemmini-baseline", "--hw", help=HW_HELP),
    schedule: str = typer.Option("non-fused", help="comma-separated: non-fused, fused (000 §III; fused needs I-BERT units)"),
    mapping: str = typer.Option("auto", help="auto (Gemmini's tiled_matmul_auto) | best (search)"),
    objective: str = typer.Option("latency", help="objective of --mapping best: latency | energy | edp"),
    figure: Path | None = typer.Option(None, help="write the time breakdown as a stacked-bar figure (.png, .svg, .pdf)"),
) -> None:
    """Whole-model latency, energy and time breakdown per hardware and schedule (000 Fig. 2 and Fig. 3)."""
    _figure("--figure", figure)
    schedules = _split("--schedule", schedule)
    for s in schedules:
        check_schedule(s)
    results = [(h.name, run_model(model, seq, h, s, mapping, objective))
               for h in (load_accel(n) for n in _split("--hw", hw)) for s in schedules]
    wide.print(_result_table(results))
    if len(results) > 1:
        ref = results[0][1].seconds
        ups = ", ".join(f"{n} {r.schedule}: {ref / r.seconds:.2f}×" for n, r in results[1:])
        wide.print(f"speed-up over the first row: {ups}")
    if figure:
        from tstack.accel import figures

        with files.all_or_nothing([figure]) as tmp:
            figures.breakdown([(f"{n}\n{r.schedule}", r) for n, r in results], tmp[figure], f"{model}, n={seq}")


@app.command()
def gemm(
    m: int = typer.Argument(..., help="M: rows of A and C (Gemmini's I, the tokens)"),
    n: int = typer.Argument(..., help="N: columns of B and C (Gemmini's J, the output features)"),
    k: int = typer.Argument(..., help="K: the reduction"),
    batch: int = typer.Option(1, help="independent GEMMs of this shape (attention heads)"),
    hw: str = typer.Option("gemmini-baseline", "--hw", help=HW_HELP),
    mapping: str = typer.Option("auto", help="comma-separated: auto (tiled_matmul_auto) | best (search)"),
    objective: str = typer.Option("latency", help="objective of best: latency | energy | edp"),
    full_rows: bool = typer.Option(False, help="whole output rows in the accumulator (LayerNorm/Softmax fused)"),
    explain: bool = typer.Option(False, help="show tiles, capacity use and where the cycles go"),
) -> None:
    """Map and time one GEMM C[M×N] = A[M×K]·B[K×N] on one accelerator."""
    problems = [f"{name}={v} must be >= 1" for name, v in (("M", m), ("N", n), ("K", k), ("batch", batch)) if v < 1]
    if problems:
        raise SpecError(problems)
    h = load_accel(_split("--hw", hw)[0])
    shape = GemmShape(m, n, k, batch)
    t = Table(title=f"GEMM {m}×{n}×{k} (×{batch}) on {h.name}", title_justify="left", show_edge=False)
    for col in ("mapping", "tiles ti×tj×tk", "order", "latency", "utilization", "energy", "EDP"):
        t.add_column(col, no_wrap=True)
    explained = []
    for name in _split("--mapping", mapping):
        mpg, tm = mp.mapper(name, objective)(h, shape, full_rows, 1)
        e = gemm_energy(h, tm)
        secs = h.seconds(tm.cycles)
        t.add_row(name, f"{mpg.ti}×{mpg.tj}×{mpg.tk}", f"{mpg.order}{' reuse' if mpg.reuse else ''}", units.seconds(secs),
                  units.percent(tm.utilization), units.si(e.total, "J"), units.si(e.total * secs, "J·s"))
        explained.append((name, mpg, tm, e))
    wide.print(t)
    if explain:
        spad, acc = mp.limits(h)
        for name, mpg, tm, e in explained:
            D = h.dim
            wide.print(f"[bold]{name}[/]: tile {mpg.ti * D}×{mpg.tj * D}×{mpg.tk * D} elements; scratchpad rows "
                          f"{(mpg.ti * mpg.tk + mpg.tk * mpg.tj) * D}/{spad}, accumulator rows {mpg.ti * mpg.tj * D}/{acc} "
                          f"({'double-buffered' if double_buffered(h) else 'single-buffered'})")
            wide.print(f"  cycles {tm.cycles:,.0f} = tiles max(mesh, DMA) + first load + call overhead; mesh busy "
                          f"{tm.mesh_cycles:,.0f}, DMA busy {tm.dma_cycles:,.0f}, ideal {tm.ideal_cycles:,.0f}; "
                          f"DRAM in {units.si(tm.load_bytes, 'B')}, out {units.si(tm.store_bytes, 'B')}")
            wide.print("  energy: " + ", ".join(f"{c} {units.si(getattr(e, c), 'J')}" for c in COMPONENTS if getattr(e, c)))


@app.command()
def dse(
    model: str = typer.Argument(..., help="model preset or .yaml"),
    seq: int = typer.Option(512, "--seq", "-s"),
    hw: str = typer.Option("gemmini-ibert", "--hw", help="base accelerator preset or .yaml"),
    sram_total: str = typer.Option("320KiB", help="scratchpad + accumulator bytes, e.g. 320KiB"),
    split: str = typer.Option("64:256,128:192,256:64", help="comma-separated SPAD:ACC in KiB"),
    dims: str = typer.Option("16", help="comma-separated mesh sizes (DIM×DIM)"),
    dma: str = typer.Option("16", help="comma-separated DMA bus widths in bytes per cycle"),
    objective: str = typer.Option("latency,energy,edp", help="objectives to rank by: latency, energy, edp"),
    schedule: str = typer.Option("non-fused", help="non-fused | fused"),
    executor: str = typer.Option("process", help="process | ray | serial"),
    figure: Path | None = typer.Option(None, help="write latency vs energy with the Pareto set (.png, .svg, .pdf)"),
) -> None:
    """Sweep the scratchpad/accumulator split at fixed SRAM, mesh size and DMA width; rank and show the Pareto set."""
    _figure("--figure", figure)
    check_schedule(schedule)
    objectives = _split("--objective", objective)
    for o in objectives:
        if o not in mp.OBJECTIVES:
            raise SpecError([f"--objective {o!r} is not one of {', '.join(mp.OBJECTIVES)}"])
    points = design_points(parse_splits(split, parse_size("--sram-total", sram_total)), parse_ints("--dims", dims),
                           parse_ints("--dma", dma))
    outcomes = explore(load_accel(hw), model, seq, points, schedule, executor)
    front = pareto(outcomes)
    t = Table(title=f"design points of {hw}, {model} n={seq} ({schedule})", title_justify="left", show_edge=False)
    cols = ("design (spad:acc, mesh, DMA B/cycle)", "latency", "matmul", "energy", "EDP", *(f"rank {o}" for o in objectives),
            "Pareto")
    for col in cols:
        t.add_column(col, no_wrap=True)
    ranks = {o: sorted(range(len(outcomes)), key=lambda i, o=o: outcomes[i].objective(o)) for o in objectives}
    for i, out in enumerate(outcomes):
        if not out.feasible:
            t.add_row(out.point.label, "infeasible", "", "", "", *("" for _ in objectives), out.reason[:60])
            continue
        t.add_row(out.point.label, units.seconds(out.latency_s), units.seconds(out.matmul_s), units.si(out.joules, "J"),
                  units.si(out.edp, "J·s"), *(str(ranks[o].index(i) + 1) for o in objectives), "yes" if front[i] else "")
    wide.print(t)
    if figure:
        from tstack.accel import figures

        with files.all_or_nothing([figure]) as tmp:
            figures.pareto(outcomes, front, tmp[figure], f"{model} n={seq} on {hw}")


@app.command()
def repro(
    model: str = typer.Option("bert-base", help="model preset"),
    seq: int = typer.Option(512, "--seq", "-s"),
    figure: Path | None = typer.Option(None, help="write the time breakdown like 000 Fig. 2 (.png, .svg, .pdf)"),
) -> None:
    """Print 000's accelerator claims (§II, §III) next to the model's values, untuned, with the gaps."""
    _figure("--figure", figure)
    r = reproduce_000(model, seq)
    print_repro_table(r.rows, wide, title=f"Full Stack Optimization of Transformer Inference (000) vs tstack accel, {model}")
    wide.print(summary_line(r.rows))
    wide.print(_result_table(list(r.fig2)))
    if figure:
        from tstack.accel import figures

        with files.all_or_nothing([figure]) as tmp:
            figures.breakdown(list(r.fig2), tmp[figure], f"{model}: time breakdown (000 Fig. 2)")

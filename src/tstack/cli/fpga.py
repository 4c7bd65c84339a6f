"""`tstack fpga`: the HLS-style FPGA model of NLP-Fast (003 §V-B, §VI-D): variants, adaptive allocation, mismatch.

`tstack fpga MODEL ...` is short for `tstack fpga run MODEL ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from tstack.cli.common import (
    CSV_OPT,
    JSON_OPT,
    DefaultRunGroup,
    Outputs,
    check_choice,
    check_float,
    check_int,
    console,
    parse_names,
)
from tstack.costmodel.fpga import Skip, energy, op_table, parse_variant
from tstack.hardware.fpga import RESOURCES, FpgaSpec, fpga_presets, load_fpga
from tstack.models import load_model
from tstack.report import output, units
from tstack.search.fpga_alloc import METHODS, Allocation, allocate, cross
from tstack.spec import ModelSpec

app = typer.Typer(cls=DefaultRunGroup, add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="HLS-style FPGA model of NLP-Fast (003): latency per operation, adaptive resource allocation "
                       "(Algorithm 1), design mismatch. `tstack fpga MODEL ...` is short for `tstack fpga run MODEL ...`.")
out = console()
MAX_SEQ = 2**16
MAX_SLOTS = 10**10  # memory-network slots (003 Table IV: 10^8)
FPGA_OPT = typer.Option("vcu118", "--fpga", help="FPGA preset or .yaml file (presets: " + ", ".join(fpga_presets()) + ")")
SEQ_OPT = typer.Option(None, "--seq", "-s", help=f"sequence length, 1..{MAX_SEQ}; a memory network's memory slots, "
                       f"1..{MAX_SLOTS} (default: the model's)")
QUERIES_OPT = typer.Option(1, "--queries", help="questions per memory-network pass, 1..1000000 (memnet only)")
SKIP_OPT = typer.Option(Skip.score, "--skip-rate", help="share of softmax and weighted-sum work zero skipping removes "
                                                         "(default: tstack's MiniLM measurement, docs/zeroskip.md)")
VGEN_OPT = typer.Option(Skip.vgen, "--vgen-skip", help="share of V rows V-Gen skipping does not generate")
VARIANT_OPT = typer.Option("MP+ZS", "--variant", help="the design's optimizations: base, P, C, F, MP (= P+C+F), ZS, "
                                                     "joined with '+'")


def _setup(fpga: str, skip_rate: float, vgen_skip: float) -> tuple[FpgaSpec, Skip]:
    check_float("--skip-rate", skip_rate, 0.0, 0.999)
    check_float("--vgen-skip", vgen_skip, 0.0, 0.999)
    return load_fpga(fpga), Skip(skip_rate, vgen_skip)


def _model(name: str, seq: int | None, queries: int = 1) -> tuple[ModelSpec, int]:
    check_int("--queries", queries, 1, 10**6)
    spec = load_model(name)
    check_int("--seq", seq, 1, MAX_SLOTS if spec.arch == "memnet" else MAX_SEQ)
    return spec, seq if seq is not None else spec.default_seq


def _utilization(t: Any, lanes: tuple[int, ...]) -> dict[str, float]:
    used = t.usage(np.array(lanes))
    return {f"{r}_utilization": float(used[j] / t.budget[j]) if t.budget[j] > 0 else None for j, r in enumerate(RESOURCES)}


def _unit_field(unit: str) -> str:
    """The summary field of a unit's seconds ("multi-head self-attention" -> "multi_head_self_attention_seconds")."""
    return f"{unit.replace(' ', '_').replace('-', '_')}_seconds"


def _alloc_record(model: str, a: Allocation, t: Any, uniform_s: float) -> dict[str, Any]:
    return {"model": model, "method": a.method, "seconds": a.seconds, "speedup_over_uniform": uniform_s / a.seconds,
            "rounds": a.rounds, "masked": list(a.masked), "solve_seconds": a.solve_seconds, "lanes": list(a.lanes),
            "proven_optimal": a.proven, "bound_seconds": a.bound_seconds,
            **_utilization(t, a.lanes)}


@app.command("run")
def run_cmd(
    model: str = typer.Argument(..., help="model preset or .yaml (e.g. nlpfast-bert)"),
    fpga: str = FPGA_OPT,
    variants: str = typer.Option("base,MP,MP+ZS", "--variants", help="comma-separated designs: base, P, C, F, MP "
                                                                      "(= P+C+F), ZS, joined with '+' (e.g. P+C+ZS)"),
    alloc: str = typer.Option("uniform", "--alloc", help="lanes per operation: " + ", ".join(METHODS)),
    seq: int | None = SEQ_OPT,
    queries: int = QUERIES_OPT,
    skip_rate: float = SKIP_OPT,
    vgen_skip: float = VGEN_OPT,
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Latency per operation, stalls and energy of each design variant (003 Fig. 16 and 17)."""
    outputs = Outputs(json=json_out, csv=csv_out)
    check_choice("--alloc", alloc, METHODS)
    vs = [parse_variant(v) for v in parse_names("--variants", variants)]
    dev, skip = _setup(fpga, skip_rate, vgen_skip)
    spec, seq = _model(model, seq, queries)
    records, summary = [], []
    for v in vs:
        t = op_table(spec, seq, dev, v, skip, queries)
        a = allocate(t, alloc)
        tm = t.timing(np.array(a.lanes))
        e = energy(t, dev, np.array(a.lanes))
        for i, name in enumerate(t.names):
            records.append({"variant": v.name, "operation": name, "unit": t.units[i], "lanes": a.lanes[i],
                            "compute_seconds": float(tm.compute_s[i]) * t.layers,
                            "memory_seconds": float(tm.memory_s[i]) * t.layers,
                            "spill_seconds": float(tm.spill_s[i]) * t.layers,
                            "stall_seconds": float(tm.stall_s[i]) * t.layers,
                            "seconds": float(tm.op_s[i]) * t.layers, "share": float(tm.op_s[i]) * t.layers / tm.seconds})
        summary.append({"variant": v.name, "seconds": tm.seconds, "speedup_over_first": None, "joules": e.joules,
                        "watts": e.watts, **{_unit_field(u): s for u, s in tm.by_unit().items()}, **_utilization(t, a.lanes)})
    for s in summary:
        s["speedup_over_first"] = summary[0]["seconds"] / s["seconds"]
    desc = {"model": spec.name, "seq": seq, "queries": queries, "fpga": dev.name, "variants": [v.name for v in vs],
            "alloc": alloc, "skip_rate": skip.score, "vgen_skip": skip.vgen}
    outputs.write(output.document("fpga run", desc, records, summary={"variants": summary}))
    if outputs.stdout_taken:
        return
    tab = Table(title=f"{spec.name} (s={seq}) on {dev.name}, {alloc} lanes", title_justify="left", show_edge=False)
    unit_names = list(dict.fromkeys(t.units))
    for col in ("variant", "latency", "speed-up", *unit_names, "energy", "power"):
        tab.add_column(col, no_wrap=True)
    for s in summary:
        tab.add_row(s["variant"], units.seconds(s["seconds"]), units.ratio(s["speedup_over_first"]),
                    *(units.seconds(s[_unit_field(u)]) for u in unit_names),
                    units.si(s["joules"], "J"), units.si(s["watts"], "W"))
    out.print(tab)


@app.command("allocate")
def allocate_cmd(
    models: str = typer.Argument(..., help="comma-separated model presets or .yaml files"),
    fpga: str = FPGA_OPT,
    method: str = typer.Option("uniform,slsqp,slsqp+rebalance", "--method",
                               help="comma-separated: " + ", ".join(METHODS) + " (exact: the milp optimum)"),
    variant: str = VARIANT_OPT,
    seq: int | None = SEQ_OPT,
    queries: int = QUERIES_OPT,
    skip_rate: float = SKIP_OPT,
    vgen_skip: float = VGEN_OPT,
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Lanes per operation by uniform parallelism, SLSQP, SLSQP + rebalancing and the exact optimum (003 Fig. 18)."""
    outputs = Outputs(json=json_out, csv=csv_out)
    methods = list(dict.fromkeys(parse_names("--method", method, METHODS)))
    names = list(dict.fromkeys(parse_names("--models", models)))
    v = parse_variant(variant)
    dev, skip = _setup(fpga, skip_rate, vgen_skip)
    records, operations = [], []
    for name in names:
        spec, s = _model(name, seq, queries)
        t = op_table(spec, s, dev, v, skip, queries)
        operations = list(t.names)
        found = {m: allocate(t, m) for m in methods}
        uniform_s = (found["uniform"] if "uniform" in found else allocate(t, "uniform")).seconds
        records += [_alloc_record(spec.name, a, t, uniform_s) | {"seq": s} for a in found.values()]
    desc = {"models": names, "fpga": dev.name, "methods": methods, "variant": v.name, "seq": seq, "queries": queries,
            "skip_rate": skip.score, "vgen_skip": skip.vgen}
    outputs.write(output.document("fpga allocate", desc, records, operations=operations))
    if outputs.stdout_taken:
        return
    tab = Table(title=f"lanes per operation on {dev.name} ({v.name}): {', '.join(operations)}", title_justify="left",
                show_edge=False)
    for col in ("model", "method", "latency", "× uniform", "rounds", "LUT", "FF", "DSP", "BRAM", "solve", "lanes"):
        tab.add_column(col, no_wrap=True)
    for r in records:
        proof = "" if r["proven_optimal"] is not False else f" (unproven; ≥ {units.seconds(r['bound_seconds'])})"
        tab.add_row(r["model"], r["method"] + proof, units.seconds(r["seconds"]), units.ratio(r["speedup_over_uniform"]),
                    str(r["rounds"]), *(units.percent(r[f"{x}_utilization"]) for x in RESOURCES),
                    units.seconds(r["solve_seconds"]), " ".join(map(str, r["lanes"])))
    out.print(tab)


@app.command("cross")
def cross_cmd(
    model: str = typer.Argument(..., help="the model that runs (e.g. nlpfast-bert-f4x)"),
    designed_for: str = typer.Option(..., "--designed-for", help="the model the design was allocated for"),
    fpga: str = FPGA_OPT,
    method: str = typer.Option("slsqp+rebalance", "--method", help="allocation of both designs: " + ", ".join(METHODS)),
    variant: str = VARIANT_OPT,
    skip_rate: float = SKIP_OPT,
    vgen_skip: float = VGEN_OPT,
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """The mismatch penalty: MODEL on the design allocated for another model, against MODEL's own design (003 §VI-D)."""
    outputs = Outputs(json=json_out, csv=csv_out)
    check_choice("--method", method, METHODS)
    v = parse_variant(variant)
    dev, skip = _setup(fpga, skip_rate, vgen_skip)
    run_spec, other = load_model(model), load_model(designed_for)
    c = cross(op_table(run_spec, run_spec.default_seq, dev, v, skip),
              op_table(other, other.default_seq, dev, v, skip), method)
    rec = {"model": run_spec.name, "designed_for": other.name, "method": method, "own_seconds": c.own.seconds,
           "cross_seconds": c.seconds_on_design, "relative_performance": c.relative, "own_lanes": list(c.own.lanes),
           "design_lanes": list(c.designed.lanes)}
    desc = {"model": run_spec.name, "designed_for": other.name, "fpga": dev.name, "method": method, "variant": v.name,
            "skip_rate": skip.score, "vgen_skip": skip.vgen}
    outputs.write(output.document("fpga cross", desc, [rec]))
    if outputs.stdout_taken:
        return
    out.print(f"{run_spec.name} on the {dev.name} design for {other.name}: {units.seconds(c.seconds_on_design)}; "
              f"on its own design: {units.seconds(c.own.seconds)}; {units.ratio(c.relative)} of its own optimum")

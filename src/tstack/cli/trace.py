"""`tstack import-trace`: a torch.profiler Chrome trace (CPU or CUDA) as a measured Breakdown on tstack's labels.

Reading the trace needs no PyTorch: it is JSON (tstack.profiler.chrome).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer
from rich.table import Table

from tstack.cli.common import CSV_OPT, JSON_OPT, Outputs, check_int, console, run_spec
from tstack.models import load_model
from tstack.report import output, units

out = console()


def import_trace(
    trace: Path = typer.Argument(..., help="Chrome trace JSON written by torch.profiler (export_chrome_trace)"),
    model: str = typer.Option(..., "--model", "-m", help="model preset, .yaml, config.json or its folder"),
    mode: str = typer.Option("infer", help="infer | train"),
    batch: int = typer.Option(1, "--batch", "-b"),
    seq: int | None = typer.Option(None, "--seq", "-s", help="sequence length (default: the model's)"),
    precision: str = typer.Option("fp32", help="fp32 | tf32 | fp16-mixed | bf16-mixed"),
    phase: str = typer.Option("prefill", help="prefill | decode"),
    kv_len: int = typer.Option(0, help="tokens already in the KV cache (decode)"),
    execution: str = typer.Option("eager", help="eager | graphs (how the traced run launched its kernels)"),
    attention: str = typer.Option("unfused", help="unfused | sdpa (the traced run's attention)"),
    step: int | None = typer.Option(None, help="ProfilerStep#N to import (default: the last one the trace marks)"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Map a traced iteration's GEMMs onto the predicted ops (labels, M×N×K) and print the measured Breakdown."""
    from tstack.profiler.chrome import import_trace as do_import

    outputs = Outputs(json=json_out, csv=csv_out)
    check_int("--kv-len", kv_len, 0)
    check_int("--step", step, 0)
    spec = load_model(model)
    check_int("--batch", batch)
    check_int("--seq", seq)
    run = run_spec(spec.default_seq, seq, mode=mode, batch=batch, precision=precision, phase=phase, kv_len=kv_len,
                   execution=execution, attention=attention)
    imp = do_import(trace, spec, run, step)
    records = imp.records()
    summary = {"step": imp.step, "step_seconds": imp.step_seconds, "cuda": imp.cuda, "trace_gemms": len(imp.gemms),
               "matched": len(imp.matched), "unmatched": len(imp.unmatched), "missing": len(imp.missing),
               "gemm_seconds": imp.measured.total.seconds}
    run_info = {"model": spec.name, "model_spec": asdict(spec), "spec": asdict(run), "trace": str(trace)}
    outputs.write(output.document("import-trace", run_info, records, summary=summary))
    if outputs.stdout_taken:
        return
    t = Table(title=f"{trace.name}: {imp.step} ({'CUDA kernels' if imp.cuda else 'CPU ops'}), {spec.name}",
              title_justify="left", show_edge=False)
    for col in ("layer", "name", "group", "M×N×K", "batch", "time", "module"):
        t.add_column(col, no_wrap=True)
    for r in records:
        t.add_row(r["layer"], r["name"], r["group"], f"{r['M']}×{r['N']}×{r['K']}", str(r["gemm_batch"]),
                  units.si(r["seconds"], "s"), r["module"])
    out.print(t)
    out.print(f"{len(imp.matched)} of {len(imp.gemms)} traced GEMMs matched ({len(imp.missing)} predicted GEMMs not in "
              f"the trace); GEMM time {units.si(imp.measured.total.seconds, 's')} of a "
              f"{units.si(imp.step_seconds, 's')} step")

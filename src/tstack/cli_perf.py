"""`tstack profile`, `tstack calibrate`, `tstack validate`: the measuring half of the CLI (needs PyTorch).

PyTorch and the profiler are imported inside the commands, so `tstack analyze` works without them.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tstack.api import analyze as analyze_config
from tstack.cli_common import parse_ints, progress
from tstack.errors import SpecError, TstackError
from tstack.hardware import device_to_dict, load_device
from tstack.models import load_model
from tstack.profiler.timing import Plan
from tstack.report import files, table, units
from tstack.report.rows import RowWriter
from tstack.spec import RunSpec

console = Console()
PROFILE_MODES = ("default", "cachestat", "custom")


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise TstackError("this command measures real runs and needs PyTorch: pip install torch==2.13.0 "
                          "(CPU build; see the README for GPUs)") from None


def _runtime(device: str, threads: int | None):
    from tstack.profiler.runtime import RuntimeConfig

    if device not in ("cpu", "cuda"):
        raise SpecError([f"--device={device!r} is not one of cpu, cuda"])
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise TstackError("--device cuda: no CUDA device is visible to PyTorch")
    return RuntimeConfig(device=device, threads=threads or os.cpu_count() or 1)


def profile(
    target: str = typer.Argument(..., help="model preset(s) comma-separated, a model .yaml/config.json, or file.py:function"),
    mode: str = typer.Option("infer", help="infer | train"),
    batch: str = typer.Option("1", "--batch", "-b", help="comma-separated values"),
    seq: str | None = typer.Option(None, "--seq", "-s", help="comma-separated values (default: the model's)"),
    precision: str = typer.Option("fp32", help="comma-separated precisions"),
    optimizer: str = typer.Option("lamb", help="lamb | adam | sgd"),
    threads: int | None = typer.Option(None, help="intra-op threads (default: all cores)"),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu | cuda"),
    profile_mode: str = typer.Option("default", help="default (latency) | cachestat (LLC misses, MPKI) | custom"),
    events: str | None = typer.Option(None, help="custom mode: comma-separated hardware events"),
    input_shape: str = typer.Option("1x128", help="file.py:function targets: input shape, e.g. 1x128"),
    warmup: int = typer.Option(3, help="warm-up runs per kernel"),
    repeats: int = typer.Option(10, help="timed runs per kernel (median reported)"),
    group_by: str | None = typer.Option(None, help="print this grouping instead of the 002 hierarchy"),
    out: Path | None = typer.Option(None, help="rows per op and configuration (.csv, .json or .jsonl), written as they finish"),
    trace: Path | None = typer.Option(None, help="Chrome/Perfetto trace JSON of the measured runs"),
) -> None:
    """Measure every kernel of the workload (NLP-Perf), for every combination of the given configurations."""
    _need_torch()
    if profile_mode not in PROFILE_MODES:
        raise SpecError([f"--profile-mode={profile_mode!r} is not one of {', '.join(PROFILE_MODES)}"])
    if profile_mode == "custom" and not events:
        raise SpecError(["--profile-mode custom needs --events (e.g. cycles,instructions,cache-misses)"])
    cfg = _runtime(device, threads)
    writer = RowWriter(out) if out else None
    if ".py:" in target:
        _profile_module(target, input_shape, cfg, warmup, repeats, group_by, writer, trace)
        return
    from tstack.profiler import counters, memory
    from tstack.profiler.measure import measure
    from tstack.workload.build import build

    models = [load_model(t) for t in target.split(",") if t.strip()]
    seqs = parse_ints("--seq", seq) if seq else None
    runs = [(m, RunSpec(mode=mode, batch=b, seq=s, precision=p, optimizer=optimizer))
            for m in models for b in parse_ints("--batch", batch) for s in (seqs or [m.default_seq])
            for p in [x.strip() for x in precision.split(",") if x.strip()]]
    if profile_mode != "default":
        console.print(counters.describe_support())
    measured = []
    with progress("profile", total=len(runs), unit="configurations") as advance:
        for model, run in runs:
            ops = build(model, run)
            memory.guard(memory.per_op_peak(ops), cfg.device)
            b = measure(model, run, cfg, Plan(warmup=warmup, repeats=repeats))
            extra = _counter_columns(b, cfg, profile_mode, events)
            if writer:
                writer.append(_rows(b, extra))
            measured.append(b)
            advance(1)
    for b in measured:
        table.print_breakdown(b, group_by, console)
    if trace:
        _write_traces(measured, trace)


def _signature(op) -> tuple:  # noqa: ANN001
    return (op.kind, op.name, op.dims, op.dtype)


def _counter_columns(b, cfg, profile_mode: str, events: str | None) -> list[dict]:  # noqa: ANN001
    """Per-op counter columns for cachestat/custom modes (measured once per distinct kernel)."""
    if profile_mode == "default":
        return [{} for _ in b.ops]
    from tstack.profiler import cachestat, counters

    distinct = list({_signature(op): op for op in b.ops}.values())
    if profile_mode == "cachestat":  # one simulator process for all kernels when counters are missing
        stats = cachestat.cachestat_many(distinct, cfg)
        columns = [{"llc_misses": c.llc_misses, "mpki": c.mpki, "warm_llc_misses": c.warm_llc_misses,
                    "warm_mpki": c.warm_mpki, "instructions": c.instructions, "simulated": c.simulated,
                    "reduced": ";".join(f"{k}:{a}->{v}" for k, a, v in c.reduced), "scale": c.scale} for c in stats]
    else:
        names = [e.strip() for e in (events or "").split(",") if e.strip()]
        columns = [counters.count_op_events(op, cfg, names) for op in distinct]
    by_sig = {_signature(op): col for op, col in zip(distinct, columns)}
    return [by_sig[_signature(op)] for op in b.ops]


def _rows(b, extra: list[dict]) -> list[dict]:  # noqa: ANN001
    """One row per op: the configuration (B, S: the run's batch and sequence) and the op's record."""
    s = b.summary()
    config = {"model": s["model"], "device": s["device"], "mode": s["mode"], "B": s["batch"], "S": s["seq"],
              "precision": s["precision"]}
    return [{**config, **rec, **ex} for rec, ex in zip(b.records(), extra)]


def _write_traces(breakdowns: list, path: Path) -> None:
    from tstack.profiler.trace import breakdown_trace, merge_traces, write_trace

    write_trace(merge_traces([breakdown_trace(b) for b in breakdowns]), path)


def _profile_module(target: str, input_shape: str, cfg, warmup: int, repeats: int, group_by: str | None,  # noqa: ANN001
                    writer: RowWriter | None, trace: Path | None) -> None:
    from tstack.profiler.hfmodels import load_builder, random_inputs
    from tstack.profiler.module import profile_module
    from tstack.profiler.trace import profile_trace, write_trace

    module = load_builder(target)
    result = profile_module(module, random_inputs(module, _shape(input_shape)), threads=cfg.threads, warmup=warmup,
                            repeats=repeats)
    if writer:
        writer.append(_rows(result.breakdown, [{} for _ in result.breakdown.ops]))
    console.print(f"forward: {units.seconds(result.wall_s)} wall (median, no profiler); kernels attributed to labels: "
                  f"{units.seconds(result.attributed_s)}; unattributed: {units.seconds(result.unattributed_s)}")
    for note in result.notes:
        console.print(f"note: {note}")
    table.print_breakdown(result.breakdown, group_by, console)
    if trace:
        write_trace(profile_trace(result), trace)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise SpecError([f"--input-shape={text!r} must look like 1x128"]) from None
    if not dims or min(dims) < 1:
        raise SpecError([f"--input-shape={text!r} needs positive sizes"])
    return dims


def calibrate(
    out: Path = typer.Option(..., "--out", "-o", help="device file to write (.yaml)"),
    threads: int | None = typer.Option(None, help="intra-op threads (default: all cores)"),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu | cuda"),
    name: str = typer.Option("calibrated", help="device name inside the file"),
    repeats: int = typer.Option(5, help="timed runs per micro-benchmark"),
    rounds: int = typer.Option(2, help="passes over the grid, each in a new order; a point keeps its fastest pass's median"),
    quick: bool = typer.Option(False, help="a tiny grid (seconds, for a smoke test; not accurate)"),
) -> None:
    """Fit this machine's device file from micro-benchmarks (GEMMs, memory bandwidth, element-wise, reductions)."""
    _need_torch()
    import yaml

    from tstack.profiler.calibrate import Grid, grid_size
    from tstack.profiler.calibrate import calibrate as run_calibration

    if out.suffix not in (".yaml", ".yml"):
        raise SpecError([f"--out={str(out)!r} must end in .yaml"])
    Plan(repeats=repeats, rounds=rounds)  # checks both
    cfg = _runtime(device, threads)
    grid = Grid.quick() if quick else Grid()
    with files.all_or_nothing([out]) as tmp:  # checks the folder first; an interrupted run writes nothing
        with progress("calibrate", total=rounds * grid_size(grid), unit="grid points") as advance:
            dev = run_calibration(cfg, grid, name=name, repeats=repeats, rounds=rounds, progress=advance)
        tmp[out].write_text(yaml.safe_dump(device_to_dict(dev), sort_keys=False, width=120))
    console.print(f"wrote {out}: matrix fp32 {units.si(dev.peak('matrix', 'fp32'), 'FLOP/s')}, "
                  f"vector fp32 {units.si(dev.peak('vector', 'fp32'), 'FLOP/s')}, "
                  f"bandwidth {units.si(dev.memory_bandwidth, 'B/s')}, overhead {units.seconds(dev.launch_overhead)}, "
                  f"{len(dev.calibration.tables)} kernel tables at {cfg.threads} threads")


def validate(
    model: str = typer.Argument(..., help="model preset, .yaml or config.json"),
    device: str = typer.Option(..., "--device", "-d", help="device file from `tstack calibrate` (or a preset)"),
    mode: str = typer.Option("infer", help="infer | train"),
    batch: str = typer.Option("1", "--batch", "-b", help="comma-separated values"),
    seq: str | None = typer.Option(None, "--seq", "-s", help="comma-separated values (default: the model's)"),
    threads: int | None = typer.Option(None, help="threads (default: the device file's calibration threads)"),
    warmup: int = typer.Option(3),
    repeats: int = typer.Option(10),
    rounds: int = typer.Option(3, help="passes over the workload's kernels; each keeps its fastest pass's median"),
    out: Path | None = typer.Option(None, help="per-op predicted vs measured rows (.csv or .json)"),
    plot: Path | None = typer.Option(None, help="figure of predicted vs measured per op (.png, .svg, .pdf)"),
) -> None:
    """Measure and predict the same workload; print per-op and end-to-end error."""
    _need_torch()
    from tstack.profiler import memory
    from tstack.profiler.measure import measure
    from tstack.profiler.validate import Validation

    plan = Plan(warmup=warmup, repeats=repeats, rounds=rounds)
    spec, dev = load_model(model), load_device(device)
    if plot:
        files.check_figure_format("--plot", plot)
    if out and out.suffix not in (".csv", ".json"):
        raise SpecError([f"--out={str(out)!r} must end in .csv or .json"])
    cal_threads = dev.calibration.threads if dev.calibration else None
    cfg = _runtime("cuda" if dev.kind == "gpu" else "cpu", threads or cal_threads)
    if cal_threads and cfg.threads != cal_threads:
        console.print(f"note: {dev.name} was calibrated at {cal_threads} threads; measuring at {cfg.threads}")
    results = []
    for b, s in itertools.product(parse_ints("--batch", batch), parse_ints("--seq", seq) if seq else [spec.default_seq]):
        run = RunSpec(mode=mode, batch=b, seq=s)
        predicted = analyze_config(spec, run, dev)
        memory.guard(memory.per_op_peak(predicted.ops), cfg.device)
        results.append(Validation(predicted, measure(spec, run, cfg, plan)))
    _print_validation(results)
    records = [{**{k: v.summary()[k] for k in ("model", "mode", "batch", "seq")}, **r} for v in results for r in v.records()]
    with files.all_or_nothing([out, plot]) as tmp:
        if out:
            import pandas as pd

            df = pd.DataFrame.from_records(records)
            tmp[out].write_text(df.to_csv(index=False) if out.suffix == ".csv" else df.to_json(orient="records", indent=1))
        if plot:
            from tstack.report import plots  # matplotlib only when a figure is asked for

            plots.validation_plot(records, tmp[plot], f"{spec.name} on {dev.name}", fmt=plot.suffix.lstrip(".").lower())


def _print_validation(results: list) -> None:
    t = Table(title="predicted vs measured", title_justify="left", show_edge=False)
    for col in ("config", "ops", "measured", "predicted", "end-to-end error", "median per-op error"):
        t.add_column(col, justify="right")
    for v in results:
        s = v.summary()
        t.add_row(f"{s['model']} {s['mode']} B={s['batch']} S={s['seq']}", str(s["ops"]), units.seconds(s["measured_s"]),
                  units.seconds(s["predicted_s"]), f"{100 * s['end_to_end_error']:+.1f}%", f"{100 * s['median_op_error']:.1f}%")
    console.print(t)
    for v in results:
        g = Table(title=f"by 002 group: {v.summary()['model']} B={v.summary()['batch']} S={v.summary()['seq']}",
                  title_justify="left", show_edge=False)
        for col in ("group", "measured", "predicted", "error"):
            g.add_column(col, justify="right")
        for name, (p, m) in v.group_errors("group").items():
            g.add_row(name, units.seconds(m), units.seconds(p), f"{100 * (p - m) / m:+.1f}%")
        console.print(g)

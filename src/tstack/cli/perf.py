"""`tstack profile`, `tstack calibrate`, `tstack validate`: the measuring half of the CLI (needs PyTorch).

PyTorch and the profiler are imported inside the commands, so `tstack analyze` works without them.

Every command checks its output paths and options before any work, probes the host before and after the work
(``profiler.probe``: load average and a reference GEMM) and records the probes in its JSON; a slow or busy host
is said in one warning line. Progress counts kernels (profile, validate) or grid points (calibrate).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tstack.api import analyze as analyze_config
from tstack.cli.common import (
    CSV_OPT,
    JSON_OPT,
    Outputs,
    check_choice,
    check_int,
    console,
    duration,
    need_torch,
    note,
    parse_ints,
    parse_names,
    progress,
)
from tstack.errors import SpecError, TstackError
from tstack.hardware.device import device_to_dict, load_device
from tstack.loader import check_name
from tstack.models import load_model
from tstack.report import output, units
from tstack.report.rows import SUFFIXES, RowWriter
from tstack.spec import ATTENTIONS, PRECISIONS, RunSpec

out = console()
PROFILE_MODES = ("default", "cachestat", "custom")
MAX_THREADS = 4096


def _runtime(device: str, threads: int | None):
    from tstack.profiler.runtime import RuntimeConfig

    if device not in ("cpu", "cuda"):
        raise SpecError([f"--device={device[:40]!r} is not one of cpu, cuda"])
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise TstackError("--device cuda: no CUDA device is visible to PyTorch")
    return RuntimeConfig(device=device, threads=threads or os.cpu_count() or 1)


def _plan(warmup: int, repeats: int, rounds: int = 1):
    from tstack.profiler.timing import TimingPlan

    check_int("--warmup", warmup, 0, 1000)
    check_int("--repeats", repeats, 1, 10_000)
    check_int("--rounds", rounds, 1, 100)
    return TimingPlan(warmup=warmup, repeats=repeats, rounds=rounds)


def _probe(cfg) -> dict[str, Any]:
    from tstack.profiler.probe import probe

    return probe(cfg)


def _probe_section(before: dict, after: dict | None, cfg, calibrated: dict | None = None) -> dict[str, Any]:
    """Probes before/after (and the calibration's own), the warning line (printed here, once) or None."""
    from tstack.profiler.probe import check

    warning = check(before, after, cfg.threads, calibrated)
    if warning:
        note(warning)
    return {"before": before, "after": after, "calibration": calibrated, "warning": warning}


def _measure(spec, run, cfg, plan, advance):
    """Measured Breakdown and the Timing of each op (for the spread), progress per kernel."""
    from tstack.breakdown import Breakdown
    from tstack.profiler import memory
    from tstack.profiler.measure import measure_ops
    from tstack.workload.build import build

    ops = build(spec, run)
    memory.guard(memory.per_op_peak(ops), cfg.device)
    m = measure_ops(ops, cfg, plan, progress=lambda done, total, op: advance(1))
    return Breakdown(model=spec, run=run, device=cfg.short_name, ops=m.ops, costs=m.costs), m.timings


def _kernels(ops) -> int:
    from tstack.profiler.measure import signature

    return len({signature(op) for op in ops})


# ---------------------------------------------------------------------------------------------------- profile

def profile(
    target: str = typer.Argument(..., help="model preset(s) comma-separated, a model .yaml/config.json, or file.py:function"),
    mode: str = typer.Option("infer", help="infer | train"),
    batch: str = typer.Option("1", "--batch", "-b", help="comma-separated values"),
    seq: str | None = typer.Option(None, "--seq", "-s", help="comma-separated values (default: the model's)"),
    precision: str = typer.Option("fp32", help="comma-separated precisions"),
    optimizer: str = typer.Option("lamb", help="lamb | adam | sgd"),
    attention: str = typer.Option("unfused", help="unfused | sdpa (the fused attention kernel: "
                                                  "F.scaled_dot_product_attention)"),
    threads: int | None = typer.Option(None, help="intra-op threads (default: all cores)"),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu | cuda"),
    profile_mode: str = typer.Option("default", help="default (latency) | cachestat (LLC misses, MPKI) | custom"),
    events: str | None = typer.Option(None, help="custom mode: comma-separated hardware events"),
    input_shape: str = typer.Option("1x128", help="file.py:function targets: input shape, e.g. 1x128"),
    warmup: int = typer.Option(3, help="warm-up runs per kernel"),
    repeats: int = typer.Option(10, help="timed runs per kernel (median reported, with p10 and p90)"),
    group_by: str | None = typer.Option(None, help="print this grouping instead of the 002 hierarchy"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
    out: Path | None = typer.Option(None, help="rows per op, appended as each configuration finishes (.csv, .json or "
                                               ".jsonl; locked: one run per file)"),
    trace: Path | None = typer.Option(None, help="Chrome/Perfetto trace JSON of the measured runs"),
) -> None:
    """Measure every kernel of the workload (NLP-Perf), for every combination of the given configurations."""
    outputs = Outputs(json=json_out, csv=csv_out, out=out, trace=trace)
    if out is not None and out.suffix not in SUFFIXES:
        raise SpecError([f"--out={str(out)!r} must end in {', '.join(SUFFIXES)}"])
    check_int("--threads", threads, 1, MAX_THREADS)
    plan = _plan(warmup, repeats)
    if profile_mode not in PROFILE_MODES:
        raise SpecError([f"--profile-mode={profile_mode[:40]!r} is not one of {', '.join(PROFILE_MODES)}"])
    if profile_mode == "custom" and not events:
        raise SpecError(["--profile-mode custom needs --events (e.g. cycles,instructions,cache-misses)"])
    if events is not None:
        _check_events(events, profile_mode)
    shape = _shape(input_shape)
    if group_by is not None:
        from tstack.breakdown import resolve_key

        resolve_key(group_by)
    check_choice("--attention", attention, ATTENTIONS)
    need_torch()
    cfg = _runtime(device, threads)
    options = {"device": device, "threads": cfg.threads, "warmup": plan.warmup, "repeats": plan.repeats,
               "rounds": plan.rounds, "profile_mode": profile_mode, "events": events, "group_by": group_by}
    if ".py:" in target:
        _profile_module(target, shape, cfg, plan, group_by, outputs, out, trace, options)
        return
    from tstack.workload.build import build

    models = [load_model(t) for t in target.split(",") if t.strip()]
    if not models:
        raise SpecError([f"target={target[:40]!r} names no model"])
    seqs = parse_ints("--seq", seq) if seq is not None else None
    precisions = parse_names("--precision", precision, PRECISIONS)
    runs = [(m, RunSpec(mode=mode, batch=b, seq=s, precision=p, optimizer=optimizer, attention=attention))
            for m in models for b in parse_ints("--batch", batch) for s in (seqs or [m.default_seq]) for p in precisions]
    workloads = [build(m, r) for m, r in runs]  # every configuration checked before any is measured
    from tstack.profiler import memory

    for ops in workloads:
        memory.guard(memory.per_op_peak(ops), cfg.device)
    total = sum(_kernels(ops) * plan.rounds + (_kernels(ops) if profile_mode != "default" else 0) for ops in workloads)
    if profile_mode != "default":
        from tstack.profiler import counters

        note(counters.describe_support())
    writer = RowWriter(out) if out else None
    try:
        note(f"profile: {len(runs)} configuration{'s' if len(runs) > 1 else ''}, {total} kernel measurements on "
             f"{cfg.threads} thread{'s' if cfg.threads > 1 else ''}")
        before = _probe(cfg)
        measured, records = [], []
        with progress("profile", total=total, unit="kernels") as advance:
            for model, run in runs:
                b, timings = _measure(model, run, cfg, plan, advance)
                extra = _counter_columns(b, cfg, profile_mode, events, advance)
                rows = _rows(b, timings, extra)
                if writer:
                    writer.append(rows)
                measured.append(b)
                records += rows
        probes = _probe_section(before, _probe(cfg), cfg)
    finally:
        if writer:
            writer.close()
    run_info = {"targets": [m.name for m in models], "model_specs": {m.name: asdict(m) for m in models},
                "configurations": [{"model": m.name, "spec": asdict(r)} for m, r in runs],
                "mode": mode, "batch": parse_ints("--batch", batch), "seq": seqs, "precision": precisions,
                "optimizer": optimizer, **options, "runtime": cfg.short_name, "host": _host()}
    doc = output.document("profile", run_info, records, summary={"configurations": [_summary(b) for b in measured]},
                          probe=probes)
    extra = {"--trace": _trace_writer(measured)} if trace else None
    outputs.write(doc, extra=extra)
    if outputs.stdout_taken:
        return
    for b in measured:
        print_measured(b, group_by)


def _host() -> dict[str, Any]:
    from tstack.profiler.probe import host

    return host()


def _counter_columns(b, cfg, profile_mode: str, events: str | None, advance) -> list[dict]:
    """Per-op counter columns for cachestat/custom modes (measured once per distinct kernel)."""
    if profile_mode == "default":
        return [{} for _ in b.ops]
    from tstack.profiler import cachestat, counters
    from tstack.profiler.measure import signature as _signature

    distinct = list({_signature(op): op for op in b.ops}.values())  # one count per kernel, as in the timing
    if profile_mode == "cachestat":  # one simulator process for all kernels when counters are missing
        stats = cachestat.cachestat_many(distinct, cfg)
        advance(len(distinct))
        columns = [{"llc_misses": c.llc_misses, "mpki": c.mpki, "warm_llc_misses": c.warm_llc_misses,
                    "warm_mpki": c.warm_mpki, "instructions": c.instructions, "simulated": c.simulated,
                    "reduced": ";".join(f"{k}:{a}->{v}" for k, a, v in c.reduced), "scale": c.scale} for c in stats]
    else:
        names = [e.strip() for e in (events or "").split(",") if e.strip()]
        columns = []
        for op in distinct:
            columns.append(counters.count_op_events(op, cfg, names))
            advance(1)
    by_sig = {_signature(op): col for op, col in zip(distinct, columns)}
    return [by_sig[_signature(op)] for op in b.ops]


def _measured_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A measured op's record: no bound or utilization (a measurement has no ideal time), no infinite intensity."""
    rec = dict(rec)
    rec["bound"] = None
    rec["utilization"] = None
    if not rec.get("bytes"):
        rec["intensity_flop_per_byte"] = None
    rec["flop_per_second"] = rec["flops"] / rec["seconds"] if rec.get("flops") and rec.get("seconds") else None
    return rec


def _rows(b, timings, extra: list[dict]) -> list[dict]:
    """One row per op: the configuration (the run's batch and seq), the op's record (its GEMM batch is
    ``gemm_batch``), the spread of its samples (seconds per call: median, p10, p90) and counter columns."""
    r = b.run
    config = {"model": b.model.name, "device": b.device, "mode": r.mode, "batch": r.batch, "seq": r.seq,
              "precision": r.precision}
    return [{**config, **_measured_record(rec), "call_seconds": t.median, "call_p10_seconds": t.p10,
             "call_p90_seconds": t.p90, "samples": t.repeats, "calls_per_sample": t.inner, **ex}
            for rec, t, ex in zip(b.records(), timings, extra)]


def _summary(b) -> dict[str, Any]:
    s = b.summary()
    s.pop("utilization", None)
    s["flop_per_second"] = s["flops"] / s["seconds"] if s["seconds"] else None
    return s


def _trace_writer(breakdowns: list):
    from tstack.profiler.trace import breakdown_trace, merge_traces

    trace = merge_traces([breakdown_trace(b) for b in breakdowns])
    return lambda path: Path(path).write_text(json.dumps(trace, allow_nan=False, separators=(",", ":")), encoding="utf-8")


def print_measured(b, group_by: str | None, header: str | None = None) -> None:
    """Header line and the 002 hierarchy (or one group-by table) of a measured Breakdown.

    Measured costs have no ideal time, so there is no utilization column; the achieved FLOP/s is shown instead,
    and '-' where a value does not apply (no FLOPs, no bytes).
    """
    from tstack.workload.build import OPTIMIZER_GROUP

    t, r = b.total, b.run
    shape = f"decode kv={r.kv_len}" if r.phase == "decode" else f"S={r.seq}"
    out.print(header or f"{b.model.name} {r.mode} B={r.batch} {shape} {r.precision} on {b.device}: "
              f"{units.seconds(t.seconds)} per iteration (measured), {units.si(t.flops, 'FLOP')}, "
              f"{units.si(t.bytes, 'B')}, {t.kernels} kernels")
    levels = [(f"by {group_by}", b.group_by(group_by))] if group_by is not None else b.hierarchy()
    names = {"optimizer": f"optimizer ({OPTIMIZER_GROUP[r.optimizer]})"}
    for title, groups in levels:
        g = Table(title=title, title_justify="left", show_edge=False)
        for col, justify in (("", "left"), ("time", "right"), ("share", "right"), ("FLOP", "right"),
                             ("bytes", "right"), ("FLOP/B", "right"), ("FLOP/s", "right"), ("kernels", "right")):
            g.add_column(col, justify=justify)
        for name, c in sorted(groups.items(), key=lambda kv: -kv[1].seconds):
            g.add_row(names.get(name, name), units.seconds(c.seconds),
                      units.percent(c.seconds / t.seconds) if t.seconds > 0 else "-",
                      units.si(c.flops, "") if c.flops else "-", units.si(c.bytes, "B") if c.bytes else "-",
                      f"{c.flops / c.bytes:.1f}" if c.bytes and c.flops else "-",
                      units.si(c.flops / c.seconds, "") if c.flops and c.seconds > 0 else "-", str(c.kernels))
        out.print(g)


def _profile_module(target: str, shape: tuple[int, ...], cfg, plan, group_by: str | None, outputs: Outputs,
                    rows_path: Path | None, trace: Path | None, options: dict) -> None:
    from tstack.profiler.hfmodels import load_builder, random_inputs
    from tstack.profiler.module import profile_module
    from tstack.profiler.trace import profile_trace

    module = load_builder(target)
    writer = RowWriter(rows_path) if rows_path else None
    try:
        before = _probe(cfg)
        with progress("profile", total=1, unit="modules") as advance:
            result = profile_module(module, random_inputs(module, shape), threads=cfg.threads, warmup=plan.warmup,
                                    repeats=plan.repeats)
            advance(1)
        probes = _probe_section(before, _probe(cfg), cfg)
        b = result.breakdown
        r = b.run
        config = {"model": b.model.name, "device": b.device, "mode": r.mode, "batch": r.batch, "seq": r.seq,
                  "precision": r.precision}
        records = [{**config, **_measured_record(rec)} for rec in b.records()]
        if writer:
            writer.append(records)
    finally:
        if writer:
            writer.close()
    outside = max(0.0, result.unattributed_profiled_s)
    summary = {**_summary(b), "wall_seconds": result.wall_s, "profiled_seconds": result.profiled_s,
               "attributed_seconds": result.attributed_s, "outside_ops_seconds": outside, "notes": list(result.notes)}
    run_info = {"target": target, "input_shape": list(shape), "model": b.model.name, "spec": asdict(r), **options,
                "runtime": cfg.short_name, "host": _host()}
    doc = output.document("profile", run_info, records, summary=summary, probe=probes)
    trace_obj = profile_trace(result)
    extra = {"--trace": lambda path: Path(path).write_text(json.dumps(trace_obj, allow_nan=False), encoding="utf-8")}
    outputs.write(doc, extra=extra if trace else None)
    if outputs.stdout_taken:
        return
    out.print(f"forward: {units.seconds(result.wall_s)} wall (median, no profiler); kernels attributed to labels: "
              f"{units.seconds(result.attributed_s)} (their medians under the profiler); outside them in a profiled "
              f"step: {units.seconds(outside)}")
    for line in result.notes:
        out.print(f"note: {line}")
    print_measured(b, group_by)


EVENT_NAME = re.compile(r"^[A-Za-z0-9_.:/=,-]{1,64}$")


def _check_events(events: str, profile_mode: str) -> None:
    """--events: perf event names, and only with --profile-mode custom."""
    if profile_mode != "custom":
        raise SpecError([f"--events applies to --profile-mode custom only (got --profile-mode {profile_mode})"])
    names = [e.strip() for e in events.split(",") if e.strip()]
    bad = [e for e in names if not EVENT_NAME.match(e)]
    if not names or bad:
        raise SpecError([f"--events={events[:60]!r}: give comma-separated perf event names such as "
                         "cycles,instructions,cache-misses"])


MAX_INPUT_ELEMENTS = 1 << 24


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise SpecError([f"--input-shape={text[:40]!r} must look like 1x128"]) from None
    if not dims or min(dims) < 1 or len(dims) > 4 or max(dims) > 1 << 20:
        raise SpecError([f"--input-shape={text[:40]!r} needs 1 to 4 sizes in [1, {1 << 20}]"])
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise SpecError([f"--input-shape={text[:40]!r} has {math.prod(dims):,} elements; at most {MAX_INPUT_ELEMENTS:,} "
                         "(a module's activations grow with them; a run that still does not fit ends in one "
                         "out-of-memory line)"])
    return dims


# ---------------------------------------------------------------------------------------------------- calibrate

def calibrate(
    out_path: Path = typer.Option(..., "--out", "-o", help="device file to write (.yaml)"),
    threads: int | None = typer.Option(None, help="intra-op threads (default: all cores)"),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu | cuda"),
    name: str = typer.Option("calibrated", help="device name inside the file"),
    repeats: int = typer.Option(5, help="timed runs per micro-benchmark"),
    rounds: int = typer.Option(2, help="passes over the grid, each in a new order; a point keeps its fastest pass's median"),
    quick: bool = typer.Option(False, help="a tiny grid (seconds, for a smoke test; not accurate)"),
    json_out: Path | None = JSON_OPT,
) -> None:
    """Fit this machine's device file from micro-benchmarks (GEMMs, memory bandwidth, element-wise, reductions)."""
    outputs = Outputs(json=json_out, out=out_path)
    if out_path.suffix not in (".yaml", ".yml"):
        raise SpecError([f"--out={str(out_path)!r} must end in .yaml"])
    check_name("--name", name)
    check_int("--threads", threads, 1, MAX_THREADS)
    check_int("--repeats", repeats, 1, 10_000)
    check_int("--rounds", rounds, 1, 100)
    need_torch()
    import yaml

    from tstack.profiler.calibrate import Grid, estimate_seconds, grid_size
    from tstack.profiler.calibrate import calibrate as run_calibration

    cfg = _runtime(device, threads)
    grid = Grid.quick() if quick else Grid()
    points = grid_size(grid)
    before = _probe(cfg)
    expected = estimate_seconds(grid, cfg, rounds, repeats, before["reference_flop_per_second"])
    note(f"calibrate: {points} grid points × {rounds} round{'s' if rounds > 1 else ''} = {points * rounds} "
         f"measurements on {cfg.threads} thread{'s' if cfg.threads > 1 else ''}; expected "
         f"{'about ' + duration(expected) if expected >= 1 else 'under a second'} on this host (reference GEMM at "
         f"{units.si(before['reference_flop_per_second'], 'FLOP/s')}, load average {before['load_1min']:.1f})")
    with progress("calibrate", total=rounds * points, unit="grid points") as advance:
        dev = run_calibration(cfg, grid, name=name, repeats=repeats, rounds=rounds, progress=advance)
    after = _probe(cfg)
    probes = _probe_section(before, after, cfg)
    provenance = {"grid": "quick" if quick else "full", "grid_points": points, "rounds": rounds, "repeats": repeats,
                  "threads": cfg.threads, **_host(), "probe_before": before, "probe_after": after}
    dev = replace(dev, calibration=replace(dev.calibration, provenance=provenance))
    text = yaml.safe_dump(device_to_dict(dev), sort_keys=False, width=120)
    records = [{"table": k, "axes": len(t.axes), "points": len(t.seconds), "min_seconds": min(t.seconds),
                "max_seconds": max(t.seconds)} for k, t in dev.calibration.tables.items()]
    summary = {"name": dev.name, "matrix_fp32_flop_per_second": dev.peak("matrix", "fp32"),
               "vector_fp32_flop_per_second": dev.peak("vector", "fp32"), "memory_bytes_per_second": dev.memory_bandwidth,
               "launch_overhead_seconds": dev.launch_overhead, "tables": len(dev.calibration.tables),
               "expected_seconds": expected}
    run_info = {"out": str(out_path), "name": name, "device": device, "threads": cfg.threads, "repeats": repeats,
                "rounds": rounds, "quick": quick, "grid": provenance["grid"], "grid_points": points,
                "environment": dev.calibration.environment, "host": _host()}
    doc = output.document("calibrate", run_info, records, summary=summary, probe=probes)
    outputs.write(doc, extra={"--out": lambda path: Path(path).write_text(text)})
    if outputs.stdout_taken:
        return
    out.print(f"wrote {out_path}: matrix fp32 {units.si(dev.peak('matrix', 'fp32'), 'FLOP/s')}, "
              f"vector fp32 {units.si(dev.peak('vector', 'fp32'), 'FLOP/s')}, "
              f"bandwidth {units.si(dev.memory_bandwidth, 'B/s')}, overhead {units.seconds(dev.launch_overhead)}, "
              f"{len(dev.calibration.tables)} kernel tables at {cfg.threads} threads")


# ---------------------------------------------------------------------------------------------------- validate

def validate(
    model: str = typer.Argument(..., help="model preset, .yaml or config.json"),
    device: str = typer.Option(..., "--device", "-d", help="device file from `tstack calibrate` (or a preset)"),
    mode: str = typer.Option("infer", help="infer | train"),
    batch: str = typer.Option("1", "--batch", "-b", help="comma-separated values"),
    seq: str | None = typer.Option(None, "--seq", "-s", help="comma-separated values (default: the model's)"),
    threads: int | None = typer.Option(None, help="threads (default: the device file's calibration threads)"),
    warmup: int = typer.Option(3, help="warm-up runs per kernel"),
    repeats: int = typer.Option(10, help="timed runs per kernel (median)"),
    rounds: int = typer.Option(3, help="passes over the workload's kernels; each keeps its fastest pass's median"),
    trace: Path | None = typer.Option(None, "--trace", help="compare with this torch.profiler Chrome trace (its GEMMs "
                                                           "and its step time) instead of measuring"),
    precision: str = typer.Option("fp32", help="fp32 | tf32 | fp16-mixed | bf16-mixed (with --trace: the traced run's)"),
    execution: str = typer.Option("eager", help="eager | graphs (with --trace: how the traced run launched kernels)"),
    attention: str = typer.Option("unfused", help="unfused | sdpa (with --trace: the traced run's attention)"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
    plot: Path | None = typer.Option(None, "--plot", help="figure of predicted vs measured per op (.png, .svg, .pdf)"),
) -> None:
    """Measure and predict the same workload (or read a trace of it); print per-op and end-to-end error."""
    outputs = Outputs(json=json_out, csv=csv_out, plot=plot)
    check_int("--threads", threads, 1, MAX_THREADS)
    plan = _plan(warmup, repeats, rounds)
    spec, dev = load_model(model), load_device(device)
    configs = [RunSpec(mode=mode, batch=b, seq=s, precision=precision, execution=execution, attention=attention)
               for b in parse_ints("--batch", batch)
               for s in (parse_ints("--seq", seq) if seq is not None else [spec.default_seq])]
    predictions = [analyze_config(spec, run, dev) for run in configs]  # every configuration checked first
    if trace is not None:
        if len(configs) > 1:
            raise SpecError([f"--trace holds one run: give one --batch and one --seq (got {len(configs)} "
                             "configurations)"])
        _validate_trace(trace, predictions[0], dev, outputs, device)
        return
    need_torch()
    cal = dev.calibration
    cal_threads = cal.threads if cal else None
    cfg = _runtime("cuda" if dev.kind == "gpu" else "cpu", threads or cal_threads)
    from tstack.profiler import memory
    from tstack.profiler.probe import calibration_reference
    from tstack.profiler.validate import Validation

    for p in predictions:
        memory.guard(memory.per_op_peak(p.ops), cfg.device)
    if cal is not None and cal.quick:
        note(f"warning: {device[:80]} was made by `tstack calibrate --quick` (a smoke-test grid): its predictions are "
             "not accurate; calibrate without --quick to validate")
    if cal_threads and cfg.threads != cal_threads:
        note(f"note: {dev.name} was calibrated at {cal_threads} threads; measuring at {cfg.threads}")
    total = sum(_kernels(p.ops) for p in predictions) * plan.rounds
    note(f"validate: {len(predictions)} configuration{'s' if len(predictions) > 1 else ''}, {total} kernel "
         f"measurements ({plan.rounds} round{'s' if plan.rounds > 1 else ''}) on {cfg.threads} "
         f"thread{'s' if cfg.threads > 1 else ''}")
    before = _probe(cfg)
    results = []
    with progress("validate", total=total, unit="kernels") as advance:
        for predicted in predictions:
            measured, _ = _measure(spec, predicted.run, cfg, plan, advance)
            results.append(Validation(predicted, measured))
    probes = _probe_section(before, _probe(cfg), cfg, calibration_reference(cal.provenance) if cal else None)
    records = []
    for v in results:
        r = v.predicted.run
        config = {"model": spec.name, "mode": r.mode, "batch": r.batch, "seq": r.seq, "precision": r.precision}
        records += [{**config, **rec} for rec in v.records()]
    run_info = {"model": spec.name, "model_spec": asdict(spec), "configurations": [asdict(r) for r in configs],
                "mode": mode, "batch": parse_ints("--batch", batch), "seq": [r.seq for r in configs],
                "device": dev.name, "device_file": device, "calibration": dict(cal.provenance) if cal else None,
                "calibration_threads": cal_threads, "threads": cfg.threads, "warmup": plan.warmup,
                "repeats": plan.repeats, "rounds": plan.rounds, "runtime": cfg.short_name, "host": _host()}
    doc = output.document("validate", run_info, records, summary={"configurations": [v.summary() for v in results]},
                          probe=probes)

    def figure(path: Path) -> None:
        from tstack.report import plots  # matplotlib only when a figure is asked for

        points = [{"group": r["group"], "measured_s": r["measured_seconds"], "predicted_s": r["predicted_seconds"]}
                  for r in records]
        plots.validation_plot(points, path, f"{spec.name} on {dev.name}", fmt=outputs.plot_format)

    outputs.write(doc, figure=figure)
    if not outputs.stdout_taken:
        _print_validation(results)


def _validate_trace(trace: Path, predicted: Any, dev: Any, outputs: Outputs, device: str) -> None:
    """validate --trace: the trace's GEMMs against their predictions, and its step time against the whole prediction."""
    from tstack.breakdown import Breakdown
    from tstack.costmodel.backend import cost_workload
    from tstack.profiler.chrome import import_trace
    from tstack.profiler.validate import Validation

    spec, run = predicted.model, predicted.run
    imp = import_trace(trace, spec, run, device=dev.name)
    ops, costs = cost_workload(imp.measured.ops, dev)
    v = Validation(Breakdown(spec, run, dev.name, ops, costs), imp.measured)
    config = {"model": spec.name, "mode": run.mode, "batch": run.batch, "seq": run.seq, "precision": run.precision}
    records = [{**config, **rec} for rec in v.records()]
    end_to_end = (predicted.total.seconds - imp.step_seconds) / imp.step_seconds
    summary = {**v.summary(), "step": imp.step, "step_seconds": imp.step_seconds, "predicted_step_seconds":
               predicted.total.seconds, "step_error": end_to_end, "unmatched_trace_gemms": len(imp.unmatched),
               "missing_gemms": len(imp.missing)}
    run_info = {"model": spec.name, "model_spec": asdict(spec), "configurations": [asdict(run)], "device": dev.name,
                "device_file": device, "trace": str(trace), "threads": 0, "warmup": 0, "repeats": 0, "rounds": 0,
                "host": _host()}
    outputs.write(output.document("validate", run_info, records, summary={"configurations": [summary]}))
    if not outputs.stdout_taken:
        _print_validation([v])
        out.print(f"step {imp.step}: predicted {units.si(predicted.total.seconds, 's')}, traced "
                  f"{units.si(imp.step_seconds, 's')} ({_error(predicted.total.seconds, imp.step_seconds)}); "
                  f"{len(imp.matched)} GEMMs compared, {len(imp.unmatched)} traced GEMMs unmatched")


def _error(p: float, m: float) -> str:
    return f"{100 * (p - m) / m:+.1f}%" if m > 0 else "-"


def _print_validation(results: list) -> None:
    t = Table(title="predicted vs measured", title_justify="left", show_edge=False)
    for col in ("config", "ops", "measured", "predicted", "end-to-end error", "median per-op error"):
        t.add_column(col, justify="right")
    for v in results:
        s = v.summary()
        t.add_row(f"{s['model']} {s['mode']} B={s['batch']} S={s['seq']}", str(s["ops"]),
                  units.seconds(s["measured_seconds"]), units.seconds(s["predicted_seconds"]),
                  _error(s["predicted_seconds"], s["measured_seconds"]), f"{100 * s['median_op_error']:.1f}%")
    out.print(t)
    for v in results:
        s = v.summary()
        g = Table(title=f"by 002 group: {s['model']} B={s['batch']} S={s['seq']}", title_justify="left", show_edge=False)
        for col in ("group", "measured", "predicted", "error"):
            g.add_column(col, justify="right")
        for name, (p, m) in v.group_errors("group").items():
            g.add_row(name, units.seconds(m), units.seconds(p), _error(p, m))
        out.print(g)

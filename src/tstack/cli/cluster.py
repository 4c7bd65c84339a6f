"""`tstack cluster`: multi-device training (data, tensor, pipeline, sequence parallelism, recomputation, ZeRO).

`tstack cluster MODEL ...` runs the `run` command (a first argument that is not a command name is taken as the model):
one layout (or one per --overlap value), per device: seconds per iteration by component and 002 group, model TFLOP/s
(Megatron's formula, costmodel.cluster), memory. `tstack cluster search MODEL ...` ranks every legal layout that fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tstack.cli.common import (
    ATTENTION_OPT,
    CSV_OPT,
    EXECUTION_OPT,
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
from tstack.costmodel.cluster import OVERLAP, RECOMPUTE, ClusterResult, Layout, evaluate
from tstack.errors import SpecError
from tstack.hardware.device import DeviceSpec, load_device
from tstack.hardware.network import load_network, network_presets
from tstack.models import load_model
from tstack.parallel import EXECUTORS
from tstack.report import output, units
from tstack.search.cluster import MAX_GPUS, SearchSpace, families, search
from tstack.spec import ATTENTIONS, EXECUTIONS, MAX_BATCH, OPTIMIZERS, PRECISIONS, RunSpec
from tstack.workload.fusion import load_profile

app = typer.Typer(cls=DefaultRunGroup, add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Multi-device training: data, tensor, pipeline and sequence parallelism, recomputation, ZeRO. "
                       "`tstack cluster MODEL ...` is short for `tstack cluster run MODEL ...`.")
out = console()
MODEL_ARG = typer.Argument(..., help="model preset or model file (e.g. gpt3-175b, llama-70b, bert-large)")
DEVICE_OPT = typer.Option("a100-80gb", "--device", "-d", help="device preset or device .yaml file")
NETWORK_OPT = typer.Option("dgx-a100", "--network", "-n", help=f"network preset ({', '.join(network_presets())}) or "
                                                               "network .yaml file")
SEQ_OPT = typer.Option(None, "--seq", "-s", help="sequence length (default: the model's)")
PRECISION_OPT = typer.Option("fp16-mixed", help="fp32 | fp16-mixed | bf16-mixed")
OPTIMIZER_OPT = typer.Option("adam", help="adam | lamb | sgd")


def _target(device: str) -> DeviceSpec:
    dev = load_device(device)
    if dev.kind != "gpu":
        raise SpecError([f"--device={device[:40]!r} is a {dev.kind}; the cluster model needs a GPU device"])
    return dev


def _run(model_seq: int, seq: int | None, precision: str, optimizer: str, execution: str | None,
         attention: str) -> RunSpec:
    check_choice("--precision", precision, [p for p in PRECISIONS if p != "int8"])
    check_choice("--optimizer", optimizer, OPTIMIZERS)
    execution = "eager" if execution is None else execution
    check_choice("--execution", execution, EXECUTIONS)
    check_choice("--attention", attention, ATTENTIONS)
    return RunSpec(mode="train", batch=1, seq=seq if seq is not None else model_seq, precision=precision,
                   optimizer=optimizer, execution=execution, attention=attention)


def _layout_name(lay: Layout) -> str:
    parts = [f"dp{lay.dp}", f"tp{lay.tp}", f"pp{lay.pp}"]
    if lay.interleave > 1:
        parts.append(f"v{lay.interleave}")
    parts.append(f"mb{lay.micro_batch}x{lay.micro_batches}")
    if lay.recompute != "none":
        parts.append(f"rc-{lay.recompute}")
    if lay.seq_parallel:
        parts.append("sp")
    if lay.zero:
        parts.append(f"zero{lay.zero}")
    if lay.ep > 1:
        parts.append(f"ep{lay.ep}")
    parts.append(f"overlap-{lay.overlap}")
    return " ".join(parts)


def _summary(r: ClusterResult) -> dict[str, Any]:
    return {"layout": _layout_name(r.layout), **r.summary()}


@app.command("run")
def run_cmd(
    model: str = MODEL_ARG,
    gpus: int | None = typer.Option(None, help="devices in all (default: dp·tp·pp); dp follows from it"),
    dp: int | None = typer.Option(None, help="data-parallel replicas (default: gpus / (tp·pp))"),
    tp: int = typer.Option(1, help="tensor-parallel ranks (Megatron slicing; must divide heads and ffn)"),
    pp: int = typer.Option(1, help="pipeline stages (must divide the layers)"),
    interleave: int = typer.Option(1, help="model chunks per pipeline rank (interleaved 1F1B)"),
    batch: int | None = typer.Option(None, "--batch", "-b", help="sequences per replica per step (same as "
                                                                  "--micro-batch)"),
    micro_batch: int | None = typer.Option(None, help="sequences per micro-batch (default 1)"),
    global_batch: int | None = typer.Option(None, help="sequences per iteration (default micro-batch·dp: no "
                                                       "gradient accumulation)"),
    seq: int | None = SEQ_OPT,
    recompute: str = typer.Option("none", help="activation recomputation: none | selective | full"),
    seq_parallel: bool = typer.Option(False, "--seq-parallel", help="sequence parallelism (with --tp > 1)"),
    zero: int = typer.Option(0, help="ZeRO stage 0-3 (3 = FSDP)"),
    overlap: str = typer.Option("layer", help="comma-separated gradient communication overlap: none, layer "
                                              "(002 §5.1); one layout each"),
    ep: int = typer.Option(1, help="expert-parallel ranks inside each data-parallel group (a Mixture-of-Experts "
                                   "model; must divide dp and the model's experts)"),
    precision: str = PRECISION_OPT,
    optimizer: str = OPTIMIZER_OPT,
    execution: str | None = EXECUTION_OPT,
    attention: str = ATTENTION_OPT,
    device: str = DEVICE_OPT,
    network: str = NETWORK_OPT,
    fusion: str = typer.Option("none", "--fusion", help="fusion profile applied to each device's sliced workload: "
                                                        "none | apex | inductor | flash, or a fusion .yaml file"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Seconds per iteration, model TFLOP/s and memory per device of one parallel layout."""
    outputs = Outputs(json=json_out, csv=csv_out)
    for name, value in (("--gpus", gpus), ("--dp", dp), ("--tp", tp), ("--pp", pp), ("--interleave", interleave)):
        check_int(name, value, 1, MAX_GPUS)
    for name, value in (("--batch", batch), ("--micro-batch", micro_batch), ("--global-batch", global_batch),
                        ("--seq", seq)):
        check_int(name, value, 1, MAX_BATCH)
    check_int("--zero", zero, 0, 3)
    check_int("--ep", ep, 1, MAX_GPUS)
    check_choice("--recompute", recompute, RECOMPUTE)
    overlaps = list(dict.fromkeys(parse_names("--overlap", overlap, OVERLAP)))
    if batch is not None and micro_batch is not None and batch != micro_batch:
        raise SpecError([f"--batch={batch} and --micro-batch={micro_batch} differ; give one of them"])
    mb = micro_batch or batch or 1
    if dp is None:
        total = gpus if gpus is not None else tp * pp
        if total % (tp * pp):
            raise SpecError([f"--gpus={total} is not a multiple of tp·pp={tp * pp}"])
        dp = total // (tp * pp)
    if gpus is not None and gpus != dp * tp * pp:
        raise SpecError([f"--gpus={gpus} must equal dp·tp·pp={dp}·{tp}·{pp}={dp * tp * pp}"])
    spec = load_model(model)
    run = _run(spec.default_seq, seq, precision, optimizer, execution, attention)
    dev, net = _target(device), load_network(network)
    profile = load_profile(fusion)
    results = [evaluate(spec, run, dev, net, Layout(dp=dp, tp=tp, pp=pp, interleave=interleave, micro_batch=mb,
                                                     global_batch=global_batch or mb * dp, recompute=recompute,
                                                     seq_parallel=seq_parallel, zero=zero, overlap=o, ep=ep),
                        fusion=profile)
               for o in overlaps]
    summaries = [_summary(r) for r in results]
    records = [{"layout": s["layout"], **row} for r, s in zip(results, summaries) for row in r.records()]
    desc = output.run_description(spec, run.replace(batch=mb), device=dev.name, network=net.name, gpus=dp * tp * pp,
                                  layouts=[s["layout"] for s in summaries], fusion=profile.name)
    outputs.write(output.document("cluster run", desc, records, summary={**summaries[0], "layouts": summaries}))
    if outputs.stdout_taken:
        return
    for r, s in zip(results, summaries):
        _print_result(r, s)


def _print_result(r: ClusterResult, s: dict[str, Any]) -> None:
    t = Table(title=f"{r.model.name} on {r.layout.gpus} × {r.device.name} ({r.network.name}): {s['layout']}",
              title_justify="left", show_edge=False)
    for col in ("component", "part", "group", "time", "share"):
        t.add_column(col, no_wrap=True)
    for row in r.records():
        t.add_row(row["component"], row["part"], row["group"], units.seconds(row["seconds"]), units.percent(row["share"]))
    out.print(t)
    mem = s["memory_bytes_per_device"]
    out.print(f"{units.seconds(s['seconds_per_iteration'])} per iteration; "
              f"{s['model_tflops_per_device']:.1f} model TFLOP/s per device (Megatron's 72·B·s·l·h²·(1 + s/6h + V/12lh), "
              f"Narayanan et al. 2021), {s['workload_tflops_per_device']:.1f} by the workload's own FLOPs; memory per device "
              + ", ".join(f"{k} {units.si(v, 'B')}" for k, v in mem.items())
              + f" of {units.si(r.device.memory_capacity, 'B')}" + ("" if s["fits"] else " — DOES NOT FIT"))


@app.command("search")
def search_cmd(
    model: str = MODEL_ARG,
    gpus: int = typer.Option(..., help="devices to lay out"),
    global_batch: int = typer.Option(..., help="sequences per iteration"),
    seq: int | None = SEQ_OPT,
    recompute: str = typer.Option(",".join(RECOMPUTE), help="comma-separated recomputation choices to try"),
    zero: str = typer.Option("0,1,2,3", help="comma-separated ZeRO stages to try (3 = FSDP)"),
    max_micro_batch: int = typer.Option(0, help="largest micro-batch to try (0: any divisor of the replica batch)"),
    top: int = typer.Option(10, help="layouts to list (the fastest that fit)"),
    precision: str = PRECISION_OPT,
    optimizer: str = OPTIMIZER_OPT,
    execution: str | None = EXECUTION_OPT,
    attention: str = ATTENTION_OPT,
    device: str = DEVICE_OPT,
    network: str = NETWORK_OPT,
    executor: str = typer.Option("process", help="process | ray | serial"),
    workers: int | None = typer.Option(None, help="worker processes (default: the cores available)"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Every legal layout of dp·tp·pp = gpus: those that fit memory, fastest first, and the time-memory Pareto set."""
    outputs = Outputs(json=json_out, csv=csv_out)
    check_int("--gpus", gpus, 1, MAX_GPUS)
    check_int("--global-batch", global_batch, 1, MAX_BATCH)
    check_int("--seq", seq, 1, MAX_BATCH)
    check_int("--max-micro-batch", max_micro_batch, 0, MAX_BATCH)
    check_int("--top", top, 1, 100_000)
    check_choice("--executor", executor, EXECUTORS)
    workers = worker_count("--workers", workers)
    choices = tuple(dict.fromkeys(parse_names("--recompute", recompute, RECOMPUTE)))
    stages = tuple(dict.fromkeys(parse_ints("--zero", zero, 0, 3)))
    spec = load_model(model)
    run = _run(spec.default_seq, seq, precision, optimizer, execution, attention)
    dev, net = _target(device), load_network(network)
    space = SearchSpace(gpus=gpus, global_batch=global_batch, recompute=choices, zero=stages,
                        max_micro_batch=max_micro_batch)
    keys = families(spec, run.seq, space)
    with progress("cluster search", total=len(keys), unit="families") as advance:
        result = search(spec, run, dev, net, space, executor=executor, workers=workers, progress=advance, keys=keys)
    shown = [dict(rank=i + 1, **result.row(i)) for i in result.top_and_pareto(top)]
    records = [{**r, "seconds_per_iteration": r.pop("seconds"), "memory_bytes_per_device": r.pop("memory")}
               for r in shown]
    summary = {"evaluated": result.evaluated, "fitting": result.fitting, "top": top,
               "best_seconds_per_iteration": result.table["seconds"][0].item() if result.fitting else None}
    desc = output.run_description(spec, run, device=dev.name, network=net.name, gpus=gpus, global_batch=global_batch,
                                  recompute=list(choices), zero=list(stages), max_micro_batch=max_micro_batch,
                                  executor=executor, workers=workers)
    outputs.write(output.document("cluster search", desc, records, summary=summary))
    if outputs.stdout_taken:
        return
    out.print(f"{result.evaluated} layouts evaluated, {result.fitting} fit {units.si(dev.memory_capacity, 'B')}")
    if not result.fitting:
        return
    for title, picked in (("fastest layouts that fit", [r for r in records if r["rank"] <= top]),
                          ("Pareto set (time vs memory)", [r for r in records if r["pareto"]])):
        t = Table(title=f"{spec.name} on {gpus} × {dev.name} ({net.name}), global batch {global_batch}: {title}",
                  title_justify="left", show_edge=False)
        for col in ("rank", "dp", "tp", "pp", "v", "micro-batch", "recompute", "SP", "ZeRO", "overlap", "EP", "time",
                    "memory"):
            t.add_column(col, no_wrap=True)
        for r in picked:
            t.add_row(str(r["rank"]), str(r["dp"]), str(r["tp"]), str(r["pp"]), str(r["interleave"]),
                      str(r["micro_batch"]), r["recompute"], "yes" if r["seq_parallel"] else "", str(r["zero"]),
                      r["overlap"], str(r["ep"]), units.seconds(r["seconds_per_iteration"]),
                      units.si(r["memory_bytes_per_device"], "B"))
        out.print(t)

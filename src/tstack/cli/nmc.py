"""`tstack nmc`: the optimizer (or every element-wise kernel) on near-memory ALUs, against the GPU."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tstack.cli.common import CSV_OPT, JSON_OPT, Outputs, check_choice, check_int, console
from tstack.costmodel.backend import load_target
from tstack.errors import SpecError
from tstack.hardware.device import DeviceSpec
from tstack.hardware.memory import load_memory, memory_presets
from tstack.models import load_model
from tstack.report import output, units
from tstack.spec import RunSpec
from tstack.studies.nmc_offload import SCOPES, offload


def nmc(
    model: str = typer.Argument(..., help="preset name, a tstack model .yaml, a HuggingFace config.json or folder"),
    mode: str = typer.Option("train", help="train (the optimizer runs in training only) | infer"),
    batch: int = typer.Option(1, "--batch", "-b"),
    seq: int | None = typer.Option(None, "--seq", "-s", help="sequence length (default: the model's)"),
    precision: str = typer.Option("fp32", help="fp32 | fp16-mixed | bf16-mixed"),
    optimizer: str = typer.Option("lamb", help="lamb | adam | sgd"),
    device: str = typer.Option("mi100", "--device", "-d", help="the GPU: device preset or device .yaml file"),
    memory: str = typer.Option("hbm2-pim", "--memory", "-m",
                               help="near-memory DRAM: " + ", ".join(memory_presets()) + ", or a memory .yaml file"),
    scope: str = typer.Option("optimizer", help="what runs near memory: optimizer | elementwise (optimizer and the "
                                                "element-wise activation kernels)"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Offload memory-bound kernels to ALUs at the DRAM banks (002 §6.2.1); GEMMs stay on the GPU."""
    outputs = Outputs(json=json_out, csv=csv_out)
    check_int("--seq", seq)
    check_choice("--scope", scope, SCOPES)
    spec = load_model(model)
    dev = load_target(device)
    if not isinstance(dev, DeviceSpec):
        raise SpecError([f"--device={device[:40]!r} is an accelerator; near-memory offload needs a GPU device"])
    mem = load_memory(memory)
    run = RunSpec(mode=mode, batch=batch, seq=spec.default_seq if seq is None else seq, precision=precision,
                  optimizer=optimizer)
    result = offload(spec, run, dev, mem, scope)
    if not result.rows:
        raise SpecError([f"--scope={scope}: nothing to offload in a {mode} run (the optimizer runs in training)"])
    s = result.summary()
    doc = output.document("nmc", output.run_description(spec, run, device=dev.name, memory=mem.name, scope=scope,
                                                        alus=mem.alus, banks=mem.banks),
                          [r.record() for r in result.rows], summary=s)
    outputs.write(doc)
    if outputs.stdout_taken:
        return
    out = console()
    t = Table(title=f"{spec.name} {mode} on {dev.name} + {mem.name} ({mem.alus} ALUs at {mem.banks} banks)",
              title_justify="left", show_edge=False)
    for col in ("kernel", "group", "instances", "bytes", "GPU", "GPU optimistic", "NMC", "vs GPU", "vs optimistic"):
        t.add_column(col, justify="left" if col in ("kernel", "group") else "right")
    for r in result.rows:
        t.add_row(r.name, r.group, str(r.kernels), units.si(r.bytes, "B"), units.seconds(r.gpu_seconds),
                  units.seconds(r.optimistic_seconds), units.seconds(r.nmc_seconds),
                  units.ratio(r.gpu_seconds / r.nmc_seconds), units.ratio(r.optimistic_seconds / r.nmc_seconds))
    out.print(t)
    out.print(f"offloaded: GPU {units.seconds(s['offloaded_gpu_seconds'])}, optimistic GPU "
              f"{units.seconds(s['offloaded_gpu_optimistic_seconds'])}, NMC {units.seconds(s['offloaded_nmc_seconds'])}"
              f" ({units.ratio(s['offload_speedup_vs_optimistic'])} vs optimistic); iteration "
              f"{units.seconds(s['iteration_gpu_seconds'])} → {units.seconds(s['iteration_nmc_seconds'])} "
              f"({units.ratio(s['end_to_end_speedup'])})")

"""`tstack fuse`: one configuration under several fusion profiles (none, apex, inductor, flash) side by side."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tstack.cli.common import (
    ATTENTION_OPT,
    CSV_OPT,
    EXECUTION_OPT,
    JSON_OPT,
    Outputs,
    check_int,
    check_mode_on,
    console,
    parse_names,
)
from tstack.costmodel.backend import load_target, run_defaults
from tstack.models import load_model
from tstack.report import output, units
from tstack.spec import RunSpec
from tstack.studies.fusion_compare import TOTAL, compare
from tstack.workload.fusion import fusion_presets


def fuse(
    model: str = typer.Argument(..., help="preset name, a tstack model .yaml, a HuggingFace config.json or folder"),
    mode: str = typer.Option("train", help="infer | train"),
    batch: int = typer.Option(1, "--batch", "-b"),
    seq: int | None = typer.Option(None, "--seq", "-s", help="sequence length (default: the model's)"),
    precision: str | None = typer.Option(None, help="fp32 | fp16-mixed | bf16-mixed | int8 (default: fp32; int8 on "
                                                    "an accelerator)"),
    optimizer: str = typer.Option("lamb", help="lamb | adam | sgd"),
    checkpoint: str = typer.Option("none", help="none | sqrt | every-K"),
    execution: str | None = EXECUTION_OPT,
    attention: str = ATTENTION_OPT,
    device: str = typer.Option("a100", "--device", "-d", help="device or accelerator preset (e.g. a100, "
                                                              "gemmini-ibert), or a device or accelerator .yaml file"),
    fusion: str = typer.Option("none,apex,inductor,flash", "--fusion", "-f",
                               help="comma-separated fusion profiles (presets/fusion); speed-ups are against the first"),
    json_out: Path | None = JSON_OPT,
    csv_out: Path | None = CSV_OPT,
) -> None:
    """Predict one iteration under each fusion profile: time, kernels and bytes per 002 group, and the speed-up.

    On an accelerator (gemmini-*) the run is an int8 inference (--mode infer)."""
    outputs = Outputs(json=json_out, csv=csv_out)
    check_int("--seq", seq)
    profiles = list(dict.fromkeys(parse_names("--fusion", fusion, fusion_presets())))
    spec = load_model(model)
    dev = load_target(device)
    check_mode_on(dev, mode)
    run = RunSpec(mode=mode, batch=batch, seq=spec.default_seq if seq is None else seq, optimizer=optimizer,
                  checkpoint=checkpoint, attention=attention, **run_defaults(dev, precision, execution))
    rows, _ = compare(spec, run, dev, profiles)
    doc = output.document("fuse", output.run_description(spec, run, device=dev.name, profiles=profiles),
                          [r.record() for r in rows])
    outputs.write(doc)
    if outputs.stdout_taken:
        return
    out = console()
    t = Table(title=f"{spec.name} {mode} on {dev.name}: seconds per 002 group (speed-up vs {profiles[0]})",
              title_justify="left", show_edge=False)
    t.add_column("group")
    for p in profiles:
        t.add_column(p, justify="right")
    groups = list(dict.fromkeys(r.group for r in rows if r.group != TOTAL)) + [TOTAL]
    cell = {(r.profile, r.group): r for r in rows}
    for g in groups:
        t.add_row(g, *(_cell(cell.get((p, g))) for p in profiles))
    t.add_row("kernels", *(str(cell[(p, TOTAL)].kernels) for p in profiles))
    t.add_row("bytes", *(units.si(cell[(p, TOTAL)].bytes, "B") for p in profiles))
    out.print(t)


def _cell(row) -> str:
    if row is None:
        return "-"
    speed = "" if row.speedup != row.speedup else f" ({units.ratio(row.speedup)})"
    return units.seconds(row.seconds) + speed
